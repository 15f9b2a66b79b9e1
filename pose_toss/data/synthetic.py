"""Procedurally posed 14-joint figures with label noise whose exact covariance is known.

Each sample is a stick-and-block figure in LSP joint order, rendered with OpenCV over a cluttered
background. Visible cues on a limb -- an occluding patch, local blur, or a faded limb -- make that
limb's label noise large, elongated along the limb and correlated between the two joints it joins;
joints without a cue get isotropic noise the size real annotators disagree by. The noise is drawn from
a factor model

    noise = s0 * xi0 + F @ xi1,    xi ~ N(0, I),    so   cov_true = diag(s0)^2 + F F^T

exactly, which is what makes covariance quality measurable on this data.

The clean noise (``label_noise="annotators"``, the default) is COCO's: each joint's per-axis std is
sigma_j s / sqrt(2), sigma_j its OKS sigma (the std of redundant annotations around their consensus, in
units of the object scale s) and s^2 the person's segmented area, about half its box's area as in COCO.
A cue raises the std along its limb: at severity 1 an occluder makes the distal joint's along-limb std
``cue_gain`` (4) times its clean std, blur and fading less. ``label_noise="height"`` is the earlier model:
``clean_noise`` and ``cue_noise`` as fractions of the figure's height for every joint.

Determinism: sample ``i`` depends only on ``(seed, i)``. Its annotation (pose, cues, noise) and its
rendering use separate random streams, so ``annotation(i)`` is cheap and equals ``record(i)``'s labels.
The scene, each cue's drawing and the sensor noise have streams of their own too, so ``with_cues(i, ...)``
renders the same figure in the same scene with other cues: an intervention that changes nothing else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pose_toss.skeletons import LSP14

J = LSP14.num_joints
D = 2 * J
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE = range(6)
R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST, NECK, HEAD_TOP = range(6, 14)

# Limbs that can carry a cue, as (proximal, distal) joints.
CUE_LIMBS = (
    (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
    (R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE),
)
CUE_KINDS = ("occluder", "blur", "fade")
# How strongly each cue kind raises the noise (occluders hide the joint, blur and fading smear it).
CUE_STRENGTH = {"occluder": 1.0, "blur": 0.6, "fade": 0.5}
# Figure height in body units: head top to ankles of a standing canonical figure.
BODY_HEIGHT = 1.0
LABEL_NOISE_MODELS = ("annotators", "height")
# A COCO person's segmented area is about half its box's area: the object scale s of OKS is the square root.
SEGMENT_AREA_PER_BOX_AREA = 0.5
# Annotators' per-joint std in units of s: COCO's OKS sigmas (head top and neck: CrowdPose's 0.079).
ANNOTATOR_SIGMAS = LSP14.oks_sigmas


def object_scale(bbox: np.ndarray) -> float:
    """OKS's object scale s of a person box [x, y, w, h]: sqrt of the segmented area it implies."""
    return math.sqrt(SEGMENT_AREA_PER_BOX_AREA * float(bbox[2]) * float(bbox[3]))


@dataclass(frozen=True)
class Cue:
    kind: str
    limb: tuple[int, int]
    severity: float  # in [0.35, 1]


def limb_cues(cue_lists: Sequence[Sequence[Cue]]) -> tuple[np.ndarray, np.ndarray]:
    """Two N x len(CUE_LIMBS) arrays: each limb's cue strength (severity x the kind's CUE_STRENGTH, the
    strongest when a limb has several), 0 when clean, and that cue's index in CUE_KINDS, -1 when clean.
    What ``metrics.cue_metrics`` reads as ``limb_cue`` and ``limb_kind`` with ``limbs = CUE_LIMBS``."""
    column = {limb: n for n, limb in enumerate(CUE_LIMBS)}
    strengths = np.zeros((len(cue_lists), len(CUE_LIMBS)))
    kinds = np.full(strengths.shape, -1, dtype=np.int64)
    for i, cues in enumerate(cue_lists):
        for cue in cues:
            n, value = column[tuple(cue.limb)], cue.severity * CUE_STRENGTH[cue.kind]
            if value > strengths[i, n]:
                strengths[i, n], kinds[i, n] = value, CUE_KINDS.index(cue.kind)
    return strengths, kinds


def occluded_joints(cues: Sequence[Cue], num_joints: int = J) -> np.ndarray:
    """Each joint's occlusion flag (J floats, 1 = hidden), as COCO's v = 1 marks a labelled but hidden keypoint:
    the distal joint of every limb that carries an occluder (the generator centres it on the limb's last third and
    sizes it to cover that end)."""
    flags = np.zeros(num_joints, dtype=np.float32)
    for cue in cues:
        if cue.kind == "occluder":
            flags[cue.limb[1]] = 1.0
    return flags


def record_cues(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """``limb_cues`` of records that all know their cues (synthetic data), else None."""
    if not records or not all("cues" in r for r in records):
        return None
    return limb_cues([r["cues"] for r in records])


def record_cue_strengths(records: Sequence[dict]) -> np.ndarray | None:
    """The strengths of ``record_cues``, or None."""
    cues = record_cues(records)
    return None if cues is None else cues[0]


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _unit(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` radians from straight down (image y grows downwards)."""
    return np.array([math.sin(angle), math.cos(angle)])


def articulated_pose(rng: np.random.Generator) -> np.ndarray:
    """A 14x2 pose in body units (pelvis at the origin, y down), facing the camera.

    Joint-angle ranges are loose human ranges; limb lengths are foreshortened at random to mimic
    out-of-plane rotation.
    """
    p = np.zeros((J, 2))
    lean = rng.uniform(-0.25, 0.25)
    up = -_unit(lean)  # torso direction, pointing up
    side = np.array([-up[1], up[0]])  # from the figure's right to its left (image left -> right)
    yaw = abs(math.cos(rng.uniform(-1.2, 1.2)))  # foreshortens the widths
    torso = 0.30 * rng.uniform(0.9, 1.1)
    p[NECK] = torso * up
    p[HEAD_TOP] = p[NECK] + 0.17 * (_rot(rng.uniform(-0.4, 0.4)) @ up)
    shoulder_centre = p[NECK] - 0.03 * up
    sw = 0.11 * rng.uniform(0.8, 1.1) * max(yaw, 0.35)
    hw = 0.07 * rng.uniform(0.8, 1.1) * max(yaw, 0.35)
    p[R_SHOULDER], p[L_SHOULDER] = shoulder_centre - sw * side, shoulder_centre + sw * side
    p[R_HIP], p[L_HIP] = -hw * side, hw * side
    torso_angle = lean  # angle of "down" along the torso

    def chain(root: int, mid: int, end: int, l1: float, l2: float, outward: float,
              abduct: tuple[float, float], flex: tuple[float, float]) -> None:
        a1 = torso_angle + outward * rng.uniform(*abduct)
        p[mid] = p[root] + l1 * rng.uniform(0.7, 1.0) * _unit(a1)
        a2 = a1 + rng.choice((-1.0, 1.0)) * rng.uniform(*flex)
        p[end] = p[mid] + l2 * rng.uniform(0.7, 1.0) * _unit(a2)

    # The figure's right side is on the image's left: "outward" is negative x for right limbs.
    arm_abduct, arm_flex = (-0.35, 2.7), (0.0, 2.4)
    leg_abduct, leg_flex = (-0.3, 1.0), (0.0, 1.9)
    chain(R_SHOULDER, R_ELBOW, R_WRIST, 0.16, 0.14, -1.0, arm_abduct, arm_flex)
    chain(L_SHOULDER, L_ELBOW, L_WRIST, 0.16, 0.14, 1.0, arm_abduct, arm_flex)
    chain(R_HIP, R_KNEE, R_ANKLE, 0.25, 0.25, -1.0, leg_abduct, leg_flex)
    chain(L_HIP, L_KNEE, L_ANKLE, 0.25, 0.25, 1.0, leg_abduct, leg_flex)
    return p


def load_lsp_poses(path: str) -> np.ndarray:
    """Poses (N x 14 x 2) from an LSP or LSP-extended ``joints.mat``, normalised to body units.

    Only poses whose 14 joints are all annotated inside the image are kept. Each pose is centred on
    its mid-hip and scaled so the mid-hip to neck distance is the canonical torso length.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (OSError, ValueError, MatReadError) as e:
        raise ValueError(f"{path}: cannot read as a MATLAB file ({e})") from None
    if "joints" not in mat:
        raise ValueError(f"{path}: missing field 'joints' (expected an LSP joints.mat)")
    arr = np.asarray(mat["joints"], dtype=np.float64)
    if arr.ndim != 3 or J not in arr.shape or 3 not in arr.shape[:2]:
        raise ValueError(f"{path}: field 'joints' has shape {arr.shape}; expected 3x14xN (LSP) or 14x3xN (LSPET)")
    xy = arr[:2].transpose(2, 1, 0) if arr.shape[0] == 3 else arr[:, :2].transpose(2, 0, 1)
    ok = np.isfinite(xy).all(axis=(1, 2)) & (xy > 0).all(axis=(1, 2))
    xy = xy[ok]
    mid_hip = 0.5 * (xy[:, R_HIP] + xy[:, L_HIP])
    torso = np.linalg.norm(xy[:, NECK] - mid_hip, axis=1)
    good = torso > 1.0
    poses = (xy[good] - mid_hip[good, None]) / torso[good, None, None] * 0.30
    if len(poses) == 0:
        raise ValueError(f"{path}: no pose with all 14 joints annotated")
    return poses


# Validation and test figures come from index ranges far beyond any training set size.
SPLIT_OFFSETS = {"train": 0, "val": 1 << 40, "test": 2 << 40}


class SyntheticPoseDataset(Sequence):
    """Deterministic synthetic pose data; ``record(i)`` gives image, labels and the true covariance."""

    skeleton = LSP14

    def __init__(self, num_samples: int, image_size: int = 128, seed: int = 0, *,
                 poses_from: str | None = None, cue_prob: float = 0.6, max_cues: int = 2,
                 cue_kind_weights: Sequence[float] = (1.0, 1.0, 1.0), label_noise: str = "annotators",
                 cue_gain: float = 4.0, clean_noise: float = 0.006, cue_noise: float = 0.05, offset: int = 0,
                 cache_images: bool = False) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {image_size}")
        if label_noise not in LABEL_NOISE_MODELS:
            raise ValueError(f"label_noise must be one of {LABEL_NOISE_MODELS}, got {label_noise!r}")
        if not cue_gain >= 1:
            raise ValueError(f"cue_gain must be >= 1 (a cue never lowers the noise), got {cue_gain}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        weights = np.asarray(cue_kind_weights, dtype=np.float64)
        if weights.shape != (len(CUE_KINDS),) or not ((weights >= 0).all() and weights.sum() > 0):
            raise ValueError(f"cue_kind_weights must be {len(CUE_KINDS)} weights >= 0 ({', '.join(CUE_KINDS)}) with "
                             f"a positive sum, got {list(cue_kind_weights)}")
        self.cue_prob = float(cue_prob)
        self.max_cues = int(max_cues)
        self.cue_kind_weights = tuple(float(w) for w in weights)
        # Equal weights draw the kind as before (an integer draw), so figures made without weights are unchanged.
        self._kind_probs = None if np.all(weights == weights[0]) else weights / weights.sum()
        self.label_noise = label_noise
        self.cue_gain = float(cue_gain)
        self.clean_noise = float(clean_noise)
        self.cue_noise = float(cue_noise)
        self.poses_from = poses_from
        self.offset = int(offset)  # sample i is generated as global index offset + i: disjoint splits
        self._poses = load_lsp_poses(poses_from) if poses_from else None
        # Rendering is about half the training pipeline's cost, and sample i is the same every epoch.
        self._cache: dict[int, dict] | None = {} if cache_images else None

    @classmethod
    def from_config(cls, cfg, split: str = "train") -> SyntheticPoseDataset:
        """The train, val or test split: same generator, disjoint index ranges."""
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {list(SPLIT_OFFSETS)}, got {split!r}")
        num = {"train": cfg.num_samples, "val": cfg.val_samples, "test": cfg.test_samples}[split]
        return cls(num, cfg.image_size, cfg.seed, poses_from=cfg.poses_from, cue_prob=cfg.cue_prob,
                   max_cues=cfg.max_cues, cue_kind_weights=cfg.cue_kind_weights, label_noise=cfg.label_noise,
                   cue_gain=cfg.cue_gain, clean_noise=cfg.clean_noise, cue_noise=cfg.cue_noise,
                   offset=SPLIT_OFFSETS[split], cache_images=cfg.cache_images)

    @property
    def generator_settings(self) -> dict:
        """What decides the labels besides the seed (written beside generated data)."""
        return {"cue_prob": self.cue_prob, "max_cues": self.max_cues,
                "cue_kind_weights": list(self.cue_kind_weights), "label_noise": self.label_noise,
                "cue_gain": self.cue_gain, "clean_noise": self.clean_noise, "cue_noise": self.cue_noise,
                "poses_from": self.poses_from}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.record(i)

    def _rngs(self, i: int) -> tuple[np.random.Generator, np.random.Generator]:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample index {i} out of range for {self.num_samples} samples")
        label_seq, render_seq = np.random.SeedSequence([self.seed, self.offset + i]).spawn(2)
        return np.random.default_rng(label_seq), np.random.default_rng(render_seq)

    # ---------------------------------------------------------------------------------------------
    # Labels
    # ---------------------------------------------------------------------------------------------

    def _body_pose(self, rng: np.random.Generator) -> np.ndarray:
        if self._poses is None:
            return articulated_pose(rng)
        pose = self._poses[rng.integers(len(self._poses))].copy()
        pose += rng.normal(0.0, 0.01, pose.shape)
        if rng.random() < 0.5:  # mirror, keeping joint names right
            pose[:, 0] *= -1
            pose = pose[LSP14.flip_index]
        return pose

    def annotation(self, i: int) -> dict:
        """Everything in ``record(i)`` except the image."""
        rng, _ = self._rngs(i)
        return self._annotate(rng)

    def _annotate(self, rng: np.random.Generator) -> dict:
        s = self.image_size
        body = self._body_pose(rng)
        height_px = s * rng.uniform(0.55, 0.85) / BODY_HEIGHT
        angle = float(np.clip(rng.normal(0.0, 0.25), -0.8, 0.8))
        pts = body @ _rot(angle).T * height_px
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        centre = np.full(2, (s - 1) / 2) + rng.uniform(-0.06, 0.06, 2) * s
        joints_true = pts - 0.5 * (lo + hi) + centre

        cues: list[Cue] = []
        if rng.random() < self.cue_prob and self.max_cues > 0:
            n = int(rng.integers(1, self.max_cues + 1))
            for k in rng.choice(len(CUE_LIMBS), size=n, replace=False):
                kind = str(rng.choice(CUE_KINDS, p=self._kind_probs))
                cues.append(Cue(kind, CUE_LIMBS[int(k)], float(rng.uniform(0.35, 1.0))))

        return self.labels(joints_true, height_px, cues, rng)

    def labels(self, joints_true: np.ndarray, height_px: float, cues: Sequence[Cue], rng: np.random.Generator
               ) -> dict:
        """A figure's annotation: its labels drawn from the noise model around ``joints_true`` (and the label
        noise's covariance), visibility inside the image, person box, cues and size."""
        bbox = _person_box(joints_true, height_px)
        clean_std, factors = self.noise_model(joints_true, height_px, cues, bbox)
        noise = clean_std * rng.standard_normal(D) + factors @ rng.standard_normal(factors.shape[1])
        cov = np.diag(clean_std**2) + factors @ factors.T
        inside = ((joints_true >= 0) & (joints_true <= self.image_size - 1)).all(axis=1)
        return {
            "joints": joints_true + noise.reshape(J, 2),
            "joints_true": joints_true,
            "visibility": inside.astype(np.float32),
            "cov_true": 0.5 * (cov + cov.T),
            "bbox": bbox,
            "area": SEGMENT_AREA_PER_BOX_AREA * float(bbox[2] * bbox[3]),
            "cues": list(cues),
            "occluded": occluded_joints(cues),
            "person_height": height_px,
            "skeleton": LSP14.name,
        }

    def clean_std(self, height_px: float, bbox: np.ndarray) -> np.ndarray:
        """Per-joint std (J) of a clean joint's label noise on each axis, pixels."""
        if self.label_noise == "height":
            return np.full(J, self.clean_noise * height_px)
        return ANNOTATOR_SIGMAS * object_scale(bbox) / math.sqrt(2.0)

    def noise_model(self, joints: np.ndarray, height_px: float, cues: Sequence[Cue], bbox: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-coordinate clean std (D) and the D x K factor matrix contributed by the cues."""
        per_joint = self.clean_std(height_px, _person_box(joints, height_px) if bbox is None else bbox)
        cols = []
        for cue in cues:
            a, b = cue.limb
            along = joints[b] - joints[a]
            along = along / max(np.linalg.norm(along), 1e-6)
            across = np.array([-along[1], along[0]])
            if self.label_noise == "height":
                unit = self.cue_noise * height_px
            else:  # the distal joint's along-limb std is cue_gain x its clean std for an occluder at severity 1
                unit = math.sqrt(self.cue_gain**2 - 1.0) * per_joint[b]
            sc = unit * cue.severity * CUE_STRENGTH[cue.kind]
            # Shared along-limb shift (correlates a and b), the distal end's own slide (largest),
            # the proximal end's, and a small shared sideways shift.
            for weight_a, weight_b, direction, mag in (
                (1.0, 1.0, along, 0.6), (0.0, 1.0, along, 0.8), (1.0, 0.0, along, 0.3), (1.0, 1.0, across, 0.25)
            ):
                col = np.zeros(D)
                col[2 * a: 2 * a + 2] = weight_a * direction * mag * sc
                col[2 * b: 2 * b + 2] = weight_b * direction * mag * sc
                cols.append(col)
        factors = np.stack(cols, axis=1) if cols else np.zeros((D, 0))
        return np.repeat(per_joint, 2), factors

    # ---------------------------------------------------------------------------------------------
    # Rendering
    # ---------------------------------------------------------------------------------------------

    def record(self, i: int) -> dict:
        if self._cache is not None and i in self._cache:
            return dict(self._cache[i])  # the arrays are read-only: a consumer cannot change the cached figure
        label_rng, render_rng = self._rngs(i)
        rec = self._annotate(label_rng)
        rec["image"] = render_figure(self.image_size, rec["joints_true"], rec["person_height"], rec["cues"],
                                     render_rng)
        rec["index"] = i
        if self._cache is not None:
            for value in rec.values():
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
            self._cache[i] = rec
            return dict(rec)
        return rec

    def with_cues(self, i: int, cues: Sequence[Cue]) -> dict:
        """Sample ``i`` with ``cues`` in place of its own: the same pose, scene, colours and sensor noise,
        labels drawn from the noise model under the new cues (an intervention: nothing else changes)."""
        for cue in cues:
            if cue.kind not in CUE_KINDS or tuple(cue.limb) not in CUE_LIMBS:
                raise ValueError(f"cue {cue}: expected a kind of {CUE_KINDS} on a limb of {CUE_LIMBS}")
        label_rng, render_rng = self._rngs(i)
        own = self._annotate(label_rng)
        rec = self.labels(own["joints_true"], own["person_height"], cues, label_rng)
        rec["image"] = render_figure(self.image_size, rec["joints_true"], rec["person_height"], rec["cues"],
                                     render_rng)
        rec["index"] = i
        return rec


def _person_box(joints: np.ndarray, height_px: float) -> np.ndarray:
    """[x, y, w, h] around the figure, with room for the head and limb widths."""
    margin = 0.06 * height_px
    lo, hi = joints.min(axis=0) - margin, joints.max(axis=0) + margin
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _pt(p: np.ndarray, shift: int = 4) -> tuple[int, int]:
    return int(round(p[0] * (1 << shift))), int(round(p[1] * (1 << shift)))


def render_figure(size: int, joints: np.ndarray, height_px: float, cues: Sequence[Cue],
                  rng: np.random.Generator) -> np.ndarray:
    """Render the figure (true joints) with its cues over clutter; H x W x 3 uint8 RGB.

    The scene, each cue (by its limb and kind) and the sensor noise draw from streams of their own seeded
    by ``rng``: the same ``rng`` with other cues gives the same picture but for the cues themselves."""
    sh = 4  # sub-pixel bits for OpenCV drawing
    cue_seed, sensor_seed = (int(v) for v in rng.integers(0, 2**62, 2))
    # Background: a bilinear blend of random corner colours, a smooth gradient at any angle.
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    img = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)

    for _ in range(int(rng.integers(4, 10))):  # clutter: shapes and limb-like bars
        kind = rng.integers(4)
        col = _colour(rng)
        p = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.03, 0.2) * size
        if kind == 0:
            cv2.circle(img, _pt(p), int(r * 16), col, -1 if rng.random() < 0.6 else 2, cv2.LINE_AA, sh)
        elif kind == 1:
            q = p + rng.uniform(-1, 1, 2) * r * 2
            cv2.rectangle(img, _pt(p), _pt(q), col, -1, cv2.LINE_AA, sh)
        elif kind == 2:
            q = p + rng.uniform(-1, 1, 2) * r * 3
            cv2.line(img, _pt(p), _pt(q), col, max(1, int(0.04 * height_px)), cv2.LINE_AA, sh)
        else:
            axes = (int(r * 16), int(r * rng.uniform(0.3, 1.0) * 16))
            cv2.ellipse(img, _pt(p), axes, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA, sh)

    side_colour = {"right": _colour(rng, 30, 256), "left": _colour(rng, 30, 256), "centre": _colour(rng, 30, 256)}
    faded = {c.limb: c.severity for c in cues if c.kind == "fade"}
    bg_mean = np.array(cv2.mean(img)[:3], np.float32) if faded else None
    width = height_px * rng.uniform(0.035, 0.05)

    torso = np.stack([joints[R_SHOULDER], joints[L_SHOULDER], joints[L_HIP], joints[R_HIP]])
    cv2.fillPoly(img, [np.round(torso * (1 << sh)).astype(np.int32)], side_colour["centre"], cv2.LINE_AA, sh)
    head_centre = 0.45 * joints[NECK] + 0.55 * joints[HEAD_TOP]
    head_r = 0.55 * np.linalg.norm(joints[HEAD_TOP] - joints[NECK])
    cv2.circle(img, _pt(head_centre), int(head_r * 16), side_colour["centre"], -1, cv2.LINE_AA, sh)
    cv2.line(img, _pt(joints[NECK]), _pt(0.5 * (joints[R_SHOULDER] + joints[L_SHOULDER])), side_colour["centre"],
             max(1, int(width)), cv2.LINE_AA, sh)
    # Far (left) limbs first so the near side overlaps them.
    order = [(L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE),
             (R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST)]
    for a, b in order:
        col = np.array(side_colour["left" if a in (L_SHOULDER, L_ELBOW, L_HIP, L_KNEE) else "right"], np.float32)
        w = width * (1.2 if a in (R_HIP, L_HIP, R_KNEE, L_KNEE) else 0.9)
        if (a, b) in faded:  # a faded limb melts into the background and thins
            k = 0.8 * faded[(a, b)]
            col = (1 - k) * col + k * bg_mean
            w *= 1 - 0.5 * faded[(a, b)]
        col_t = tuple(int(c) for c in col)
        cv2.line(img, _pt(joints[a]), _pt(joints[b]), col_t, max(1, int(round(w))), cv2.LINE_AA, sh)
        joint_col = tuple(int(c * 0.6) for c in col)
        cv2.circle(img, _pt(joints[b]), int(0.55 * w * 16), joint_col, -1, cv2.LINE_AA, sh)

    for cue in cues:
        a, b = cue.limb
        cue_rng = np.random.default_rng([cue_seed, CUE_LIMBS.index(tuple(cue.limb)), CUE_KINDS.index(cue.kind)])
        if cue.kind == "occluder":  # a patch over the distal part of the limb, sized by severity
            centre = joints[a] + cue_rng.uniform(0.65, 1.0) * (joints[b] - joints[a])
            half = (0.05 + 0.09 * cue.severity) * height_px * cue_rng.uniform(0.8, 1.2, 2)
            col = _colour(cue_rng)
            if cue_rng.random() < 0.5:
                cv2.rectangle(img, _pt(centre - half), _pt(centre + half), col, -1, cv2.LINE_AA, sh)
            else:
                axes = (int(half[0] * 16), int(half[1] * 16))
                cv2.ellipse(img, _pt(centre), axes, float(cue_rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA, sh)
        elif cue.kind == "blur":  # smear the region around the limb, more for higher severity
            pad = 0.08 * height_px
            x0, y0 = np.floor(np.minimum(joints[a], joints[b]) - pad).astype(int)
            x1, y1 = np.ceil(np.maximum(joints[a], joints[b]) + pad).astype(int)
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
            if x1 - x0 > 2 and y1 - y0 > 2:
                sigma = max(0.5, cue.severity * 0.035 * height_px)
                img[y0:y1, x0:x1] = cv2.GaussianBlur(img[y0:y1, x0:x1], (0, 0), sigma)

    # Sensor noise: a window of a fixed standard-normal field (cheap, and still a pure function of rng).
    sensor = np.random.default_rng(sensor_seed)
    field = _noise_field(size)
    ox, oy = sensor.integers(0, size, 2)
    noisy = cv2.scaleAdd(field[oy:oy + size, ox:ox + size], float(sensor.uniform(2.0, 10.0)), img.astype(np.float32))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _noise_field(size: int) -> np.ndarray:
    return np.random.default_rng(20250101).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
