"""engine/experiment_log.py: `train.log: [jsonl, tensorboard]` writes the epochs' numbers and validation pictures,
read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import math

import pytest
from conftest import train_args

from pose_toss.cli import main
from pose_toss.engine.experiment_log import scalar_tag

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tags_group_the_metrics_lines_keys():
    assert scalar_tag("val_nll") == "val/nll" and scalar_tag("lr") == "train/lr"
    assert scalar_tag("pseudo_label_trace_spearman") == "pseudo_labels/trace_spearman"
    assert scalar_tag("train_loss") == "train/train_loss"


@pytest.mark.slow
def test_tensorboard_event_file_holds_every_epochs_numbers_and_pictures(tmp_path):
    run = tmp_path / "run"
    assert main(train_args(run, "train.log=[jsonl,tensorboard]")) == 0  # W2 with pseudo-labels, then NLL-TIC
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("train_loss", "lr", "val_nll", "val_mean_joint_error", "val_coverage@0.9", "pseudo_label_w2_to_true",
                "pseudo_label_trace_spearman", "epoch_seconds"):
        events = acc.Scalars(scalar_tag(key))
        logged = {e.step: e.value for e in events}
        expected = {line["epoch"]: line[key] for line in lines if isinstance(line.get(key), (int, float))
                    and math.isfinite(line[key])}
        assert logged.keys() == expected.keys() and expected, key
        for step, value in expected.items():
            assert logged[step] == pytest.approx(value, rel=1e-6), (key, step)
    assert "val/pictures" in tags["images"]
    pictures = acc.Images("val/pictures")
    assert [p.step for p in pictures] == [1, 2] and pictures[0].width > 100 and pictures[0].height > 100


def test_the_default_log_is_metrics_jsonl_alone():
    from pose_toss.config import load_config

    assert load_config().train.log == ["jsonl"]
