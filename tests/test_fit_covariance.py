"""A covariance for a model that is already trained: the pose model frozen, only the covariance learnt."""

from __future__ import annotations

import json

import pytest
import torch

from pose_toss.engine.fit_covariance import fit_covariance, fit_model_covariance, with_fresh_covariance
from pose_toss.models.covariance_heads import FullCovariance
from pose_toss.skeletons import LSP14


def test_a_frozen_models_noise_is_learnt_by_the_covariance_alone():
    """A fixed linear decoder and targets = decoder(z) + noise of a known covariance: fitting only a full
    covariance network on the frozen means recovers that covariance (and the decoder does not move)."""
    torch.manual_seed(0)
    decoder = torch.nn.Linear(3, 4)
    true = torch.tensor([[4.0, 1.5, 0.0, 0.0], [1.5, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, -0.6], [0.0, 0.0, -0.6, 0.8]])
    chol = torch.linalg.cholesky(true)
    z = torch.randn(4096, 3)
    with torch.no_grad():
        targets = decoder(z) + torch.randn(4096, 4) @ chol.T
    batches = [{"image": z[i:i + 256], "target": targets[i:i + 256], "visibility": torch.ones(256, 2)}
               for i in range(0, 4096, 256)]
    head = FullCovariance(3, 2, cov_hidden=16, init_std=1.0, cov_floor=1e-3)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    history = fit_covariance(lambda x: (decoder(x), x), head, head.parameters(), batches, epochs=40, lr=1e-2,
                             log=lambda *_: None)
    assert history[-1]["train_nll"] < history[0]["train_nll"]
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    with torch.no_grad():
        learnt = head(z[:512]).mean(0)
    torch.testing.assert_close(learnt, true, rtol=0.1, atol=0.15)


def test_an_epoch_with_no_step_is_refused_not_reported_as_fitted():
    """An empty loader, or a covariance non-finite on every batch, trains nothing: that is an error, not an
    epoch with a training NLL of 0."""
    from pose_toss.engine.trainer import TrainingDiverged

    decoder, head = torch.nn.Linear(3, 4), FullCovariance(3, 2, cov_hidden=8, init_std=1.0, cov_floor=1e-3)
    batch = {"image": torch.randn(8, 3), "target": torch.randn(8, 4), "visibility": torch.ones(8, 2)}
    with pytest.raises(TrainingDiverged, match="epoch 1: no step trained \\(0 batches skipped"):
        fit_covariance(lambda x: (decoder(x), x), head, head.parameters(), [], log=lambda *_: None)
    with pytest.raises(TrainingDiverged, match="epoch 1: no step trained \\(2 batches skipped"):
        fit_covariance(lambda x: (decoder(x), x), lambda s: head(s) * float("nan"), head.parameters(),
                       [batch, batch], log=lambda *_: None)


@pytest.mark.slow
def test_fit_model_covariance_keeps_every_mean(tmp_path):
    from pose_toss import build_pose_model
    from pose_toss.config import load_config
    from pose_toss.data.dataset import PoseDataset
    from pose_toss.data.loading import make_loader
    from pose_toss.data.synthetic import SyntheticPoseDataset
    from pose_toss.engine.runtime import Runtime

    torch.manual_seed(0)
    cfg = load_config(overrides=["data.input_size=64", "data.batch_size=8", "data.augment.enabled=false"])
    records = [SyntheticPoseDataset(24, 64, 0).record(i) for i in range(24)]
    loader = make_loader(PoseDataset.from_config(records, cfg.data, train=False), 8, Runtime(torch.device("cpu")),
                         shuffle=False)
    base = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                            cov_hidden=16, covariance="diagonal").eval()
    base.skeleton = LSP14
    images = torch.stack([loader.dataset[i]["image"] for i in range(8)])
    with torch.no_grad():
        before = base(images)
    model = with_fresh_covariance(base, "tic")
    assert model.config.covariance == "tic" and model.skeleton is LSP14  # the model file keeps its joint set
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fit_model_covariance(model, loader, epochs=2, lr=1e-2, log=lambda *_: None)
    with torch.no_grad():
        after = model(images)
    assert torch.equal(after.mean, before.mean)  # the means are the frozen model's, bit for bit
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])}
    assert changed and all(k.startswith("cov_head.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable
    with pytest.raises(ValueError, match=r"covariance must be one of \('tic', 'full', 'diagonal'\), got 'identity'"):
        with_fresh_covariance(base, "identity")


@pytest.mark.slow
def test_the_covariance_of_the_lowest_validation_nll_is_kept():
    """Fitted from scratch on the training split, the covariance overfits its residuals: as training keeps its
    best model, fitting ends with the covariance networks of the epoch whose validation NLL was lowest."""
    from pose_toss import build_pose_model
    from pose_toss.engine.fit_covariance import COVARIANCE_MODULES

    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16, covariance="tic")
    images = torch.rand(16, 3, 64, 64)
    with torch.no_grad():
        mean = model.eval()(images, with_covariance=False).mean
    batches = [{"image": images[i:i + 8], "target": mean[i:i + 8] + 3 * torch.randn(8, 28),
                "visibility": torch.ones(8, 14)} for i in (0, 8)]
    scripted, states = iter([5.0, 3.0, 4.0, float("nan")]), []

    def validate():  # what the covariance is after each epoch, and a made-up validation NLL for it
        states.append({k: v.clone() for k, v in model.state_dict().items() if k.startswith(COVARIANCE_MODULES)})
        return {"nll": next(scripted)}

    history = fit_model_covariance(model, batches, epochs=4, lr=1e-2, validate=validate, log=lambda *_: None)
    assert [h.get("kept", False) for h in history] == [False, True, False, False]
    assert not all(torch.equal(states[1][k], states[3][k]) for k in states[1])  # the epochs differ
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in states[1].items())  # epoch 2's, the lowest NLL, not the last
    with torch.no_grad():
        assert torch.equal(model.eval()(images, with_covariance=False).mean, mean)


@pytest.mark.slow
def test_fit_covariance_command(tmp_path, capsys):
    from conftest import train_args

    from pose_toss.cli import main
    from pose_toss.models.checkpoint import load_model

    run = tmp_path / "run"
    assert main(train_args(run, "stages.0.loss=mse", "stages.1.loss=mse", "model.covariance=identity")) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "e0"), "--quiet", "--pictures", "0"]) == 0
    assert main(["fit-covariance", "--checkpoint", str(run), "--out", str(tmp_path / "fit"), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "fit-covariance epoch 1/1: train NLL" in printed and "covariance (tic) fitted in" in printed
    fitted = load_model(tmp_path / "fit" / "model.safetensors")
    assert fitted.config.covariance == "tic"
    plain = json.loads((tmp_path / "e0" / "metrics.json").read_text())
    refit = json.loads((tmp_path / "fit" / "eval" / "metrics.json").read_text())
    assert refit["mean_joint_error"] == pytest.approx(plain["mean_joint_error"], abs=1e-9)
    assert refit["nll"] < plain["nll"]  # an identity covariance against a learnt one
    lines = (tmp_path / "fit" / "fit_covariance.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["val_nll"] > 0 and json.loads(lines[0])["kept"] is True
    assert json.loads((tmp_path / "fit" / "fit_covariance.json").read_text())["kept_epoch"] == 1
    # A batch larger than the training split leaves no step: refused before anything is written.
    capsys.readouterr()
    assert main(["fit-covariance", "--checkpoint", str(run), "--out", str(tmp_path / "big"), "--epochs", "1",
                 "--set", "data.batch_size=4096"]) == 2
    assert "data.batch_size 4096 is larger than the" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
