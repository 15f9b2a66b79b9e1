from pathlib import Path

import pytest
from conftest import QUICK

from pose_toss.config import Config, ConfigError, config_to_dict, dump_config, load_config


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path):
    assert load_config().data.input_size == 128
    p = write(tmp_path, "data:\n  input_size: 96\n  synthetic:\n    num_samples: 7\n")
    cfg = load_config(p)
    assert cfg.data.input_size == 96 and cfg.data.synthetic.num_samples == 7
    assert cfg.data.synthetic.image_size == 128  # untouched keys keep their defaults


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "data:\n  synthetic:\n    num_sampels: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "data.synthetic.num_sampels" in msg and "num_samples" in msg


def test_wrong_type_names_expected_form(tmp_path):
    p = write(tmp_path, "data:\n  input_size: big\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'data\.input_size': expected an integer, got 'big'"):
        load_config(p)
    p = write(tmp_path, "data:\n  augment:\n    enabled: 1\n")
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(p)


def test_out_of_range_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"'data\.synthetic\.num_samples': expected an integer >= 1, got 0"):
        load_config(write(tmp_path, "data:\n  synthetic:\n    num_samples: 0\n"))
    with pytest.raises(ConfigError, match=r"expected one of \[1, 2, 4, 8\], got 3"):
        load_config(write(tmp_path, "data:\n  heatmap_stride: 3\n"))
    with pytest.raises(ConfigError, match=r"data\.augment\.scale.*lo <= hi"):
        load_config(write(tmp_path, "data:\n  augment:\n    scale: [1.3, 0.9]\n"))
    with pytest.raises(ConfigError, match=r"multiple of heatmap_stride"):
        load_config(write(tmp_path, "data:\n  input_size: 130\n"))
    weights = r"'data\.synthetic\.cue_kind_weights': expected 3 weights >= 0 .*got \[0\.0, 0\.0, 0\.0\]"
    with pytest.raises(ConfigError, match=weights):
        load_config(overrides=["data.synthetic.cue_kind_weights=[0, 0, 0]"])
    with pytest.raises(ConfigError, match=r"cue_kind_weights.*a list of 3 values"):
        load_config(overrides=["data.synthetic.cue_kind_weights=[1, 2]"])


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(missing)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overrides():
    cfg = load_config(overrides=["data.synthetic.seed=5", "data.augment.scale=[0.5, 2]",
                                 "data.synthetic.poses_from=007", "data.augment.enabled=false"])
    assert cfg.data.synthetic.seed == 5
    assert cfg.data.augment.scale == (0.5, 2.0)
    assert cfg.data.synthetic.poses_from == "007"  # strings stay strings
    assert cfg.data.augment.enabled is False
    with pytest.raises(ConfigError, match=r"--set data\.nope=1: unknown key 'data\.nope'"):
        load_config(overrides=["data.nope=1"])
    with pytest.raises(ConfigError, match=r"expected the form section\.key=value"):
        load_config(overrides=["data.input_size"])
    with pytest.raises(ConfigError,
                       match=r"--set data\.input_size=-4: key 'data\.input_size': expected an integer >= 32"):
        load_config(overrides=["data.input_size=-4"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["data.synthetic.num_samples=11", "data.augment.scale=[0.7, 1.1]"])
    p = write(tmp_path, dump_config(cfg), "resolved.yaml")
    again = load_config(p)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert isinstance(again, Config)


def test_oks_sigmas_override():
    from pose_toss.config import load_config

    assert load_config().data.oks_sigmas is None  # the skeleton's own
    cfg = load_config(None, ["data.oks_sigmas=[0.1, 2e-1]"])
    assert cfg.data.oks_sigmas == [0.1, 0.2]


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


@pytest.mark.slow
def test_shipped_configs_load_by_name_and_by_path_from_an_installed_wheel(tmp_path):
    """The configs are package data: from a wheel installed away from any checkout, `--config quick` and
    `--config configs/quick.yaml` both give the shipped quick config, and the CLI trains from it."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(root)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("pose_toss-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("pose_toss/configs/")}
        z.extractall(tmp_path / "site")
    assert {f"pose_toss/configs/{f.name}" for f in (root / "configs").glob("*.yaml")} == shipped
    away = tmp_path / "elsewhere"
    away.mkdir()
    code = ("from pose_toss.config import load_config, PACKAGED_CONFIGS\n"
            "a, b = load_config('quick'), load_config('configs/quick.yaml')\n"
            "assert a == b and 'site' in str(PACKAGED_CONFIGS), PACKAGED_CONFIGS\n"
            "print(a.stages[0].loss, a.model.backbone)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", code], cwd=away, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [load_config(root / "configs" / "quick.yaml").stages[0].loss,
                                   load_config(root / "configs" / "quick.yaml").model.backbone]
    made = subprocess.run([sys.executable, "-m", "pose_toss", "make-synthetic", "--config", "quick", "--out", "figs",
                           "--set", "data.synthetic.num_samples=2", "--set", "data.synthetic.image_size=64"],
                          cwd=away, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
