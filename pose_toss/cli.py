"""The ``pose-toss`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pose_toss.config import ConfigError, load_config, save_config
from pose_toss.outputs import (
    LockedError,
    OutputExistsError,
    check_output_dir,
    check_output_file,
    run_lock,
    staged_output_dir,
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults when omitted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value; repeatable")


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from pose_toss.data.synthetic import SyntheticPoseDataset
    from pose_toss.data.synthetic_files import write_synthetic

    overrides = list(args.overrides)
    for flag, key in ((args.num, "num_samples"), (args.size, "image_size"), (args.seed, "seed")):
        if flag is not None:
            overrides.append(f"data.synthetic.{key}={flag}")
    cfg = load_config(args.config, overrides)
    inputs = [args.config, *cfg.input_paths()]
    check_output_dir(args.out, args.overwrite, inputs)
    dataset = SyntheticPoseDataset.from_config(cfg.data.synthetic)
    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as stage:
        paths = write_synthetic(dataset, stage, sheet_count=args.sheet, progress=not args.quiet)
        save_config(cfg, stage / "config.yaml")
    out = Path(args.out)
    print(f"wrote {len(dataset)} images and {out / paths['annotations'].name}")
    print(f"contact sheet: {out / paths['contact_sheet'].name}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pose_toss.engine.trainer import train

    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; drop --config")
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume writes into the run it continues; drop --out or give the same directory")
        cfg_path = Path(args.resume) / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{args.resume}: no config.yaml; is it a `pose-toss train` output directory?")
        cfg = load_config(cfg_path, args.overrides)
        out = Path(args.resume)
    else:
        if not args.out:
            raise ConfigError("--out is required (or --resume DIR)")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out)
        check_output_dir(out, args.overwrite, [args.config, *cfg.input_paths()])
    summary = train(cfg, out, resume=bool(args.resume), overwrite=args.overwrite)
    if summary["history"]:
        last = summary["history"][-1]
        print(f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s; final val error "
              f"{last['val_mean_joint_error']:.2f} px, val NLL {last['val_nll']:.2f}; best val NLL "
              f"{summary['best_val_nll']:.2f} at epoch {summary['best_epoch']}")
    print(f"model: {out / 'best' / 'model.safetensors'} (best, epoch {summary['best_epoch']}), "
          f"{out / 'model.safetensors'} (final)")
    print(f"log: {out / 'metrics.jsonl'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pose_toss.engine.evaluation import evaluate_checkpoint
    from pose_toss.engine.report import comparison_table

    if args.occlusions < 0:
        raise ValueError(f"--occlusions: expected a number of figures >= 0, got {args.occlusions}")
    m = evaluate_checkpoint(args.checkpoint, args.data, args.out, split=args.split, overwrite=args.overwrite,
                            device=args.device, batch_size=args.batch_size, pictures=args.pictures,
                            progress=not args.quiet, flip_test=args.flip_test,
                            simulated_detections=parse_detector(args.simulated_detections),
                            occlusions=args.occlusions)
    print(comparison_table(["model"], [m], mark_best=False))
    print(f"mean joint error {m['mean_joint_error']:.2f} px against {m['mean_pose_error']:.2f} px for the "
          f"{m['mean_pose_from']}'s mean pose ({m['mean_pose_error'] / max(m['mean_joint_error'], 1e-9):.1f}x lower); "
          f"90% ellipses hold "
          f"{100 * m['coverage@0.9']:.1f}% of the ground truths")
    coco = m["coco"]
    print("COCO keypoints (scores: expected OKS): " + ", ".join(
        f"{k} {v:.3f}" for k, v in coco.items() if v is not None))
    if args.flip_test:
        print(f"flip test on; without it, the mean joint error is {m['mean_joint_error_no_flip']:.2f} px "
              f"({m['mean_pose_error'] / max(m['mean_joint_error_no_flip'], 1e-9):.1f}x below the mean pose)")
    if "cue_auroc_spread" in m:
        print(f"synthetic cues: the spread tells a cued joint from the same joint uncued with AUROC "
              f"{m['cue_auroc_spread']:.3f} (a per-joint constant: {m.get('cue_auroc_spread_constant', 0.5):.3f}, "
              f"the true label noise: {m['cue_auroc_spread_true']:.3f}); the label noise is "
              f"{100 * m['label_noise_share']:.0f}% of the predicted covariance's trace")
    if "occlusion" in m:
        o = m["occlusion"]
        print(f"occluder added on one limb of {o['pairs']} test figures: the limb end's spread rose in "
              f"{100 * o['spread_rise']:.0f}% (median x{o['spread_ratio']:.2f}, its error x{o['error_ratio']:.2f}); "
              f"90% ellipses hold {100 * o['coverage@0.9_occluded']:.0f}% of its labels occluded, "
              f"{100 * o['coverage@0.9_plain']:.0f}% without")
    if m.get("unreadable_images"):
        print(f"warning: {len(m['unreadable_images'])} of {m['samples_given']} samples left out: their images could "
              f"not be read (listed in report.md); the numbers are over the other {m['num_samples']}")
    if m.get("damaged_images"):
        print(f"warning: {len(m['damaged_images'])} damaged images were predicted on (listed in report.md)")
    out = Path(args.out)
    print(f"report: {out / 'report.md'}")
    print(f"metrics: {out / 'metrics.json'}   predictions (COCO + covariance): {out / 'predictions.json'}")
    if args.pictures:
        print(f"pictures: {out / 'pictures.png'}")
    return 0


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


def cmd_compare(args: argparse.Namespace) -> int:
    from pose_toss.engine.compare import compare, parse_lrs, parse_methods

    methods = parse_methods(args.methods)
    lrs = parse_lrs(args.lrs) if args.lrs else None
    cfg = load_config(args.config, args.overrides)
    result = compare(cfg, methods, args.out, lrs=lrs, seeds=args.seeds, jobs=args.jobs, overwrite=args.overwrite)
    print(result["markdown"])
    print(f"table: {Path(args.out) / 'comparison.md'} and comparison.json; curves: comparison_curves.png")
    return 0


def cmd_fit_covariance(args: argparse.Namespace) -> int:
    from pose_toss.engine.evaluation import resolve_checkpoint
    from pose_toss.engine.fit_covariance import fit_covariance_run

    _, run_dir = resolve_checkpoint(args.checkpoint)
    config_path = args.config or (run_dir / "config.yaml" if run_dir is not None else None)
    if config_path is None:
        raise ConfigError(f"{args.checkpoint} belongs to no run directory with a config.yaml: give --config for its "
                          "data")
    cfg = load_config(config_path, args.overrides)
    m = fit_covariance_run(args.checkpoint, args.out, cfg, covariance=args.covariance, epochs=args.epochs, lr=args.lr,
                           device=args.device, overwrite=args.overwrite, config_file=args.config)
    out = Path(args.out)
    print(f"test: mean joint error {m['mean_joint_error']:.2f} px, NLL {m['nll']:.2f}, cov@0.9 "
          f"{m['coverage@0.9']:.3f}; report: {out / 'eval' / 'report.md'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pose_toss.engine.evaluation import resolve_checkpoint
    from pose_toss.models.checkpoint import load_model

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError('export needs the onnx package: pip install -e ".[export]" (onnx and onnxruntime)') from None
    from pose_toss.models.onnx import export_onnx

    model_file, _ = resolve_checkpoint(args.checkpoint)
    target = Path(args.onnx)
    if target.suffix != ".onnx":
        raise ValueError(f"--onnx: expected a file name ending in .onnx, got {target}")
    check_output_file(target, args.overwrite, [model_file])
    model = load_model(model_file)
    with run_lock(target):
        names = export_onnx(model, target, opset=args.opset)
    s = model.input_size
    print(f"wrote {target}: input 'images' (B x 3 x {s} x {s}, RGB in [0, 1]), outputs {', '.join(names)} "
          f"(mean B x {2 * model.num_joints} crop pixels [x0, y0, ...], cov B x {2 * model.num_joints} x "
          f"{2 * model.num_joints} pixels^2" + (", heatmaps" if "heatmaps" in names else "") + ")")
    return 0


def cmd_smooth(args: argparse.Namespace) -> int:
    import json

    from pose_toss.outputs import atomic_write_text
    from pose_toss.tracking import smooth_results

    src, out = Path(args.predictions), Path(args.out)
    if not src.is_file():
        raise FileNotFoundError(f"--predictions: file not found: {src}")
    check_output_file(out, args.overwrite, [src])
    try:
        results = json.loads(src.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{src}: cannot read as JSON ({e})") from None
    if not isinstance(results, list):
        raise ValueError(f"{src}: expected a list of COCO keypoint results, got {type(results).__name__}")
    for flag, value in (("--q", args.q), ("--alpha", args.alpha)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag}: expected a finite number > 0, got {value}")
    sigmas = None
    if args.sigmas is not None:
        try:
            sigmas = [float(v) for v in args.sigmas.split(",")]
        except ValueError:
            raise ValueError(f"--sigmas: expected comma-separated numbers, got {args.sigmas!r}") from None
        if not all(math.isfinite(v) and v > 0 for v in sigmas):
            raise ValueError(f"--sigmas: expected positive numbers, got {args.sigmas!r}")
    smoothed = smooth_results(results, args.q, str(src), alpha=args.alpha, sigmas=sigmas)
    with run_lock(out):
        atomic_write_text(out, json.dumps(smoothed))
    tracks = len({r.get("track_id") for r in results})
    fits = sorted({(r["measurement_scale"], r["process_noise"]) for r in smoothed})
    print(f"smoothed {len(results)} people over {tracks} track{'s' if tracks != 1 else ''} into {out} (measurement "
          f"scale alpha, process noise q: " + "; ".join(f"{a:.3g}, {q:.3g}" for a, q in fits[:5])
          + (" ..." if len(fits) > 5 else "") + "; scores recomputed from the smoothed covariances)")
    return 0


def cmd_video_bench(args: argparse.Namespace) -> int:
    import json

    from pose_toss.config import Config
    from pose_toss.engine.evaluation import resolve_checkpoint
    from pose_toss.engine.runtime import resolve_device
    from pose_toss.engine.video_bench import video_benchmark, video_markdown
    from pose_toss.models.checkpoint import load_model
    from pose_toss.outputs import atomic_write_text, jsonable

    if args.sequences < 1 or args.length < 3:
        raise ValueError(f"--sequences must be >= 1 and --length >= 3, got {args.sequences} and {args.length}")
    model_file, run_dir = resolve_checkpoint(args.checkpoint)
    inputs = [args.checkpoint]
    check_output_dir(args.out, args.overwrite, inputs)
    dev = resolve_device(args.device)
    model = load_model(model_file, map_location=dev)
    data_cfg = (load_config(run_dir / "config.yaml") if run_dir is not None else Config()).data
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


def cmd_data_check(args: argparse.Namespace) -> int:
    from pose_toss.data.check import data_check

    cfg = load_config(args.config, args.overrides)
    result = data_check(cfg, args.out, split=args.split, count=args.count, overwrite=args.overwrite)
    print(f"summary: {Path(args.out) / 'summary.json'} and summary.md")
    return 1 if result["problems"] and args.strict else 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from pose_toss.engine.visualize import visualize

    try:
        levels = tuple(float(v) for v in args.levels.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise ValueError(f"--levels: expected comma-separated probabilities between 0 and 1 (e.g. 0.5,0.9), "
                         f"got {args.levels!r}")
    result = visualize(args.checkpoint, args.images, args.out, boxes=args.boxes, score_threshold=args.score_threshold,
                       levels=levels, links=args.links, condition_joint=args.condition, device=args.device,
                       overwrite=args.overwrite, smooth=args.smooth)
    out = Path(args.out)
    if result["people"]:
        print(f"contact sheet: {out / 'contact_sheet.png'}")
    print(f"predictions (COCO + covariance): {out / 'predictions.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    import shlex

    from pose_toss.benchmarks import benchmark_markdown, run_benchmarks
    from pose_toss.outputs import atomic_write_text, jsonable

    cfg = load_config(args.config, args.overrides)
    inputs = [args.config, args.checkpoint, *cfg.input_paths()]
    check_output_dir(args.out, args.overwrite, inputs)
    result = run_benchmarks(cfg, batch=args.batch, repeats=args.repeats, device=args.device,
                            pseudo_sizes=tuple(args.pseudo_sizes), data_sizes=tuple(args.data_sizes),
                            data_samples=args.data_samples, checkpoint=args.checkpoint, profile=args.profile)
    text = benchmark_markdown(result, "pose-toss bench " + " ".join(shlex.quote(a) for a in args.argv))
    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as stage:
        atomic_write_text(stage / "bench.json", json.dumps(jsonable(result), indent=1))
        atomic_write_text(stage / "bench.md", text)
    print(text)
    print(f"wrote {Path(args.out) / 'bench.json'} and bench.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pose-toss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-synthetic", help="render the synthetic pose dataset with its true covariances")
    p.add_argument("--num", type=int, help="number of samples (data.synthetic.num_samples)")
    p.add_argument("--size", type=int, help="image side in px (data.synthetic.image_size)")
    p.add_argument("--seed", type=int, help="generation seed (data.synthetic.seed)")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--sheet", type=int, default=16, help="how many samples the contact sheet shows")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("train", help="train a pose model with the config's stages (default: W2 then NLL-TIC)")
    p.add_argument("--out", help="run directory (must be empty unless --overwrite)")
    p.add_argument("--resume", metavar="DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty run directory")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="metrics, report, COCO results and pictures for a trained model")
    p.add_argument("--checkpoint", required=True, help="a model .safetensors, a run directory or a checkpoint")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (the run's generator), a .yaml config, or a make-synthetic directory")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--pictures", type=int, default=16, help="crops drawn with their ellipses (0: none)")
    p.add_argument("--flip-test", action="store_true",
                   help="also predict each mirrored crop and merge the two Gaussians (moment matching)")
    p.add_argument("--simulated-detections", metavar="JITTER,FALSE_POSITIVES",
                   help="also predict from detector-like boxes: each true box moved and scaled by JITTER (a "
                        "fraction of its size), and for a FALSE_POSITIVES share of the people one extra box "
                        "elsewhere in the image (e.g. 0.1,0.25); "
                        "report COCO AP by expected OKS, heatmap maximum and a constant score")
    p.add_argument("--occlusions", type=int, default=200, metavar="N",
                   help="synthetic generator only: also predict N test figures with and without an occluder added "
                        "on one limb, and report how the covariance responds (0 skips it; default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fit-covariance", help="learn a covariance for a trained model, the model frozen (its "
                                              "means unchanged): only the covariance network, with the NLL")
    p.add_argument("--checkpoint", required=True, help="a model .safetensors, a run directory or a checkpoint")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--covariance", default="tic", choices=("tic", "full", "diagonal"),
                   help="the covariance network to learn (a new one; default: TIC)")
    p.add_argument("--epochs", type=int, default=3, help="epochs over the training split")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's train.lr)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true")
    _add_config_args(p)
    p.set_defaults(func=cmd_fit_covariance)

    p = sub.add_parser("export", help="write a model with its covariance as one ONNX graph (mean, covariance, "
                                      "heatmaps; dynamic batch)")
    p.add_argument("--checkpoint", required=True, help="a model .safetensors, a run directory or a checkpoint")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("smooth", help="smooth COCO results with covariances over video frames (Kalman filter and "
                                      "RTS smoother, each frame's full covariance as its measurement noise)")
    p.add_argument("--predictions", required=True, help="COCO keypoint results with 'covariance' (eval/visualize "
                                                         "output); frames by 'frame' or 'image_id', tracks by "
                                                         "'track_id'")
    p.add_argument("--out", required=True, help="the smoothed results (.json)")
    p.add_argument("--q", type=float, default=None, help="process noise, px^2 per frame^3 (default: fitted per track "
                                                        "by the innovations' likelihood)")
    p.add_argument("--alpha", type=float, default=None,
                   help="scale of the predicted covariances as measurement noise (default: fitted per track with q)")
    p.add_argument("--sigmas", default=None, metavar="S1,S2,...",
                   help="OKS sigma per joint for the smoothed scores (default: the skeleton's for 14, 16 or 17 joints)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_smooth)

    p = sub.add_parser("video-bench", help="synthetic video: raw predictions against smoothing with the full "
                                           "covariance, its diagonal and a constant (error, cued limbs, jitter)")
    p.add_argument("--checkpoint", required=True, help="a model .safetensors, a run directory or a checkpoint")
    p.add_argument("--out", required=True, help="where video_bench.json and .md go")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--length", type=int, default=60, help="frames per sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_video_bench)

    p = sub.add_parser("data-check", help="counts, problems and a contact sheet of augmented crops for a config's data")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--out", default="runs/data-check", help="where summary.json/.md and contact_sheet.png go")
    p.add_argument("--count", type=int, default=16, help="crops on the contact sheet")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("visualize", help="draw a model's poses, ellipses and correlations on any images")
    p.add_argument("--checkpoint", required=True, help="a model .safetensors, a run directory or a checkpoint")
    p.add_argument("--images", nargs="+", required=True, metavar="FILE_OR_DIR", help="images or folders of images")
    p.add_argument("--boxes", help="COCO-format person detections (image_id, bbox, score); default: whole image")
    p.add_argument("--score-threshold", type=float, default=0.5, help="ignore detections scored below this")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--levels", default="0.5,0.9", help="probability levels of the ellipses, comma-separated")
    p.add_argument("--links", type=float, metavar="THRESHOLD",
                   help="link joints whose canonical correlation exceeds THRESHOLD (e.g. 0.5)")
    p.add_argument("--condition", metavar="JOINT",
                   help="add a panel where JOINT (a name, e.g. l_wrist) is moved one standard deviation and "
                        "the other joints follow their conditional distribution")
    p.add_argument("--smooth", action="store_true", help="the images are video frames (file-name order, one person "
                                                         "each): smooth the poses over time with their full "
                                                         "covariances before drawing")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("bench", help="step cost per method, Jacobian, pseudo-label scaling, data and inference speed")
    p.add_argument("--out", required=True, help="where bench.json and bench.md go (must be empty unless --overwrite)")
    p.add_argument("--batch", type=int, default=32, help="training and Jacobian batch size")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (the median is kept)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--pseudo-sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000, 150_000], metavar="N",
                   help="bank sizes for the pseudo-label scaling")
    p.add_argument("--data-sizes", type=int, nargs="+", default=[128, 256], metavar="PX",
                   help="input sizes for the data pipeline")
    p.add_argument("--data-samples", type=int, default=400, help="samples timed per data-pipeline size")
    p.add_argument("--checkpoint", help="a trained TIC model file or run: also report its J rank and Taylor share "
                                        "of the covariance on validation images")
    p.add_argument("--profile", action="store_true", help="also profile an NLL-TIC step (torch.profiler): the "
                                                          "operators with the most self time")
    p.add_argument("--overwrite", action="store_true")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="train and evaluate methods x learning rates x seeds with the same data and "
                                       "budget: mean ± std tables and validation curves")
    p.add_argument("--methods", default="mse,diagonal,nll,beta_nll,faithful,nll_tic,w2,w2_then_nll_tic,loss_pred",
                   help="comma-separated: mse, diagonal, nll, beta_nll, faithful, nll_tic, kl_calibrated, w2, "
                        "w2_then_nll_tic, w2_residual_then_nll_tic, loss_pred")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates, e.g. 1e-4,1e-3,1e-2 (default: the "
                                               "config's train.lr)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell: train.seed, train.seed + 1, ...")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once (worker processes sharing the "
                                                      "device; the CPU threads and data workers are divided)")
    p.add_argument("--out", required=True, help="output directory; re-running resumes: finished cells are read "
                                                "back, interrupted ones continue from their last checkpoint")
    p.add_argument("--overwrite", action="store_true")
    _add_config_args(p)
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.func(args)
    except (ConfigError, OutputExistsError, LockedError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pose-toss {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk, a vanished mount: name the path and the cause
        print(f"pose-toss {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from pose_toss.engine.trainer import TrainingDiverged

        if not isinstance(e, TrainingDiverged):
            raise
        print(f"pose-toss {args.command}: training stopped: {e}", file=sys.stderr)
        return 3


def describe_os_error(e: OSError) -> str:
    import errno

    path = e.filename if e.filename is not None else None
    cause = e.strerror or str(e)
    hint = {errno.ENOSPC: " (the disk is full: free space or write elsewhere)",
            errno.EACCES: " (no permission: pick a folder you can write to)",
            errno.EROFS: " (read-only file system: pick a writable folder)",
            errno.EDQUOT: " (disk quota exceeded)"}.get(e.errno, "")
    return f"{path}: {cause}{hint}" if path else f"{cause}{hint}"


if __name__ == "__main__":
    sys.exit(main())
