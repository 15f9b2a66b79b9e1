"""Running a model over a dataset and turning its predictions into metrics and a report."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pose_toss.covariance import equal_mixture, taylor_diagnostics, unmirror
from pose_toss.metrics import joint_errors, mean_residual_covariance, pose_metrics, tic_summary

OPTIONAL_KEYS = ("target_true", "cov_true", "head_size")


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; nothing on CPU (covariance math casts itself to float32)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_dataset(model, loader, device: torch.device, amp: bool = False, progress: bool = False,
                    desc: str = "predicting", flip_coords: torch.Tensor | None = None,
                    unreadable: list | None = None) -> dict[str, torch.Tensor]:
    """Means, covariances and the batch's labels for every sample the loader yields, on the CPU.

    The model runs in eval mode; TIC's Jacobian still needs autograd, which ``torch.func`` enables
    for itself inside ``no_grad``. Duplicates (padded distributed shards) are dropped by index.

    ``flip_coords`` (the skeleton's left/right permutation of the 2J coordinates) turns on the flip
    test: each crop is also predicted mirrored, and the two Gaussians are merged by moment matching.
    The single-pass means are kept as ``mean_no_flip``.

    A heatmap model also gives ``heatmap_max`` (B x J, each joint's largest soft-argmax probability). A TIC
    model also gives, per sample, ``tic_share`` (tr(eps1^2 J J^T) / tr(cov)) and J's singular
    values (``jacobian_singular_values``), from the single pass.

    Samples whose image could not be read are left out; ``unreadable`` (a list) receives their messages.
    """
    was_training = model.training
    model.eval()
    cols: dict[str, list] = {k: [] for k in ("mean", "cov", "target", "visibility", "affine", "index",
                                             "mean_no_flip", "tic_share", "jacobian_singular_values", "heatmap_max",
                                             *OPTIONAL_KEYS)}
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            if unreadable is not None:
                unreadable.extend(batch.get("missing_images", ()))
            if "image" not in batch:
                continue
            images = batch["image"].to(device, non_blocking=True)
            with autocast_context(device, amp):
                out = model(images)
            mean, cov = out.mean.float(), out.cov.float()
            if out.heatmaps is not None:  # each joint's most probable pixel's probability (a common keypoint score)
                beta = model.head.log_beta.exp().float()
                cols["heatmap_max"].append(torch.softmax(beta * out.heatmaps.float().flatten(2), -1).amax(-1).cpu())
            if out.tic is not None:
                share, singular = taylor_diagnostics(out.tic.jacobian, out.tic.eps1, cov)
                cols["tic_share"].append(share.float().cpu())
                cols["jacobian_singular_values"].append(singular.float().cpu())
            if flip_coords is not None:
                with autocast_context(device, amp):
                    mirrored = model(images.flip(-1))
                back = unmirror(mirrored.mean.float(), mirrored.cov.float(), flip_coords, images.shape[-1])
                cols["mean_no_flip"].append(mean.cpu())
                mean, cov = equal_mixture(mean, cov, *back)
            cols["mean"].append(mean.cpu())
            cols["cov"].append(cov.cpu())
            for key in ("target", "visibility", "affine", *OPTIONAL_KEYS):
                if key in batch:
                    cols[key].append(torch.as_tensor(batch[key]))
            cols["index"].append(torch.as_tensor(batch["index"]))
    finally:
        model.train(was_training)
    preds = {k: torch.cat(v) for k, v in cols.items() if v}
    if "index" in preds:
        idx = preds["index"]
        order = torch.argsort(idx, stable=True)
        keep = torch.ones(len(idx), dtype=torch.bool)
        keep[1:] = idx[order][1:] != idx[order][:-1]
        preds = {k: v[order][keep] for k, v in preds.items()}
    return preds


@torch.no_grad()
def residual_reference(model, loader, device: torch.device, amp: bool = False) -> torch.Tensor:
    """The cue metrics' constant reference: ``metrics.mean_residual_covariance`` of the model's means over the
    loader's samples (the training split, unaugmented), D x D. Only the means are computed."""
    was_training = model.training
    model.eval()
    means, targets, vis = [], [], []
    try:
        for batch in loader:
            if "image" not in batch:
                continue
            with autocast_context(device, amp):
                out = model(batch["image"].to(device, non_blocking=True), with_covariance=False)
            means.append(out.mean.float().cpu())
            targets.append(batch["target"])
            vis.append(batch["visibility"])
    finally:
        model.train(was_training)
    if not means:
        raise ValueError("no readable sample to fit the constant reference covariance on")
    return mean_residual_covariance(torch.cat(means), torch.cat(targets), torch.cat(vis))


def non_finite_predictions(preds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dataset indices of the samples whose predicted mean or covariance holds NaN or Inf."""
    if "mean" not in preds:
        return torch.zeros(0, dtype=torch.long)
    bad = ~torch.isfinite(preds["mean"]).all(1) | ~torch.isfinite(preds["cov"]).flatten(1).all(1)
    return preds["index"][bad]


def attach_cues(preds: dict[str, torch.Tensor], records: list[dict]) -> dict[str, torch.Tensor]:
    """Add ``limb_cue`` (B x limbs, the synthetic cues' strengths) when every predicted record knows its cues."""
    from pose_toss.data.synthetic import record_cue_strengths

    strengths = record_cue_strengths([records[int(i)] for i in preds["index"]])
    if strengths is not None:
        preds["limb_cue"] = torch.from_numpy(strengths)
    return preds


def metrics_from_predictions(preds: dict[str, torch.Tensor], skeleton, reference_cov: torch.Tensor | None = None
                             ) -> dict:
    """``pose_metrics`` of a prediction set; ``reference_cov`` (``residual_reference``) is the constant the cue
    metrics are read against."""
    from pose_toss.data.synthetic import CUE_LIMBS

    cued = "limb_cue" in preds
    metrics = pose_metrics(preds["mean"], preds["cov"], preds["target"], preds["visibility"], skeleton,
                           head_sizes=preds.get("head_size"), target_true=preds.get("target_true"),
                           cov_true=preds.get("cov_true"), limbs=torch.tensor(CUE_LIMBS) if cued else None,
                           limb_cue=preds.get("limb_cue"), reference_cov=reference_cov)
    if "tic_share" in preds:
        metrics.update(tic_summary(preds["tic_share"], preds["jacobian_singular_values"]))
    return metrics


def scalar_metrics(metrics: dict) -> dict:
    """The single-number entries (what metrics.jsonl and comparison tables hold)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


# --------------------------------------------------------------------------------------------------
# `pose-toss eval`: checkpoint + data -> metrics.json, report.md, COCO results, pictures
# --------------------------------------------------------------------------------------------------


def resolve_checkpoint(path) -> tuple[Path, Path | None]:
    """(model file, run directory or None) from a model file, a run directory or a checkpoint directory.

    A run directory gives its best model (by validation NLL), else its final one, else its newest
    epoch checkpoint.
    """
    from pose_toss.engine.trainer import MODEL_FILE, latest_checkpoint

    p = Path(path)
    if p.is_file():
        run = next((d for d in (p.parent, p.parent.parent, p.parent.parent.parent) if (d / "config.yaml").is_file()),
                   None)
        return p, run
    if p.is_dir():
        for cand in (p / "best" / MODEL_FILE, p / MODEL_FILE):
            if cand.is_file():
                return cand, p if (p / "config.yaml").is_file() else None
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest / MODEL_FILE, p
        raise FileNotFoundError(f"{p}: no {MODEL_FILE}, best/{MODEL_FILE} or checkpoints/epoch_* inside")
    raise FileNotFoundError(f"checkpoint not found: {p}")


def resolve_eval_data(data: str, input_size: int, run_dir=None, split: str = "test", progress: bool = False):
    """(data config, records, skeleton, description) for ``--data``: ``synthetic`` (the run's own
    synthetic generator when the checkpoint belongs to a run, else the defaults), a YAML config, or
    a directory written by ``pose-toss make-synthetic``. The crop size follows the model."""
    from pose_toss.config import Config, load_config
    from pose_toss.data.synthetic_files import ANNOTATION_FILE, read_synthetic
    from pose_toss.engine.runtime import load_records, skeleton_for

    base = load_config(Path(run_dir) / "config.yaml") if run_dir is not None else Config()
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
    return data_cfg.dataset == "synthetic" and (data == "synthetic" or Path(data).suffix in (".yaml", ".yml"))


# Training figures the cue metrics' constant reference is fitted on (a mean of residual outer products).
REFERENCE_SAMPLES = 1000


def reference_records(data: str, data_cfg, evaluated, records) -> tuple:
    """(dataset, description) the constant reference covariance is fitted on: up to ``REFERENCE_SAMPLES``
    figures of the generator's training split, or the evaluated set itself for files on disk."""
    from pose_toss.data.dataset import PoseDataset
    from pose_toss.data.synthetic import SyntheticPoseDataset

    if not is_synthetic_generator(data, data_cfg):
        return evaluated, f"the evaluated set ({len(records)} samples)"
    generator = SyntheticPoseDataset.from_config(data_cfg.synthetic, "train")
    train = [generator.record(i) for i in range(min(len(generator), REFERENCE_SAMPLES))]
    return (PoseDataset.from_config(train, data_cfg, train=False, skeleton=generator.skeleton),
            f"{len(train)} figures of the training split")


def mean_pose_baseline(preds: dict, data_cfg) -> tuple[float, str]:
    """Mean joint error of predicting one fixed pose for everybody: the training set's mean pose (crop
    frame, per joint over its visible labels) when the training split can be read, else the evaluated
    set's own. The floor a model must clearly beat to have learned anything."""
    from pose_toss.data.dataset import crop_labels
    from pose_toss.data.readers import AnnotationError
    from pose_toss.engine.runtime import load_records

    target = preds["target"].reshape(len(preds["target"]), -1, 2)
    vis = preds["visibility"].bool()
    try:
        train, _ = load_records(data_cfg, "train", images=False)
        labels = crop_labels(train, data_cfg.input_size, data_cfg.padding)
        poses = torch.from_numpy(labels["targets"]).reshape(len(train), -1, 2)
        weights = torch.from_numpy(labels["visibility"]).unsqueeze(-1)
        source = "training set"
    except (OSError, ValueError, AnnotationError):
        poses, weights, source = target, vis.unsqueeze(-1).float(), "evaluated set"
    centre = (poses * weights).sum(0) / weights.sum(0).clamp_min(1)
    return float((target - centre).norm(dim=-1)[vis].mean()), source


def prediction_pictures(dataset, preds: dict, skeleton, count: int = 16, tile: int = 256) -> np.ndarray:
    """A contact sheet of crops with the predicted pose and its 50% / 90% joint ellipses."""
    from pose_toss.data.dataset import sample_image_rgb
    from pose_toss.viz.draw import contact_sheet, draw_pose_scaled

    tiles = []
    for n in range(min(count, len(preds["index"]))):
        i = int(preds["index"][n])
        image = sample_image_rgb(dataset[i])
        factor = tile / image.shape[0]
        tiles.append(draw_pose_scaled(image, preds["mean"][n].numpy(), preds["cov"][n].numpy(), factor,
                                      skeleton=skeleton, levels=(0.5, 0.9)))
    return contact_sheet(tiles, cols=4, tile_size=tile)


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
    from pose_toss.outputs import check_output_dir, run_lock

    inputs = [checkpoint, data if data != "synthetic" else None]
    check_output_dir(out, overwrite, inputs)
    with run_lock(out):
        return _evaluate(checkpoint, data, out, split, overwrite, device, batch_size, num_workers, pictures, progress,
                         flip_test, inputs, simulated_detections=simulated_detections, occlusions=occlusions)


def _evaluate(checkpoint, data, out, split, overwrite, device, batch_size, num_workers, pictures, progress,
              flip_test, inputs, log=print, simulated_detections=None, occlusions=0) -> dict:
    import json

    from pose_toss.coco_results import coco_results, write_coco_results
    from pose_toss.data.coco_format import coco_ground_truth, record_area, record_image_id
    from pose_toss.data.dataset import PoseDataset, image_file_problem
    from pose_toss.engine.coco_eval import ap_by_score
    from pose_toss.engine.coco_eval import simulated_detections as simulate
    from pose_toss.engine.report import evaluation_report
    from pose_toss.engine.runtime import Runtime, make_loader, resolve_device
    from pose_toss.models.checkpoint import load_model
    from pose_toss.outputs import atomic_write_text, jsonable, staged_output_dir
    from pose_toss.viz.draw import write_png

    model_file, run_dir = resolve_checkpoint(checkpoint)
    dev = resolve_device(device)
    model = load_model(model_file, map_location=dev)
    data_cfg, records, skeleton, source = resolve_eval_data(data, model.input_size, run_dir, split, progress)
    if skeleton.num_joints != model.num_joints:
        raise ValueError(f"{model_file}: the model predicts {model.num_joints} joints but {source} has "
                         f"{skeleton.num_joints} ({skeleton.name})")
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
        from pose_toss.data.synthetic import SyntheticPoseDataset
        from pose_toss.engine.occlusion import occlusion_check

        generator = SyntheticPoseDataset.from_config(data_cfg.synthetic, split)
        metrics["occlusion"] = occlusion_check(model, generator, data_cfg, dev, pairs=min(occlusions, len(generator)),
                                               batch_size=batch_size or data_cfg.batch_size)
        metrics.update({f"occlusion_{k}": v for k, v in metrics["occlusion"].items() if k != "pairs"})
    metrics["samples_given"] = len(records)
    metrics["unreadable_images"] = unreadable
    metrics["damaged_images"] = damaged
    metrics["flip_test"] = flip_test
    if flip_test:
        single = joint_errors(preds["mean_no_flip"], preds["target"])
        metrics["mean_joint_error_no_flip"] = float(single[preds["visibility"] > 0].mean())
    metrics["mean_pose_error"], metrics["mean_pose_from"] = mean_pose_baseline(preds, data_cfg)
    # COCO: results scored by expected OKS, against these same people as ground truth.
    sigmas = skeleton.oks_sigmas if data_cfg.oks_sigmas is None else np.asarray(data_cfg.oks_sigmas)
    if len(sigmas) != skeleton.num_joints:
        raise ValueError(f"data.oks_sigmas has {len(sigmas)} values for the {skeleton.num_joints} joints of "
                         f"{skeleton.name}")
    results = coco_results(preds["mean"].numpy(), preds["cov"].numpy(), preds["affine"].numpy(),
                           [record_image_id(r, int(i)) for r, i in zip(picked, preds["index"], strict=True)],
                           areas=[record_area(r) for r in picked], sigmas=sigmas)
    ground_truth = coco_ground_truth(picked, skeleton)
    by_score = {"ground-truth boxes": ap_by_score(ground_truth, results, preds.get("heatmap_max"), sigmas)}
    metrics["coco"] = by_score["ground-truth boxes"]["expected_oks"]
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
        context = [f"model: `{model_file}` ({model.config['backbone']}, {model.config['covariance']} covariance, "
                   f"{model.input_size} px)", f"data: {source}"]
        if flip_test:
            context.append("flip test: each crop and its mirror image, merged as an equal Gaussian mixture "
                           f"(single-pass mean joint error {metrics['mean_joint_error_no_flip']:.2f} px)")
        atomic_write_text(stage / "report.md", evaluation_report(metrics, "Evaluation", context, pics, plots))
    return metrics


def keypoint_confidence_reliability(results: list[dict], records: list[dict], sigmas, bins: int = 10) -> dict:
    """How well each visible keypoint's confidence (its expected keypoint similarity, the third value of its
    COCO triplet) predicts the keypoint similarity it actually had (``metrics.reliability``)."""
    from pose_toss.data.coco_format import record_area
    from pose_toss.metrics import keypoint_similarity, reliability

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
    import json

    from pose_toss.viz.plots import (
        calibration_plot,
        keypoint_reliability_plot,
        sparsification_plot,
        training_curves_plot,
    )

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
