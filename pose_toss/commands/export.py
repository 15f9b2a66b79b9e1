"""`pose-toss export`: a model with its covariance as one ONNX graph (``models.onnx``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pose_toss.commands.options import add_checkpoint, add_output, whole_number
from pose_toss.models.checkpoint import load_model
from pose_toss.models.onnx import export_onnx
from pose_toss.outputs import check_output_file, run_lock
from pose_toss.run_dir import resolve_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    add_output(p, "the .onnx file to write", flag="--onnx")
    p.add_argument("--opset", type=whole_number(16, 20), default=17,
                   help="ONNX opset, 16 to 20 (the local scale samples patches with GridSample, from opset 16)")


def run(args: argparse.Namespace) -> int:
    try:  # torch.onnx writes through the onnx package, an optional extra
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError('export needs the onnx package: pip install -e ".[export]" (onnx and onnxruntime)') from None
    model_file, _ = resolve_checkpoint(args.checkpoint)
    target = Path(args.onnx)
    if target.suffix != ".onnx":
        raise ValueError(f"--onnx: expected a file name ending in .onnx, got {target}")
    check_output_file(target, args.overwrite, [model_file])
    model = load_model(model_file)
    with run_lock(target):
        names = export_onnx(model, target, opset=args.opset)
    s, d = model.input_size, 2 * model.num_joints
    print(f"wrote {target} from {model_file}: input 'images' (B x 3 x {s} x {s}, RGB in [0, 1]), outputs "
          f"{', '.join(names)} (mean B x {d} crop pixels [x0, y0, ...], cov B x {d} x {d} pixels^2"
          + (", heatmaps" if "heatmaps" in names else "") + ")")
    return 0
