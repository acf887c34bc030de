"""Synthetic builder: homography geometry, track consistency across views, patch content,
held-out photos, non-keypoint placement, determinism."""
import cv2
import h5py
import numpy as np
import pytest

from lift.data import fixtures, validate_patch_file
from lift.data.synthetic import (local_affine, random_homography, sift_keypoints,
                                 warp_keypoints)
from lift.image import load_image



@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    photos = fixtures.make_photos(out / "photos")
    return fixtures.make_tiny_synthetic(out / "tiny.h5", photos), photos


def _wrap(a):
    return np.angle(np.exp(1j * np.asarray(a)))


def test_warp_keypoints_of_a_similarity():
    t, s = np.deg2rad(30.0), 2.0
    hom = np.array([[s * np.cos(t), -s * np.sin(t), 5.0], [s * np.sin(t), s * np.cos(t), -3.0],
                    [0, 0, 1]])
    kp = np.array([[10.0, 20.0, 1.5, 0.2], [0.0, 0.0, 3.0, -3.0]])
    w = warp_keypoints(hom, kp)
    np.testing.assert_allclose(w[:, :2], kp[:, :2] @ hom[:2, :2].T + hom[:2, 2], atol=1e-9)
    np.testing.assert_allclose(w[:, 2], 2 * kp[:, 2])
    np.testing.assert_allclose(_wrap(w[:, 3] - kp[:, 3] - t), 0, atol=1e-9)  # clockwise + 30 deg


def test_local_affine_matches_finite_differences():
    hom = random_homography(np.random.default_rng(0), (640, 480))
    xy = np.array([[100.0, 50.0], [500.0, 400.0]])
    jac = local_affine(hom, xy)
    f = lambda p: cv2.perspectiveTransform(p[None], hom)[0]  # noqa: E731
    eps = 1e-3
    num = np.stack([(f(xy + [eps, 0]) - f(xy - [eps, 0])) / (2 * eps),
                    (f(xy + [0, eps]) - f(xy - [0, eps])) / (2 * eps)], 2)
    np.testing.assert_allclose(jac, num, rtol=1e-5, atol=1e-7)


def test_tracks_are_one_physical_point_across_views(built):
    path, _ = built
    info = validate_patch_file(path)
    assert info.num_tracks > 40 and info.kind_counts["random"] > 0
    with h5py.File(path) as f:
        tid, img, kp = f["track_id"][...], f["image_id"][...], f["keypoints"][...].astype(float)
        homs = f["images/homography"][...]
        checked = 0
        for t in np.unique(tid[tid >= 0]):
            rows = np.flatnonzero(tid == t)
            assert len(rows) >= 2
            a, b = rows[0], rows[1]
            rel = homs[img[b]] @ np.linalg.inv(homs[img[a]])
            pred = warp_keypoints(rel, kp[a][None])[0]
            np.testing.assert_allclose(pred[:2], kp[b, :2], atol=2e-3)
            assert pred[2] == pytest.approx(kp[b, 2], rel=1e-4)
            assert abs(_wrap(pred[3] - kp[b, 3])) < 1e-3
            checked += 1
        assert checked == info.num_tracks


def test_patch_pairs_show_the_same_content(built):
    """Warping P1 by the local affine between the views reproduces P2 (photometric change and
    perspective aside), while patches of different tracks do not correlate."""
    path, _ = built
    with h5py.File(path) as f:
        tid, img = f["track_id"][...], f["image_id"][...]
        kp, homs, patches = f["keypoints"][...].astype(float), f["images/homography"][...], \
            f["patches"][...].astype(np.float32)
    c = 63.5
    yy, xx = np.mgrid[:128, :128]
    centre = (xx - c) ** 2 + (yy - c) ** 2 < 30 ** 2
    same, other = [], []
    tracks = np.unique(tid[tid >= 0])
    for t, t_other in zip(tracks, np.roll(tracks, 1)):
        a, b = np.flatnonzero(tid == t)[:2]
        rel = homs[img[b]] @ np.linalg.inv(homs[img[a]])
        jac = local_affine(rel, kp[a, :2][None])[0]
        m = jac * kp[a, 2] / kp[b, 2]  # a-patch pixels -> b-patch pixels (same 24 sigma/128)
        full = np.concatenate([m, (np.array([c, c]) - m @ [c, c])[:, None]], 1)
        warped = cv2.warpAffine(patches[a], full, (128, 128), flags=cv2.INTER_LINEAR)
        same.append(np.corrcoef(warped[centre], patches[b][centre])[0, 1])
        o = np.flatnonzero(tid == t_other)[0]
        other.append(np.corrcoef(warped[centre], patches[o][centre])[0, 1])
    assert np.median(same) > 0.8
    assert np.median(np.abs(other)) < 0.3


def test_held_out_photo_and_negatives(built):
    path, photos = built
    with h5py.File(path) as f:
        names = f["images/source"].asstr()[...]
        split, kind, img = f["split"][...], f["kind"][...], f["image_id"][...]
        kp, homs = f["keypoints"][...].astype(float), f["images/homography"][...]
    is_brick = np.array([names[i].startswith("brick") for i in img])
    assert is_brick.any() and (split[is_brick] == 2).all() and (split[~is_brick] != 2).all()
    # non-keypoints stay >= 3 sigma away from every SIFT keypoint of the photo mapped into the view
    for i in np.unique(img[kind == 2])[:4]:
        src = sift_keypoints(load_image(photos / names[i]), max_keypoints=500,
                             min_sigma=1.6, max_sigma=min(load_image(photos / names[i]).shape) / 12)
        warped = warp_keypoints(homs[i], src)[:, :2]
        neg = kp[(img == i) & (kind == 2)]
        d = np.linalg.norm(neg[:, None, :2] - warped[None], axis=2).min(1)
        assert (d > 3 * neg[:, 2]).all()
        # their +-6 sigma square lies on the warped photo, not on the black canvas around it
        h, w = load_image(photos / names[i]).shape
        for dx, dy in ((0, 0), (-6, -6), (-6, 6), (6, -6), (6, 6)):
            corner = neg[:, :2] + np.outer(neg[:, 2], [dx, dy])
            back = cv2.perspectiveTransform(corner[None], np.linalg.inv(homs[i]))[0]
            assert (back > -1.5).all() and (back[:, 0] < w + 0.5).all() and \
                (back[:, 1] < h + 0.5).all()


def test_same_seed_same_file(built, tmp_path):
    path, photos = built
    again = fixtures.make_tiny_synthetic(tmp_path / "again.h5", photos)
    with h5py.File(path) as a, h5py.File(again) as b:
        for name in ("patches", "track_id", "keypoints", "split", "kind", "images/homography"):
            np.testing.assert_array_equal(a[name][...], b[name][...])
