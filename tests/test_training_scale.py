"""The detector's scale-selection term (``--scale-weight``): sign and geometry are right."""
import math

import numpy as np
import torch

from lift.model import LIFTModel
from lift.training.crops import PatchGeometry
from lift.training.stages import DetectorStage


def _blob_patches(n=24, size=128, support=12.0, seed=0):
    """Stored-patch geometry: a Gaussian blob of std sigma at the centre plus noise."""
    g = np.random.default_rng(seed)
    sigma = size / (2 * support)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(xx ** 2 + yy ** 2) / (2 * (1.5 * sigma) ** 2))
    p = 0.3 + 0.5 * blob[None] + 0.03 * g.standard_normal((n, size, size))
    return torch.from_numpy(p.astype(np.float32))[:, None]


def test_scale_loss_prefers_the_keypoint_scale_after_training():
    torch.manual_seed(0)
    model = LIFTModel()
    stage = DetectorStage(model, PatchGeometry(128, 12.0), scale_weight=1.0)
    x = _blob_patches()
    opt = torch.optim.Adam(model.detector.parameters(), lr=3e-3)
    first = stage.scale_loss(x).item()
    for _ in range(40):
        loss = stage.scale_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = stage.scale_loss(x).item()
    assert last < 0.5 * first
    # the hinge is zero only when the own-scale response beats sigma * m by 2 |log2 m|
    assert last >= 0.0
    assert all(p.grad is None for p in model.descriptor.parameters())


def test_scale_loss_is_zero_for_a_perfectly_selective_response(monkeypatch):
    stage = DetectorStage(LIFTModel(), PatchGeometry(128, 12.0), scale_weight=1.0)
    det = stage.model.detector

    def fake(inp):  # response = 10 at the keypoint's own scale (input side 23), lower elsewhere
        side = inp.shape[-1]
        h = side - det.kernel_size + 1
        value = 10.0 - 8.0 * abs(math.log2(side / 23.0))
        return torch.full((inp.shape[0], 1, h, h), value)

    monkeypatch.setattr(det, "forward", fake)
    assert stage.scale_loss(_blob_patches(4)).item() == 0.0
