"""`pose-toss visualize`: run a trained model on any images and draw what it believes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pose_toss.coco_results import coco_result, write_coco_results
from pose_toss.commands.options import add_checkpoint, add_device, add_output, parse_levels
from pose_toss.data.detections import read_detections, usable_boxes
from pose_toss.data.media import IMAGE_SUFFIXES, find_media, readable_images
from pose_toss.engine.estimator import model_skeleton
from pose_toss.engine.runtime import resolve_device
from pose_toss.models.checkpoint import load_model
from pose_toss.outputs import check_output_dir, staged_output_dir
from pose_toss.run_dir import resolve_checkpoint
from pose_toss.skeletons import Skeleton
from pose_toss.tracking import smooth_results
from pose_toss.viz.draw import (
    contact_sheet,
    draw_conditional,
    draw_correlation_links,
    draw_pose,
    enlarge,
    with_legend,
    write_png,
)

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
    levels = parse_levels(args.levels)
    result = visualize(args.checkpoint, args.images, args.out, boxes=args.boxes, score_threshold=args.score_threshold,
                       levels=levels, links=args.links, condition_joint=args.condition, device=args.device,
                       overwrite=args.overwrite, smooth=args.smooth)
    out = Path(args.out)
    if result["people"]:
        print(f"contact sheet: {out / 'contact_sheet.png'}")
    print(f"predictions (COCO + covariance): {out / 'predictions.json'}")
    return 0


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


def legend_notes(links: float | None, condition_joint: str | None) -> list[str]:
    """What the analysis marks mean, for the legend below each picture."""
    notes = []
    if links is not None:
        notes.append(f"magenta links: joints whose canonical correlation exceeds {links:g} (thicker: stronger)")
    if condition_joint:
        notes.append(f"right panel: {condition_joint} moved one standard deviation along its widest axis (cross); "
                     "arrows: where the other joints' conditional means go, rings: their conditional spread")
    return notes


def visualize(checkpoint, images, out, *, boxes=None, score_threshold: float = 0.5, levels=(0.5, 0.9),
              links: float | None = None, condition_joint: str | None = None, device: str = "auto",
              overwrite: bool = False, smooth: bool = False, log=print) -> dict:
    """Predict on every image (each detection box, or the whole image), write one PNG per person, a
    contact sheet and ``predictions.json`` (COCO keypoint results with covariances) into ``out``. ``smooth``:
    the images are a video's frames in file-name order with one person each, smoothed with their full
    covariances (``tracking.smooth_results``) before drawing."""

    inputs = [checkpoint, *images, boxes]
    check_output_dir(out, overwrite, inputs)
    files = find_media(images, "--images", videos=False)
    if not files:
        raise FileNotFoundError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, images))}")
    model_file, run_dir = resolve_checkpoint(checkpoint)
    model = load_model(model_file, map_location=resolve_device(device))
    skeleton = model_skeleton(model, run_dir)
    k = skeleton.index(condition_joint) if condition_joint else None
    dets = read_detections(boxes, files, score_threshold, log) if boxes else None
    people, skipped = [], []  # (image, joints, cov, box, image_id, path, person index) in file order
    for n, path, image in readable_images(files, skipped, log):
        person_boxes = None if dets is None else usable_boxes(dets[path], image.shape[1], image.shape[0], path, log)
        if person_boxes is not None and len(person_boxes) == 0:
            continue
        pred = model.predict(image, None if person_boxes is None else person_boxes[:, :4])[0]
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
        sizes = {}
        for image, *_, path, _ in people:
            sizes.setdefault(image.shape[:2], path)
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise ValueError(f"--smooth: the frames are not one video: {pa.name} is {a[1]} x {a[0]} and {pb.name} "
                             f"{b[1]} x {b[0]} pixels")
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
            write_png(stage / f"{path.stem}_{p}.png", with_legend(pic, levels, legend_notes(links, condition_joint)))
            pictures.append(pic)
        if pictures:
            write_png(stage / "contact_sheet.png", contact_sheet(pictures, cols=4, tile_size=256))
        write_coco_results(stage / "predictions.json", results)
    log(f"{len(results)} people from {len(files) - len(skipped)} images drawn into {out}"
        + (f"; {len(skipped)} unreadable files skipped" if skipped else ""))
    return {"people": len(results), "images": len(files) - len(skipped), "skipped": skipped}
