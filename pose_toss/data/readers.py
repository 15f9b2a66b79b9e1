"""Readers for the real datasets: LSP, LSP-extended, MPII (official .mat and the common json) and COCO.

Each returns a list of records (plain dicts) in the common form the pipeline consumes:

- ``image_path``: the image file (read lazily by ``PoseDataset``; a reader needs annotations only);
- ``joints``: J x 2 float pixels, 0-based (pixel centres at integers);
- ``visibility``: J floats, 1 where the joint's coordinate is annotated and usable, else 0;
- the crop source: ``bbox`` ([x, y, w, h]) or ``center`` + ``scale`` (MPII: ``scale * 200`` px is the
  person's height);
- ``skeleton`` (its joint order), ``dataset``, ``split`` where the file defines one, and ``head_size``
  (PCKh) where known.

Joints that are NaN or negative are masked here; joints outside the image are masked once the image is
read (``PoseDataset``), since annotations alone do not give the image size.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from pose_toss.skeletons import (
    COCO17,
    SKELETONS,
    coco_keypoint_names,
    get_skeleton,
    occlusion_to_common14,
    skeleton_from_coco_category,
    to_common14,
)

# MPII's head size for PCKh: 60% of the head box's diagonal (the official evaluation's SC_BIAS).
MPII_HEAD_FACTOR = 0.6


class AnnotationError(ValueError):
    """An annotation file that is missing, unreadable or not in the expected format."""


def _usable(joints: np.ndarray) -> np.ndarray:
    """Which joints (J x 2) have coordinates: finite and not negative (files mark missing joints either way)."""
    joints = np.asarray(joints, dtype=np.float64)
    return np.isfinite(joints).all(axis=1) & (np.nan_to_num(joints, nan=-1.0) >= 0).all(axis=1)


def _mask_bad(joints: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    joints = np.asarray(joints, dtype=np.float64)
    ok = _usable(joints)
    vis = (np.asarray(visibility, dtype=np.float64) > 0) & ok
    return np.where(ok[:, None], joints, 0.0), vis.astype(np.float32)


def read_json_file(path, what: str):
    """The JSON in a file a user named; a missing file is a ``FileNotFoundError`` saying ``what`` it was meant to be
    and one that is not JSON a ``ValueError``, both naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read as JSON ({e})") from None


def _read_json(p: Path):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{p}: cannot read as JSON ({e})") from None


def _check_file(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"annotation file not found: {p}")
    return p


def read_annotation_json(path):
    """An annotation file's JSON; a missing or unreadable file is an ``AnnotationError`` naming it."""
    return _read_json(_check_file(path))


def _loadmat(path: Path, **kwargs) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(str(path), **kwargs)
    except (OSError, ValueError, MatReadError, TypeError) as e:
        raise AnnotationError(f"{path}: cannot read as a MATLAB file ({e})") from None


def _person_box(joints: np.ndarray, vis: np.ndarray, margin: float = 0.1) -> np.ndarray | None:
    """[x, y, w, h] around the visible joints plus a margin: LSP and LSP-extended give no box."""
    pts = joints[vis > 0]
    if len(pts) < 2:
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = margin * max(hi - lo)
    lo, hi = lo - pad, hi + pad
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


# --------------------------------------------------------------------------------------------------
# LSP and LSP-extended
# --------------------------------------------------------------------------------------------------


def _read_lsp_joints(mat_path, layout: str) -> np.ndarray:
    p = _check_file(mat_path)
    mat = _loadmat(p)
    if "joints" not in mat:
        raise AnnotationError(f"{p}: missing field 'joints'")
    arr = np.asarray(mat["joints"], dtype=np.float64)
    want = (3, 14) if layout == "lsp" else (14, 3)
    if arr.ndim != 3 or arr.shape[:2] != want:
        shape = "3 x 14 x N (LSP)" if layout == "lsp" else "14 x 3 x N (LSP-extended)"
        raise AnnotationError(f"{p}: field 'joints' has shape {arr.shape}; expected {shape}")
    return arr


def _lsp_records(xy: np.ndarray, vis: np.ndarray, occluded: np.ndarray, images_dir: Path, name_format: str,
                 dataset: str, splits: list[str]) -> list[dict]:
    records = []
    for i in range(len(xy)):
        joints, v = _mask_bad(xy[i], vis[i])
        box = _person_box(joints, v)
        if box is None:
            continue  # nothing to crop from: fewer than two usable joints
        records.append({"image_path": str(images_dir / name_format.format(i + 1)), "joints": joints,
                        "visibility": v, "occluded": occlusion_flags(xy[i], occluded[i]), "bbox": box,
                        "skeleton": "lsp14", "dataset": dataset, "split": splits[i], "index_in_file": i})
    return records


def occlusion_flags(joints: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """Each joint's occlusion flag (J floats: 1 = labelled but hidden, 0 = seen), NaN where unknown: a joint with
    no usable coordinates (``_usable``, as ``_mask_bad`` masks them) or no flag (NaN in ``occluded``)."""
    occluded = np.asarray(occluded, dtype=np.float64)
    return np.where(_usable(joints) & np.isfinite(occluded), occluded > 0, np.nan).astype(np.float32)


def read_lsp(mat_path, images_dir=None) -> list[dict]:
    """LSP: ``joints.mat`` (3 x 14 x 2000) and ``images/im0001.jpg`` ...

    The third row flags *occluded* joints (1 = occluded): it is set for 7% of joints, most often on
    wrists and elbows and almost never on the head top, so visibility is its complement; the flags are kept
    as ``occluded``, what an occlusion head learns. The standard split is kept in ``split``: the first 1000
    images train, the last 1000 test. No box is annotated: the crop is the visible joints' box plus 10%.
    """
    arr = _read_lsp_joints(mat_path, "lsp")
    xy = arr[:2].transpose(2, 1, 0)  # N x 14 x 2
    vis = 1.0 - arr[2].T
    n = len(xy)
    splits = ["train" if i < n // 2 else "test" for i in range(n)]
    images = Path(images_dir) if images_dir is not None else Path(mat_path).parent / "images"
    return _lsp_records(xy, vis, arr[2].T, images, "im{:04d}.jpg", "lsp", splits)


def read_lspet(mat_path, images_dir=None) -> list[dict]:
    """LSP-extended: ``joints.mat`` (14 x 3 x 10000) and ``images/im00001.jpg`` ..., all training.

    Here the third column flags *visible* joints (1 = visible, 88% of joints); joints outside the
    image carry negative coordinates and are masked whatever their flag. A joint inside the image that is not
    visible is hidden: ``occluded`` is the flag's complement there.
    """
    arr = _read_lsp_joints(mat_path, "lspet")
    xy = arr[:, :2].transpose(2, 0, 1)
    vis = arr[:, 2].T
    images = Path(images_dir) if images_dir is not None else Path(mat_path).parent / "images"
    return _lsp_records(xy, vis, 1.0 - vis, images, "im{:05d}.jpg", "lspet", ["train"] * len(xy))


# --------------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------------


def read_mpii(path, images_dir=None, single_person_only: bool = False) -> list[dict]:
    """MPII from the json most codebases use or from the official ``mpii_human_pose_v1_u12_*.mat``.

    Coordinates in both are MATLAB's 1-based pixels; records are 0-based. Joints are in MPII's own
    16-joint order (skeleton ``mpii16``; ``to_common_records`` maps them onto the common 14).

    json: a list of ``{image, joints (16 x 2), joints_vis (16), center, scale}``; ``head_size`` (px)
    or ``head_box`` ([x1, y1, x2, y2]) are read when present, giving PCKh; the json files in common
    use carry neither, so PCKh is then not reported. ``.mat``: ``RELEASE.annolist`` with the
    training images (``img_train == 1``) and every person with annotated points, its head box
    (``x1 y1 x2 y2``) and ``objpos`` + ``scale``; ``single_person_only`` keeps the people listed in
    ``RELEASE.single_person``. ``images_dir`` defaults to ``images/`` beside the annotation file's
    folder for the .mat and to the annotation file's folder for the json when it holds the images.
    """
    p = _check_file(path)
    if p.suffix.lower() == ".mat":
        records = _read_mpii_mat(p, single_person_only)
        default_dir = p.parent / "images"
    else:
        records = _read_mpii_json(p)
        default_dir = p.parent / "images" if (p.parent / "images").is_dir() else p.parent
    images = Path(images_dir) if images_dir is not None else default_dir
    for r in records:
        r["image_path"] = str(images / r.pop("image"))
    return records


def _read_mpii_json(p: Path) -> list[dict]:
    items = _read_json(p)
    if not isinstance(items, list):
        raise AnnotationError(f"{p}: expected a list of people, got {type(items).__name__}")
    records = []
    for n, item in enumerate(items):
        for key in ("image", "joints", "joints_vis", "center", "scale"):
            if not isinstance(item, dict) or key not in item:
                raise AnnotationError(f"{p}: person {n} has no field {key!r}")
        joints = np.asarray(item["joints"], dtype=np.float64)
        vis = np.asarray(item["joints_vis"], dtype=np.float64).reshape(-1)
        if joints.shape != (16, 2) or vis.shape != (16,):
            raise AnnotationError(f"{p}: person {n}: 'joints' has shape {joints.shape} and 'joints_vis' "
                                  f"{vis.shape}; expected (16, 2) and (16,)")
        center = np.asarray(item["center"], dtype=np.float64).reshape(-1)
        if center.shape != (2,) or not float(item["scale"]) > 0:
            raise AnnotationError(f"{p}: person {n}: 'center' must be [x, y] and 'scale' > 0, got "
                                  f"{item['center']!r} and {item['scale']!r}")
        rec = _mpii_record(item["image"], joints - 1.0, vis, center - 1.0, float(item["scale"]))
        if "head_size" in item:
            rec["head_size"] = float(item["head_size"])
        elif "head_box" in item:
            rec["head_size"] = _head_size(np.asarray(item["head_box"], dtype=np.float64).reshape(4))
        records.append(rec)
    return records


def _mpii_record(image: str, joints: np.ndarray, vis: np.ndarray, center: np.ndarray, scale: float) -> dict:
    joints, v = _mask_bad(joints, vis)
    return {"image": str(image), "joints": joints, "visibility": v, "center": center, "scale": scale,
            "skeleton": "mpii16", "dataset": "mpii"}


def _head_size(box: np.ndarray) -> float:
    return MPII_HEAD_FACTOR * float(np.hypot(box[2] - box[0], box[3] - box[1]))


def _items(x) -> list:
    """A MATLAB struct array or cell loaded with ``squeeze_me``: a lone element comes back bare."""
    if x is None:
        return []
    if isinstance(x, np.ndarray):
        return list(x.ravel())
    return [x]


def _field(obj, name: str):
    value = getattr(obj, name, None)
    if isinstance(value, np.ndarray) and value.size == 0:
        return None
    return value


def _mat_flag(value) -> float:
    """A 0/1 flag of the MPII release (a number, a string '0' / '1', or missing), as a float; NaN when missing."""
    try:
        return float(np.asarray(value).ravel()[0])
    except (IndexError, TypeError, ValueError):
        return float("nan")


def _read_mpii_mat(p: Path, single_person_only: bool) -> list[dict]:
    mat = _loadmat(p, struct_as_record=False, squeeze_me=True)
    if "RELEASE" not in mat:
        raise AnnotationError(f"{p}: missing struct 'RELEASE' (expected the official MPII release .mat)")
    release = mat["RELEASE"]
    for key in ("annolist", "img_train"):
        if _field(release, key) is None:
            raise AnnotationError(f"{p}: RELEASE has no field {key!r}")
    annolist = _items(release.annolist)
    img_train = np.atleast_1d(np.asarray(release.img_train)).ravel()
    if len(img_train) != len(annolist):
        raise AnnotationError(f"{p}: RELEASE.img_train has {len(img_train)} entries for {len(annolist)} images")
    single = _items(_field(release, "single_person")) if single_person_only else None
    if single_person_only and single is None:
        raise AnnotationError(f"{p}: single_person_only needs RELEASE.single_person")
    records = []
    for i, entry in enumerate(annolist):
        if int(img_train[i]) != 1:
            continue
        image = _field(entry, "image")
        name = _field(image, "name") if image is not None else None
        if name is None:
            raise AnnotationError(f"{p}: RELEASE.annolist({i + 1}).image.name is missing")
        keep = None
        if single is not None:
            keep = {int(k) - 1 for k in np.atleast_1d(np.asarray(single[i] if single[i] is not None else [])).ravel()}
        for r, rect in enumerate(_items(_field(entry, "annorect"))):
            if keep is not None and r not in keep:
                continue
            annopoints, objpos, scale = _field(rect, "annopoints"), _field(rect, "objpos"), _field(rect, "scale")
            if annopoints is None or objpos is None or scale is None:
                continue  # a person without joints or without a crop (test-style entry)
            joints = np.zeros((16, 2))
            vis = np.zeros(16)
            occluded = np.full(16, np.nan)
            for point in _items(_field(annopoints, "point")):
                jid = int(_field(point, "id"))
                if not 0 <= jid < 16:
                    raise AnnotationError(f"{p}: annolist({i + 1}).annorect({r + 1}): joint id {jid} not in 0..15")
                joints[jid] = (float(_field(point, "x")), float(_field(point, "y")))
                vis[jid] = 1.0  # annotated, occluded or not: MPII evaluates every annotated joint
                occluded[jid] = 1.0 - _mat_flag(_field(point, "is_visible"))
            center = np.array([float(_field(objpos, "x")), float(_field(objpos, "y"))])
            rec = _mpii_record(str(name), joints - 1.0, vis, center - 1.0, float(scale))
            rec["occluded"] = occlusion_flags(joints - 1.0, occluded)  # unannotated joints: NaN flags
            box = [_field(rect, k) for k in ("x1", "y1", "x2", "y2")]
            if all(b is not None for b in box):
                rec["head_size"] = _head_size(np.asarray(box, dtype=np.float64))
            rec["index_in_file"] = (i, r)
            records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# COCO keypoints
# --------------------------------------------------------------------------------------------------


def read_coco(annotation_json, images_dir=None, skeleton=None) -> list[dict]:
    """COCO-style keypoints through pycocotools: one record per non-crowd annotation with keypoints.

    The keypoint set is the file's keypoint category's (``skeletons.skeleton_from_coco_category``: ``coco17`` for
    COCO's own, any other count and names otherwise); a ``skeleton`` given (a name, YAML file or Skeleton) must
    have as many joints with the same names. A keypoint counts when its flag ``v`` is 1 or 2 (labelled,
    occluded or not: what COCO's OKS scores). The crop comes from ``bbox``. ``images_dir`` defaults to the
    annotation file's folder when the images are there, else to ``../<split>`` beside an
    ``annotations/person_keypoints_<split>.json``.
    """
    p = _check_file(annotation_json)
    data = _read_json(p)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(f"{p}: missing field {key!r} (expected a COCO keypoints annotation file)")
    category = keypoint_category(p, data)
    try:
        found = skeleton_from_coco_category(category, f"{p}: category {category.get('name')!r}")
    except ValueError as e:
        raise AnnotationError(str(e)) from None
    if skeleton is not None:
        wanted = get_skeleton(skeleton)
        if wanted.joint_names != found.joint_names:
            raise AnnotationError(f"{p}: category {category.get('name')!r} has keypoints {list(found.joint_names)}; "
                                  f"the configured skeleton {wanted.name!r} has {list(wanted.joint_names)}")
        found = wanted
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # pycocotools prints progress
        coco.createIndex()
    images = Path(images_dir) if images_dir is not None else _coco_images_dir(p, data)
    n = found.num_joints
    tag = found.name if SKELETONS.get(found.name) == found else found
    records = []
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[category["id"]], iscrowd=False)):
        if ann.get("iscrowd", 0) or "keypoints" not in ann:
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64)
        if kp.size != 3 * n:
            raise AnnotationError(f"{p}: annotation {ann.get('id')}: 'keypoints' has {kp.size} values; expected "
                                  f"{3 * n} (x, y, v for each of the {n} keypoints of category "
                                  f"{category.get('name')!r})")
        kp = kp.reshape(n, 3)
        if not (kp[:, 2] > 0).any():
            continue
        if "bbox" not in ann or len(ann["bbox"]) != 4:
            raise AnnotationError(f"{p}: annotation {ann.get('id')}: missing or malformed 'bbox'")
        box = np.asarray(ann["bbox"], dtype=np.float64)
        if not (np.isfinite(box).all() and box[2] > 0 and box[3] > 0):
            raise AnnotationError(f"{p}: annotation {ann.get('id')}: 'bbox' must be [x, y, w, h] with w, h > 0, "
                                  f"got {ann['bbox']}")
        joints, vis = _mask_bad(kp[:, :2], kp[:, 2])
        info = coco.imgs.get(ann["image_id"])
        if info is None:
            raise AnnotationError(f"{p}: annotation {ann.get('id')} refers to unknown image_id {ann['image_id']}")
        for key in ("file_name", "width", "height"):
            if key not in info:
                raise AnnotationError(f"{p}: image {info.get('id', ann['image_id'])} has no {key!r} (every COCO "
                                      "image entry needs file_name, width and height)")
        records.append({"image_path": str(images / info["file_name"]), "joints": joints, "visibility": vis,
                        # v = 1: labelled but not visible (COCO's occlusion flag); v = 0: not labelled
                        "occluded": occlusion_flags(joints, np.where(vis > 0, kp[:, 2] == 1, np.nan)),
                        "bbox": np.asarray(ann["bbox"], dtype=np.float64), "skeleton": tag,
                        "dataset": "coco", "image_id": int(ann["image_id"]), "category_id": int(category["id"]),
                        "annotation_id": int(ann["id"]), "image_size": (int(info["width"]), int(info["height"])),
                        "area": float(ann["area"]) if ann.get("area") is not None else None})
    return records


def keypoint_category(p: Path, data: dict) -> dict:
    """The file's keypoint category: the only one with keypoints, or 'person' among several; a 'person' category
    that lists no keypoints is COCO's (as minimal COCO-17 files write it)."""
    cats = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not cats:
        person = [c for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person" and "id" in c]
        if len(person) == 1:
            return {**person[0], "keypoints": coco_keypoint_names(COCO17),
                    "skeleton": [[a + 1, b + 1] for a, b in COCO17.limbs]}
    if len(cats) > 1:
        cats = [c for c in cats if c.get("name") == "person"] or cats
    if len(cats) != 1 or "id" not in cats[0]:
        names = [c.get("name") for c in data["categories"] if isinstance(c, dict)]
        raise AnnotationError(f"{p}: expected one category with 'keypoints' and an 'id' (or 'person' among several), "
                              f"found categories {names}")
    return cats[0]


def _coco_images_dir(p: Path, data: dict) -> Path:
    first = data["images"][0]["file_name"] if data["images"] else None
    if first is None or (p.parent / first).is_file():
        return p.parent
    stem = p.stem.split("_")[-1]  # person_keypoints_val2017 -> val2017
    if p.parent.name == "annotations":
        return p.parent.parent / stem
    return p.parent


# --------------------------------------------------------------------------------------------------
# Common 14 joints
# --------------------------------------------------------------------------------------------------


def to_common_records(records: list[dict]) -> list[dict]:
    """The same people on the common 14 joints (LSP order), so MPII, LSP, LSP-extended and COCO merge."""
    out = []
    for r in records:
        source = r.get("skeleton", "lsp14")
        joints, vis = to_common14(source, r["joints"], r["visibility"])
        common = {**r, "joints": joints, "visibility": vis, "skeleton": "lsp14"}
        if r.get("occluded") is not None:
            common["occluded"] = occlusion_to_common14(source, r["occluded"])
        out.append(common)
    return out


# --------------------------------------------------------------------------------------------------
# A configured dataset's split
# --------------------------------------------------------------------------------------------------

# Training skeleton of each configured real dataset: its own joints, or the common 14 when merged.
DATASET_SKELETONS = {"lsp": "lsp14", "mpii": "mpii16", "coco": "coco17", "mpii_lsp": "lsp14"}


def _configured(real, root_key: str, file_key: str | None = None, default: str | None = None) -> Path:
    root = Path(getattr(real, root_key))
    path = root / (getattr(real, file_key) if file_key else default)
    if not path.is_file():
        key = f"data.real.{file_key or root_key}"
        raise AnnotationError(f"{key}: annotation file not found: {path} (see data/README.md for the layout)")
    return path


def dataset_records(data_cfg, split: str) -> list[dict]:
    """The records of ``split`` (train / val / test) of a configured real dataset.

    lsp: the standard split (val and test are the last 1000). mpii, coco: the training file, and
    the validation file for val and test (neither test set is public). mpii_lsp, as TIC-TAC trains:
    MPII train + LSP train + LSP-extended on the common 14 joints; val MPII validation, test LSP test.
    """
    real, name = data_cfg.real, data_cfg.dataset
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")

    def lsp(part: str) -> list[dict]:
        return [r for r in read_lsp(_configured(real, "lsp_root", default="joints.mat")) if r["split"] == part]

    def mpii(part: str) -> list[dict]:
        root = Path(real.mpii_root)
        images = root / "images" if (root / "images").is_dir() else root
        return read_mpii(_configured(real, "mpii_root", f"mpii_{part}"), images)

    if name == "lsp":
        return lsp("train" if split == "train" else "test")
    if name == "mpii":
        return mpii("train" if split == "train" else "val")
    if name == "coco":
        images = Path(real.coco_root) / real.coco_images if real.coco_images else None
        return read_coco(_configured(real, "coco_root", "coco_train" if split == "train" else "coco_val"), images,
                         skeleton=data_cfg.skeleton)
    if name == "mpii_lsp":
        if split == "train":
            lspet = read_lspet(_configured(real, "lspet_root", default="joints.mat"))
            return to_common_records(mpii("train")) + lsp("train") + lspet
        return to_common_records(mpii("val")) if split == "val" else lsp("test")
    raise ValueError(f"data.dataset {name!r} is not a real dataset; expected one of {sorted(DATASET_SKELETONS)}")
