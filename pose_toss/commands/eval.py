"""`pose-toss eval`: a model on a dataset -> metrics.json, report.md, COCO results with covariances, pictures.

``evaluate_checkpoint`` is the command's body (also the Python API ``pose_toss.evaluate``): predictions from
``engine.prediction``, COCO AP from ``engine.coco_eval``, on synthetic data the occlusion check
(``engine.occlusion``), the report from ``engine.report``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pose_toss.coco_results import coco_results, write_coco_results
from pose_toss.commands.options import add_checkpoint, add_device, add_output, add_quiet, whole_number
from pose_toss.config import Config, load_config
from pose_toss.data.coco_format import coco_ground_truth, record_area, record_image_id
from pose_toss.data.dataset import PoseDataset, crop_labels, image_file_problem
from pose_toss.data.loading import load_records, make_loader, skeleton_for
from pose_toss.data.readers import AnnotationError, read_coco
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.synthetic_files import ANNOTATION_FILE, read_synthetic
from pose_toss.engine.coco_eval import ap_by_score, keypoint_ap_against_file
from pose_toss.engine.coco_eval import simulated_detections as simulate
from pose_toss.engine.occlusion import occlusion_check
from pose_toss.engine.prediction import (
    attach_cues,
    metrics_from_predictions,
    non_finite_predictions,
    predict_dataset,
    residual_reference,
)
from pose_toss.engine.report import comparison_table, evaluation_report, prediction_pictures
from pose_toss.engine.runtime import Runtime, resolve_device
from pose_toss.metrics import joint_errors, keypoint_similarity, reliability
from pose_toss.models.checkpoint import load_model
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, run_lock, staged_output_dir
from pose_toss.run_dir import CONFIG_FILE, resolve_checkpoint
from pose_toss.viz.draw import write_png
from pose_toss.viz.plots import calibration_plot, keypoint_reliability_plot, sparsification_plot, training_curves_plot


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument("--data", default=None,
                   help="'synthetic' (the run's generator; the default), a .yaml config, or a make-synthetic directory")
    p.add_argument("--ann", metavar="FILE", help="a COCO-style keypoints file to evaluate on instead of --data (any "
                                                 "keypoint set; its results are also scored against it by plain "
                                                 "pycocotools)")
    p.add_argument("--images", metavar="DIR", help="with --ann: its images folder (default: beside the file, or "
                                                   "../<split> beside annotations/person_keypoints_<split>.json)")
    p.add_argument("--split", default="test", choices=("test", "val"))
    add_output(p)
    add_device(p)
    p.add_argument("--batch-size", type=whole_number(1), default=None, help="default: the config's data.batch_size")
    p.add_argument("--pictures", type=whole_number(0), default=16, help="crops drawn with their ellipses (0: none)")
    p.add_argument("--flip-test", action="store_true",
                   help="also predict each mirrored crop and merge the two Gaussians (moment matching)")
    p.add_argument("--simulated-detections", metavar="JITTER,FALSE_POSITIVES",
                   help="also predict from detector-like boxes: each true box moved and scaled by JITTER (a "
                        "fraction of its size), and for a FALSE_POSITIVES share of the people one extra box "
                        "elsewhere in the image (e.g. 0.1,0.25); "
                        "report COCO AP by expected OKS, heatmap maximum and a constant score")
    p.add_argument("--occlusions", type=whole_number(0), default=200, metavar="N",
                   help="synthetic generator only: also predict N test figures with and without an occluder added "
                        "on one limb, and report how the covariance responds (with --flip-test, predicted with it; "
                        "0 skips it; default 200)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    if args.occlusions < 0:
        raise ValueError(f"--occlusions: expected a number of figures >= 0, got {args.occlusions}")
    if args.ann is not None and args.data is not None:
        raise ValueError("give --data or --ann FILE (a COCO-style keypoints file), not both")
    if args.images is not None and args.ann is None:
        raise ValueError("--images goes with --ann FILE: the images of that COCO-style file")
    data = CocoFile(args.ann, args.images) if args.ann else args.data or "synthetic"
    m = evaluate_checkpoint(args.checkpoint, data, args.out, split=args.split, overwrite=args.overwrite,
                            device=args.device, batch_size=args.batch_size, pictures=args.pictures,
                            progress=not args.quiet, flip_test=args.flip_test,
                            simulated_detections=parse_detector(args.simulated_detections),
                            occlusions=args.occlusions)
    print(summary_text(m, Path(args.out), args.pictures > 0))
    return 0


@dataclass(frozen=True)
class CocoFile:
    """A COCO-style keypoints file (any keypoint set) and its images folder to evaluate on (``--ann``, ``--images``;
    None: found beside the file)."""
    annotations: str
    images: str | None = None


def against_mean_pose(error: float, mean_pose: float) -> str:
    """How an error compares with the mean pose's, the right way round: "3.0x lower" or "1.4x higher"."""
    if error <= mean_pose:
        return f"{mean_pose / max(error, 1e-9):.1f}x lower"
    return f"{error / max(mean_pose, 1e-9):.1f}x higher: worse than predicting the mean pose"


def summary_text(m: dict, out: Path, pictures: bool) -> str:
    """What ``pose-toss eval`` prints: the summary table, the headline numbers and where the outputs are."""
    lines = [comparison_table(["model"], [m], mark_best=False),
             f"mean joint error {m['mean_joint_error']:.2f} px against {m['mean_pose_error']:.2f} px for the "
             f"{m['mean_pose_from']}'s mean pose ({against_mean_pose(m['mean_joint_error'], m['mean_pose_error'])}); "
             f"90% ellipses hold {100 * m['coverage@0.9']:.1f}% of the ground truths",
             "COCO keypoints (scores: expected OKS): " + ", ".join(
                 f"{k} {v:.3f}" for k, v in m["coco"].items() if v is not None)]
    if m.get("coco_file"):
        lines.append("against the file itself (plain pycocotools): " + ", ".join(
            f"{k} {v:.3f}" for k, v in m["coco_file"].items() if v is not None))
    if m.get("flip_test"):
        single = m["mean_joint_error_no_flip"]
        lines.append(f"flip test on; without it, the mean joint error is {single:.2f} px "
                     f"({against_mean_pose(single, m['mean_pose_error'])} against the mean pose)")
    if "cue_auroc_spread" in m:
        constant = m.get("cue_auroc_spread_constant", 0.5)
        lines.append(f"synthetic cues: the spread tells a cued joint from the same joint uncued with AUROC "
                     f"{m['cue_auroc_spread']:.3f} (a per-joint constant: {constant:.3f}, "
                     + (f"exactly calibrated to this model: {m['cue_auroc_spread_calibrated']:.3f}, "
                        if "cue_auroc_spread_calibrated" in m else "")
                     + f"the true label noise: {m['cue_auroc_spread_true']:.3f}); the label noise is "
                     f"{100 * m['label_noise_share']:.0f}% of the predicted covariance's trace")
    if "occlusion" in m:
        o = m["occlusion"]
        lines.append(f"occluder added on one limb of {o['pairs']} test figures: the limb end's spread rose in "
                     f"{100 * o['spread_rise']:.0f}% (median x{o['spread_ratio']:.2f}, its error "
                     f"x{o['error_ratio']:.2f}; exactly calibrated: {100 * o['calibrated_spread_rise']:.0f}%); "
                     f"90% ellipses hold {100 * o['coverage@0.9_occluded']:.0f}% of its "
                     f"labels occluded, {100 * o['coverage@0.9_plain']:.0f}% without (it would hold 90% at "
                     f"x{o['scale_for_0.9_occluded']:.2f} of its covariance occluded, "
                     f"x{o['scale_for_0.9_plain']:.2f} without)"
                     + (f"; the occlusion head's score for it rose in {100 * o['hidden_score_rise']:.0f}%"
                        if "hidden_score_rise" in o else ""))
    if m.get("occlusion", {}).get("by_hidden_score_rise"):
        lines.append("the limb end's spread rose in " + " and in ".join(
            f"{100 * g['spread_rise']:.0f}% of the {g['pairs']} pairs where the occlusion head's score "
            f"{'rose' if g['score_rose'] else 'did not rise'}" for g in m["occlusion"]["by_hidden_score_rise"]))
    if m.get("occlusion", {}).get("by_hidden_probability"):
        lines.append("occluded labels inside the 90% ellipse by the occlusion head's probability that the joint is "
                     "hidden: " + ", ".join(f"{g['from']:.1f}-{g['to']:.1f} {100 * g['coverage@0.9_occluded']:.0f}% "
                                            f"({g['pairs']} pairs)" for g in m["occlusion"]["by_hidden_probability"]))
    if "occlusion_auroc" in m:
        lines.append(f"occlusion head: it tells a hidden joint from the same joint seen with AUROC "
                     f"{m['occlusion_auroc']:.3f} (within each joint)")
    if m.get("unreadable_images"):
        lines.append(f"warning: {len(m['unreadable_images'])} of {m['samples_given']} samples left out: their images "
                     f"could not be read (listed in report.md); the numbers are over the other {m['num_samples']}")
    if m.get("damaged_images"):
        lines.append(f"warning: {len(m['damaged_images'])} damaged images were predicted on (listed in report.md)")
    lines += [f"report: {out / 'report.md'}",
              f"metrics: {out / 'metrics.json'}   predictions (COCO + covariance): {out / 'predictions.json'}"]
    if pictures:
        lines.append(f"pictures: {out / 'pictures.png'}")
    return "\n".join(lines)


def parse_detector(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        jitter, false_positives = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--simulated-detections: expected JITTER,FALSE_POSITIVES (e.g. 0.1,0.25), got {text!r}"
                         ) from None
    if not (0 <= jitter < 1 and 0 <= false_positives <= 1):
        raise ValueError(f"--simulated-detections: expected 0 <= JITTER < 1 and 0 <= FALSE_POSITIVES <= 1, "
                         f"got {text!r}")
    return jitter, false_positives


def resolve_eval_data(data, input_size: int, run_dir=None, split: str = "test", progress: bool = False,
                      skeleton=None):
    """(data config, records, skeleton, description) for ``--data``: ``synthetic`` (the run's own
    synthetic generator when the checkpoint belongs to a run, else the defaults), a YAML config, a
    directory written by ``pose-toss make-synthetic``, or a ``CocoFile`` (read with ``skeleton``, the model's, when
    given: its flips and OKS constants, checked against the file's keypoint names). The crop size follows the
    model."""
    base = load_config(Path(run_dir) / CONFIG_FILE) if run_dir is not None else Config()
    if isinstance(data, CocoFile):
        data_cfg = base.data
        data_cfg.input_size = input_size
        records = read_coco(data.annotations, data.images, skeleton=skeleton)
        if not records:
            raise ValueError(f"--ann {data.annotations}: no annotation with keypoints to evaluate on")
        return data_cfg, records, skeleton_for(records), f"{data.annotations} ({len(records)} people)"
    p = Path(data)
    if data == "synthetic":
        data_cfg, source = base.data, f"synthetic {split} split"
    elif p.suffix in (".yaml", ".yml"):
        data_cfg, source = load_config(p).data, f"{p} ({split} split)"
    elif p.is_dir() and (p / ANNOTATION_FILE).is_file():
        data_cfg = base.data
        data_cfg.input_size = input_size
        records = read_synthetic(p)
        return data_cfg, records, skeleton_for(records), f"{p} ({len(records)} samples)"
    else:
        raise FileNotFoundError(f"--data {data!r}: expected 'synthetic', a .yaml config, or a directory holding "
                                f"{ANNOTATION_FILE} (from `pose-toss make-synthetic`)")
    data_cfg.input_size = input_size
    records, skeleton = load_records(data_cfg, split, progress)
    return data_cfg, records, skeleton, source


def is_synthetic_generator(data: str, data_cfg) -> bool:
    """Whether ``--data`` is the synthetic generator itself (not files written by make-synthetic)."""
    if isinstance(data, CocoFile):
        return False
    return data_cfg.dataset == "synthetic" and (data == "synthetic" or Path(data).suffix in (".yaml", ".yml"))


# Training figures the cue metrics' constant reference is fitted on (a mean of residual outer products).
REFERENCE_SAMPLES = 1000


def reference_records(data: str, data_cfg, evaluated, records) -> tuple:
    """(dataset, description) the constant reference covariance is fitted on: up to ``REFERENCE_SAMPLES``
    figures of the generator's training split, or the evaluated set itself for files on disk."""
    if not is_synthetic_generator(data, data_cfg):
        return evaluated, f"the evaluated set ({len(records)} samples)"
    generator = SyntheticPoseDataset.from_config(data_cfg.synthetic, "train")
    train = [generator.record(i) for i in range(min(len(generator), REFERENCE_SAMPLES))]
    return (PoseDataset.from_config(train, data_cfg, train=False, skeleton=generator.skeleton),
            f"{len(train)} figures of the training split")


def mean_pose_baseline(preds: dict, data_cfg, own_training_set: bool = True) -> tuple[float, str]:
    """Mean joint error of predicting one fixed pose for everybody: the training set's mean pose (crop
    frame, per joint over its visible labels) when the training split can be read (and has the same joints),
    else the evaluated set's own. The floor a model must clearly beat to have learned anything."""
    target = preds["target"].reshape(len(preds["target"]), -1, 2)
    vis = preds["visibility"].bool()
    poses = None
    if own_training_set:
        try:
            train, _ = load_records(data_cfg, "train", images=False)
            labels = crop_labels(train, data_cfg.input_size, data_cfg.padding)
            poses = torch.from_numpy(labels["targets"]).reshape(len(train), -1, 2)
            weights = torch.from_numpy(labels["visibility"]).unsqueeze(-1)
            source = "training set"
        except (OSError, ValueError, AnnotationError):
            poses = None
    if poses is None or poses.shape[1] != target.shape[1]:
        poses, weights, source = target, vis.unsqueeze(-1).float(), "evaluated set"
    centre = (poses * weights).sum(0) / weights.sum(0).clamp_min(1)
    return float((target - centre).norm(dim=-1)[vis].mean()), source


def evaluate_checkpoint(checkpoint, data: str, out, *, split: str = "test", overwrite: bool = False,
                        device: str = "auto", batch_size: int | None = None, num_workers: int = 0,
                        pictures: int = 16, progress: bool = True, flip_test: bool = False,
                        simulated_detections: tuple[float, float] | None = None, occlusions: int = 200) -> dict:
    """Evaluate a model on a dataset; writes ``metrics.json``, ``report.md``, ``predictions.json``
    (COCO keypoint results with covariances) and ``pictures.png`` into ``out`` (staged, then renamed).

    ``flip_test``: predict each crop and its mirror image and merge the two (see ``predict_dataset``);
    the single-pass error is then reported too, as ``mean_joint_error_no_flip``. ``simulated_detections``
    (jitter, share of people with a false positive): also predict from detector-like boxes (``coco_eval.
    simulated_detections``) and report COCO AP by each way of scoring people there. ``occlusions``: on the
    synthetic generator, this many test figures are also predicted with and without an added occluder
    (``occlusion.occlusion_check``; 0 skips it)."""
    inputs = ([checkpoint, data.annotations, data.images] if isinstance(data, CocoFile) else
              [checkpoint, data if data != "synthetic" else None])
    check_output_dir(out, overwrite, inputs)
    with run_lock(out):
        return _evaluate(checkpoint, data, out, split, overwrite, device, batch_size, num_workers, pictures, progress,
                         flip_test, inputs, simulated_detections=simulated_detections, occlusions=occlusions)


def _evaluate(checkpoint, data, out, split, overwrite, device, batch_size, num_workers, pictures, progress,
              flip_test, inputs, log=print, simulated_detections=None, occlusions=0) -> dict:
    model_file, run_dir = resolve_checkpoint(checkpoint)
    dev = resolve_device(device)
    model = load_model(model_file, map_location=dev)
    data_cfg, records, skeleton, source = resolve_eval_data(data, model.input_size, run_dir, split, progress,
                                                            skeleton=model.skeleton)
    if skeleton.num_joints != model.num_joints:
        raise ValueError(f"{model_file}: the model predicts {model.num_joints} joints but {source} has "
                         f"{skeleton.num_joints} ({skeleton.name})")
    if model.skeleton is not None and model.skeleton.joint_names != skeleton.joint_names:
        raise ValueError(f"{model_file}: the model's joints are {list(model.skeleton.joint_names)} "
                         f"({model.skeleton.name}); {source} has {list(skeleton.joint_names)}")
    dataset = PoseDataset.from_config(records, data_cfg, train=False, skeleton=skeleton)
    loader = make_loader(dataset, batch_size or data_cfg.batch_size, Runtime(dev), shuffle=False,
                         num_workers=num_workers)
    flip_coords = torch.from_numpy(skeleton.flip_coordinate_index.copy()) if flip_test else None
    unreadable: list[str] = []
    preds = predict_dataset(model, loader, dev, progress=progress, desc="evaluating", flip_coords=flip_coords,
                            unreadable=unreadable)
    unreadable = list(dict.fromkeys(unreadable))
    for message in unreadable:
        log(f"warning: left out: {message}")
    picked = [records[int(i)] for i in preds.get("index", [])]  # the records that were predicted on
    damaged = [f"{r['image_path']}: {why}" for r in picked if r.get("image_path") is not None
               for why in [image_file_problem(r["image_path"])] if why]
    for message in damaged:
        log(f"warning: {message}; predicted on, but the result may be wrong")
    if "index" not in preds:
        raise ValueError(f"{source}: none of the {len(records)} images could be read (first: "
                         f"{unreadable[0] if unreadable else 'none'})")
    bad = non_finite_predictions(preds)
    if len(bad):
        first = records[int(bad[0])].get("image_path", f"sample {int(bad[0])}")
        raise ValueError(f"{model_file}: the model predicts NaN or Inf for {len(bad)} of {len(preds['index'])} samples "
                         f"(first: {first}); its weights are finite, so its training diverged or these inputs are "
                         "far outside what it saw")
    preds = attach_cues(preds, records)
    reference = None
    if "limb_cue" in preds:  # synthetic: the constant the cue metrics are read against
        reference_set, reference_from = reference_records(data, data_cfg, dataset, records)
        reference = residual_reference(model, make_loader(reference_set, batch_size or data_cfg.batch_size,
                                                          Runtime(dev), shuffle=False, num_workers=num_workers), dev)
    metrics = metrics_from_predictions(preds, skeleton, reference)
    if reference is not None:
        metrics["cue_reference_from"] = reference_from
    if occlusions > 0 and is_synthetic_generator(data, data_cfg):
        generator = SyntheticPoseDataset.from_config(data_cfg.synthetic, split)
        metrics["occlusion"] = occlusion_check(model, generator, data_cfg, dev, pairs=min(occlusions, len(generator)),
                                               batch_size=batch_size or data_cfg.batch_size, flip_coords=flip_coords)
        metrics.update({f"occlusion_{k}": v for k, v in metrics["occlusion"].items()
                        if isinstance(v, float)})
    metrics["samples_given"] = len(records)
    metrics["unreadable_images"] = unreadable
    metrics["damaged_images"] = damaged
    metrics["flip_test"] = flip_test
    if flip_test:
        single = joint_errors(preds["mean_no_flip"], preds["target"])
        metrics["mean_joint_error_no_flip"] = float(single[preds["visibility"] > 0].mean())
    metrics["mean_pose_error"], metrics["mean_pose_from"] = mean_pose_baseline(
        preds, data_cfg, own_training_set=not isinstance(data, CocoFile))
    # COCO: results scored by expected OKS, against these same people as ground truth.
    sigmas = skeleton.oks_sigmas if data_cfg.oks_sigmas is None else np.asarray(data_cfg.oks_sigmas)
    if len(sigmas) != skeleton.num_joints:
        raise ValueError(f"data.oks_sigmas has {len(sigmas)} values for the {skeleton.num_joints} joints of "
                         f"{skeleton.name}")
    results = coco_results(preds["mean"].numpy(), preds["cov"].numpy(), preds["affine"].numpy(),
                           [record_image_id(r, int(i)) for r, i in zip(picked, preds["index"], strict=True)],
                           areas=[record_area(r) for r in picked], sigmas=sigmas, skeleton=skeleton.name,
                           category_id=int(picked[0].get("category_id", 1)) if picked else 1)
    if "occlusion_logits" in preds:  # as predict writes it: each joint's probability of being hidden
        for result, logits in zip(results, torch.sigmoid(preds["occlusion_logits"].double()), strict=True):
            result["occluded"] = [round(float(p), 4) for p in logits]
    ground_truth = coco_ground_truth(picked, skeleton)
    by_score = {"ground-truth boxes": ap_by_score(ground_truth, results, preds.get("heatmap_max"), sigmas)}
    metrics["coco"] = by_score["ground-truth boxes"]["expected_oks"]
    if isinstance(data, CocoFile):  # the written results, by plain pycocotools against the original file
        metrics["coco_file"] = keypoint_ap_against_file(results, data.annotations, sigmas)
    metrics["oks_sigmas"] = [float(v) for v in sigmas]
    metrics.update({f"coco_{k.lower()}": v for k, v in metrics["coco"].items()})
    metrics["keypoint_reliability"] = keypoint_confidence_reliability(results, picked, sigmas)
    metrics["keypoint_confidence_ece"] = metrics["keypoint_reliability"]["ece"]
    if simulated_detections is not None:
        jitter, false_positives = simulated_detections
        dets = simulate(picked, jitter, false_positives, seed=0)
        det_set = PoseDataset.from_config(dets, data_cfg, train=False, skeleton=skeleton)
        det_preds = predict_dataset(model, make_loader(det_set, batch_size or data_cfg.batch_size, Runtime(dev),
                                                       shuffle=False, num_workers=num_workers),
                                    dev, progress=progress, desc="simulated detections")
        kept = [dets[int(i)] for i in det_preds["index"]]
        det_results = coco_results(det_preds["mean"].numpy(), det_preds["cov"].numpy(), det_preds["affine"].numpy(),
                                   [record_image_id(r, 0) for r in kept],
                                   areas=[float(r["bbox"][2] * r["bbox"][3]) for r in kept], sigmas=sigmas)
        by_score[f"simulated detections (jitter {jitter:g}, false positives for {false_positives:g} of people)"] = \
            ap_by_score(ground_truth, det_results, det_preds.get("heatmap_max"), sigmas)
    metrics["ap_by_score"] = by_score
    with staged_output_dir(out, overwrite, inputs) as stage:
        atomic_write_text(stage / "metrics.json", json.dumps(jsonable(
            {"checkpoint": str(model_file), "data": source, **metrics}), indent=1))
        write_coco_results(stage / "predictions.json", results)
        pics = []
        if pictures > 0:
            write_png(stage / "pictures.png", prediction_pictures(dataset, preds, skeleton, pictures))
            pics.append("pictures.png")
        plots = report_plots(stage, metrics, skeleton, run_dir)
        context = [f"model: `{model_file}` ({model.config.backbone}, {model.config.covariance} covariance, "
                   f"{model.input_size} px)", f"data: {source}"]
        if flip_test:
            context.append("flip test: each crop and its mirror image, merged as an equal Gaussian mixture "
                           f"(single-pass mean joint error {metrics['mean_joint_error_no_flip']:.2f} px)")
        atomic_write_text(stage / "report.md", evaluation_report(metrics, "Evaluation", context, pics, plots))
    return metrics


def keypoint_confidence_reliability(results: list[dict], records: list[dict], sigmas, bins: int = 10) -> dict:
    """How well each visible keypoint's confidence (its expected keypoint similarity, the third value of its
    COCO triplet) predicts the keypoint similarity it actually had (``metrics.reliability``)."""
    kps = torch.tensor([r["keypoints"] for r in results], dtype=torch.float64).reshape(len(results), -1, 3)
    truth = torch.from_numpy(np.stack([np.nan_to_num(np.asarray(r["joints"], dtype=np.float64)) for r in records]))
    vis = torch.from_numpy(np.stack([np.asarray(r["visibility"]) > 0 for r in records]))
    area = torch.tensor([record_area(r) for r in records], dtype=torch.float64)
    ks = keypoint_similarity(kps[..., :2].reshape(len(results), -1), truth.reshape(len(records), -1), area,
                             torch.as_tensor(np.asarray(sigmas, dtype=np.float64)))
    return reliability(kps[..., 2][vis], ks[vis], bins)


def report_plots(out: Path, metrics: dict, skeleton, run_dir=None) -> dict[str, str]:
    """Calibration and sparsification plots, and training curves when the run's metrics.jsonl is at
    hand; returns {what: file name} for the report to link."""
    calibration_plot(metrics["calibration"], skeleton.joint_names, out / "calibration.png")
    if "keypoint_reliability" in metrics:
        keypoint_reliability_plot(metrics["keypoint_reliability"], out / "keypoint_reliability.png")
    sparsification_plot(metrics["sparsification"], out / "sparsification.png")
    plots = {"calibration": "calibration.png", "sparsification": "sparsification.png"}
    if "keypoint_reliability" in metrics:
        plots["keypoint_reliability"] = "keypoint_reliability.png"
    log = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
    if log is not None and log.is_file():
        history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if history:
            training_curves_plot(history, out / "training_curves.png")
            plots["training"] = "training_curves.png"
    return plots
