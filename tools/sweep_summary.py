"""The README's and docs/results.md's sweep tables from a `pose-toss compare` output: per learning rate, each
method's mean ± sample std over seeds of the numbers that judge a covariance on the synthetic benchmark.

    python tools/sweep_summary.py runs/sweep            # every learning rate found
    python tools/sweep_summary.py runs/sweep 0.01       # one
    python tools/sweep_summary.py runs/sweep --val-epoch 27   # the validation split at epoch 27 of each cell's
                                                              # log: a sweep stopped before its cells finished
    python tools/sweep_summary.py runs/sweep --flip-test      # the cells' flip-test evaluations
                                                              # (`pose-toss compare --flip-test`)

(The occlusion columns exist only for the test split's evaluation.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pose_toss.commands.compare import PLAIN_EVAL_DIR, evaluation_dir
from pose_toss.metrics import mean_std

# (header, metrics.json key or a function of (metrics, training log), digits)
COLUMNS = [
    ("error px", "mean_joint_error", 2),
    ("NLL", "nll", 1),
    ("TAC px", "tac", 2),
    ("cov@0.9", "coverage@0.9", 3),
    ("cue AUROC (constant 0.5)", "cue_auroc_spread", 3),
    ("noise share", "label_noise_share", 2),
    ("occluder: spread rises", "occlusion_spread_rise", 2),
    ("occluded cov@0.9 (clean)", None, 2),
    ("labels' Spearman", None, 2),
]


def cell_values(cell: Path, val_epoch: int | None = None, eval_dir: str = PLAIN_EVAL_DIR) -> dict | None:
    log = cell / "metrics.jsonl"
    if val_epoch is None:
        metrics_file = cell / eval_dir / "metrics.json"
        if not metrics_file.is_file():
            return None
        m = json.loads(metrics_file.read_text())
    else:
        rows = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("epoch") == val_epoch] \
            if log.is_file() else []
        if not rows:
            return None
        m = {k.removeprefix("val_"): v for k, v in rows[-1].items() if k.startswith("val_")}
    values = {key: m.get(key) for _, key, _ in COLUMNS if key}
    values["occluded"] = m.get("occlusion_coverage@0.9_occluded")
    values["clean"] = m.get("occlusion_coverage@0.9_plain")
    refreshes = [r["pseudo_label_trace_spearman"] for r in map(json.loads, log.read_text().splitlines())
                 if r.get("pseudo_label_trace_spearman") is not None] if log.is_file() else []
    values["spearman"] = refreshes[-1] if refreshes else None
    return values


def fmt(values, digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(root: Path, lr_dir: Path, val_epoch: int | None = None, eval_dir: str = PLAIN_EVAL_DIR) -> str:
    methods: dict[str, list[dict]] = {}
    for cell in sorted(lr_dir.glob("seed_*/*")):
        values = cell_values(cell, val_epoch, eval_dir)
        if values is not None:
            methods.setdefault(cell.name, []).append(values)
    if not methods:
        return ""
    header = ["method", "seeds"] + [h for h, _, _ in COLUMNS]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for method, cells in methods.items():
        row = [method, str(len(cells))]
        for head, key, digits in COLUMNS:
            if key:
                row.append(fmt([c[key] for c in cells], digits))
            elif head.startswith("occluded"):
                occluded, clean = (fmt([c[k] for c in cells], digits) for k in ("occluded", "clean"))
                row.append(f"{occluded} ({clean})")
            else:
                row.append(fmt([c["spearman"] for c in cells], digits))
        out.append("| " + " | ".join(row) + " |")
    return f"**lr {lr_dir.name.removeprefix('lr_')}**\n\n" + "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    val_epoch = None
    if "--val-epoch" in argv:
        at = argv.index("--val-epoch")
        val_epoch = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    eval_dir = evaluation_dir("--flip-test" in argv)
    argv = [a for a in argv if a != "--flip-test"]
    root = Path(argv[0])
    lrs = sorted(root.glob("lr_*"), key=lambda p: -float(p.name.removeprefix("lr_")))
    if len(argv) > 1:
        lrs = [root / f"lr_{argv[1]}"]
    print("\n".join(t for t in (table(root, lr, val_epoch, eval_dir) for lr in lrs) if t))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
