"""Shared fixtures. Models in tests are built with explicit, seeded random initialisation
(never silently random through the public default)."""
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_data(*parts) -> Path:
    """Path under ../shared/data, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"needs the shared data set {p} (absent on this machine)")
    return p


@pytest.fixture
def random_model():
    from lift.model import LIFTModel

    torch.manual_seed(0)
    return LIFTModel().eval()


@pytest.fixture
def photo():
    """A real grey photo (skimage's camera man, 512 x 512 uint8), cropped to 480 x 400."""
    from skimage import data

    return np.ascontiguousarray(data.camera()[16:496, 56:456])


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request):
    return torch.device(request.param)
