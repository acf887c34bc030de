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


@pytest.fixture
def gaussian_detector():
    """Factory ``make(det, sigma, gain=1.0) -> det``: sets a :class:`lift.detector.Detector`'s
    weights so that its score is ``gain`` x the [0, 1] image filtered by a centred Gaussian of
    std ``sigma`` (detector pixels): GHH group 0 holds the Gaussian in its first piece (the other
    pieces lose the max by their bias), the other groups are constant 0. Rotation-symmetric
    (exactly covariant under quarter-turns); on a Gaussian blob its score peaks exactly at the
    blob's centre, and ``gain`` sets how sharp the peak is in units of a soft-argmax's beta."""
    def make(det, sigma, gain=1.0):
        k = det.kernel_size
        x = torch.arange(k, dtype=torch.float32) - k // 2
        g = torch.exp(-0.5 * (x[:, None] ** 2 + x[None] ** 2) / sigma ** 2)
        with torch.no_grad():
            det.conv.weight.zero_()
            det.conv.bias.zero_()
            det.conv.weight[0, 0] = gain * g / g.sum() / 2  # the detector maps x to (x - 0.5) * 2
            det.conv.bias[0] = 0.5 * gain
            det.conv.bias[1:det.num_max] = -100.0 * gain
        return det
    return make
