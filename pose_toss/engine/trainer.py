"""The training loop: stages from the config, checkpoints, resume, DistributedDataParallel, divergence.

What a step computes comes from ``objectives.StageObjective`` (the stage's loss, its pseudo-labels, the
heatmap term); this module runs the steps. The run directory's layout is ``pose_toss.run_dir``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from tqdm import tqdm

from pose_toss.config import Config, ConfigError, ModelConfig, config_to_dict, save_config
from pose_toss.data.dataset import PoseDataset, crop_labels
from pose_toss.data.loading import make_loader, run_data
from pose_toss.data.synthetic import record_cue_strengths
from pose_toss.engine.experiment_log import TENSORBOARD_DIR, TensorBoardLog, summary_writer_class
from pose_toss.engine.objectives import (
    LOSSES,
    BankData,
    BankState,
    PseudoLabels,
    StageObjective,
    stage_trains_local_term,
    stage_uses_pseudo_labels,
)
from pose_toss.engine.prediction import (
    attach_cues,
    metrics_from_predictions,
    non_finite_predictions,
    predict_dataset,
    residual_reference,
    scalar_metrics,
)
from pose_toss.engine.report import prediction_pictures
from pose_toss.engine.runtime import Runtime, restore_rng_states, rng_states, seed_everything, setup_runtime
from pose_toss.engine.schedule import LRSchedule
from pose_toss.models.checkpoint import ModelFileError, load_state_checked, non_finite_tensors, save_model
from pose_toss.models.pose_model import PoseModel
from pose_toss.outputs import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    is_nonempty_dir,
    jsonable,
    remove_orphaned_stages,
    replace_dir,
    run_lock,
    staged_output_dir,
)
from pose_toss.run_dir import (
    BEST,
    CHECKPOINTS,
    CONFIG_FILE,
    MODEL_FILE,
    STATE_CHECKSUM_FILE,
    STATE_FILE,
    checkpoint_dir,
    checkpoints_newest_first,
    latest_checkpoint,
    overwrite_stage,
)
from pose_toss.skeletons import Skeleton

# Training figures (unaugmented) the cue metrics' constant reference is fitted on at each validation.
VALIDATION_REFERENCE_SAMPLES = 256


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row, a non-finite validation or model state, or no best model."""


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (as plain values, ``to_dict``)."""

    epoch: int = 0  # epochs completed
    best_val_nll: float = math.inf
    best_epoch: int = -1
    bank: BankState = field(default_factory=BankState)  # what the current pseudo-labels were built from
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "best_val_nll": self.best_val_nll, "best_epoch": self.best_epoch,
                "bank": asdict(self.bank), "history": self.history}

    @classmethod
    def from_dict(cls, saved: dict) -> Progress:
        saved = dict(saved)
        if "bank" in saved:
            bank = BankState(**saved.pop("bank"))
        else:  # states written before the bank's state had a name of its own
            bank = BankState(saved.pop("bank_stage", -1), saved.pop("bank_embeddings", None),
                             saved.pop("bank_predictions", None), saved.pop("bank_joint_descriptors", None))
        return cls(bank=bank, **saved)


def build_model_from_config(cfg: Config, num_joints: int, skeleton: Skeleton | None = None) -> PoseModel:
    """The config's model for a skeleton of ``num_joints`` (convolution weights channels-last when the config
    trains that way); ``skeleton``, when given, is stored in it (its model files keep it, and
    ``model.occlusion_neighbours`` reads its limbs)."""
    model = PoseModel(cfg.model, num_joints, cfg.data.input_size, cfg.data.heatmap_stride)
    model.skeleton = skeleton
    if cfg.train.channels_last:  # convolutions then run channels-last whatever the input's layout
        model.to(memory_format=torch.channels_last)
    return model


def stage_at(cfg: Config, epoch: int) -> tuple[int, int]:
    """(stage index, first epoch of that stage) for a 0-based epoch."""
    start = 0
    for i, st in enumerate(cfg.stages):
        if epoch < start + st.epochs:
            return i, start
        start += st.epochs
    raise IndexError(f"epoch {epoch} is past the last stage ({cfg.total_epochs} epochs)")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("log_beta") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 runtime: Runtime | None = None, log=print) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.rt = runtime or setup_runtime(cfg.train.device)
        if self.rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self.log = log if self.rt.is_main else (lambda *a, **k: None)
        self.progress_bars = cfg.train.progress and self.rt.is_main
        self.amp = cfg.train.amp and self.rt.device.type == "cuda"
        self.final_out = self.out  # where the run ends up; ``out`` differs only while --overwrite stages it
        self.resume_from: list[Path] = []
        if resume:
            if self.rt.is_main:
                remove_orphaned_stages(self.out / CHECKPOINTS, self.log)
            self.rt.barrier()
            self.resume_from = checkpoints_newest_first(self.out)
            if not self.resume_from:
                raise FileNotFoundError(f"{self.out}: no complete checkpoint under {CHECKPOINTS}/ to resume from")
        else:
            check_output_dir(self.out, overwrite, cfg.input_paths())
            if is_nonempty_dir(self.out):
                # Nothing of the old run is touched until the new one is complete: it is built beside it
                # and swapped in at the end (a failure or a kill leaves the old run as it was).
                self.out = overwrite_stage(self.final_out)
                if self.rt.is_main:
                    shutil.rmtree(self.out, ignore_errors=True)  # an earlier interrupted --overwrite of ours
                    self.log(f"{self.final_out} is replaced when this run completes; until then it trains in "
                             f"{self.out}")
        self.rt.barrier()

        seed_everything(cfg.train.seed)
        data = run_data(cfg.data, cfg.train.seed, self.rt, self.progress_bars)
        train_records, self.skeleton, self.val_records = data.train_records, data.skeleton, data.val_records
        for i, st in enumerate(cfg.stages):
            if stage_uses_pseudo_labels(st) and not st.pseudo_labels.k < len(train_records):
                raise ConfigError(f"key 'stages.{i}.pseudo_labels.k': expected fewer neighbours than the "
                                  f"{len(train_records)} training samples, got {st.pseudo_labels.k}")
        d = cfg.data
        self.train_set, self.val_set = data.train_set, data.val_set
        self.tensorboard: TensorBoardLog | None = None  # opened at the first epoch's end (rank 0)
        if "tensorboard" in cfg.train.log:
            summary_writer_class()  # missing package: said now, not after the first epoch
        self.val_predictions: dict | None = None
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.bank_set = PoseDataset.from_config(train_records, d, train=False, skeleton=self.skeleton)
        self.bank_loader = make_loader(self.bank_set, d.batch_size, self.rt, shuffle=False, num_workers=d.num_workers)
        # Synthetic data: the cue metrics' constant reference is refitted at each validation on these figures.
        self.reference_loader = None
        if record_cue_strengths(self.val_records) is not None:
            subset = Subset(self.bank_set, range(min(len(self.bank_set), VALIDATION_REFERENCE_SAMPLES)))
            self.reference_loader = make_loader(subset, d.batch_size, Runtime(self.rt.device), shuffle=False)
        labels = crop_labels(train_records, d.input_size, d.padding)
        strengths = record_cue_strengths(train_records)
        # Synthetic data knows its label noise and cues: the pseudo-labels are measured against them.
        self.bank_data = BankData(torch.as_tensor(labels["targets"]), torch.as_tensor(labels["visibility"]),
                                  torch.from_numpy(labels["affines"]).float(),
                                  None if "cov_true" not in labels else torch.as_tensor(labels["cov_true"]),
                                  None if strengths is None else torch.as_tensor(strengths))
        self.flip_coords = torch.from_numpy(self.skeleton.flip_coordinate_index.copy())
        self.variance_scale = (d.input_size / 32.0) ** 2  # the models' initial variance, px^2
        self.objective: StageObjective | None = None
        self._objective_stage = -1

        self.model = build_model_from_config(cfg, self.skeleton.num_joints, self.skeleton).to(self.rt.device)
        self.net = self.model
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            # An MSE stage leaves the covariance head out of the loss; DDP must then look for unused parameters.
            # So does a stage that leaves the local term out (pseudo_labels.train_local_term).
            unused = ((any(st.loss == "mse" for st in cfg.stages) and cfg.model.covariance != "identity")
                      or (cfg.model.local_covariance and not all(map(stage_trains_local_term, cfg.stages))))
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, t.weight_decay), lr=t.lr)
        steps = min(len(self.train_loader), t.max_steps_per_epoch or len(self.train_loader))
        self.steps_per_epoch = steps
        self.schedule = LRSchedule(self.optimizer, steps * cfg.total_epochs, t.schedule, t.warmup_steps,
                                   t.min_lr_ratio, t.plateau_patience, t.plateau_factor)
        self.state = Progress()
        self._bad_in_a_row, self._last_finite = 0, float("nan")  # non-finite steps count across epochs
        self._reported_missing: set[str] = set()
        if self.resume_from:
            self._resume()
        elif self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / CONFIG_FILE)
        self.rt.barrier()

    # -- checkpoints ------------------------------------------------------------------------------

    def _save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/epoch_NNNN/`` through a staging directory renamed into place, so a
        kill leaves either the whole checkpoint or none; keep the newest two."""
        if not self.rt.is_main:
            return None
        root = self.out / CHECKPOINTS
        final = checkpoint_dir(self.out, self.state.epoch)
        with staged_output_dir(final, overwrite=True, lock=False) as stage:
            save_model(self.model, stage / MODEL_FILE)
            blob = io.BytesIO()
            torch.save({"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                        "rng": rng_states(), "progress": self.state.to_dict(), "config": config_to_dict(self.cfg)},
                       blob)
            atomic_write_bytes(stage / STATE_FILE, blob.getvalue())
            atomic_write_bytes(stage / STATE_CHECKSUM_FILE, hashlib.sha256(blob.getvalue()).hexdigest().encode())
        for old in sorted(root.glob("epoch_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _resume(self) -> None:
        """Load the newest checkpoint that loads whole; a damaged one (truncated, bit-flipped) is passed
        over, and said. A checkpoint that does not fit this run's model is an error, not damage."""
        damaged = []
        for path in self.resume_from:
            try:
                self._load_checkpoint(path)
            except ModelFileError as e:
                damaged.append(f"{path.name} ({e})")
                self.log(f"warning: checkpoint {path} is damaged, passing over it: {e}")
                continue
            if damaged:
                self.log(f"resumed from {path.name}, the newest checkpoint that loads")
            return
        raise ValueError(f"{self.out}: no checkpoint under {CHECKPOINTS}/ loads: " + "; ".join(damaged))

    def _load_checkpoint(self, path: Path) -> None:
        checksum = path / STATE_CHECKSUM_FILE  # checkpoints written before checksums have none
        if checksum.is_file():
            try:
                expected = checksum.read_text().strip()
                actual = hashlib.sha256((path / STATE_FILE).read_bytes()).hexdigest()
            except (OSError, UnicodeDecodeError) as e:
                raise ModelFileError(f"{path / STATE_FILE}: its checksum cannot be read ({e})") from None
            if actual != expected:
                raise ModelFileError(f"{path / STATE_FILE}: its SHA-256 differs from the one written with it "
                                     f"({STATE_CHECKSUM_FILE}): the file changed on disk")
        try:
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or corrupt zip: torch raises RuntimeError, EOFError, pickle errors
            why = f"{type(e).__name__}: {str(e).strip()[:200]}"
            raise ModelFileError(f"{path / STATE_FILE}: unreadable ({why})") from None
        if not isinstance(state, dict) or not {"optimizer", "schedule", "rng", "progress"} <= set(state):
            raise ModelFileError(f"{path / STATE_FILE}: not a pose-toss training state")
        current = config_to_dict(self.cfg.model)
        saved_model = state.get("config", {}).get("model")
        if saved_model is not None:  # keys added to the model section since then have their defaults
            saved_model = {**config_to_dict(ModelConfig()), **saved_model}
        if saved_model is not None and saved_model != current:
            differ = sorted(k for k in set(saved_model) | set(current) if saved_model.get(k) != current.get(k))
            raise ValueError(f"{path}: written for another model than {self.out / CONFIG_FILE} describes (model."
                             f"{', model.'.join(differ)} differ); resume a run with its own {CONFIG_FILE}")
        load_state_checked(self.model, path / MODEL_FILE, self.rt.device,
                           fits=f"the model that {self.out / CONFIG_FILE} describes")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.state = Progress.from_dict(state["progress"])
        restore_rng_states(state["rng"])
        self.log(f"resuming from {path} (epoch {self.state.epoch} of {self.cfg.total_epochs} done)")

    # -- what a step computes ---------------------------------------------------------------------

    def _stage_objective(self, stage_idx: int) -> StageObjective:
        """The stage's objective, built once per stage (its pseudo-labels' bank with it)."""
        if self._objective_stage != stage_idx:
            st = self.cfg.stages[stage_idx]
            loss = LOSSES[st.loss]
            pseudo = None
            if loss.needs_pseudo_labels:
                pseudo = PseudoLabels(stage_idx, st.pseudo_labels, self.bank_data, self.bank_loader, self.flip_coords,
                                      self.rt.device, self.progress_bars, self.log)
            self.objective = StageObjective(loss, st.beta, self.variance_scale, self.cfg.train.heatmap_weight, pseudo,
                                            self.cfg.train.occlusion_weight)
            self._objective_stage = stage_idx
        return self.objective

    def _all_finite(self, flag: bool) -> bool:
        if not self.rt.distributed:
            return flag
        t = torch.tensor([0.0 if flag else 1.0], device=self.rt.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() == 0)

    def _train_epoch(self, epoch: int, stage_idx: int) -> dict:
        t = self.cfg.train
        objective = self._stage_objective(stage_idx)
        self.model.train()
        self.train_set.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)
        stats: dict = {}
        total, count, skipped = 0.0, 0, 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.total_epochs} "
                   f"[{self.cfg.stages[stage_idx].loss}]", disable=not self.progress_bars, leave=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        missing = 0
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            missing += self._report_missing(batch)
            if "image" not in batch:  # every image of the batch was unreadable
                bar.update()
                continue
            try:
                loss, value = objective(self.net, self.model, batch, self.rt.device, self.amp, stats)
                finite = bool(torch.isfinite(loss))
            except FloatingPointError:  # a non-finite covariance met the Cholesky factorisation
                loss, value, finite = None, float("nan"), False
            self.optimizer.zero_grad(set_to_none=True)
            ok = self._all_finite(finite)
            if ok:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf)
                ok = bool(torch.isfinite(norm))  # gradients are all-reduced: every rank sees the same norm
            if not ok:
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                self._bad_in_a_row += 1
                if self._bad_in_a_row >= t.max_bad_steps:
                    raise TrainingDiverged(
                        f"stage {stage_idx + 1} ({self.cfg.stages[stage_idx].loss}), epoch {epoch + 1}, step "
                        f"{step + 1}: {self._bad_in_a_row} non-finite steps in a row (train.max_bad_steps); last "
                        f"finite loss {self._last_finite:.4g}. Lower train.lr or raise model.cov_floor.")
            else:
                self.optimizer.step()
                self._bad_in_a_row = 0
                self._last_finite = value
                total += value
                count += 1
            self.schedule.step()
            bar.set_postfix(loss=f"{self._last_finite:.4g}", lr=f"{self.schedule.lr:.2e}")
            bar.update()
        bar.close()
        return {"train_loss": total / max(count, 1), "skipped_steps": skipped, "missing_images": missing,
                "cholesky_jitter": stats.get("cholesky_jitter", 0)}

    def _report_missing(self, batch: dict) -> int:
        """Name each unreadable image once; return how many this batch left out."""
        paths = batch.get("missing_images", ())
        for message in paths:
            if message not in self._reported_missing:
                self._reported_missing.add(message)
                self.log(f"warning: skipped: {message}")
        return len(paths)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's batch-norm statistics: DDP keeps parameters equal, but each rank's
        last forward updated its own running statistics, and validation must agree across ranks."""
        if self.rt.distributed:
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def evaluate_validation_split(self, where: str = "validation") -> dict:
        """Every metric of the current model on the validation split (the synthetic cue metrics against a
        constant fitted on training figures); stops a run whose predictions are no longer finite."""
        preds = predict_dataset(self.model, self.val_loader, self.rt.device, self.amp)
        self.val_predictions = preds
        bad = non_finite_predictions(preds)
        if len(bad):
            raise self._diverged(where, f"the model predicts NaN or Inf for {len(bad)} of {len(preds['index'])} "
                                        "validation samples")
        reference = None
        if self.reference_loader is not None:
            reference = residual_reference(self.model, self.reference_loader, self.rt.device, self.amp)
        return metrics_from_predictions(attach_cues(preds, self.val_records), self.skeleton, reference)

    def _diverged(self, where: str, what: str) -> TrainingDiverged:
        """The error that stops a diverged run: where, what, what to do, and the last good checkpoint."""
        last = latest_checkpoint(self.out)
        return TrainingDiverged(f"{where}: the training diverged: {what}. Nothing of this epoch was saved; lower "
                                f"train.lr (now {self.cfg.train.lr:g}) and train again"
                                + (f" (the last good checkpoint is {last})." if last else "."))

    # -- the run ----------------------------------------------------------------------------------

    def fit(self, max_epochs: int | None = None) -> dict:
        """Train from the current epoch to the end (or only ``max_epochs`` more epochs)."""
        cfg, s = self.cfg, self.state
        end = cfg.total_epochs if max_epochs is None else min(cfg.total_epochs, s.epoch + max_epochs)
        if s.epoch >= cfg.total_epochs:
            self.log(f"{self.out}: all {cfg.total_epochs} epochs already done")
        run_start = time.perf_counter()
        for epoch in range(s.epoch, end):
            stage_idx, stage_start = stage_at(cfg, epoch)
            st = cfg.stages[stage_idx]
            epoch_start = time.perf_counter()
            objective = self._stage_objective(stage_idx)
            pl_seconds = 0.0
            if objective.pseudo_labels is not None:
                pl_seconds = objective.pseudo_labels.refresh(self.model, epoch - stage_start, s.bank)
            if self.model.local_scale is not None:
                self.model.local_scale.requires_grad_(stage_trains_local_term(st))
            train = self._train_epoch(epoch, stage_idx)
            self._sync_buffers()
            train_seconds = time.perf_counter() - epoch_start
            where = f"stage {stage_idx + 1} ({st.loss}), epoch {epoch + 1}"
            val = scalar_metrics(self.evaluate_validation_split(where))
            self.schedule.epoch_end(val["nll"])
            s.epoch = epoch + 1
            labels = ({f"pseudo_label_{k}": v for k, v in objective.pseudo_labels.bank.quality.items()}
                      if objective.pseudo_labels is not None else {})
            line = {"epoch": s.epoch, "stage": stage_idx + 1, "loss": st.loss, "lr": self.schedule.lr,
                    **train, "pseudo_label_seconds": round(pl_seconds, 3), **labels,
                    "epoch_seconds": round(train_seconds, 2),
                    **{f"val_{k}": v for k, v in val.items()}}
            is_best = math.isfinite(val["nll"]) and val["nll"] < s.best_val_nll
            if is_best:
                s.best_val_nll, s.best_epoch = val["nll"], s.epoch
            s.history.append(line)
            if self.rt.is_main:
                self._write_metrics()
                self._log_tensorboard(line)
            self._stop_if_diverged(val, where)
            if self.rt.is_main:
                if is_best:
                    self._save_best(val)
                self._save_checkpoint()
            self.rt.barrier()
            self.log(f"epoch {s.epoch}/{cfg.total_epochs} [{st.loss}] loss {train['train_loss']:.4g} | val error "
                     f"{val['mean_joint_error']:.2f} px, NLL {val['nll']:.2f}, cov@0.9 {val['coverage@0.9']:.2f}"
                     + (f", cue AUROC {val['cue_auroc_spread']:.2f}" if "cue_auroc_spread" in val else "")
                     + (f", occlusion AUROC {val['occlusion_auroc']:.2f}" if "occlusion_auroc" in val else "")
                     + (f", skipped {train['skipped_steps']}" if train["skipped_steps"] else "")
                     + (f", {train['missing_images']} unreadable images" if train["missing_images"] else "")
                     + (f" | pseudo-labels {pl_seconds:.1f} s" if pl_seconds else "") + f" | {train_seconds:.0f} s")
        if self.tensorboard is not None:  # closed before a staged output is moved into place
            self.tensorboard.close()
            self.tensorboard = None
        if s.epoch == cfg.total_epochs:
            if s.best_epoch < 0:
                raise TrainingDiverged(f"{self.out}: no epoch of {cfg.total_epochs} gave a finite validation NLL, so "
                                       "there is no best model. Lower train.lr or raise model.cov_floor.")
            if self.rt.is_main:
                save_model(self.model, self.out / MODEL_FILE)
                if self.out != self.final_out:
                    replace_dir(self.out, self.final_out)
            self.out = self.final_out
        self.rt.barrier()
        return {"out": str(self.out), "epochs": s.epoch, "best_epoch": s.best_epoch,
                "best_val_nll": s.best_val_nll, "seconds": time.perf_counter() - run_start,
                "history": s.history}

    def _stop_if_diverged(self, val: dict, where: str) -> None:
        """A run whose validation, weights or batch-norm statistics are no longer finite has diverged: stop
        before that state becomes a checkpoint (the previous checkpoints stay as they were)."""
        bad_val = [k for k in ("nll", "mean_joint_error") if not math.isfinite(val.get(k, math.nan))]
        bad_state = non_finite_tensors(self.model.state_dict())
        if bad_val or bad_state:
            what = []
            if bad_val:
                what.append("validation " + ", ".join(f"{k} = {val.get(k)}" for k in bad_val))
            if bad_state:
                what.append(f"{len(bad_state)} non-finite weight or buffer tensors (e.g. {bad_state[0]})")
            raise self._diverged(where, "; ".join(what))

    def _log_tensorboard(self, line: dict) -> None:
        """The epoch's line and a few validation crops with their ellipses, when train.log lists tensorboard."""
        if "tensorboard" not in self.cfg.train.log:
            return
        if self.tensorboard is None:
            self.tensorboard = TensorBoardLog(self.out / TENSORBOARD_DIR)
        picture = None
        if self.val_predictions is not None and "index" in self.val_predictions:
            picture = prediction_pictures(self.val_set, self.val_predictions, self.skeleton, count=8, tile=160)
        self.tensorboard.epoch(line, picture)

    def _write_metrics(self) -> None:
        # Rewritten whole from the history each epoch, so a resumed run never duplicates lines.
        text = "".join(json.dumps(jsonable(h)) + "\n" for h in self.state.history)
        atomic_write_text(self.out / "metrics.jsonl", text)

    def _save_best(self, val: dict) -> None:
        best = self.out / BEST
        best.mkdir(parents=True, exist_ok=True)
        save_model(self.model, best / MODEL_FILE)
        atomic_write_text(best / "info.json", json.dumps(jsonable({"epoch": self.state.epoch, **val}), indent=1))


def train(cfg: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Run (or resume) the configured stages into ``out``; returns a summary with the epoch history.

    The run directory is locked for the duration (``pose_toss.outputs.run_lock``, by the main process)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))
    with run_lock(out, log) if rank == 0 else contextlib.nullcontext():
        return Trainer(cfg, out, resume=resume, overwrite=overwrite, log=log).fit()
