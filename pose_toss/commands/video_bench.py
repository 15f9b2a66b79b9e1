"""`pose-toss video-bench`: what smoothing with the predicted covariance does on synthetic video.

Each sequence (``data.video.synthetic_sequence``) is predicted frame by frame from its true boxes, then
smoothed (``tracking.rts_smoother``) with each frame's full predicted covariance, with only its diagonal, or
with one constant isotropic variance; each variant is the same smoother with its own measurement scale alpha
and process noise q, fitted per sequence by the innovations' likelihood (``tracking.fit_noise``). Against the
noise-free truth it reports the mean joint error (all visible joints, and the joints of a cued limb while the
cue lasts), the jitter (the mean frame-to-frame acceleration |x(t+1) - 2 x(t) + x(t-1)|) and the alpha and q.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pose_toss.coco_results import coco_results
from pose_toss.commands.options import add_checkpoint, add_device, add_output, whole_number
from pose_toss.config import Config, load_config
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.loading import make_loader
from pose_toss.data.video import synthetic_sequence
from pose_toss.engine.prediction import predict_dataset
from pose_toss.engine.runtime import Runtime, resolve_device
from pose_toss.metrics import mean_std
from pose_toss.models.checkpoint import load_model
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, run_lock, staged_output_dir
from pose_toss.run_dir import CONFIG_FILE, resolve_checkpoint
from pose_toss.skeletons import LSP14
from pose_toss.tracking import fit_noise, rts_smoother

VARIANTS = ("raw", "full covariance", "diagonal only", "isotropic constant")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    add_output(p, "where video_bench.json and .md go")
    p.add_argument("--sequences", type=whole_number(1), default=8)
    p.add_argument("--length", type=whole_number(3), default=60, help="frames per sequence")
    p.add_argument("--seed", type=whole_number(0), default=0)
    add_device(p)


def run(args: argparse.Namespace) -> int:
    model_file, run_dir = resolve_checkpoint(args.checkpoint)
    inputs = [args.checkpoint]
    check_output_dir(args.out, args.overwrite, inputs)
    dev = resolve_device(args.device)
    model = load_model(model_file, map_location=dev)
    data_cfg = (load_config(run_dir / CONFIG_FILE) if run_dir is not None else Config()).data
    data_cfg.input_size = model.input_size
    with run_lock(args.out):
        result = video_benchmark(model, data_cfg, args.sequences, args.length, args.seed, dev)
        text = video_markdown(result)
        with staged_output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as stage:
            atomic_write_text(stage / "video_bench.json", json.dumps(jsonable({"checkpoint": str(model_file),
                                                                                **result}), indent=1))
            atomic_write_text(stage / "video_bench.md", text)
    print(text)
    print(f"wrote {Path(args.out) / 'video_bench.json'} and video_bench.md")
    return 0



def measurement_covariances(covs: torch.Tensor, variant: str) -> torch.Tensor:
    if variant == "full covariance":
        return covs
    if variant == "diagonal only":
        return torch.diag_embed(torch.diagonal(covs, dim1=-2, dim2=-1))
    if variant == "isotropic constant":
        level = torch.diagonal(covs, dim1=-2, dim2=-1).mean()
        return level * torch.eye(covs.shape[-1], dtype=covs.dtype).expand_as(covs)
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS[1:]}")


def jitter(positions: torch.Tensor) -> float:
    """Mean frame-to-frame acceleration |x(t+1) - 2 x(t) + x(t-1)| over joints and frames (T x 2J positions)."""
    acc = positions[2:] - 2 * positions[1:-1] + positions[:-2]
    return float(acc.reshape(len(acc), -1, 2).norm(dim=-1).mean())


def sequence_scores(means: torch.Tensor, covs: torch.Tensor, truth: torch.Tensor, visible: torch.Tensor,
                    cued: torch.Tensor) -> dict:
    """Per variant: mean joint error over visible joints, over cued ones, and jitter (T x D means and truth,
    T x J masks)."""

    observed = visible.repeat_interleave(2, dim=1)
    out = {}
    for variant in VARIANTS:
        fitted = {}
        if variant == "raw":
            est = means
        else:
            r = measurement_covariances(covs, variant)
            fit = fit_noise(means, r, observed)
            est, _ = rts_smoother(means, r, observed, fit.q, fit.alpha)
            fitted = {"alpha": fit.alpha, "q": fit.q}
        err = (est - truth).reshape(len(est), -1, 2).norm(dim=-1)
        out[variant] = {"error": float(err[visible].mean()),
                        "error_cued": float(err[cued & visible].mean()) if bool((cued & visible).any()) else None,
                        "jitter": jitter(est), **fitted}
    return out


def video_benchmark(model, data_cfg, sequences: int = 8, length: int = 60, seed: int = 0, device="cpu",
                    log=print) -> dict:

    device = torch.device(device)
    per_sequence = []
    for s in range(sequences):
        frames = synthetic_sequence(length, data_cfg.synthetic.image_size, seed + s)
        dataset = PoseDataset.from_config(frames, data_cfg, train=False, skeleton=LSP14)
        preds = predict_dataset(model, make_loader(dataset, data_cfg.batch_size, Runtime(device), shuffle=False),
                                device)
        if len(preds.get("index", [])) != length:
            raise ValueError(f"sequence {s}: {len(preds.get('index', []))} of {length} frames predicted")
        results = coco_results(preds["mean"].numpy(), preds["cov"].numpy(), preds["affine"].numpy(),
                               list(range(length)))
        means = torch.from_numpy(np.stack([np.asarray(r["keypoints"]).reshape(-1, 3)[:, :2].reshape(-1)
                                           for r in results]))
        covs = torch.tensor(np.stack([r["covariance"] for r in results]))
        truth = torch.from_numpy(np.stack([f["joints_true"].reshape(-1) for f in frames]))
        visible = torch.from_numpy(np.stack([f["visibility"] > 0 for f in frames]))
        cued = torch.zeros_like(visible)
        for t, f in enumerate(frames):
            for cue in f["cues"]:
                cued[t, list(cue.limb)] = True
        per_sequence.append(sequence_scores(means, covs, truth, visible, cued))
        per_sequence[-1]["truth"] = {"error": 0.0, "error_cued": 0.0, "jitter": jitter(truth)}
        log(f"sequence {s + 1}/{sequences}: raw {per_sequence[-1]['raw']['error']:.2f} px, full covariance "
            f"{per_sequence[-1]['full covariance']['error']:.2f} px")

    summary = {}
    for variant in (*VARIANTS, "truth"):
        summary[variant] = {}
        for key in ("error", "error_cued", "jitter"):
            vals = [p[variant][key] for p in per_sequence if p[variant][key] is not None]
            summary[variant][key] = mean_std(vals)
    full_wins = sum(p["full covariance"]["error"] < p["diagonal only"]["error"] for p in per_sequence)
    return {"sequences": sequences, "length": length, "seed": seed, "summary": summary, "per_sequence": per_sequence,
            "full_beats_diagonal": full_wins}


def video_markdown(result: dict) -> str:
    out = [f"{result['sequences']} sequences of {result['length']} frames (seeds {result['seed']} ...); mean ± std "
           "over sequences; px in the image. alpha and q: the measurement covariance's scale and the process noise "
           "fitted per sequence (medians).", "",
           "| estimate | mean joint error px | error on cued limbs px | jitter px/frame² | alpha | q |",
           "| --- | --- | --- | --- | --- | --- |"]
    for variant, row in result["summary"].items():
        fitted = [p[variant].get(k) for p in result["per_sequence"] for k in ("alpha",)]
        qs = [p[variant].get("q") for p in result["per_sequence"]]
        alpha = f"{float(np.median(fitted)):.3g}" if all(v is not None for v in fitted) else "–"
        q = f"{float(np.median(qs)):.3g}" if all(v is not None for v in qs) else "–"
        out.append(f"| {variant} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in
                                                   (row["error"], row["error_cued"], row["jitter"]))
                   + f" | {alpha} | {q} |")
    out += ["", f"The full covariance beats its diagonal on mean joint error in {result['full_beats_diagonal']} of "
                f"{result['sequences']} sequences."]
    return "\n".join(out) + "\n"
