"""Patch cutting: exact sampling grid, Brown-tile identity, anti-aliasing, scale covariance."""
import cv2
import numpy as np
import pytest

from lift.data.patches import cut_patches, patch_step


def test_sampling_grid_on_a_ramp():
    # image value = x coordinate (0..199): a patch samples x = kx + (u - 63.5) * step
    img = np.tile(np.arange(200, dtype=np.uint8), (120, 1))
    kp = np.array([[100.25, 60.0, 2.0, 1.0]])  # ori is ignored: patches are upright
    p = cut_patches(img, kp)[0].astype(float)
    step = patch_step(2.0)
    assert step == pytest.approx(24 * 2.0 / 128)
    expect = 100.25 + (np.arange(128) - 63.5) * step
    assert np.abs(p - expect[None, :]).max() <= 0.51
    # rows are constant (the ramp does not change with y)
    assert np.ptp(p, axis=0).max() <= 1


def test_unit_step_reproduces_the_tile_exactly():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    kp = np.array([[64 * 1 + 31.5, 64 * 2 + 31.5, 64 / 12.0, 0.0]])
    p = cut_patches(img, kp, patch_size=64, support=6.0)[0]
    np.testing.assert_array_equal(p, img[128:192, 64:128])


def test_outside_is_black_and_inside_is_sampled():
    img = np.full((100, 100), 200, np.uint8)
    p = cut_patches(img, np.array([[0.0, 50.0, 3.0]]))[0]
    assert p[:, :40].max() == 0  # x < -0.5 is outside
    assert (p[:, 70:] == 200).all()


def test_antialiasing_removes_a_fine_checkerboard():
    img = ((np.indices((800, 800)).sum(0) % 2) * 255).astype(np.uint8)
    for sigma, max_std in ((10.0, 12.0), (20.0, 2.0)):  # steps 1.9 and 3.75 px
        kp = np.array([[400.0, 400.0, sigma]])
        smooth = cut_patches(img, kp)[0].astype(float)
        aliased = cut_patches(img, kp, antialias=False)[0].astype(float)
        assert abs(smooth.mean() - 127.5) < 3 and smooth.std() < max_std
        assert aliased.std() > 35


def test_patches_are_scale_covariant():
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (400, 400)).astype(np.float32), (0, 0), 4)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    half = cv2.resize(img, (200, 200), interpolation=cv2.INTER_AREA)
    kp = np.array([[201.0, 180.0, 6.0], [150.0, 250.0, 10.0]])
    kp_half = np.column_stack([(kp[:, :2] + 0.5) / 2 - 0.5, kp[:, 2] / 2])
    a = cut_patches(img, kp).astype(float)
    b = cut_patches(half, kp_half).astype(float)
    for pa, pb in zip(a, b):
        ncc = np.corrcoef(pa.ravel(), pb.ravel())[0, 1]
        assert ncc > 0.98
        assert np.abs(pa - pb).mean() < 4


def test_bad_inputs_raise_clear_errors():
    img = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        cut_patches(img.astype(np.float32), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="N x 3"):
        cut_patches(img, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="sigma > 0"):
        cut_patches(img, np.array([[1.0, 1.0, 0.0]]))
    assert cut_patches(img, np.zeros((0, 4))).shape == (0, 128, 128)
