"""`pose-toss compare`: sweeps over methods, learning rates and seeds."""

import json
import shutil

import cv2
import pytest
from conftest import gfm_table_problems, tiny_config

from pose_toss.commands.compare import parse_lrs


@pytest.mark.slow
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
    assert not gfm_table_problems(table), gfm_table_problems(table)  # every table renders on GitHub
    png = cv2.imread(str(tmp_path / "cmp" / "comparison_curves.png"))
    assert png is not None and png.shape[1] > 800  # two learning-rate columns of about 460 px
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len(saved["cells"]) == 8 and len(saved["curves"]["mse|0.002|1"]["val_nll"]) == 2
    # Identical config: finished cells are read back; a changed config trains again.
    said.clear()
    compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3], overwrite=True, log=said.append)
    assert any("already done" in s for s in said)
    # The flip test: trained cells are evaluated again with it, not trained, beside their plain results.
    said.clear()
    plain_table = (tmp_path / "cmp" / "comparison.md").read_text()
    flipped = compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3], seeds=2, log=said.append, flip_test=True)
    assert not any("== " in s for s in said) and sum("evaluating it with the flip test" in s for s in said) == 2
    for seed in (0, 1):
        cell_dir = tmp_path / "cmp" / "lr_0.002" / f"seed_{seed}" / "mse"
        plain = json.loads((cell_dir / "eval" / "metrics.json").read_text())
        flip = json.loads((cell_dir / "eval_flip_test" / "metrics.json").read_text())
        assert plain["flip_test"] is False and flip["flip_test"] is True
        assert flip["mean_joint_error_no_flip"] == pytest.approx(plain["mean_joint_error"], abs=1e-9)
        assert flip["mean_joint_error"] != plain["mean_joint_error"]
        row = next(r for r in flipped["rows"] if r["seed"] == seed)
        assert row["mean_joint_error"] == flip["mean_joint_error"]
        assert row["train_seconds"] == cells[("mse", 2e-3, seed)]["train_seconds"]  # its training's, kept
    assert (tmp_path / "cmp" / "comparison.md").read_text() == plain_table
    assert "# Method comparison, flip test" in (tmp_path / "cmp" / "comparison_flip_test.md").read_text()
    assert json.loads((tmp_path / "cmp" / "comparison_flip_test.json").read_text())["flip_test"] is True
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
    # A finished sweep is read back without --overwrite; a truncated metrics.json is named and evaluated again.
    metrics_file = cell / "eval" / "metrics.json"
    metrics_file.write_text(metrics_file.read_text()[:300])
    said.clear()
    compare(base, ["mse"], tmp_path / "cmp", lrs=[2e-3], log=said.append)
    assert any(f"warning: {cell}: its finished results cannot be read (metrics.json" in s for s in said)
    assert json.loads(metrics_file.read_text())["mean_joint_error"] > 0
    with pytest.raises(ValueError, match="--lrs"):
        parse_lrs("1e-3,-1")
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        compare(base, ["mse"], tmp_path / "other", seeds=0)



@pytest.mark.slow
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
