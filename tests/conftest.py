"""Shared by the tests: the thread setting, the real-data folder, and the tiny config the training tests run."""

import os
from pathlib import Path

import cv2
import pytest
import torch

from pose_toss.config import Config, load_config

# Keep the suite predictable on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
cv2.setNumThreads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
# configs/quick.yaml shrunk to seconds: a small backbone, two steps an epoch, 32 training figures.
TINY = ["data.input_size=64", "data.batch_size=8", "data.synthetic.num_samples=32", "data.synthetic.val_samples=8",
        "data.synthetic.test_samples=8", "model.backbone=resnet10t", "model.deconv_channels=16", "model.embed_dim=8",
        "model.cov_hidden=16", "train.max_steps_per_epoch=2", "train.warmup_steps=2", "train.progress=false",
        "stages.0.pseudo_labels.k=8"]


def tiny_config(*extra: str) -> Config:
    """The tiny config (quick.yaml's two stages, W2 then NLL) with ``extra`` overrides."""
    return load_config(QUICK, [*TINY, *extra])


def train_args(out, *extra: str, config=QUICK) -> list[str]:
    """``pose-toss train`` arguments for the tiny config with one epoch per stage (and ``extra`` overrides)."""
    args = ["train", "--config", str(config), "--out", str(out)]
    for o in [*TINY, "stages.0.epochs=1", "stages.1.epochs=1", *extra]:
        args += ["--set", o]
    return args


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def quiet(*_a, **_k):
    pass


@pytest.fixture
def shared_data() -> Path:
    """The real annotation files beside the checkout; tests using them skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} not present")
    return SHARED


def table_cells(line: str) -> int:
    """The cells of one GFM table row: its unescaped pipes, less the leading and trailing ones."""
    text = line.strip()
    bars = [i for i, ch in enumerate(text) if ch == "|" and (i == 0 or text[i - 1] != "\\")]
    n = len(bars) + 1
    if text.startswith("|"):
        n -= 1
    if text.endswith("|") and not text.endswith("\\|"):
        n -= 1
    return n


def gfm_table_problems(markdown: str) -> list[str]:
    """Every table markdown-it (GFM tables) finds, each row's cell count against its header's; and the lines
    that look like table rows but are in no table it recognises."""
    from markdown_it import MarkdownIt

    lines = markdown.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    problems, in_tables = [], set()
    for token in tokens:
        if token.type != "table_open":
            continue
        start, end = token.map
        in_tables.update(range(start, end))
        header = table_cells(lines[start])
        for n in range(start, end):
            if table_cells(lines[n]) != header:
                problems.append(f"line {n + 1}: {table_cells(lines[n])} cells under a {header}-cell header: "
                                f"{lines[n][:80]}")
    fenced = False
    for n, line in enumerate(lines):
        fenced ^= line.lstrip().startswith("```")
        if not fenced and line.lstrip().startswith("|") and n not in in_tables:
            problems.append(f"line {n + 1}: a table row outside any table: {line[:80]}")
    return problems


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device is (``pytest -m cuda`` selects them) and skip elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
