"""Joint sets: names, left/right flip pairs, limbs for drawing, and maps onto the common 14 joints.

Coordinates everywhere are flat ``[x0, y0, x1, y1, ...]`` in joint order, so a skeleton's joint
order fixes the order of the 2J-dimensional mean and of the 2J x 2J covariance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    # Limb colour group for drawing: "left", "right" or "centre", one per limb.
    limb_sides: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        for a, b in (*self.flip_pairs, *self.limbs):
            if not (0 <= a < n and 0 <= b < n):
                raise ValueError(f"skeleton {self.name!r}: joint index out of range in pair ({a}, {b})")
        if not self.limb_sides:
            object.__setattr__(self, "limb_sides", tuple(self._side(a, b) for a, b in self.limbs))

    def _side(self, a: int, b: int) -> str:
        names = (self.joint_names[a], self.joint_names[b])
        right = any(n.startswith("r_") for n in names)
        left = any(n.startswith("l_") for n in names)
        return "right" if right and not left else "left" if left and not right else "centre"

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation p with ``flipped_joints = joints[p]`` after a horizontal mirror."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def flip_coordinate_index(self) -> np.ndarray:
        """The same permutation on the flat 2J coordinate vector (for means and covariances)."""
        p = self.flip_index
        return np.stack([2 * p, 2 * p + 1], axis=1).reshape(-1)

    @property
    def oks_sigmas(self) -> np.ndarray:
        """Per-joint OKS constants (COCO's ``sigmas``; kappa = 2 sigma), from ``OKS_SIGMAS`` by joint name."""
        missing = [n for n in self.joint_names if n not in OKS_SIGMAS]
        if missing:
            raise KeyError(f"skeleton {self.name!r}: no OKS sigma for joints {missing}; pass sigmas explicitly")
        return np.array([OKS_SIGMAS[n] for n in self.joint_names])

    def index(self, name: str) -> int:
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"skeleton {self.name!r} has no joint {name!r}; joints: {self.joint_names}") from None


# COCO's published per-keypoint OKS sigmas (pycocotools' ``kpt_oks_sigmas``), by joint name. COCO has no
# neck, head top, pelvis or thorax; for those we take what CrowdPose published for its head and neck
# (0.079, the shoulders' value) and the hips' value for the pelvis: a head top is about as hard to place
# as a shoulder, and a pelvis is placed from the hips.
OKS_SIGMAS = {
    "nose": 0.026, "l_eye": 0.025, "r_eye": 0.025, "l_ear": 0.035, "r_ear": 0.035,
    "l_shoulder": 0.079, "r_shoulder": 0.079, "l_elbow": 0.072, "r_elbow": 0.072, "l_wrist": 0.062,
    "r_wrist": 0.062, "l_hip": 0.107, "r_hip": 0.107, "l_knee": 0.087, "r_knee": 0.087, "l_ankle": 0.089,
    "r_ankle": 0.089,
    "neck": 0.079, "head_top": 0.079, "upper_neck": 0.079, "thorax": 0.079, "pelvis": 0.107,
}

LSP14 = Skeleton(
    name="lsp14",
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
        "neck", "head_top",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)),
    limbs=(
        (0, 1), (1, 2), (5, 4), (4, 3), (2, 3),
        (6, 7), (7, 8), (11, 10), (10, 9),
        (8, 12), (9, 12), (12, 13), (2, 8), (3, 9),
    ),
)

MPII16 = Skeleton(
    name="mpii16",
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    limbs=(
        (0, 1), (1, 2), (2, 6), (5, 4), (4, 3), (3, 6), (6, 7), (7, 8), (8, 9),
        (10, 11), (11, 12), (12, 7), (15, 14), (14, 13), (13, 7),
    ),
)

COCO17 = Skeleton(
    name="coco17",
    joint_names=(
        "nose", "l_eye", "r_eye", "l_ear", "r_ear",
        "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
        "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    limbs=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
        (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
    ),
)

# The common skeleton MPII + LSP + LSP-extended (+ COCO) train on is LSP-14.
COMMON14 = LSP14

SKELETONS = {s.name: s for s in (LSP14, MPII16, COCO17)}


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; expected one of {sorted(SKELETONS)}") from None


def _mapping(source: Skeleton, rows: list[dict[str, float]]) -> np.ndarray:
    weights = np.zeros((COMMON14.num_joints, source.num_joints))
    for i, row in enumerate(rows):
        for name, w in row.items():
            weights[i, source.index(name)] = w
    return weights


# Each common joint is a weighted average of source joints; an all-zero row means the source has no
# such joint (it is then always invisible). COCO has no neck or head top: the neck is the shoulders'
# midpoint, the head top is left missing rather than guessed from the face.
_MPII_TO_COMMON = _mapping(
    MPII16,
    [{n: 1.0} for n in ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
                        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
                        "upper_neck", "head_top")],
)
_COCO_TO_COMMON = _mapping(
    COCO17,
    [{n: 1.0} for n in ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
                        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")]
    + [{"l_shoulder": 0.5, "r_shoulder": 0.5}, {}],
)

COMMON_MAPPINGS = {"mpii16": _MPII_TO_COMMON, "coco17": _COCO_TO_COMMON, "lsp14": np.eye(14)}


def to_common14(source: Skeleton | str, joints: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ``joints`` (J x 2) and ``visibility`` (J,) of ``source`` onto the common 14 joints.

    A common joint is visible only when every source joint it is built from is visible.
    """
    name = source if isinstance(source, str) else source.name
    if name not in COMMON_MAPPINGS:
        raise KeyError(f"no common-14 mapping for skeleton {name!r}; expected one of {sorted(COMMON_MAPPINGS)}")
    w = COMMON_MAPPINGS[name]
    joints = np.asarray(joints, dtype=np.float64)
    vis = np.asarray(visibility, dtype=np.float64) > 0
    if joints.shape != (w.shape[1], 2):
        raise ValueError(f"{name}: expected joints of shape ({w.shape[1]}, 2), got {joints.shape}")
    used = w > 0
    out_vis = used.any(axis=1) & ~(used & ~vis[None, :]).any(axis=1)
    safe = np.where(vis[:, None], joints, 0.0)
    out = w @ safe
    out[~out_vis] = 0.0
    return out, out_vis.astype(np.float32)
