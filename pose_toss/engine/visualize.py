"""`pose-toss visualize`: run a trained model on any images and draw what it believes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pose_toss.skeletons import Skeleton, get_skeleton

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Each person's picture is the padded box, enlarged to at least this many pixels on its long side.
MIN_PICTURE_SIDE = 384


def find_images(paths) -> list[Path]:
    """Image files from files and directories (one level, sorted); a missing path is an error."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"--images: {p} is neither a file nor a directory")
    return found


def read_detections(path, images: list[Path], score_threshold: float = 0.0) -> dict[Path, np.ndarray]:
    """Person boxes per image from a COCO-format detections file: a list of ``{image_id, bbox,
    score, category_id}``. An entry matches an image by a ``file_name`` key when it has one, else by
    ``image_id`` equal to the number in the file's name (COCO's ``000000000785.jpg`` is 785)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--boxes: detections file not found: {p}")
    try:
        dets = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read as JSON ({e})") from None
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]  # a ground-truth file works too
    if not isinstance(dets, list):
        raise ValueError(f"{p}: expected a list of detections, got {type(dets).__name__}")
    by_name = {im.name: im for im in images}
    by_id = {int(im.stem): im for im in images if im.stem.isdigit()}
    boxes: dict[Path, list] = {im: [] for im in images}
    for n, det in enumerate(dets):
        if not isinstance(det, dict) or "bbox" not in det or ("image_id" not in det and "file_name" not in det):
            raise ValueError(f"{p}: detection {n} needs 'bbox' and 'image_id' (or 'file_name')")
        if det.get("category_id", 1) != 1 or det.get("score", 1.0) < score_threshold:
            continue
        image = by_name.get(det["file_name"]) if "file_name" in det else by_id.get(int(det["image_id"]))
        if image is not None:
            box = np.asarray(det["bbox"], dtype=np.float64).reshape(-1)
            if box.shape != (4,) or box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"{p}: detection {n}: bbox must be [x, y, w, h] with w, h > 0, got {det['bbox']}")
            boxes[image].append(box)
    return {im: np.asarray(b).reshape(-1, 4) for im, b in boxes.items()}


def model_skeleton(model, run_dir) -> Skeleton:
    """The joint set a model was trained on: from its run's config, else from its joint count."""
    from pose_toss.config import load_config
    from pose_toss.data.readers import DATASET_SKELETONS

    if run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        dataset = load_config(Path(run_dir) / "config.yaml").data.dataset
        return get_skeleton(DATASET_SKELETONS.get(dataset, "lsp14"))
    by_count = {14: "lsp14", 16: "mpii16", 17: "coco17"}
    if model.num_joints not in by_count:
        raise ValueError(f"cannot tell the skeleton of a {model.num_joints}-joint model without its run's config.yaml")
    return get_skeleton(by_count[model.num_joints])


def person_picture(image: np.ndarray, joints: np.ndarray, cov: np.ndarray, box: np.ndarray, skeleton: Skeleton,
                   levels=(0.5, 0.9), links: float | None = None, condition_joint: int | None = None,
                   padding: float = 1.25) -> np.ndarray:
    """The padded person box cut from ``image`` and enlarged, with the pose and its ellipses; with
    ``links`` the joint pairs correlated above it, with ``condition_joint`` beside it a second panel
    where that joint is moved one standard deviation along its widest axis and the rest follow."""
    from pose_toss.viz.draw import draw_conditional, draw_correlation_links, draw_pose, enlarge

    x, y, w, h = box
    side = max(w, h) * padding
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    s = int(np.ceil(side))
    canvas = np.zeros((s, s, 3), np.uint8)  # parts of the box outside the image stay black
    ih, iw = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, iw), min(y0 + s, ih)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
    shifted = np.asarray(joints, dtype=np.float64).reshape(-1, 2) - [x0, y0]
    canvas, pts, c = enlarge(canvas, shifted, cov, max(1.0, MIN_PICTURE_SIDE / s))
    if links is not None:
        panel = draw_correlation_links(canvas, pts, c, skeleton, links)
    else:
        panel = draw_pose(canvas, pts, c, skeleton, levels=levels)
    if condition_joint is None:
        return panel
    k = condition_joint
    evals, evecs = np.linalg.eigh(c[2 * k: 2 * k + 2, 2 * k: 2 * k + 2])
    moved = pts[k] + np.sqrt(max(evals[1], 0.0)) * evecs[:, 1]
    cond = draw_conditional(canvas, pts.reshape(-1), c, {k: moved}, skeleton, levels=levels[-1:])
    return np.concatenate([panel, np.full((panel.shape[0], 6, 3), 24, np.uint8), cond], axis=1)


def visualize(checkpoint, images, out, *, boxes=None, score_threshold: float = 0.5, levels=(0.5, 0.9),
              links: float | None = None, condition_joint: str | None = None, device: str = "auto",
              overwrite: bool = False, log=print) -> dict:
    """Predict on every image (each detection box, or the whole image), write one PNG per person, a
    contact sheet and ``predictions.json`` (COCO keypoint results with covariances) into ``out``."""
    from pose_toss.data.dataset import load_image_rgb
    from pose_toss.engine.evaluation import resolve_checkpoint
    from pose_toss.engine.runtime import resolve_device
    from pose_toss.export import coco_result, write_coco_results
    from pose_toss.io import check_output_dir, staged_output_dir
    from pose_toss.models.checkpoint import load_model
    from pose_toss.viz.draw import contact_sheet, write_png

    check_output_dir(out, overwrite)
    files = find_images(images)
    if not files:
        raise FileNotFoundError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, images))}")
    model_file, run_dir = resolve_checkpoint(checkpoint)
    model = load_model(model_file, map_location=resolve_device(device))
    skeleton = model_skeleton(model, run_dir)
    k = skeleton.index(condition_joint) if condition_joint else None
    dets = read_detections(boxes, files, score_threshold) if boxes else None
    pictures, results, skipped = [], [], []
    with staged_output_dir(out, overwrite) as stage:
        for n, path in enumerate(files):
            try:
                image = load_image_rgb(path)
            except OSError as e:
                skipped.append(str(e))
                log(f"warning: skipped: {e}")
                continue
            person_boxes = None if dets is None else dets[path]
            if person_boxes is not None and len(person_boxes) == 0:
                continue
            pred = model.predict(image, None if person_boxes is None else person_boxes)[0]
            image_id = int(path.stem) if path.stem.isdigit() else n
            for p, (joints, cov, box) in enumerate(zip(pred["joints"], pred["cov"], pred["boxes"], strict=True)):
                pic = person_picture(image, joints, cov, box, skeleton, levels, links, k)
                name = f"{path.stem}_{p}.png"
                write_png(stage / name, pic)
                pictures.append(pic)
                results.append({**coco_result(joints, cov, image_id), "file_name": path.name,
                                "bbox": [round(float(v), 2) for v in box], "picture": name})
        if pictures:
            write_png(stage / "contact_sheet.png", contact_sheet(pictures, cols=4, tile_size=256))
        write_coco_results(stage / "predictions.json", results)
    log(f"{len(results)} people from {len(files) - len(skipped)} images drawn into {out}"
        + (f"; {len(skipped)} unreadable files skipped" if skipped else ""))
    return {"people": len(results), "images": len(files) - len(skipped), "skipped": skipped}
