"""The command line itself: the console entry point and the dispatcher's answers."""

import subprocess
import sys

import pytest

from pose_toss.cli import main
from pose_toss.commands import COMMANDS


@pytest.mark.slow
def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "pose_toss", "--help"], capture_output=True, text=True, check=True)
    assert all(name in out.stdout for name in COMMANDS)


def test_each_command_has_its_arguments_and_bad_ones_exit_2(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert f"usage: pose-toss {name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


POSITIVE = "expected a finite number > 0"


@pytest.mark.parametrize("argv, message", [
    (["video-bench", "--checkpoint", "m", "--out", "o", "--seed", "-5"], "argument --seed: expected a whole number"),
    (["export", "--checkpoint", "m", "--onnx", "o.onnx", "--opset", "99"], "argument --opset: expected a whole "
                                                                           "number from 16 to 20, got '99'"),
    (["fit-covariance", "--checkpoint", "m", "--out", "o", "--lr", "nan"], f"argument --lr: {POSITIVE}"),
    (["fit-covariance", "--checkpoint", "m", "--out", "o", "--lr", "-1"], f"argument --lr: {POSITIVE}"),
    (["eval", "--checkpoint", "m", "--out", "o", "--batch-size", "0"], "argument --batch-size: expected a whole "
                                                                       "number >= 1, got '0'"),
    (["predict", "--checkpoint", "m", "--inputs", "i", "--out", "o", "--every", "0"], "argument --every"),
])
def test_numbers_out_of_range_are_refused_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_output_file_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    predictions = tmp_path / "p.json"
    predictions.write_text("[]")
    folder = tmp_path / "out.json"
    folder.mkdir()
    assert main(["smooth", "--predictions", str(predictions), "--out", str(folder), "--overwrite"]) == 2
    assert f"{folder} is a folder; give a file name for the output" in capsys.readouterr().err
    assert folder.is_dir() and not any(folder.iterdir())  # nothing written into it, nothing removed


def test_compare_refuses_an_output_that_holds_its_own_config(tmp_path, capsys):
    from conftest import QUICK

    out = tmp_path / "sweep"
    out.mkdir()
    config = out / "my.yaml"
    config.write_text(QUICK.read_text())
    assert main(["compare", "--config", str(config), "--out", str(out), "--overwrite", "--methods", "mse"]) == 2
    assert "holds" in capsys.readouterr().err and config.read_text() == QUICK.read_text()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_run(tmp_path):
    import json

    import numpy as np

    cov = (np.eye(28) * 4).tolist()
    results = [{"image_id": t, "covariance": cov,
                "keypoints": [v for j in range(14) for v in (10.0 + j + t, 20.0 + j, 0.9)]} for t in range(5)]
    predictions = tmp_path / "p.json"
    predictions.write_text(json.dumps(results))
    left = tmp_path / ".smoothed.json.x1y2z3.tmp"  # what a SIGKILL during atomic_write_bytes leaves
    left.write_bytes(b"half of a file")
    mine = tmp_path / ".smoothed.json.notes"  # not the package's: kept
    mine.write_text("mine")
    assert main(["smooth", "--predictions", str(predictions), "--out", str(tmp_path / "smoothed.json")]) == 0
    assert not left.exists() and mine.exists() and json.loads((tmp_path / "smoothed.json").read_text())


def test_a_failed_write_names_the_file_it_was_writing(tmp_path, capsys, monkeypatch):
    import errno
    import json

    import pose_toss.outputs

    def full_disk(fd):  # what a write to a full disk raises: an OSError that names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    predictions = tmp_path / "p.json"
    cov = [[4.0 * (i == j) for j in range(28)] for i in range(28)]
    predictions.write_text(json.dumps([{"image_id": t, "covariance": cov, "keypoints": [1.0 + t, 2.0, 0.9] * 14}
                                       for t in range(4)]))
    monkeypatch.setattr(pose_toss.outputs.os, "fsync", full_disk)
    out = tmp_path / "s.json"
    assert main(["smooth", "--predictions", str(predictions), "--out", str(out)]) == 1
    assert f"{out}: No space left on device (the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # no half-written file, temp file or lock


def test_a_killed_compare_worker_stops_the_sweep_with_a_message_not_a_traceback(monkeypatch, capsys):
    from concurrent.futures.process import BrokenProcessPool

    import pose_toss.commands.compare as compare_command

    def killed(*args, **kwargs):
        raise BrokenProcessPool("a worker process died (killed, or out of memory) ... Run the same command again")

    monkeypatch.setattr(compare_command, "compare", killed)
    assert main(["compare", "--out", "runs/never", "--methods", "mse"]) == 3
    assert "pose-toss compare: stopped: a worker process died" in capsys.readouterr().err


def test_help_texts_state_the_defaults_the_code_uses():
    """Every number a help text gives as its default ("default 200", "default: 16") is the option's real default,
    and what `train --help` says a run does without a config is what the built-in config does."""
    import argparse
    import re

    from pose_toss.cli import build_parser
    from pose_toss.config import load_config

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, command in sub.choices.items():
        for action in command._actions:
            for literal in re.findall(r"default:? (-?\d+(?:\.\d+)?(?:e-?\d+)?)\b", action.help or ""):
                assert action.default is not None and float(literal) == float(action.default), (
                    f"{name} {action.option_strings}: help says default {literal}, the code has {action.default}")
                checked += 1
    assert checked >= 1  # eval --occlusions (default 200)
    help_text = " ".join(sub.choices["train"].format_help().split())
    defaults = load_config()
    assert "(default: NLL with the TIC covariance)" in help_text
    assert [s.loss for s in defaults.stages] == ["nll"] and defaults.model.covariance == "tic"
