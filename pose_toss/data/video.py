"""Synthetic video: one figure moving smoothly, its noise cues (occluders, blur, fades) lasting several frames.

Poses are keyframes of the synthetic generator joined by a Catmull-Rom spline (continuous position and
velocity), seen at a fixed scale and tilt around a slowly drifting centre; the background, clutter and
colours stay those of the sequence. Each frame's labels carry the generator's noise model, so every frame
has its true label covariance, and a cue raises it on its limb for as long as it lasts.
"""

from __future__ import annotations

import numpy as np

from pose_toss.data.synthetic import (
    BODY_HEIGHT,
    CUE_KINDS,
    CUE_LIMBS,
    Cue,
    SyntheticPoseDataset,
    _rot,
    articulated_pose,
    render_figure,
)


def catmull_rom(keys: np.ndarray, steps: int) -> np.ndarray:
    """Points along the Catmull-Rom spline through ``keys`` (K x ...), ``steps`` per segment."""
    pts = np.concatenate([keys[:1], keys, keys[-1:]])
    out = []
    for k in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[k - 1], pts[k], pts[k + 1], pts[k + 2]
        for s in np.arange(steps) / steps:
            out.append(0.5 * (2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2
                              + (3 * p1 - p0 - 3 * p2 + p3) * s**3))
    return np.stack(out)


def synthetic_sequence(length: int = 60, image_size: int = 128, seed: int = 0, keyframe_every: int = 15,
                       cue_events: int = 3, cue_frames: tuple[int, int] = (6, 20), render: bool = True,
                       generator: SyntheticPoseDataset | None = None) -> list[dict]:
    """``length`` frames of one moving figure as records (``image``, ``joints`` (noisy labels),
    ``joints_true``, ``visibility``, ``cov_true``, ``bbox``, ``cues``, ``image_id`` = ``frame`` = t).
    ``cue_events`` cues each start at a random frame and last ``cue_frames`` frames."""
    if length < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {length}")
    gen = generator or SyntheticPoseDataset(1, image_size, seed)
    if gen.image_size != image_size:
        raise ValueError(f"generator draws {gen.image_size} px images, the sequence {image_size} px")
    rng = np.random.default_rng([seed, 7919])
    keys = np.stack([articulated_pose(rng) for _ in range(length // keyframe_every + 2)])
    body = catmull_rom(keys, keyframe_every)[:length]
    height_px = image_size * rng.uniform(0.55, 0.75) / BODY_HEIGHT
    tilt = _rot(float(np.clip(rng.normal(0.0, 0.2), -0.6, 0.6)))
    start, end = (np.full(2, (image_size - 1) / 2) + rng.uniform(-0.08, 0.08, (2, 2)) * image_size)
    events = []
    for _ in range(cue_events):
        t0 = int(rng.integers(0, length))
        events.append((t0, t0 + int(rng.integers(*cue_frames)), Cue(str(rng.choice(CUE_KINDS)),
                       CUE_LIMBS[int(rng.integers(len(CUE_LIMBS)))], float(rng.uniform(0.5, 1.0)))))
    render_seed = int(rng.integers(2**31))
    frames = []
    for t in range(length):
        pts = body[t] @ tilt.T * height_px
        centre = start + (end - start) * t / max(length - 1, 1)
        joints_true = pts - 0.5 * (pts.min(0) + pts.max(0)) + centre
        cues = [c for t0, t1, c in events if t0 <= t < t1]
        rec = {**gen.labels(joints_true, height_px, cues, rng), "index": t, "image_id": t, "frame": t}
        if render:  # the same drawing randomness every frame: the scene stays, the figure moves
            rec["image"] = render_figure(image_size, joints_true, height_px, cues, np.random.default_rng(render_seed))
        frames.append(rec)
    return frames
