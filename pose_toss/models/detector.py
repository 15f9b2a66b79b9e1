"""Person boxes for top-down pose estimation, from torchvision's COCO-trained detectors.

torchvision is already a dependency, so a user gets a detector without another framework. Weights come from
a local file (a state dict saved by torchvision or ``torch.save(model.state_dict())``), from torchvision's
own download at the user's site (``"download"``: its ``DEFAULT`` COCO weights, cached by torch.hub), or are
random (``"random"``: for tests and timing; such a detector finds nothing meaningful).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.models import detection

# name -> the weights enum torchvision publishes for it (COCO-trained; class 1 is "person")
DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
}
DEFAULT_DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"
COCO_PERSON = 1
COCO_CLASSES = 91


def build_detector(name: str = DEFAULT_DETECTOR, weights: str | Path = "download") -> torch.nn.Module:
    """A torchvision detector in eval mode. ``weights``: a local state-dict file, ``"download"`` (torchvision's
    COCO weights, downloaded once to torch.hub's cache) or ``"random"``."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; expected one of {sorted(DETECTORS)}")
    builder = getattr(detection, name)
    if str(weights) == "download":
        enum = getattr(detection, DETECTORS[name])
        return builder(weights=enum.DEFAULT).eval()
    model = builder(weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    if str(weights) == "random":
        return model.eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights: {path} is not a file (expected a torchvision state dict, "
                                "'download' or 'random')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and format errors all mean "not a state dict"
        raise ValueError(f"detector weights: {path} is not a readable torch state dict ({e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision's reference training scripts save {"model": ..., "optimizer": ...}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"detector weights: {path} does not fit {name} ({first})") from None
    return model.eval()


class PersonDetector:
    """Person boxes ``[x, y, w, h, score]`` (image pixels) for uint8 RGB images, scored at least
    ``score_threshold``, at most ``max_people`` per image, highest score first."""

    def __init__(self, model: torch.nn.Module | str = DEFAULT_DETECTOR, weights: str | Path = "download",
                 score_threshold: float = 0.5, max_people: int = 100, device: str | torch.device = "cpu") -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.device = torch.device(device)
        self.model = (build_detector(model, weights) if isinstance(model, str) else model.eval()).to(self.device)
        self.score_threshold, self.max_people = float(score_threshold), int(max_people)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray] | np.ndarray:
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).to(self.device).float() / 255.0
                   for im in batch]
        found = []
        for out in self.model(tensors):
            keep = (out["labels"] == COCO_PERSON) & (out["scores"] >= self.score_threshold)
            boxes, scores = out["boxes"][keep].cpu().double(), out["scores"][keep].cpu().double()
            order = torch.argsort(scores, descending=True)[:self.max_people]
            xyxy, scores = boxes[order], scores[order]
            xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            rows = torch.cat([xywh, scores[:, None]], dim=1).numpy()
            found.append(rows[(rows[:, 2] > 0) & (rows[:, 3] > 0)])
        return found[0] if single else found

