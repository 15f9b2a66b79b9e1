"""`pose-toss visualize`: run a trained model on any images and draw what it believes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pose_toss.coco_results import coco_result, write_coco_results
from pose_toss.commands.options import add_checkpoint, add_device, add_output
from pose_toss.config import load_config
from pose_toss.data.dataset import image_file_problem, load_image_rgb
from pose_toss.data.readers import DATASET_SKELETONS
from pose_toss.engine.runtime import resolve_device
from pose_toss.models.checkpoint import load_model
from pose_toss.outputs import check_output_dir, staged_output_dir
from pose_toss.run_dir import CONFIG_FILE, resolve_checkpoint
from pose_toss.skeletons import Skeleton, get_skeleton
from pose_toss.tracking import smooth_results
from pose_toss.viz.draw import contact_sheet, draw_conditional, draw_correlation_links, draw_pose, enlarge, write_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Each person's picture is the padded box, enlarged to at least this many pixels on its long side.
MIN_PICTURE_SIDE = 384


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument("--images", nargs="+", required=True, metavar="FILE_OR_DIR", help="images or folders of images")
    p.add_argument("--boxes", help="COCO-format person detections (image_id, bbox, score); default: whole image")
    p.add_argument("--score-threshold", type=float, default=0.5, help="ignore detections scored below this")
    add_output(p)
    p.add_argument("--levels", default="0.5,0.9", help="probability levels of the ellipses, comma-separated")
    p.add_argument("--links", type=float, metavar="THRESHOLD",
                   help="link joints whose canonical correlation exceeds THRESHOLD (e.g. 0.5)")
    p.add_argument("--condition", metavar="JOINT",
                   help="add a panel where JOINT (a name, e.g. l_wrist) is moved one standard deviation and "
                        "the other joints follow their conditional distribution")
    p.add_argument("--smooth", action="store_true", help="the images are video frames (file-name order, one person "
                                                         "each): smooth the poses over time with their full "
                                                         "covariances before drawing")
    add_device(p)


def run(args: argparse.Namespace) -> int:
    try:
        levels = tuple(float(v) for v in args.levels.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(0.0 < v < 1.0 for v in levels):
        raise ValueError(f"--levels: expected comma-separated probabilities between 0 and 1 (e.g. 0.5,0.9), "
                         f"got {args.levels!r}")
    result = visualize(args.checkpoint, args.images, args.out, boxes=args.boxes, score_threshold=args.score_threshold,
                       levels=levels, links=args.links, condition_joint=args.condition, device=args.device,
                       overwrite=args.overwrite, smooth=args.smooth)
    out = Path(args.out)
    if result["people"]:
        print(f"contact sheet: {out / 'contact_sheet.png'}")
    print(f"predictions (COCO + covariance): {out / 'predictions.json'}")
    return 0


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


def read_detections(path, images: list[Path], score_threshold: float = 0.0, log=print) -> dict[Path, np.ndarray]:
    """Person boxes per image from a COCO-format detections file: a list of ``{image_id, bbox,
    score, category_id}``. An entry matches an image by a ``file_name`` key when it has one, else by
    ``image_id`` equal to the number in the file's name (COCO's ``000000000785.jpg`` is 785).
    Detections of images that were not given are counted and said, not silently dropped."""
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
        boxes[image].append(np.append(box, n))
    if unmatched:
        named = ", ".join(map(str, list(dict.fromkeys(unmatched))[:5]))
        log(f"warning: --boxes: {len(unmatched)} of {len(dets)} detections are for images that were not given "
            f"({named}{', ...' if len(set(map(str, unmatched))) > 5 else ''}); they are ignored")
    return {im: np.asarray(b).reshape(-1, 5) for im, b in boxes.items()}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_list(v) -> np.ndarray | None:
    if not isinstance(v, (list, tuple)) or not all(_is_number(x) for x in v):
        return None
    return np.asarray(v, dtype=np.float64)


def usable_boxes(boxes: np.ndarray, width: int, height: int, image: Path, log=print) -> np.ndarray:
    """The ``[x, y, w, h, detection index]`` rows that overlap the image, each clipped to at most the image
    enlarged by its own size on every side (a runaway box would otherwise make a gigapixel picture);
    the skipped and clipped ones are said."""
    kept = []
    for x, y, w, h, n in boxes:
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            log(f"warning: {image.name}: detection {int(n)} [{x:g}, {y:g}, {w:g}, {h:g}] lies wholly outside the "
                f"{width} x {height} image; skipped")
            continue
        x0, y0 = max(x, -width), max(y, -height)
        x1, y1 = min(x + w, 2 * width), min(y + h, 2 * height)
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            log(f"warning: {image.name}: detection {int(n)} [{x:g}, {y:g}, {w:g}, {h:g}] reaches far beyond the "
                f"{width} x {height} image; clipped")
        kept.append([x0, y0, x1 - x0, y1 - y0])
    return np.asarray(kept, dtype=np.float64).reshape(-1, 4)


def model_skeleton(model, run_dir) -> Skeleton:
    """The joint set a model was trained on: from its run's config, else from its joint count."""

    if run_dir is not None and (Path(run_dir) / CONFIG_FILE).is_file():
        dataset = load_config(Path(run_dir) / CONFIG_FILE).data.dataset
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
              overwrite: bool = False, smooth: bool = False, log=print) -> dict:
    """Predict on every image (each detection box, or the whole image), write one PNG per person, a
    contact sheet and ``predictions.json`` (COCO keypoint results with covariances) into ``out``. ``smooth``:
    the images are a video's frames in file-name order with one person each, smoothed with their full
    covariances (``tracking.smooth_results``) before drawing."""

    inputs = [checkpoint, *images, boxes]
    check_output_dir(out, overwrite, inputs)
    files = find_images(images)
    if not files:
        raise FileNotFoundError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, images))}")
    model_file, run_dir = resolve_checkpoint(checkpoint)
    model = load_model(model_file, map_location=resolve_device(device))
    skeleton = model_skeleton(model, run_dir)
    k = skeleton.index(condition_joint) if condition_joint else None
    dets = read_detections(boxes, files, score_threshold, log) if boxes else None
    people, skipped = [], []  # (image, joints, cov, box, image_id, path, person index) in file order
    for n, path in enumerate(files):
        try:
            image = load_image_rgb(path)
        except OSError as e:
            skipped.append(str(e))
            log(f"warning: skipped: {e}")
            continue
        problem = image_file_problem(path)
        if problem:
            log(f"warning: {path}: {problem}; its predictions are drawn but may be wrong")
        person_boxes = None if dets is None else usable_boxes(dets[path], image.shape[1], image.shape[0], path, log)
        if person_boxes is not None and len(person_boxes) == 0:
            continue
        pred = model.predict(image, None if person_boxes is None else person_boxes)[0]
        image_id = int(path.stem) if path.stem.isdigit() else n
        for p, (joints, cov, box) in enumerate(zip(pred["joints"], pred["cov"], pred["boxes"], strict=True)):
            people.append([image, joints, cov, box, image_id, path, p])
    results = [{**coco_result(joints, cov, image_id, area=float(box[2] * box[3]), sigmas=skeleton.oks_sigmas),
                "file_name": path.name, "bbox": [round(float(v), 2) for v in box], "picture": f"{path.stem}_{p}.png"}
               for _, joints, cov, box, image_id, path, p in people]
    if smooth and people:

        frames = [path for *_, path, _ in people]
        if len(set(frames)) != len(frames):
            raise ValueError("--smooth follows one person through the frames: give at most one box per image")
        for frame, r in enumerate(results):
            r["frame"] = frame  # the files' sorted order
        results = smooth_results(results, source="--images")
        for person, r in zip(people, results, strict=True):
            person[1] = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
            person[2] = np.asarray(r["covariance"], dtype=np.float64)
        log(f"smoothed over {len(frames)} frames (process noise {results[0]['process_noise']:.3g} px²/frame³)")
    pictures = []
    with staged_output_dir(out, overwrite, inputs) as stage:
        for image, joints, cov, box, _, path, p in people:
            pic = person_picture(image, joints, cov, box, skeleton, levels, links, k)
            write_png(stage / f"{path.stem}_{p}.png", pic)
            pictures.append(pic)
        if pictures:
            write_png(stage / "contact_sheet.png", contact_sheet(pictures, cols=4, tile_size=256))
        write_coco_results(stage / "predictions.json", results)
    log(f"{len(results)} people from {len(files) - len(skipped)} images drawn into {out}"
        + (f"; {len(skipped)} unreadable files skipped" if skipped else ""))
    return {"people": len(results), "images": len(files) - len(skipped), "skipped": skipped}
