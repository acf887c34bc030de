"""Track-consistent keypoint refinement (correspondence.refine): known warps of real photos."""
import cv2
import numpy as np
import pytest
import torch

from lift.features import keypoints_from_cv2
from correspondence.refine import RefineConf, build_tracks, refine_keypoints

skimage_data = pytest.importorskip("skimage.data")

#: rotation ~11 deg, anisotropic zoom, some perspective: every patch sees a different affine map
H = np.array([[np.cos(0.2) * 1.15, -np.sin(0.2), 30.0],
              [np.sin(0.2), np.cos(0.2) * 1.1, -20.0],
              [2e-4, 1e-4, 1.0]])


def _warp(points: np.ndarray, hom: np.ndarray = H) -> np.ndarray:
    return cv2.perspectiveTransform(points[None].astype(np.float64), hom)[0]


@pytest.fixture(scope="module")
def pair():
    """A photo, its warp by H, SIFT keypoints of the photo and noisy positions of the same
    points in the warp (uniform +-0.6 px per axis: a poor detector's re-detection)."""
    im = cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2GRAY), (640, 480))
    warped = cv2.warpPerspective(im, H, (640, 480), flags=cv2.INTER_CUBIC)
    kp, sc, ori, _ = keypoints_from_cv2(cv2.SIFT_create(600).detect(im, None))
    p2 = _warp(kp)
    inside = (p2 > 20).all(1) & (p2[:, 0] < 620) & (p2[:, 1] < 460) & (sc < 6)
    kp, sc, ori, p2 = kp[inside], sc[inside], ori[inside], p2[inside]
    rng = np.random.default_rng(0)
    noisy = (p2 + rng.uniform(-0.6, 0.6, p2.shape)).astype(np.float32)
    # scale and angle of the warp at each point (from its local Jacobian)
    eps = 1.0
    jx = (_warp(kp + [eps, 0]) - p2) / eps
    jy = (_warp(kp + [0, eps]) - p2) / eps
    sc2 = sc * np.sqrt(np.abs(jx[:, 0] * jy[:, 1] - jx[:, 1] * jy[:, 0]))
    ori2 = ori + np.arctan2(jx[:, 1], jx[:, 0])
    return im, warped, (kp, sc, ori), (noisy, sc2.astype(np.float32), ori2.astype(np.float32))


def _consistency(kp0, kp1):
    return np.linalg.norm(_warp(kp0) - kp1, axis=1)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_refinement_recovers_the_warp(pair, device):
    im, warped, (k0, s0, o0), (k1, s1, o1) = pair
    n = len(k0)
    matches = np.stack([np.arange(n), np.arange(n)], 1)
    before = _consistency(k0, k1)
    (r0, r1), stats = refine_keypoints([im, warped], [k0, k1], [s0, s1], [o0, o1], [(0, 1, matches)],
                                       device=device)
    after = _consistency(r0, r1)
    assert stats.tracks == n and stats.aligned == n
    assert stats.accepted > 0.9 * n
    assert np.median(before) > 0.4 and np.median(after) < 0.08
    assert np.percentile(after, 90) < 0.3
    # every track has one fixed reference: here exactly one of the two keypoints moved
    moved0 = np.any(r0 != k0, 1)
    moved1 = np.any(r1 != k1, 1)
    assert not np.any(moved0 & moved1)


def test_references_stay_and_three_view_tracks_meet(pair):
    """A point seen in three images (the photo, the warp, and the warp shifted by (3, -2) px):
    the reference of each track is its keypoint with the most matches and stays where it is."""
    im, warped, (k0, s0, o0), (k1, s1, o1) = pair
    shift = np.float32([[3.0, -2.0]])
    third = np.roll(np.roll(warped, -2, axis=0), 3, axis=1)  # content moves by (+3, -2)
    rng = np.random.default_rng(1)
    k2 = (_warp(k0) + shift + rng.uniform(-0.6, 0.6, k1.shape)).astype(np.float32)
    n = len(k0)
    ids = np.arange(n)
    edges = [(0, 1, np.stack([ids, ids], 1)), (1, 2, np.stack([ids, ids], 1))]  # image 1: 2 edges
    (r0, r1, r2), stats = refine_keypoints([im, warped, third], [k0, k1, k2], [s0, s1, s1],
                                           [o0, o1, o1], edges)
    np.testing.assert_array_equal(r1, k1)  # the references
    assert stats.accepted > 0.85 * 2 * n
    ok = np.any(r0 != k0, 1) & np.any(r2 != k2, 1)
    # the other two views now agree with each other through the warp, not only with the reference
    d02 = np.linalg.norm(_warp(r0[ok]) + shift - r2[ok], axis=1)
    assert np.median(d02) < 0.1 < np.median(np.linalg.norm(_warp(k0) + shift - k2, axis=1))


def test_wrong_matches_and_flat_images_keep_their_positions(pair):
    im, warped, (k0, s0, o0), (k1, s1, o1) = pair
    n = len(k0)
    rng = np.random.default_rng(2)
    wrong = np.stack([np.arange(n), rng.permutation(n)], 1)
    (r0, r1), stats = refine_keypoints([im, warped], [k0, k1], [s0, s1], [o0, o1], [(0, 1, wrong)])
    assert stats.accepted < 0.07 * n  # 4.5 % at the defaults
    moved = np.any(r1 != k1, 1) | np.any(r0 != k0, 1)
    assert moved.sum() <= stats.accepted
    ident = np.stack([np.arange(n), np.arange(n)], 1)
    flat = np.full_like(im, 128)
    (f0, f1), stats = refine_keypoints([flat, flat], [k0, k1], [s0, s1], [o0, o1], [(0, 1, ident)])
    assert stats.accepted == 0
    np.testing.assert_array_equal(f0, k0)
    np.testing.assert_array_equal(f1, k1)


def test_images_read_by_the_library_input_rule(pair):
    """uint8, uint16 and float (0..1 or 0..255) versions of the same images refine alike; NaN
    pixels raise (lift.image.to_gray_tensor), not silently zero."""
    from lift.image import ImageError

    im, warped, (k0, s0, o0), (k1, s1, o1) = pair
    m = np.stack([np.arange(len(k0))] * 2, 1)
    args = ([k0, k1], [s0, s1], [o0, o1], [(0, 1, m)])
    ref, _ = refine_keypoints([im, warped], *args)
    for conv in (lambda a: a.astype(np.uint16) * 257, lambda a: a.astype(np.float32),
                 lambda a: a.astype(np.float32) / 255.0):
        out, _ = refine_keypoints([conv(im), conv(warped)], *args)
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a, b, atol=1e-3)
    bad = im.astype(np.float32)
    bad[10, 10] = np.nan
    with pytest.raises(ImageError):
        refine_keypoints([bad, warped], *args)


def test_build_tracks_components_and_degrees():
    edges = [(0, 1, np.array([[0, 1], [2, 0]])), (1, 2, np.array([[1, 0]]))]
    label, degree, offsets = build_tracks([3, 2, 1], edges)
    np.testing.assert_array_equal(offsets, [0, 3, 5])
    # tracks: {img0 kp0, img1 kp1, img2 kp0} and {img0 kp2, img1 kp0}; img0 kp1 alone
    assert label[0] == label[4] == label[5] and label[2] == label[3] and label[0] != label[2]
    assert label[1] == -1
    np.testing.assert_array_equal(degree, [1, 0, 1, 1, 2, 1])
    lab, deg, _ = build_tracks([2, 2], [])
    assert (lab == -1).all() and (deg == 0).all()


def test_bad_input():
    im = np.zeros((50, 50), np.uint8)
    kp = np.zeros((2, 2), np.float32) + 10
    one = np.ones(2, np.float32)
    m = np.array([[0, 0]])
    out, stats = refine_keypoints([im, im], [kp, kp], [one, one], [one, one], [])
    assert stats.tracks == 0 and all(np.array_equal(o, kp) for o in out)
    with pytest.raises(ValueError, match="one entry per image"):
        refine_keypoints([im], [kp, kp], [one, one], [one, one], [(0, 1, m)])
    bad = kp.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        refine_keypoints([im, im], [bad, kp], [one, one], [one, one], [(0, 1, m)])
    with pytest.raises(ValueError, match="grey"):
        refine_keypoints([np.zeros((50, 50, 3), np.uint8), im], [kp, kp], [one, one], [one, one], [(0, 1, m)])
    with pytest.raises(ValueError, match="odd"):
        RefineConf(grid=8)


def test_refine_matches_two_views(pair):
    """The two-image API: a homography fitted to the refined matches is closer to the truth."""
    from correspondence import find_homography, refine_matches

    im, warped, (k0, s0, o0), (k1, s1, o1) = pair
    n = len(k0)
    m = np.stack([np.arange(n), np.arange(n)], 1)
    r0, r1, stats = refine_matches(im, warped, k0, k1, m, s0, s1, o0, o1)
    assert stats.accepted > 0.9 * n and r0.shape == k0.shape and r1.shape == k1.shape

    def corner_error(a, b):
        Hest, _ = find_homography(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                                  threshold=3.0)
        c = np.float64([[0, 0], [639, 0], [639, 479], [0, 479]])
        return np.linalg.norm(_warp(c, np.asarray(Hest)) - _warp(c), axis=1).mean()

    before, after = corner_error(k0, k1), corner_error(r0, r1)
    assert after < 0.5 * before and after < 0.2
    # without scales and orientations (small rotation here: the alignment starts from identity)
    q0, q1, st = refine_matches(im, warped, k0, k1, m)
    assert st.accepted > 0.5 * n
    with pytest.raises(ValueError, match="do not exist"):
        refine_matches(im, warped, k0, k1, np.array([[0, n + 5]]))
