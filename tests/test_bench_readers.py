"""Benchmark readers: HPatches / Oxford layouts, synthetic warps, cameras, COLMAP, flow."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from lift.bench import metrics as M
from lift.bench.readers import (Camera, ImageRef, read_colmap_cameras, read_flo, read_homography_dataset,
                                read_homography_sequence, read_pose_dataset, read_sintel_pairs,
                                read_strecha_camera, relative_pose, stereo_motorcycle_pair,
                                synthetic_homography, synthetic_homography_pairs, synthetic_pose_pairs,
                                write_flo)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _texture(h=120, w=160, seed=0):
    noise = np.random.default_rng(seed).uniform(0, 255, (h // 8, w // 8)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _write_sequence(folder: Path, layout: str):
    folder.mkdir(parents=True)
    H = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, 7.0], [1e-4, 0, 1.0]])
    for k in (1, 2, 3):
        name = f"{k}.ppm" if layout == "hpatches" else f"img{k}.png"
        tex = _texture(seed=k)
        cv2.imwrite(str(folder / name), np.dstack([tex] * 3) if layout == "hpatches" else tex)
    for k in (2, 3):
        name = f"H_1_{k}" if layout == "hpatches" else f"H1to{k}p"
        np.savetxt(folder / name, H * k)
    return H


@pytest.mark.parametrize("layout", ["hpatches", "oxford"])
def test_sequence_layouts(tmp_path, layout):
    seq = tmp_path / ("v_test" if layout == "hpatches" else "boat")
    H = _write_sequence(seq, layout)
    pairs = read_homography_sequence(seq)
    assert [p.name for p in pairs] == [f"{seq.name}/1-2", f"{seq.name}/1-3"]
    np.testing.assert_allclose(pairs[1].H, H)  # H * 3 normalised back
    assert pairs[0].group == ("v" if layout == "hpatches" else "oxford")
    assert pairs[0].image1.load().shape == (120, 160)
    # a folder of sequences, and rescaling: H conjugated with the pixel-centre convention
    both = read_homography_dataset(tmp_path, max_size=80)
    assert len(both) == 2 and both[0].image0.load().shape == (60, 80)
    s = 0.5
    S = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]])
    expected = S @ H @ np.linalg.inv(S)
    np.testing.assert_allclose(both[0].H, expected / expected[2, 2], atol=1e-12)


def test_not_a_sequence(tmp_path):
    with pytest.raises(ValueError, match="neither an HPatches"):
        read_homography_sequence(tmp_path)
    with pytest.raises(FileNotFoundError, match="no HPatches"):
        read_homography_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_homography_dataset(tmp_path / "missing")


def test_synthetic_homography_frame_stays_inside_and_is_seeded():
    size = (320, 240)
    for d in (0.2, 1.0):
        H = synthetic_homography(size, np.random.default_rng(5), d)
        corners = M.warp_points(np.linalg.inv(H), M.image_corners(size))
        assert (corners >= -1e-6).all() and (corners[:, 0] <= 319 + 1e-6).all() \
            and (corners[:, 1] <= 239 + 1e-6).all()
    np.testing.assert_array_equal(synthetic_homography(size, np.random.default_rng(1)),
                                  synthetic_homography(size, np.random.default_rng(1)))
    assert np.abs(synthetic_homography(size, np.random.default_rng(1), 0.0) - np.eye(3)).max() < 0.2


def test_synthetic_pairs_content_matches_ground_truth(tmp_path):
    tex = _texture(240, 320, 3)
    cv2.imwrite(str(tmp_path / "a.png"), tex)
    pairs = read_homography_dataset(tmp_path, pairs_per_image=2, seed=7)
    assert [p.name for p in pairs] == ["a/1-2", "a/1-3"] and pairs[0].group == "synthetic"
    again = read_homography_dataset(tmp_path, pairs_per_image=2, seed=7)
    np.testing.assert_array_equal(pairs[1].image1.load(), again[1].image1.load())
    for p in pairs:
        im0, im1 = p.image0.load().astype(np.float32), p.image1.load().astype(np.float32)
        back = cv2.warpPerspective(im0, p.H, (320, 240))  # image 0 seen in image 1's frame
        inner = (slice(20, -20), slice(20, -20))
        corr = np.corrcoef(back[inner].ravel(), im1[inner].ravel())[0, 1]
        assert corr > 0.8, corr  # photometric change keeps the structure
        assert not np.array_equal(back.astype(np.uint8), im1.astype(np.uint8))
    arr_pairs = synthetic_homography_pairs([tex, np.dstack([tex] * 3)], pairs_per_image=1)
    assert len(arr_pairs) == 2 and arr_pairs[1].image0.load().shape == (240, 320)


def test_strecha_camera_and_relative_pose(tmp_path):
    K = np.array([[1000.0, 0, 511.5], [0, 1000, 383.5], [0, 0, 1]])
    Rc2w = cv2.Rodrigues(np.array([0.1, -0.3, 0.05]))[0]
    C = np.array([1.0, -2.0, 0.5])
    values = np.concatenate([K.ravel(), np.zeros(3), Rc2w.ravel(), C, [1024, 768]])
    (tmp_path / "a.camera").write_text(" ".join(f"{v:.12g}" for v in values))
    cam = read_strecha_camera(tmp_path / "a.camera")
    X = np.array([0.3, 0.2, 5.0])
    x = K @ (cam.R @ X + cam.t)
    expected = K @ Rc2w.T @ (X - C)
    np.testing.assert_allclose(x / x[2], expected / expected[2])
    half = cam.scaled(0.5)
    assert half.size == (512, 384)
    np.testing.assert_allclose(half.K[:2, 2], [255.5, 191.5])  # centre pixel stays the centre
    cam2 = Camera(K, np.eye(3), np.array([0.0, 0, 1.0]), (1024, 768))
    R, t = relative_pose(cam, cam2)
    np.testing.assert_allclose(R @ (cam.R @ X + cam.t) + t, cam2.R @ X + cam2.t)
    values[9] = 0.1
    (tmp_path / "b.camera").write_text(" ".join(map(str, values)))
    with pytest.raises(ValueError, match="distortion"):
        read_strecha_camera(tmp_path / "b.camera")


def test_colmap_text_model(tmp_path):
    """A hand-written COLMAP text model read through pycolmap gives the same K and poses."""
    pycolmap = pytest.importorskip("pycolmap")
    model = tmp_path / "sparse"
    images = tmp_path / "images"
    model.mkdir()
    images.mkdir()
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="PINHOLE", width=160, height=120, params=[100.0, 100.0, 80.0, 60.0])
    cam.camera_id = 1
    rec.add_camera_with_trivial_rig(cam) if hasattr(rec, "add_camera_with_trivial_rig") else rec.add_camera(cam)
    R1 = cv2.Rodrigues(np.array([0.0, 0.2, 0.0]))[0]
    for i, (R, t) in enumerate([(np.eye(3), np.zeros(3)), (R1, np.array([-1.0, 0, 0]))], start=1):
        cv2.imwrite(str(images / f"im{i}.png"), _texture(120, 160, i))
        im = pycolmap.Image(name=f"im{i}.png", camera_id=1, image_id=i)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)
        if hasattr(rec, "add_image_with_trivial_frame"):
            rec.add_image_with_trivial_frame(im, pose)
        else:  # pragma: no cover - older pycolmap
            im.cam_from_world = pose
            rec.add_image(im)
            rec.register_image(i)
    rec.write_text(str(model))
    refs, cams, _ = read_colmap_cameras(model, images)
    assert len(refs) == 2
    np.testing.assert_allclose(cams[0].K, [[100, 0, 79.5], [0, 100, 59.5], [0, 0, 1]])
    R, t = relative_pose(cams[0], cams[1])
    np.testing.assert_allclose(R, R1, atol=1e-9)
    np.testing.assert_allclose(t, [-1, 0, 0], atol=1e-9)
    pairs = read_pose_dataset(tmp_path)
    assert pairs == []  # no 3-D points, hence no covisible pair


def test_synthetic_pose_pairs_geometry():
    """The rendered scenes agree with their ground truth: SIFT matches pass the GT epipolar test
    and the estimated pose is within a few degrees."""
    tex = [_texture(300, 400, s) for s in range(2)]
    pair = synthetic_pose_pairs(tex, n_pairs=1, seed=3, size=(400, 300))[0]
    sift = cv2.SIFT_create(1000)
    k0, d0 = sift.detectAndCompute(pair.image0.load(), None)
    k1, d1 = sift.detectAndCompute(pair.image1.load(), None)
    m = cv2.BFMatcher(crossCheck=True).match(d0, d1)
    p0 = np.float64([k0[x.queryIdx].pt for x in m])
    p1 = np.float64([k1[x.trainIdx].pt for x in m])
    F = M.fundamental_from_pose(pair.K0, pair.K1, pair.R, pair.t)
    assert np.median(M.sampson_errors(F, p0, p1)) < 0.5
    from lift.bench.estimators import estimate_relative_pose

    R, t, _ = estimate_relative_pose(p0, p1, pair.K0, pair.K1)
    assert M.pose_error(R, t, pair.R, pair.t)[0] < 2.5


def test_flo_roundtrip_and_errors(tmp_path):
    flow = np.random.default_rng(0).normal(0, 5, (7, 9, 2)).astype(np.float32)
    path = write_flo(tmp_path / "a.flo", flow)
    np.testing.assert_array_equal(read_flo(path), flow)
    (tmp_path / "bad.flo").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="tag"):
        read_flo(tmp_path / "bad.flo")
    # a Sintel-style folder
    scene = tmp_path / "clean" / "alley"
    (scene / "gt" / "occlusions").mkdir(parents=True)
    cv2.imwrite(str(scene / "frame_0002.png"), np.zeros((7, 9), np.uint8))
    cv2.imwrite(str(scene / "frame_0003.png"), np.zeros((7, 9), np.uint8))
    write_flo(scene / "gt" / "frame_0002.flo", flow)
    occ = np.zeros((7, 9), np.uint8)
    occ[0, :4] = 255
    cv2.imwrite(str(scene / "gt" / "occlusions" / "frame_0002.png"), occ)
    pairs = read_sintel_pairs(tmp_path)
    assert len(pairs) == 1 and pairs[0].name == "clean/alley/frame_0002"
    assert pairs[0].valid.sum() == 63 - 4 and not pairs[0].valid[0, :4].any()


def test_stereo_motorcycle_flow_convention():
    pair = stereo_motorcycle_pair()
    left, right = pair.image0.load().astype(np.float32), pair.image1.load().astype(np.float32)
    assert (pair.flow[..., 1] == 0).all() and 0.5 < pair.valid.mean() <= 1
    # x_right = x_left - d: sampling the right image at x + u reproduces the left image
    h, w = left.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(right, xs + pair.flow[..., 0], ys, cv2.INTER_LINEAR)
    ok = pair.valid & (xs + pair.flow[..., 0] >= 0)
    assert np.median(np.abs(warped - left)[ok]) < 0.5 * np.median(np.abs(right - left)[ok])


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "data" / "homography" / "boat").is_dir(),
                    reason="../shared/data (Oxford boat) is not present")
def test_real_oxford_boat():
    pairs = read_homography_dataset(SHARED / "data" / "homography" / "boat")
    assert [p.name for p in pairs] == [f"boat/1-{k}" for k in range(2, 7)]
    assert pairs[0].image0.load().shape == (680, 850)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "data" / "sfm" / "strecha" / "entry-P10").is_dir(),
                    reason="../shared/data (Strecha entry-P10) is not present")
def test_real_strecha_pairs():
    pairs = read_pose_dataset(SHARED / "data" / "sfm" / "strecha" / "entry-P10", max_size=512, gaps=(1,))
    assert len(pairs) == 9
    p = pairs[0]
    assert abs(np.linalg.det(p.R) - 1) < 1e-6 and p.K0[0, 0] == pytest.approx(2759.48 * 512 / 3072, rel=1e-3)
    assert p.image0.load().shape == (341, 512)


def test_nested_image_folder_gives_unique_pair_names(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / "img.png"), _texture(60, 80, ord(sub)))
    pairs = read_homography_dataset(tmp_path, pairs_per_image=1)
    assert [p.name for p in pairs] == ["img/1-2", "img-1/1-2"]
    assert len(read_homography_dataset(tmp_path, pairs_per_image=1, pattern="b/*")) == 1
