"""The training set's embedding bank and its pseudo-labels, refreshed from the model or a frozen source.

Under torch.distributed every rank embeds its shard; the bank is summed across ranks (each index
divided by how many ranks filled it, so padded duplicates are harmless), so all ranks compute the
same pseudo-labels.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pose_toss.config import LABELS_FROM
from pose_toss.covariance import masked_covariance
from pose_toss.losses import sqrtm_eigh
from pose_toss.metrics import pseudo_label_quality, w2_barycenter
from pose_toss.pseudo_labels import joint_scaled_labels, pseudo_covariances


class EmbeddingBank:
    """``true_cov`` (N x D x D, the targets' frame), when the data knows its label noise, lets every
    refresh measure its labels against the truth (``quality``: ``metrics.pseudo_label_quality``, with the
    cue AUROC when ``limb_cue`` (N x L cue strengths of ``limbs``) is given too).

    ``labels_from``: ``"targets"`` (the paper: the neighbours' targets' covariance) or ``"residuals"``
    (the second moment of the neighbours' errors ``y_j - mu_j``; every refresh then needs the model's
    predictions for the whole bank, which ``refresh_from_model`` computes in the same pass).
    ``effective``: each sample's temperature set for that many effective neighbours (overrides
    ``temperature``). ``neighbours="joints"``: each joint of a label rescaled to what that joint's own
    neighbours say, found on the model's per-joint descriptors (``pseudo_labels.joint_scaled_labels``)."""

    def __init__(self, targets: torch.Tensor, masks: torch.Tensor | None = None, k: int = 64,
                 temperature: float | str | None = 1.0, shrinkage: float = 0.1, floor: float = 1e-3,
                 true_cov: torch.Tensor | None = None, labels_from: str = "targets",
                 limbs: torch.Tensor | None = None, limb_cue: torch.Tensor | None = None,
                 effective: float | None = None, neighbours: str = "embedding") -> None:
        if labels_from not in LABELS_FROM:
            raise ValueError(f"labels_from must be one of {LABELS_FROM}, got {labels_from!r}")
        if neighbours not in ("embedding", "joints"):
            raise ValueError(f"neighbours must be 'embedding' or 'joints', got {neighbours!r}")
        self.effective, self.neighbours = effective, neighbours
        self.labels_from = labels_from
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.masks = None if masks is None else torch.as_tensor(masks, dtype=torch.float32)
        self.k, self.temperature, self.shrinkage, self.floor = k, temperature, shrinkage, floor
        self.true_cov = None if true_cov is None else torch.as_tensor(true_cov)
        d = self.targets.shape[1]
        if self.true_cov is not None and self.true_cov.shape != (len(self), d, d):
            raise ValueError(f"true_cov has shape {tuple(self.true_cov.shape)}, expected ({len(self)}, {d}, {d})")
        self.limbs = None if limbs is None else torch.as_tensor(limbs)
        self.limb_cue = None if limb_cue is None else torch.as_tensor(limb_cue)
        self._best_constant: tuple[torch.Tensor, torch.Tensor] | None = None  # (masks, barycenter of the truths)
        self.embeddings: torch.Tensor | None = None
        self.predictions: torch.Tensor | None = None  # N x D, the model's means (residual labels)
        self.joint_descriptors: torch.Tensor | None = None  # N x J x F (neighbours "joints")
        self.cov: torch.Tensor | None = None
        self.sqrt: torch.Tensor | None = None
        self.last_refresh_seconds = 0.0
        self.quality: dict = {}  # of the last refresh: tau, effective neighbours, and against the truth
        self.unavailable: torch.Tensor | None = None  # N bools: images that could not be read

    def __len__(self) -> int:
        return self.targets.shape[0]

    def set_embeddings(self, embeddings: torch.Tensor, predictions: torch.Tensor | None = None,
                       joint_descriptors: torch.Tensor | None = None) -> float:
        """Use these embeddings (N x E) and recompute every pseudo-label; returns the seconds it took.
        ``predictions`` (N x D, the targets' frame) are needed for residual labels, ``joint_descriptors``
        (N x J x F) for per-joint neighbours."""
        if embeddings.shape[0] != len(self):
            raise ValueError(f"bank has {len(self)} targets but got {embeddings.shape[0]} embeddings")
        if self.neighbours == "joints":
            if joint_descriptors is None or joint_descriptors.shape[:2] != (len(self), self.targets.shape[1] // 2):
                raise ValueError(f"per-joint neighbours need the joint descriptors (N x J x F) of every bank sample, "
                                 f"got {None if joint_descriptors is None else tuple(joint_descriptors.shape)}")
            self.joint_descriptors = joint_descriptors.float()
        if self.labels_from == "residuals":
            if predictions is None:
                raise ValueError("residual pseudo-labels need the model's predictions for every bank sample")
            if predictions.shape != self.targets.shape:
                raise ValueError(f"predictions have shape {tuple(predictions.shape)}, expected "
                                 f"{tuple(self.targets.shape)} (the bank's targets)")
            self.predictions = predictions.float()
        start = time.perf_counter()
        self.embeddings = embeddings.float()
        device = self.embeddings.device
        masks = None if self.masks is None else self.masks.to(device)
        if self.unavailable is not None and self.unavailable.any():
            masks = torch.ones(self.targets.shape[0], self.targets.shape[1] // 2) if masks is None else masks.clone()
            masks[self.unavailable.to(masks.device)] = 0.0
            masks = masks.to(device)
        stats: dict = {}
        values = self.targets.to(device)
        if self.labels_from == "residuals":
            values = values - self.predictions.to(device)
        centre = self.labels_from == "targets"
        self.cov, self.sqrt = pseudo_covariances(self.embeddings, values, self.k, self.temperature, masks,
                                                 self.shrinkage, self.floor, stats=stats, centre=centre,
                                                 effective=self.effective, with_sqrt=self.neighbours == "embedding")
        if self.neighbours == "joints":
            self.cov = joint_scaled_labels(self.cov, self.joint_descriptors.to(device), values, self.k, masks,
                                           self.temperature, self.effective, centre, self.shrinkage, self.floor)
            self.sqrt = torch.cat([sqrtm_eigh(c) for c in self.cov.split(16384)])
        self.last_refresh_seconds = time.perf_counter() - start
        self.quality = stats
        if self.true_cov is not None:
            self.quality.update(self.label_quality(masks))
        return self.last_refresh_seconds

    def label_quality(self, masks: torch.Tensor | None = None) -> dict:
        """``metrics.pseudo_label_quality`` of the current labels against the true covariances (synthetic data):
        W2^2 to the truth beside the best constant label's, the trace's rank correlation with the truth's,
        the cue AUROC of the labels' spreads."""
        if self.cov is None or self.true_cov is None:
            raise RuntimeError("label_quality needs filled labels and the true covariances")
        vis = torch.ones(len(self), self.targets.shape[1] // 2) if masks is None else (masks.cpu() > 0).float()
        if self._best_constant is None or not torch.equal(self._best_constant[0], vis):
            m = vis.double().repeat_interleave(2, dim=1)
            truths = masked_covariance(self.true_cov.double(), m)
            sample = torch.linspace(0, len(self) - 1, min(len(self), 2000)).long()
            self._best_constant = (vis, w2_barycenter(truths[sample]))  # the truth is fixed: once per mask
        return pseudo_label_quality(self.cov, self.true_cov, vis, self.limbs, self.limb_cue, self._best_constant[1])

    @torch.no_grad()
    def _embed_all(self, embed_fn, loader, device, progress: bool = False) -> torch.Tensor:
        """``embed_fn(images) -> B x E`` over the loader, averaged per index across batches and ranks.

        Samples whose image could not be read get the mean embedding and no say in any label (their
        joints are masked until a later refresh reads them)."""

        bank, counts = None, torch.zeros(len(self), device=device)
        reported = torch.zeros(1, device=device)
        for batch in tqdm(loader, desc="embedding bank", disable=not progress):
            reported += len(batch.get("missing_images", ()))
            if "image" not in batch:
                continue
            z = embed_fn(batch["image"].to(device, non_blocking=True)).float()
            if bank is None:
                bank = torch.zeros(len(self), z.shape[1], device=device)
            idx = torch.as_tensor(batch["index"], device=device)
            bank.index_add_(0, idx, z)
            counts.index_add_(0, idx, torch.ones_like(idx, dtype=counts.dtype))
        if bank is None:
            if int(reported.item()) > 0:
                raise ValueError(f"none of the {len(self)} training images could be read ({int(reported.item())} "
                                 "unreadable: see the warnings above), so there is nothing to embed")
            raise ValueError("the loader yielded no batches to embed")
        bank, counts, reported = gather_across_ranks(bank), gather_across_ranks(counts), gather_across_ranks(reported)
        absent = counts == 0
        if int(absent.sum()) > int(reported.item()):
            raise ValueError(f"{int(absent.sum())} of {len(self)} samples were never embedded; the loader must "
                             "cover the whole training set")
        bank = bank / counts.clamp_min(1).unsqueeze(1)
        if absent.any():
            bank[absent] = bank[~absent].mean(0)
        self.unavailable = absent.cpu()
        return bank

    def refresh_from_model(self, model, loader, device: str | torch.device = "cpu", progress: bool = False) -> float:
        """Embed the whole training set with the model's bottleneck (eval mode) and recompute the labels
        (with residual labels, the model's means come from the same pass).

        ``loader`` yields dicts with ``image`` and ``index`` (a PoseDataset without augmentation).
        """
        start = time.perf_counter()
        was_training = model.training
        model.eval()

        d, j = self.targets.shape[1], self.targets.shape[1] // 2

        def embed_predict_describe(images):  # one pass: z, the means (residuals), the joints' descriptors
            feats = model.features(images)
            z = model.embed(feats)
            parts = [z.float()]
            if self.labels_from == "residuals" or self.neighbours == "joints":
                context = model.decoder_input(feats)
                parts.append(model.decode(z, context).float())
                if self.neighbours == "joints":
                    parts.append(model.joint_descriptors(z, context).flatten(1))
            return torch.cat(parts, dim=1)

        try:
            rows = self._embed_all(embed_predict_describe, loader, device, progress)
            e = model.bottleneck.down.out_features
            predictions = rows[:, e:e + d] if rows.shape[1] > e else None
            descriptors = rows[:, e + d:].reshape(len(self), j, -1) if self.neighbours == "joints" else None
            self.set_embeddings(rows[:, :e], predictions if self.labels_from == "residuals" else None, descriptors)
        finally:
            model.train(was_training)
        self.last_refresh_seconds = time.perf_counter() - start
        return self.last_refresh_seconds

    def refresh_from_file(self, path: str | os.PathLike) -> float:
        """Frozen embeddings from an ``.npy`` (N x E) or ``.npz`` (first array) file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
            if isinstance(arr, np.lib.npyio.NpzFile):
                if not arr.files:
                    raise ValueError("the .npz holds no arrays")
                arr = arr[arr.files[0]]
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read as a .npy / .npz array of embeddings ({e})") from None
        if arr.ndim != 2 or arr.shape[0] != len(self):
            raise ValueError(f"{path}: embeddings have shape {arr.shape}, expected ({len(self)}, E)")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{path}: embeddings must be numbers, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr).all(1)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} of {len(arr)} embeddings hold NaN or Inf (first: row "
                             f"{int(np.flatnonzero(bad)[0])})")
        return self.set_embeddings(torch.from_numpy(np.asarray(arr, dtype=np.float32)))

    def refresh_from_frozen_features(self, feature_fn, loader, dim: int = 64, device="cpu") -> float:
        """A fixed network's pooled features (``feature_fn(images) -> B x C``), reduced to ``dim`` by PCA."""
        feats = self._embed_all(feature_fn, loader, device)
        centred = feats - feats.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        return self.set_embeddings(centred @ v[: min(dim, v.shape[0])].T)

    def lookup(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-covariances and their roots for a batch's sample indices."""
        if self.cov is None:
            raise RuntimeError("the embedding bank has not been filled yet; call a refresh_* method first")
        idx = torch.as_tensor(indices, device=self.cov.device)
        return self.cov[idx], self.sqrt[idx]


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a per-rank partial bank over all ranks (no-op outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
