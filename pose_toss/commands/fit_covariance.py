"""`pose-toss fit-covariance`: a new covariance network for a trained model, the model frozen (its means unchanged),
trained with the NLL on the config's training split; the fitting itself is ``engine.fit_covariance``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pose_toss.commands.eval import evaluate_checkpoint
from pose_toss.commands.options import add_checkpoint, add_config, add_device, add_output, positive_number, whole_number
from pose_toss.config import FITTED_COVARIANCES, ConfigError, config_to_dict, load_config, save_config
from pose_toss.data.loading import run_data
from pose_toss.engine.fit_covariance import EpochDraws, fit_model_covariance, with_fresh_covariance
from pose_toss.engine.prediction import metrics_from_predictions, predict_dataset, scalar_metrics
from pose_toss.engine.runtime import Runtime, resolve_device, seed_everything
from pose_toss.models.checkpoint import load_model, save_model
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, run_lock, staged_output_dir
from pose_toss.run_dir import CONFIG_FILE, MODEL_FILE, resolve_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    add_output(p)
    p.add_argument("--covariance", default="tic", choices=FITTED_COVARIANCES,
                   help="the covariance network to learn (a new one; default: TIC)")
    p.add_argument("--epochs", type=whole_number(1), default=3, help="epochs over the training split")
    p.add_argument("--lr", type=positive_number, default=None, help="learning rate (default: the config's train.lr)")
    add_device(p)
    add_config(p)


def run(args: argparse.Namespace) -> int:
    _, run_dir = resolve_checkpoint(args.checkpoint)
    config_path = args.config or (run_dir / CONFIG_FILE if run_dir is not None else None)
    if config_path is None:
        raise ConfigError(f"{args.checkpoint} belongs to no run directory with a config.yaml: give --config for its "
                          "data")
    cfg = load_config(config_path, args.overrides)
    m = fit_covariance_run(args.checkpoint, args.out, cfg, covariance=args.covariance, epochs=args.epochs, lr=args.lr,
                           device=args.device, overwrite=args.overwrite, config_file=args.config)
    out = Path(args.out)
    print(f"test: mean joint error {m['mean_joint_error']:.2f} px, NLL {m['nll']:.2f}, cov@0.9 "
          f"{m['coverage@0.9']:.3f}; report: {out / 'eval' / 'report.md'}")
    return 0


def fit_covariance_run(checkpoint, out, cfg, *, covariance: str = "tic", epochs: int = 3, lr: float | None = None,
                       device: str = "auto", overwrite: bool = False, config_file=None, log=print) -> dict:
    """`pose-toss fit-covariance`: ``checkpoint``'s model with a new ``covariance`` network trained on ``cfg``'s
    training split (augmented, a new draw each epoch, validated on its val split; the epoch of the lowest validation
    NLL is kept), written to ``out``
    (model, config, per-epoch log, a summary; staged, locked) and evaluated into ``out/eval``; returns the
    evaluation's metrics."""
    model_file, _ = resolve_checkpoint(checkpoint)
    inputs = [checkpoint, config_file, *cfg.input_paths()]
    check_output_dir(out, overwrite, inputs)
    dev = resolve_device(device)
    with run_lock(out):
        start = time.perf_counter()
        model = with_fresh_covariance(load_model(model_file, map_location=dev), covariance)
        cfg.model.covariance = covariance
        seed_everything(cfg.train.seed)
        data = run_data(cfg.data, cfg.train.seed, Runtime(dev))

        def validate():
            keep = ("nll", "mean_joint_error", "coverage@0.9", "tac")
            preds = predict_dataset(model, data.val_loader, dev)
            metrics = scalar_metrics(metrics_from_predictions(preds, data.skeleton))
            return {k: v for k, v in metrics.items() if k in keep}

        history = fit_model_covariance(model, EpochDraws(data.train_loader), epochs=epochs, lr=lr or cfg.train.lr,
                                       device=dev, validate=validate, log=log)
        seconds = time.perf_counter() - start
        kept = next((h["epoch"] for h in history if h.get("kept")), len(history))
        with staged_output_dir(out, overwrite=overwrite, inputs=inputs) as stage:
            save_model(model, stage / MODEL_FILE)
            save_config(cfg, stage / CONFIG_FILE)
            atomic_write_text(stage / "fit_covariance.jsonl", "".join(json.dumps(jsonable(h)) + "\n" for h in history))
            atomic_write_text(stage / "fit_covariance.json", json.dumps(jsonable(
                {"from": str(model_file), "covariance": covariance, "epochs": epochs, "kept_epoch": kept,
                 "seconds": seconds, "config": config_to_dict(cfg)}), indent=1))
    out = Path(out)
    log(f"covariance ({covariance}) fitted in {seconds:.0f} s, kept from epoch {kept} of {epochs} (lowest validation "
        f"NLL); model: {out / MODEL_FILE}")
    data = "synthetic" if cfg.data.dataset == "synthetic" else str(out / CONFIG_FILE)
    return evaluate_checkpoint(out / MODEL_FILE, data, out / "eval", device=device, progress=False, pictures=0)
