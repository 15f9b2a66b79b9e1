"""`pose-toss data-check`: counts, problems and a contact sheet of augmented crops, before a long run."""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from pose_toss.commands.options import add_config, add_output
from pose_toss.config import load_config
from pose_toss.data.dataset import PoseDataset, crop_labels, image_file_problem, sample_image_rgb
from pose_toss.data.loading import load_records
from pose_toss.outputs import atomic_write_text, check_output_dir, jsonable, staged_output_dir
from pose_toss.skeletons import Skeleton
from pose_toss.viz.draw import contact_sheet, draw_pose_scaled, write_png


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    add_output(p, "where summary.json/.md and contact_sheet.png go", required=False, default="runs/data-check")
    p.add_argument("--count", type=int, default=16, help="crops on the contact sheet")
    p.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    add_config(p)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    result = data_check(cfg, args.out, split=args.split, count=args.count, overwrite=args.overwrite)
    print(f"summary: {Path(args.out) / 'summary.json'} and summary.md")
    return 1 if result["problems"] and args.strict else 0

# A person with fewer usable joints than this teaches little and often means a bad annotation.
FEW_JOINTS = 4


def dataset_summary(records: list[dict], skeleton: Skeleton, input_size: int, padding: float) -> dict:
    """Per dataset: images, people, visible joints per joint name, the occlusion flags (hidden of known, what
    ``model.occlusion_head`` learns) and the problems found."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.get("dataset", "synthetic")].append(i)
    labels = crop_labels(records, input_size, padding)  # visibility inside the unaugmented crop
    summary = {}
    for name, idx in groups.items():
        recs = [records[i] for i in idx]
        vis = np.stack([np.asarray(r["visibility"], dtype=np.float64) > 0 for r in recs])
        in_crop = labels["visibility"][idx] > 0
        paths = sorted({r["image_path"] for r in recs if r.get("image_path")})
        missing = [p for p in paths if not os.path.isfile(p)]
        damaged = [f"{p} ({why})" for p in paths if os.path.isfile(p) for why in [image_file_problem(p)] if why]
        flags = np.stack([np.full(skeleton.num_joints, np.nan) if r.get("occluded") is None
                          else np.asarray(r["occluded"], dtype=np.float64).reshape(-1) for r in recs])
        few = int((vis.sum(axis=1) < FEW_JOINTS).sum())
        outside = int((vis & ~in_crop).sum())
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(paths)} image files missing, e.g. {missing[0]}")
        if damaged:
            problems.append(f"{len(damaged)} of {len(paths)} image files damaged, e.g. {damaged[0]}")
        if few:
            problems.append(f"{few} people with fewer than {FEW_JOINTS} visible joints")
        if outside:
            problems.append(f"{outside} visible joints fall outside their person crop "
                            f"(data.padding {padding}); they are masked in training")
        summary[name] = {
            "images": len(paths) if paths else len(recs), "people": len(recs),
            "visible_joints": {n: int(c) for n, c in zip(skeleton.joint_names, vis.sum(axis=0), strict=True)},
            "visible_fraction": float(vis.mean()), "occlusion_flags_known": int(np.isfinite(flags).sum()),
            "occlusion_flags_hidden": int((np.nan_to_num(flags) > 0).sum()),
            "missing_images": missing, "damaged_images": damaged,
            "problems": problems,
        }
    return summary


def augmented_crops(records: list[dict], data_cfg, skeleton: Skeleton, count: int = 16, seed: int = 0,
                    tile: int = 192) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``count`` training crops after augmentation with their joints drawn, and the unreadable files met."""
    dataset = PoseDataset.from_config(records, data_cfg, train=True, skeleton=skeleton, seed=seed)
    # Missing files are counted in the summary; draw from the people whose image exists.
    present = [i for i, r in enumerate(records) if r.get("image") is not None or os.path.isfile(r["image_path"])]
    order = np.random.default_rng(seed).permutation(present)
    tiles, unreadable = [], []
    for i in order:
        if len(tiles) >= count:
            break
        sample = dataset[int(i)]
        if "missing_image" in sample:
            unreadable.append(sample["missing_image"])
            continue
        image = sample_image_rgb(sample)
        tiles.append(draw_pose_scaled(image, sample["target"].numpy(), None, tile / image.shape[0],
                                      skeleton=skeleton, visibility=sample["visibility"].numpy()))
    return tiles, unreadable


def format_summary(summary: dict, skeleton: Skeleton) -> str:
    names = list(summary)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    rows = [("images", [summary[n]["images"] for n in names]), ("people", [summary[n]["people"] for n in names])]
    rows += [(f"visible {j}", [summary[n]["visible_joints"][j] for n in names]) for j in skeleton.joint_names]
    rows.append(("visible fraction", [f"{summary[n]['visible_fraction']:.3f}" for n in names]))
    rows.append(("occlusion flags: hidden / known", [f"{summary[n]['occlusion_flags_hidden']} / "
                                                     f"{summary[n]['occlusion_flags_known']}" for n in names]))
    return head + "".join(f"| {label} | " + " | ".join(str(v) for v in vals) + " |\n" for label, vals in rows)


def data_check(cfg, out, split: str = "train", count: int = 16, overwrite: bool = False, log=print) -> dict:
    """Summarise ``split`` of the configured data, log it with any problems, and write
    ``summary.json``, ``summary.md`` and ``contact_sheet.png`` (augmented crops) into ``out``."""
    d = cfg.data
    check_output_dir(out, overwrite, cfg.input_paths())
    records, skeleton = load_records(d, split)
    summary = dataset_summary(records, skeleton, d.input_size, d.padding)
    tiles, unreadable = augmented_crops(records, d, skeleton, count, cfg.train.seed)
    table = format_summary(summary, skeleton)
    log(f"data.dataset {d.dataset}, {split} split, skeleton {skeleton.name}:\n{table}")
    problems = [f"{name}: {p}" for name, s in summary.items() for p in s["problems"]]
    problems += [f"unreadable: {u}" for u in dict.fromkeys(unreadable)]
    for p in problems:
        log(f"problem: {p}")
    if not problems:
        log("no problems found")
    out = Path(out)
    with staged_output_dir(out, overwrite=overwrite, inputs=cfg.input_paths()) as stage:
        result = {"dataset": d.dataset, "split": split, "skeleton": skeleton.name, "datasets": summary,
                  "problems": problems}
        atomic_write_text(stage / "summary.json", json.dumps(jsonable(result), indent=1))
        atomic_write_text(stage / "summary.md", table + "".join(f"\n- {p}" for p in problems) + "\n")
        if tiles:
            write_png(stage / "contact_sheet.png", contact_sheet(tiles, cols=4, tile_size=192))
    log(f"contact sheet: {out / 'contact_sheet.png'}" if tiles else "no readable image to draw")
    return result
