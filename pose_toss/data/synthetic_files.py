"""Synthetic data on disk: PNG images plus one JSON annotation file, and the reader for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pose_toss.data.coco_format import coco_ground_truth
from pose_toss.data.synthetic import CUE_KINDS, CUE_LIMBS, Cue, SyntheticPoseDataset, occluded_joints
from pose_toss.outputs import atomic_write_text
from pose_toss.skeletons import LSP14
from pose_toss.viz.draw import contact_sheet, draw_pose_scaled, write_png

FORMAT = "pose-toss-synthetic/1"
ANNOTATION_FILE = "annotations.json"
COCO_FILE = "person_keypoints.json"


def _num(a) -> str:
    """JSON for a float array with 7 significant digits (float32-exact, far smaller than repr)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        return f"{float(arr):.7g}"
    return "[" + ",".join(_num(x) for x in arr) + "]"


def write_synthetic(dataset: SyntheticPoseDataset, out_dir: str | Path, sheet_count: int = 16,
                    progress: bool = True) -> dict:
    """Render every sample to ``out_dir/images/NNNNNN.png`` and write ``annotations.json`` (this package's
    format, with the true covariances and cues) and ``person_keypoints.json`` (a COCO keypoints dataset of
    the same figures: images, person boxes, keypoints with visibility flags, ``num_keypoints``, area).

    Returns the paths written (``annotations``, ``coco``, ``contact_sheet``).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT, "skeleton": LSP14.name, "joint_names": list(LSP14.joint_names),
        "image_size": dataset.image_size, "seed": dataset.seed, "num_samples": len(dataset),
        "units": "pixels; cov_true in pixels^2, order [x0, y0, x1, y1, ...]",
        "generator": dataset.generator_settings,
    }
    samples, tiles, coco_people = [], [], []
    for i in tqdm(range(len(dataset)), desc="rendering", unit="img", disable=not progress):
        rec = dataset.record(i)
        name = f"images/{i:06d}.png"
        write_png(out / name, rec["image"])
        coco_people.append({**{k: rec[k] for k in ("joints", "visibility", "bbox", "area", "image")}, "image_id": i,
                            "image_path": name})
        cues = [{"kind": c.kind, "limb": list(c.limb), "severity": round(c.severity, 4)} for c in rec["cues"]]
        samples.append(
            "{" + f'"index":{i},"file":"{name}","joints":{_num(rec["joints"])},'
            f'"joints_true":{_num(rec["joints_true"])},"visibility":{_num(rec["visibility"])},'
            f'"bbox":{_num(rec["bbox"])},"area":{_num(rec["area"])},"person_height":{_num(rec["person_height"])},'
            f'"cues":{json.dumps(cues)},"cov_true":{_num(rec["cov_true"])}' + "}"
        )
        if len(tiles) < sheet_count:
            tiles.append(draw_pose_scaled(rec["image"], rec["joints_true"], rec["cov_true"], 2.0,
                                          visibility=rec["visibility"], levels=(0.5, 0.9)))
    text = json.dumps(header)[:-1] + ',"samples":[\n' + ",\n".join(samples) + "\n]}\n"
    atomic_write_text(out / ANNOTATION_FILE, text)
    # The same figures as a COCO keypoints dataset (image ids = sample indices), for COCO tools.
    coco = coco_ground_truth(coco_people, LSP14)
    for image, person in zip(coco["images"], coco_people, strict=True):
        image["file_name"] = person["image_path"]
    atomic_write_text(out / COCO_FILE, json.dumps(coco))
    sheet_path = out / "contact_sheet.png"
    if tiles:
        write_png(sheet_path, contact_sheet(tiles, cols=4, tile_size=256))
    return {"annotations": out / ANNOTATION_FILE, "coco": out / COCO_FILE, "contact_sheet": sheet_path}


def read_synthetic(root: str | Path) -> list[dict]:
    """Records (with ``image_path``, loaded lazily) from a directory written by ``make-synthetic``."""
    root = Path(root)
    path = root / ANNOTATION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found "
                                "(expected the output of `pose-toss make-synthetic`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    if "samples" not in data:
        raise ValueError(f"{path}: missing field 'samples'")
    j = len(LSP14.joint_names)
    records = []
    for n, s in enumerate(data["samples"]):
        for key, shape in (("joints", (j, 2)), ("joints_true", (j, 2)), ("visibility", (j,)),
                           ("cov_true", (2 * j, 2 * j)), ("bbox", (4,))):
            if key not in s:
                raise ValueError(f"{path}: samples[{n}] missing field '{key}'")
            if np.shape(s[key]) != shape:
                raise ValueError(f"{path}: samples[{n}].{key} has shape {np.shape(s[key])}, expected {shape}")
        records.append({
            "image_path": str(root / s["file"]),
            "joints": np.asarray(s["joints"], dtype=np.float64),
            "joints_true": np.asarray(s["joints_true"], dtype=np.float64),
            "visibility": np.asarray(s["visibility"], dtype=np.float32),
            "cov_true": np.asarray(s["cov_true"], dtype=np.float64),
            "bbox": np.asarray(s["bbox"], dtype=np.float64),
            "area": float(s["area"]) if s.get("area") is not None else None,
            "index": s.get("index", n),
            "skeleton": LSP14.name,
            "cues": [_read_cue(c, f"{path}: samples[{n}].cues[{m}]") for m, c in enumerate(s.get("cues", []))],
        })
        records[-1]["occluded"] = occluded_joints(records[-1]["cues"])
    return records


def _read_cue(entry, where: str) -> Cue:
    try:
        cue = Cue(str(entry["kind"]), tuple(int(j) for j in entry["limb"]), float(entry["severity"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: expected {{'kind', 'limb', 'severity'}}, got {entry!r}") from None
    if cue.kind not in CUE_KINDS or cue.limb not in CUE_LIMBS:
        raise ValueError(f"{where}: kind {cue.kind!r} / limb {list(cue.limb)}; expected a kind of {CUE_KINDS} "
                         f"on a limb of {[list(limb) for limb in CUE_LIMBS]}")
    return cue
