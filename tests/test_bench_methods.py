"""Method registry, OpenCV baselines, and the benchmark runner on planted features."""
import cv2
import numpy as np
import pytest

import lift
from lift.bench import metrics as M
from lift.bench.methods import (METHODS, MethodUnavailable, load_method, parse_method_list,
                                register_method)
from lift.bench.readers import HomographyPair, ImageRef
from lift.bench.runner import run_homography_benchmark, run_speed_benchmark
from lift.features import Features


def _image(seed=0, h=240, w=320):
    noise = np.random.default_rng(seed).uniform(0, 255, (h // 6, w // 6)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["sift", "rootsift", "orb", "akaze", "brisk",
                                  "sift+vgg", "sift+boost", "sift+teblid"])
def test_opencv_methods_contract(name):
    image = _image()
    feats = load_method(name, max_keypoints=150).extract(image)
    assert 50 <= len(feats) <= 150, len(feats)
    assert feats.image_size == (320, 240)
    assert (np.diff(feats.scores) <= 0).all()  # sorted by response
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    assert (feats.scales > 0).all()


def test_binary_descriptors_keep_hamming_order():
    from lift.bench.methods import _to_features

    desc = np.random.default_rng(1).integers(0, 256, (2, 32), dtype=np.uint8)
    kps = [cv2.KeyPoint(10, 20, 7, 30, 0.5), cv2.KeyPoint(40, 50, 9, 300, 0.9)]
    feats = _to_features(kps, desc, np.zeros((60, 80), np.uint8), binary=True)
    assert feats.descriptors.shape == (2, 256) and feats.keypoints[0].tolist() == [40, 50]
    hamming = cv2.norm(desc[0], desc[1], cv2.NORM_HAMMING)
    l2sq = np.sum((feats.descriptors[0] - feats.descriptors[1]) ** 2)
    assert l2sq == pytest.approx(4.0 * hamming / 256, rel=1e-5)


def test_registry_errors_and_lift_unavailable(monkeypatch):
    with pytest.raises(ValueError, match="unknown method"):
        load_method("nope")
    with pytest.raises(ValueError):
        load_method("sift", max_keypoints=0)
    assert parse_method_list("lift, sift,sift,orb") == ["lift", "sift", "orb"]

    def missing(*args, **kwargs):
        raise FileNotFoundError("weights lift_default.pt are missing")
    monkeypatch.setattr(lift, "detect_and_describe", missing, raising=False)
    with pytest.raises(MethodUnavailable, match="lift_default.pt"):
        load_method("lift")
    pair = HomographyPair("x/1-2", "synthetic", "x", ImageRef.from_array("a", _image(2)),
                          ImageRef.from_array("b", _image(2)), np.eye(3))
    res = run_homography_benchmark([pair], ["lift", "orb"], quiet=True, log=lambda *_: None)
    assert res["methods"]["lift"]["status"] == "unavailable"
    assert "lift_default.pt" in res["methods"]["lift"]["reason"]
    assert res["methods"]["orb"]["summary"]["mma"][0] > 0.95  # identical images


def test_runner_with_planted_matches():
    """A registered toy method returns fixed features: the runner reproduces the hand MMA."""
    H = np.array([[0.9, 0.1, 10.0], [-0.1, 0.9, 5.0], [0, 0, 1.0]])
    k0 = np.random.default_rng(0).uniform(30, 200, (10, 2))
    offsets = np.array([0, 0, 0, 0, 0, 0, 0.5, 2.5, 4.5, 50.0])
    k1 = M.warp_points(H, k0) + np.stack([offsets, np.zeros(10)], 1)
    desc = np.eye(16, dtype=np.float32)[:10]
    image0, image1 = np.zeros((240, 320), np.uint8), np.full((240, 320), 255, np.uint8)

    @register_method("planted_test", "planted features for tests")
    def planted(max_keypoints, variant=None, device=None):
        def extract(image):
            k = k0 if image.mean() < 128 else k1
            return Features(k, np.ones(10), np.zeros(10), np.ones(10), desc, (320, 240))
        return extract
    try:
        pair = HomographyPair("p/1-2", "synthetic", "p", ImageRef.from_array("z", image0),
                              ImageRef.from_array("o", image1), H)
        res = run_homography_benchmark([pair], ["planted_test"], quiet=True)
    finally:
        del METHODS["planted_test"]
    s = res["methods"]["planted_test"]["summary"]
    np.testing.assert_allclose(s["mma"], [0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    rec = res["methods"]["planted_test"]["pairs"][0]
    assert rec["matches"] == 10 and rec["matching_score"] == pytest.approx(0.8)
    assert rec["corner_error"] < 2.0 and rec["inliers"] >= 7  # 2 far outliers rejected
    assert rec["inlier_gt_error_median"] < 0.5


def test_speed_benchmark_counts():
    refs = [ImageRef.from_array(f"im{i}", _image(i)) for i in range(2)]
    res = run_speed_benchmark(refs, ["orb"], max_keypoints=100, repeats=2, warmup=1, quiet=True)
    s = res["methods"]["orb"]["summary"]
    assert s["keypoints_mean"] == 100 and s["time_ms_median"] > 0


def test_lift_named_weights_random_init(tmp_path):
    """'lift:<weights path>' runs the library's pipeline (random-init weights: the contract, not
    the accuracy, is checked)."""
    LIFTModel = getattr(lift, "LIFTModel", None)
    if LIFTModel is None or not hasattr(LIFTModel, "save"):
        pytest.skip("lift.LIFTModel is not available in this build")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = LIFTModel().save(tmp_path / "random.pt")
    method = load_method(f"lift:{path}", max_keypoints=64)
    assert str(path) in method.description
    feats = method.extract(_image(3, 128, 160))
    assert 0 < len(feats) <= 64 and feats.image_size == (160, 128)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
    with pytest.raises(MethodUnavailable):
        load_method(f"lift:{tmp_path / 'missing.pt'}")
