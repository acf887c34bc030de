"""The runtime pipeline and the public API, with a seeded random-init model."""
import cv2
import numpy as np
import pytest
import torch

import lift
from lift import LIFT, Features, ImageError, LIFTModel, WeightsError, detect_and_describe


def test_extract_basic_contract(random_model, photo):
    f = LIFT(random_model, max_keypoints=500).extract(photo)
    assert isinstance(f, Features) and len(f) == 500
    h, w = photo.shape
    assert f.image_size == (w, h)
    assert f.keypoints.dtype == np.float32 and f.descriptors.shape == (500, 128)
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] <= w - 1).all() and (f.keypoints[:, 1] <= h - 1).all()
    assert (np.diff(f.scores) <= 0).all()
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert (f.scales >= 1.0 * 2 ** -0.2).all() and (f.scales <= 16 * 2 ** 0.2).all()
    assert (np.abs(f.oris) <= np.pi + 1e-6).all()
    # more than one scale is used
    assert len(np.unique(np.round(np.log2(f.scales) * 4))) > 3


def test_input_types_agree(random_model, photo):
    ex = LIFT(random_model, max_keypoints=200, patch_precision="float32")
    ref = ex.extract(photo)
    rgb = np.repeat(photo[:, :, None], 3, axis=2)
    for variant in (photo.astype(np.float32) / 255, rgb, torch.from_numpy(photo),
                    torch.from_numpy(photo).float()[None] / 255):
        f = ex.extract(variant)
        np.testing.assert_allclose(f.keypoints, ref.keypoints, atol=1e-3)
        np.testing.assert_allclose(f.descriptors, ref.descriptors, atol=1e-4)


def test_bfloat16_patch_networks_agree_with_float32(photo):
    """The bfloat16 patch networks (the default on CPUs with native bfloat16) give the float32
    keypoints, orientations within a few degrees and near-identical unit descriptors."""
    ref = LIFT("default", max_keypoints=400, patch_precision="float32").extract(photo)
    f = LIFT("default", max_keypoints=400, patch_precision="bfloat16").extract(photo)
    np.testing.assert_allclose(f.keypoints, ref.keypoints, atol=1e-4)
    dang = np.degrees(np.abs(np.angle(np.exp(1j * (f.oris - ref.oris)))))
    assert np.median(dang) < 0.5 and np.quantile(dang, 0.99) < 3
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    cos = (f.descriptors * ref.descriptors).sum(1)
    assert np.median(cos) > 0.999 and cos.min() > 0.95
    with pytest.raises(ValueError, match="patch_precision"):
        LIFT("default", patch_precision="float16")


def test_batch_of_images_equals_single_calls(random_model, photo):
    ex = LIFT(random_model, max_keypoints=300)
    other = np.ascontiguousarray(photo[::-1])
    small = np.ascontiguousarray(photo[:200, :300])
    feats = ex.extract([photo, other, small])
    for im, f in zip([photo, other, small], feats):
        g = ex.extract(im)
        np.testing.assert_allclose(f.keypoints, g.keypoints, atol=1e-4)
        np.testing.assert_allclose(f.descriptors, g.descriptors, atol=1e-4)
    out = ex(torch.stack([torch.from_numpy(photo), torch.from_numpy(other)])[:, None].float() / 255)
    assert out["keypoints"].shape == (2, 300, 2) and out["mask"].all()


def test_mask_restricts_keypoints(random_model, photo):
    mask = np.zeros_like(photo)
    mask[100:300, 50:250] = 255
    f = LIFT(random_model, max_keypoints=300).extract(photo, mask=mask)
    assert len(f) > 50
    x, y = np.round(f.keypoints).astype(int).T
    assert (mask[y, x] > 0).all()
    with pytest.raises(ImageError):
        LIFT(random_model).extract(photo, mask=mask[:10])


def test_tiled_detector_equals_whole_image(random_model, photo):
    a = LIFT(random_model, max_keypoints=400).extract(photo)
    b = LIFT(random_model, max_keypoints=400, tile_rows=64).extract(photo)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_rotating_image_by_90_rotates_keypoints(photo):
    """A detector with 90-degree-symmetric filters must give exactly rotated keypoints."""
    torch.manual_seed(1)
    model = LIFTModel().eval()
    w = model.detector.conv.weight.data
    model.detector.conv.weight.data = (w + w.rot90(1, (2, 3)) + w.rot90(2, (2, 3)) + w.rot90(3, (2, 3))) / 4
    ex = LIFT(model, max_keypoints=300, upright=True)
    img = photo[:400, :400]
    f0 = ex.extract(img)
    f1 = ex.extract(np.ascontiguousarray(np.rot90(img, -1)))  # 90 deg clockwise on screen
    n = img.shape[0]
    # clockwise rotation by 90 deg: (x, y) -> (n - 1 - y, x)
    expected = np.stack([n - 1 - f0.keypoints[:, 1], f0.keypoints[:, 0]], 1)
    dist = np.linalg.norm(expected[:, None] - f1.keypoints[None], axis=2)
    d, j = dist.min(1), dist.argmin(1)
    assert np.mean(d < 0.05) > 0.9
    # the same scale at corresponding keypoints; a few may differ because the nearest-pixel
    # lookup into a neighbouring level rounds a half-way position one way (measured: 7 of 300 on this photo)
    same = d < 0.05
    rel = np.abs(f0.scales[same] / f1.scales[j[same]] - 1)
    assert np.mean(rel < 1e-3) > 0.97


def test_orientation_follows_rotation_with_shipped_weights(photo):
    try:
        model = LIFTModel.load("default")
    except FileNotFoundError as err:
        pytest.skip(f"shipped weights not present: {err}")
    ex = LIFT(model, max_keypoints=500)
    img = photo[:400, :400]
    f0 = ex.extract(img)
    f1 = ex.extract(np.ascontiguousarray(np.rot90(img, -1)))
    n = img.shape[0]
    expected = np.stack([n - 1 - f0.keypoints[:, 1], f0.keypoints[:, 0]], 1)
    d = np.linalg.norm(expected[:, None] - f1.keypoints[None], axis=2)
    j = d.argmin(1)
    close = d.min(1) < 1.0
    assert close.sum() > 50
    # clockwise rotation of the image adds +90 degrees to orientations (clockwise sense)
    dtheta = np.angle(np.exp(1j * (f1.oris[j[close]] - f0.oris[close] - np.pi / 2)))
    assert np.median(np.abs(dtheta)) < np.deg2rad(10)


@pytest.mark.parametrize("shape", [(0, 0), (0, 20), (1, 1), (12, 12), (30, 400), (40, 40)])
def test_empty_and_tiny_images_give_empty_features(random_model, shape):
    f = LIFT(random_model).extract(np.zeros(shape, np.uint8) + 100)
    assert len(f) == 0 and f.descriptors.shape == (0, 128)
    assert f.image_size == (shape[1], shape[0])
    kps, desc = f.to_cv2()
    assert kps == () and desc is None


def test_blank_image_gives_no_keypoints(random_model):
    for value in (0, 255):
        assert len(LIFT(random_model).extract(np.full((200, 300), value, np.uint8))) == 0


@pytest.mark.parametrize("bad,err", [
    (np.full((50, 50), np.nan, np.float32), "NaN"),
    (np.zeros((50, 50, 2), np.uint8), "interpret"),
    (np.zeros((50, 50), np.int32), "ambiguous"),
    (np.zeros((50, 50), np.complex64), "complex"),
    (np.zeros((2, 50, 50, 3), np.uint8), "single image"),
    ("image.png", "numpy array or a torch tensor"),
    (torch.zeros(5, 50, 50), "interpret"),
])
def test_bad_images_raise_clear_errors(random_model, bad, err):
    with pytest.raises(ImageError, match=err):
        LIFT(random_model).extract(bad)


def test_huge_image_is_processed_in_stripes(random_model):
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (2600, 300), dtype=np.uint8), (0, 0), 2)
    f = LIFT(random_model, max_keypoints=100, min_sigma=2.0, tile_rows=512).extract(img)
    assert len(f) == 100 and f.keypoints[:, 1].max() <= 2599


def test_missing_and_corrupt_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        LIFTModel.load(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError):
        LIFTModel.load(bad)
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match="not a LIFT weights file"):
        LIFTModel.load(tmp_path / "foreign.pt")
    m = LIFTModel()
    state = m.state()
    state["descriptor"]["features.0.weight"] = state["descriptor"]["features.0.weight"][:3]
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(WeightsError, match="architecture"):
        LIFTModel.load(tmp_path / "mismatch.pt")
    # the shipped name resolves inside lift/weights; a missing file names itself
    monkeypatch.setattr(lift.model, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="lift_default.pt"):
        LIFTModel.load("default")


def test_weights_round_trip(tmp_path, random_model, photo):
    path = random_model.save(tmp_path / "w.pt")
    loaded = LIFTModel.load(path)
    a = LIFT(random_model, max_keypoints=100).extract(photo)
    b = detect_and_describe(photo, max_keypoints=100, model=loaded)
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-6)


def test_opencv_dialect(random_model, photo):
    sift_like = LIFT.create(nfeatures=250, model=random_model)
    kps, desc = sift_like.detectAndCompute(photo, None)
    assert len(kps) == 250 and desc.shape == (250, 128) and desc.dtype == np.float32
    assert sift_like.defaultNorm() == cv2.NORM_L2 and sift_like.descriptorSize() == 128
    assert len(sift_like.detect(photo)) == 250
    # compute() at the detected keypoints reproduces the descriptors
    kps2, desc2 = sift_like.compute(photo, kps)
    np.testing.assert_allclose(desc2, desc, atol=2e-3)
    # angle -1 means "estimate it": same as the detected angle (all keypoints, so that the
    # networks see the same batch: a random network amplifies the batch-size-dependent float
    # rounding of the convolutions to ~1 deg)
    unoriented = [cv2.KeyPoint(k.pt[0], k.pt[1], k.size, -1) for k in kps]
    kps3, _ = sift_like.compute(photo, unoriented)
    ang = np.array([k.angle for k in kps3]) - np.array([k.angle for k in kps])
    assert np.all(np.abs((ang + 180) % 360 - 180) < 0.01)
    # descriptors of SIFT keypoints work too
    sk = cv2.SIFT_create(100).detect(photo, None)
    k4, d4 = sift_like.compute(photo, sk)
    assert d4.shape == (len(sk), 128)
    assert sift_like.compute(photo, [])[1] is None
