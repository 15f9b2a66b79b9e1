"""Poses and joint covariance ellipses drawn with OpenCV (RGB uint8 images in, copies out)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pose_toss import outputs
from pose_toss.covariance import condition, joint_correlations
from pose_toss.skeletons import LSP14, Skeleton

SIDE_COLOURS = {"right": (255, 128, 0), "left": (0, 160, 255), "centre": (60, 220, 60)}
_SHIFT = 4  # sub-pixel bits for OpenCV drawing


def chi2_2dof(level: float) -> float:
    """Squared Mahalanobis radius holding probability ``level`` of a 2-D Gaussian."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"probability level must be in (0, 1), got {level}")
    return -2.0 * math.log1p(-level)


def ellipse_axes(cov2: np.ndarray, level: float) -> tuple[float, float, float]:
    """(major half-axis, minor half-axis, angle of the major axis in degrees) of the ``level`` ellipse."""
    cov2 = 0.5 * (np.asarray(cov2, dtype=np.float64) + np.asarray(cov2, dtype=np.float64).T)
    evals, evecs = np.linalg.eigh(cov2)
    evals = np.clip(evals, 0.0, None)
    r2 = chi2_2dof(level)
    major, minor = math.sqrt(evals[1] * r2), math.sqrt(evals[0] * r2)
    angle = math.degrees(math.atan2(evecs[1, 1], evecs[0, 1]))
    return major, minor, angle


def _pt(p: Sequence[float]) -> tuple[int, int]:
    return int(round(p[0] * (1 << _SHIFT))), int(round(p[1] * (1 << _SHIFT)))


def line_width(image: np.ndarray) -> int:
    """Stroke width that stays legible from thumbnails to full photos."""
    return max(1, int(round(min(image.shape[:2]) / 160)))


def draw_pose(image: np.ndarray, joints: np.ndarray, cov: np.ndarray | None = None, skeleton: Skeleton = LSP14,
              visibility: np.ndarray | None = None, levels: Sequence[float] = (0.5, 0.9),
              labels: bool = False, thickness: int | None = None) -> np.ndarray:
    """The skeleton, and for each joint the ellipses of its 2x2 marginal at each probability level.

    ``joints`` is J x 2 (or flat 2J) in the image's pixels; ``cov`` is 2J x 2J in pixels^2.
    """
    img = np.ascontiguousarray(image).copy()
    joints = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    j = skeleton.num_joints
    if joints.shape[0] != j:
        raise ValueError(f"expected {j} joints for skeleton {skeleton.name!r}, got {joints.shape[0]}")
    vis = np.ones(j, bool) if visibility is None else np.asarray(visibility).reshape(-1) > 0
    lw = thickness or line_width(img)
    joint_side = ["centre"] * j
    for (a, b), side in zip(skeleton.limbs, skeleton.limb_sides, strict=False):
        if vis[a] and vis[b]:
            cv2.line(img, _pt(joints[a]), _pt(joints[b]), SIDE_COLOURS[side], lw, cv2.LINE_AA, _SHIFT)
        for k in (a, b):
            name = skeleton.joint_names[k]
            joint_side[k] = "right" if name.startswith("r_") else "left" if name.startswith("l_") else "centre"
    if cov is not None:
        cov = np.asarray(cov, dtype=np.float64)
        for k in range(j):
            if not vis[k]:
                continue
            block = cov[2 * k: 2 * k + 2, 2 * k: 2 * k + 2]
            colour = SIDE_COLOURS[joint_side[k]]
            for n, level in enumerate(sorted(levels)):
                major, minor, angle = ellipse_axes(block, level)
                axes = (int(round(major * (1 << _SHIFT))), int(round(minor * (1 << _SHIFT))))
                width = max(1, lw - n) if n else lw
                cv2.ellipse(img, _pt(joints[k]), axes, angle, 0, 360, colour, width, cv2.LINE_AA, _SHIFT)
    radius = max(1.5, 1.2 * lw)
    for k in range(j):
        if vis[k]:
            cv2.circle(img, _pt(joints[k]), int(radius * (1 << _SHIFT)), (255, 255, 255), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, _pt(joints[k]), int(radius * (1 << _SHIFT)), (0, 0, 0), 1, cv2.LINE_AA, _SHIFT)
            if labels:
                cv2.putText(img, skeleton.joint_names[k], (int(joints[k][0]) + 3, int(joints[k][1]) - 3),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.3 * lw, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def enlarge(image: np.ndarray, joints: np.ndarray, cov: np.ndarray | None, factor: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The image resized by ``factor`` with joints (J x 2) and covariance mapped to it, using the
    resize's pixel-centre convention x' = (x + 0.5) f - 0.5 (small crops become legible)."""
    h, w = image.shape[:2]
    big = cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_LINEAR)
    pts = (np.asarray(joints, dtype=np.float64).reshape(-1, 2) + 0.5) * factor - 0.5
    scaled_cov = None if cov is None else np.asarray(cov, dtype=np.float64) * factor**2
    return big, pts, scaled_cov


def draw_pose_scaled(image: np.ndarray, joints: np.ndarray, cov: np.ndarray | None, factor: float,
                     **kwargs) -> np.ndarray:
    """``draw_pose`` on the image enlarged by ``factor`` (see ``enlarge``)."""
    return draw_pose(*enlarge(image, joints, cov, factor), **kwargs)


def contact_sheet(tiles: Sequence[np.ndarray], cols: int = 4, tile_size: int = 256, pad: int = 4) -> np.ndarray:
    """Tiles resized to ``tile_size`` and laid out in a grid on a dark background."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one image")
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * (tile_size + pad) + pad, cols * (tile_size + pad) + pad, 3), 24, np.uint8)
    for n, tile in enumerate(tiles):
        h, w = tile.shape[:2]
        k = tile_size / max(h, w)
        small = cv2.resize(tile, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        r, c = divmod(n, cols)
        y, x = pad + r * (tile_size + pad), pad + c * (tile_size + pad)
        sheet[y: y + small.shape[0], x: x + small.shape[1]] = small
    return sheet


def write_png(path, image_rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically."""

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    outputs.atomic_write_bytes(path, buf.tobytes())  # through the module: one place to intercept every write


def _blend(base: np.ndarray, layer: np.ndarray, alpha: float) -> np.ndarray:
    return cv2.addWeighted(layer, alpha, base, 1.0 - alpha, 0.0)


def draw_conditional(image: np.ndarray, mean: np.ndarray, cov: np.ndarray, observed: dict,
                     skeleton: Skeleton = LSP14, visibility: np.ndarray | None = None,
                     levels: Sequence[float] = (0.9,)) -> np.ndarray:
    """What fixing some joints does to the rest: the prediction faded, then the pose conditioned on
    ``observed`` ({joint index: (x, y)}) with its conditional ellipses, an arrow from each joint's
    predicted to its conditional position, and a cross on each fixed joint."""

    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    cond_mean, cond_cov = condition(mean, np.asarray(cov, dtype=np.float64), observed)
    faded = _blend(image, draw_pose(image, mean, cov, skeleton, visibility, levels), 0.35)
    j = skeleton.num_joints
    vis = np.ones(j, bool) if visibility is None else np.asarray(visibility).reshape(-1) > 0
    # Fixed joints get a tiny ellipse instead of a zero one: draw_pose needs a covariance per joint.
    shown_cov = cond_cov + np.diag(np.repeat([1e-6 if k in observed else 0.0 for k in range(j)], 2))
    img = draw_pose(faded, cond_mean, shown_cov, skeleton, visibility, levels)
    lw = line_width(img)
    before, after = mean.reshape(-1, 2), cond_mean.reshape(-1, 2)
    for k in range(j):
        if vis[k] and k not in observed and np.linalg.norm(after[k] - before[k]) > 1.0:
            cv2.arrowedLine(img, _pt(before[k]), _pt(after[k]), (255, 255, 255), max(1, lw // 2), cv2.LINE_AA,
                            _SHIFT, tipLength=0.3)
    size = 4 * lw
    for k in observed:
        x, y = after[int(k)]
        for dx, dy in ((1, 1), (1, -1)):
            cv2.line(img, _pt((x - dx * size, y - dy * size)), _pt((x + dx * size, y + dy * size)), (255, 0, 255),
                     lw + 1, cv2.LINE_AA, _SHIFT)
    return img


def draw_correlation_links(image: np.ndarray, joints: np.ndarray, cov: np.ndarray, skeleton: Skeleton = LSP14,
                           threshold: float = 0.5, visibility: np.ndarray | None = None) -> np.ndarray:
    """The pose, plus a magenta link between every pair of joints whose canonical correlation
    (``pose_toss.covariance.joint_correlations``) exceeds ``threshold``; thicker is stronger."""


    img = draw_pose(image, joints, cov, skeleton, visibility)
    pts = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    corr = joint_correlations(torch.as_tensor(np.asarray(cov, dtype=np.float64))).numpy()
    j = skeleton.num_joints
    vis = np.ones(j, bool) if visibility is None else np.asarray(visibility).reshape(-1) > 0
    layer = img.copy()
    lw = line_width(img)
    for a in range(j):
        for b in range(a + 1, j):
            if vis[a] and vis[b] and corr[a, b] > threshold:
                width = max(1, int(round(lw * (1 + 3 * (corr[a, b] - threshold) / max(1 - threshold, 1e-6)))))
                cv2.line(layer, _pt(pts[a]), _pt(pts[b]), (255, 0, 255), width, cv2.LINE_AA, _SHIFT)
    return _blend(img, layer, 0.7)


def _text(img: np.ndarray, text: str, origin, scale: float, colour=(255, 255, 255), thickness: int = 1,
          backdrop: bool = False) -> None:
    """Text at ``origin`` (its baseline's left end); ``backdrop`` puts a dark box behind it, legible on any image."""
    x, y = int(origin[0]), int(origin[1])
    if backdrop:
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base), (20, 20, 20), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def draw_crosses(image: np.ndarray, points: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """A small cross on each point (N x 2, the image's pixels), outlined in black so it shows on any colour."""
    img = np.ascontiguousarray(image).copy()
    size = 2 * line_width(img) + 2
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        for ink, width in (((0, 0, 0), 3), (colour, 1)):
            cv2.line(img, _pt((x - size, y)), _pt((x + size, y)), ink, width, cv2.LINE_AA, _SHIFT)
            cv2.line(img, _pt((x, y - size)), _pt((x, y + size)), ink, width, cv2.LINE_AA, _SHIFT)
    return img


def _wrapped(text: str, width: int, scale: float) -> list[str]:
    """``text`` broken at spaces into lines that fit ``width`` pixels at ``scale``."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def legend_strip(width: int, levels: Sequence[float] = (0.5, 0.9), notes: Sequence[str] = ()) -> np.ndarray:
    """A dark strip, ``width`` wide, that says what the drawing shows: the rings (drawn as in ``draw_pose``: the
    thickest is the smallest level), the colours of the body's sides, and the notes, wrapped to fit."""
    scale = float(np.clip(width / 1400, 0.35, 0.8))
    row = int(34 * scale / 0.5)
    x = row // 2
    rings = " / ".join(f"{100 * v:g} %" for v in sorted(levels))
    ring_lines = _wrapped(f"rings: {rings} of each joint's predicted distribution (where the true joint is, that "
                          "often)", width - 2 * row - x, scale)
    note_lines = [line for note in notes for line in _wrapped(note, width - 2 * x, scale)]
    strip = np.full((row * (len(ring_lines) + 1 + len(note_lines)) + row // 2, width, 3), 28, np.uint8)
    lw = max(1, int(round(2 * scale / 0.5)))
    y = row
    for n in range(len(levels)):
        radius = int(row * (0.22 + 0.14 * n))
        cv2.ellipse(strip, (x + row // 2, y - row // 4), (radius, int(radius * 0.7)), 0, 0, 360, (220, 220, 220),
                    max(1, lw - n) if n else lw, cv2.LINE_AA)
    for line in ring_lines:
        _text(strip, line, (x + row + 4, y), scale, (230, 230, 230))
        y += row
    cx = x
    for side in ("left", "right", "centre"):
        cv2.line(strip, (cx, y - row // 4), (cx + row, y - row // 4), SIDE_COLOURS[side], lw + 1, cv2.LINE_AA)
        _text(strip, side, (cx + row + 4, y), scale, (230, 230, 230))
        cx += row + 4 + int(cv2.getTextSize(side, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]) + row
    for line in note_lines:
        y += row
        _text(strip, line, (x, y), scale, (230, 230, 230))
    return strip


def with_legend(image: np.ndarray, levels: Sequence[float] = (0.5, 0.9), notes: Sequence[str] = ()) -> np.ndarray:
    """The image with ``legend_strip`` below it."""
    return np.concatenate([image, legend_strip(image.shape[1], levels, notes)], axis=0)


def draw_people(image: np.ndarray, people: Sequence[dict], skeleton: Skeleton = LSP14,
                levels: Sequence[float] = (0.5, 0.9), min_side: int = 720, legend: bool = True) -> np.ndarray:
    """Every person on the whole frame: box, skeleton, each joint's ellipses and a label with the person's score
    (and track id). ``people``: dicts with ``keypoints`` (J x 2), ``covariance`` (2J x 2J), ``box``
    ([x, y, w, h]), ``score`` and optionally ``track_id``, in the image's pixels. A small frame is enlarged to
    ``min_side`` on its short side first, so labels stay legible; ``legend`` adds what the marks mean."""
    factor = max(1.0, min_side / max(1, min(image.shape[:2])))
    img = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)),
                     interpolation=cv2.INTER_LINEAR) if factor > 1 else np.ascontiguousarray(image).copy()
    lw = line_width(img)
    scale = float(np.clip(min(img.shape[:2]) / 1200, 0.4, 1.0))
    for person in people:
        pts = (np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 2) + 0.5) * factor - 0.5
        cov = np.asarray(person["covariance"], dtype=np.float64) * factor**2
        img = draw_pose(img, pts, cov, skeleton, levels=levels)
        x, y, w, h = (np.asarray(person["box"], dtype=np.float64) * factor).tolist()
        cv2.rectangle(img, _pt((x, y)), _pt((x + w, y + h)), (200, 200, 200), max(1, lw // 2), cv2.LINE_AA, _SHIFT)
        label = f"{person['score']:.2f}"
        if person.get("track_id") is not None:
            label = f"#{person['track_id']} {label}"
        _text(img, label, (x + 2, max(y - 5, 30 * scale)), 1.4 * scale, (255, 255, 0), max(1, lw // 2),
              backdrop=True)
    if not legend:
        return img
    return with_legend(img, levels, ["label: person score = detection score x mean keypoint score (expected "
                                     "keypoint similarity under the covariance); #n: track"])
