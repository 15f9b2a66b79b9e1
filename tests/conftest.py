import os
from pathlib import Path

import cv2
import pytest
import torch

# Keep the suite predictable on small CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
cv2.setNumThreads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real annotation files beside the checkout; tests using them skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder {SHARED} not present")
    return SHARED
