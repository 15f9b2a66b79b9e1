"""Records as a COCO keypoints dataset: what COCO tools (pycocotools' COCOeval, viewers) read."""

from __future__ import annotations

import os

import numpy as np


def record_image_id(record: dict, position: int) -> int:
    """The COCO image id of a record: its own ``image_id``, else its dataset index, else its position."""
    return int(record.get("image_id", record.get("index", position)))


def record_area(record: dict) -> float:
    """The person's area for OKS: COCO's segment area when the record has one, else its box's w x h."""
    if record.get("area") is not None:
        return float(record["area"])
    box = np.asarray(record["bbox"], dtype=np.float64)
    return float(box[2] * box[3])


def record_image_size(record: dict) -> tuple[int, int] | None:
    """(width, height) of a record's image: from the image itself when it is in memory, else from its
    ``image_size``; None when neither is known."""
    if record.get("image") is not None:
        height, width = np.shape(record["image"])[:2]
        return int(width), int(height)
    if record.get("image_size") is not None:
        width, height = record["image_size"]
        return int(width), int(height)
    return None


def coco_ground_truth(records: list[dict], skeleton) -> dict:
    """A COCO keypoints dataset (images, annotations, categories) of ``records``: one annotation per
    record, keypoints ``[x, y, v]`` with v = 2 for a visible joint and 0 (at 0, 0) otherwise."""
    images, annotations = {}, []
    category_id = int(records[0].get("category_id", 1)) if records else 1  # a COCO file's own, else person's 1
    for n, r in enumerate(records):
        image_id = record_image_id(r, n)
        if image_id not in images:
            entry = {"id": image_id, "file_name": os.path.basename(str(r.get("image_path", f"{image_id}.png")))}
            size = record_image_size(r)
            if size is not None:
                entry["width"], entry["height"] = size
            images[image_id] = entry
        joints = np.asarray(r["joints"], dtype=np.float64).reshape(-1, 2)
        vis = np.asarray(r["visibility"]) > 0
        kps = np.concatenate([np.where(vis[:, None], joints, 0.0), np.where(vis, 2.0, 0.0)[:, None]], axis=1)
        box = [float(v) for v in np.asarray(r["bbox"], dtype=np.float64)]
        annotations.append({"id": n + 1, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
                            "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
                            "num_keypoints": int(vis.sum()), "bbox": box, "area": record_area(r)})
    category = {"id": category_id, "name": "person", "supercategory": "person", "keypoints": list(skeleton.joint_names),
                "skeleton": [[a + 1, b + 1] for a, b in skeleton.limbs]}
    return {"images": list(images.values()), "annotations": annotations, "categories": [category]}
