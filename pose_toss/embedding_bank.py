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

from pose_toss.config import LABELS_FROM
from pose_toss.covariance import masked_covariance
from pose_toss.metrics import w2_gaussian
from pose_toss.pseudo_labels import pseudo_covariances


class EmbeddingBank:
    """``true_cov`` (N x D x D, the targets' frame), when the data knows its label noise, lets every
    refresh measure its labels against the truth (``quality``).

    ``labels_from``: ``"targets"`` (the paper: the neighbours' targets' covariance) or ``"residuals"``
    (the second moment of the neighbours' errors ``y_j - mu_j``; every refresh then needs the model's
    predictions for the whole bank, which ``refresh_from_model`` computes in the same pass)."""

    def __init__(self, targets: torch.Tensor, masks: torch.Tensor | None = None, k: int = 64,
                 temperature: float | str | None = 1.0, shrinkage: float = 0.1, floor: float = 1e-3,
                 true_cov: torch.Tensor | None = None, labels_from: str = "targets") -> None:
        if labels_from not in LABELS_FROM:
            raise ValueError(f"labels_from must be one of {LABELS_FROM}, got {labels_from!r}")
        self.labels_from = labels_from
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.masks = None if masks is None else torch.as_tensor(masks, dtype=torch.float32)
        self.k, self.temperature, self.shrinkage, self.floor = k, temperature, shrinkage, floor
        self.true_cov = None if true_cov is None else torch.as_tensor(true_cov)
        d = self.targets.shape[1]
        if self.true_cov is not None and self.true_cov.shape != (len(self), d, d):
            raise ValueError(f"true_cov has shape {tuple(self.true_cov.shape)}, expected ({len(self)}, {d}, {d})")
        self.embeddings: torch.Tensor | None = None
        self.predictions: torch.Tensor | None = None  # N x D, the model's means (residual labels)
        self.cov: torch.Tensor | None = None
        self.sqrt: torch.Tensor | None = None
        self.last_refresh_seconds = 0.0
        self.quality: dict = {}  # of the last refresh: tau, effective neighbours, W2^2 to the truth
        self.unavailable: torch.Tensor | None = None  # N bools: images that could not be read

    def __len__(self) -> int:
        return self.targets.shape[0]

    def set_embeddings(self, embeddings: torch.Tensor, predictions: torch.Tensor | None = None) -> float:
        """Use these embeddings (N x E) and recompute every pseudo-label; returns the seconds it took.
        ``predictions`` (N x D, the targets' frame) are needed for residual labels."""
        if embeddings.shape[0] != len(self):
            raise ValueError(f"bank has {len(self)} targets but got {embeddings.shape[0]} embeddings")
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
        self.cov, self.sqrt = pseudo_covariances(self.embeddings, values, self.k, self.temperature, masks,
                                                 self.shrinkage, self.floor, stats=stats,
                                                 centre=self.labels_from == "targets")
        self.last_refresh_seconds = time.perf_counter() - start
        self.quality = stats
        if self.true_cov is not None:
            self.quality["w2_to_true"] = self.w2_to_true(masks)
        return self.last_refresh_seconds

    def w2_to_true(self, masks: torch.Tensor | None = None) -> float:
        """Mean exact W2^2 between N(0, label) and N(0, true covariance) over each sample's visible
        coordinates: how far the labels are from what they stand for (synthetic data)."""
        if self.cov is None or self.true_cov is None:
            raise RuntimeError("w2_to_true needs filled labels and the true covariances")
        m = (torch.ones(len(self), self.targets.shape[1]) if masks is None
             else (masks.cpu() > 0).double().repeat_interleave(2, dim=1))
        zero = torch.zeros(len(self), self.targets.shape[1], dtype=torch.float64)
        pseudo = masked_covariance(self.cov.cpu().double(), m.double())
        true = masked_covariance(self.true_cov.double(), m.double())
        return float(w2_gaussian(zero, pseudo, zero, true).mean())

    @torch.no_grad()
    def _embed_all(self, embed_fn, loader, device, progress: bool = False) -> torch.Tensor:
        """``embed_fn(images) -> B x E`` over the loader, averaged per index across batches and ranks.

        Samples whose image could not be read get the mean embedding and no say in any label (their
        joints are masked until a later refresh reads them)."""
        from tqdm import tqdm

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

        def embed_and_predict(images):
            out = model(images, with_covariance=False)
            return torch.cat([out.embedding.float(), out.mean.float()], dim=1)

        try:
            if self.labels_from == "residuals":
                both = self._embed_all(embed_and_predict, loader, device, progress)
                d = self.targets.shape[1]
                self.set_embeddings(both[:, :-d], both[:, -d:])
            else:
                self.set_embeddings(self._embed_all(lambda x: model.embed(model.features(x)), loader, device,
                                                    progress))
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
