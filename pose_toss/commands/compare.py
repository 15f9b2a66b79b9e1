"""`pose-toss compare`: train several methods on the same data and epoch budget over learning rates and seeds,
evaluate each cell, and tabulate mean ± std over seeds with validation curves per learning rate.

The methods are ``engine.objectives.METHODS`` (what ``bench`` times too); ``compare`` is also the Python API.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch

from pose_toss.commands.eval import evaluate_checkpoint
from pose_toss.commands.options import add_config, add_output
from pose_toss.config import Config, dump_config, load_config
from pose_toss.engine.objectives import METHODS, method_config
from pose_toss.engine.prediction import scalar_metrics
from pose_toss.engine.report import comparison_table
from pose_toss.engine.trainer import TrainingDiverged, train
from pose_toss.metrics import mean_std
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, run_lock
from pose_toss.run_dir import CONFIG_FILE, latest_checkpoint
from pose_toss.viz.plots import sweep_curves_plot

DEFAULT_METHODS = ("mse", "diagonal", "nll", "beta_nll", "faithful", "nll_tic", "w2", "w2_then_nll_tic", "loss_pred")
# What the curves show, per epoch of each cell's metrics.jsonl.
CURVES = (("val_mean_joint_error", "val error (px)"), ("val_nll", "val NLL"), ("val_tac", "val TAC (px)"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated, of: " + ", ".join(METHODS))
    p.add_argument("--lrs", default=None, help="comma-separated learning rates, e.g. 1e-4,1e-3,1e-2 (default: the "
                                               "config's train.lr)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell: train.seed, train.seed + 1, ...")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once (worker processes sharing the "
                                                      "device; the CPU threads and data workers are divided)")
    p.add_argument("--flip-test", action="store_true",
                   help="evaluate every cell with the flip test (each crop and its mirror merged), into the cell's "
                        f"{FLIP_EVAL_DIR}/; cells trained already are evaluated without training again; tables in "
                        f"{FLIP_TABLE}.md / .json")
    add_output(p, "output directory; running again into it resumes: finished cells are read back, interrupted "
                  "ones continue from their last checkpoint, new ones are trained")
    add_config(p)


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    lrs = parse_lrs(args.lrs) if args.lrs else None
    cfg = load_config(args.config, args.overrides)
    result = compare(cfg, methods, args.out, lrs=lrs, seeds=args.seeds, jobs=args.jobs, overwrite=args.overwrite,
                     inputs=[args.config] if args.config else [], flip_test=args.flip_test)
    table = table_name(args.flip_test)
    print(result["markdown"])
    print(f"table: {Path(args.out) / (table + '.md')} and {table}.json; curves: comparison_curves.png")
    return 0


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


DIVERGED_FILE = "diverged.json"  # a cell whose training stopped on divergence: read back as done
# Where a cell's evaluation goes, and the sweep's tables, without and with the flip test: both can sit side by side.
PLAIN_EVAL_DIR, FLIP_EVAL_DIR = "eval", "eval_flip_test"
PLAIN_TABLE, FLIP_TABLE = "comparison", "comparison_flip_test"


def evaluation_dir(flip_test: bool) -> str:
    """A cell's evaluation folder, with or without the flip test."""
    return FLIP_EVAL_DIR if flip_test else PLAIN_EVAL_DIR


def table_name(flip_test: bool) -> str:
    """The sweep's tables (``.md`` / ``.json``), with or without the flip test."""
    return FLIP_TABLE if flip_test else PLAIN_TABLE


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


def run_cell(cfg: Config, run_dir: Path, log=print, flip_test: bool = False) -> tuple[dict, float, bool]:
    """Train and evaluate one cell -> (metrics, training seconds, whether it was already trained).

    A finished cell with the same config is read back, or evaluated when this evaluation (``flip_test`` or not)
    is missing or cannot be read; one interrupted during training resumes from its last checkpoint; one whose
    config changed is trained again."""
    eval_dir = run_dir / evaluation_dir(flip_test)
    done, timing = eval_dir / "metrics.json", run_dir / "wall_time.json"
    diverged = run_dir / DIVERGED_FILE
    same_config = _has_config(run_dir, cfg)

    def evaluate() -> dict:
        return evaluate_checkpoint(run_dir, "synthetic", eval_dir, overwrite=True, device=cfg.train.device,
                                   progress=cfg.train.progress, flip_test=flip_test)

    if same_config and timing.is_file():  # trained to the end (and timed) before
        try:
            seconds = float(json.loads(timing.read_text())["seconds"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            log(f"warning: {timing}: cannot be read ({e}); the cell's training time is unknown")
            seconds = math.nan
        if done.is_file():
            try:
                return json.loads(done.read_text()), seconds, True
            except (json.JSONDecodeError, UnicodeDecodeError) as e:  # damaged: evaluate again
                log(f"warning: {run_dir}: its finished results cannot be read ({done.name}: {e}); evaluating it "
                    "again")
        else:
            log(f"{run_dir}: trained already; evaluating it" + (" with the flip test" if flip_test else ""))
        return evaluate(), seconds, True
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
    metrics = evaluate()
    atomic_write_text(timing, json.dumps({"seconds": seconds}))
    return metrics, seconds, False


def _has_config(run_dir: Path, cfg: Config) -> bool:
    return (run_dir / CONFIG_FILE).is_file() and (run_dir / CONFIG_FILE).read_text() == dump_config(cfg)


def _run_cell_in_worker(cfg: Config, run_dir: str, log_file: str, threads: int, flip_test: bool = False
                        ) -> tuple[dict, float, bool]:
    """One cell in a worker process: its own thread count, its log in a file."""
    torch.set_num_threads(threads)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        def log(msg: str) -> None:
            f.write(msg + "\n")
            f.flush()
        return run_cell(cfg, Path(run_dir), log, flip_test)


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
            jobs: int = 1, overwrite: bool = False, inputs=(), log=print, flip_test: bool = False) -> dict:
    """Train and evaluate every method x learning rate x seed into ``out/lr_<lr>/seed_<s>/<method>/``;
    write ``comparison.md`` / ``.json`` (mean ± std over seeds) and ``comparison_curves.png``.

    ``flip_test``: every cell is evaluated with the flip test, into its ``eval_flip_test/`` (cells trained before
    are evaluated, not trained again), and the tables are ``comparison_flip_test.md`` / ``.json``: a sweep's plain
    and flip-test results sit side by side.

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
    # An interrupted sweep resumes; a finished one is read back (its tables written again, new cells trained).
    resuming = (out / "comparison.partial").is_file() or any((out / f"{t}.json").is_file()
                                                              for t in (PLAIN_TABLE, FLIP_TABLE))
    check_output_dir(out, overwrite or resuming, [*base.input_paths(), *inputs])  # ``inputs``: the config file
    with run_lock(out, log):
        return _compare(base, methods, out, lrs, seeds, jobs, cells, configs, log, flip_test)


def _compare(base: Config, methods: list[str], out: Path, lrs: list[float], seeds: int, jobs: int, cells: list[Cell],
             configs: dict, log, flip_test: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.partial", "in progress\n")
    results: dict[Cell, tuple[dict, float]] = {}
    if jobs == 1:
        for c in cells:
            metrics, seconds, was_done = run_cell(configs[c], c.path(out), log, flip_test)
            if was_done:
                log(f"{c.name}: already done; its results: {c.path(out) / evaluation_dir(flip_test) / 'metrics.json'}")
            results[c] = (metrics, seconds)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        for c in cells:
            configs[c].data.num_workers = min(configs[c].data.num_workers, max(0, threads - 1))
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell_in_worker, configs[c], str(c.path(out)),
                                   str(out / "logs" / f"{c.method}_lr{c.lr:g}_seed{c.seed}.log"), threads,
                                   flip_test): c
                       for c in cells}
            log(f"{len(cells)} cells, {jobs} at a time ({threads} threads each); logs in {out / 'logs'}")
            for future in as_completed(futures):
                c = futures[future]
                try:
                    metrics, seconds, was_done = future.result()
                except BrokenProcessPool:
                    raise BrokenProcessPool(
                        f"a worker process died (killed, or out of memory) while {out} was being swept: "
                        f"{len(results)} of {len(cells)} cells had finished. Run the same command again: finished "
                        "cells are read back and interrupted ones continue from their checkpoints") from None
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
    md = comparison_markdown(base, methods, lrs, seeds, summary, plot, flip_test)
    table = table_name(flip_test)
    atomic_write_text(out / f"{table}.md", md)
    by_name = {f"{c.method}|{c.lr:g}|{c.seed}": v for c, v in curves.items()}
    atomic_write_text(out / f"{table}.json", json.dumps(jsonable({"cells": rows, "summary": summary, "curves": by_name,
                                                                   "flip_test": flip_test}), indent=1))
    (out / "comparison.partial").unlink()
    return {"rows": rows, "summary": summary, "markdown": md}


def write_sweep_curves(path: Path, methods: list[str], lrs: list[float], curves: dict[Cell, dict]) -> str:
    series: dict[tuple[float, str], list[dict]] = {}
    for c, curve in curves.items():
        series.setdefault((c.lr, c.method), []).append(curve)
    sweep_curves_plot(series, methods, lrs, CURVES, path)
    return path.name


def comparison_markdown(base: Config, methods: list[str], lrs: list[float], seeds: int, summary: list[dict],
                        plot: str, flip_test: bool = False) -> str:
    seed_list = ", ".join(str(base.train.seed + s) for s in range(seeds))
    evaluated = ("evaluated on the test split with the flip test (each crop and its mirror image predicted, the two "
                 "Gaussians merged)" if flip_test else "evaluated on the test split")
    md = ["# Method comparison" + (", flip test" if flip_test else ""), "",
          f"Same data and budget ({base.total_epochs} epochs) for every method; {evaluated}. "
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
