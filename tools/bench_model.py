"""Cost of TIC: an NLL-TIC training step vs a plain MSE step on the same model and batch, and the
batched Jacobian vs a per-sample autograd loop.

    python tools/bench_model.py [--backbone resnet18] [--size 128] [--batch 16] [--deconv 64 128 256]
"""

import argparse
import json
import warnings

import torch

from pose_toss.benchmarks import machine_description, step_costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--deconv", type=int, nargs="+", default=[128, 256], help="heatmap-head widths to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = machine_description()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}")
    print("| backbone | px | batch | deconv ch | MSE step s | NLL-TIC step s | ratio | Jacobian s (share) "
          "| per-sample loop s | loop / batched |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for width in args.deconv:
        r = step_costs(args.backbone, args.size, args.batch, width, repeats=args.repeats, device=device)
        rows.append(r)
        print(f"| {args.backbone} | {args.size} | {args.batch} | {width} | {r['mse_step_s']:.3f} | "
              f"{r['nll_tic_step_s']:.3f} | {r['nll_tic_over_mse']:.2f}x | {r['jacobian_batched_s']:.3f} "
              f"({100 * r['jacobian_share_of_nll_tic_step']:.0f}%) | {r['jacobian_loop_s']:.3f} | "
              f"{r['jacobian_loop_over_batched']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
