"""What a training step computes, apart from how steps run (``trainer``).

- ``LOSSES``: every stage loss, one callable each with one signature (``LossInputs`` -> per-sample values)
  and flags saying whether it needs the model's covariance and covariance pseudo-labels; a stage picks
  its loss once.
- ``PseudoLabels``: the pseudo-label side of a stage whose loss reads them: the training set's
  ``EmbeddingBank``, its refresh schedule, and each batch's labels moved from the bank's unaugmented crop
  frame into the batch's augmented one (frame change and left/right flip).
- ``StageObjective``: a stage's loss, its pseudo-labels when it has them, and the heatmap term.
- ``METHODS``: a covariance and a list of stage losses, what ``compare`` sweeps and ``bench`` times.

The math itself lives in ``pose_toss.losses``, ``pseudo_labels`` and ``embedding_bank``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pose_toss import losses
from pose_toss.config import Config, StageConfig
from pose_toss.covariance import linear_map_covariance
from pose_toss.data.synthetic import CUE_LIMBS
from pose_toss.embedding_bank import EmbeddingBank
from pose_toss.engine.runtime import autocast_context

# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


@dataclass
class LossInputs:
    """What a stage loss reads: the prediction (``cov`` None when the loss needs none), the labels, the
    stage's options, and (cov, sqrt) pseudo-labels in the batch's frame for the losses that read them."""

    mean: torch.Tensor
    cov: torch.Tensor | None
    target: torch.Tensor
    visibility: torch.Tensor
    pseudo: tuple[torch.Tensor, torch.Tensor] | None = None
    beta: float = 0.5
    variance_scale: float = 1.0
    stats: dict | None = None


@dataclass(frozen=True)
class Loss:
    """A stage loss: per-sample values (B) of a ``LossInputs``."""

    fn: Callable[[LossInputs], torch.Tensor]
    needs_covariance: bool = True
    needs_pseudo_labels: bool = False

    def __call__(self, x: LossInputs) -> torch.Tensor:
        if self.needs_pseudo_labels and x.pseudo is None:
            raise ValueError("this loss needs covariance pseudo-labels")
        return self.fn(x)


# The names are config.LOSSES (a test checks that they agree).
LOSSES: dict[str, Loss] = {
    "mse": Loss(lambda x: losses.mse(x.mean, x.target, x.visibility), needs_covariance=False),
    "nll": Loss(lambda x: losses.gaussian_nll(x.mean, x.cov, x.target, x.visibility, x.stats)),
    "beta_nll": Loss(lambda x: losses.beta_nll(x.mean, x.cov, x.target, x.visibility, x.beta)),
    "faithful": Loss(lambda x: losses.faithful(x.mean, x.cov, x.target, x.visibility, x.stats)),
    "loss_pred": Loss(lambda x: losses.loss_prediction(x.mean, x.cov, x.target, x.visibility, x.variance_scale)),
    "w2_bound": Loss(lambda x: losses.w2_bound(x.mean, x.cov, x.target, mask=x.visibility, target_cov=x.pseudo[0],
                                               target_sqrt=x.pseudo[1]), needs_pseudo_labels=True),
    "kl_calibrated": Loss(lambda x: losses.kl_calibrated(x.mean, x.cov, x.target, x.pseudo[0], x.visibility, x.stats),
                          needs_pseudo_labels=True),
}


def stage_uses_pseudo_labels(stage: StageConfig) -> bool:
    return LOSSES[stage.loss].needs_pseudo_labels


# ------------------------------------------------------------------------------------------------
# Pseudo-labels
# ------------------------------------------------------------------------------------------------


def labels_in_batch_frame(cov: torch.Tensor, bank_affine: torch.Tensor, batch_affine: torch.Tensor,
                          flip_coordinate_index: torch.Tensor, sqrt: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move bank pseudo-covariances (stored in the unaugmented crop frame) into an augmented batch.

    Both affines map the original image to a crop, so ``L = A_batch A_bank^-1`` (linear parts) takes
    the bank frame to the batch frame; a mirror (det L < 0) also swaps left and right joints, as the
    data pipeline does. Returns the covariances and their symmetric square roots. Crops keep the
    aspect ratio, so L is a similarity ``s Q`` (Q orthogonal) and the bank's roots ``sqrt`` move
    exactly as ``s Q R Q^T``; without them, or for any other map, the roots come from ``eigh``.
    """
    lin = batch_affine[:, :, :2].double() @ torch.linalg.inv(bank_affine[:, :, :2].double())
    moved = linear_map_covariance(cov.double(), lin)
    det = torch.linalg.det(lin)
    scale = det.abs().sqrt()
    similar = torch.allclose(lin @ lin.transpose(1, 2), scale[:, None, None] ** 2 * torch.eye(2, dtype=lin.dtype,
                             device=lin.device), rtol=1e-6, atol=1e-9 * float(scale.max().clamp_min(1.0)) ** 2)
    root = None
    if sqrt is not None and similar:
        root = linear_map_covariance(sqrt.double(), lin) / scale[:, None, None]
    flipped = det < 0
    if flipped.any():
        perm = flip_coordinate_index.to(cov.device)
        moved[flipped] = moved[flipped][:, perm][:, :, perm]
        if root is not None:
            root[flipped] = root[flipped][:, perm][:, :, perm]
    moved = 0.5 * (moved + moved.transpose(-1, -2))
    if root is None:
        root = losses.sqrtm_eigh(moved)
    return moved.float(), (0.5 * (root + root.transpose(-1, -2))).float()


@dataclass
class BankData:
    """The training split as the bank sees it, in the unaugmented crop frame: targets (N x D), visibility
    (N x J), crop affines (N x 2 x 3), and on synthetic data the true label covariances and cue strengths."""

    targets: torch.Tensor
    visibility: torch.Tensor
    affines: torch.Tensor
    true_cov: torch.Tensor | None = None
    limb_cue: torch.Tensor | None = None


@dataclass
class BankState:
    """What rebuilds a stage's labels exactly after a resume: the stage it was built for and what it was
    built from (kept in every checkpoint's progress)."""

    stage: int = -1
    embeddings: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    joint_descriptors: torch.Tensor | None = None


class PseudoLabels:
    """A pseudo-label stage's bank: built at the stage's start and, from the model's bottleneck, refreshed every
    ``refresh_every`` epochs of the stage (a frozen source once); a resumed run rebuilds the same labels from
    the saved ``BankState``. ``batch_labels`` gives a batch's labels in its own frame."""

    def __init__(self, stage_index: int, cfg, data: BankData, loader, flip_coordinates: torch.Tensor,
                 device: torch.device, progress: bool = False, log=print) -> None:
        self.stage_index, self.cfg, self.data, self.loader = stage_index, cfg, data, loader
        self.flip_coordinates, self.device, self.progress, self.log = flip_coordinates, device, progress, log
        cues = {} if data.limb_cue is None else {"limbs": torch.tensor(CUE_LIMBS), "limb_cue": data.limb_cue}
        self.bank = EmbeddingBank(data.targets, data.visibility, k=cfg.k, temperature=cfg.temperature,
                                  shrinkage=cfg.shrinkage, floor=cfg.floor, true_cov=data.true_cov,
                                  labels_from=cfg.labels_from, effective=cfg.effective_neighbours,
                                  neighbours=cfg.neighbours, **cues)

    def refresh(self, model, epoch_in_stage: int, state: BankState) -> float:
        """Refresh the labels when due (updating ``state``), or rebuild them from ``state`` after a resume;
        returns the seconds a refresh took (0 when none was due)."""
        cfg = self.cfg
        due = state.stage != self.stage_index or (cfg.source == "bottleneck"
                                                  and epoch_in_stage % cfg.refresh_every == 0)
        if not due:
            if self.bank.cov is None:
                self.bank.set_embeddings(state.embeddings.to(self.device), state.predictions, state.joint_descriptors)
            return 0.0
        if cfg.source == "file":
            seconds = self.bank.refresh_from_file(cfg.file)
        elif cfg.source == "features":
            seconds = self.bank.refresh_from_frozen_features(lambda x: model.features(x).mean(dim=(2, 3)), self.loader,
                                                             cfg.features_dim, self.device)
        else:
            seconds = self.bank.refresh_from_model(model, self.loader, self.device, self.progress)
        state.stage, state.embeddings = self.stage_index, self.bank.embeddings.detach().cpu()
        state.predictions = None if self.bank.predictions is None else self.bank.predictions.detach().cpu()
        state.joint_descriptors = (None if self.bank.joint_descriptors is None
                                   else self.bank.joint_descriptors.detach().cpu())
        self.log(self.describe(seconds))
        return seconds

    def describe(self, seconds: float) -> str:
        q, cfg = self.bank.quality, self.cfg
        line = (f"pseudo-labels ({cfg.labels_from}): {len(self.bank)} refreshed from {cfg.source} in {seconds:.1f} s "
                f"(tau {q['temperature']:.3g}, {q['effective_neighbours']:.1f} effective neighbours of {cfg.k})")
        if "w2_to_true" in q:
            line += (f"; against the true label noise: W2² {q['w2_to_true']:.1f} (best constant label "
                     f"{q['w2_constant_to_true']:.1f}), trace Spearman {q['trace_spearman']:.2f}"
                     + (f", cue AUROC {q['cue_auroc_spread']:.2f}" if "cue_auroc_spread" in q else ""))
        return line

    def batch_labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's (covariances, square roots), moved into its augmented frame."""
        idx = torch.as_tensor(batch["index"])
        cov, root = self.bank.lookup(idx)
        dev = self.device
        return labels_in_batch_frame(cov.to(dev), self.data.affines[idx].to(dev), batch["affine"].to(dev),
                                     self.flip_coordinates, sqrt=root.to(dev))


# ------------------------------------------------------------------------------------------------
# A stage's objective
# ------------------------------------------------------------------------------------------------


@dataclass
class StageObjective:
    """One stage's training loss: its ``Loss`` (the stage loss per coordinate), the stage's pseudo-labels when
    the loss reads them, the heatmap cross-entropy weighted by ``heatmap_weight`` and, for a model with an occlusion
    head, its cross-entropy on the known occlusion flags weighted by ``occlusion_weight``."""

    loss: Loss
    beta: float = 0.5
    variance_scale: float = 1.0
    heatmap_weight: float = 0.0
    pseudo_labels: PseudoLabels | None = field(default=None)
    occlusion_weight: float = 0.0

    def __call__(self, net, model, batch: dict, device: torch.device, amp: bool = False, stats: dict | None = None
                 ) -> tuple[torch.Tensor, float]:
        """(the loss to back-propagate, the stage loss's batch mean for the logs). ``net`` runs the forward
        (the model or its DistributedDataParallel wrapper), ``model`` is the bare model."""
        images = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        vis = batch["visibility"].to(device, non_blocking=True)
        with autocast_context(device, amp):
            out = net(images, with_covariance=self.loss.needs_covariance)
        pseudo = self.pseudo_labels.batch_labels(batch) if self.pseudo_labels is not None else None
        inputs = LossInputs(out.mean, out.cov, target, vis, pseudo, self.beta, self.variance_scale, stats)
        per_sample = self.loss(inputs)
        value = per_sample.mean()
        # Per coordinate: the same optimum, and gradient clipping means the same thing for every loss.
        total = value / target.shape[1]
        if self.heatmap_weight > 0 and out.heatmaps is not None:
            total = total + self.heatmap_weight * losses.heatmap_cross_entropy(
                out.heatmaps, batch["heatmaps"].to(device, non_blocking=True), vis, model.head.log_beta.exp()).mean()
        if self.occlusion_weight > 0 and out.occlusion_logits is not None and "occluded" in batch:
            total = total + self.occlusion_weight * losses.occlusion_bce(
                out.occlusion_logits, batch["occluded"].to(device, non_blocking=True)).mean()
        return total, float(value.detach())


# ------------------------------------------------------------------------------------------------
# Methods: what compare sweeps and bench times
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A covariance parameterisation and one loss per stage; ``pseudo_labels`` and ``model`` set the W2
    stage's pseudo-label keys and model keys that differ from the base config."""

    covariance: str
    losses: tuple[str, ...]
    pseudo_labels: tuple[tuple[str, object], ...] = ()
    model: tuple[tuple[str, object], ...] = ()


# ToSS's own pseudo-labels (Algorithm 1): the neighbours' targets in z, softmax(-d).
PAPER_LABELS = (("labels_from", "targets"), ("neighbours", "embedding"), ("temperature", 1.0),
                ("effective_neighbours", None))

METHODS = {
    "mse": Method("identity", ("mse",)),
    "diagonal": Method("diagonal", ("nll",)),
    "nll": Method("full", ("nll",)),
    "beta_nll": Method("diagonal", ("beta_nll",)),
    "faithful": Method("full", ("faithful",)),
    "nll_tic": Method("tic", ("nll",)),
    "kl_calibrated": Method("tic", ("kl_calibrated",), PAPER_LABELS),
    "w2": Method("tic", ("w2_bound",), PAPER_LABELS),
    "w2_full": Method("full", ("w2_bound",), PAPER_LABELS),
    "w2_then_nll_tic": Method("tic", ("w2_bound", "nll"), PAPER_LABELS),
    # Beyond the paper: W2 to the second moment of the neighbours' errors, not of their poses' spread.
    "w2_residual_then_nll_tic": Method("tic", ("w2_bound", "nll"), (*PAPER_LABELS, ("labels_from", "residuals"))),
    # Beyond the paper: each sample's temperature set for 16 effective neighbours (the paper's tau = 1 leaves 2-5).
    "w2_eff16_then_nll_tic": Method("tic", ("w2_bound", "nll"), (*PAPER_LABELS, ("effective_neighbours", 16.0))),
    "loss_pred": Method("isotropic", ("loss_pred",)),
    # The NLL-TIC step with z entering before the whole head: J through every deconvolution (TIC-TAC's placement;
    # the local scale reads the head's own heatmaps, so it is off there).
    "nll_tic_z_at_features": Method("tic", ("nll",),
                                    model=(("bottleneck_at", "features"), ("local_covariance", False))),
}


def stage_trains_local_term(stage: StageConfig) -> bool:
    """Whether a stage trains the model's per-joint local term: every stage but a pseudo-label one that leaves it to
    the likelihood (``pseudo_labels.train_local_term: false``)."""
    return not LOSSES[stage.loss].needs_pseudo_labels or stage.pseudo_labels.train_local_term


def method_config(base: Config, method: str, lr: float | None = None, seed: int | None = None) -> Config:
    """The base config with the method's covariance, model keys and stages over the same total epochs (and, when
    given, this learning rate and training seed; the data stay the same). Two-stage methods split the budget as
    the config's own stages do when it is a two-stage recipe, else 20 % / 80 % (the paper's 20 of 100)."""
    cfg = copy.deepcopy(base)
    spec = METHODS[method]
    total = base.total_epochs
    template = {s.loss: s for s in base.stages}
    if len(spec.losses) == 2:
        recipe = len(base.stages) == 2 and base.stages[0].loss == "w2_bound"
        first = base.stages[0].epochs if recipe else max(1, round(0.2 * total))
        first = min(first, total - 1)
        epochs = (first, total - first)
    else:
        epochs = (total,)
    stages = []
    for loss, n in zip(spec.losses, epochs, strict=True):
        st = copy.deepcopy(template.get(loss, template.get("w2_bound", StageConfig())))
        st.loss, st.epochs = loss, n
        if LOSSES[loss].needs_pseudo_labels:
            for key, value in spec.pseudo_labels:
                setattr(st.pseudo_labels, key, value)
        stages.append(st)
    cfg.model.covariance = spec.covariance
    for key, value in spec.model:
        setattr(cfg.model, key, value)
    if spec.covariance in ("identity", "isotropic"):  # nothing fitted for a local scale to act on
        cfg.model.local_covariance = False
    if not cfg.model.local_covariance:
        cfg.model.occlusion_neighbours = False  # what it feeds is gone
    cfg.stages = stages
    if lr is not None:
        cfg.train.lr = lr
    if seed is not None:
        cfg.train.seed = seed
    cfg.validate(f"method {method}")
    return cfg
