"""`pose-toss bench`: reproducible cost measurements (printed numbers, never timed unit tests).

One run measures, on the same model and batch, after warm-up, the median of repeats: the training
step of each method as a ratio to the MSE step, TIC's Jacobian (batched vs a per-sample loop, and its
share of a step), the pseudo-labels against bank size, the data pipeline per core, peak memory, and
inference throughput with covariance. CUDA when available, CPU otherwise.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from dataclasses import replace

import cv2
import torch

from pose_toss import losses
from pose_toss.config import Config, load_config

# Benchmarked training steps: name -> (covariance parameterisation, loss, where z enters the head).
STEP_METHODS = {
    "mse": ("tic", "mse", None),
    "diagonal": ("diagonal", "nll", None),
    "nll": ("full", "nll", None),
    "nll_tic": ("tic", "nll", None),
    "w2_bound_tic": ("tic", "w2_bound", None),
    "w2_bound_full": ("full", "w2_bound", None),
    # The same NLL-TIC step with z entering before the whole head: J through every deconvolution.
    "nll_tic_z_at_features": ("tic", "nll", "features"),
}


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "opencv": cv2.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


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


def step_times(cfg: Config, batch: int, repeats: int = 5, warmup: int = 2, device: torch.device | None = None,
               methods=tuple(STEP_METHODS)) -> dict:
    """Median seconds of one optimiser step per method (the trainer's own loss function, heatmap term
    and, for W2, the move of the pseudo-labels into the batch frame), and each as a ratio to MSE."""
    from pose_toss.engine.objectives import labels_in_batch_frame, training_loss
    from pose_toss.engine.trainer import build_model_from_config

    device = device or torch.device("cpu")
    j = 14
    data = _fake_batch(cfg, batch, j, device)
    flip = torch.arange(2 * j)
    bank_cov = _fake_pseudo_labels(batch, 2 * j, device)
    bank_root = losses.sqrtm_eigh(bank_cov.double()).float()
    rows = {}
    for name in methods:
        covariance, loss, at = STEP_METHODS[name]
        model_cfg = replace(cfg.model, covariance=covariance, bottleneck_at=at or cfg.model.bottleneck_at)
        torch.manual_seed(0)
        model = build_model_from_config(replace(cfg, model=model_cfg), j).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        amp = cfg.train.amp and device.type == "cuda"

        def step(model=model, opt=opt, loss=loss, amp=amp):
            pseudo = None
            if loss == "w2_bound":
                pseudo = labels_in_batch_frame(bank_cov, data["affine"], data["affine"], flip, sqrt=bank_root)
            opt.zero_grad(set_to_none=True)
            total, _ = training_loss(model, model, data, loss, device, pseudo=pseudo, amp=amp,
                                     heatmap_weight=cfg.train.heatmap_weight,
                                     variance_scale=(cfg.data.input_size / 32.0) ** 2)
            total.backward()
            opt.step()

        rows[name] = {"seconds": median_seconds(step, repeats, warmup, device), "covariance": covariance,
                      "loss": loss, "bottleneck_at": model_cfg.bottleneck_at}
        del model, opt
    base = rows.get("mse", {}).get("seconds")
    for r in rows.values():
        r["over_mse"] = r["seconds"] / base if base else None
    return rows


def tic_spectrum(model, images: torch.Tensor) -> dict:
    """J's rank and the Taylor term's share of Σ (``metrics.tic_summary``) for a TIC model on images."""
    from pose_toss.covariance import taylor_diagnostics
    from pose_toss.metrics import tic_summary

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        model.train(was_training)
    if out.tic is None:
        raise ValueError(f"the model's covariance is {model.config['covariance']!r}, not TIC: it has no Jacobian")
    return tic_summary(*taylor_diagnostics(out.tic.jacobian, out.tic.eps1, out.cov))


def trained_tic_spectrum(checkpoint, count: int = 64, device: torch.device | None = None) -> dict:
    """``tic_spectrum`` of a trained model on the first ``count`` images of its run's validation split
    (the default synthetic data's when the file belongs to no run)."""
    from pose_toss.data.dataset import PoseDataset
    from pose_toss.engine.evaluation import resolve_checkpoint, resolve_eval_data
    from pose_toss.models.checkpoint import load_model

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
    from pose_toss.covariance import jacobian
    from pose_toss.engine.trainer import build_model_from_config
    from pose_toss.models.covariance_heads import eval_mode

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = build_model_from_config(replace(cfg, model=replace(cfg.model, covariance="tic")), 14).to(device).eval()
    images = torch.rand(batch, 3, cfg.data.input_size, cfg.data.input_size, device=device)
    with torch.no_grad():
        feats = model.features(images)
        z = model.embed(feats)
        ctx = model.decoder_input(feats) if model.bottleneck_at == "head" else feats

    def batched():
        with eval_mode((model.bottleneck, model.head)):
            jacobian(model.decode, z, ctx)

    def per_sample():
        for i in range(batch):
            torch.autograd.functional.jacobian(lambda zi, i=i: model.decode(zi, ctx[i:i + 1]), z[i:i + 1])

    out = {"batched_s": median_seconds(batched, repeats, warmup, device), "bottleneck_at": model.bottleneck_at,
           "spectrum_at_init": tic_spectrum(model, images)}
    if loop:
        out["per_sample_loop_s"] = median_seconds(per_sample, max(1, repeats // 2), 1, device)
        out["loop_over_batched"] = out["per_sample_loop_s"] / out["batched_s"]
    return out


# --------------------------------------------------------------------------------------------------
# Pseudo-labels, data, inference
# --------------------------------------------------------------------------------------------------


def pseudo_label_scaling(sizes=(10_000, 40_000, 100_000), embed_dim: int = 64, dim: int = 28, k: int = 64,
                         with_sqrt: bool = True, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Seconds of ``pseudo_covariances`` (kNN, weighted covariances and their roots) per bank size and
    the fitted exponent of time ~ N^a."""
    from pose_toss.pseudo_labels import pseudo_covariances

    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
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
    from pose_toss.data.dataset import PoseDataset
    from pose_toss.data.synthetic import SyntheticPoseDataset

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
                         device: torch.device | None = None, embedding_only: bool = False) -> dict:
    """Images/s of an eval-mode forward with the configured covariance, per batch size; with
    ``embedding_only`` just the bottleneck z (what a pseudo-label refresh computes per image)."""
    from pose_toss.engine.trainer import build_model_from_config

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = build_model_from_config(cfg, 14).to(device).eval()
    out = {}
    for b in batches:
        images = torch.rand(b, 3, cfg.data.input_size, cfg.data.input_size, device=device)

        def forward(images=images):
            with torch.no_grad():
                model.embed(model.features(images)) if embedding_only else model(images)

        out[str(b)] = b / median_seconds(forward, repeats, warmup, device)
    return out


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def run_benchmarks(cfg: Config, batch: int = 32, repeats: int = 5, device: str = "auto",
                   pseudo_sizes=(10_000, 40_000, 100_000), data_sizes=(128, 256), data_samples: int = 400,
                   checkpoint=None, log=print) -> dict:
    """Every section of the module docstring; ``checkpoint`` (a trained TIC model or run) adds its J
    spectrum and Taylor share on validation images."""
    from pose_toss.engine.runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    m = cfg.model
    result = {"machine": machine_description(), "device": str(dev),
              "model": {"backbone": m.backbone, "input_size": cfg.data.input_size, "batch": batch,
                        "deconv_channels": m.deconv_channels, "embed_dim": m.embed_dim,
                        "heatmap_stride": cfg.data.heatmap_stride, "bottleneck_at": m.bottleneck_at,
                        "amp": cfg.train.amp and dev.type == "cuda"},
              "repeats": repeats}
    log("training steps ...")
    result["steps"] = step_times(cfg, batch, repeats, device=dev)
    log("Jacobian ...")
    result["jacobian"] = jacobian_times(cfg, batch, repeats, device=dev)
    jac = result["jacobian"]
    jac["share_of_nll_tic_step"] = jac["batched_s"] / result["steps"]["nll_tic"]["seconds"]
    if checkpoint is not None:
        jac["spectrum_trained"] = trained_tic_spectrum(checkpoint, device=dev)
    log("pseudo-labels ...")
    pl = pseudo_label_scaling(pseudo_sizes, embed_dim=64, dim=28, k=64, device=dev)
    # Against an epoch over as many samples with the configured W2-TIC step. A refresh also embeds
    # every training image once (eval-mode forward to z), estimated from the embedding throughput.
    step = result["steps"]["w2_bound_tic"]["seconds"]
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
    result["memory"] = peak_memory(dev)
    return result


def benchmark_markdown(r: dict, command: str) -> str:
    mc, md = r["machine"], r["model"]
    out = [f"Machine: {mc['cpu']}, {mc['cores']} cores ({mc['torch_threads']} torch threads), device {r['device']} "
           f"({mc['device']}), torch {mc['torch']}, OpenCV {mc['opencv']}, Python {mc['python']}.",
           f"Model: {md['backbone']}, {md['input_size']} px, batch {md['batch']}, deconv {md['deconv_channels']}, "
           f"E = {md['embed_dim']}, heatmap stride {md['heatmap_stride']}, z enters at the {md['bottleneck_at']}"
           + (", bf16 autocast" if md["amp"] else "") + f"; median of {r['repeats']} after warm-up.",
           f"Command: `{command}`", "",
           "| training step | covariance | loss | s / step | × MSE step |", "| --- | --- | --- | --- | --- |"]
    for name, s in r["steps"].items():
        out.append(f"| {name} | {s['covariance']} | {s['loss']} | {s['seconds']:.3f} | {s['over_mse']:.2f}× |")
    jac = r["jacobian"]
    out += ["", "| Jacobian (z at the " + jac["bottleneck_at"] + ") | s |", "| --- | --- |",
            f"| batched (torch.func.vjp, one pass per output) | {jac['batched_s']:.4f} |"]
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
    out += ["", "| inference with covariance, batch | images/s |", "| --- | --- |"]
    out += [f"| {k} | {v:.1f} |" for k, v in r["inference_images_per_s"].items()]
    mem = r["memory"]
    out += ["", f"Peak memory: CPU RSS {mem['cpu_peak_rss_mib']:.0f} MiB"
            + (f", CUDA max allocated {mem['cuda_max_allocated_mib']:.0f} MiB" if "cuda_max_allocated_mib" in mem
               else "") + "."]
    return "\n".join(out) + "\n"
