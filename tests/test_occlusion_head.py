"""The occlusion head: per-joint occlusion flags from every source, carried through crops and flips, its loss, its
reading of the trunk, and what it adds to a model's outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch

from pose_toss import data
from pose_toss.config import ConfigError, load_config
from pose_toss.data import PoseDataset
from pose_toss.data.synthetic import CUE_LIMBS, Cue, SyntheticPoseDataset
from pose_toss.engine.prediction import metrics_from_predictions
from pose_toss.losses import occlusion_bce
from pose_toss.models import build_pose_model
from pose_toss.models.heads import neighbour_max, sample_at_joints
from pose_toss.skeletons import COCO17, LSP14, MPII16, occlusion_to_common14

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (real annotation files) is absent")


def test_synthetic_flags_mark_the_joints_an_added_occluder_paints_over():
    gen = SyntheticPoseDataset(num_samples=30, image_size=64, seed=3)
    checked = 0
    for i in range(30):
        own = gen.annotation(i)
        free = [limb for limb in CUE_LIMBS if limb not in {tuple(c.limb) for c in own["cues"]}
                and own["visibility"][list(limb)].all()]
        if not free:
            continue
        limb = free[0]
        others = [c for c in own["cues"] if tuple(c.limb) != limb]
        plain = gen.with_cues(i, others)
        hidden = gen.with_cues(i, [*others, Cue("occluder", limb, 1.0)])
        expected = np.zeros(LSP14.num_joints)
        for cue in hidden["cues"]:
            if cue.kind == "occluder":
                expected[cue.limb[1]] = 1
        np.testing.assert_array_equal(hidden["occluded"], expected)
        assert plain["occluded"][limb[1]] == 0 and hidden["occluded"][limb[1]] == 1
        # Independently of the flag: the added occluder paints over the flagged joint's pixel.
        x, y = np.round(hidden["joints_true"][limb[1]]).astype(int)
        assert np.abs(hidden["image"][y, x].astype(int) - plain["image"][y, x].astype(int)).max() > 10
        checked += 1
    assert checked >= 20


def _record(flags, joints=None, size=64):
    joints = np.array([[20.0 + 2 * j, 10.0 + 3 * j] for j in range(14)]) if joints is None else joints
    rec = {"image": np.full((size, size, 3), 90, np.uint8), "joints": joints, "visibility": np.ones(14, np.float32),
           "bbox": np.array([0.0, 0.0, size, size]), "skeleton": "lsp14"}
    if flags is not None:
        rec["occluded"] = np.asarray(flags, dtype=np.float32)
    return rec


def _dataset(records, flip: float):
    cfg = load_config(None, overrides=[f"data.augment.flip_prob={flip}", "data.augment.rotation=0",
                                       "data.augment.scale=[1.0, 1.0]", "data.augment.color_jitter_prob=0",
                                       "data.augment.blur_prob=0", "data.input_size=64"]).data
    cfg.padding = 1.0
    return PoseDataset.from_config(records, cfg, train=flip > 0)


def test_dataset_carries_flags_through_flips_and_marks_unknown_joints():
    wrist, l_wrist = LSP14.index("r_wrist"), LSP14.index("l_wrist")
    flags = np.zeros(14)
    flags[wrist] = 1
    flags[LSP14.index("neck")] = np.nan
    joints = np.array([[20.0 + 2 * j, 10.0 + 3 * j] for j in range(14)])
    joints[LSP14.index("head_top")] = [-5.0, 3.0]  # outside the image: unknown, whatever its flag
    plain = _dataset([_record(flags, joints)], flip=0.0)[0]["occluded"]
    mirrored = _dataset([_record(flags, joints)], flip=1.0)[0]["occluded"]
    assert plain[wrist] == 1 and plain[l_wrist] == 0
    assert plain[LSP14.index("neck")] == -1 and plain[LSP14.index("head_top")] == -1
    assert (plain >= 0).sum() == 12
    # Mirrored, the person's right wrist is drawn where the left one was, and takes its flag with it.
    assert mirrored[l_wrist] == 1 and mirrored[wrist] == 0
    np.testing.assert_array_equal(mirrored.numpy(), plain.numpy()[LSP14.flip_index])
    unflagged = _dataset([_record(None)], flip=0.0)[0]["occluded"]
    assert (unflagged == -1).all()


def test_occlusion_bce_matches_the_formula_over_known_joints():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5, 7))
    flags = rng.choice([-1.0, 0.0, 1.0], size=(5, 7))
    flags[3] = -1  # a sample with no known joint contributes 0
    got = occlusion_bce(torch.tensor(logits), torch.tensor(flags)).numpy()
    p = 1 / (1 + np.exp(-logits))
    terms = -(flags * np.log(p) + (1 - flags) * np.log(1 - p))
    known = flags >= 0
    expected = np.where(known, terms, 0).sum(1) / np.maximum(known.sum(1), 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[3] == 0


def test_sample_at_joints_reads_cell_centres_where_the_soft_argmax_puts_them():
    stride, cells = 4, 8
    activation = torch.randn(2, 3, cells, cells, dtype=torch.float64)
    i, j = torch.tensor([[1, 6], [0, 7]]), torch.tensor([[2, 5], [7, 0]])  # (row, column) per joint
    centres = torch.stack([(j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5], -1).double()
    got = sample_at_joints(activation, centres, cells * stride)
    for b in range(2):
        for k in range(2):
            torch.testing.assert_close(got[b, k], activation[b, :, i[b, k], j[b, k]])
    # Half-way between two cell centres: their mean.
    halfway = centres.clone()
    halfway[0, 0, 0] += stride / 2
    mid = 0.5 * (activation[0, :, 1, 2] + activation[0, :, 1, 3])
    torch.testing.assert_close(sample_at_joints(activation, halfway, cells * stride)[0, 0], mid)


def _model(**options):
    torch.manual_seed(0)
    return build_pose_model("resnet18", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                            cov_hidden=16, feature_stride=8, occlusion_head=True, **options)


def test_model_occlusion_head_trains_the_backbone_and_feeds_the_local_scale():
    model = _model(local_covariance=True).train()
    images = torch.rand(3, 3, 64, 64)
    out = model(images)
    assert out.occlusion_logits.shape == (3, 14) and out.occlusion_logits.dtype == torch.float32
    assert model.local_scale.feature_dim == 1
    flags = torch.zeros(3, 14)
    flags[0, 6] = 1
    occlusion_bce(out.occlusion_logits, flags).mean().backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # a detection loss, like the heatmap's
    # The local scale reads the logit: changing the occlusion head changes the covariance, not the mean.
    model.eval()
    with torch.no_grad():
        before = model(images)
        model.occlusion_head.bias.add_(3.0)
        model.local_scale.out.weight.normal_()
        after = model(images)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.occlusion_logits, before.occlusion_logits + 3.0)
    assert not torch.allclose(after.cov, before.cov)


def test_neighbour_max_takes_the_largest_value_among_the_linked_joints():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(5, 14))
    links = np.zeros((14, 14), dtype=bool)
    for a, b in LSP14.limbs:
        if 13 not in (a, b):  # head top (13) left linked to none
            links[a, b] = links[b, a] = True
    expected = np.array([[max((row[k] for k in np.flatnonzero(links[j])), default=-10.0) for j in range(14)]
                         for row in values])
    got = neighbour_max(torch.from_numpy(values), torch.from_numpy(links))
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got[:, 13].eq(-10.0).all()


def test_local_term_reads_the_linked_joints_occlusion_logits_and_keeps_them_through_a_model_file(tmp_path):
    from pose_toss import load_model, save_model

    model = _model(local_covariance=True, occlusion_neighbours=True).eval()
    assert model.local_scale.feature_dim == 2
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="skeleton"):
        model(images)
    model.skeleton = LSP14
    seen = {}
    model.local_scale.register_forward_pre_hook(lambda module, args: seen.update(features=args[4]))
    with torch.no_grad():
        model.local_scale.out.weight.normal_()
        out = model(images)
    own, linked = seen["features"].unbind(-1)
    torch.testing.assert_close(own, out.occlusion_logits.clamp(-10, 10))
    for j in range(14):
        partners = [b for a, b in LSP14.limbs if a == j] + [a for a, b in LSP14.limbs if b == j]
        torch.testing.assert_close(linked[:, j], own[:, partners].amax(1))
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(images).cov, out.cov)
    with pytest.raises(ValueError, match="occlusion_neighbours"):
        _model(occlusion_neighbours=True)
    with pytest.raises(ConfigError, match="model.occlusion_neighbours"):
        load_config(None, overrides=["model.occlusion_neighbours=true", "model.occlusion_head=true"])


def test_predict_gives_occlusion_probabilities_and_config_refuses_other_heads():
    model = _model().eval()
    image = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    [result] = model.predict(image, boxes=[[0, 0, 60, 80], [5, 5, 30, 40]])
    assert result["occluded"].shape == (2, 14) and ((result["occluded"] > 0) & (result["occluded"] < 1)).all()
    assert "occluded" not in build_pose_model("resnet18", num_joints=14, embed_dim=8, input_size=64,
                                              deconv_channels=16, cov_hidden=16).eval().predict(image)[0]
    with pytest.raises(ValueError, match="occlusion_head"):
        build_pose_model("resnet18", num_joints=14, head="regression", input_size=64, occlusion_head=True)
    with pytest.raises(ConfigError, match="model.occlusion_head"):
        load_config(None, overrides=["model.occlusion_head=true", "model.bottleneck_at=features"])


def test_metrics_report_the_occlusion_auroc_within_joints():
    rng = np.random.default_rng(1)
    n = 40
    flags = torch.from_numpy((rng.random((n, 14)) < 0.3).astype(np.float32))
    flags[:5, 0] = -1  # unknown rows are left out
    # Joint 0 ranks perfectly, the others at random: the mean over joints lies between.
    logits = torch.from_numpy(rng.normal(size=(n, 14)).astype(np.float32))
    logits[:, 0] = flags[:, 0] * 5
    mean = torch.zeros(n, 28)
    preds = {"mean": mean, "cov": torch.eye(28).expand(n, 28, 28), "target": mean + 1, "visibility": torch.ones(n, 14),
             "occlusion_logits": logits, "occluded": flags}
    m = metrics_from_predictions(preds, LSP14)
    per_joint = []
    for j in range(14):
        ok = flags[:, j] >= 0
        pos, neg = logits[ok, j][flags[ok, j] > 0], logits[ok, j][flags[ok, j] == 0]
        per_joint.append(float((pos[:, None] > neg[None, :]).double().mean()))
    assert per_joint[0] == 1.0
    assert m["occlusion_auroc"] == pytest.approx(np.mean(per_joint))


def test_common14_flags_hide_a_joint_when_any_source_joint_is_hidden():
    coco = np.full(17, 0.0)
    coco[COCO17.index("l_shoulder")] = 1.0
    coco[COCO17.index("l_wrist")] = np.nan
    common = occlusion_to_common14("coco17", coco)
    assert common[LSP14.index("neck")] == 1  # the shoulders' midpoint, one of them hidden
    assert common[LSP14.index("l_shoulder")] == 1 and common[LSP14.index("r_shoulder")] == 0
    assert math.isnan(common[LSP14.index("l_wrist")]) and math.isnan(common[LSP14.index("head_top")])


@needs_shared
def test_real_files_give_their_occlusion_flags():
    path = SHARED / "coco" / "test_coco.json"
    raw = {a["id"]: a for a in json.loads(path.read_text())["annotations"]}
    records = data.read_coco(path)
    hidden = 0
    for r in records:
        v = np.asarray(raw[r["annotation_id"]]["keypoints"], dtype=float)[2::3]
        np.testing.assert_array_equal(np.isnan(r["occluded"]), v == 0)
        np.testing.assert_array_equal(r["occluded"][v > 0], (v[v > 0] == 1))
        hidden += int((v == 1).sum())
    assert hidden > 0
    lsp = sio.loadmat(SHARED / "lsp" / "joints.mat")["joints"]  # third row: 1 = occluded
    records = data.read_lsp(SHARED / "lsp" / "joints.mat")
    flags = np.stack([r["occluded"] for r in records])
    known = np.isfinite(flags)
    np.testing.assert_array_equal(flags[known], lsp[2].T[known])
    assert known.mean() > 0.99 and flags[known].mean() == pytest.approx(0.073, abs=1e-3)


def test_mpii_release_is_visible_becomes_the_occlusion_flag(tmp_path):
    from test_readers import _mpii_release_mat

    path = tmp_path / "mpii_human_pose_v1_u12_1.mat"
    _mpii_release_mat(path)
    first = data.read_mpii(path)[0]
    head, ankle, wrist = MPII16.index("head_top"), MPII16.index("r_ankle"), MPII16.index("l_wrist")
    assert first["occluded"][[head, ankle, wrist]].tolist() == [0, 1, 0]  # is_visible 1, 0, "1"
    assert np.isnan(first["occluded"]).sum() == 13  # the unannotated joints


def test_estimator_writes_each_joints_occlusion_probability_after_a_save_and_load(tmp_path):
    from pose_toss import PoseEstimator, save_model

    model = _model(local_covariance=True).eval()
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    image = np.random.default_rng(2).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    [person] = PoseEstimator(path, device="cpu")(image, np.array([[5.0, 5.0, 50.0, 80.0]]))
    with torch.no_grad():
        expected = model.predict(image, [np.array([[5.0, 5.0, 50.0, 80.0]])], padding=1.25)[0]["occluded"][0]
    np.testing.assert_allclose(person.occluded, expected, rtol=1e-5)
    entry = person.coco(image_id=1)
    assert len(entry["occluded"]) == 14 and entry["occluded"][0] == pytest.approx(expected[0], abs=1e-4)


@pytest.mark.slow
def test_train_and_eval_with_an_occlusion_head_report_and_write_it(tmp_path, capsys):
    from conftest import train_args

    from pose_toss.cli import main

    run, ev = tmp_path / "run", tmp_path / "eval"
    assert main(train_args(run, "model.occlusion_head=true", "model.local_covariance=true")) == 0
    assert "occlusion AUROC" in capsys.readouterr().out  # the validation line
    assert main(["eval", "--checkpoint", str(run), "--out", str(ev), "--quiet", "--pictures", "0",
                 "--occlusions", "4"]) == 0
    printed = capsys.readouterr().out
    assert "occlusion head: it tells a hidden joint" in printed and "occlusion head's score for it rose" in printed
    metrics = json.loads((ev / "metrics.json").read_text())
    assert 0 <= metrics["occlusion_auroc"] <= 1 and 0 <= metrics["occlusion"]["hidden_score_rise"] <= 1
    groups = metrics["occlusion"]["by_hidden_probability"]  # every pair in exactly one bin of the head's probability
    assert sum(g["pairs"] for g in groups) == 4 and all(0 <= g["coverage@0.9_occluded"] <= 1 for g in groups)
    assert "by the occlusion head's probability" in printed and metrics["occlusion"]["scale_for_0.9_occluded"] > 0
    assert "occlusion_by_hidden_probability" not in metrics  # only numbers are flattened beside the others
    split = metrics["occlusion"]["by_hidden_score_rise"]  # every pair once, by whether the head's score rose
    assert sum(g["pairs"] for g in split) == 4 and "pairs where the occlusion head's score" in printed
    assert sum(g["pairs"] for g in metrics["occlusion"]["by_severity"]) == 4
    written = json.loads((ev / "predictions.json").read_text())
    assert all(len(r["occluded"]) == 14 and all(0 < p < 1 for p in r["occluded"]) for r in written)
