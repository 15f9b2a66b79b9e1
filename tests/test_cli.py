"""The command line itself: the console entry point and the dispatcher's answers."""

import subprocess
import sys

import pytest

from pose_toss.cli import main
from pose_toss.commands import COMMANDS


@pytest.mark.slow
def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "pose_toss", "--help"], capture_output=True, text=True, check=True)
    assert all(name in out.stdout for name in COMMANDS)


def test_each_command_has_its_arguments_and_bad_ones_exit_2(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"usage: pose-toss {name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
