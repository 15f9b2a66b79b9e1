"""`pose-toss make-synthetic`: render the synthetic dataset to PNG files with its annotations and true covariances."""

from __future__ import annotations

import argparse
from pathlib import Path

from pose_toss.commands.options import add_config, add_output, add_quiet
from pose_toss.config import load_config, save_config
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.synthetic_files import write_synthetic
from pose_toss.outputs import check_output_dir, staged_output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num", type=int, help="number of samples (data.synthetic.num_samples)")
    p.add_argument("--size", type=int, help="image side in px (data.synthetic.image_size)")
    p.add_argument("--seed", type=int, help="generation seed (data.synthetic.seed)")
    add_output(p)
    p.add_argument("--sheet", type=int, default=16, help="how many samples the contact sheet shows")
    add_quiet(p)
    add_config(p)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in ((args.num, "num_samples"), (args.size, "image_size"), (args.seed, "seed")):
        if flag is not None:
            overrides.append(f"data.synthetic.{key}={flag}")
    cfg = load_config(args.config, overrides)
    inputs = [args.config, *cfg.input_paths()]
    check_output_dir(args.out, args.overwrite, inputs)
    dataset = SyntheticPoseDataset.from_config(cfg.data.synthetic)
    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as stage:
        paths = write_synthetic(dataset, stage, sheet_count=args.sheet, progress=not args.quiet)
        save_config(cfg, stage / "config.yaml")
    out = Path(args.out)
    print(f"wrote {len(dataset)} images and {out / paths['annotations'].name}")
    print(f"contact sheet: {out / paths['contact_sheet'].name}")
    return 0
