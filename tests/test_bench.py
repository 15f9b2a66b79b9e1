"""`pose-toss bench` end to end on a tiny model: every section present, ratios consistent with the
absolute times, the files written. (Speed itself is never asserted in a test.)"""

from __future__ import annotations

import json
import math

import pytest

from pose_toss.cli import main
from pose_toss.commands.bench import STEP_METHODS, pseudo_label_scaling
from pose_toss.config import load_config
from pose_toss.engine.trainer import build_model_from_config
from pose_toss.models.checkpoint import save_model

TINY = ["data.input_size=64", "model.backbone=resnet10t", "model.deconv_channels=16", "model.embed_dim=8",
        "model.cov_hidden=16"]


@pytest.mark.slow
def test_bench_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench"
    model_file = save_model(build_model_from_config(load_config(overrides=TINY), 14), tmp_path / "m.safetensors")
    args = ["bench", "--out", str(out), "--batch", "2", "--repeats", "1", "--pseudo-sizes", "300", "600",
            "--data-sizes", "64", "--data-samples", "4", "--checkpoint", str(model_file), "--profile"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    r = json.loads((out / "bench.json").read_text())
    assert set(r["steps"]) == set(STEP_METHODS)
    mse = r["steps"]["mse"]["seconds"]
    for s in r["steps"].values():
        assert s["seconds"] > 0 and math.isclose(s["over_mse"], s["seconds"] / mse)
    assert r["steps"]["nll_tic_z_at_features"]["bottleneck_at"] == "features"
    for s in r["steps"].values():  # memory per method, as a ratio to the MSE step's
        assert s["peak_mib"] > 0 and math.isclose(s["memory_over_mse"], s["peak_mib"] / r["steps"]["mse"]["peak_mib"])
    jac = r["jacobian"]
    assert jac["batched_s"] > 0 and jac["loop_over_batched"] > 0 and jac["closed_form_s"] > 0
    assert jac["used_s"] == jac["closed_form_s"]
    assert math.isclose(jac["share_of_nll_tic_step"], jac["closed_form_s"] / r["steps"]["nll_tic"]["seconds"])
    profile = r["profile_nll_tic"]
    assert len(profile) > 3 and all(e["self_ms_per_step"] >= 0 and 0 <= e["share"] <= 1 for e in profile)
    for key in ("spectrum_at_init", "spectrum_trained"):  # J's rank and its share of the covariance
        spectrum = r["jacobian"][key]
        assert spectrum["jacobian_rank_min"] == spectrum["jacobian_full_rank"] == 8  # E = 8
        assert 0 < spectrum["tic_share_median"] < 1
    assert r["jacobian"]["spectrum_trained"]["checkpoint"] == str(model_file)
    pl = r["pseudo_labels"]
    assert [row["n"] for row in pl["rows"]] == [300, 600]
    for row in pl["rows"]:  # the refresh = the labels + one embedding pass over the N images
        assert math.isclose(row["embedding_pass_seconds"], row["n"] / pl["embedding_images_per_s"])
        assert math.isclose(row["refresh_share_of_epoch"],
                            (row["seconds"] + row["embedding_pass_seconds"]) / row["epoch_seconds"])
    assert r["data_samples_per_s_per_core"]["64"] > 0
    assert set(r["inference_images_per_s"]) == set(r["inference_mean_only_images_per_s"]) == {"1", "32"}
    onnx = r["onnx_runtime_cpu_images_per_s"]  # None only where onnxruntime is missing
    assert onnx is None or (set(onnx) == {"1", "32"} and min(onnx.values()) > 0)
    assert r["memory"]["cpu_peak_rss_mib"] > 0 and r["machine"]["cores"] >= 1
    md = (out / "bench.md").read_text()
    assert "| w2_full | full | w2_bound |" in md and "Command: `pose-toss bench --out" in md
    tracking = r["tracking"]  # smoothing: the fit of alpha and q, and one online step per lag
    assert tracking["fit_seconds"] > 0 and set(tracking["online_step_seconds_by_lag"]) == {"0", "5"}
    assert "| fit alpha and q, 60 frames x 14 joints |" in md
    assert "| bench model at initialisation, random images |" in md and "trained model, validation images" in md
    assert "| closed form (`heatmap_tail_jacobian`, used) |" in md and "| NLL-TIC step, operator" in md
    assert "| inference, batch | images/s with covariance | images/s, mean only |" in md
    assert md in capsys.readouterr().out
    assert main(args) == 2  # an existing output is never overwritten silently


def test_pseudo_label_exponent_is_the_log_log_slope():
    """(The warm-up run before the timed sizes keeps the first size from paying for it.)"""
    r = pseudo_label_scaling((200, 800), embed_dim=4, dim=6, k=8)
    (a, b) = r["rows"]
    expected = math.log(b["seconds"] / a["seconds"]) / math.log(800 / 200)
    assert math.isclose(r["exponent"], expected, rel_tol=1e-9)


@pytest.mark.cuda
def test_bench_on_cuda_times_the_graphed_forward(tmp_path):
    """On CUDA the bench also replays the forward as a captured CUDA graph, at both batch sizes."""
    out = tmp_path / "bench"
    args = ["bench", "--out", str(out), "--batch", "4", "--repeats", "1", "--pseudo-sizes", "3000",
            "--data-sizes", "64", "--data-samples", "4", "--no-onnx", "--device", "cuda"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    r = json.loads((out / "bench.json").read_text())
    assert r["device"].startswith("cuda") and r["machine"]["cuda"]
    graphed = r["inference_cuda_graph_images_per_s"]
    assert set(graphed) == {"1", "32"} and all(isinstance(v, float) and v > 0 for v in graphed.values()), graphed
    assert r["onnx_runtime_cpu_images_per_s"] is None
    assert "with covariance, CUDA graph |" in (out / "bench.md").read_text()
