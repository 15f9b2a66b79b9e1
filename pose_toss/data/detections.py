"""Person detections from COCO-format files: a list of ``{image_id or file_name, bbox, score, category_id}``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose_toss.data.readers import read_json_file


def read_detections(path, images: list[Path], score_threshold: float = 0.0, log=print) -> dict[Path, np.ndarray]:
    """Person boxes per image from a COCO-format detections file: a list of ``{image_id, bbox,
    score, category_id}``. An entry matches an image by a ``file_name`` key when it has one, else by
    ``image_id`` equal to the number in the file's name (COCO's ``000000000785.jpg`` is 785).
    Detections of images that were not given are counted and said, not silently dropped."""
    p = Path(path)
    dets = read_json_file(p, "--boxes: detections file")
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]  # a ground-truth file works too
    if not isinstance(dets, list):
        raise ValueError(f"{p}: expected a list of detections, got {type(dets).__name__}")
    by_name = {im.name: im for im in images}
    by_id = {int(im.stem): im for im in images if im.stem.isdigit()}
    boxes: dict[Path, list] = {im: [] for im in images}
    unmatched: list = []
    for n, det in enumerate(dets):
        if not isinstance(det, dict) or "bbox" not in det or ("image_id" not in det and "file_name" not in det):
            raise ValueError(f"{p}: detection {n} needs 'bbox' and 'image_id' (or 'file_name')")
        score = det.get("score", 1.0)
        if not _is_number(score) or not np.isfinite(score):
            raise ValueError(f"{p}: detection {n}: 'score' must be a finite number, got {score!r}")
        box = _number_list(det["bbox"])
        if box is None or len(box) != 4 or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"{p}: detection {n}: 'bbox' must be [x, y, w, h] (finite numbers) with w, h > 0, "
                             f"got {det['bbox']!r}")
        if "file_name" in det:
            image = by_name.get(det["file_name"])
        else:
            image_id = det["image_id"]
            if not (_is_number(image_id) and float(image_id).is_integer()):
                raise ValueError(f"{p}: detection {n}: 'image_id' must be an integer, got {image_id!r}")
            image = by_id.get(int(image_id))
        if image is None:
            unmatched.append(det.get("file_name", det.get("image_id")))
            continue
        if det.get("category_id", 1) != 1 or score < score_threshold:
            continue
        boxes[image].append(np.append(box, [n, score]))
    if unmatched:
        named = ", ".join(map(str, list(dict.fromkeys(unmatched))[:5]))
        log(f"warning: --boxes: {len(unmatched)} of {len(dets)} detections are for images that were not given "
            f"({named}{', ...' if len(set(map(str, unmatched))) > 5 else ''}); they are ignored")
    return {im: np.asarray(b).reshape(-1, 6) for im, b in boxes.items()}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_list(v) -> np.ndarray | None:
    if not isinstance(v, (list, tuple)) or not all(_is_number(x) for x in v):
        return None
    return np.asarray(v, dtype=np.float64)


def usable_boxes(boxes: np.ndarray, width: int, height: int, image: Path, log=print) -> np.ndarray:
    """``[x, y, w, h, score]`` of the ``[x, y, w, h, detection index, score]`` rows that overlap the image, each
    clipped to at most the image enlarged by its own size on every side (a runaway box would otherwise make a
    gigapixel picture); the skipped and clipped ones are said."""
    kept = []
    for x, y, w, h, n, score in boxes:
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            log(f"warning: {image.name}: detection {int(n)} [{x:g}, {y:g}, {w:g}, {h:g}] lies wholly outside the "
                f"{width} x {height} image; skipped")
            continue
        x0, y0 = max(x, -width), max(y, -height)
        x1, y1 = min(x + w, 2 * width), min(y + h, 2 * height)
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            log(f"warning: {image.name}: detection {int(n)} [{x:g}, {y:g}, {w:g}, {h:g}] reaches far beyond the "
                f"{width} x {height} image; clipped")
        kept.append([x0, y0, x1 - x0, y1 - y0, score])
    return np.asarray(kept, dtype=np.float64).reshape(-1, 5)
