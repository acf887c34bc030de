"""Benchmark metrics against hand-computed cases."""
import cv2
import numpy as np
import pytest

from lift.bench import metrics as M
from lift.bench.estimators import EstimatorUnavailable, check_estimator, estimate_homography, \
    estimate_relative_pose

H_SIM = np.array([[0.8 * np.cos(0.3), -0.8 * np.sin(0.3), 40.0],
                  [0.8 * np.sin(0.3), 0.8 * np.cos(0.3), -12.0],
                  [1e-4, 2e-4, 1.0]])


def _grid(n=10, seed=0):
    return np.random.default_rng(seed).uniform(20, 300, (n, 2))


def test_mma_with_planted_wrong_matches_is_exact():
    k0 = _grid()
    offsets = np.array([0, 0, 0, 0, 0, 0, 0.5, 2.5, 4.5, 50.0])
    k1 = M.warp_points(H_SIM, k0) + np.stack([offsets, np.zeros(10)], 1)
    matches = np.stack([np.arange(10), np.arange(10)], 1)
    err = M.reprojection_errors(k0, k1, matches, H_SIM)
    np.testing.assert_allclose(err, offsets, atol=1e-9)
    acc = M.match_accuracy(err)
    expected = [0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    np.testing.assert_allclose(acc, expected)
    # a second pair without matches counts as accuracy 0 in the mean over pairs
    mma = M.mean_matching_accuracy([err, np.zeros(0)])
    np.testing.assert_allclose(mma, np.array(expected) / 2)
    # swapped (wrong) matches: indices 0 and 1 exchanged -> far errors
    swapped = matches.copy()
    swapped[[0, 1], 1] = [1, 0]
    acc2 = M.match_accuracy(M.reprojection_errors(k0, k1, swapped, H_SIM), [3])
    assert acc2[0] == pytest.approx(0.6)


def test_corner_error():
    size = (640, 480)
    assert M.corner_error(np.eye(3), np.eye(3), size) == 0.0
    T = np.array([[1, 0, 3.0], [0, 1, 4.0], [0, 0, 1]])
    assert M.corner_error(T, np.eye(3), size) == pytest.approx(5.0)
    assert M.corner_error(None, np.eye(3), size) == float("inf")
    acc = M.threshold_accuracy([0.5, 2.0, 4.0, float("inf")], (1, 3, 5))
    assert acc == {1: 0.25, 3: 0.5, 5: 0.75}


def test_repeatability_and_matching_score():
    k0 = _grid(20, 1)
    k1 = M.warp_points(H_SIM, k0)
    size = (400, 400)
    r = M.repeatability(k0, k1, H_SIM, size, size, eps=3)
    assert r["repeatability"] == 1.0 and r["shared0"] == 20
    # shift half of image-1 keypoints by 5 px: those are not repeated at 3 px
    k1b = k1.copy()
    k1b[:10, 0] += 5.0
    assert M.repeatability(k0, k1b, H_SIM, size, size, eps=3)["repeatability"] == pytest.approx(0.5)
    # keypoints outside the shared region do not count
    k0c = np.concatenate([k0, [[-500.0, -500.0]]])
    r = M.repeatability(k0c, k1, H_SIM, size, size, eps=3)
    assert r["shared0"] == 20 and r["repeatability"] == 1.0
    # matching score: 12 correct matches out of 20 shared keypoints
    m = np.stack([np.arange(20), np.arange(20)], 1)
    m[12:, 1] = np.roll(m[12:, 1], 1)
    assert M.matching_score(k0, k1, m, H_SIM, size, size, eps=3) == pytest.approx(12 / 20)


def test_pose_auc_hand_cases():
    assert M.pose_auc([0.0, 0.0, 0.0]) == {5.0: 1.0, 10.0: 1.0, 20.0: 1.0}
    assert M.pose_auc([float("inf")] * 3) == {5.0: 0.0, 10.0: 0.0, 20.0: 0.0}
    # recall curve through (0, 0), (0, 0.5), (10, 1): area to 20 = 7.5 + 10 -> 0.875; to 5 -> 0.5
    auc = M.pose_auc([0.0, 10.0], (5, 20))
    assert auc[20] == pytest.approx(0.875) and auc[5] == pytest.approx(0.5)


def test_pose_errors():
    R10 = cv2.Rodrigues(np.array([0.0, np.deg2rad(10), 0.0]))[0]
    assert M.rotation_error(R10, np.eye(3)) == pytest.approx(10.0)
    t = np.array([1.0, 0.2, 0.1])
    assert M.translation_angle_error(-t, t) == pytest.approx(0.0, abs=1e-6)
    assert M.translation_angle_error(np.array([0, 1.0, 0]), np.array([1.0, 0, 0])) == pytest.approx(90.0)
    assert M.pose_error(None, None, np.eye(3), t)[0] == float("inf")


def _two_view(seed=0, n=200):
    rng = np.random.default_rng(seed)
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (n, 3))
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.05, -0.2, 0.03]))[0]
    t = np.array([1.0, 0.1, 0.2])
    x0 = X @ K.T
    x1 = (X @ R.T + t) @ K.T
    return x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:], K, R, t


def test_relative_pose_and_sampson_on_exact_points():
    p0, p1, K, R, t = _two_view()
    F = M.fundamental_from_pose(K, K, R, t)
    assert M.sampson_errors(F, p0, p1).max() < 1e-6
    shifted = p1 + [0, 3.0]
    assert M.sampson_errors(F, p0, shifted).mean() > 0.5
    R_est, t_est, inl = estimate_relative_pose(p0, p1, K, K)
    err = M.pose_error(R_est, t_est, R, t)[0]
    assert err < 0.1 and inl.mean() > 0.95
    assert M.pose_auc([err])[5.0] > 0.98
    assert estimate_relative_pose(p0[:4], p1[:4], K, K)[0] is None


@pytest.mark.parametrize("estimator", ["cv2", "lift"])
def test_homography_estimation_with_outliers(estimator):
    try:
        check_estimator("homography", estimator)
    except EstimatorUnavailable as exc:  # correspondence.find_homography missing: a clear reason
        assert "find_homography" in str(exc)
        pytest.skip(str(exc))
    k0 = np.random.default_rng(3).uniform(0, 400, (100, 2))
    k1 = M.warp_points(H_SIM, k0)
    k1[:30] = np.random.default_rng(4).uniform(0, 400, (30, 2))  # 30 % outliers
    H, inl = estimate_homography(k0, k1, estimator, 3.0)
    assert M.corner_error(H, H_SIM, (400, 400)) < 0.01
    assert inl[30:].all() and inl[:30].mean() < 0.1
    assert estimate_homography(k0[:3], k1[:3], estimator)[0] is None
    with pytest.raises(ValueError):
        estimate_homography(k0, k1, "nope")


@pytest.mark.parametrize("estimator", ["cv2", "lift"])
def test_pose_estimators_agree(estimator):
    try:
        check_estimator("pose", estimator)
    except EstimatorUnavailable as exc:
        pytest.skip(str(exc))
    p0, p1, K, R, t = _two_view(1)
    p1 = p1 + np.random.default_rng(2).normal(0, 0.3, p1.shape)
    R_est, t_est, _ = estimate_relative_pose(p0, p1, K, K, estimator)
    assert M.pose_error(R_est, t_est, R, t)[0] < 1.0


def test_corner_error_of_degenerate_estimate_is_inf():
    H_line = np.array([[1.0, 0, 0], [0, 1, 0], [1.0, 0, -10]])  # sends x = 10 to infinity
    with np.errstate(all="raise"):
        assert M.corner_error(H_line, np.eye(3), (21, 21)) == float("inf")
