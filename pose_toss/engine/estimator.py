"""From a photo to calibrated keypoints in one call: ``PoseEstimator``.

    estimator = PoseEstimator("runs/demo/run")                      # the whole image is one person
    people = estimator("photo.jpg")                                 # [Person(keypoints, keypoint_scores, ...)]
    keypoints, scores = estimator.keypoints(image_rgb)              # N x J x 2, N x J, like rtmlib

Person boxes come from a detector (``detector="fasterrcnn_mobilenet_v3_large_fpn"``, torchvision's, or any
callable image -> N x 5 ``[x, y, w, h, score]``), from boxes given per call, or are the whole image. Each
keypoint's score is its expected keypoint similarity under the predicted covariance (what ``eval`` writes,
``coco_results.keypoint_scores``); the person's score is the detector's score times the mean keypoint score, as
MMPose combines them: the expected OKS says how well a person is localised, the detector whether one is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose_toss.coco_results import coco_entry, keypoint_scores
from pose_toss.config import load_config
from pose_toss.data.dataset import load_image_rgb
from pose_toss.data.media import IMAGE_SUFFIXES, as_rgb_image, find_media, is_video
from pose_toss.data.readers import DATASET_SKELETONS
from pose_toss.engine.runtime import resolve_device
from pose_toss.models.checkpoint import load_model
from pose_toss.models.detector import PersonDetector
from pose_toss.run_dir import CONFIG_FILE, resolve_checkpoint
from pose_toss.skeletons import Skeleton, get_skeleton

Detector = Callable[[np.ndarray], np.ndarray]


@dataclass
class Person:
    """One person in image pixels: ``keypoints`` J x 2, ``keypoint_scores`` J (expected keypoint similarity),
    ``covariance`` 2J x 2J ([x0, y0, x1, y1, ...], pixels²), ``box`` [x, y, w, h], ``score`` (the detection
    score times the mean keypoint score), ``detection_score`` (1 for a given box or the whole image) and, from a
    model with an occlusion head, ``occluded`` (J: each joint's probability of being hidden)."""

    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    covariance: np.ndarray
    box: np.ndarray
    score: float
    detection_score: float = 1.0
    skeleton: str | None = None  # the name of the joint set the keypoints follow
    occluded: np.ndarray | None = None

    def coco(self, image_id) -> dict:
        """A COCO keypoint result with the covariance (what ``eval`` and ``predict`` write), its box and both
        parts of its score."""
        return {**coco_entry(self.keypoints, self.covariance, self.keypoint_scores, image_id, self.score,
                             self.box[2] * self.box[3], skeleton=self.skeleton),
                "keypoint_score": round(float(self.keypoint_scores.mean()), 5),
                "detection_score": round(float(self.detection_score), 5),
                "bbox": [round(float(v), 2) for v in self.box],
                **({"occluded": [round(float(p), 4) for p in self.occluded]} if self.occluded is not None else {})}


@dataclass
class ImagePeople:
    """The people found in one input image."""

    source: str
    people: list[Person]


def model_skeleton(model, run_dir) -> Skeleton:
    """The joint set a model was trained on: the one its file stores, else its run's config's, else the built-in
    one with its joint count."""

    if getattr(model, "skeleton", None) is not None:
        return model.skeleton
    if run_dir is not None and (Path(run_dir) / CONFIG_FILE).is_file():
        dataset = load_config(Path(run_dir) / CONFIG_FILE).data.dataset
        return get_skeleton(DATASET_SKELETONS.get(dataset, "lsp14"))
    by_count = {14: "lsp14", 16: "mpii16", 17: "coco17"}
    if model.num_joints not in by_count:
        raise ValueError(f"cannot tell the skeleton of a {model.num_joints}-joint model without its run's config.yaml")
    return get_skeleton(by_count[model.num_joints])


class PoseEstimator:
    """A trained pose-toss model ready for images.

    ``checkpoint``: a run directory (its best model), a model file or a checkpoint directory. ``detector``:
    None (each image is one person unless boxes are given), a torchvision detector's name
    (``models.detector.DETECTORS``; ``detector_weights``: a local file, ``"download"`` or ``"random"``), a
    ``PersonDetector`` or any callable uint8 RGB image -> N x 5 ``[x, y, w, h, score]``. ``score_threshold``:
    detections below it are dropped. ``device``: ``auto``, ``cpu`` or ``cuda``."""

    def __init__(self, checkpoint, detector: str | Detector | None = None, *, detector_weights="download",
                 score_threshold: float = 0.5, device: str = "auto", batch_size: int = 32,
                 padding: float = 1.25) -> None:
        self.device = resolve_device(device)
        model_file, run_dir = resolve_checkpoint(checkpoint)
        self.model = load_model(model_file, map_location=self.device)
        self.skeleton = model_skeleton(self.model, run_dir)
        self.detector = (PersonDetector(detector, detector_weights, score_threshold, device=self.device)
                         if isinstance(detector, str) else detector)
        self.score_threshold, self.batch_size, self.padding = score_threshold, batch_size, padding

    def __call__(self, inputs, boxes=None, bgr: bool = False) -> list[Person] | list[ImagePeople]:
        """People per image. One image (an array or an image file) gives its ``list[Person]``; a folder or a list
        gives an ``ImagePeople`` per image, in order. ``boxes``: for one image an N x 4 (or N x 5 with scores)
        array of ``[x, y, w, h]``; for several, one such array per image. ``bgr``: arrays are OpenCV's BGR."""
        single = isinstance(inputs, np.ndarray) or (isinstance(inputs, (str, Path)) and Path(inputs).is_file())
        if single:
            return self.predict_image(self._read(inputs, bgr), boxes)
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        sources: list = []
        for item in items:
            sources += [item] if isinstance(item, np.ndarray) else find_media([item], "inputs", videos=False)
        if boxes is not None and len(boxes) != len(sources):
            raise ValueError(f"got {len(boxes)} box arrays for {len(sources)} images")
        return [ImagePeople(str(src) if not isinstance(src, np.ndarray) else f"array {n}",
                            self.predict_image(self._read(src, bgr), None if boxes is None else boxes[n]))
                for n, src in enumerate(sources)]

    def keypoints(self, image, boxes=None, bgr: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The short form: keypoints N x J x 2 and their scores N x J (image pixels) of one image."""
        people = self(image if isinstance(image, np.ndarray) else Path(image), boxes, bgr)
        j = self.model.num_joints
        return (np.stack([p.keypoints for p in people]) if people else np.zeros((0, j, 2)),
                np.stack([p.keypoint_scores for p in people]) if people else np.zeros((0, j)))

    def predict_image(self, image: np.ndarray, boxes=None) -> list[Person]:
        """The people of one uint8 RGB image: in ``boxes`` (N x 4, or N x 5 with detection scores), else found
        by the detector, else the whole image as one person."""
        image = as_rgb_image(image)
        if boxes is None and self.detector is not None:
            boxes = np.asarray(self.detector(image), dtype=np.float64).reshape(-1, 5)
        whole = boxes is None
        if whole:
            boxes = np.array([[0.0, 0.0, image.shape[1], image.shape[0], 1.0]])
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
            raise ValueError(f"boxes: expected N x 4 [x, y, w, h] (or N x 5 with scores), got shape {boxes.shape}")
        if boxes.shape[1] == 4:
            boxes = np.concatenate([boxes, np.ones((len(boxes), 1))], axis=1)
        if not len(boxes):
            return []
        pred = self.model.predict(image, [boxes[:, :4]], padding=1.0 if whole else self.padding,
                                  batch_size=self.batch_size)[0]
        people = []
        hidden = pred.get("occluded", [None] * len(boxes))
        for joints, cov, box, occluded in zip(pred["joints"], pred["cov"], boxes, hidden, strict=True):
            scores = keypoint_scores(cov, float(box[2] * box[3]), self.skeleton.oks_sigmas)
            people.append(Person(keypoints=joints, keypoint_scores=scores, covariance=0.5 * (cov + cov.T),
                                 box=box[:4], score=float(box[4]) * float(scores.mean()),
                                 detection_score=float(box[4]), skeleton=self.skeleton.name, occluded=occluded))
        return people

    @staticmethod
    def _read(source, bgr: bool) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return as_rgb_image(source, bgr=bgr)
        path = Path(source)
        if is_video(path):
            raise ValueError(f"{path}: a video; PoseEstimator takes images (pose-toss predict reads videos)")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
        return load_image_rgb(path)

