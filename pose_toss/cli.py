"""The ``pose-toss`` command line: dispatches to the commands in ``pose_toss.commands`` and turns their errors
into one line and an exit code (0 success, 1 a file-system error, 2 bad input, 3 training stopped).

Only the command that runs is imported, so ``pose-toss --help`` loads neither torch nor any command.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures.process import BrokenProcessPool

from pose_toss.commands import COMMANDS, command_module
from pose_toss.config import ConfigError
from pose_toss.outputs import LockedError, OutputExistsError, describe_os_error


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser: every command listed with its help; the arguments of ``commands`` (names; None: all)."""
    parser = argparse.ArgumentParser(prog="pose-toss", description="Calibrated full joint covariances for 2D human "
                                                                   "pose estimators.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if commands is None or name in commands:
            command_module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([chosen] if chosen in COMMANDS else [])
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    try:
        return command_module(args.command).run(args)
    except (ConfigError, OutputExistsError, LockedError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pose-toss {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk, a vanished mount: name the path and the cause
        print(f"pose-toss {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # Imported here: the command that ran has loaded the trainer already, and --help must not.
        from pose_toss.engine.trainer import TrainingDiverged

        if isinstance(e, BrokenProcessPool):  # compare --jobs: a worker was killed
            print(f"pose-toss {args.command}: stopped: {e}", file=sys.stderr)
            return 3
        if not isinstance(e, TrainingDiverged):
            raise
        print(f"pose-toss {args.command}: training stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
