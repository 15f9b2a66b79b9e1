"""The ``pose-toss`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose_toss.config import ConfigError, load_config, save_config
from pose_toss.io import OutputExistsError, staged_output_dir


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults when omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value; repeatable")


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from pose_toss.data.synthetic import SyntheticPoseDataset
    from pose_toss.data.synthetic_files import write_synthetic

    overrides = list(args.overrides)
    for flag, key in ((args.num, "num_samples"), (args.size, "image_size"), (args.seed, "seed")):
        if flag is not None:
            overrides.append(f"data.synthetic.{key}={flag}")
    cfg = load_config(args.config, overrides)
    dataset = SyntheticPoseDataset.from_config(cfg.data.synthetic)
    with staged_output_dir(args.out, overwrite=args.overwrite) as stage:
        paths = write_synthetic(dataset, stage, sheet_count=args.sheet, progress=not args.quiet)
        save_config(cfg, stage / "config.yaml")
    out = Path(args.out)
    print(f"wrote {len(dataset)} images and {out / paths['annotations'].name}")
    print(f"contact sheet: {out / paths['contact_sheet'].name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pose-toss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-synthetic", help="render the synthetic pose dataset with its true covariances")
    p.add_argument("--num", type=int, help="number of samples (data.synthetic.num_samples)")
    p.add_argument("--size", type=int, help="image side in px (data.synthetic.image_size)")
    p.add_argument("--seed", type=int, help="generation seed (data.synthetic.seed)")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--sheet", type=int, default=16, help="how many samples the contact sheet shows")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_make_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, OutputExistsError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pose-toss {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
