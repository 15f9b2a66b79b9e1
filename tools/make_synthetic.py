"""Render the synthetic pose dataset; same as `pose-toss make-synthetic` (see --help)."""

import sys

from pose_toss.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-synthetic", *sys.argv[1:]]))
