"""ONNX export: the graph's mean and covariance equal PyTorch's, for every covariance and both heads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pose_toss import build_pose_model, save_model
from pose_toss.skeletons import LSP14

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]


def _model(head: str, covariance: str, **kw):
    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16, head=head, covariance=covariance, **kw)
    model.skeleton = LSP14  # occlusion_neighbours reads its limbs
    model.train()
    model(torch.rand(4, 3, 64, 64))  # a training batch sets TIC's running J scale
    with torch.no_grad():  # away from the zero-initialised last layers: covariances that vary by sample
        for module in (model.cov_head, model.local_scale):
            for p in module.parameters() if module is not None else ():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("head, covariance, local", [
    *((h, c, False) for h in ("heatmap", "regression") for c in ("tic", "full", "diagonal", "identity", "isotropic")),
    ("heatmap", "tic", True), ("heatmap", "diagonal", True), ("heatmap", "tic", "affine"),
    ("heatmap", "tic", "features"), ("heatmap", "tic", "occlusion"), ("heatmap", "tic", "neighbours")])
@pytest.mark.slow
def test_onnx_runtime_equals_pytorch(head, covariance, local, tmp_path):
    from pose_toss.models.onnx import export_onnx

    model = _model(head, covariance, local_covariance=bool(local),
                   **({"local_form": "affine"} if local == "affine" else {}),
                   **({"local_features": True} if local == "features" else {}),
                   **({"occlusion_head": True} if local in ("occlusion", "neighbours") else {}),
                   **({"occlusion_neighbours": True} if local == "neighbours" else {}))
    names = export_onnx(model, tmp_path / "m.onnx")
    assert not model.training  # the export hands the model back in the mode it had
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        images = torch.rand(batch, 3, 64, 64)
        got = dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
        with torch.no_grad():
            ref = model(images)
        np.testing.assert_allclose(got["mean"], ref.mean.numpy(), rtol=1e-4, atol=1e-4 * float(ref.mean.abs().max()))
        np.testing.assert_allclose(got["cov"], ref.cov.numpy(), rtol=1e-4, atol=1e-4 * float(ref.cov.abs().max()))
        if head == "heatmap":
            np.testing.assert_allclose(got["heatmaps"], ref.heatmaps.numpy(), rtol=1e-4, atol=1e-4)
        if local in ("occlusion", "neighbours"):  # each joint's chance of being hidden, as predict gives it
            np.testing.assert_allclose(got["occluded"], torch.sigmoid(ref.occlusion_logits).numpy(), atol=1e-5)


@pytest.mark.slow
def test_export_command_and_the_torch_free_example(tmp_path, capsys):
    import cv2

    from pose_toss.cli import main

    model = _model("heatmap", "tic")
    ckpt = save_model(model, tmp_path / "m.safetensors")
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--onnx", str(onnx_file)]) == 0
    assert "outputs mean, cov, heatmaps" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(ckpt), "--onnx", str(onnx_file)]) == 2  # never replaced silently
    assert "exists; pass --overwrite" in capsys.readouterr().err
    # The example (ONNX Runtime, NumPy, OpenCV) predicts what model.predict does on a whole image.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import onnx_inference
    finally:
        sys.path.pop(0)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    joints, cov = onnx_inference.predict(session, image)
    (ref,) = model.predict(image)
    np.testing.assert_allclose(joints, ref["joints"][0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(cov, ref["cov"][0], rtol=1e-3, atol=1e-3 * np.abs(ref["cov"][0]).max())
    # ... and runs without torch at all.
    photo, drawn = tmp_path / "photo.png", tmp_path / "drawn.png"
    cv2.imwrite(str(photo), image[..., ::-1])
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    script = ROOT / "examples" / "onnx_inference.py"
    done = subprocess.run([sys.executable, "-c", code, str(script), str(onnx_file), str(photo), str(drawn)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "14 joints, their skeleton and their 90 % ellipses drawn" in done.stdout
    assert cv2.imread(str(drawn)) is not None
