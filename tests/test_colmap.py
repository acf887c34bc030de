"""COLMAP export: database write/read-back round trip, cameras, verification conventions, and
the evaluation helpers (similarity alignment, Strecha cameras)."""
from pathlib import Path

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from lift import Features  # noqa: E402
from lift.colmap import (CameraSpec, add_cameras_and_images, database_counts, open_database,  # noqa: E402
                         read_database, write_keypoints, write_matches, write_two_view_geometry)
from lift.sfm.evaluate import align_similarity, pose_errors, read_strecha_camera  # noqa: E402
from lift.sfm.verify import fundamental_to_colmap  # noqa: E402



def _features(n, size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    kp = rng.uniform([0, 0], [w - 1, h - 1], (n, 2))
    return Features(kp, rng.uniform(1, 8, n), rng.uniform(-np.pi, np.pi, n), np.sort(rng.random(n))[::-1],
                    np.zeros((n, 0), np.float32), size)


def test_database_round_trip(tmp_path):
    names = ["a/0.jpg", "a/1.jpg", "b.png"]
    sizes = [(640, 480), (640, 480), (320, 200)]
    feats = [_features(50 + 10 * i, s, i) for i, s in enumerate(sizes)]
    m01 = np.array([[0, 5], [3, 7], [10, 2], [49, 59]])
    inl = m01[:3]
    F = np.arange(9, dtype=float).reshape(3, 3)
    db_path = tmp_path / "database.db"
    with open_database(db_path) as db:
        ids = add_cameras_and_images(db, names, sizes, CameraSpec("SIMPLE_RADIAL"))
        for n, f in zip(names, feats):
            write_keypoints(db, ids[n], f)
        # written in the (higher id, lower id) order: COLMAP swaps the columns when storing
        write_matches(db, ids["a/1.jpg"], ids["a/0.jpg"], m01[:, ::-1])
        write_two_view_geometry(db, ids["a/1.jpg"], ids["a/0.jpg"], inl[:, ::-1], F)
        write_matches(db, ids["a/0.jpg"], ids["b.png"], np.array([[1, 1], [2, 2]]))
        write_two_view_geometry(db, ids["a/0.jpg"], ids["b.png"], np.zeros((0, 2), int))
    counts = database_counts(db_path)
    assert counts["images"] == 3 and counts["cameras"] == 3 and counts["frames"] == 3
    assert counts["rigs"] == 3 and counts["keypoints"] == 50 + 60 + 70

    back = read_database(db_path)
    assert set(back.images) == set(names)
    for n, f in zip(names, feats):
        kp = back.keypoints[n]
        assert kp.shape == (len(f), 4) and kp.dtype == np.float32
        np.testing.assert_allclose(kp[:, :2], f.keypoints + 0.5, atol=1e-4)  # COLMAP pixel centres
        np.testing.assert_allclose(kp[:, 2], f.scales, rtol=1e-6)  # sigma
        np.testing.assert_allclose(kp[:, 3], f.oris, atol=1e-6)  # radians, clockwise
        again = back.features(n)
        np.testing.assert_allclose(again.keypoints, f.keypoints, atol=1e-4)
        assert again.image_size == f.image_size
    key = ("a/0.jpg", "a/1.jpg")
    np.testing.assert_array_equal(back.matches[key], m01)
    inliers, config = back.two_view[key]
    np.testing.assert_array_equal(inliers, inl)
    assert config == "UNCALIBRATED"
    assert back.two_view[("a/0.jpg", "b.png")][1] == "DEGENERATE"
    # estimated cameras: COLMAP's defaults from the image size (f = 1.2 max(W, H), centre)
    model, w, h, params = back.cameras[back.images["b.png"][1]]
    assert (model, w, h) == ("SIMPLE_RADIAL", 320, 200)
    np.testing.assert_allclose(params, [384.0, 160.0, 100.0, 0.0])


def test_known_intrinsics_shared_camera(tmp_path):
    spec = CameraSpec("pinhole", [500, 510, 320.5, 240.5])
    with open_database(tmp_path / "db.db") as db:
        ids = add_cameras_and_images(db, ["x.jpg", "y.jpg"], [(640, 480)] * 2, spec)
        cams = {i: db.read_camera(db.read_image(i).camera_id) for i in ids.values()}
    assert len({c.camera_id for c in cams.values()}) == 1
    cam = next(iter(cams.values()))
    assert cam.model_name == "PINHOLE" and cam.has_prior_focal_length
    np.testing.assert_allclose(cam.params, [500, 510, 320.5, 240.5])
    # per-image mode makes one camera per image even with known intrinsics
    with open_database(tmp_path / "db2.db") as db:
        add_cameras_and_images(db, ["x.jpg", "y.jpg"], [(640, 480)] * 2,
                               CameraSpec("PINHOLE", [500, 510, 320.5, 240.5], "per_image"))
    assert database_counts(tmp_path / "db2.db")["cameras"] == 2


def test_camera_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="4 parameters"):
        CameraSpec("PINHOLE", [500, 320, 240]).make_camera(640, 480)
    with pytest.raises(ValueError, match="unknown COLMAP camera model"):
        CameraSpec("PINHOLEX").make_camera(640, 480)
    with pytest.raises(ValueError, match="camera mode"):
        CameraSpec(mode="shared")
    with open_database(tmp_path / "db.db") as db, pytest.raises(ValueError, match="one size"):
        add_cameras_and_images(db, ["x", "y"], [(640, 480), (480, 640)], CameraSpec(mode="single"))
    with open_database(tmp_path / "db3.db") as db, pytest.raises(ValueError, match="negative"):
        write_matches(db, 1, 2, np.array([[0, -1]]))


def test_fundamental_to_colmap_pixel_shift():
    rng = np.random.default_rng(0)
    K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)) * 0.05 + np.eye(3))
    R *= np.sign(np.linalg.det(R))
    t = np.array([1.0, 0.2, 0.1])
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K).T @ tx @ R @ np.linalg.inv(K)
    X = rng.uniform([-1, -1, 4], [1, 1, 8], (20, 3))
    x0 = (K @ X.T).T
    x1 = (K @ (R @ X.T + t[:, None])).T
    x0, x1 = x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]
    Fc = fundamental_to_colmap(F)
    h = lambda x: np.concatenate([x, np.ones((len(x), 1))], 1)  # noqa: E731
    r_lift = np.abs(np.einsum("ni,ij,nj->n", h(x1), F, h(x0)))
    r_colmap = np.abs(np.einsum("ni,ij,nj->n", h(x1 + 0.5), Fc, h(x0 + 0.5)))
    scale = np.abs(F).max()
    assert r_lift.max() < 1e-9 * scale * 1e3 and r_colmap.max() < 1e-9 * scale * 1e3
    # without the conversion the COLMAP-convention points do not satisfy F
    assert np.abs(np.einsum("ni,ij,nj->n", h(x1 + 0.5), F, h(x0 + 0.5))).max() > 100 * r_colmap.max()


def test_align_similarity_and_pose_errors():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    Q *= np.sign(np.linalg.det(Q))
    s, u = 2.5, np.array([1.0, -2.0, 0.5])
    centers = rng.normal(size=(6, 3))
    s2, Q2, u2 = align_similarity(centers, s * centers @ Q.T + u)
    assert s2 == pytest.approx(s) and np.allclose(Q2, Q) and np.allclose(u2, u)
    est, gt = {}, {}
    for i, c in enumerate(centers):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        R *= np.sign(np.linalg.det(R))
        est[f"{i}"] = {"R": R, "center": c}
        gt[f"{i}"] = {"R": R @ Q.T, "center": s * Q @ c + u}
    e = pose_errors(est, gt)
    assert e["center"].max() < 1e-9 and e["rotation"].max() < 1e-5 and e["scale"] == pytest.approx(s)
    gt["0"]["center"] = gt["0"]["center"] + np.array([0.1, 0, 0])
    assert pose_errors(est, gt)["center"].max() > 0.05
    with pytest.raises(ValueError, match="at least 3"):
        pose_errors({"0": est["0"]}, gt)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.mark.skipif(not (SHARED / "data" / "sfm" / "strecha" / "entry-P10").is_dir(),
                    reason="../shared/data/sfm/strecha/entry-P10 is not present")
def test_read_strecha_camera():
    cams = SHARED / "data" / "sfm" / "strecha" / "entry-P10" / "gt_dense_cameras"
    path = sorted(cams.glob("*.camera"))[0]
    full = read_strecha_camera(path)
    half = read_strecha_camera(path, scale=0.5)
    assert tuple(full["size"]) == (3072, 2048) and tuple(half["size"]) == (1536, 1024)
    np.testing.assert_allclose(full["R"] @ full["R"].T, np.eye(3), atol=1e-4)
    np.testing.assert_allclose(half["K"][0, 0], full["K"][0, 0] / 2)
    np.testing.assert_allclose(half["K"][0, 2], (full["K"][0, 2] + 0.5) / 2 - 0.5)
