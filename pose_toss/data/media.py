"""What a user points pose-toss at: image files, folders, videos and arrays, read as uint8 RGB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from pose_toss.data.dataset import image_file_problem, load_image_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def find_media(paths, what: str = "--inputs", videos: bool = True) -> list[Path]:
    """Image (and video) files from files and folders (one level, sorted); a missing path is an error."""
    suffixes = IMAGE_SUFFIXES + (VIDEO_SUFFIXES if videos else ())
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{what}: {p} is neither a file nor a directory")
    return found


def as_rgb_image(image, bgr: bool = False, source: str = "image") -> np.ndarray:
    """An H x W x 3 uint8 RGB array from what a user passes: uint8 RGB (``bgr=True``: OpenCV's BGR, converted),
    H x W grey or H x W x 4 with alpha (dropped). A float array is refused: its scale (0-1 or 0-255) cannot be
    told apart safely, and reading 0-1 values as 0-255 gives a black image."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{source}: expected a numpy array (H x W x 3 uint8 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = (" convert it with (image * 255).round().astype(np.uint8) if its values are 0-1, or "
                "image.astype(np.uint8) if they are 0-255" if np.issubdtype(image.dtype, np.floating) else "")
        raise ValueError(f"{source}: expected a uint8 image (values 0-255), got dtype {image.dtype};{hint}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"{source}: expected an H x W x 3 RGB array, got shape {image.shape}")
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if bgr else image)


def video_properties(path) -> dict:
    """Frame rate, frame count (as the container says) and size of a video file."""
    capture = open_video(path)
    try:
        return {"fps": capture.get(cv2.CAP_PROP_FPS) or 25.0, "frames": int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
                "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        capture.release()


def open_video(path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise OSError(f"{path}: cannot open as a video (OpenCV could not decode it)")
    return capture


def video_frames(path) -> Iterator[np.ndarray]:
    """A video's frames, in order, as uint8 RGB arrays."""
    capture = open_video(path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def write_video(path, frames, fps: float) -> int:
    """RGB frames (all one size) to an MP4 (mp4v) file; returns the number written."""
    writer, count = None, 0
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
                if not writer.isOpened():
                    raise OSError(f"{path}: OpenCV cannot write an mp4v video here")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def readable_images(files, skipped: list, log=print) -> Iterator[tuple[int, Path, np.ndarray]]:
    """``(index, path, uint8 RGB image)`` for each file that reads; each one that does not is said and its error
    appended to ``skipped``, and one that reads but is damaged (``image_file_problem``) is said and given."""
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
        yield n, Path(path), image
