"""`pose-toss predict`: people, keypoints, scores and full covariances for photos, folders and videos.

Boxes come from a torchvision person detector (``--detector``), a COCO-format detections file (``--boxes``) or
are the whole image. Video frames are read with OpenCV, detected every ``--every`` frames (between detections
each person's box follows its keypoints), tracked by box IoU (optionally gated by the covariance) and
smoothed per track with the full covariance. Outputs: ``predictions.json`` (COCO keypoint results with
``covariance``, per-keypoint scores, ``bbox``, ``file_name``; for videos ``frame`` and ``track_id``), a full-frame
picture per image and an annotated video per video.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pose_toss.commands.options import add_checkpoint, add_device, add_output, add_quiet, parse_levels, whole_number

SMOOTHING = ("online", "offline", "none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument("--inputs", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help="images, videos (.mp4, .avi, .mov, ...) or folders of them")
    p.add_argument("--detector", metavar="NAME", help="find people with this torchvision detector (e.g. "
                   "fasterrcnn_mobilenet_v3_large_fpn); default: --boxes, else the whole image is one person")
    p.add_argument("--detector-weights", default="download", metavar="FILE|download|random",
                   help="the detector's weights: a local state-dict file, 'download' (torchvision's COCO weights, "
                        "fetched once into torch's cache) or 'random' (for testing only)")
    p.add_argument("--boxes", help="COCO-format person detections (image_id or file_name, bbox, score) instead "
                                   "of a detector")
    p.add_argument("--score-threshold", type=float, default=0.5, help="drop detections scored below this")
    p.add_argument("--every", type=whole_number(1), default=1, metavar="N",
                   help="video: detect people every N frames; in between, each box follows its person's keypoints")
    p.add_argument("--min-iou", type=float, default=0.3, help="video: a person continues a track when their box "
                                                             "overlaps the track's last box at least this much")
    p.add_argument("--gate", type=float, default=None, metavar="P",
                   help="video: also refuse a match when the pose moved beyond the P-quantile of the chi-square "
                        "under the two frames' covariances (e.g. 0.999)")
    p.add_argument("--smooth", choices=SMOOTHING, default="online",
                   help="video: smooth each track with its full covariances: 'online' (causal, as for a stream: "
                        "alpha and q fitted on the track's first frames), 'offline' (RTS on the whole track) or "
                        "'none'")
    p.add_argument("--lag", type=whole_number(0), default=0,
                   help="video, --smooth online: frames of look-ahead (fixed-lag)")
    p.add_argument("--levels", default="0.5,0.9", help="probability levels of the ellipses, comma-separated")
    p.add_argument("--no-pictures", action="store_true", help="write predictions.json only")
    p.add_argument("--batch", type=whole_number(1), default=32, help="person crops per forward pass")
    add_output(p)
    add_device(p)
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    # The model's imports (torch, timm) happen here, so that `pose-toss predict --help` stays quick.
    from pose_toss.engine.predict_media import predict_media

    if args.detector and args.boxes:
        raise ValueError("give either --detector or --boxes, not both")
    summary = predict_media(args.checkpoint, args.inputs, args.out, detector=args.detector,
                            detector_weights=args.detector_weights, boxes=args.boxes,
                            score_threshold=args.score_threshold, every=args.every, min_iou=args.min_iou,
                            gate=args.gate, smooth=args.smooth, lag=args.lag, levels=parse_levels(args.levels),
                            pictures=not args.no_pictures, batch_size=args.batch, device=args.device,
                            overwrite=args.overwrite, progress=not args.quiet)
    out = Path(args.out)
    print(f"{summary['people']} people in {summary['images']} images and {summary['frames']} video frames with people "
          f"({summary['tracks']} tracks)")
    print(f"predictions (COCO + covariance + scores): {out / 'predictions.json'}")
    if not args.no_pictures:
        print(f"pictures: {out / 'pictures'}" + (f"; videos: {', '.join(summary['videos'])}"
                                                 if summary["videos"] else ""))
    return 0
