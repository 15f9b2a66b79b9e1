"""Real-dataset readers against the real annotation files in ../shared/data (skipped without them),
plus fabricated files for the formats and failures the shared data does not cover."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio

from pose_toss import data
from pose_toss.config import load_config
from pose_toss.data import HeatmapCodec, PoseDataset, TopDownTransform, collate_samples, crop_labels
from pose_toss.skeletons import COCO17, LSP14, MPII16

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real annotation files) is absent")


# -- LSP and LSP-extended -----------------------------------------------------------------------------


@needs_shared
def test_lsp_reads_2000_people_with_the_standard_split_and_occlusion_flags():
    raw = sio.loadmat(SHARED / "lsp" / "joints.mat")["joints"]  # 3 x 14 x 2000
    records = data.read_lsp(SHARED / "lsp" / "joints.mat")
    assert len(records) == 2000
    assert [r["split"] for r in records].count("train") == 1000
    assert all(r["split"] == "test" for r in records[1000:])
    vis = np.stack([r["visibility"] for r in records])
    # LSP's third row flags occluded joints: visibility is its complement (92.7% visible).
    np.testing.assert_allclose(vis.mean(), 1.0 - raw[2].mean())
    assert vis.mean() == pytest.approx(0.927, abs=1e-3)
    # The flag is rarest on the head top and commonest on wrists and elbows: it marks occlusion.
    per_joint = vis.mean(axis=0)
    assert per_joint[LSP14.index("head_top")] > 0.99 > 0.9 > per_joint[LSP14.index("l_elbow")]
    np.testing.assert_allclose(records[7]["joints"], raw[:2, :, 7].T)
    assert records[0]["image_path"].endswith("images/im0001.jpg")
    assert records[1999]["image_path"].endswith("images/im2000.jpg")


@needs_shared
def test_lspet_reads_10000_people_and_masks_joints_outside_the_image():
    raw = sio.loadmat(SHARED / "lspet" / "joints.mat")["joints"]  # 14 x 3 x 10000
    records = data.read_lspet(SHARED / "lspet" / "joints.mat")
    assert len(records) == 10000
    assert {r["split"] for r in records} == {"train"}
    vis = np.stack([r["visibility"] for r in records])
    flag, xy = raw[:, 2].T, raw[:, :2].transpose(2, 0, 1)
    expected = (flag == 1) & (xy >= 0).all(axis=2)  # here the flag marks visible joints
    np.testing.assert_array_equal(vis > 0, expected)
    assert vis.mean() == pytest.approx(0.880, abs=1e-3)
    assert ((xy < 0).any(axis=2) & (flag == 1)).sum() > 0  # a few flagged-visible joints lie off the image
    joints = np.stack([r["joints"] for r in records])
    assert (joints[vis > 0] >= 0).all()
    assert records[9999]["image_path"].endswith("images/im10000.jpg")


@needs_shared
def test_lsp_crops_contain_the_annotated_joints():
    records = data.read_lsp(SHARED / "lsp" / "joints.mat")
    labels = crop_labels(records, 128, 1.25)
    vis = np.stack([r["visibility"] for r in records])
    assert (labels["visibility"] == vis).all()


# -- MPII ---------------------------------------------------------------------------------------------


@needs_shared
def test_mpii_json_people_crops_and_flip():
    path = SHARED / "mpii" / "test_mpii.json"
    raw = json.loads(path.read_text())
    records = data.read_mpii(path)
    assert len(records) == 5
    r = records[0]
    np.testing.assert_allclose(r["joints"], np.asarray(raw[0]["joints"]) - 1.0)  # 1-based -> 0-based
    np.testing.assert_allclose(r["center"], np.asarray(raw[0]["center"]) - 1.0)
    assert r["scale"] == pytest.approx(raw[0]["scale"])
    assert r["skeleton"] == "mpii16" and "head_size" not in r  # this json carries no head box
    assert Path(r["image_path"]).is_file()
    vis = np.stack([x["visibility"] for x in records])
    np.testing.assert_array_equal(vis, np.asarray([x["joints_vis"] for x in raw], dtype=np.float32))

    # centre + scale crops (scale x 200 px = height) hold every annotated joint.
    labels = crop_labels(records, 256, 1.25)
    assert (labels["visibility"] == vis).all()

    # A mirrored crop swaps names: the flipped r_wrist sits where the l_wrist was, mirrored.
    cfg = load_config(overrides=["data.input_size=256", "data.augment.rotation=0", "data.augment.scale=[1,1]",
                                 "data.augment.flip_prob=1", "data.augment.color_jitter_prob=0",
                                 "data.augment.blur_prob=0"])
    flipped = PoseDataset.from_config(records, cfg.data, train=True, skeleton=MPII16)[0]
    plain = PoseDataset.from_config(records, cfg.data, train=False, skeleton=MPII16)[0]
    f, p = flipped["target"].numpy().reshape(-1, 2), plain["target"].numpy().reshape(-1, 2)
    for a, b in (("r_wrist", "l_wrist"), ("r_ankle", "l_ankle"), ("head_top", "head_top")):
        i, j = MPII16.index(a), MPII16.index(b)
        np.testing.assert_allclose(f[i], [255 - p[j][0], p[j][1]], atol=1e-3)


def _mpii_release_mat(path: Path) -> None:
    """A two-image release in the official structure: image 1 trains (two people, one listed as
    single), image 2 is a test image."""
    point = np.dtype([("id", "O"), ("x", "O"), ("y", "O"), ("is_visible", "O")])

    def points(rows):
        arr = np.zeros((1, len(rows)), dtype=point)
        for n, (jid, x, y, v) in enumerate(rows):
            arr[0, n] = (jid, float(x), float(y), v)
        return arr

    rect = np.dtype([("x1", "O"), ("y1", "O"), ("x2", "O"), ("y2", "O"), ("annopoints", "O"), ("objpos", "O"),
                     ("scale", "O")])
    rects = np.zeros((1, 2), dtype=rect)
    first = points([(9, 117, 52, 1), (0, 110, 301, 0), (15, 150, 200, "1")])
    rects[0, 0] = (101.0, 51.0, 131.0, 91.0, {"point": first}, {"x": 121.0, "y": 181.0}, 1.5)
    rects[0, 1] = (301.0, 61.0, 321.0, 85.0, {"point": points([(9, 311, 62, 1)])}, {"x": 311.0, "y": 171.0}, 1.2)
    test_rect = np.zeros((1, 1), dtype=[("objpos", "O"), ("scale", "O")])
    test_rect[0, 0] = ({"x": 50.0, "y": 60.0}, 1.0)
    entry = np.dtype([("image", "O"), ("annorect", "O")])
    annolist = np.zeros((1, 2), dtype=entry)
    annolist[0, 0] = ({"name": "000001.jpg"}, rects)
    annolist[0, 1] = ({"name": "000002.jpg"}, test_rect)
    single = np.empty((2, 1), dtype=object)
    single[0, 0], single[1, 0] = np.array([[2]]), np.zeros((0, 0))
    release = {"annolist": annolist, "img_train": np.array([[1, 0]]), "single_person": single}
    sio.savemat(path, {"RELEASE": release})


def test_mpii_official_mat_structure_parses(tmp_path):
    path = tmp_path / "mpii_human_pose_v1_u12_1.mat"
    _mpii_release_mat(path)
    records = data.read_mpii(path)
    assert len(records) == 2  # the test image's person has no points
    a = records[0]
    assert a["image_path"] == str(tmp_path / "images" / "000001.jpg")
    head, ankle, wrist = MPII16.index("head_top"), MPII16.index("r_ankle"), MPII16.index("l_wrist")
    np.testing.assert_allclose(a["joints"][[head, ankle, wrist]], [[116, 51], [109, 300], [149, 199]])
    assert a["visibility"][[head, ankle, wrist]].tolist() == [1, 1, 1]  # annotated, occluded or not
    assert a["visibility"].sum() == 3
    np.testing.assert_allclose(a["center"], [120, 180])
    assert a["scale"] == pytest.approx(1.5)
    assert a["head_size"] == pytest.approx(0.6 * np.hypot(30, 40))
    only = data.read_mpii(path, single_person_only=True)
    assert len(only) == 1 and only[0]["scale"] == pytest.approx(1.2)


def test_mpii_malformed_files_name_the_file_and_field(tmp_path):
    with pytest.raises(data.AnnotationError, match="annotation file not found"):
        data.read_mpii(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "a.jpg", "joints": [[0, 0]] * 16, "joints_vis": [1] * 16, "center": [1, 2]}]))
    with pytest.raises(data.AnnotationError, match=r"bad\.json: person 0 has no field 'scale'"):
        data.read_mpii(bad)
    bad.write_text(json.dumps([{"image": "a.jpg", "joints": [[0, 0]] * 14, "joints_vis": [1] * 16,
                                "center": [1, 2], "scale": 1.0}]))
    with pytest.raises(data.AnnotationError, match=r"'joints' has shape \(14, 2\)"):
        data.read_mpii(bad)
    mat = tmp_path / "release.mat"
    sio.savemat(mat, {"other": np.zeros(3)})
    with pytest.raises(data.AnnotationError, match=r"release\.mat: missing struct 'RELEASE'"):
        data.read_mpii(mat)


def test_lsp_wrong_shape_names_the_field(tmp_path):
    path = tmp_path / "joints.mat"
    sio.savemat(path, {"joints": np.zeros((14, 3, 5))})
    with pytest.raises(data.AnnotationError, match=r"joints\.mat: field 'joints' has shape \(14, 3, 5\); expected 3"):
        data.read_lsp(path)
    sio.savemat(path, {"points": np.zeros((3, 14, 5))})
    with pytest.raises(data.AnnotationError, match="missing field 'joints'"):
        data.read_lspet(path)


# -- COCO ---------------------------------------------------------------------------------------------


@needs_shared
def test_coco_person_instances_with_keypoints():
    path = SHARED / "coco" / "test_coco.json"
    raw = json.loads(path.read_text())
    expected = [a for a in raw["annotations"] if not a["iscrowd"] and any(v > 0 for v in a["keypoints"][2::3])]
    records = data.read_coco(path)
    assert len(records) == len(expected) == 12
    by_id = {r["annotation_id"]: r for r in records}
    for a in expected:
        r = by_id[a["id"]]
        kp = np.asarray(a["keypoints"], dtype=float).reshape(17, 3)
        np.testing.assert_array_equal(r["visibility"], (kp[:, 2] > 0).astype(np.float32))
        np.testing.assert_allclose(r["joints"][kp[:, 2] > 0], kp[kp[:, 2] > 0, :2])
        np.testing.assert_allclose(r["bbox"], a["bbox"])
        assert Path(r["image_path"]).is_file()
    # On the common 14: the neck is the shoulders' midpoint, the head top is never visible.
    common = data.to_common_records(records)
    r0, c0 = records[0], common[0]
    assert c0["skeleton"] == "lsp14"
    mid = 0.5 * (r0["joints"][COCO17.index("l_shoulder")] + r0["joints"][COCO17.index("r_shoulder")])
    np.testing.assert_allclose(c0["joints"][LSP14.index("neck")], mid)
    assert all(c["visibility"][LSP14.index("head_top")] == 0 for c in common)
    np.testing.assert_allclose(c0["joints"][LSP14.index("l_knee")], r0["joints"][COCO17.index("l_knee")])
    labels = crop_labels(records, 128, 1.25)
    vis = np.stack([r["visibility"] for r in records])
    assert labels["visibility"].sum() >= 0.97 * vis.sum()  # COCO boxes are tight; a few limbs stick out


# -- configured datasets ------------------------------------------------------------------------------


@needs_shared
def test_merged_mpii_lsp_lspet_on_the_common_14_joints(tmp_path):
    cfg = load_config(overrides=["data.dataset=mpii_lsp", f"data.real.mpii_root={SHARED / 'mpii'}",
                                 "data.real.mpii_train=test_mpii.json", "data.real.mpii_val=test_mpii.json",
                                 f"data.real.lsp_root={SHARED / 'lsp'}", f"data.real.lspet_root={SHARED / 'lspet'}"])
    train = data.dataset_records(cfg.data, "train")
    assert len(train) == 5 + 1000 + 10000
    assert {r["skeleton"] for r in train} == {"lsp14"} and all(r["joints"].shape == (14, 2) for r in train)
    assert [r["dataset"] for r in train].count("mpii") == 5
    assert len(data.dataset_records(cfg.data, "test")) == 1000
    val = data.dataset_records(cfg.data, "val")
    mpii = data.read_mpii(SHARED / "mpii" / "test_mpii.json")
    np.testing.assert_allclose(val[0]["joints"][LSP14.index("neck")], mpii[0]["joints"][MPII16.index("upper_neck")])
    cfg.data.real.lspet_root = str(tmp_path)
    with pytest.raises(data.AnnotationError, match=r"data\.real\.lspet_root: annotation file not found"):
        data.dataset_records(cfg.data, "train")


# -- images -------------------------------------------------------------------------------------------


def test_unreadable_images_are_skipped_and_named(tmp_path):
    img = np.zeros((40, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "ok.png"), img)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    joints = np.array([[5.0, 5.0], [-3.0, 4.0], [25.0, 39.5], [np.nan, 1.0]] + [[10.0, 10.0]] * 10)
    rec = {"joints": joints, "visibility": np.ones(14), "bbox": [0, 0, 30, 40]}
    records = [dict(rec, image_path=str(tmp_path / n)) for n in ("ok.png", "broken.jpg", "gone.jpg")]
    cfg = load_config(overrides=["data.input_size=64"])
    ds = PoseDataset(records, TopDownTransform.from_config(cfg.data, LSP14, train=False),
                     HeatmapCodec(64, 4, 2.0), LSP14)
    batch = collate_samples([ds[0], ds[1], ds[2]])
    assert batch["image"].shape[0] == 1 and batch["index"].tolist() == [0]
    assert batch["missing_images"] == [f"cannot decode image file: {tmp_path / 'broken.jpg'}",
                                       f"image file not found: {tmp_path / 'gone.jpg'}"]
    # Negative, NaN and below-the-image (y = 39.5 > 39) joints are masked; the others kept.
    assert batch["visibility"][0, :4].tolist() == [1, 0, 0, 0]
    assert collate_samples([ds[2]]) == {"missing_images": [f"image file not found: {tmp_path / 'gone.jpg'}"]}


def _lsp_folder(root: Path, num: int = 24, size: int = 64) -> Path:
    """An LSP-format folder (3 x 14 x N joints.mat with occlusion flags, images/im0001.jpg ...) made
    from synthetic figures."""
    from pose_toss.data import SyntheticPoseDataset

    source = SyntheticPoseDataset(num, size, seed=3)
    (root / "images").mkdir(parents=True)
    joints = np.zeros((3, 14, num))
    for i in range(num):
        rec = source.record(i)
        joints[:2, :, i] = rec["joints_true"].T
        joints[2, :, i] = 1.0 - rec["visibility"]
        cv2.imwrite(str(root / "images" / f"im{i + 1:04d}.jpg"), cv2.cvtColor(rec["image"], cv2.COLOR_RGB2BGR))
    sio.savemat(root / "joints.mat", {"joints": joints})
    return root


@pytest.mark.slow
def test_training_on_an_lsp_folder_skips_and_counts_a_missing_image(tmp_path, capsys):
    from pose_toss.cli import main

    root = _lsp_folder(tmp_path / "lsp")
    (root / "images" / "im0003.jpg").unlink()  # a training image
    cut = root / "images" / "im0005.jpg"
    cut.write_bytes(cut.read_bytes()[:-2])  # its end-of-image marker lost: decoded, but flagged
    joints = sio.loadmat(root / "joints.mat")["joints"]
    joints[2, [6, 11], 1] = 1  # two hidden wrists: LSP's occlusion flags, counted by data-check
    sio.savemat(root / "joints.mat", {"joints": joints})
    tiny = ["data.dataset=lsp", f"data.real.lsp_root={root}", "data.input_size=64", "data.batch_size=4",
            "data.num_workers=0", "model.backbone=resnet10t", "model.deconv_channels=16", "model.embed_dim=8",
            "model.cov_hidden=16", "train.warmup_steps=2", "train.progress=false", "stages.0.pseudo_labels.k=4",
            "stages.0.epochs=1", "stages.1.epochs=1"]
    sets = [a for o in tiny for a in ("--set", o)]
    assert main(["data-check", "--config", "configs/quick.yaml", *sets, "--out", str(tmp_path / "check"),
                 "--count", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"lsp: 1 of 12 image files missing, e.g. {root / 'images' / 'im0003.jpg'}" in printed
    assert f"lsp: 1 of 12 image files damaged, e.g. {cut} (JPEG is truncated (no end-of-image marker))" in printed
    assert "| people | 12 |" in printed
    summary = json.loads((tmp_path / "check" / "summary.json").read_text())
    assert summary["datasets"]["lsp"]["people"] == 12 and summary["skeleton"] == "lsp14"
    train = joints[:, :, :joints.shape[2] // 2]  # LSP's first half trains: what data-check reads by default
    usable = (train[:2] >= 0).all(axis=0)
    known, hidden = int(usable.sum()), int((train[2] > 0)[usable].sum())
    assert summary["datasets"]["lsp"]["occlusion_flags_known"] == known
    assert summary["datasets"]["lsp"]["occlusion_flags_hidden"] == hidden >= 2
    assert f"| occlusion flags: hidden / known | {hidden} / {known} |" in printed
    assert cv2.imread(str(tmp_path / "check" / "contact_sheet.png")) is not None

    run = tmp_path / "run"
    assert main(["train", "--config", "configs/quick.yaml", *sets, "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"warning: skipped: image file not found: {root / 'images' / 'im0003.jpg'}") == 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["missing_images"] for x in lines] == [1, 1]
    assert "1 unreadable images" in printed
