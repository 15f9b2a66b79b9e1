"""`pose-toss train` then `pose-toss eval`, end to end."""

import json

import cv2
import numpy as np
import pytest
from conftest import QUICK, TINY, gfm_table_problems

from pose_toss.cli import main
from pose_toss.config import load_config
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.models.checkpoint import load_model


@pytest.mark.slow
def test_train_eval_cli_end_to_end(tmp_path, capsys):
    run, ev = tmp_path / "run", tmp_path / "eval"
    args = ["train", "--config", str(QUICK), "--out", str(run)]
    for o in [*TINY, "stages.0.epochs=1", "stages.1.epochs=1"]:
        args += ["--set", o]
    assert main(args) == 0
    assert main(args) == 2  # never overwritten silently
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run), "--out", str(ev), "--quiet", "--pictures", "4"]) == 0
    printed = capsys.readouterr().out
    assert "mean joint error" in printed and str(ev / "report.md") in printed
    assert "COCO keypoints (scores: expected OKS): AP " in printed
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("mean_joint_error", "mse", "pck@0.2", "nll", "tac", "coverage@0.9", "calibration_gap", "spearman",
                "ause", "auroc_pck_miss", "w2_to_true", "kl_true_to_pred", "per_joint", "mean_pose_error",
                "tic_share_q25", "tic_share_median", "tic_share_q75", "jacobian_effective_rank_median"):
        assert key in metrics, key
    # The TIC model's J is full rank (E = 8 < D = 28) and carries a share of the covariance.
    assert metrics["jacobian_rank_min"] == metrics["jacobian_full_rank"] == 8
    assert 0 < metrics["tic_share_q25"] <= metrics["tic_share_median"] <= metrics["tic_share_q75"] < 1
    report = (ev / "report.md").read_text()
    assert "## Per joint" in report and "r_ankle" in report and "pictures.png" in report
    assert not gfm_table_problems(report), gfm_table_problems(report)  # every table renders on GitHub
    # COCO AP of the predictions against the same people, scored by expected OKS.
    assert 0 <= metrics["coco"]["AP"] <= 1 and metrics["coco_ap"] == metrics["coco"]["AP"]
    assert metrics["oks_sigmas"][-2:] == [0.079, 0.079] and "## COCO keypoint AP" in report
    assert "## TIC: how much of Σ the Jacobian carries" in report
    # Every W2 epoch logs its labels' weights and, on synthetic data, their distance to the truth.
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["pseudo_label_effective_neighbours"] >= 1 and log[0]["pseudo_label_w2_to_true"] > 0
    assert "pseudo_label_w2_to_true" not in log[1]  # the NLL stage has no labels
    assert (ev / "pictures.png").stat().st_size > 1000
    for plot in ("calibration.png", "sparsification.png", "training_curves.png"):  # linked and readable
        assert f"]({plot})" in report and cv2.imread(str(ev / plot)) is not None, plot

    # The exported people equal model.predict on the original images with the same boxes.
    preds = json.loads((ev / "predictions.json").read_text())
    assert len(preds) == 8
    for p in preds:  # each keypoint's third value is its expected keypoint similarity; the score their mean
        conf = np.asarray(p["keypoints"]).reshape(-1, 3)[:, 2]
        assert ((conf > 0) & (conf <= 1)).all() and p["score"] == pytest.approx(conf.mean(), abs=1e-4)
    cfg = load_config(run / "config.yaml")
    test = SyntheticPoseDataset.from_config(cfg.data.synthetic, "test")
    model = load_model(run / "best" / "model.safetensors")
    for p in preds[:3]:
        rec = test.record(p["image_id"])
        (person,) = model.predict([rec["image"]], boxes=[[rec["bbox"]]], padding=cfg.data.padding)
        kps = np.asarray(p["keypoints"]).reshape(-1, 3)
        np.testing.assert_allclose(kps[:, :2], person["joints"][0], atol=0.05)
        np.testing.assert_allclose(np.asarray(p["covariance"]), person["cov"][0], rtol=1e-3, atol=1e-2)

    # The flip test merges each crop with its mirror image; its single-pass error is the plain eval's.
    ev_flip = tmp_path / "eval_flip"
    assert main(["eval", "--checkpoint", str(run), "--out", str(ev_flip), "--quiet", "--pictures", "0",
                 "--flip-test", "--simulated-detections", "0.1,0.5"]) == 0
    assert "flip test on" in capsys.readouterr().out
    flipped = json.loads((ev_flip / "metrics.json").read_text())
    assert flipped["flip_test"] is True and metrics["flip_test"] is False
    assert flipped["mean_joint_error_no_flip"] == pytest.approx(metrics["mean_joint_error"], rel=1e-5)
    assert "flip test" in (ev_flip / "report.md").read_text()
    boxes = list(flipped["ap_by_score"])
    assert boxes[0] == "ground-truth boxes" and boxes[1].startswith("simulated detections (jitter 0.1")
    assert set(flipped["ap_by_score"][boxes[1]]) == {"expected_oks", "heatmap_max", "constant"}
    assert 0 <= flipped["keypoint_confidence_ece"] <= 1 and sum(flipped["keypoint_reliability"]["count"]) > 0
    assert "keypoint_reliability.png" in (ev_flip / "report.md").read_text()

    # Resume of a finished run does nothing and says so; a bad --data is named.
    assert main(["train", "--resume", str(run)]) == 0
    assert main(["eval", "--checkpoint", str(run), "--data", "nowhere", "--out", str(tmp_path / "e2")]) == 2
    assert "--data 'nowhere'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
