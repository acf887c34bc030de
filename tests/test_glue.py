"""soft-argmax and spatial-transformer crops."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lift.glue import (build_pyramid, extract_patches, extract_patches_pyramid, soft_argmax,
                       soft_max_score)


def test_soft_argmax_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: soft_argmax(x, beta=2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: soft_max_score(x, beta=2.0), (s,))


def test_soft_argmax_finds_peak_and_converges_to_hard_argmax():
    s = torch.zeros(2, 9, 11)
    s[0, 2, 7] = 5.0
    s[1, 6, 1] = 5.0
    xy = soft_argmax(s, beta=10.0)
    torch.testing.assert_close(xy, torch.tensor([[7.0, 2.0], [1.0, 6.0]]), atol=1e-3, rtol=0)
    # a symmetric plateau between two cells sits in the middle
    s = torch.zeros(1, 4, 4)
    s[0, 1, 1] = s[0, 1, 2] = 3.0
    torch.testing.assert_close(soft_argmax(s, beta=50.0), torch.tensor([[1.5, 1.0]]), atol=1e-4, rtol=0)
    # log-mean-exp score lies between mean and max
    v = soft_max_score(torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), beta=10.0)
    assert 1.5 < v.item() <= 3.0


def _pattern(h=200, w=240):
    """An asymmetric pattern: a bright bar pointing +x from (120, 100) plus a dot above it."""
    img = np.zeros((h, w), np.float32)
    cv2.rectangle(img, (120, 96), (170, 104), 1.0, -1)
    cv2.circle(img, (120, 80), 5, 0.5, -1)
    return img


def test_crop_upright_matches_direct_resampling():
    img = _pattern()
    t = torch.from_numpy(img)[None, None]
    # support 6 * sigma with sigma = 32/12: the 32 px patch samples the image 1:1, at
    # x - 15.5 ... x + 15.5 (the patch centre is the keypoint), so x = 120.5 hits pixels 105..136
    kp = torch.tensor([[120.5, 100.5]])
    p = extract_patches(t, kp, torch.tensor([32 / 12.0]), None, patch_size=32, support=6.0)
    ref = img[85:117, 105:137]
    np.testing.assert_allclose(p[0, 0].numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("deg", [30.0, 90.0, -120.0])
def test_crop_and_rotate_undoes_image_rotation(deg):
    """Rotating the image clockwise on screen by theta and cropping with ori = theta gives the
    upright crop of the original image (orientation sense = clockwise on screen)."""
    img = _pattern()
    h, w = img.shape
    c = (120.0, 100.0)
    # cv2 angle > 0 is counter-clockwise on screen, so -deg rotates clockwise by deg
    R = cv2.getRotationMatrix2D(c, -deg, 1.0)
    rot = cv2.warpAffine(img, R, (w, h), flags=cv2.INTER_LINEAR)
    sigma = torch.tensor([32 / 12.0])
    up = extract_patches(torch.from_numpy(img)[None, None], torch.tensor([c]), sigma, None, 32, 6.0)
    rp = extract_patches(torch.from_numpy(rot)[None, None], torch.tensor([c]), sigma,
                         torch.tensor([math.radians(deg)]), 32, 6.0)
    err = (up - rp).abs()[0, 0, 3:-3, 3:-3]  # interpolation differs at the very border
    assert err.mean() < 0.02 and err.max() < 0.35
    # a wrong sense would put the bar elsewhere
    wrong = extract_patches(torch.from_numpy(rot)[None, None], torch.tensor([c]), sigma,
                            torch.tensor([-math.radians(deg)]), 32, 6.0)
    assert (up - wrong).abs()[0, 0, 3:-3, 3:-3].mean() > 5 * err.mean()


def test_crop_scale_comes_from_sigma():
    """Doubling sigma halves the pattern's size in the patch (scale read from sigma, not y)."""
    img = _pattern()
    t = torch.from_numpy(img)[None, None]
    for y in (100.0,):
        kp = torch.tensor([[120.0, y], [120.0, y]])
        p = extract_patches(t, kp, torch.tensor([32 / 12.0, 64 / 12.0]), None, 32, 6.0)
        # the bar is 9 px thick: 9 patch rows at sigma = 32/12, half as many at twice sigma
        bar1 = (p[0, 0, :, 24] > 0.5).sum().item()
        bar2 = (p[1, 0, :, 24] > 0.5).sum().item()
        assert bar1 == pytest.approx(9, abs=1) and bar2 == pytest.approx(4.5, abs=1)


def test_batched_extraction_with_batch_index_and_pyramid():
    img = torch.from_numpy(_pattern())[None, None]
    batch = torch.cat([img, img.flip(-1)])
    kp = torch.tensor([[120.0, 100.0], [239 - 120.0, 100.0]])
    sig = torch.tensor([32 / 12.0, 32 / 12.0])
    p = extract_patches(batch, kp, sig, None, 32, 6.0, batch_index=torch.tensor([0, 1]))
    torch.testing.assert_close(p[1, 0], p[0, 0].flip(-1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        extract_patches(batch, kp, sig)
    # pyramid extraction of a large-sigma patch equals direct extraction from a blurred image
    pyr = build_pyramid(img, 4)
    big = torch.tensor([20.0])
    pp = extract_patches_pyramid(pyr, kp[:1], big, None, 32, 6.0)
    direct = extract_patches(img, kp[:1], big, None, 32, 6.0)
    assert (pp - direct).abs().mean() < 0.05  # same content, less aliasing
    assert extract_patches_pyramid(pyr, kp[:0], big[:0]).shape == (0, 1, 32, 32)


def test_patch_grid_equals_affine_grid():
    import torch.nn.functional as F

    from lift.glue import patch_grid

    torch.manual_seed(0)
    theta = torch.randn(7, 2, 3, dtype=torch.float64)
    ref = F.affine_grid(theta, (7, 1, 9, 9), align_corners=False)
    torch.testing.assert_close(patch_grid(theta, 9), ref)


def _per_level_reference(pyr, kp, sc, ori, size, support, bidx):
    """The direct definition: each patch cut from its own pyramid level with border padding."""
    from lift.glue import pyramid_level

    level = pyramid_level(2.0 * support * sc / size, len(pyr))
    out = pyr[0].new_empty((len(kp), 1, size, size))
    for lev in torch.unique(level).tolist():
        sel = torch.nonzero(level == lev).squeeze(1)
        f = 2.0 ** lev
        out[sel] = extract_patches(pyr[lev], (kp[sel] + 0.5) / f - 0.5, sc[sel] / f,
                                   None if ori is None else ori[sel], size, support,
                                   batch_index=bidx[sel])
    return out


@pytest.mark.parametrize("rotated", [True, False])
def test_atlas_extraction_equals_per_level_sampling(rotated):
    """One grid_sample over the packed pyramid gives the per-level crops, including patches that
    leave the image (border padding of their own level, never pixels of a neighbouring level)."""
    torch.manual_seed(0)
    img = torch.rand(2, 1, 97, 131)
    pyr = build_pyramid(img, 4)
    n = 600
    kp = torch.rand(n, 2) * torch.tensor([150.0, 120.0]) - 10  # some centres outside
    sc = torch.rand(n) * 12 + 0.5
    ori = torch.rand(n) * 2 * math.pi - math.pi if rotated else None
    bidx = torch.randint(0, 2, (n,))
    got = extract_patches_pyramid(pyr, kp, sc, ori, 32, 6.0, bidx)
    ref = _per_level_reference(pyr, kp, sc, ori, 32, 6.0, bidx)
    assert len(torch.unique(torch.floor(torch.log2(12.0 * sc / 32).clamp_min(0)))) >= 3
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    one = extract_patches_pyramid([p[:1] for p in pyr], kp, sc, ori, 16, 6.0)
    ref1 = _per_level_reference([p[:1] for p in pyr], kp, sc, ori, 16, 6.0, torch.zeros(n).long())
    torch.testing.assert_close(one, ref1, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="batch_index"):
        extract_patches_pyramid(pyr, kp, sc, ori, 32, 6.0)


@pytest.mark.parametrize("r", [2, 4])
def test_space_to_depth_sampling_equals_pixel_unshuffle(r):
    """``space_to_depth=r`` samples the same patches in the order of ``F.pixel_unshuffle``:
    the same values, channels-last, for one image, a batch and an empty set; a factor that does
    not divide the patch size is refused."""
    torch.manual_seed(1)
    img = torch.rand(2, 3, 80, 110)
    pyr = build_pyramid(img, 3)
    n = 70
    kp = torch.rand(n, 2) * torch.tensor([120.0, 90.0]) - 5
    sc, ori = torch.rand(n) * 6 + 0.5, torch.rand(n) * 6 - 3
    bidx = torch.randint(0, 2, (n,))
    for p, b in (([q[:1, :1] for q in pyr], None), (pyr, bidx)):
        ref = extract_patches_pyramid(p, kp, sc, ori, 32, 6.0, b)
        got = extract_patches_pyramid(p, kp, sc, ori, 32, 6.0, b, space_to_depth=r)
        assert got.shape == (n, ref.shape[1] * r * r, 32 // r, 32 // r)
        torch.testing.assert_close(got, torch.nn.functional.pixel_unshuffle(ref, r), atol=0, rtol=0)
    one = extract_patches_pyramid([q[:1, :1] for q in pyr], kp, sc, ori, 32, 6.0, space_to_depth=r)
    assert one.is_contiguous(memory_format=torch.channels_last)
    empty = extract_patches_pyramid(pyr, kp[:0], sc[:0], ori[:0], 32, 6.0, bidx[:0], space_to_depth=r)
    assert empty.shape == (0, 3 * r * r, 32 // r, 32 // r)
    with pytest.raises(ValueError, match="space_to_depth"):
        extract_patches_pyramid(pyr, kp, sc, ori, 32, 6.0, bidx, space_to_depth=3)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_patch_sampling_split_over_threads_is_exact(threads):
    """The CPU sampler splits the patches over ``torch.get_num_threads()`` batch entries of the
    expanded image (grid_sample parallelises over the batch only): the values must be those of
    one plain grid_sample call, for any patch count (padding of the last entry) and channels."""
    from lift.glue import _sample_patches

    torch.manual_seed(4)
    img = torch.rand(1, 3, 30, 41)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for n in (1, 2, 5, 64):
            grid = torch.rand(n, 7 * 7, 2) * 2.4 - 1.2
            ref = F.grid_sample(img, grid.view(1, n * 7, 7, 2), mode="bilinear",
                                padding_mode="border", align_corners=False)
            ref = ref.view(3, n, 7, 7).transpose(0, 1)
            assert torch.equal(_sample_patches(img, grid, "border"), ref)
        assert _sample_patches(img, torch.zeros(0, 49, 2), "border").shape == (0, 3, 7, 7)  # no patches
    finally:
        torch.set_num_threads(before)


def test_atlas_extraction_is_differentiable():
    torch.manual_seed(1)
    img = torch.rand(1, 1, 40, 50, dtype=torch.float64)
    pyr = build_pyramid(img, 2)
    kp = torch.tensor([[20.3, 18.6], [3.0, 35.0]], dtype=torch.float64, requires_grad=True)
    sc = torch.tensor([1.1, 2.9], dtype=torch.float64, requires_grad=True)
    ori = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda k, s, o: extract_patches_pyramid(pyr, k, s, o, 8, 6.0), (kp, sc, ori))
