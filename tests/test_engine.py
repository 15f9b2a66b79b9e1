"""Trainer, schedule, stage objectives, evaluation command and method configs."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _gloo import run_on_gloo_ranks
from scipy.linalg import sqrtm

from pose_toss.cli import main
from pose_toss.coco_results import coco_results
from pose_toss.commands.compare import parse_lrs, parse_methods
from pose_toss.config import Config, ConfigError, StageConfig, config_to_dict, load_config
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.transforms import TopDownTransform, affine_covariance, box_to_center_size, crop_affine
from pose_toss.engine import objectives
from pose_toss.engine.objectives import labels_in_batch_frame, method_config
from pose_toss.engine.schedule import LRSchedule
from pose_toss.engine.trainer import Trainer, TrainingDiverged, stage_at
from pose_toss.losses import sqrtm_eigh
from pose_toss.models.checkpoint import load_model
from pose_toss.skeletons import LSP14

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
TINY = ["data.input_size=64", "data.batch_size=8", "data.synthetic.num_samples=32", "data.synthetic.val_samples=8",
        "data.synthetic.test_samples=8", "model.backbone=resnet10t", "model.deconv_channels=16", "model.embed_dim=8",
        "model.cov_hidden=16", "train.max_steps_per_epoch=2", "train.warmup_steps=2", "train.progress=false",
        "stages.0.pseudo_labels.k=8"]


def tiny_config(*extra: str) -> Config:
    return load_config(QUICK, [*TINY, *extra])


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def quiet(*_a, **_k):
    pass


# -- configuration and small pieces -------------------------------------------------------------------


def test_default_config_is_nll_tic_and_the_toss_recipe_one_config_away():
    cfg = Config()
    assert [(s.loss, s.epochs) for s in cfg.stages] == [("nll", 100)] and cfg.model.covariance == "tic"
    default = load_config(Path(QUICK).parent / "default.yaml")
    assert [(s.loss, s.epochs) for s in default.stages] == [("nll", 100)]
    toss = load_config(Path(QUICK).parent / "toss.yaml")
    assert [(s.loss, s.epochs) for s in toss.stages] == [("w2_bound", 20), ("nll", 80)]
    assert toss.model.covariance == "tic" and toss.stages[0].pseudo_labels.source == "bottleneck"
    assert config_to_dict(toss)["model"] == config_to_dict(default)["model"]


def test_stage_losses_must_fit_the_covariance():
    with pytest.raises(ConfigError, match=r"stages.0.loss.*loss_pred.*isotropic"):
        load_config(None, ["stages.0.loss=loss_pred"])
    with pytest.raises(ConfigError, match=r"stages.0.loss.*nll.*identity"):
        load_config(None, ["model.covariance=identity"])
    with pytest.raises(ConfigError, match=r"stages.1.loss.*nll.*identity"):
        load_config(QUICK, ["model.covariance=identity", "stages.0.loss=mse"])
    with pytest.raises(ConfigError, match=r"stages.0.loss.*expected one of"):
        load_config(None, ["stages.0.loss=huber"])
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is False
    assert load_config(None, ["model.pretrained=weights/r18.pth"]).model.pretrained == "weights/r18.pth"


def test_stage_at_maps_epochs_to_stages():
    cfg = Config(stages=[StageConfig("w2_bound", 2), StageConfig("nll", 3)])
    assert [stage_at(cfg, e) for e in range(5)] == [(0, 0), (0, 0), (1, 2), (1, 2), (1, 2)]
    with pytest.raises(IndexError):
        stage_at(cfg, 5)


def test_schedule_warmup_cosine_and_plateau():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = LRSchedule(opt, total_steps=100, kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert s.lr == pytest.approx(0.01)
    for _ in range(5):
        s.step()
    cosine5 = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.05))
    assert s.lr == pytest.approx((0.01 + 0.99 * 0.5) * cosine5)
    state = s.state_dict()
    for _ in range(95):
        s.step()
    assert s.lr == pytest.approx(0.1)
    s.load_state_dict(state)
    assert s.lr == pytest.approx((0.01 + 0.99 * 0.5) * cosine5)

    plateau = LRSchedule(torch.optim.SGD([p], lr=1.0), 100, "plateau", 0, patience=1, factor=0.5)
    for metric in (5.0, 4.0, 4.5, 4.2):  # two epochs without improvement > patience 1 -> halve
        plateau.epoch_end(metric)
    assert plateau.lr == pytest.approx(0.5)


def test_bank_labels_follow_the_augmentation_including_flips():
    ds = SyntheticPoseDataset(3, 128, seed=1)
    for flip in (0.0, 1.0):
        tf = TopDownTransform(128, LSP14, augment=True, rotation=40, scale=(0.7, 1.3), flip_prob=flip)
        for i in range(3):
            rec = ds.record(i)
            center, size = box_to_center_size(rec["bbox"], 1.25)
            eval_affine = crop_affine(center, size, 128)
            bank_cov = affine_covariance(eval_affine, rec["cov_true"])  # what the bank stores
            out = tf(rec["image"], rec["joints"], rec["visibility"], center, size, cov=rec["cov_true"], seed=i)
            assert out.flipped == bool(flip)
            args = (torch.tensor(bank_cov[None]), torch.tensor(eval_affine[None]), torch.tensor(out.affine[None]),
                    torch.from_numpy(LSP14.flip_coordinate_index.copy()))
            moved, root = labels_in_batch_frame(*args)
            np.testing.assert_allclose(moved[0].numpy(), out.cov, rtol=1e-4, atol=1e-4 * np.abs(out.cov).max())
            np.testing.assert_allclose((root @ root)[0].numpy(), out.cov, atol=1e-3 * np.abs(out.cov).max())
            # The bank's own roots, moved with the similarity, equal the recomputed ones.
            bank_root = torch.from_numpy(sqrtm(bank_cov).real[None])
            moved2, carried = labels_in_batch_frame(*args, sqrt=bank_root)
            np.testing.assert_allclose(carried[0].numpy(), root[0].numpy(), atol=1e-3 * root.abs().max().item())
            assert torch.equal(moved2, moved)
    # A map that is not a similarity (stretched crop) falls back to eigh.
    cov = torch.tensor(bank_cov[None])
    stretch = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    _, root = labels_in_batch_frame(cov, torch.eye(2, 3, dtype=torch.float64)[None], stretch,
                                    torch.arange(28), sqrt=torch.from_numpy(sqrtm(bank_cov).real[None]))
    m = torch.kron(torch.eye(14, dtype=torch.float64), torch.diag(torch.tensor([2.0, 1.0])))
    np.testing.assert_allclose((root.double() @ root.double())[0].numpy(), (m @ cov[0] @ m.T).numpy(),
                               atol=1e-3 * float(cov.abs().max()) * 4)


def test_coco_results_map_back_to_image_pixels():
    a = np.array([[2.0, 0.0, -10.0], [0.0, 2.0, 4.0]])  # image -> crop: scale 2, shift
    mean = np.array([[10.0, 20.0, 30.0, 40.0]])
    cov = np.diag([4.0, 8.0, 12.0, 16.0])[None]
    (res,) = coco_results(mean, cov, a[None], [7], areas=[100.0], sigmas=[0.05, 0.1])
    assert res["image_id"] == 7 and res["category_id"] == 1
    # Third values: expected keypoint similarity det(I + S_j / c)^-1/2, c = area (2 sigma)^2, by hand:
    # joint 0: S = diag(1, 2), c = 1 -> 6^-1/2; joint 1: S = diag(3, 4), c = 4 -> 3.5^-1/2. Score: their mean.
    k0, k1 = 6**-0.5, 3.5**-0.5
    assert res["keypoints"] == pytest.approx([10.0, 8.0, k0, 20.0, 18.0, k1], abs=1e-4)
    assert np.asarray(res["covariance"]) == pytest.approx(np.diag([1.0, 2.0, 3.0, 4.0]))
    assert res["score"] == pytest.approx((k0 + k1) / 2, abs=1e-5)


def test_method_configs_share_the_budget():
    base = Config()
    assert [(s.loss, s.epochs) for s in method_config(base, "w2_then_nll_tic").stages] == [("w2_bound", 20),
                                                                                          ("nll", 80)]
    mse = method_config(base, "mse")
    assert mse.model.covariance == "identity" and [(s.loss, s.epochs) for s in mse.stages] == [("mse", 100)]
    assert method_config(base, "loss_pred").model.covariance == "isotropic"
    plain = Config(stages=[StageConfig("nll", 5)] * 2)  # not a W2 recipe: the paper's 20% / 80% split
    assert [s.epochs for s in method_config(plain, "w2_then_nll_tic").stages] == [2, 8]
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("mse,huber")


# -- training ---------------------------------------------------------------------------------------


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # W2 for two epochs with one refresh (epoch 2 reuses the bank saved in the checkpoint), then NLL.
    cfg = tiny_config("stages.0.epochs=2", "stages.0.pseudo_labels.refresh_every=2", "stages.1.epochs=1")
    straight = Trainer(cfg, tmp_path / "a", log=quiet)
    straight.fit()

    killed = Trainer(cfg, tmp_path / "b", log=quiet)
    killed.fit(max_epochs=1)  # as if the process died after the first checkpoint
    assert (tmp_path / "b" / "checkpoints" / "epoch_0001" / "model.safetensors").is_file()
    resumed = Trainer(cfg, tmp_path / "b", resume=True, log=quiet)
    assert resumed.state.epoch == 1
    resumed.fit()
    a, b = weights(straight.model), weights(resumed.model)
    assert a.keys() == b.keys()
    # train.channels_last (the default) holds for resumed runs too
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in resumed.model.parameters() if p.dim() == 4)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    first = json.loads(lines[0])
    assert first["loss"] == "w2_bound" and first["pseudo_label_seconds"] > 0 and "val_nll" in first
    assert json.loads(lines[1])["pseudo_label_seconds"] == 0  # refresh_every=2: the saved bank was reused
    assert json.loads(lines[2])["loss"] == "nll"
    assert (tmp_path / "b" / "best" / "model.safetensors").is_file()
    assert load_model(tmp_path / "b" / "model.safetensors").config.covariance == "tic"
    # A run whose checkpoints another model design wrote is refused by name, not by a shape mismatch.
    other = tiny_config("stages.0.epochs=2", "stages.0.pseudo_labels.refresh_every=2", "stages.1.epochs=2",
                        "model.bottleneck_grid=2")
    with pytest.raises(ValueError, match=r"epoch_0003: written for another model than .*config.yaml describes "
                                         r"\(model.bottleneck_grid differ\)"):
        Trainer(other, tmp_path / "b", resume=True, log=quiet)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    real = objectives.Loss.__call__
    calls = {"n": 0}

    def flaky(self, inputs):
        calls["n"] += 1
        out = real(self, inputs)
        return out * float("nan") if calls["n"] >= 2 else out

    monkeypatch.setattr(objectives.Loss, "__call__", flaky)
    cfg = tiny_config("stages.0.epochs=1", "stages.1.epochs=1", "train.max_bad_steps=3", "stages.0.loss=mse")
    with pytest.raises(TrainingDiverged, match=r"stage 2 \(nll\), epoch 2, step 2: 3 non-finite steps in a row"):
        Trainer(cfg, tmp_path / "run", log=quiet).fit()
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["skipped_steps"] == 1  # the first epoch's second step was skipped and counted


def _ddp_worker(rank, world, out):
    cfg = tiny_config("stages.0.epochs=1", "stages.1.epochs=1")
    t = Trainer(cfg, Path(out) / "run", overwrite=True, log=quiet)
    assert t.rt.world_size == world and len(t.train_loader) == 2
    t.fit()
    torch.save(weights(t.model), Path(out) / f"rank{rank}.pt")


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    run_on_gloo_ranks(_ddp_worker, tmp_path)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load_model(tmp_path / "run" / "model.safetensors").state_dict()
    assert all(torch.equal(saved[k], a[k].cpu()) for k in a)  # rank 0's checkpoint holds the shared weights
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logged once


# -- command line -------------------------------------------------------------------------------------


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


def test_sqrt_helper_used_for_labels_is_a_root():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 6, generator=gen)
    spd = a @ a.transpose(1, 2) + torch.eye(6)
    r = sqrtm_eigh(spd)
    torch.testing.assert_close(r @ r, spd, atol=1e-4, rtol=1e-4)


def test_compare_sweeps_seeds_and_lrs_and_resumes(tmp_path):
    import statistics

    from pose_toss.commands.compare import compare

    base = tiny_config("stages.0.epochs=1", "stages.1.epochs=1")
    said = []
    result = compare(base, ["mse", "w2_residual_then_nll_tic"], tmp_path / "cmp", lrs=[2e-3, 5e-3], seeds=2,
                     log=said.append)
    cells = {(r["method"], r["lr"], r["seed"]): r for r in result["rows"]}
    assert len(cells) == 8 and all(r["train_seconds"] > 0 for r in cells.values())
    assert (tmp_path / "cmp" / "lr_0.005" / "seed_1" / "mse" / "eval" / "metrics.json").is_file()
    # The residual variant's W2 stage really uses residual labels.
    assert "pseudo-labels (residuals)" in "\n".join(said)
    # Mean and sample std over the two seeds, against the statistics module.
    row = next(s for s in result["summary"] if s["method"] == "mse" and s["lr"] == 5e-3)
    errs = [cells[("mse", 5e-3, seed)]["mean_joint_error"] for seed in (0, 1)]
    assert row["mean"]["mean_joint_error"] == pytest.approx(statistics.mean(errs))
    assert row["std"]["mean_joint_error"] == pytest.approx(statistics.stdev(errs))
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## lr 0.002" in table and "## lr 0.005" in table and " ± " in table and "**" in table
    assert "| w2_residual_then_nll_tic |" in table and "AUROC cued" in table and "comparison_curves.png" in table
    png = cv2.imread(str(tmp_path / "cmp" / "comparison_curves.png"))
    assert png is not None and png.shape[1] > 800  # two learning-rate columns of about 460 px
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len(saved["cells"]) == 8 and len(saved["curves"]["mse|0.002|1"]["val_nll"]) == 2
    # Identical config: finished cells are read back; a changed config trains again.
    said.clear()
    compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3], overwrite=True, log=said.append)
    assert any("already done" in s for s in said)
    said.clear()
    compare(tiny_config("stages.0.epochs=1", "stages.1.epochs=1", "train.weight_decay=0.001"), ["mse"],
            tmp_path / "cmp", lrs=[5e-3], overwrite=True, log=said.append)
    assert not any("already done" in s for s in said)
    # An interrupted cell (a checkpoint but no evaluation) continues from its checkpoint.
    cell = tmp_path / "cmp" / "lr_0.002" / "seed_0" / "mse"
    shutil.rmtree(cell / "eval")
    (cell / "wall_time.json").unlink()
    said.clear()
    compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3], overwrite=True, log=said.append)
    assert any("resuming" in s for s in said) and (cell / "eval" / "metrics.json").is_file()
    with pytest.raises(ValueError, match="--lrs"):
        parse_lrs("1e-3,-1")
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        compare(base, ["mse"], tmp_path / "other", seeds=0)


def test_compare_runs_cells_side_by_side_in_workers(tmp_path):
    from pose_toss.commands.compare import compare

    base = tiny_config("stages.0.epochs=1", "stages.1.epochs=1")
    said = []
    result = compare(base, ["mse", "nll_tic"], tmp_path / "cmp", jobs=2, log=said.append)
    assert {r["method"] for r in result["rows"]} == {"mse", "nll_tic"}
    logs = sorted(p.name for p in (tmp_path / "cmp" / "logs").iterdir())
    assert logs == ["mse_lr0.002_seed0.log", "nll_tic_lr0.002_seed0.log"]
    assert "epoch 2/2" in (tmp_path / "cmp" / "logs" / logs[1]).read_text()
    assert any("(2/2)" in s for s in said)
