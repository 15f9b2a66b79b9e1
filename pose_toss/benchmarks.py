"""Reproducible throughput measurements (printed numbers, never timed unit tests)."""

from __future__ import annotations

import os
import platform
import time

import cv2
import torch

from pose_toss.config import load_config
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.synthetic import SyntheticPoseDataset


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "opencv": cv2.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


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


def _median_seconds(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def step_costs(backbone: str = "resnet18", input_size: int = 128, batch: int = 16, deconv_channels: int = 128,
               embed_dim: int = 64, repeats: int = 5, warmup: int = 2, device: str = "cpu",
               jacobian_loop: bool = True) -> dict:
    """Median seconds of an MSE and an NLL-TIC training step on the same model and batch, their
    ratio, the batched Jacobian alone, and (optionally) the per-sample autograd Jacobian loop."""
    from pose_toss.covariance import jacobian
    from pose_toss.losses import gaussian_nll, mse
    from pose_toss.models import build_pose_model
    from pose_toss.models.covariance_heads import eval_mode

    torch.manual_seed(0)
    model = build_pose_model(backbone, 14, covariance="tic", input_size=input_size, embed_dim=embed_dim,
                             deconv_channels=deconv_channels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, input_size, input_size, device=device)
    target = torch.rand(batch, 28, device=device) * input_size
    mask = torch.ones(batch, 14, device=device)

    def mse_step():
        opt.zero_grad(set_to_none=True)
        feats = model.features(images)
        loss = mse(model.decode(model.embed(feats), feats), target, mask).mean()
        loss.backward()
        opt.step()

    def nll_tic_step():
        opt.zero_grad(set_to_none=True)
        out = model(images)
        gaussian_nll(out.mean, out.cov, target, mask).mean().backward()
        opt.step()

    with torch.no_grad():
        feats = model.features(images)
        z = model.embed(feats)

    def batched_jacobian():
        with eval_mode((model.bottleneck, model.head)):
            jacobian(model.decode, z, feats)

    def loop_jacobian():
        with eval_mode((model.bottleneck, model.head)):
            for i in range(batch):
                torch.autograd.functional.jacobian(lambda zi, i=i: model.decode(zi, feats[i:i + 1]), z[i:i + 1],
                                                   vectorize=False)

    result = {"backbone": backbone, "input_size": input_size, "batch": batch, "deconv_channels": deconv_channels,
              "embed_dim": embed_dim, "device": device}
    result["mse_step_s"] = _median_seconds(mse_step, repeats, warmup)
    result["nll_tic_step_s"] = _median_seconds(nll_tic_step, repeats, warmup)
    result["nll_tic_over_mse"] = result["nll_tic_step_s"] / result["mse_step_s"]
    result["jacobian_batched_s"] = _median_seconds(batched_jacobian, repeats, warmup)
    result["jacobian_share_of_nll_tic_step"] = result["jacobian_batched_s"] / result["nll_tic_step_s"]
    if jacobian_loop:
        result["jacobian_loop_s"] = _median_seconds(loop_jacobian, max(1, repeats // 2), 1)
        result["jacobian_loop_over_batched"] = result["jacobian_loop_s"] / result["jacobian_batched_s"]
    return result


def pseudo_label_scaling(sizes=(10_000, 40_000, 100_000), embed_dim: int = 64, dim: int = 28, k: int = 64,
                         with_sqrt: bool = True, device: str = "cpu", seed: int = 0) -> dict:
    """Seconds of ``pseudo_covariances`` per bank size and the fitted exponent of time ~ N^a."""
    import math

    from pose_toss.pseudo_labels import pseudo_covariances

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        z = torch.randn(n, embed_dim, generator=gen).to(device)
        y = torch.randn(n, dim, generator=gen).to(device)
        start = time.perf_counter()
        pseudo_covariances(z, y, k=k, with_sqrt=with_sqrt)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rows.append({"n": n, "seconds": time.perf_counter() - start})
    xs = [math.log(r["n"]) for r in rows]
    ys = [math.log(r["seconds"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / max(
        sum((a - mx) ** 2 for a in xs), 1e-12)
    return {"rows": rows, "exponent": slope, "embed_dim": embed_dim, "dim": dim, "k": k, "with_sqrt": with_sqrt}
