"""`pose-toss bench` as a script: python tools/bench.py --out runs/bench (see --help)."""

import sys

from pose_toss.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
