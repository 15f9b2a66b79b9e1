"""`pose-toss visualize` on real images of any size with a tiny randomly initialised model: the drawing
path, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pose_toss import build_pose_model, save_model
from pose_toss.cli import main
from pose_toss.data.detections import read_detections

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    model = build_pose_model("resnet10t", num_joints=17, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    save_model(model, path)
    return path


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png") if p.name != "contact_sheet.png")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real images) is absent")
def test_visualize_real_mpii_and_coco_images(tiny_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for src in [*(SHARED / "coco").glob("*.jpg"), *(SHARED / "mpii").glob("*.jpg")]:
        (images / src.name).write_bytes(src.read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")

    # COCO people from boxes (the ground-truth file doubles as detections); MPII images get none.
    out = tmp_path / "coco"
    gt = json.loads((SHARED / "coco" / "test_coco.json").read_text())
    assert main(["visualize", "--checkpoint", str(tiny_model), "--images", str(images), "--boxes",
                 str(SHARED / "coco" / "test_coco.json"), "--out", str(out), "--condition", "l_wrist",
                 "--links", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert f"warning: skipped: cannot decode image file: {images / 'broken.jpg'}" in printed
    people = len([a for a in gt["annotations"] if a["category_id"] == 1])
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == len(_pngs(out)) == people
    for p in preds:
        assert len(p["keypoints"]) == 17 * 3 and np.asarray(p["covariance"]).shape == (34, 34)
        pic = cv2.imread(str(out / p["picture"]))
        assert pic.shape[1] > pic.shape[0] >= 384  # the person panel and the conditional panel side by side
    assert cv2.imread(str(out / "contact_sheet.png")) is not None

    # Whole images (no boxes): one person per readable image, at each image's own size.
    out = tmp_path / "whole"
    assert main(["visualize", "--checkpoint", str(tiny_model), "--images", *map(str, sorted(SHARED.glob("*/*.jpg"))),
                 "--out", str(out)]) == 0
    assert len(_pngs(out)) == 9
    assert main(["visualize", "--checkpoint", str(tiny_model), "--images", str(images), "--out", str(out)]) == 2


def test_detections_match_images_by_id_or_file_name(tmp_path):
    images = [tmp_path / "000000000042.jpg", tmp_path / "street.png"]
    dets = [{"image_id": 42, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
            {"image_id": 42, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.2},
            {"image_id": 42, "category_id": 3, "bbox": [5, 5, 10, 10], "score": 0.99},
            {"file_name": "street.png", "image_id": 7, "bbox": [0, 0, 8, 9]}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    boxes = read_detections(path, images, score_threshold=0.5)
    # [x, y, w, h, the detection's index, its score (1 when the file gives none)]
    np.testing.assert_allclose(boxes[images[0]], [[1, 2, 30, 40, 0, 0.9]])
    np.testing.assert_allclose(boxes[images[1]], [[0, 0, 8, 9, 3, 1.0]])
    path.write_text(json.dumps([{"image_id": 42, "bbox": [1, 2, -3, 4]}]))
    with pytest.raises(ValueError, match=r"dets\.json: detection 0: 'bbox' must be \[x, y, w, h\] \(finite numbers\) "
                                         r"with w, h > 0"):
        read_detections(path, images)
