"""Pins the library's conventions against OpenCV, kornia and COLMAP with non-symmetric cases."""
import cv2
import numpy as np
import pytest

from lift import Features
from lift.features import cv2_octave_from_scale


def _feats():
    rng = np.random.default_rng(0)
    n = 7
    oris = np.array([0.0, np.pi / 6, -np.pi / 2, 2.5, -3.0, np.pi, 1.0], np.float32)
    d = rng.normal(size=(n, 128)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return Features(rng.uniform(0, 300, (n, 2)), rng.uniform(1, 16, n), oris,
                    np.linspace(1, 0.1, n), d, (320, 240))


def test_to_cv2_fields_and_round_trip():
    f = _feats()
    kps, desc = f.to_cv2()
    assert isinstance(kps, tuple) and isinstance(kps[0], cv2.KeyPoint)
    assert desc.dtype == np.float32 and desc.shape == (7, 128)
    # size is OpenCV's diameter = 2 sigma; angle is degrees in [0, 360) in the same sense
    assert kps[1].size == pytest.approx(2 * f.scales[1], rel=1e-6)
    assert kps[1].angle == pytest.approx(30.0, abs=1e-4)
    assert kps[2].angle == pytest.approx(270.0, abs=1e-4)  # -90 deg wraps to 270
    assert all(0 <= k.angle < 360 for k in kps)
    assert all(k.class_id == -1 for k in kps)
    assert kps[0].response == pytest.approx(1.0)
    back = Features.from_cv2(kps, desc, f.image_size)
    np.testing.assert_allclose(back.keypoints, f.keypoints, atol=1e-4)
    np.testing.assert_allclose(back.scales, f.scales, rtol=1e-5)
    np.testing.assert_allclose(np.cos(back.oris - f.oris), 1.0, atol=1e-6)
    np.testing.assert_allclose(back.descriptors, f.descriptors, atol=1e-6)


def test_empty_to_cv2_gives_none_descriptors():
    kps, desc = Features.empty((10, 10)).to_cv2()
    assert kps == () and desc is None


def test_octave_packing_matches_opencv_sift():
    """OpenCV SIFT keypoints carry size = 2 * 1.6 * 2^(octv + (layer + xi)/3); our packing of
    sigma = size / 2 must decode to the same octave and layer."""
    from skimage import data

    kps = cv2.SIFT_create(300).detect(data.camera(), None)
    sig = np.array([k.size / 2 for k in kps])
    packed = cv2_octave_from_scale(sig)
    def unpack(o):
        octv = o & 255
        return (octv - 256 if octv >= 128 else octv), (o >> 8) & 255

    ours = [unpack(int(p)) for p in packed]
    theirs = [unpack(k.octave) for k in kps]
    agree = np.mean([a == b for a, b in zip(ours, theirs)])
    assert agree > 0.9


def test_opencv_angle_sense_is_clockwise_on_screen():
    """Rotating an image counter-clockwise on screen by 30 degrees lowers OpenCV SIFT angles by
    30 degrees: OpenCV's angle, and ours, grow clockwise on screen."""
    from skimage import data

    img = data.camera()
    h, w = img.shape
    R = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 30, 1.0)  # +30 = CCW on screen
    rot = cv2.warpAffine(img, R, (w, h))
    sift = cv2.SIFT_create(500)
    k0, d0 = sift.detectAndCompute(img, None)
    k1, d1 = sift.detectAndCompute(rot, None)
    m = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(d0, d1)
    diffs = []
    for mm in m:
        p = R @ np.array([*k0[mm.queryIdx].pt, 1.0])
        if np.linalg.norm(p - k1[mm.trainIdx].pt) < 1.0:
            diffs.append((k1[mm.trainIdx].angle - k0[mm.queryIdx].angle + 180) % 360 - 180)
    assert len(diffs) > 30
    assert np.median(diffs) == pytest.approx(-30.0, abs=2.0)


def test_kornia_laf_convention():
    f = _feats()
    laf = f.to_kornia_laf()
    assert laf.shape == (1, 7, 2, 3)
    a = laf[0, 1, :, :2].numpy()
    # scale = sqrt(det A) = 6 sigma, kornia angle (CCW degrees) = atan2(A01, A00) = -30
    assert np.sqrt(np.linalg.det(a)) == pytest.approx(6 * f.scales[1], rel=1e-5)
    assert np.rad2deg(np.arctan2(a[0, 1], a[0, 0])) == pytest.approx(-30.0, abs=1e-4)
    np.testing.assert_allclose(laf[0, :, :, 2].numpy(), f.keypoints)
    back = Features.from_kornia_laf(laf, f.descriptors, f.image_size)
    np.testing.assert_allclose(back.scales, f.scales, rtol=1e-5)
    np.testing.assert_allclose(np.cos(back.oris - f.oris), 1.0, atol=1e-6)


def test_colmap_convention():
    f = _feats()
    c4 = f.to_colmap()
    np.testing.assert_allclose(c4[:, :2], f.keypoints + 0.5)  # COLMAP pixel centre (0.5, 0.5)
    np.testing.assert_allclose(c4[:, 2], f.scales)
    c6 = f.to_colmap(affine=True)
    # COLMAP affine a = sigma * [[cos, -sin], [sin, cos]], orientation = atan2(a21, a11)
    np.testing.assert_allclose(np.arctan2(c6[1, 4], c6[1, 2]), np.pi / 6, atol=1e-6)
    # and equals the kornia LAF 2x2 divided by mr_size
    np.testing.assert_allclose(c6[:, 2:].reshape(-1, 2, 2),
                               f.to_kornia_laf()[0, :, :, :2].numpy() / 6.0, rtol=1e-5, atol=1e-5)
    for rows in (c4, c6):
        back = Features.from_colmap(rows, f.descriptors, f.image_size)
        np.testing.assert_allclose(back.keypoints, f.keypoints, atol=1e-4)
        np.testing.assert_allclose(back.scales, f.scales, rtol=1e-5)


def test_features_validation_and_indexing():
    f = _feats()
    sub = f[f.scores > 0.5]
    assert len(sub) == int((f.scores > 0.5).sum())
    with pytest.raises(ValueError):
        Features(np.zeros((3, 2)), np.ones(2), np.zeros(3), np.zeros(3), np.zeros((3, 4)), (4, 4))
