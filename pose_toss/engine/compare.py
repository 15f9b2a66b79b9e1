"""Train several methods on the same data and epoch budget over learning rates and seeds, evaluate each
cell, and tabulate mean ± std over seeds with validation curves per learning rate."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pose_toss.config import Config, StageConfig, dump_config
from pose_toss.engine.evaluation import evaluate_checkpoint, scalar_metrics
from pose_toss.engine.report import comparison_table
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, run_lock


@dataclass(frozen=True)
class Method:
    covariance: str  # model.covariance
    losses: tuple[str, ...]  # one loss per stage
    labels_from: str = "targets"  # pseudo-labels of a W2 stage (see EmbeddingBank)
    pseudo_labels: tuple[tuple[str, object], ...] = ()  # other pseudo_labels keys the W2 stage sets


# Two-stage methods split the budget as the config's own stages do when it is a two-stage recipe,
# else 20% / 80% (the paper's 20 of 100).
METHODS = {
    "mse": Method("identity", ("mse",)),
    "diagonal": Method("diagonal", ("nll",)),
    "nll": Method("full", ("nll",)),
    "beta_nll": Method("diagonal", ("beta_nll",)),
    "faithful": Method("full", ("faithful",)),
    "nll_tic": Method("tic", ("nll",)),
    "kl_calibrated": Method("tic", ("kl_calibrated",)),
    "w2": Method("tic", ("w2_bound",)),
    "w2_then_nll_tic": Method("tic", ("w2_bound", "nll")),
    # Beyond the paper: W2 to the second moment of the neighbours' errors, not of their poses' spread.
    "w2_residual_then_nll_tic": Method("tic", ("w2_bound", "nll"), "residuals"),
    # Beyond the paper: each sample's temperature set for 16 effective neighbours (the paper's tau = 1 leaves 2-5).
    "w2_eff16_then_nll_tic": Method("tic", ("w2_bound", "nll"), pseudo_labels=(("effective_neighbours", 16.0),)),
    "loss_pred": Method("isotropic", ("loss_pred",)),
}
DEFAULT_METHODS = ("mse", "diagonal", "nll", "beta_nll", "faithful", "nll_tic", "w2", "w2_then_nll_tic", "loss_pred")
# What the curves show, per epoch of each cell's metrics.jsonl.
CURVES = (("val_mean_joint_error", "val error (px)"), ("val_nll", "val NLL"), ("val_tac", "val TAC (px)"))


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or 'empty list'}; expected a comma-separated list of "
                         f"{list(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods: {names} names a method twice")
    return names


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lrs {text!r}: expected comma-separated numbers such as 1e-3,1e-2") from None
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs) or len(set(lrs)) != len(lrs):
        raise ValueError(f"--lrs {text!r}: expected distinct positive learning rates such as 1e-3,1e-2")
    return lrs


def method_config(base: Config, method: str, lr: float | None = None, seed: int | None = None) -> Config:
    """The base config with the method's covariance and stages over the same total epochs (and, when
    given, this learning rate and training seed; the data stay the same)."""
    cfg = copy.deepcopy(base)
    spec = METHODS[method]
    total = base.total_epochs
    template = {s.loss: s for s in base.stages}
    if len(spec.losses) == 2:
        recipe = len(base.stages) == 2 and base.stages[0].loss == "w2_bound"
        first = base.stages[0].epochs if recipe else max(1, round(0.2 * total))
        first = min(first, total - 1)
        epochs = (first, total - first)
    else:
        epochs = (total,)
    stages = []
    for loss, n in zip(spec.losses, epochs, strict=True):
        st = copy.deepcopy(template.get(loss, template.get("w2_bound", StageConfig())))
        st.loss, st.epochs = loss, n
        if loss == "w2_bound":
            st.pseudo_labels.labels_from = spec.labels_from
            for key, value in spec.pseudo_labels:
                setattr(st.pseudo_labels, key, value)
        stages.append(st)
    cfg.model.covariance = spec.covariance
    if spec.covariance in ("identity", "isotropic"):  # nothing fitted for a local term to add to
        cfg.model.local_covariance = False
    cfg.stages = stages
    if lr is not None:
        cfg.train.lr = lr
    if seed is not None:
        cfg.train.seed = seed
    cfg.validate(f"method {method}")
    return cfg


DIVERGED_FILE = "diverged.json"  # a cell whose training stopped on divergence: read back as done


@dataclass(frozen=True)
class Cell:
    method: str
    lr: float
    seed: int

    def path(self, out: Path) -> Path:
        return out / f"lr_{self.lr:g}" / f"seed_{self.seed}" / self.method

    @property
    def name(self) -> str:
        return f"{self.method} lr {self.lr:g} seed {self.seed}"


def run_cell(cfg: Config, run_dir: Path, log=print) -> tuple[dict, float, bool]:
    """Train and evaluate one cell -> (metrics, training seconds, whether it was already done).

    A finished cell with the same config is read back; one interrupted during training resumes from its
    last checkpoint; one whose config changed is trained again."""
    from pose_toss.engine.trainer import TrainingDiverged, latest_checkpoint, train

    done, timing = run_dir / "eval" / "metrics.json", run_dir / "wall_time.json"
    diverged = run_dir / DIVERGED_FILE
    same_config = _has_config(run_dir, cfg)
    if same_config and done.is_file() and timing.is_file():
        return json.loads(done.read_text()), json.loads(timing.read_text())["seconds"], True
    if same_config and diverged.is_file():
        return json.loads(diverged.read_text()), math.nan, True
    resume = same_config and latest_checkpoint(run_dir) is not None
    log("== " + ("resuming " if resume else "") + f"{run_dir}: covariance {cfg.model.covariance}, stages "
        + " -> ".join(f"{s.loss} x{s.epochs}" for s in cfg.stages) + f", lr {cfg.train.lr:g}, seed {cfg.train.seed}")
    start = time.perf_counter()
    try:
        train(cfg, run_dir, resume=resume, overwrite=not resume, log=log)
    except TrainingDiverged as e:  # one diverged cell is a result of the sweep, not the end of it
        log(f"{run_dir}: training stopped: {e}")
        result = {"diverged": str(e)}
        if _has_config(run_dir, cfg):  # the diverged run is this cell's, not an older one left in place
            atomic_write_text(diverged, json.dumps(result))
        return result, math.nan, False
    seconds = time.perf_counter() - start  # of this call: a resumed cell counts only its remaining epochs
    metrics = evaluate_checkpoint(run_dir, "synthetic", run_dir / "eval", overwrite=True, device=cfg.train.device,
                                  progress=cfg.train.progress)
    atomic_write_text(timing, json.dumps({"seconds": seconds}))
    return metrics, seconds, False


def _has_config(run_dir: Path, cfg: Config) -> bool:
    return (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").read_text() == dump_config(cfg)


def _run_cell_in_worker(cfg: Config, run_dir: str, log_file: str, threads: int) -> tuple[dict, float, bool]:
    """One cell in a worker process: its own thread count, its log in a file."""
    import torch

    torch.set_num_threads(threads)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        def log(msg: str) -> None:
            f.write(msg + "\n")
            f.flush()
        return run_cell(cfg, Path(run_dir), log)


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def aggregate(cells: list[dict]) -> list[dict]:
    """Per (lr, method): mean and sample std (n - 1) over seeds of every scalar, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["lr"], c["method"]), []).append(c)
    out = []
    for (lr, method), group in groups.items():
        keys = list(dict.fromkeys(k for g in group for k in g if isinstance(g[k], (int, float))
                                  and k not in ("lr", "seed")))
        mean, std = {}, {}
        for k in keys:
            mean[k], std[k] = mean_std([g.get(k) for g in group])
        out.append({"lr": lr, "method": method, "seeds": [g["seed"] for g in group], "mean": mean, "std": std,
                    "diverged_seeds": [g["seed"] for g in group if g.get("diverged")]})
    return out


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    path = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {key: [h.get(key, float("nan")) for h in history] for key, _ in CURVES}


def compare(base: Config, methods: list[str], out, *, lrs: list[float] | None = None, seeds: int = 1,
            jobs: int = 1, overwrite: bool = False, log=print) -> dict:
    """Train and evaluate every method x learning rate x seed into ``out/lr_<lr>/seed_<s>/<method>/``;
    write ``comparison.md`` / ``.json`` (mean ± std over seeds) and ``comparison_curves.png``.

    Seeds are ``train.seed`` .. ``train.seed + seeds - 1`` (weights, data order, augmentation); the data
    themselves are the config's for every cell. Re-running with the same ``out`` resumes: finished cells
    are read back, interrupted ones continue from their last checkpoint. ``jobs`` > 1 trains that many
    cells at once in worker processes (one GPU shared, or the CPU's cores split), each logging to
    ``out/logs/``, with the config's data workers and the CPU threads divided between them.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out)
    lrs = list(lrs or [base.train.lr])
    cells = [Cell(m, lr, base.train.seed + s) for lr in lrs for s in range(seeds) for m in methods]
    configs = {c: method_config(base, c.method, c.lr, c.seed) for c in cells}  # every config checked first
    resuming = (out / "comparison.partial").is_file()
    check_output_dir(out, overwrite or resuming, base.input_paths())
    with run_lock(out, log):
        return _compare(base, methods, out, lrs, seeds, jobs, cells, configs, log)


def _compare(base: Config, methods: list[str], out: Path, lrs: list[float], seeds: int, jobs: int, cells: list[Cell],
             configs: dict, log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.partial", "in progress\n")
    results: dict[Cell, tuple[dict, float]] = {}
    if jobs == 1:
        for c in cells:
            metrics, seconds, was_done = run_cell(configs[c], c.path(out), log)
            if was_done:
                log(f"{c.name}: already done, reading {c.path(out) / 'eval' / 'metrics.json'}")
            results[c] = (metrics, seconds)
    else:
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // jobs)
        for c in cells:
            configs[c].data.num_workers = min(configs[c].data.num_workers, max(0, threads - 1))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell_in_worker, configs[c], str(c.path(out)),
                                   str(out / "logs" / f"{c.method}_lr{c.lr:g}_seed{c.seed}.log"), threads): c
                       for c in cells}
            log(f"{len(cells)} cells, {jobs} at a time ({threads} threads each); logs in {out / 'logs'}")
            for future in as_completed(futures):
                c = futures[future]
                metrics, seconds, was_done = future.result()
                results[c] = (metrics, seconds)
                log(f"{c.name}: " + ("already done" if was_done else "diverged" if "diverged" in metrics else
                                     f"{metrics['mean_joint_error']:.2f} px, NLL {metrics['nll']:.2f} "
                                     f"in {seconds:.0f} s") + f" ({len(results)}/{len(cells)})")
    rows = [{"method": c.method, "lr": c.lr, "seed": c.seed, **scalar_metrics(results[c][0]),
             "train_seconds": results[c][1], **({"diverged": results[c][0]["diverged"]}
                                                if "diverged" in results[c][0] else {})} for c in cells]
    summary = aggregate(rows)
    curves = {c: read_curves(c.path(out)) for c in cells}
    plot = write_sweep_curves(out / "comparison_curves.png", methods, lrs, curves)
    md = comparison_markdown(base, methods, lrs, seeds, summary, plot)
    atomic_write_text(out / "comparison.md", md)
    by_name = {f"{c.method}|{c.lr:g}|{c.seed}": v for c, v in curves.items()}
    atomic_write_text(out / "comparison.json", json.dumps(jsonable({"cells": rows, "summary": summary,
                                                                     "curves": by_name}), indent=1))
    (out / "comparison.partial").unlink()
    return {"rows": rows, "summary": summary, "markdown": md}


def write_sweep_curves(path: Path, methods: list[str], lrs: list[float], curves: dict[Cell, dict]) -> str:
    from pose_toss.viz.plots import sweep_curves_plot

    series: dict[tuple[float, str], list[dict]] = {}
    for c, curve in curves.items():
        series.setdefault((c.lr, c.method), []).append(curve)
    sweep_curves_plot(series, methods, lrs, CURVES, path)
    return path.name


def comparison_markdown(base: Config, methods: list[str], lrs: list[float], seeds: int, summary: list[dict],
                        plot: str) -> str:
    seed_list = ", ".join(str(base.train.seed + s) for s in range(seeds))
    md = ["# Method comparison", "",
          f"Same data and budget ({base.total_epochs} epochs) for every method; evaluated on the test split. "
          f"Mean ± sample std over {seeds} seed{'s' if seeds > 1 else ''} ({seed_list}); best mean per column "
          "in bold (coverage: closest to nominal).", ""]
    for lr in lrs:
        rows = [s for s in summary if s["lr"] == lr]
        order = sorted(rows, key=lambda s: methods.index(s["method"]))
        md += [f"## lr {lr:g}", "",
               comparison_table([s["method"] for s in order], [s["mean"] for s in order],
                                extra=("train_seconds", "train s"), stds=[s["std"] for s in order]), ""]
        stopped = [f"{s['method']} (seed{'s' if len(s['diverged_seeds']) > 1 else ''} "
                   f"{', '.join(map(str, s['diverged_seeds']))})" for s in order if s.get("diverged_seeds")]
        if stopped:
            md += ["Diverged, so left out of the means above: " + "; ".join(stopped) + ".", ""]
    md += ["## Curves", "", f"![validation error, NLL and TAC per epoch, one panel per learning rate]({plot})", "",
           "Lines: mean over seeds; bands: min to max.", ""]
    return "\n".join(md)
