"""Train several methods on the same data, seed and epoch budget, evaluate each, tabulate."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from pose_toss.config import Config, StageConfig, dump_config
from pose_toss.engine.evaluation import evaluate_checkpoint, scalar_metrics
from pose_toss.engine.report import comparison_table
from pose_toss.engine.trainer import train
from pose_toss.io import atomic_write_text, check_output_dir, jsonable

# method -> (covariance parameterisation, stage losses). Two-stage methods split the budget as the
# config's own stages do when it is a two-stage recipe, else 20% / 80% (the paper's 20 of 100).
METHODS = {
    "mse": ("identity", ("mse",)),
    "diagonal": ("diagonal", ("nll",)),
    "nll": ("full", ("nll",)),
    "beta_nll": ("diagonal", ("beta_nll",)),
    "faithful": ("full", ("faithful",)),
    "nll_tic": ("tic", ("nll",)),
    "kl_calibrated": ("tic", ("kl_calibrated",)),
    "w2": ("tic", ("w2_bound",)),
    "w2_then_nll_tic": ("tic", ("w2_bound", "nll")),
    "loss_pred": ("isotropic", ("loss_pred",)),
}
DEFAULT_METHODS = ("mse", "diagonal", "nll", "beta_nll", "faithful", "nll_tic", "w2", "w2_then_nll_tic", "loss_pred")


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or 'empty list'}; expected a comma-separated list of "
                         f"{list(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods: {names} names a method twice")
    return names


def method_config(base: Config, method: str) -> Config:
    """The base config with the method's covariance and stages over the same total epochs."""
    cfg = copy.deepcopy(base)
    covariance, losses = METHODS[method]
    total = base.total_epochs
    template = {s.loss: s for s in base.stages}
    if len(losses) == 2:
        recipe = len(base.stages) == 2 and base.stages[0].loss == "w2_bound"
        first = base.stages[0].epochs if recipe else max(1, round(0.2 * total))
        first = min(first, total - 1)
        epochs = (first, total - first)
    else:
        epochs = (total,)
    stages = []
    for loss, n in zip(losses, epochs, strict=True):
        st = copy.deepcopy(template.get(loss, template.get("w2_bound", StageConfig())))
        st.loss, st.epochs = loss, n
        stages.append(st)
    cfg.model.covariance = covariance
    cfg.stages = stages
    cfg.validate(f"method {method}")
    return cfg


def compare(base: Config, methods: list[str], out, *, overwrite: bool = False, log=print) -> dict:
    """Train and evaluate every method into ``out/<method>/``; write ``comparison.md`` / ``.json``.

    Finished methods are kept when the command is re-run with the same ``out`` and the same config
    (their ``eval/metrics.json`` is read back), so an interrupted comparison resumes where it stopped;
    a method whose config changed is trained again.
    """
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "comparison.partial").is_file():
        check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.partial", "in progress\n")
    rows = []
    for method in methods:
        cfg = method_config(base, method)
        run_dir, eval_dir = out / method, out / method / "eval"
        done = eval_dir / "metrics.json"
        same_config = (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").read_text() == dump_config(cfg)
        if done.is_file() and same_config:
            metrics = json.loads(done.read_text())
            seconds = json.loads((out / method / "wall_time.json").read_text())["seconds"]
            log(f"{method}: already done, reading {done}")
        else:
            log(f"== {method}: covariance {cfg.model.covariance}, stages "
                + " -> ".join(f"{s.loss} x{s.epochs}" for s in cfg.stages))
            start = time.perf_counter()
            train(cfg, run_dir, overwrite=True, log=log)
            seconds = time.perf_counter() - start
            metrics = evaluate_checkpoint(run_dir, "synthetic", eval_dir, overwrite=True, device=cfg.train.device,
                                          progress=cfg.train.progress)
            atomic_write_text(out / method / "wall_time.json", json.dumps({"seconds": seconds}))
        rows.append({"method": method, **scalar_metrics(metrics), "train_seconds": seconds})
    md = ["# Method comparison", "",
          f"Same data, seed ({base.train.seed}) and budget ({base.total_epochs} epochs) for every method; "
          "evaluated on the test split. Best per column in bold (coverage: closest to nominal).", "",
          comparison_table(methods, rows, extra=("train_seconds", "train s")), ""]
    atomic_write_text(out / "comparison.md", "\n".join(md))
    atomic_write_text(out / "comparison.json", json.dumps(jsonable(rows), indent=1))
    (out / "comparison.partial").unlink()
    return {"rows": rows, "markdown": "\n".join(md)}
