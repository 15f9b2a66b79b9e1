"""The manual: its snippets run as written, its tables are valid GFM, its configuration reference is current,
and every command and flag has its place in docs/commands.md."""

import re
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import gfm_table_problems

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_snippets(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


SNIPPETS = [(p, line, code) for p in PAGES for line, code in python_snippets(p)]


def provide_what_the_snippet_reads(code: str, where: Path) -> None:
    """What a snippet reads that a reader has after `make demo` (an untrained model of the demo's config
    stands for the trained one: the snippet's code path is the same) and a photo of their own."""
    if "runs/demo/run" in code:
        from pose_toss import load_config, save_model
        from pose_toss.engine.trainer import build_model_from_config
        from pose_toss.skeletons import LSP14

        (where / "runs/demo/run").mkdir(parents=True)
        save_model(build_model_from_config(load_config(ROOT / "configs" / "demo.yaml"), 14, LSP14),
                   where / "runs/demo/run/model.safetensors")
    if "photo.jpg" in code:
        photo = np.random.default_rng(0).integers(0, 256, (180, 140, 3), dtype=np.uint8)
        cv2.imwrite(str(where / "photo.jpg"), photo)


@pytest.mark.parametrize("path, line, code", SNIPPETS, ids=[f"{p.name}:{n}" for p, n, _ in SNIPPETS])
def test_every_python_snippet_runs_as_written(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a snippet writes lands here
    monkeypatch.syspath_prepend(str(ROOT))
    provide_what_the_snippet_reads(code, tmp_path)
    script = tmp_path / "snippet.py"
    script.write_text(code.replace("configs/", f"{ROOT}/configs/"))
    runpy.run_path(str(script), run_name="__main__")


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_every_table_is_valid_gfm(path):
    assert not gfm_table_problems(path.read_text()), gfm_table_problems(path.read_text())


def test_the_table_check_catches_an_unescaped_pipe():
    bad = "| metric | axis |cos| |\n| --- | --- |\n| a | 1 |\n"
    assert gfm_table_problems(bad) and not gfm_table_problems(bad.replace("|cos|", "\\|cos\\|"))


def test_the_configuration_reference_is_current():
    from pose_toss.config import configuration_reference

    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_reference(), (
        "docs/configuration.md is behind the schema: regenerate it as its first lines say")


def test_every_command_and_flag_is_in_the_commands_page():
    from pose_toss.cli import build_parser
    from pose_toss.commands import COMMANDS

    page = (ROOT / "docs" / "commands.md").read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name in COMMANDS:
        match = re.search(rf"^## `pose-toss {name}`\n(.*?)(?=^## |\Z)", page, re.S | re.M)
        assert match, f"docs/commands.md has no section for {name}"
        section = match.group(1)
        shared = {"--config", "--set", "--out", "--overwrite", "--checkpoint", "--device", "--help"}
        flags = {s for a in subparsers[name]._actions for s in a.option_strings if s.startswith("--")} - shared
        missing = sorted(f for f in flags if f not in section)
        assert not missing, f"docs/commands.md, {name}: flags {missing} not described"


def test_every_test_the_reliability_page_names_exists():
    names = set(re.findall(r"`(test_[a-z0-9_]+)`", (ROOT / "docs" / "reliability.md").read_text()))
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert names and not [n for n in sorted(names) if f"def {n}(" not in source]
