"""`pose-toss bench`: reproducible cost measurements (printed numbers, never timed unit tests).

One run measures, on the same model and batch, after warm-up, the median of repeats: the training
step of each method as a ratio to the MSE step, TIC's Jacobian (batched vs a per-sample loop, and its
share of a step), the pseudo-labels against bank size, the data pipeline per core, peak memory, inference
throughput with covariance, smoothing (the alpha and q fit, the online step) and the start-up of the commands
that need no model. CUDA when available, CPU otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import timm
import torch
from torch.profiler import ProfilerActivity, profile

from pose_toss import losses
from pose_toss.commands.eval import resolve_eval_data
from pose_toss.commands.options import add_checkpoint, add_config, add_device, add_output
from pose_toss.config import Config, load_config
from pose_toss.covariance import jacobian, taylor_diagnostics
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.engine.objectives import LOSSES, StageObjective, labels_in_batch_frame, method_config
from pose_toss.engine.runtime import GraphedInference, autocast_context, resolve_device
from pose_toss.engine.trainer import build_model_from_config
from pose_toss.metrics import tic_summary
from pose_toss.models.checkpoint import load_model
from pose_toss.models.covariance_heads import eval_mode
from pose_toss.models.onnx import export_onnx, export_problem
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, staged_output_dir
from pose_toss.pseudo_labels import pseudo_covariances
from pose_toss.run_dir import resolve_checkpoint
from pose_toss.skeletons import LSP14
from pose_toss.tracking import OnlineSmoother, fit_noise


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_output(p, "where bench.json and bench.md go")
    p.add_argument("--batch", type=int, default=32, help="training and Jacobian batch size")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (the median is kept)")
    add_device(p)
    p.add_argument("--pseudo-sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000, 150_000], metavar="N",
                   help="bank sizes for the pseudo-label scaling")
    p.add_argument("--data-sizes", type=int, nargs="+", default=[128, 256], metavar="PX",
                   help="input sizes for the data pipeline")
    p.add_argument("--data-samples", type=int, default=400, help="samples timed per data-pipeline size")
    add_checkpoint(p, required=False, help="a trained TIC model file or run: also report its J rank and Taylor "
                                           "share of the covariance on validation images")
    p.add_argument("--profile", action="store_true", help="also profile an NLL-TIC step (torch.profiler): the "
                                                          "operators with the most self time")
    p.add_argument("--no-onnx", action="store_true", help="skip timing the exported model in ONNX Runtime on the CPU")
    add_config(p)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    inputs = [args.config, args.checkpoint, *cfg.input_paths()]
    check_output_dir(args.out, args.overwrite, inputs)
    result = run_benchmarks(cfg, batch=args.batch, repeats=args.repeats, device=args.device,
                            pseudo_sizes=tuple(args.pseudo_sizes), data_sizes=tuple(args.data_sizes),
                            data_samples=args.data_samples, checkpoint=args.checkpoint, profile=args.profile,
                            onnx=not args.no_onnx)
    text = benchmark_markdown(result, "pose-toss bench " + " ".join(shlex.quote(a) for a in args.argv))
    with staged_output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as stage:
        atomic_write_text(stage / "bench.json", json.dumps(jsonable(result), indent=1))
        atomic_write_text(stage / "bench.md", text)
    print(text)
    print(f"wrote {Path(args.out) / 'bench.json'} and bench.md")
    return 0


# The methods (``engine.objectives.METHODS``) whose first stage's training step is timed.
STEP_METHODS = ("mse", "diagonal", "nll", "nll_tic", "w2", "w2_full", "nll_tic_z_at_features")


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "opencv": cv2.__version__, "python": platform.python_version(), "timm": timm.__version__,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   driver=_nvidia_driver())
    return out


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int, warmup: int, device: torch.device | None = None) -> float:
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _step_memory_in_fresh_process(cfg: Config, batch: int, name: str) -> float:
    """Peak RSS growth (MiB) of one optimiser step of ``name`` in a fresh process, after a first step (the
    optimiser's states, the libraries' one-time set-up) and with freed memory handed back to the system
    (``malloc_trim``), the peak reset through ``/proc/self/clear_refs``: what the step itself needs."""

    torch.set_num_threads(1)
    step, _ = _step_fn(cfg, batch, name, torch.device("cpu"))
    step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident size (VmHWM) to the current one
    step()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return peak - before


def step_memory(cfg: Config, batch: int, methods=STEP_METHODS, device: torch.device | None = None) -> dict:
    """Peak memory of a training step per method (MiB above the model and optimiser states, so the
    activations, gradients and the step's temporaries), and each as a ratio to the MSE step. CUDA: torch's
    peak allocation in this process; CPU (Linux): the peak RSS growth of a fresh process per method."""
    device = device or torch.device("cpu")
    rows = {}
    if device.type == "cuda":
        for name in methods:
            step, _ = _step_fn(cfg, batch, name, device)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            step()
            torch.cuda.synchronize(device)
            rows[name] = {"peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20}
            del step
            torch.cuda.empty_cache()
    else:

        for name in methods:  # one fresh process each, one after the other
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as one:
                rows[name] = {"peak_mib": one.submit(_step_memory_in_fresh_process, cfg, batch, name).result()}
    base = rows.get("mse", {}).get("peak_mib")
    for r in rows.values():
        r["over_mse"] = r["peak_mib"] / base if base else None
    return rows


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, the most memory torch allocated."""
    out = {"cpu_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# --------------------------------------------------------------------------------------------------
# Training steps and the Jacobian
# --------------------------------------------------------------------------------------------------


def _fake_batch(cfg: Config, batch: int, num_joints: int, device: torch.device, seed: int = 0) -> dict:
    """Random images and labels with the shapes and value ranges the trainer feeds."""
    gen = torch.Generator().manual_seed(seed)
    s, hs = cfg.data.input_size, cfg.data.input_size // cfg.data.heatmap_stride
    heat = torch.rand(batch, num_joints, hs, hs, generator=gen)
    return {"image": torch.rand(batch, 3, s, s, generator=gen).to(device),
            "target": (torch.rand(batch, 2 * num_joints, generator=gen) * s).to(device),
            "visibility": torch.ones(batch, num_joints, device=device),
            "heatmaps": (heat / heat.sum(dim=(2, 3), keepdim=True)).to(device),
            "affine": torch.eye(2, 3).expand(batch, 2, 3).clone().to(device)}


def _fake_pseudo_labels(batch: int, dim: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen)
    return (a @ a.transpose(1, 2) / dim + torch.eye(dim)).to(device)


class _FixedPseudoLabels:
    """Random pseudo-labels for a benchmark batch, moved into its frame each step as the trainer's are."""

    def __init__(self, batch: int, dim: int, device: torch.device) -> None:
        self.cov = _fake_pseudo_labels(batch, dim, device)
        self.root = losses.sqrtm_eigh(self.cov.double()).float()
        self.flip = torch.arange(dim)

    def batch_labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return labels_in_batch_frame(self.cov, batch["affine"], batch["affine"], self.flip, sqrt=self.root)


def _step_fn(cfg: Config, batch: int, name: str, device: torch.device, seed: int = 0):
    """(one optimiser step of method ``name``'s first stage as a closure, its config row): the trainer's own
    objective (loss, heatmap term and, for W2, the move of the pseudo-labels into the batch frame)."""
    j = 14
    data = _fake_batch(cfg, batch, j, device, seed)
    method = method_config(cfg, name)
    stage = method.stages[0]
    loss = LOSSES[stage.loss]
    objective = StageObjective(loss, stage.beta, (cfg.data.input_size / 32.0) ** 2, cfg.train.heatmap_weight,
                               _FixedPseudoLabels(batch, 2 * j, device) if loss.needs_pseudo_labels else None)
    torch.manual_seed(seed)
    model = build_model_from_config(method, j, LSP14).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = cfg.train.amp and device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        total, _ = objective(model, model, data, device, amp)
        total.backward()
        opt.step()

    row = {"covariance": method.model.covariance, "loss": stage.loss, "bottleneck_at": method.model.bottleneck_at}
    return step, row


def step_times(cfg: Config, batch: int, repeats: int = 5, warmup: int = 2, device: torch.device | None = None,
               methods=STEP_METHODS) -> dict:
    """Median seconds of one optimiser step per method (``_step_fn``), and each as a ratio to MSE."""
    device = device or torch.device("cpu")
    rows = {}
    for name in methods:
        step, row = _step_fn(cfg, batch, name, device)
        rows[name] = {"seconds": median_seconds(step, repeats, warmup, device), **row}
        del step
    base = rows.get("mse", {}).get("seconds")
    for r in rows.values():
        r["over_mse"] = r["seconds"] / base if base else None
    return rows


def profile_step(cfg: Config, batch: int, name: str = "nll_tic", device: torch.device | None = None,
                 rows: int = 12) -> list[dict]:
    """Where one training step's time goes (torch.profiler, two steps after a warm-up): the operators with
    the most self time, with their share of the step."""

    device = device or torch.device("cpu")
    step, _ = _step_fn(cfg, batch, name, device)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        step()
        _sync(device)
    cuda = device.type == "cuda"
    events = prof.key_averages()
    def self_time(e):
        return e.self_device_time_total if cuda else e.self_cpu_time_total
    total = sum(self_time(e) for e in events) or 1.0
    top = sorted(events, key=self_time, reverse=True)[:rows]
    return [{"op": e.key, "self_ms_per_step": self_time(e) / 2e3, "share": self_time(e) / total, "calls": e.count // 2}
            for e in top]


def tic_spectrum(model, images: torch.Tensor) -> dict:
    """J's rank and the Taylor term's share of Σ (``metrics.tic_summary``) for a TIC model on images."""

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        model.train(was_training)
    if out.tic is None:
        raise ValueError(f"the model's covariance is {model.config.covariance!r}, not TIC: it has no Jacobian")
    return tic_summary(*taylor_diagnostics(out.tic.jacobian, out.tic.eps1, out.cov))


def trained_tic_spectrum(checkpoint, count: int = 64, device: torch.device | None = None) -> dict:
    """``tic_spectrum`` of a trained model on the first ``count`` images of its run's validation split
    (the default synthetic data's when the file belongs to no run)."""

    device = device or torch.device("cpu")
    model_file, run_dir = resolve_checkpoint(checkpoint)
    model = load_model(model_file, map_location=device)
    data_cfg, records, skeleton, source = resolve_eval_data("synthetic", model.input_size, run_dir, "val")
    dataset = PoseDataset.from_config(records[:count], data_cfg, train=False, skeleton=skeleton)
    images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))]).to(device)
    return {"checkpoint": str(model_file), "images": f"{len(dataset)} of the {source}",
            **tic_spectrum(model, images)}


def jacobian_times(cfg: Config, batch: int, repeats: int = 5, warmup: int = 2, device: torch.device | None = None,
                   loop: bool = True) -> dict:
    """TIC's Jacobian on the configured model: batched vs a per-sample autograd loop."""

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    tic = replace(cfg, model=replace(cfg.model, covariance="tic"))
    model = build_model_from_config(tic, 14, LSP14).to(device).eval()
    images = torch.rand(batch, 3, cfg.data.input_size, cfg.data.input_size, device=device)
    with torch.no_grad():
        feats = model.features(images)
        z = model.embed(feats)
        ctx = model.decoder_input(feats) if model.bottleneck_at == "head" else feats

    def batched():
        with eval_mode((model.bottleneck, model.head)):
            jacobian(model.decode, z, ctx)

    def closed_form():
        model.tail_jacobian(z, ctx)

    def per_sample():
        for i in range(batch):
            torch.autograd.functional.jacobian(lambda zi, i=i: model.decode(zi, ctx[i:i + 1]), z[i:i + 1])

    out = {"batched_s": median_seconds(batched, repeats, warmup, device), "bottleneck_at": model.bottleneck_at,
           "spectrum_at_init": tic_spectrum(model, images)}
    closed = model.uses_closed_form_jacobian
    if closed:
        out["closed_form_s"] = median_seconds(closed_form, repeats, warmup, device)
        out["batched_over_closed_form"] = out["batched_s"] / out["closed_form_s"]
    if loop:
        out["per_sample_loop_s"] = median_seconds(per_sample, max(1, repeats // 2), 1, device)
        out["loop_over_batched"] = out["per_sample_loop_s"] / out["batched_s"]
    out["used_s"] = out["closed_form_s"] if closed else out["batched_s"]
    return out


# --------------------------------------------------------------------------------------------------
# Pseudo-labels, data, inference
# --------------------------------------------------------------------------------------------------


def pseudo_label_scaling(sizes=(10_000, 40_000, 100_000, 150_000), embed_dim: int = 64, dim: int = 28, k: int = 64,
                         with_sqrt: bool = True, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Seconds of ``pseudo_covariances`` (kNN, weighted covariances and their roots) per bank size and
    the fitted exponent of time ~ N^a."""

    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    # Warm-up (kernels, allocator, cuSOLVER handles) on a small bank, untimed: otherwise the first size pays it.
    warm = min(2 * k + 2, min(sizes))
    pseudo_covariances(torch.randn(warm, embed_dim, generator=gen).to(device),
                       torch.randn(warm, dim, generator=gen).to(device), k=min(k, warm - 1), with_sqrt=with_sqrt)
    _sync(device)
    rows = []
    for n in sizes:
        z = torch.randn(n, embed_dim, generator=gen).to(device)
        y = torch.randn(n, dim, generator=gen).to(device)
        _sync(device)
        start = time.perf_counter()
        pseudo_covariances(z, y, k=k, with_sqrt=with_sqrt)
        _sync(device)
        rows.append({"n": n, "seconds": time.perf_counter() - start})
    xs = [math.log(r["n"]) for r in rows]
    ys = [math.log(r["seconds"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / max(sum((a - mx) ** 2 for a in xs), 1e-12)
    return {"rows": rows, "exponent": slope if len(rows) > 1 else None, "embed_dim": embed_dim, "dim": dim, "k": k}


def data_throughput(input_size: int, num: int = 400, warmup: int = 20, seed: int = 0) -> float:
    """Samples/s of the full training pipeline on one core: render + crop + augment + heatmaps + tensors."""

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        cfg = load_config(overrides=[f"data.input_size={input_size}"])
        source = SyntheticPoseDataset(num + warmup, input_size, seed)
        dataset = PoseDataset.from_config(source, cfg.data, train=True)
        for i in range(warmup):
            dataset[i]
        start = time.perf_counter()
        for i in range(warmup, warmup + num):
            dataset[i]
        return num / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def inference_throughput(cfg: Config, batches=(1, 32), repeats: int = 5, warmup: int = 2,
                         device: torch.device | None = None, embedding_only: bool = False,
                         with_covariance: bool = True, cuda_graph: bool = False) -> dict:
    """Images/s of an eval-mode forward with the configured covariance (``with_covariance=False``: the mean
    alone), per batch size; with ``embedding_only`` just the bottleneck z (what a pseudo-label refresh
    computes per image); with ``cuda_graph`` the forward replayed as a captured CUDA graph
    (``GraphedInference``; a capture that fails gives its error instead of a number). bf16 autocast on CUDA
    when the config asks for it, as in training."""

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = build_model_from_config(cfg, 14, LSP14).to(device).eval()
    out = {}
    for b in batches:
        images = torch.rand(b, 3, cfg.data.input_size, cfg.data.input_size, device=device)
        if cuda_graph:
            try:
                graphed = GraphedInference(model, images, amp=cfg.train.amp, with_covariance=with_covariance)
            except RuntimeError as e:  # an operation that cannot be captured: say which
                out[str(b)] = f"capture failed: {str(e).splitlines()[0][:200]}"
                continue
            out[str(b)] = b / median_seconds(lambda graphed=graphed, images=images: graphed(images), 5 * repeats,
                                             warmup, device)
            continue

        def forward(images=images):
            with torch.no_grad(), autocast_context(device, cfg.train.amp):
                if embedding_only:
                    model.embed(model.features(images))
                else:
                    model(images, with_covariance=with_covariance)

        out[str(b)] = b / median_seconds(forward, repeats, warmup, device)
    return out


def onnx_throughput(cfg: Config, batches=(1, 32), repeats: int = 5, warmup: int = 2) -> dict | None:
    """Images/s of the exported model (mean, covariance, heatmaps) in ONNX Runtime on the CPU, per batch
    size; None when onnx / onnxruntime are not installed or the configured model does not export."""

    try:
        import onnxruntime as ort
    except ImportError:
        return None

    torch.manual_seed(0)
    model = build_model_from_config(cfg, 14, LSP14)
    if export_problem(model):
        return None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, cfg.data.input_size, cfg.data.input_size))  # sets TIC's running J scale
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, Path(tmp) / "bench.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(Path(tmp) / "bench.onnx"), options, providers=["CPUExecutionProvider"])
    out = {}
    for b in batches:
        images = torch.rand(b, 3, cfg.data.input_size, cfg.data.input_size).numpy()
        out[str(b)] = b / median_seconds(lambda images=images: session.run(None, {"images": images}), repeats,
                                         warmup)
    return out


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def tracking_times(frames: int = 60, fit_joints: int = 14, step_joints: int = 17, lags=(0, 5), repeats: int = 5,
                   seed: int = 0) -> dict:
    """Smoothing's costs on the CPU, on a simulated track with full, frame-varying covariances: fitting alpha and q
    (``tracking.fit_noise``) to ``frames`` frames of ``fit_joints`` joints (median of ``repeats``), and one
    ``OnlineSmoother.step`` per person per frame for ``step_joints`` joints at each lag (median over frames)."""

    g = torch.Generator().manual_seed(seed)

    def track(d: int):
        a = torch.randn(frames, d, d, generator=g, dtype=torch.float64) * 0.5
        covs = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
        walk = torch.cumsum(torch.cumsum(torch.randn(frames, d, generator=g, dtype=torch.float64), 0), 0)
        return walk + torch.randn(frames, d, generator=g, dtype=torch.float64), covs

    means, covs = track(2 * fit_joints)
    fit_s = median_seconds(lambda: fit_noise(means, covs), repeats, warmup=1)
    means, covs = track(2 * step_joints)
    steps = {}
    for lag in lags:
        smoother, times = OnlineSmoother(2 * step_joints, alpha=0.5, q=1.0, lag=lag), []
        for t in range(frames):
            start = time.perf_counter()
            smoother.step(means[t], covs[t])
            times.append(time.perf_counter() - start)
        steps[str(lag)] = float(torch.tensor(times[lag + 2:]).median())
    return {"frames": frames, "fit_joints": fit_joints, "fit_seconds": fit_s, "step_joints": step_joints,
            "online_step_seconds_by_lag": steps}


def startup_times(commands=(("--help",), ("smooth", "--help"), ("predict", "--help")), repeats: int = 3) -> dict:
    """Seconds from starting ``python -m pose_toss ARGS`` to its exit (median of ``repeats``), for the
    commands whose answer needs no model: they must not pay for importing torch."""

    def start(args):
        return lambda: subprocess.run([sys.executable, "-m", "pose_toss", *args], check=True, capture_output=True)

    return {"pose-toss " + " ".join(args): median_seconds(start(args), repeats, warmup=0) for args in commands}


def run_benchmarks(cfg: Config, batch: int = 32, repeats: int = 5, device: str = "auto",
                   pseudo_sizes=(10_000, 40_000, 100_000, 150_000), data_sizes=(128, 256), data_samples: int = 400,
                   checkpoint=None, profile: bool = False, onnx: bool = True, log=print) -> dict:
    """Every section of the module docstring; ``checkpoint`` (a trained TIC model or run) adds its J
    spectrum and Taylor share on validation images."""

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark  # as the trainer runs
    m = cfg.model
    result = {"machine": machine_description(), "device": str(dev),
              "model": {"backbone": m.backbone, "input_size": cfg.data.input_size, "batch": batch,
                        "deconv_channels": m.deconv_channels, "embed_dim": m.embed_dim,
                        "heatmap_stride": cfg.data.heatmap_stride, "bottleneck_at": m.bottleneck_at,
                        "amp": cfg.train.amp and dev.type == "cuda"},
              "repeats": repeats}
    log("start-up ...")
    result["startup_seconds"] = startup_times()
    log("training steps ...")
    result["steps"] = step_times(cfg, batch, repeats, device=dev)
    log("training step memory ...")
    for name, row in step_memory(cfg, batch, device=dev).items():
        result["steps"][name].update({"peak_mib": row["peak_mib"], "memory_over_mse": row["over_mse"]})
    if profile:
        log("profiling the NLL-TIC step ...")
        result["profile_nll_tic"] = profile_step(cfg, batch, "nll_tic", dev)
    log("Jacobian ...")
    result["jacobian"] = jacobian_times(cfg, batch, repeats, device=dev)
    jac = result["jacobian"]
    jac["share_of_nll_tic_step"] = jac["used_s"] / result["steps"]["nll_tic"]["seconds"]
    if checkpoint is not None:
        jac["spectrum_trained"] = trained_tic_spectrum(checkpoint, device=dev)
    log("pseudo-labels ...")
    pl = pseudo_label_scaling(pseudo_sizes, embed_dim=64, dim=28, k=64, device=dev)
    # Against an epoch over as many samples with the configured W2-TIC step. A refresh also embeds
    # every training image once (eval-mode forward to z), estimated from the embedding throughput.
    step = result["steps"]["w2"]["seconds"]
    pl["embedding_images_per_s"] = inference_throughput(cfg, (batch,), repeats, device=dev,
                                                        embedding_only=True)[str(batch)]
    for r in pl["rows"]:
        r["epoch_seconds"] = r["n"] / batch * step
        r["share_of_epoch"] = r["seconds"] / r["epoch_seconds"]
        r["embedding_pass_seconds"] = r["n"] / pl["embedding_images_per_s"]
        r["refresh_share_of_epoch"] = (r["seconds"] + r["embedding_pass_seconds"]) / r["epoch_seconds"]
    result["pseudo_labels"] = pl
    log("data pipeline ...")
    result["data_samples_per_s_per_core"] = {str(s): data_throughput(s, data_samples) for s in data_sizes}
    log("inference ...")
    result["inference_images_per_s"] = inference_throughput(cfg, device=dev, repeats=repeats)
    result["inference_mean_only_images_per_s"] = inference_throughput(cfg, device=dev, repeats=repeats,
                                                                      with_covariance=False)
    if dev.type == "cuda":
        result["inference_cuda_graph_images_per_s"] = inference_throughput(cfg, device=dev, repeats=repeats,
                                                                           cuda_graph=True)
    result["onnx_runtime_cpu_images_per_s"] = onnx_throughput(cfg, repeats=repeats) if onnx else None
    log("tracking ...")
    result["tracking"] = tracking_times(repeats=repeats)
    result["memory"] = peak_memory(dev)
    return result


def benchmark_markdown(r: dict, command: str) -> str:
    mc, md = r["machine"], r["model"]
    cuda = (f", CUDA {mc['cuda']}, cuDNN {mc['cudnn']}, driver {mc.get('driver') or 'unknown'}" if mc.get("cuda")
            else "")
    out = [f"Machine: {mc['cpu']}, {mc['cores']} cores ({mc['torch_threads']} torch threads), device {r['device']} "
           f"({mc['device']}), torch {mc['torch']}{cuda}, timm {mc.get('timm', '?')}, OpenCV {mc['opencv']}, "
           f"Python {mc['python']}.",
           f"Model: {md['backbone']}, {md['input_size']} px, batch {md['batch']}, deconv {md['deconv_channels']}, "
           f"E = {md['embed_dim']}, heatmap stride {md['heatmap_stride']}, z enters at the {md['bottleneck_at']}"
           + (", bf16 autocast" if md["amp"] else "") + f"; median of {r['repeats']} after warm-up.",
           f"Command: `{command}`", "",
           "| training step | covariance | loss | s / step | × MSE step | peak memory MiB | × MSE memory |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in r["steps"].items():
        mem = (f"{s['peak_mib']:.0f} | {s['memory_over_mse']:.2f}×" if s.get("memory_over_mse") is not None
               else "– | –")
        out.append(f"| {name} | {s['covariance']} | {s['loss']} | {s['seconds']:.3f} | {s['over_mse']:.2f}× | {mem} |")
    out.append("\n(Peak memory: above the model and its optimiser states, i.e. activations, gradients and the "
               "step's temporaries" + (", torch's peak CUDA allocation)" if r["device"].startswith("cuda") else
                                         ", the peak RSS growth of a fresh process per method)"))
    if r.get("profile_nll_tic"):
        out += ["", "| NLL-TIC step, operator (torch.profiler) | self ms / step | share | calls / step |",
                "| --- | --- | --- | --- |"]
        out += [f"| `{e['op']}` | {e['self_ms_per_step']:.1f} | {100 * e['share']:.1f} % | {e['calls']} |"
                for e in r["profile_nll_tic"]]
    jac = r["jacobian"]
    out += ["", "| Jacobian (z at the " + jac["bottleneck_at"] + ") | s |", "| --- | --- |"]
    if "closed_form_s" in jac:
        out.append(f"| closed form (`heatmap_tail_jacobian`, used) | {jac['closed_form_s']:.4f} |")
    out.append(f"| batched reverse passes (torch.func.vjp, one pass per output) | {jac['batched_s']:.4f}"
               + (f" ({jac['batched_over_closed_form']:.1f}× the closed form)" if "closed_form_s" in jac else "")
               + " |")
    if "per_sample_loop_s" in jac:
        out.append(f"| per-sample autograd loop | {jac['per_sample_loop_s']:.4f} ({jac['loop_over_batched']:.1f}× "
                   "batched) |")
    out.append(f"| share of an NLL-TIC step | {100 * jac['share_of_nll_tic_step']:.1f} % |")
    out += ["", "| J and Σ (TIC) | tr(ε₁²JJᵀ)/tr(Σ) q25 / median / q75 | rank J median (min) of | effective rank |",
            "| --- | --- | --- | --- |"]
    for key, label in (("spectrum_at_init", "bench model at initialisation, random images"),
                       ("spectrum_trained", "trained model, validation images")):
        if key in jac:
            t = jac[key]
            name = label + (f" (`{t['checkpoint']}`)" if "checkpoint" in t else "")
            out.append(f"| {name} | {t['tic_share_q25']:.3f} / {t['tic_share_median']:.3f} / {t['tic_share_q75']:.3f} "
                       f"| {t['jacobian_rank_median']:.0f} ({t['jacobian_rank_min']}) of {t['jacobian_full_rank']} "
                       f"| {t['jacobian_effective_rank_median']:.1f} |")
    pl = r["pseudo_labels"]
    out += ["", f"| pseudo-labels N (E = {pl['embed_dim']}, D = {pl['dim']}, k = {pl['k']}) | labels s | epoch of N "
            "samples, s (W2-TIC steps) | labels' share | embedding pass s | whole refresh's share |",
            "| --- | --- | --- | --- | --- | --- |"]
    for row in pl["rows"]:
        out.append(f"| {row['n']} | {row['seconds']:.2f} | {row['epoch_seconds']:.0f} | "
                   f"{100 * row['share_of_epoch']:.2f} % | {row['embedding_pass_seconds']:.0f} | "
                   f"{100 * row['refresh_share_of_epoch']:.1f} % |")
    if pl["exponent"] is not None:
        out.append(f"\nFitted scaling: time ∝ N^{pl['exponent']:.2f}.")
    out += ["", "| data pipeline, input px | samples/s per core |", "| --- | --- |"]
    out += [f"| {k} | {v:.0f} |" for k, v in r["data_samples_per_s_per_core"].items()]
    graphed = r.get("inference_cuda_graph_images_per_s")
    out += ["", "| inference, batch | images/s with covariance | images/s, mean only | covariance's cost | "
            + ("with covariance, CUDA graph | " if graphed else "") + "ONNX Runtime CPU, with covariance |",
            "| --- | --- | --- | --- | --- |" + (" --- |" if graphed else "")]
    mean_only = r.get("inference_mean_only_images_per_s", {})
    onnx = r.get("onnx_runtime_cpu_images_per_s") or {}
    for k, v in r["inference_images_per_s"].items():
        m = mean_only.get(k)
        g = (graphed or {}).get(k)
        out.append(f"| {k} | {v:.1f} | " + (f"{m:.1f} | {100 * (m / v - 1):.0f} % |" if m else "– | – |")
                   + ("" if graphed is None else f" {g:.1f} |" if isinstance(g, float) else f" {g or '–'} |")
                   + (f" {onnx[k]:.1f} |" if k in onnx else " – |"))
    tr = r.get("tracking")
    if tr:
        out += ["", "| smoothing (CPU, float64) | ms |", "| --- | --- |",
                f"| fit alpha and q, {tr['frames']} frames x {tr['fit_joints']} joints | "
                f"{1000 * tr['fit_seconds']:.0f} |"]
        out += [f"| online step, one person, {tr['step_joints']} joints, lag {lag} | {1000 * v:.2f} |"
                for lag, v in tr["online_step_seconds_by_lag"].items()]
    if r.get("startup_seconds"):
        out += ["", "| start-up, command | s |", "| --- | --- |"]
        out += [f"| `{k}` | {v:.2f} |" for k, v in r["startup_seconds"].items()]
    mem = r["memory"]
    out += ["", f"Peak memory: CPU RSS {mem['cpu_peak_rss_mib']:.0f} MiB"
            + (f", CUDA max allocated {mem['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in mem
               else "") + "."]
    return "\n".join(out) + "\n"
