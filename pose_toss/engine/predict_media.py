"""What ``pose-toss predict`` does with photos, folders and videos (see ``commands/predict.py``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pose_toss.coco_results import write_coco_results
from pose_toss.data.detections import read_detections, usable_boxes
from pose_toss.data.media import find_media, is_video, readable_images, video_frames, video_properties, write_video
from pose_toss.engine.estimator import Person, PoseEstimator
from pose_toss.outputs import check_output_dir, staged_output_dir
from pose_toss.skeletons import Skeleton
from pose_toss.tracking import PeopleTracker, smooth_results
from pose_toss.viz.draw import draw_people, write_png

# A track needs this many frames before it is smoothed: alpha and q cannot be read off fewer.
MIN_TRACK_FRAMES = 3


def following_boxes(people: list[Person]) -> np.ndarray:
    """Boxes for a frame without detection: each person's previous box, re-centred on their keypoints (and grown
    to hold them with a fifth to spare), with its detection score."""
    rows = []
    for p in people:
        lo, hi = p.keypoints.min(axis=0), p.keypoints.max(axis=0)
        centre = (lo + hi) / 2
        w, h = max(p.box[2], 1.2 * (hi[0] - lo[0])), max(p.box[3], 1.2 * (hi[1] - lo[1]))
        rows.append([centre[0] - w / 2, centre[1] - h / 2, w, h, p.detection_score])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def track_video(estimator: PoseEstimator, path: Path, every: int = 1, min_iou: float = 0.3,
                gate: float | None = None, progress: bool = True) -> list[dict]:
    """Every frame's people as COCO results with ``frame`` and ``track_id``: detected every ``every`` frames
    (each frame without a detector: the whole frame), followed in between, tracked by ``PeopleTracker``."""
    tracker = PeopleTracker(min_iou=min_iou, max_age=max(10, 2 * every), gate=gate)
    total = video_properties(path)["frames"]
    results, previous = [], []
    frames = tqdm(video_frames(path), total=total or None, desc=path.name, disable=not progress, leave=False)
    for t, frame in enumerate(frames):
        detect = estimator.detector is None or t % every == 0 or not previous
        people = estimator.predict_image(frame, None if detect else following_boxes(previous))
        ids = tracker.update(np.array([p.box for p in people]).reshape(-1, 4),
                             np.array([p.keypoints.reshape(-1) for p in people]),
                             np.array([p.covariance for p in people]))
        results += [{**p.coco(t), "file_name": path.name, "video": path.name, "frame": t, "track_id": track}
                    for p, track in zip(people, ids, strict=True)]
        previous = people
    if not results and total == 0:
        raise OSError(f"{path}: no frame could be read")
    return results


def smooth_tracks(results: list[dict], skeleton: Skeleton, mode: str = "online", lag: int = 0) -> list[dict]:
    """Each track of at least ``MIN_TRACK_FRAMES`` smoothed with its full covariances (``tracking.smooth_results``:
    online or offline), the keypoint scores recomputed from the smoothed covariance and the person's score with
    them (detection score times mean keypoint score)."""
    if mode == "none":
        return results
    length = Counter(r["track_id"] for r in results)
    long = [n for n, r in enumerate(results) if length[r["track_id"]] >= MIN_TRACK_FRAMES]
    if not long:
        return results
    smoothed = smooth_results([results[n] for n in long], source="video", sigmas=skeleton.oks_sigmas,
                              online_lag=lag if mode == "online" else None)
    out = list(results)
    for n, r in zip(long, smoothed, strict=True):
        r["keypoint_score"] = r["score"]
        r["score"] = round(r["detection_score"] * r["keypoint_score"], 5)
        out[n] = r
    return out


def drawable(result: dict) -> dict:
    """What ``viz.draw.draw_people`` needs from a COCO result with a covariance."""
    return {"keypoints": np.asarray(result["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2],
            "covariance": result["covariance"], "box": result["bbox"], "score": result["score"],
            "track_id": result.get("track_id")}


def predict_media(checkpoint, inputs, out, *, detector: str | None = None, detector_weights="download",
                  boxes=None, score_threshold: float = 0.5, every: int = 1, min_iou: float = 0.3,
                  gate: float | None = None, smooth: str = "online", lag: int = 0, levels=(0.5, 0.9),
                  pictures: bool = True, batch_size: int = 32, device: str = "auto", overwrite: bool = False,
                  progress: bool = True, log=print) -> dict:
    """Predict every image and video frame in ``inputs`` into ``out``: ``predictions.json``, and with
    ``pictures`` ``pictures/<image>.png`` (the whole frame, every person, a legend) and ``<video>.mp4``."""
    reads = [checkpoint, *inputs, boxes]
    check_output_dir(out, overwrite, reads)
    files = find_media(inputs, "--inputs")
    if not files:
        raise FileNotFoundError(f"--inputs: no image or video files in {list(map(str, inputs))}")
    videos = [f for f in files if is_video(f)]
    images = [f for f in files if not is_video(f)]
    if boxes and videos:
        raise ValueError("--boxes gives boxes for images; for videos use a --detector (or neither: the whole frame)")
    estimator = PoseEstimator(checkpoint, detector, detector_weights=detector_weights,
                              score_threshold=score_threshold, device=device, batch_size=batch_size)
    detections = read_detections(boxes, images, score_threshold, log) if boxes else None
    results, skipped, written_videos = [], [], []
    with staged_output_dir(out, overwrite, reads) as stage:
        shown = tqdm(images, desc="images", disable=not progress or len(images) < 2, leave=False)
        for n, path, image in readable_images(shown, skipped, log):
            given = None if detections is None else usable_boxes(detections[path], image.shape[1], image.shape[0],
                                                                  path, log)
            people = [] if given is not None and not len(given) else estimator.predict_image(image, given)
            image_id = int(path.stem) if path.stem.isdigit() else n
            found = [{**p.coco(image_id), "file_name": path.name} for p in people]
            results += found
            if pictures:
                (stage / "pictures").mkdir(exist_ok=True)
                write_png(stage / "pictures" / f"{path.stem}.png",
                          draw_people(image, [drawable(r) for r in found], estimator.skeleton, levels))
        for path in videos:
            found = smooth_tracks(track_video(estimator, path, every, min_iou, gate, progress), estimator.skeleton,
                                  smooth, lag)
            results += found
            if pictures:
                by_frame: dict[int, list] = {}
                for r in found:
                    by_frame.setdefault(r["frame"], []).append(drawable(r))
                drawn = (draw_people(frame, by_frame.get(t, []), estimator.skeleton, levels)
                         for t, frame in enumerate(video_frames(path)))
                write_video(stage / f"{path.stem}.mp4", drawn, video_properties(path)["fps"])
                written_videos.append(str(Path(out) / f"{path.stem}.mp4"))
        write_coco_results(stage / "predictions.json", results)
    return {"people": len(results), "images": len(images) - len(skipped), "skipped": skipped,
            "frames": len({(r["video"], r["frame"]) for r in results if "frame" in r}),
            "tracks": len({(r["video"], r["track_id"]) for r in results if "track_id" in r}),
            "videos": written_videos}
