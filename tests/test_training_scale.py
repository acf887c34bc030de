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


def test_localisation_term_measures_covariance_across_views(gaussian_detector):
    """``--loc-weight``: P1's sharp soft-argmax offset, turned by the views' relative
    orientation, is compared with P2's. A quarter-turned copy with the matching orientation
    difference is consistent (the loss sits at its Charbonnier floor 0.1); the opposite
    orientation sense is not."""
    torch.manual_seed(0)
    model = LIFTModel()
    # score = 2 x Gaussian-filtered image: the Gaussian filter of the detector's input (x - 0.5) * 2,
    # up to a constant, which no soft-argmax sees
    gaussian_detector(model.detector, 1.5, gain=2.0)
    stage = DetectorStage(model, PatchGeometry(128, 12.0), loc_weight=1.0)
    n, size, sigma = 6, 128, 128 / 24
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    g = np.random.default_rng(1)
    p1 = np.stack([0.2 + 0.7 * np.exp(-((xx - 1.2 * sigma * np.cos(a)) ** 2 + (yy - 1.2 * sigma * np.sin(a)) ** 2)
                                      / (2 * (0.8 * sigma) ** 2)) for a in g.uniform(0, 2 * np.pi, n)])
    p1 = torch.from_numpy(p1.astype(np.float32))[:, None]
    p2 = torch.rot90(p1, 1, dims=(-2, -1))  # counter-clockwise on screen (y down)
    noise = torch.rand(n, 2, 1, size, size)
    patches = torch.cat([p1[:, None], p2[:, None], noise], 1)  # B x 4 x 1 x S x S
    kp = torch.zeros(n, 4, 4)
    kp[:, :, 3] = 0.3

    def loss(delta):
        k = kp.clone()
        k[:, 1, 3] = 0.3 + delta
        batch = {"patches": patches, "keypoints": k, "track": torch.arange(4 * n).view(n, 4)}
        return stage.loc_loss(batch, stage.classify(batch)[-1]).item()

    # library convention: orientations are clockwise on screen, so a counter-clockwise
    # quarter turn changes them by -pi/2
    assert loss(-math.pi / 2) < 0.12
    assert loss(math.pi / 2) > 1.0
    with __import__("pytest").raises(ValueError, match="rot90"):
        DetectorStage(model, PatchGeometry(128, 12.0), loc_weight=1.0, rot90=True).classify(
            {"patches": patches, "keypoints": kp, "track": torch.zeros(n, 4, dtype=torch.long)})
