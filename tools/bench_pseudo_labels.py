"""Pseudo-label cost vs bank size (E = 64, D = 28, k = 64): seconds and the fitted scaling exponent.

    python tools/bench_pseudo_labels.py [--sizes 10000 40000 100000]
"""

import argparse

import torch

from pose_toss.benchmarks import machine_description, pseudo_label_scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000])
    parser.add_argument("--no-sqrt", action="store_true", help="skip the square roots (no eigendecomposition)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = machine_description()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}")
    res = pseudo_label_scaling(tuple(args.sizes), with_sqrt=not args.no_sqrt, device=device)
    print("| N | seconds |")
    print("| --- | --- |")
    for r in res["rows"]:
        print(f"| {r['n']} | {r['seconds']:.2f} |")
    print(f"fitted exponent: time ~ N^{res['exponent']:.2f}")


if __name__ == "__main__":
    main()
