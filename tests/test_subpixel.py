"""Sub-pixel positions from the detector's continuous response (lift.subpixel)."""
import numpy as np
import pytest
import torch

from lift.detector import Detector
from lift.pipeline import LIFT
from lift.subpixel import refine_on_response


def _blobs(h, w, centres, sigma=0.8):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    img = torch.zeros(h, w, dtype=torch.float64)
    for cx, cy in centres:
        img += torch.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sigma ** 2)
    return img.float()[None, None]


def _blob_detector(make, gain=20.0):
    return make(Detector(kernel_size=13, px_per_sigma=23 / 24).eval(), 0.9, gain)


def test_refine_on_response_finds_blob_centres_on_every_level(gaussian_detector):
    det = _blob_detector(gaussian_detector)
    rng = np.random.default_rng(0)
    levels, truth = [], []
    for h, w in ((60, 80), (40, 52)):  # two levels, blobs at known sub-pixel centres
        grid = [(12 + 14 * i, 12 + 14 * j) for i in range((w - 20) // 14) for j in range((h - 20) // 14)]
        c = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)) for x, y in grid]
        levels.append(_blobs(h, w, c))
        truth.append(np.array(c))
    lev = torch.tensor([i for i, t in enumerate(truth) for _ in t])
    centres = np.concatenate(truth)
    xi = torch.from_numpy(np.round(centres[:, 0])).long()
    yi = torch.from_numpy(np.round(centres[:, 1])).long()
    with torch.no_grad():
        ox, oy = refine_on_response(det, levels, lev, torch.zeros_like(lev), xi, yi)
    err = np.hypot(xi.numpy() + ox.numpy() - centres[:, 0], yi.numpy() + oy.numpy() - centres[:, 1])
    assert err.max() < 0.03, err  # x and y not swapped, levels and windows gathered right
    # the quadratic fit to the 3 x 3 scores is biased toward the pixel grid on such peaks
    with torch.no_grad():
        quad = []
        for (cx, cy), l in zip(centres, lev.tolist()):
            s = det.score_map(levels[l])[0, 0].double()
            x, y = int(round(cx)), int(round(cy))
            gx, gxx = (s[y, x + 1] - s[y, x - 1]) / 2, s[y, x + 1] + s[y, x - 1] - 2 * s[y, x]
            gy, gyy = (s[y + 1, x] - s[y - 1, x]) / 2, s[y + 1, x] + s[y - 1, x] - 2 * s[y, x]
            quad.append(float(np.hypot(x - float(gx / gxx) - cx, y - float(gy / gyy) - cy)))
    assert np.mean(err) < 0.5 * np.mean(quad), (np.mean(err), np.mean(quad))
    # a flat peak (in beta's units) pulls the soft-argmax toward the window's centre, the
    # integer peak: the estimate is only as sharp as the score the detector was trained to give
    with torch.no_grad():
        ox, oy = refine_on_response(_blob_detector(gaussian_detector, gain=1.0), levels, lev, torch.zeros_like(lev), xi, yi)
    flat_err = np.hypot(xi.numpy() + ox.numpy() - centres[:, 0], yi.numpy() + oy.numpy() - centres[:, 1])
    assert np.mean(flat_err) > 3 * np.mean(err)
    # no keypoints: empty offsets; bad window or temperature settings are refused
    e = refine_on_response(det, levels, *(torch.zeros(0, dtype=torch.long),) * 4)
    assert e[0].shape == (0,) and e[1].shape == (0,)
    for bad in (dict(radius=0.0), dict(step=0.0), dict(beta=0.0)):
        with pytest.raises(ValueError):
            refine_on_response(det, levels, lev, lev, xi, yi, **bad)


def _redetection_error(model, photo, subpixel, shift=(0.5, 0.25)):
    import cv2
    from scipy.spatial import cKDTree

    h, w = photo.shape
    M = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(photo, M, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    ext = LIFT(model, max_keypoints=1000, subpixel=subpixel)
    a, b = ext.extract(photo), ext.extract(moved)
    d, j = cKDTree(b.keypoints).query(a.keypoints + np.float32(shift))
    ok = (d < 1.5) & (np.abs(np.log2(b.scales[j] / a.scales)) < 0.2) & (a.scales >= 1.5)
    assert ok.sum() > 100
    return float(np.median(d[ok]))


def test_response_positions_follow_a_subpixel_shift_better(photo):
    """With the shipped detector, keypoints re-detected after a (0.5, 0.25) px shift land closer
    to where the shift puts them with subpixel='response' than with the quadratic fit."""
    from lift.model import LIFTModel

    try:
        model = LIFTModel.load("default")
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"shipped weights not present: {err}")
    quad = _redetection_error(model, photo, "quadratic")
    resp = _redetection_error(model, photo, "response")
    assert resp < 0.85 * quad and resp < 0.2, (quad, resp)


def test_subpixel_option_is_validated(random_model):
    with pytest.raises(ValueError, match="subpixel"):
        LIFT(random_model, subpixel="cubic")
