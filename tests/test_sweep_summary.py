"""tools/sweep_summary.py: the README's sweep table from a `compare` output, plain or with the flip test."""

import importlib.util
import json
import statistics
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "sweep_summary.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("sweep_summary", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_reads_each_cells_plain_or_flip_test_evaluation(tmp_path, capsys):
    tool = load_tool()
    numbers = {"plain": [(4.1, 72.0, 0.80), (4.5, 73.0, 0.84)], "flip": [(4.0, 71.5, 0.86), (4.2, 72.5, 0.88)]}
    for seed in (0, 1):
        cell = tmp_path / "lr_0.01" / f"seed_{seed}" / "nll_tic"
        for kind, folder in (("plain", "eval"), ("flip", "eval_flip_test")):
            error, nll, occluded = numbers[kind][seed]
            (cell / folder).mkdir(parents=True)
            (cell / folder / "metrics.json").write_text(json.dumps({
                "mean_joint_error": error, "nll": nll, "occlusion_coverage@0.9_occluded": occluded,
                "occlusion_coverage@0.9_plain": 0.93}))
        (cell / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "pseudo_label_trace_spearman": 0.1 * seed}) + "\n")
    for kind, extra in (("plain", []), ("flip", ["--flip-test"])):
        assert tool.main([str(tmp_path), *extra]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| nll_tic"))
        cols = [c.strip() for c in row.strip("|").split("|")]
        errors, nlls, occluded = zip(*numbers[kind], strict=True)
        assert cols[1] == "2"
        assert cols[2] == f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f}"
        assert cols[3] == f"{statistics.mean(nlls):.1f} ± {statistics.stdev(nlls):.1f}"
        assert cols[9] == f"{statistics.mean(occluded):.2f} ± {statistics.stdev(occluded):.2f} (0.93 ± 0.00)"
        assert cols[10] == "0.05 ± 0.07"  # the last refresh's Spearman of each cell: 0.0 and 0.1
        assert cols[4] == "–"  # a number the cells do not hold
