"""The training loop: stages, resume, non-finite steps, two processes."""

import json
from pathlib import Path

import pytest
import torch
from _gloo import run_on_gloo_ranks
from conftest import quiet, tiny_config, weights

from pose_toss.config import Config, StageConfig
from pose_toss.engine import objectives
from pose_toss.engine.trainer import Trainer, TrainingDiverged, stage_at
from pose_toss.models.checkpoint import load_model


def test_stage_at_maps_epochs_to_stages():
    cfg = Config(stages=[StageConfig("w2_bound", 2), StageConfig("nll", 3)])
    assert [stage_at(cfg, e) for e in range(5)] == [(0, 0), (0, 0), (1, 2), (1, 2), (1, 2)]
    with pytest.raises(IndexError):
        stage_at(cfg, 5)



@pytest.mark.parametrize("train_local_term", [False, True])
def test_a_pseudo_label_stage_leaves_the_local_term_to_the_likelihood_when_told(tmp_path, train_local_term):
    cfg = tiny_config("model.local_covariance=true", f"stages.0.pseudo_labels.train_local_term={train_local_term}")
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    start = weights(trainer.model)
    trainer.fit(max_epochs=1)  # the W2 stage
    after_w2 = weights(trainer.model)
    trainer.fit()  # the NLL stage
    end = weights(trainer.model)

    def moved(a, b, prefix):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))

    assert moved(start, after_w2, "cov_head.")  # TIC learns from the labels either way
    assert moved(start, after_w2, "local_scale.") == train_local_term
    assert moved(after_w2, end, "local_scale.")  # and the likelihood trains the local term


@pytest.mark.slow
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



@pytest.mark.slow
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



@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    run_on_gloo_ranks(_ddp_worker, tmp_path)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load_model(tmp_path / "run" / "model.safetensors").state_dict()
    assert all(torch.equal(saved[k], a[k].cpu()) for k in a)  # rank 0's checkpoint holds the shared weights
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logged once
