"""`pose-toss train` as a script (works under `torchrun`): python tools/train.py --help"""

import sys

from pose_toss.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
