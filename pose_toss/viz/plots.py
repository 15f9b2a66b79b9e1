"""Report plots (matplotlib, no display needed): calibration, sparsification, training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402

from pose_toss.outputs import atomic_write_bytes  # noqa: E402


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def calibration_plot(calibration: dict, joint_names: Sequence[str], path) -> None:
    """Observed against nominal coverage of each joint's p-ellipse: one thin line per joint, the
    overall curve thick; the diagonal is perfect calibration (above: too wide, below: overconfident)."""
    levels = calibration["levels"]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="ideal")
    cmap = plt.get_cmap("tab20")
    for j, (name, row) in enumerate(zip(joint_names, calibration["per_joint"], strict=True)):
        if calibration.get("has_joint", [True] * len(joint_names))[j]:
            ax.plot(levels, row, lw=0.8, alpha=0.7, color=cmap(j % 20), label=name)
    ax.plot(levels, calibration["overall"], lw=2.5, color="black", label="all joints")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal probability p", ylabel="observed fraction inside the p-ellipse",
           title="Calibration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    _save(fig, path)


def keypoint_reliability_plot(rel: dict, path) -> None:
    """Each keypoint's confidence (its expected keypoint similarity) against the keypoint similarity it
    then had, per bin of confidence; the diagonal is a perfectly calibrated confidence."""
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="ideal")
    ax.plot(rel["predicted"], rel["observed"], "o-", lw=2, color="black", label="keypoints")
    edges = rel["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    total = max(sum(rel["count"]), 1)
    ax.bar(centres, [c / total for c in rel["count"]], width=edges[1] - edges[0], alpha=0.15, color="C0",
           label="share of keypoints")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted E[keypoint similarity]",
           ylabel="observed keypoint similarity (mean in bin)",
           title=f"Keypoint confidence calibration (ECE {rel['ece']:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def sparsification_plot(sparsification: dict, path) -> None:
    """Mean error of the joints kept after removing the most uncertain fraction, against the oracle
    that removes the largest errors first; the area between them is the AUSE."""
    f, model, oracle = sparsification["fractions"], sparsification["model"], sparsification["oracle"]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.plot(f, model, lw=2, label="by predicted spread")
    ax.plot(f, oracle, lw=2, ls="--", label="oracle (by true error)")
    ax.fill_between(f, oracle, model, alpha=0.15)
    ax.set(xlabel="fraction of joints removed", ylabel="mean error left (relative)",
           title=f"Sparsification (AUSE {sparsification['ause']:.3f})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def training_curves_plot(history: Sequence[dict], path) -> None:
    """Per epoch: training loss, validation error, NLL and 90% coverage; stage changes marked."""
    epochs = [h["epoch"] for h in history]
    panels = [("train_loss", "training loss (stage's own)"), ("val_mean_joint_error", "val mean joint error (px)"),
              ("val_nll", "val NLL"), ("val_coverage@0.9", "val coverage of the 90% ellipse")]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    changes = [h["epoch"] - 0.5 for prev, h in zip(history, history[1:], strict=False) if h["stage"] != prev["stage"]]
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        ax.plot(epochs, [h.get(key) for h in history], marker="o", ms=3)
        for x in changes:
            ax.axvline(x, color="0.5", ls=":", lw=1)
        if key == "val_coverage@0.9":
            ax.axhline(0.9, color="0.5", ls="--", lw=1)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    stages = " -> ".join(dict.fromkeys(h["loss"] for h in history))
    fig.suptitle(f"Training ({stages}; dotted: stage change)")
    fig.tight_layout()
    _save(fig, path)


def sweep_curves_plot(series: dict, methods: Sequence[str], lrs: Sequence[float], curves: Sequence[tuple[str, str]],
                      path) -> None:
    """A method sweep's validation curves: one row per quantity, one column per learning rate, one line
    per method (mean over seeds, band from min to max). ``series[(lr, method)]``: one dict per seed of
    {quantity: per-epoch values}."""

    fig, axes = plt.subplots(len(curves), len(lrs), figsize=(4.2 * len(lrs), 3.0 * len(curves)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for col, lr in enumerate(lrs):
        for row, (key, title) in enumerate(curves):
            ax = axes[row][col]
            shown = []
            for n, method in enumerate(methods):
                runs = [r[key] for r in series.get((lr, method), []) if r.get(key)]
                if not runs:
                    continue
                length = min(len(r) for r in runs)
                vals = np.array([r[:length] for r in runs], dtype=float)
                epochs = np.arange(1, length + 1)
                shown.append(vals[np.isfinite(vals)])
                with np.errstate(all="ignore"):
                    ax.plot(epochs, np.nanmean(vals, 0), color=cmap(n % 10), lw=1.6, label=method)
                    if len(runs) > 1:
                        ax.fill_between(epochs, np.nanmin(vals, 0), np.nanmax(vals, 0), color=cmap(n % 10), alpha=0.15)
            values = np.concatenate(shown) if shown else np.zeros(0)
            if values.size and values.min() > 0 and values.max() > 20 * values.min():
                ax.set_yscale("log")  # early NLL and TAC can be orders of magnitude above the final ones
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set(title=f"{title}, lr {lr:g}", xlabel="epoch")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
