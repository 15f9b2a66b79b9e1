"""The flags several commands share, each declared once."""

from __future__ import annotations

import argparse


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file, or a shipped config by name (quick, demo, default, toss, "
                                    "coco_resnet, mpii_lsp_resnet, ...); the built-in defaults when omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value; repeatable")


def add_output(p: argparse.ArgumentParser, help: str = "output directory", required: bool = True,
               flag: str = "--out", **kwargs) -> None:
    """``--out`` (or ``flag``) and ``--overwrite``: outputs are refused when they exist unless asked."""
    p.add_argument(flag, required=required, help=f"{help} (refused when it exists, unless --overwrite)", **kwargs)
    p.add_argument("--overwrite", action="store_true", help="replace what is there, only once the new output is "
                                                            "complete")


def add_checkpoint(p: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    p.add_argument("--checkpoint", required=required,
                   help=help or "a model .safetensors, a run directory (its best model) or a checkpoint directory")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_levels(text: str) -> tuple[float, ...]:
    """``--levels``: comma-separated probabilities of the ellipses, each strictly between 0 and 1."""
    try:
        levels = tuple(float(v) for v in text.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise ValueError(f"--levels: expected comma-separated probabilities between 0 and 1 (e.g. 0.5,0.9), "
                         f"got {text!r}")
    return levels


def whole_number(minimum: int = 0, maximum: int | None = None):
    """An argparse type: an integer in [minimum, maximum], refused with the range it must lie in."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {text!r}")
        return value

    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value
