"""Pose and covariance ellipses from an exported model with ONNX Runtime, NumPy and OpenCV alone (no torch).

    pose-toss export --checkpoint runs/demo/run --onnx model.onnx
    python examples/onnx_inference.py model.onnx photo.jpg out.png [x y w h]

The optional box is the person (default: the whole image). The crop is the box's longer side times 1.25
(the whole image: 1.0) around its centre, resized to the model's input, as `model.predict` crops; joints
and covariances are mapped back to the image.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import onnxruntime as ort

CHI2_2DOF_90 = 4.605  # the 90 % ellipse: Mahalanobis^2 <= -2 ln(0.1)
# The limbs of the built-in skeletons by joint count (pose_toss.skeletons: LSP-14, MPII-16, COCO-17), copied
# here so that this file needs neither torch nor pose-toss.
LIMBS = {
    14: [(0, 1), (1, 2), (5, 4), (4, 3), (2, 3), (6, 7), (7, 8), (11, 10), (10, 9), (8, 12), (9, 12), (12, 13),
         (2, 8), (3, 9)],
    16: [(0, 1), (1, 2), (2, 6), (5, 4), (4, 3), (3, 6), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12), (12, 7),
         (15, 14), (14, 13), (13, 7)],
    17: [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
         (1, 2), (0, 1), (0, 2), (1, 3), (2, 4)],
}


def crop(image: np.ndarray, box, size: int, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """The square crop around ``box`` resized to ``size``, and its 2 x 3 image -> crop affine map."""
    x, y, w, h = box
    side = max(w, h) * padding
    k = size / side
    cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
    c = (size - 1) / 2
    affine = np.array([[k, 0.0, c - k * cx], [0.0, k, c - k * cy]])
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR), affine


def predict(session: ort.InferenceSession, image_rgb: np.ndarray, box=None) -> tuple[np.ndarray, np.ndarray]:
    """Joints (J x 2) and covariance (2J x 2J) in image pixels; ``box`` [x, y, w, h] or None (whole image)."""
    size = session.get_inputs()[0].shape[-1]
    whole = box is None
    box = [0.0, 0.0, float(image_rgb.shape[1]), float(image_rgb.shape[0])] if whole else box
    patch, affine = crop(image_rgb, box, size, 1.0 if whole else 1.25)
    batch = patch.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    mean, cov = session.run(["mean", "cov"], {"images": batch})[:2]
    lin_inv = np.linalg.inv(affine[:, :2])
    joints = (mean[0].reshape(-1, 2) - affine[:, 2]) @ lin_inv.T
    back = np.kron(np.eye(len(joints)), lin_inv)  # every joint moves by the same inverse map
    return joints, back @ cov[0] @ back.T


def draw(image_bgr: np.ndarray, joints: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """The skeleton (for 14, 16 or 17 joints), each joint's 90 % ellipse and the joints."""
    out = image_bgr.copy()
    for a, b in LIMBS.get(len(joints), []):
        cv2.line(out, tuple(int(round(v)) for v in joints[a]), tuple(int(round(v)) for v in joints[b]),
                 (255, 160, 0), 2, cv2.LINE_AA)
    for j, (x, y) in enumerate(joints):
        evals, evecs = np.linalg.eigh(cov[2 * j:2 * j + 2, 2 * j:2 * j + 2])
        axes = np.sqrt(np.maximum(evals, 0) * CHI2_2DOF_90)
        angle = np.degrees(np.arctan2(evecs[1, 1], evecs[0, 1]))
        cv2.ellipse(out, (int(round(x)), int(round(y))), (max(int(axes[1]), 1), max(int(axes[0]), 1)), angle, 0, 360,
                    (0, 200, 255), 1, cv2.LINE_AA)
        cv2.circle(out, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1, cv2.LINE_AA)
    return out


def main(argv: list[str]) -> int:
    model, image_path, out_path, *box = argv
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {image_path}")
    joints, cov = predict(session, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), [float(v) for v in box] if box else None)
    cv2.imwrite(out_path, draw(bgr, joints, cov))
    print(f"{len(joints)} joints, their skeleton and their 90 % ellipses drawn into {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
