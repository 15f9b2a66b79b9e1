"""`pose-toss train`: train a pose model with the config's stages, or resume a run (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pose_toss.commands.options import add_config
from pose_toss.config import ConfigError, load_config
from pose_toss.engine.trainer import train
from pose_toss.outputs import check_output_dir
from pose_toss.run_dir import BEST, CONFIG_FILE, MODEL_FILE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory (refused when it exists, unless --overwrite)")
    p.add_argument("--resume", metavar="DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty run directory, only once the new run is complete")
    add_config(p)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; drop --config")
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume writes into the run it continues; drop --out or give the same directory")
        cfg_path = Path(args.resume) / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{args.resume}: no {CONFIG_FILE}; is it a `pose-toss train` output directory?")
        cfg = load_config(cfg_path, args.overrides)
        out = Path(args.resume)
    else:
        if not args.out:
            raise ConfigError("--out is required (or --resume DIR)")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out)
        check_output_dir(out, args.overwrite, [args.config, *cfg.input_paths()])
    summary = train(cfg, out, resume=bool(args.resume), overwrite=args.overwrite)
    if summary["history"]:
        last = summary["history"][-1]
        print(f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s; final val error "
              f"{last['val_mean_joint_error']:.2f} px, val NLL {last['val_nll']:.2f}; best val NLL "
              f"{summary['best_val_nll']:.2f} at epoch {summary['best_epoch']}")
    print(f"model: {out / BEST / MODEL_FILE} (best, epoch {summary['best_epoch']}), {out / MODEL_FILE} (final)")
    print(f"log: {out / 'metrics.jsonl'}")
    return 0
