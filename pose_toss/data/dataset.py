"""The torch Dataset: record -> crop + augmentation -> tensors the model and losses consume."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import zlib
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pose_toss.data.codec import HeatmapCodec
from pose_toss.data.transforms import (
    TopDownTransform,
    affine_covariance,
    affine_points,
    box_to_center_size,
    center_scale_to_size,
    crop_affine,
)
from pose_toss.skeletons import Skeleton, get_skeleton


def load_image_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB from any file OpenCV reads (grey, CMYK, alpha are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # drops alpha, expands grey, converts CMYK
    if img is None:
        if not os.path.isfile(path):
            raise OSError(f"image file not found: {path}")
        raise OSError(f"cannot decode image file: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_file_problem(path) -> str | None:
    """Why an image file that OpenCV may still half-decode is damaged (a JPEG without its end-of-image
    marker, a PNG without its IEND chunk: a truncated download or copy), or None. Reads only the tail."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if head.startswith(b"\xff\xd8"):
        # Entropy-coded data never holds FF D9, so a truncated scan has none near its end; an intact file
        # ends with it (some cameras append a short trailer after it).
        if b"\xff\xd9" not in tail:
            return "JPEG is truncated (no end-of-image marker)"
        complaint = libjpeg_complaint(path)
        return f"JPEG data is corrupt (libjpeg: {complaint})" if complaint else None
    if head.startswith(b"\x89PNG"):
        return None if b"IEND" in tail[-64:] else "PNG is truncated (no IEND chunk)"
    return None


def libjpeg_complaint(path) -> str | None:
    """What libjpeg writes to stderr while OpenCV decodes ``path``, or None. A JPEG whose data is damaged but
    whose structure is whole decodes with only that warning (garbage in part of the picture), so the file
    descriptor 2 is caught for the call and read back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            cv2.imread(str(path), cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        said = sink.read().decode("utf-8", errors="replace")
    found = re.search(r"(Corrupt JPEG data[^\n]*|Premature end of JPEG file|Invalid JPEG file structure[^\n]*)", said)
    return found.group(1).strip() if found else None


def record_crop_source(record: dict, padding: float) -> tuple[np.ndarray, float]:
    """Centre and square side of the person crop, from ``bbox`` or MPII-style ``center`` + ``scale``."""
    name = record.get("image_path") or f"image_id {record.get('image_id', '?')}"
    if record.get("bbox") is not None:
        center, size = box_to_center_size(np.asarray(record["bbox"], dtype=np.float64), padding)
        given = f"bbox {list(np.asarray(record['bbox']).tolist())}"
    elif record.get("center") is not None and record.get("scale") is not None:
        center, size = center_scale_to_size(record["center"], record["scale"], padding)
        given = f"scale {record['scale']}"
    else:
        raise KeyError(f"{name}: the person has neither 'bbox' nor 'center' + 'scale' to crop it from")
    if not (np.isfinite(size) and size > 0 and np.isfinite(center).all()):
        raise ValueError(f"{name}: the person's {given} gives no crop (side {size}); expected a box with w, h > 0")
    return center, size


class PoseDataset(Dataset):
    """Yields dicts of tensors for one person each.

    Keys: ``image`` (3 x S x S float in [0, 1]), ``heatmaps`` (J x S/stride x S/stride), ``target``
    (2J, input px, [x0, y0, x1, y1, ...]), ``visibility`` (J), ``affine`` (2 x 3, original image ->
    input), ``occluded`` (J: 1 hidden, 0 seen, -1 unknown, from the record's ``occluded`` flags), ``index``,
    and ``cov_true`` (2J x 2J, input px^2) when the source knows its label noise.

    Augmentation is seeded from ``(seed, epoch, index)``: the same epoch gives the same samples in any
    worker layout, which makes resumed runs reproducible. Call ``set_epoch`` once per epoch.
    """

    def __init__(self, records: Sequence[dict], transform: TopDownTransform, codec: HeatmapCodec,
                 skeleton: Skeleton | None = None, padding: float = 1.25, seed: int = 0) -> None:
        self.records = records
        self.transform = transform
        self.codec = codec
        self.skeleton = skeleton or transform.skeleton
        self.padding = padding
        self.seed = seed
        self.epoch = 0

    @classmethod
    def from_config(cls, records: Sequence[dict], data_cfg, train: bool, skeleton: Skeleton | str = "lsp14",
                    seed: int = 0) -> PoseDataset:
        sk = get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton
        transform = TopDownTransform.from_config(data_cfg, sk, train)
        codec = HeatmapCodec(data_cfg.input_size, data_cfg.heatmap_stride, data_cfg.heatmap_sigma)
        return cls(records, transform, codec, sk, data_cfg.padding, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def sample_seed(self, index: int) -> int:
        return zlib.crc32(np.array([self.seed, self.epoch, index], dtype=np.int64).tobytes())

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        try:
            image = rec["image"] if rec.get("image") is not None else load_image_rgb(rec["image_path"])
        except OSError as e:  # reported and skipped by ``collate_samples``; one bad file must not end a run
            return {"missing_image": str(e), "index": index}
        joints = np.asarray(rec["joints"], dtype=np.float64)
        vis = np.asarray(rec["visibility"], dtype=np.float32)
        h, w = image.shape[:2]
        # NaN, negative and outside-the-image joints are masked, never trained on as coordinates.
        inside = np.isfinite(joints).all(axis=1)
        safe = np.nan_to_num(joints, nan=-1.0)
        inside &= (safe >= 0).all(axis=1) & (safe[:, 0] <= w - 1) & (safe[:, 1] <= h - 1)
        vis = vis * inside
        joints = np.where(inside[:, None], safe, 0.0)
        cov = rec.get("cov_true")
        center, size = record_crop_source(rec, self.padding)
        out = self.transform(image, joints, vis, center, size, cov=None if cov is None else np.asarray(cov),
                             seed=self.sample_seed(index), occluded=self._occlusion_flags(rec, inside))
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(out.image)).permute(2, 0, 1).float().div_(255.0),
            "heatmaps": torch.from_numpy(self.codec.encode(out.joints, out.visibility)),
            "target": torch.from_numpy(out.joints.reshape(-1).astype(np.float32)),
            "visibility": torch.from_numpy(out.visibility.astype(np.float32)),
            "affine": torch.from_numpy(out.affine.astype(np.float32)),
            # The occlusion head's target: 1 hidden, 0 seen, -1 unknown (no flag, or outside the image or crop).
            "occluded": torch.from_numpy(out.occluded if out.occluded is not None
                                         else np.full(len(out.visibility), -1.0, dtype=np.float32)),
            "index": index,
        }
        if out.cov is not None:
            sample["cov_true"] = torch.from_numpy(out.cov.astype(np.float32))
        if rec.get("joints_true") is not None:  # synthetic: the noise-free joints, in the same frame
            true = affine_points(out.affine, np.asarray(rec["joints_true"], dtype=np.float64))
            if out.flipped:
                true = true[self.skeleton.flip_index]
            sample["target_true"] = torch.from_numpy(true.reshape(-1).astype(np.float32))
        if rec.get("head_size") is not None:  # PCKh: the head size in crop pixels
            sample["head_size"] = torch.tensor(float(rec["head_size"]) * _affine_scale(out.affine),
                                               dtype=torch.float32)
        return sample

    @staticmethod
    def _occlusion_flags(rec: dict, inside_image: np.ndarray) -> np.ndarray | None:
        """The record's occlusion flags, unknown (NaN) where the joint lies outside the image; None without flags."""
        flags = rec.get("occluded")
        if flags is None:
            return None
        flags = np.asarray(flags, dtype=np.float64).reshape(-1)
        if flags.shape != inside_image.shape:
            name = rec.get("image_path") or f"image_id {rec.get('image_id', '?')}"
            raise ValueError(f"{name}: 'occluded' has {flags.shape[0]} flags, expected one per joint "
                             f"({len(inside_image)})")
        return np.where(inside_image, flags, np.nan)


def sample_image_rgb(sample: dict) -> np.ndarray:
    """A sample's ``image`` tensor (3 x S x S in [0, 1]) back as S x S x 3 uint8 RGB, for drawing."""
    return (sample["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def collate_samples(samples: list[dict]) -> dict:
    """``default_collate`` over the samples whose image loaded; the others' messages go in
    ``missing_images`` (a batch may then hold no ``image`` at all: consumers skip it)."""

    missing = [s["missing_image"] for s in samples if "missing_image" in s]
    good = [s for s in samples if "missing_image" not in s]
    batch = default_collate(good) if good else {}
    batch["missing_images"] = missing
    return batch


def _affine_scale(affine: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine)[:, :2]))))


def crop_labels(records: Sequence[dict], input_size: int, padding: float) -> dict[str, np.ndarray]:
    """Targets (N x 2J), visibility (N x J) and affines (N x 2 x 3) in the unaugmented crop frame, and
    ``cov_true`` (N x 2J x 2J) there too when every record knows its label noise.

    Needs no image: the crop follows from the person box alone. This is the frame the embedding
    bank's pseudo-labels live in.
    """
    targets, vis, affines, covs = [], [], [], []
    for rec in records:
        center, size = record_crop_source(rec, padding)
        a = crop_affine(center, size, input_size)
        joints = np.asarray(rec["joints"], dtype=np.float64)
        v = np.asarray(rec["visibility"], dtype=np.float32) * np.isfinite(joints).all(axis=1)
        pts = affine_points(a, np.nan_to_num(joints))
        v = v * ((pts >= 0) & (pts <= input_size - 1)).all(axis=1)
        targets.append(pts.reshape(-1))
        vis.append(v)
        affines.append(a)
        if rec.get("cov_true") is not None:
            covs.append(affine_covariance(a, np.asarray(rec["cov_true"], dtype=np.float64)))
    out = {"targets": np.asarray(targets, dtype=np.float32), "visibility": np.asarray(vis, dtype=np.float32),
           "affines": np.asarray(affines, dtype=np.float64)}
    if records and len(covs) == len(records):
        out["cov_true"] = np.asarray(covs)
    return out
