"""Tables from a `pose-toss compare` output whose cells were also evaluated with simulated detections
(`eval --simulated-detections`) and whose MSE cells got a fitted covariance (`fit-covariance`): COCO AP by
score, keypoint-confidence calibration, and fit-covariance against NLL-TIC.

    python tools/covariance_scores.py runs/scores
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pose_toss.commands.compare import PLAIN_EVAL_DIR
from pose_toss.metrics import mean_std


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def ap_table(root: Path) -> str:
    rows = {}
    for f in sorted(root.glob("lr_*/seed_*/*/eval_det/metrics.json")):
        method = f.parent.parent.name
        for boxes, scores in json.loads(f.read_text())["ap_by_score"].items():
            kind = "ground-truth boxes" if boxes.startswith("ground") else "simulated detections"
            for score, ap in scores.items():
                rows.setdefault((method, score), {}).setdefault(kind, []).append(ap["AP"])
    out = ["| method | score | AP, ground-truth boxes | AP, simulated detections |", "| --- | --- | --- | --- |"]
    for (method, score), v in rows.items():
        out.append(f"| {method} | {score} | {fmt(v['ground-truth boxes'])} | {fmt(v['simulated detections'])} |")
    return "\n".join(out)


def calibration_table(root: Path) -> str:
    rows = {}
    for f in sorted(root.glob("lr_*/seed_*/*/eval_det/metrics.json")):
        rows.setdefault(f.parent.parent.name, []).append(json.loads(f.read_text())["keypoint_confidence_ece"])
    out = ["| method | keypoint confidence ECE |", "| --- | --- |"]
    out += [f"| {m} | {fmt(v)} |" for m, v in rows.items()]
    return "\n".join(out)


def fit_table(root: Path) -> str:
    keys = [("mean_joint_error", "error px"), ("nll", "NLL"), ("coverage@0.9", "cov@0.9"), ("tac", "TAC px"),
            ("w2_to_true", "W₂² to truth"), ("cue_corr_auroc", "AUROC corr."), ("coco_ap", "AP")]
    groups: dict[str, dict[str, list]] = {}
    for seed_dir in sorted(root.glob("lr_*/seed_*")):
        for name, metrics_file, minutes in (
                ("nll_tic end to end", seed_dir / "nll_tic" / PLAIN_EVAL_DIR / "metrics.json",
                 _seconds(seed_dir / "nll_tic" / "wall_time.json") / 60),
                ("mse, then fit-covariance (TIC)", seed_dir / "mse" / "fit" / "eval" / "metrics.json",
                 (_seconds(seed_dir / "mse" / "wall_time.json")
                  + json.loads((seed_dir / "mse" / "fit" / "fit_covariance.json").read_text())["seconds"]) / 60)):
            m = json.loads(metrics_file.read_text())
            g = groups.setdefault(name, {k: [] for k, _ in keys} | {"minutes": []})
            for k, _ in keys:
                g[k].append(m[k])
            g["minutes"].append(minutes)
    out = ["| model | " + " | ".join(t for _, t in keys) + " | minutes |", "|" + " --- |" * (len(keys) + 2)]
    for name, g in groups.items():
        out.append(f"| {name} | " + " | ".join(fmt(g[k]) for k, _ in keys) + f" | {fmt(g['minutes'])} |")
    return "\n".join(out)


def _seconds(path: Path) -> float:
    return json.loads(path.read_text())["seconds"]


if __name__ == "__main__":
    root = Path(sys.argv[1])
    print(ap_table(root), calibration_table(root), fit_table(root), sep="\n\n")
