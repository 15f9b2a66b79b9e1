import numpy as np
import torch

from pose_toss.config import load_config
from pose_toss.data.dataset import PoseDataset, load_image_rgb
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.transforms import affine_covariance


def make(train=True, n=8, size=64):
    cfg = load_config(overrides=[f"data.input_size={size}"])
    return PoseDataset.from_config(SyntheticPoseDataset(n, 96, seed=0), cfg.data, train=train)


def test_sample_keys_shapes():
    s = make()[3]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["heatmaps"].shape == (14, 16, 16)
    assert s["target"].shape == (28,) and s["visibility"].shape == (14,)
    assert s["cov_true"].shape == (28, 28) and s["index"] == 3
    assert torch.linalg.eigvalsh(s["cov_true"].double()).min() > 0


def test_heatmaps_encode_the_targets():
    ds = make(train=True)
    for i in range(4):
        s = ds[i]
        dec, _ = ds.codec.decode_argmax(s["heatmaps"].numpy())
        vis = s["visibility"].numpy() > 0
        assert np.allclose(dec[vis], s["target"].numpy().reshape(14, 2)[vis], atol=0.05)


def test_augmentation_is_deterministic_per_epoch():
    ds = make(train=True)
    a = ds[2]["target"]
    assert torch.equal(a, make(train=True)[2]["target"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2]["target"])


def test_eval_mode_crop_covariance():
    ds = make(train=False)
    s = ds[1]
    rec = ds.records[1]
    expected = affine_covariance(s["affine"].double().numpy(), rec["cov_true"])
    assert np.allclose(s["cov_true"].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_image_loading_converts_to_rgb(tmp_path):
    import cv2

    grey = np.tile(np.arange(16, dtype=np.uint8)[None] * 10, (8, 1))
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    rgba[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    g, a = load_image_rgb(tmp_path / "g.png"), load_image_rgb(tmp_path / "a.png")
    assert g.shape == (8, 16, 3) and (g[..., 0] == grey).all()
    assert a.shape == (8, 8, 3) and (a[..., 0] == 200).all() and (a[..., 2] == 0).all()
    from PIL import Image

    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    c = load_image_rgb(tmp_path / "cmyk.jpg")
    assert c.shape == (6, 8, 3) and c[..., 0].mean() > 200 and c[..., 1:].mean() < 40
    import pytest

    with pytest.raises(OSError, match="image file not found"):
        load_image_rgb(tmp_path / "missing.png")
