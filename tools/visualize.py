"""`pose-toss visualize` as a script: python tools/visualize.py --help"""

import sys

from pose_toss.cli import main

if __name__ == "__main__":
    sys.exit(main(["visualize", *sys.argv[1:]]))
