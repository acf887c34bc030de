"""Scale-space NMS against a brute-force reference."""
import itertools

import numpy as np
import torch
import torch.nn.functional as F

from lift import LIFTConfig
from lift.nms import scale_space_nms


def _levels(maps, r):
    out = []
    for k, s in enumerate(maps):
        pooled = F.max_pool2d(s[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]
        out.append((2.0 ** (k / 4), 1.0, 1.0, s, pooled))
    return out


def _brute(maps, r, m):
    """Loop over every pixel: unique max of its window, above the windows of +-m scales, which
    must exist unless the scale space has no interior level (at most 2 m levels)."""
    keep = set()
    nlev = len(maps)
    interior = nlev > 2 * m
    for k, s in enumerate(maps):
        b_, h, w = s.shape
        for b, y, x in itertools.product(range(b_), range(h), range(w)):
            v = s[b, y, x].item()
            if not np.isfinite(v) or x == 0 or y == 0 or x == w - 1 or y == h - 1:
                continue
            ok = True
            for dk in range(-m, m + 1):
                if not 0 <= k + dk < nlev:
                    ok &= not interior
                    continue
                win = maps[k + dk][b, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
                if dk == 0:
                    ok &= v >= win.max().item()
                else:
                    ok &= v > win.max().item()
            if ok:
                keep.add((b, k, x, y))
    return keep


def test_nms_matches_brute_force():
    torch.manual_seed(0)
    maps = [torch.randn(2, 13, 17) for _ in range(4)]
    maps[1][0, :2] = -float("inf")  # an undefined border band
    conf = LIFTConfig(nms_radius=2, scale_nms=1, edge_threshold=0, refine=False)
    rows = scale_space_nms(_levels(maps, 2), conf)
    got = set()
    for b, x, y, sig, score in rows.tolist():
        k = int(round(np.log2(sig) * 4))
        got.add((int(b), k, int(round(x)), int(round(y))))
        assert score == maps[k][int(b), int(round(y)), int(round(x))].item()
    assert got == _brute(maps, 2, 1)
    assert len(got) > 5
    assert {k for _, k, _, _ in got} == {1, 2}  # interior levels only
    # two levels have no interior: both are searched, each against the other
    short = scale_space_nms(_levels(maps[:2], 2), conf)
    got2 = {(int(b), int(round(np.log2(sig) * 4)), int(round(x)), int(round(y)))
            for b, x, y, sig, _ in short.tolist()}
    assert got2 == _brute(maps[:2], 2, 1) and {k for _, k, _, _ in got2} == {0, 1}
    # scale_nms=0 (the default): every spatial maximum of every level, boundary levels too
    conf0 = LIFTConfig(nms_radius=2, scale_nms=0, edge_threshold=0, refine=False)
    got0 = {(int(b), int(round(np.log2(sig) * 4)), int(round(x)), int(round(y)))
            for b, x, y, sig, _ in scale_space_nms(_levels(maps, 2), conf0).tolist()}
    assert got0 == _brute(maps, 2, 0) and got < got0
    assert {k for _, k, _, _ in got0} == {0, 1, 2, 3}


def test_refinement_recovers_subpixel_peak_and_edge_test():
    # a quadratic bump peaked at (7.3, 5.6) on a 12 x 15 map
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(15.0), indexing="ij")
    bump = -((xx - 7.3) ** 2 + 0.5 * (yy - 5.6) ** 2)
    maps = [bump[None] - 5, bump[None], bump[None] - 5]
    conf = LIFTConfig(nms_radius=2, scale_nms=1, edge_threshold=10, refine=True)
    rows = scale_space_nms(_levels(maps, 2), conf)
    assert len(rows) == 1
    _, x, y, sig, score = rows[0].tolist()
    assert abs(x - 7.3) < 1e-4 and abs(y - 5.6) < 1e-4
    assert abs(sig - 2 ** 0.25) < 1e-5  # symmetric in scale: no scale offset
    assert abs(score - 0.0) < 1e-4  # interpolated peak value
    # an elongated ridge (edge) is rejected by the Hessian ratio test
    ridge = -((xx - 7.0) ** 2) - 0.001 * (yy - 5.0) ** 2
    rows = scale_space_nms(_levels([ridge[None] - 5, ridge[None], ridge[None] - 5], 2), conf)
    assert len(rows) == 0


def test_max_filter_equals_max_pool():
    from lift.layers import max_filter

    torch.manual_seed(3)
    x = torch.randn(2, 13, 17)
    x[0, :3] = -float("inf")
    for r in (0, 1, 2, 3, 4, 5, 6):  # window sides 3..13: every doubling/overlap case
        ref = F.max_pool2d(x[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] if r else x
        assert torch.equal(max_filter(x, r), ref)
    tiny = torch.randn(1, 1, 2)  # smaller than the window
    assert torch.equal(max_filter(tiny, 3), tiny.amax().expand(1, 1, 2))


def test_patch_normalisation_matches_mean_std():
    from lift.layers import normalize_patches

    p = torch.rand(5, 1, 8, 8) * torch.linspace(0.1, 3, 5)[:, None, None, None]
    ref = (p - p.mean((-2, -1), keepdim=True)) / (p.std((-2, -1), keepdim=True) + 1e-6)
    torch.testing.assert_close(normalize_patches(p), ref, atol=1e-5, rtol=1e-5)
    # faint texture on a bright patch (0.002 on 0.9): float32 statistics stay exact
    faint = 0.9 + 0.002 * torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(normalize_patches(faint).double(), normalize_patches(faint.double()),
                               atol=5e-4, rtol=1e-3)


def test_ghh_and_strided_max_pool_equal_their_definitions():
    from lift.layers import MaxPool, ghh

    torch.manual_seed(4)
    x = torch.randn(3, 32, 7, 5)
    ref = x.reshape(3, 2, 4, 4, 7, 5).amax(3)
    ref = ref[:, :, 0] - ref[:, :, 1] + ref[:, :, 2] - ref[:, :, 3]
    torch.testing.assert_close(ghh(x, 4, 4, dim=1), ref)
    y = torch.randn(6, 48)  # last-dim GHH, 3 outputs of 4 x 4 pieces
    r2 = y.reshape(6, 3, 4, 4).amax(-1)
    torch.testing.assert_close(ghh(y, 4, 4, dim=-1), r2[..., 0] - r2[..., 1] + r2[..., 2] - r2[..., 3])
    for p, shape in ((2, (4, 5, 10, 11)), (3, (2, 3, 9, 13))):
        z = torch.randn(shape)
        torch.testing.assert_close(MaxPool(p)(z), F.max_pool2d(z, p))
        zc = z.bfloat16().contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(MaxPool(p)(zc), F.max_pool2d(zc, p))
