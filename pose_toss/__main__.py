import sys

from pose_toss.cli import main

sys.exit(main())
