"""Real data, first class: a COCO-17 config trains on real COCO people and its results pass plain pycocotools; a
keypoint set defined in YAML trains and evaluates end to end; `eval --ann FILE --images DIR` on any COCO file."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose_toss.cli import main
from pose_toss.config import load_config
from pose_toss.engine.coco_eval import keypoint_ap_against_file
from pose_toss.models.checkpoint import load_model
from pose_toss.skeletons import COCO17, get_skeleton, load_skeleton, skeleton_from_coco_category

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_workers=0", "data.batch_size=4", "train.max_steps_per_epoch=2", "train.warmup_steps=2",
         "train.progress=false"]


def plain_pycocotools(gt_file: Path, results: list[dict], sigmas=None) -> np.ndarray:
    """COCOeval's ten keypoint numbers, as a user would run it on our results file (with the keypoint set's OKS
    constants where it is not COCO's)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.slow
def test_coco17_config_trains_on_real_people_and_its_results_pass_plain_pycocotools(tmp_path, shared_data):
    coco = shared_data / "coco"
    run, ev = tmp_path / "run", tmp_path / "eval"
    cfg = load_config(ROOT / "configs" / "coco_resnet.yaml")
    assert cfg.model.pretrained is True and cfg.data.dataset == "coco"  # what users get; the test never downloads
    overrides = ["model.pretrained=false", f"data.real.coco_root={coco}", "data.real.coco_train=test_coco.json",
                 "data.real.coco_val=test_coco.json", "stages.0.epochs=1", "data.input_size=128", *SMALL]
    assert main(["train", "--config", str(ROOT / "configs" / "coco_resnet.yaml"), "--out", str(run),
                 *set_args(overrides)]) == 0
    model = load_model(run / "model.safetensors")
    assert model.skeleton == COCO17 and model.num_joints == 17
    assert main(["eval", "--checkpoint", str(run), "--ann", str(coco / "test_coco.json"), "--images", str(coco),
                 "--out", str(ev), "--quiet", "--pictures", "2"]) == 0
    results = json.loads((ev / "predictions.json").read_text())
    people = [a for a in json.loads((coco / "test_coco.json").read_text())["annotations"]
              if any(v > 0 for v in a["keypoints"][2::3]) and not a.get("iscrowd")]
    assert len(results) == len(people) == 12
    assert all(len(r["keypoints"]) == 51 and r["skeleton"] == "coco17" and r["category_id"] == 1 for r in results)
    stats = plain_pycocotools(coco / "test_coco.json", results)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["coco_file"]["AP"] == pytest.approx(float(stats[0]), abs=1e-9)  # eval's own call is the same


def test_results_of_another_skeleton_are_refused_against_coco_ground_truth(shared_data, tmp_path):
    gt = shared_data / "coco" / "test_coco.json"
    image_id = json.loads(gt.read_text())["annotations"][0]["image_id"]
    lsp = [{"image_id": image_id, "category_id": 1, "keypoints": [10.0, 10.0, 0.5] * 14, "score": 0.5,
            "skeleton": "lsp14"}]
    with pytest.raises(ValueError, match=r"skeleton lsp14 \(14 keypoints\), but .*test_coco.json's category 'person' "
                                         r"has 17 keypoints \(coco17\)"):
        keypoint_ap_against_file(lsp, gt)
    coco = [{**lsp[0], "keypoints": [10.0, 10.0, 0.5] * 17, "skeleton": "coco17"}]
    (tmp_path / "r.json").write_text(json.dumps(coco))
    assert set(keypoint_ap_against_file(tmp_path / "r.json", gt)) >= {"AP", "AP50", "AR"}


def hand_dataset(root: Path, people: int = 10, size: int = 96) -> tuple[Path, Path]:
    """A COCO-style file of a 5-keypoint 'hand' (wrist and four finger tips) on drawn images, and its skeleton."""
    names = ["wrist", "l_tip", "r_tip", "middle", "thumb"]
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(people):
        image = np.full((size, size, 3), 40, np.uint8)
        centre = rng.uniform(35, 61, 2)
        points = centre + rng.normal(0, 1.5, (5, 2)) + np.array([[0, 20], [-15, -15], [15, -15], [0, -20], [-20, 5]])
        for a, b in ((0, 1), (0, 2), (0, 3), (0, 4)):
            cv2.line(image, tuple(int(v) for v in points[a]), tuple(int(v) for v in points[b]), (200, 160, 120), 3)
        for j, (x, y) in enumerate(points):
            cv2.circle(image, (int(x), int(y)), 3, (60 * j, 255 - 40 * j, 90), -1)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image)
        lo, hi = points.min(0) - 5, points.max(0) + 5
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": size, "height": size})
        annotations.append({"id": 100 + i, "image_id": i + 1, "category_id": 7, "iscrowd": 0,
                            "keypoints": [float(v) for p in points for v in (*p, 2)], "num_keypoints": 5,
                            "bbox": [*lo, *(hi - lo)], "area": float(np.prod(hi - lo))})
    category = {"id": 7, "name": "hand", "supercategory": "hand", "keypoints": names,
                "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]]}
    ann = root / "hands.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [category]}))
    skeleton = root / "hand5.yaml"
    skeleton.write_text(yaml.safe_dump({"name": "hand5", "joints": names, "flip_pairs": [["l_tip", "r_tip"]],
                                        "links": [["wrist", n] for n in names[1:]],
                                        "sigmas": [0.05, 0.03, 0.03, 0.03, 0.04]}))
    return ann, skeleton


@pytest.mark.slow
def test_a_five_keypoint_skeleton_from_yaml_trains_and_evaluates_end_to_end(tmp_path):
    ann, skeleton_file = hand_dataset(tmp_path / "hands")
    hand = load_skeleton(skeleton_file)
    assert hand.num_joints == 5 and hand.flip_pairs == ((1, 2),) and hand.oks_sigmas[4] == 0.04
    # The file's own category gives the same joints and links; the YAML adds flips and OKS constants.
    category = json.loads(ann.read_text())["categories"][0]
    assert skeleton_from_coco_category(category).joint_names == hand.joint_names
    run, ev = tmp_path / "run", tmp_path / "eval"
    overrides = ["data.dataset=coco", f"data.skeleton={skeleton_file}", f"data.real.coco_root={ann.parent}",
                 "data.real.coco_train=hands.json", "data.real.coco_val=hands.json", "data.real.coco_images=images",
                 "data.input_size=64", "model.backbone=resnet10t", "model.deconv_channels=16", "model.embed_dim=8",
                 "model.cov_hidden=16", "stages.0.epochs=1", "stages.1.epochs=1", "stages.0.pseudo_labels.k=4",
                 *SMALL]
    assert main(["train", "--config", str(ROOT / "configs" / "quick.yaml"), "--out", str(run),
                 *set_args(overrides)]) == 0  # W2 with pseudo-labels over 5 joints, then NLL-TIC
    model = load_model(run / "model.safetensors")
    assert model.skeleton == hand and model.num_joints == 5
    assert main(["eval", "--checkpoint", str(run), "--ann", str(ann), "--images", str(ann.parent / "images"),
                 "--out", str(ev), "--quiet", "--pictures", "2"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["num_samples"] == 10 and np.isfinite(metrics["nll"])
    assert metrics["oks_sigmas"] == pytest.approx([0.05, 0.03, 0.03, 0.03, 0.04])
    results = json.loads((ev / "predictions.json").read_text())
    assert {r["skeleton"] for r in results} == {"hand5"} and {r["category_id"] for r in results} == {7}
    assert all(len(r["keypoints"]) == 15 and np.array(r["covariance"]).shape == (10, 10) for r in results)
    stats = plain_pycocotools(ann, results, hand.oks_sigmas)  # the file and our results: plain pycocotools runs
    assert metrics["coco_file"]["AP"] == pytest.approx(float(stats[0]), abs=1e-9)
    # A wrongly named joint in the configured skeleton is caught against the file's category.
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(skeleton_file.read_text().replace("thumb", "pinky"))
    code = main(["train", "--config", str(ROOT / "configs" / "quick.yaml"), "--out", str(tmp_path / "r2"),
                 *set_args([*overrides[:1], f"data.skeleton={wrong}", *overrides[2:]])])
    assert code == 2


def test_eval_ann_on_the_real_coco_file_with_an_untrained_coco_model(tmp_path, shared_data, capsys):
    from pose_toss.engine.trainer import build_model_from_config
    from pose_toss.models.checkpoint import save_model

    coco = shared_data / "coco"
    cfg = load_config(overrides=["data.input_size=64", "model.backbone=resnet10t", "model.deconv_channels=16",
                                 "model.embed_dim=8", "model.cov_hidden=16"])
    model = build_model_from_config(cfg, 17)
    model.skeleton = get_skeleton("coco17")
    save_model(model, tmp_path / "m.safetensors")
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--ann", str(coco / "test_coco.json"),
                 "--images", str(coco), "--out", str(out), "--quiet", "--pictures", "0"]) == 0
    printed = capsys.readouterr().out
    assert "against the file itself (plain pycocotools): AP " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["mean_pose_from"] == "evaluated set"
    # The two ways of asking are refused together; --images needs --ann.
    assert main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--ann", str(coco / "test_coco.json"),
                 "--data", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "give --data or --ann FILE" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--images", str(coco),
                 "--out", str(tmp_path / "y")]) == 2
    assert "--images goes with --ann FILE" in capsys.readouterr().err
