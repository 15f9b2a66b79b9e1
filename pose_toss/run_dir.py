"""A training run's directory: where its checkpoints, model files and state live, and which file a
``--checkpoint`` argument means.

    RUN/config.yaml                       the resolved config
    RUN/metrics.jsonl                     one line per epoch
    RUN/checkpoints/epoch_NNNN/           the newest two, each renamed into place when whole:
        model.safetensors, state.pt       weights; optimiser, schedule, RNG states, progress
    RUN/best/model.safetensors            best validation NLL (and best/info.json)
    RUN/model.safetensors                 the final model
    .RUN.overwrite.partial/               where ``train --overwrite`` builds a new run beside the old one
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
STATE_CHECKSUM_FILE = "state.pt.sha256"  # the state's SHA-256, checked on resume
CONFIG_FILE = "config.yaml"
BEST = "best"


def checkpoints_newest_first(run: Path) -> list[Path]:
    """The complete epoch checkpoint directories (they are renamed into place when whole), newest first."""
    return sorted((p for p in (Path(run) / CHECKPOINTS).glob("epoch_*") if (p / STATE_FILE).is_file()), reverse=True)


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = checkpoints_newest_first(run)
    return ckpts[0] if ckpts else None


def checkpoint_dir(run: Path, epoch: int) -> Path:
    return Path(run) / CHECKPOINTS / f"epoch_{epoch:04d}"


def overwrite_stage(run: Path) -> Path:
    """Where ``train --overwrite`` builds a new run beside the old one (the same name on every rank)."""
    run = Path(run)
    return run.parent / f".{run.name}.overwrite.partial"


def resolve_checkpoint(path) -> tuple[Path, Path | None]:
    """(model file, run directory or None) from a model file, a run directory or a checkpoint directory.

    A run directory gives its best model (by validation NLL), else its final one, else its newest
    epoch checkpoint."""
    p = Path(path)
    if p.is_file():
        run = next((d for d in (p.parent, p.parent.parent, p.parent.parent.parent) if (d / CONFIG_FILE).is_file()),
                   None)
        return p, run
    if p.is_dir():
        for cand in (p / BEST / MODEL_FILE, p / MODEL_FILE):
            if cand.is_file():
                return cand, p if (p / CONFIG_FILE).is_file() else None
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest / MODEL_FILE, p
        raise FileNotFoundError(f"{p}: no {MODEL_FILE}, {BEST}/{MODEL_FILE} or {CHECKPOINTS}/epoch_* inside")
    raise FileNotFoundError(f"checkpoint not found: {p}")
