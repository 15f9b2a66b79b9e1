"""Joint sets: names, left/right flip pairs, limbs for drawing, OKS constants, and maps onto the common 14 joints.

Coordinates everywhere are flat ``[x0, y0, x1, y1, ...]`` in joint order, so a skeleton's joint
order fixes the order of the 2J-dimensional mean and of the 2J x 2J covariance.

Built in: ``coco17``, ``mpii16``, ``lsp14`` and ``common14`` (LSP's 14, what MPII + LSP merge on). Any other
keypoint set is a YAML file (``load_skeleton``)::

    name: hand5
    joints: [wrist, thumb, index, middle, little]
    flip_pairs: []                     # pairs of joint names (or indices) that swap in a mirror image
    links: [[wrist, thumb], [wrist, index], [wrist, middle], [wrist, little]]   # drawn limbs
    sigmas: [0.05, 0.03, 0.03, 0.03, 0.03]   # OKS constants per joint (optional for names COCO knows)

or comes from a COCO keypoints file's category (``skeleton_from_coco_category``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    # Limb colour group for drawing: "left", "right" or "centre", one per limb.
    limb_sides: tuple[str, ...] = field(default=())
    # OKS constants per joint; empty: COCO's published ones by joint name (``OKS_SIGMAS``).
    sigmas: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if n < 1 or len(set(self.joint_names)) != n:
            raise ValueError(f"skeleton {self.name!r}: joint names must be distinct and at least one, got "
                             f"{list(self.joint_names)}")
        for a, b in (*self.flip_pairs, *self.limbs):
            if not (0 <= a < n and 0 <= b < n):
                raise ValueError(f"skeleton {self.name!r}: joint index out of range in pair ({a}, {b})")
        if self.sigmas and (len(self.sigmas) != n or not all(np.isfinite(v) and v > 0 for v in self.sigmas)):
            raise ValueError(f"skeleton {self.name!r}: sigmas must be {n} positive numbers (one per joint), got "
                             f"{list(self.sigmas)}")
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
    def link_matrix(self) -> np.ndarray:
        """J x J bool: which joints a limb joins (both ways)."""
        links = np.zeros((self.num_joints, self.num_joints), dtype=bool)
        for a, b in self.limbs:
            links[a, b] = links[b, a] = True
        return links

    @property
    def oks_sigmas(self) -> np.ndarray:
        """Per-joint OKS constants (COCO's ``sigmas``; kappa = 2 sigma): the skeleton's own, else ``OKS_SIGMAS``
        by joint name."""
        if self.sigmas:
            return np.array(self.sigmas, dtype=np.float64)
        missing = [n for n in self.joint_names if n not in OKS_SIGMAS]
        if missing:
            raise KeyError(f"skeleton {self.name!r}: no OKS sigma for joints {missing}; give the skeleton's "
                           "'sigmas' in its YAML file, or data.oks_sigmas")
        return np.array([OKS_SIGMAS[n] for n in self.joint_names])

    def to_dict(self) -> dict:
        """The YAML / JSON form ``skeleton_from_dict`` reads back (stored in model files and results)."""
        return {"name": self.name, "joints": list(self.joint_names), "flip_pairs": [list(p) for p in self.flip_pairs],
                "links": [list(p) for p in self.limbs], "sigmas": [float(v) for v in self.sigmas] or None}

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

SKELETONS = {**{s.name: s for s in (LSP14, MPII16, COCO17)}, "common14": COMMON14}


def get_skeleton(spec: str | dict | Skeleton) -> Skeleton:
    """A built-in skeleton by name, a YAML skeleton file (a path ending in .yaml or .yml), a dict in
    ``Skeleton.to_dict``'s form, or a Skeleton."""
    if isinstance(spec, Skeleton):
        return spec
    if isinstance(spec, dict):
        return skeleton_from_dict(spec)
    if str(spec).endswith((".yaml", ".yml")):
        return load_skeleton(spec)
    try:
        return SKELETONS[spec]
    except KeyError:
        raise KeyError(f"unknown skeleton {spec!r}; expected one of {sorted(SKELETONS)} or a skeleton YAML "
                       "file") from None


def _joint_ref(ref, names: list[str], where: str) -> int:
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise ValueError(f"{where}: {ref!r} is neither a joint name nor an index")
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise ValueError(f"{where}: joint index {ref} out of range for {len(names)} joints")
        return ref
    if ref not in names:
        raise ValueError(f"{where}: unknown joint {ref!r}; joints: {names}")
    return names.index(ref)


def skeleton_from_dict(d: dict, source: str = "skeleton") -> Skeleton:
    """A Skeleton from ``{name, joints, flip_pairs, links, sigmas}`` (pairs by joint name or index); errors
    name ``source`` and the key."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a mapping with name, joints, flip_pairs, links and sigmas, got "
                         f"{type(d).__name__}")
    unknown = sorted(set(d) - {"name", "joints", "flip_pairs", "links", "sigmas"})
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; expected name, joints, flip_pairs, links, sigmas")
    names = d.get("joints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: 'joints' must be a non-empty list of joint names, got {names!r}")

    def pairs(key: str) -> tuple[tuple[int, int], ...]:
        value = d.get(key) or []
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
            raise ValueError(f"{source}: '{key}' must be a list of [joint, joint] pairs, got {value!r}")
        return tuple((_joint_ref(a, names, f"{source}: {key}"), _joint_ref(b, names, f"{source}: {key}"))
                     for a, b in value)

    sigmas = d.get("sigmas") or ()
    if not isinstance(sigmas, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in sigmas):
        raise ValueError(f"{source}: 'sigmas' must be a list of numbers, got {sigmas!r}")
    name = d.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise ValueError(f"{source}: 'name' must be a string, got {name!r}")
    flips, links = pairs("flip_pairs"), pairs("links")
    try:
        return Skeleton(name=name, joint_names=tuple(names), flip_pairs=flips, limbs=links,
                        sigmas=tuple(float(v) for v in sigmas))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_skeleton(path) -> Skeleton:
    """A skeleton YAML file (see the module docstring)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"skeleton file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a readable YAML file ({e})") from None
    return skeleton_from_dict(data, str(p))


def coco_joint_name(name: str) -> str:
    """COCO's keypoint names ('left_eye') in this package's form ('l_eye')."""
    for long, short in (("left_", "l_"), ("right_", "r_")):
        if name.startswith(long):
            return short + name[len(long):]
    return name


def coco_keypoint_names(skeleton: Skeleton) -> list[str]:
    """A skeleton's joint names as a COCO category lists them ('l_eye' -> 'left_eye'): ``coco_joint_name``'s
    inverse."""
    return [("left_" + n[2:]) if n.startswith("l_") else ("right_" + n[2:]) if n.startswith("r_") else n
            for n in skeleton.joint_names]


def skeleton_from_coco_category(category: dict, source: str = "category") -> Skeleton:
    """The skeleton of a COCO keypoints category: ``coco17`` when its keypoints are COCO's, else one made of its
    ``keypoints`` names and its ``skeleton`` links (1-based, COCO's convention), with left/right flip pairs
    found by name (l_/left_ and r_/right_)."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{source}: 'keypoints' must be a non-empty list of keypoint names, got {names!r}")
    short = [coco_joint_name(n) for n in names]
    if tuple(short) == COCO17.joint_names:
        return COCO17
    links = category.get("skeleton") or []
    if not isinstance(links, list) or not all(isinstance(p, list) and len(p) == 2 and all(
            isinstance(v, int) and 1 <= v <= len(names) for v in p) for p in links):
        raise ValueError(f"{source}: 'skeleton' must be a list of 1-based [keypoint, keypoint] index pairs up to "
                         f"{len(names)}, got {links!r}")
    flips = tuple((i, short.index("r_" + n[2:])) for i, n in enumerate(short)
                  if n.startswith("l_") and "r_" + n[2:] in short)
    return Skeleton(name=str(category.get("name") or "keypoints"), joint_names=tuple(short), flip_pairs=flips,
                    limbs=tuple((a - 1, b - 1) for a, b in links))


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


def occlusion_to_common14(source: Skeleton | str, occluded: np.ndarray) -> np.ndarray:
    """Map occlusion flags (J floats, 1 = hidden, NaN = unknown) of ``source`` onto the common 14 joints: a common
    joint is hidden when any source joint it is built from is, known only when all of them are."""
    name = source if isinstance(source, str) else source.name
    if name not in COMMON_MAPPINGS:
        raise KeyError(f"no common-14 mapping for skeleton {name!r}; expected one of {sorted(COMMON_MAPPINGS)}")
    used = COMMON_MAPPINGS[name] > 0
    flags = np.asarray(occluded, dtype=np.float64).reshape(-1)
    if flags.shape != (used.shape[1],):
        raise ValueError(f"{name}: expected {used.shape[1]} occlusion flags, got {flags.shape[0]}")
    known = used.any(axis=1) & ~(used & np.isnan(flags)[None, :]).any(axis=1)
    hidden = (used & (np.nan_to_num(flags) > 0)[None, :]).any(axis=1)
    return np.where(known, hidden, np.nan).astype(np.float32)
