"""`pose-toss eval` as a script (works under `torchrun`): python tools/eval.py --help"""

import sys

from pose_toss.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
