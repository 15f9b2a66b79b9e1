"""`pose-toss smooth`: COCO results with covariances smoothed over video frames (``tracking.smooth_results``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pose_toss.commands.options import add_output
from pose_toss.outputs import atomic_write_text, check_output_file, run_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, help="COCO keypoint results with 'covariance' (eval/visualize "
                                                         "output); frames by 'frame' or 'image_id', tracks by "
                                                         "'track_id'")
    add_output(p, "the smoothed results (.json)")
    p.add_argument("--q", type=float, default=None, help="process noise, px^2 per frame^3 (default: fitted per track "
                                                        "by the innovations' likelihood)")
    p.add_argument("--alpha", type=float, default=None,
                   help="scale of the predicted covariances as measurement noise (default: fitted per track with q)")
    p.add_argument("--sigmas", default=None, metavar="S1,S2,...",
                   help="OKS sigma per joint for the smoothed scores (default: the skeleton's for 14, 16 or 17 joints)")


def parse_sigmas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        sigmas = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--sigmas: expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in sigmas):
        raise ValueError(f"--sigmas: expected positive numbers, got {text!r}")
    return sigmas


def run(args: argparse.Namespace) -> int:
    # torch is imported here, when smoothing runs, so that `pose-toss smooth --help` stays quick.
    from pose_toss.coco_results import read_coco_results
    from pose_toss.tracking import smooth_results

    src, out = Path(args.predictions), Path(args.out)
    if not src.is_file():
        raise FileNotFoundError(f"--predictions: file not found: {src}")
    check_output_file(out, args.overwrite, [src])
    for flag, value in (("--q", args.q), ("--alpha", args.alpha)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag}: expected a finite number > 0, got {value}")
    sigmas = parse_sigmas(args.sigmas)
    results = read_coco_results(src)
    smoothed = smooth_results(results, args.q, str(src), alpha=args.alpha, sigmas=sigmas)
    with run_lock(out):
        atomic_write_text(out, json.dumps(smoothed))
    tracks = len({r.get("track_id") for r in results})
    fits = sorted({(r["measurement_scale"], r["process_noise"]) for r in smoothed})
    print(f"smoothed {len(results)} people over {tracks} track{'s' if tracks != 1 else ''} into {out} (measurement "
          f"scale alpha, process noise q: " + "; ".join(f"{a:.3g}, {q:.3g}" for a, q in fits[:5])
          + (" ..." if len(fits) > 5 else "") + "; scores recomputed from the smoothed covariances)")
    nulls = sum(v is None or (isinstance(v, float) and not math.isfinite(v))
                for r in results for i, v in enumerate(r["keypoints"]) if i % 3 < 2)
    outliers = sum(len(r.get("outlier_joints", [])) for r in smoothed)
    if nulls or outliers:
        print(f"{nulls} null keypoint coordinates treated as unobserved; {outliers} joint measurements left out as "
              "outliers, far from their track (listed per result as 'outlier_joints')")
    return 0
