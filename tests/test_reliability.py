"""Nothing lost, nothing silent: each fault is injected, and the exit code and the message are checked."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import QUICK, TINY, train_args

from pose_toss import build_pose_model, save_model
from pose_toss.cli import main
from pose_toss.config import ConfigError, load_config
from pose_toss.engine.trainer import Trainer
from pose_toss.models.checkpoint import ModelFileError, load_model
from pose_toss.outputs import lock_path, run_lock


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run: two epochs (W2, then NLL), two checkpoints, best and final models."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(train_args(out)) == 0
    return out


# -- data loss -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overwrite_validates_first_and_keeps_the_old_run_until_the_new_one_is_complete(run_dir, tmp_path,
                                                                                        capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = tree(run)
    # A value only the data can refute (k against the 32 training samples) fails before anything is touched.
    assert main(train_args(run, "stages.0.pseudo_labels.k=500") + ["--overwrite"]) == 2
    assert "key 'stages.0.pseudo_labels.k': expected fewer neighbours than the 32 training samples, got 500" \
        in capsys.readouterr().err
    assert tree(run) == before

    # A run that fails half-way leaves the old run whole; the next --overwrite cleans its staging up.
    calls = {"n": 0}
    real = Trainer._train_epoch

    def dies_in_epoch_two(self, epoch, stage_idx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, epoch, stage_idx)

    monkeypatch.setattr(Trainer, "_train_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        main(train_args(run, "train.seed=5") + ["--overwrite"])
    assert tree(run) == before
    assert (tmp_path / ".run.overwrite.partial" / "checkpoints" / "epoch_0001").is_dir()
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    assert main(train_args(run, "train.seed=5") + ["--overwrite"]) == 0
    assert tree(run) != before and load_config(run / "config.yaml").train.seed == 5
    assert not (tmp_path / ".run.overwrite.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging, no lock left behind


@pytest.mark.slow
def test_outputs_that_would_delete_inputs_or_the_working_directory_are_refused(run_dir, tmp_path, capsys,
                                                                               monkeypatch):
    project = tmp_path / "project"
    (project / "data" / "lsp").mkdir(parents=True)
    (project / "data" / "lsp" / "joints.mat").write_bytes(b"the user's labels")
    shutil.copy(QUICK, project / "my.yaml")
    photos = project / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), np.full((64, 48, 3), 120, np.uint8))
    shutil.copytree(run_dir, project / "run")
    monkeypatch.chdir(project)
    before = tree(project)
    cases = [
        (train_args(".", config="my.yaml") + ["--overwrite"], "output directory . is the working directory"),
        (train_args("..", config="my.yaml") + ["--overwrite"], "output directory .. is a parent of the working"),
        (train_args("data", config="my.yaml") + ["--overwrite"], "output directory data holds data/lsp, an input"),
        (["make-synthetic", "--config", "my.yaml", "--out", ".", "--overwrite"], "is the working directory"),
        (["eval", "--checkpoint", "run", "--out", "run", "--overwrite"], "output directory run holds run, an input"),
        (["eval", "--checkpoint", "run/best/model.safetensors", "--out", "run/best", "--overwrite"],
         "holds run/best/model.safetensors"),
        (["visualize", "--checkpoint", "run", "--images", "photos", "--out", "photos", "--overwrite"],
         "output directory photos holds photos, an input"),
        (["compare", "--config", "my.yaml", "--methods", "mse", "--out", ".", "--overwrite"],
         "is the working directory"),
        (["bench", "--out", "run", "--checkpoint", "run/model.safetensors", "--overwrite"], "holds run/model"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, args
    assert tree(project) == before


def _hold_locks(paths: list[Path]) -> subprocess.Popen:
    code = ("import sys, time, contextlib\nfrom pose_toss.outputs import run_lock\nwith contextlib.ExitStack() as s:\n"
            "    for p in sys.argv[1:]:\n        s.enter_context(run_lock(p))\n    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, paths)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_run_directories_are_locked_and_stale_locks_taken_over(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    outs = {name: tmp_path / name for name in ("train", "eval", "compare", "synthetic")}
    holder = _hold_locks([run, *outs.values()])
    try:
        commands = [train_args(outs["train"]), ["train", "--resume", str(run)],
                    ["eval", "--checkpoint", str(run), "--out", str(outs["eval"])],
                    ["compare", "--config", str(QUICK), "--methods", "mse", "--out", str(outs["compare"])],
                    ["make-synthetic", "--num", "2", "--size", "64", "--out", str(outs["synthetic"])]]
        for args in commands:
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert f"is in use by another pose-toss process (pid {holder.pid} on " in err, (args, err)
    finally:
        holder.kill()
        holder.wait()
    # The killed holder could not remove its lock file; the kernel released the lock, so it is stale.
    assert lock_path(outs["synthetic"]).is_file()
    said = []
    with run_lock(outs["synthetic"], said.append):
        pass
    assert said == [f"took over a stale lock on {outs['synthetic']} (pid {holder.pid} on {_host()}, no longer "
                    "running)"]
    assert not lock_path(outs["synthetic"]).exists()
    assert main(["make-synthetic", "--num", "2", "--size", "64", "--out", str(outs["synthetic"]), "--quiet"]) == 0


def _host() -> str:
    import socket

    return socket.gethostname()


# -- silent wrong results --------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_stops_the_run_naming_stage_and_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(train_args(out, "train.lr=1000000.0", "train.warmup_steps=0", "train.max_steps_per_epoch=4"))
    err = capsys.readouterr().err
    assert code == 3, err
    assert "training stopped: stage 1 (w2_bound), epoch 1: the training diverged" in err
    assert not (out / "best").exists() and not (out / "model.safetensors").exists()
    assert not (out / "checkpoints").exists()  # the diverged state never became a checkpoint


@pytest.mark.slow
def test_a_model_with_non_finite_weights_is_refused_by_eval(tmp_path, capsys):
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    with torch.no_grad():
        model.backbone.body.bn1.running_var[3] = float("nan")
    save_model(model, tmp_path / "m.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "e")]) == 2
    assert ("1 weight tensors hold NaN or Inf (e.g. backbone.body.bn1.running_var): the training that wrote it "
            "diverged") in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("0", "key 'stages.0.pseudo_labels.temperature': expected a number > 0 or 'median', got 0.0"),
    ("-1", "key 'stages.0.pseudo_labels.temperature': expected a number >= 0.0, got -1.0"),
    ("0e0", "expected a number > 0 or 'median', got 0.0"),
])
def test_temperature_must_be_positive(value, message, tmp_path, capsys):
    assert main(train_args(tmp_path / "r", f"stages.0.pseudo_labels.temperature={value}")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_bit_flip_in_the_weights_is_caught_by_the_checksum(tmp_path, capsys):
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    path = save_model(model, tmp_path / "m.safetensors")
    assert load_model(path).config == model.config
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10  # inside the last tensor's bytes: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="do not match the checksum stored with them"):
        load_model(path)
    assert main(["eval", "--checkpoint", str(path), "--out", str(tmp_path / "e")]) == 2
    assert "m.safetensors: the weights do not match the checksum" in capsys.readouterr().err
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(path)


def test_metadata_that_disagrees_with_the_weights_is_named(tmp_path):
    from safetensors.torch import save_file

    small = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    big = build_pose_model("resnet10t", num_joints=14, embed_dim=16, input_size=64, deconv_channels=16,
                           cov_hidden=16)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path),
              metadata={"pose_toss_model": json.dumps(small.file_metadata())})
    with pytest.raises(ValueError, match=r"m\.safetensors: the weights do not match the model its metadata describes"):
        load_model(path)


@pytest.mark.slow
def test_eval_names_unreadable_and_damaged_images(run_dir, tmp_path, capsys):
    data = tmp_path / "synthetic"
    assert main(["make-synthetic", "--num", "6", "--size", "64", "--out", str(data), "--quiet"]) == 0
    images = sorted((data / "images").glob("*.png"))
    images[1].unlink()
    images[3].write_bytes(images[3].read_bytes()[:-12])  # a PNG cut off in its last chunk: not decoded
    # A JPEG cut off in transfer (under its old name: OpenCV reads by content), which OpenCV half-decodes.
    jpeg = cv2.imencode(".jpg", cv2.imread(str(images[2])))[1].tobytes()
    images[2].write_bytes(jpeg[: len(jpeg) * 2 // 3])
    assert cv2.imread(str(images[2])) is not None
    from pose_toss.data.dataset import image_file_problem

    assert image_file_problem(images[3]) == "PNG is truncated (no IEND chunk)"
    assert image_file_problem(images[0]) is None
    # A whole JPEG with 500 random bytes in its middle: OpenCV decodes it, libjpeg only warns; that is named.
    whole = cv2.imencode(".jpg", cv2.imread(str(images[0])))[1].tobytes()
    noise = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(whole[: len(whole) // 2] + noise + whole[len(whole) // 2:])
    assert cv2.imread(str(corrupt)) is not None
    assert image_file_problem(corrupt).startswith("JPEG data is corrupt (libjpeg: Corrupt JPEG data")
    clean = tmp_path / "clean.jpg"
    clean.write_bytes(whole)
    assert image_file_problem(clean) is None
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir), "--data", str(data), "--out", str(tmp_path / "e"), "--quiet",
                 "--pictures", "0"]) == 0
    out = capsys.readouterr().out
    assert "warning: 2 of 6 samples left out" in out and "warning: 1 damaged images were predicted on" in out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and metrics["samples_given"] == 6
    assert metrics["unreadable_images"] == [f"image file not found: {images[1]}",
                                            f"cannot decode image file: {images[3]}"]
    assert metrics["damaged_images"] == [f"{images[2]}: JPEG is truncated (no end-of-image marker)"]
    report = (tmp_path / "e" / "report.md").read_text()
    assert "**2 of 6 samples left out**" in report and "over the other 4" in report
    assert "**1 damaged images were predicted on**" in report


@pytest.mark.slow
def test_visualize_says_what_it_does_with_odd_detections(tmp_path, capsys):
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    ckpt = save_model(model, tmp_path / "m.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "000000000001.jpg"), rng.integers(0, 255, (80, 60, 3), dtype=np.uint8))
    dets = [{"image_id": 1, "bbox": [10, 10, 30, 50], "score": 0.9},
            {"image_id": 1, "bbox": [500, 500, 20, 20], "score": 0.9},  # wholly outside the 60 x 80 image
            {"image_id": 1, "bbox": [0, 0, 1e6, 1e6], "score": 0.9},  # a runaway box
            {"image_id": 7, "bbox": [0, 0, 10, 10], "score": 0.9}]  # an image that was not given
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps(dets))
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(images), "--boxes", str(boxes),
                 "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 detections are for images that were not given (7); they are ignored" in out
    assert "detection 1 [500, 500, 20, 20] lies wholly outside the 60 x 80 image; skipped" in out
    assert "detection 2 [0, 0, 1e+06, 1e+06] reaches far beyond the 60 x 80 image; clipped" in out
    assert len(json.loads((tmp_path / "v" / "predictions.json").read_text())) == 2
    boxes.write_text(json.dumps([{"image_id": 1, "bbox": [10, 10, 30, 50], "score": "big"}]))
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(images), "--boxes", str(boxes),
                 "--out", str(tmp_path / "w")]) == 2
    assert "dets.json: detection 0: 'score' must be a finite number, got 'big'" in capsys.readouterr().err
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(images), "--levels", "big",
                 "--out", str(tmp_path / "w")]) == 2
    assert "--levels: expected comma-separated probabilities between 0 and 1" in capsys.readouterr().err
    # A JPEG cut off in transfer is drawn, with a warning.
    whole = (images / "000000000001.jpg").read_bytes()
    (images / "000000000001.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    assert main(["visualize", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(tmp_path / "x")]) == 0
    assert "JPEG is truncated (no end-of-image marker)" in capsys.readouterr().out


# -- tracebacks -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_falls_back_past_damaged_checkpoints(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ckpts = run / "checkpoints"
    orphan = ckpts / ".epoch_0003.x1y2.partial"  # what a kill during a checkpoint write leaves
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    newest = ckpts / "epoch_0002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:5000])
    cfg = load_config(run / "config.yaml")
    said: list[str] = []
    t = Trainer(cfg, run, resume=True, log=said.append)
    assert t.state.epoch == 1
    assert not orphan.exists()
    assert any("removed 1 unfinished staging folder" in s for s in said)
    assert any(s.startswith(f"warning: checkpoint {ckpts / 'epoch_0002'} is damaged") for s in said)
    assert any("resumed from epoch_0001, the newest checkpoint that loads" in s for s in said)
    (ckpts / "epoch_0001" / "state.pt").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ValueError, match=r"no checkpoint under checkpoints/ loads: epoch_0002 .*epoch_0001 "
                                         r".*state\.pt"):
        Trainer(cfg, run, resume=True, log=said.append)


def test_a_bit_flip_in_the_training_state_is_caught_by_its_checksum(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state = run / "checkpoints" / "epoch_0002" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle: torch would still load it, with a wrong value
    state.write_bytes(bytes(data))
    said: list[str] = []
    t = Trainer(load_config(run / "config.yaml"), run, resume=True, log=said.append)
    assert t.state.epoch == 1
    assert any("epoch_0002" in s and "SHA-256 differs" in s for s in said)


def test_os_errors_name_the_path_and_the_cause(tmp_path, capsys, monkeypatch):
    import pose_toss.outputs

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pose_toss.outputs, "atomic_write_bytes", full_disk)
    out = tmp_path / "syn"
    assert main(["make-synthetic", "--num", "2", "--size", "64", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "000000.png: No space left on device (the disk is full: free space or write elsewhere)" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written output, no staging, no lock


def test_all_nan_embeddings_file_and_unreadable_training_images_are_named(tmp_path):
    from pose_toss.embedding_bank import EmbeddingBank

    bank = EmbeddingBank(torch.zeros(10, 4), k=3)
    np.save(tmp_path / "emb.npy", np.full((10, 5), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"emb\.npy: 10 of 10 embeddings hold NaN or Inf \(first: row 0\)"):
        bank.refresh_from_file(tmp_path / "emb.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"bad\.npy: cannot read as a \.npy / \.npz array"):
        bank.refresh_from_file(tmp_path / "bad.npy")
    loader = [{"missing_images": ["cannot decode image file: a.jpg"], "index": []}] * 3
    with pytest.raises(ValueError, match="none of the 10 training images could be read"):
        bank._embed_all(lambda x: x, loader, "cpu")


def test_coco_image_without_width_and_an_empty_box_are_named(tmp_path):
    from pose_toss.data.dataset import record_crop_source
    from pose_toss.data.readers import AnnotationError, read_coco

    pytest.importorskip("pycocotools")
    ann = {"images": [{"id": 5, "file_name": "a.jpg", "height": 40}],
           "annotations": [{"id": 9, "image_id": 5, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 10, 20],
                            "keypoints": [3, 4, 2] * 17, "num_keypoints": 17, "area": 200}],
           "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "person_keypoints_val.json"
    path.write_text(json.dumps(ann))
    with pytest.raises(AnnotationError, match=r"person_keypoints_val\.json: image 5 has no 'width'"):
        read_coco(path, tmp_path)
    with pytest.raises(ValueError, match=r"a\.jpg: the person's bbox \[0, 0, 0, 0\] gives no crop"):
        record_crop_source({"image_path": "a.jpg", "bbox": [0, 0, 0, 0]}, 1.25)


def test_float64_covariance_heads_compute_in_float64():
    from pose_toss.models.covariance_heads import DiagonalCovariance, FullCovariance, TICCovarianceHead

    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))
    head = TICCovarianceHead(4, 3, cov_hidden=8)
    with torch.no_grad():
        for p in head.mlp.parameters():
            p.normal_(0, 0.3)
    z = torch.randn(5, 4)
    single = head(z, decoder)
    head64, decoder64 = head.double(), decoder.double()  # the module converted in place, as users do
    head64.jacobian_log_scale.fill_(float("nan"))  # both first calls measure their own J scale
    double = head64(z.double(), decoder64)
    assert double.dtype == torch.float64
    # The same covariance as float32, to float32's precision; and J in float64 equals autograd's.
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
    jac = torch.autograd.functional.jacobian(lambda v: decoder64(v[None])[0], z.double()[0])
    parts = head64.parts(z.double(), decoder64)
    torch.testing.assert_close(parts.jacobian[0], jac)
    for cls in (FullCovariance, DiagonalCovariance):
        assert cls(4, 3).double()(z.double()).dtype == torch.float64


# -- usability --------------------------------------------------------------------------------------------


def test_yaml_numbers_people_write_and_duplicate_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 2e-3\n  weight_decay: 1E-5\nstages:\n  - {loss: nll, epochs: 3}\n")
    cfg = load_config(f, ["train.lr=1e-3", "stages.0.pseudo_labels.temperature=5e-1"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.stages[0].pseudo_labels.temperature) == (1e-3, 1e-5, 0.5)
    f.write_text("train:\n  lr: 2e-3\n  lr: 1e-2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML \(key 'lr' is given twice \(lines 2 and 3\)"):
        load_config(f)
    f.write_text("stages:\n  - loss: nll\n    epochs: two\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'stages\.0\.epochs': expected an integer, got 'two'"):
        load_config(f)
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with pytest.raises(ConfigError, match=r"c\.yaml: not a text \(UTF-8\) YAML file: byte 0 is 0x89"):
        load_config(f)
    for bad in ("train.lr=.inf", "train.lr=.nan"):
        with pytest.raises(ConfigError, match=r"key 'train\.lr': expected a finite number"):
            load_config(None, [bad])


def test_metrics_ignore_invisible_targets_and_refuse_non_finite_predictions():
    from pose_toss.covariance import CovarianceInputError
    from pose_toss.metrics import kl_gaussian, pose_metrics, w2_gaussian
    from pose_toss.skeletons import LSP14

    g = torch.Generator().manual_seed(1)
    b, d = 12, 28
    a = torch.randn(b, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) / d + torch.eye(d, dtype=torch.float64)
    mean = torch.randn(b, d, generator=g, dtype=torch.float64) * 20 + 64
    target = mean + torch.randn(b, d, generator=g, dtype=torch.float64) * 2
    vis = (torch.rand(b, 14, generator=g) > 0.25).float()
    coords = vis.repeat_interleave(2, dim=1).bool()
    clean = pose_metrics(mean, cov, torch.where(coords, target, 0.0), vis, LSP14)
    dirty = pose_metrics(mean, cov, torch.where(coords, target, float("nan")), vis, LSP14)
    for key, value in clean.items():
        if isinstance(value, float):
            assert value == pytest.approx(dirty[key], nan_ok=True), key
    bad = mean.clone()
    bad[4, 6] = float("inf")
    with pytest.raises(CovarianceInputError, match=r"pose_metrics: NaN or Inf in mean \(samples \[4\]\)"):
        pose_metrics(bad, cov, target, vis, LSP14)
    with pytest.raises(CovarianceInputError, match=r"w2_gaussian: NaN or Inf in mean1 \(samples \[4\]\)"):
        w2_gaussian(bad, cov, mean, cov)
    with pytest.raises(CovarianceInputError, match=r"kl_gaussian: cov2 is not positive definite in samples \[0, 1"):
        kl_gaussian(mean, cov, mean, -cov)


@pytest.mark.slow
def test_a_diverged_cell_is_a_result_of_the_sweep_not_its_end(tmp_path):
    from pose_toss.commands.compare import compare

    base = load_config(QUICK, [*TINY, "train.warmup_steps=0", "train.max_steps_per_epoch=4"])
    said: list[str] = []
    result = compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3, 1e6], log=said.append)
    by_lr = {r["lr"]: r for r in result["rows"]}
    assert "diverged" not in by_lr[2e-3] and "training diverged" in by_lr[1e6]["diverged"]
    assert "## lr 1e+06" in result["markdown"]
    assert "Diverged, so left out of the means above: mse (seed 0)." in result["markdown"]
    said.clear()
    again = compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3, 1e6], overwrite=True, log=said.append)  # read back
    assert again["rows"][1]["diverged"] == by_lr[1e6]["diverged"]
    assert not any(s.startswith("== ") for s in said)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_folder_is_named(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["make-synthetic", "--num", "2", "--size", "64", "--out", str(folder / "syn"), "--quiet"]) == 1
        assert "Permission denied (no permission: pick a folder you can write to)" in capsys.readouterr().err
    finally:
        folder.chmod(0o755)


def test_covariance_api_refuses_what_it_cannot_compute_by_name():
    """w2_bound refuses a covariance that is not one, as gaussian_nll does; tic_covariance and full_covariance say
    when their inputs overflow float32 instead of returning Inf, and float64 inputs of the same size compute."""
    from pose_toss.covariance import CovarianceInputError, full_covariance, tic_covariance
    from pose_toss.losses import gaussian_nll, w2_bound

    negative = -torch.eye(4).expand(2, 4, 4).clone()
    eye = torch.eye(4).expand(2, 4, 4)
    for fn in (lambda: w2_bound(torch.zeros(2, 4), negative, torch.zeros(2, 4), eye),
               lambda: gaussian_nll(torch.zeros(2, 4), negative, torch.zeros(2, 4))):
        with pytest.raises(CovarianceInputError, match=r"not positive semi-definite in samples \[0, 1\]"):
            fn()
    with pytest.raises(CovarianceInputError, match=r"full_covariance: the covariance overflows torch.float32 in "
                                                   r"samples \[1\]"):
        full_covariance(torch.tensor([[0.1] * 10, [1e30] * 10]), 4)
    with pytest.raises(CovarianceInputError, match=r"tic_covariance: the covariance overflows"):
        tic_covariance(torch.full((2, 4, 3), 1e30), torch.ones(2), eye)
    with pytest.raises(CovarianceInputError, match=r"tic_covariance: NaN or Inf in jac \(samples \[0\]\)"):
        tic_covariance(torch.cat([torch.full((1, 4, 3), torch.nan), torch.ones(1, 4, 3)]), torch.ones(2), eye)
    big = full_covariance(torch.full((2, 10), 1e30, dtype=torch.float64), 4)
    assert torch.isfinite(big).all() and big.dtype == torch.float64


def test_a_nan_image_gives_a_nan_mean_and_a_nan_covariance_and_the_others_are_untouched():
    from pose_toss.models import build_pose_model

    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16)
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))  # in training mode: sets TIC's running J scale, as a trained model has it
    model.eval()
    images = torch.rand(3, 3, 64, 64)
    clean = model(images)
    images[1, :, 5, 5] = float("nan")
    out = model(images)
    assert torch.isnan(out.mean[1]).all() and torch.isnan(out.cov[1]).all()
    torch.testing.assert_close(out.mean[[0, 2]], clean.mean[[0, 2]])
    torch.testing.assert_close(out.cov[[0, 2]], clean.cov[[0, 2]])
