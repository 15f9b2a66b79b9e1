"""`pose-toss make-synthetic`: files, the COCO dataset of the same figures, determinism, refusals."""

import json

import cv2
import numpy as np
import pytest

from pose_toss.cli import main
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.synthetic_files import read_synthetic


def run(*args):
    return main(["make-synthetic", "--quiet", *args])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "syn"
    assert run("--num", "12", "--size", "64", "--seed", "4", "--out", str(out), "--sheet", "4") == 0
    return out


def test_outputs(generated):
    assert sorted(p.name for p in generated.iterdir()) == ["annotations.json", "config.yaml", "contact_sheet.png",
                                                          "images", "person_keypoints.json"]
    assert len(list((generated / "images").glob("*.png"))) == 12
    sheet = cv2.imread(str(generated / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 200
    meta = json.loads((generated / "annotations.json").read_text())
    assert meta["num_samples"] == 12 and meta["seed"] == 4 and len(meta["samples"]) == 12
    assert "num_samples: 12" in (generated / "config.yaml").read_text()


def test_the_figures_as_a_coco_dataset(generated):
    """person_keypoints.json opens in pycocotools and holds the same people as annotations.json."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    coco = COCO(str(generated / "person_keypoints.json"))
    meta = json.loads((generated / "annotations.json").read_text())
    assert len(coco.getImgIds()) == len(coco.getAnnIds()) == 12
    for s in meta["samples"][:4]:
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[s["index"]]))
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)
        vis = np.asarray(s["visibility"]) > 0
        np.testing.assert_allclose(kps[vis, :2], np.asarray(s["joints"])[vis], atol=1e-3)
        assert (kps[:, 2] == np.where(vis, 2, 0)).all() and ann["num_keypoints"] == vis.sum()
        assert ann["bbox"] == pytest.approx(s["bbox"])
        # A figure's area is the segmented area its box implies, half the box, as in COCO (its OKS scale).
        assert ann["area"] == pytest.approx(s["area"]) and s["area"] == pytest.approx(0.5 * s["bbox"][2] * s["bbox"][3])
        assert coco.loadImgs(s["index"])[0]["file_name"] == s["file"]
    assert coco.loadCats(1)[0]["keypoints"][-1] == "head_top"


def test_files_match_the_dataset(generated):
    records = read_synthetic(generated)
    ds = SyntheticPoseDataset(12, 64, seed=4)
    for i in (0, 7, 11):
        rec = ds.record(i)
        img = cv2.cvtColor(cv2.imread(records[i]["image_path"]), cv2.COLOR_BGR2RGB)
        assert (img == rec["image"]).all()
        assert np.allclose(records[i]["joints"], rec["joints"], rtol=1e-6, atol=1e-5)
        assert np.allclose(records[i]["cov_true"], rec["cov_true"], rtol=1e-6, atol=1e-8)
        assert np.linalg.eigvalsh(records[i]["cov_true"]).min() > 0
        assert [(c.kind, c.limb) for c in records[i]["cues"]] == [(c.kind, c.limb) for c in rec["cues"]]
        assert [c.severity for c in records[i]["cues"]] == pytest.approx([c.severity for c in rec["cues"]], abs=1e-4)


def test_same_seed_same_bytes(generated, tmp_path):
    again = tmp_path / "again"
    assert run("--num", "12", "--size", "64", "--seed", "4", "--out", str(again), "--sheet", "4") == 0
    for name in ("annotations.json", "images/000005.png", "contact_sheet.png"):
        assert (again / name).read_bytes() == (generated / name).read_bytes()


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert run("--num", "2", "--size", "64", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"output directory {out} is not empty" in err and "--overwrite" in err
    assert (out / "mine.txt").read_text() == "keep me"
    assert run("--num", "2", "--size", "64", "--out", str(out), "--overwrite") == 0
    assert not (out / "mine.txt").exists() and (out / "annotations.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_bad_config_input(tmp_path, capsys):
    assert run("--num", "0", "--out", str(tmp_path / "x")) == 2
    assert "data.synthetic.num_samples" in capsys.readouterr().err
    assert main(["make-synthetic", "--out", str(tmp_path / "y"), "--set", "data.synthetic.colour=1"]) == 2
    assert "unknown key 'data.synthetic.colour'" in capsys.readouterr().err
    assert main(["make-synthetic", "--out", str(tmp_path / "z"), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_read_synthetic_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        read_synthetic(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps({"format": "pose-toss-synthetic/1", "samples": [
        {"file": "a.png", "joints": [[0, 0]] * 3}]}))
    with pytest.raises(ValueError, match=r"samples\[0\]\.joints has shape \(3, 2\), expected \(14, 2\)"):
        read_synthetic(tmp_path)
    sample = {"file": "a.png", "joints": [[0, 0]] * 14, "joints_true": [[0, 0]] * 14, "visibility": [1] * 14,
              "cov_true": np.eye(28).tolist(), "bbox": [0, 0, 1, 1], "cues": [{"kind": "fog", "limb": [8, 7],
                                                                               "severity": 0.5}]}
    (tmp_path / "annotations.json").write_text(json.dumps({"format": "pose-toss-synthetic/1", "samples": [sample]}))
    with pytest.raises(ValueError, match=r"samples\[0\]\.cues\[0\]: kind 'fog'"):
        read_synthetic(tmp_path)


