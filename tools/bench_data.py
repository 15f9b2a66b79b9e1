"""Data pipeline throughput on one core at 128 and 256 px (render + crop + augment + heatmaps).

    python tools/bench_data.py [--num 400]
"""

import argparse

from pose_toss.benchmarks import data_throughput, machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=400, help="samples timed per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    m = machine_description()
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, opencv {m['opencv']}")
    print("| input px | samples/s (1 core) |")
    print("| --- | --- |")
    for size in args.sizes:
        print(f"| {size} | {data_throughput(size, args.num):.0f} |")


if __name__ == "__main__":
    main()
