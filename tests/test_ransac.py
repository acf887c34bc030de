"""Batched robust estimation (correspondence.ransac): exact recovery with outliers, per-problem
failure isolation, dtypes, bad input, determinism. Speed is measured by tools/bench_ransac.py."""
import numpy as np
import pytest
import torch

from correspondence.ransac import (estimate_relative_pose, find_essential, find_fundamental,
                                   find_homography)
from correspondence.synthetic import (corner_error, homography_problem, relative_pose_problem,
                                      rotation_error_deg, translation_error_deg)


def _h_batch(n_prob=3, n=300, ratio=0.5, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [homography_problem(rng, n, ratio, noise=noise) for _ in range(n_prob)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_homography_exact_recovery_batched(dtype, device):
    probs = _h_batch(3, 300, 0.4)
    src = torch.tensor(np.stack([p["src"] for p in probs]), dtype=dtype, device=device)
    dst = torch.tensor(np.stack([p["dst"] for p in probs]), dtype=dtype, device=device)
    H, mask = find_homography(src, dst, threshold=1.0)
    assert H.shape == (3, 3, 3) and mask.shape == (3, 300) and H.dtype == dtype
    assert H.device.type == mask.device.type == device.type
    H, mask = H.cpu(), mask.cpu()
    for i, p in enumerate(probs):
        assert corner_error(H[i].double().numpy(), p["H"]) < (2e-2 if dtype == torch.float32 else 1e-6)
        assert (mask[i].numpy() == p["inlier"]).mean() == 1.0
        assert abs(H[i, 2, 2].item() - 1) < 1e-6


def test_homography_numpy_single_and_noise():
    p = _h_batch(1, 1000, 0.2, noise=1.0, seed=4)[0]
    H, mask = find_homography(p["src"], p["dst"], threshold=3.0)
    assert isinstance(H, np.ndarray) and H.shape == (3, 3) and mask.shape == (1000,)
    assert corner_error(H, p["H"]) < 2.0
    # nearly all true inliers found, few outliers accepted
    assert (mask & p["inlier"]).sum() >= 0.97 * p["inlier"].sum()
    assert (mask & ~p["inlier"]).sum() <= 5


def test_batched_low_inlier_ratio_small_sets():
    """12 problems of 500 matches with 10 % inliers in one call: every one solved. (Guards the
    pre-verification: a model fits its own sample exactly, and with few matches per problem
    wrong models with their own points in the random subset used to outrank the right ones.)"""
    probs = _h_batch(12, 500, 0.1, noise=1.0, seed=1)
    src = torch.tensor(np.stack([p["src"] for p in probs]), dtype=torch.float32)
    dst = torch.tensor(np.stack([p["dst"] for p in probs]), dtype=torch.float32)
    H, mask = find_homography(src, dst, threshold=3.0)
    errs = [corner_error(H[i].double().numpy(), p["H"]) for i, p in enumerate(probs)]
    assert max(errs) < 3.0
    for i, p in enumerate(probs):
        assert (mask[i].numpy() & p["inlier"]).sum() >= 0.9 * p["inlier"].sum()


def test_failure_isolated_per_problem():
    probs = _h_batch(4, 200, 0.5)
    src = np.stack([p["src"] for p in probs])
    dst = np.stack([p["dst"] for p in probs])
    valid = np.ones((4, 200), bool)
    valid[1, 3:] = False  # problem 1: only 3 valid matches -> no model
    src[2] = np.linspace(0, 100, 200)[:, None] * np.array([1.0, 1.0])  # all collinear -> degenerate
    dst[2] = src[2] * 2
    src[3, :10] = np.nan  # NaN coordinates are ignored
    H, mask = find_homography(src, dst, mask=valid)
    assert np.isnan(H[1]).all() and not mask[1].any()
    assert np.isnan(H[2]).all() and not mask[2].any()
    for i in (0, 3):
        assert corner_error(H[i], probs[i]["H"]) < 1e-3
    assert not mask[3, :10].any()
    assert (mask[3, 10:] == probs[3]["inlier"][10:]).all()
    # padded entries stay False
    assert not mask[1, 3:].any()


def test_bad_input_raises():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        find_homography(x, np.zeros((9, 2)))
    with pytest.raises(ValueError, match="N x 2"):
        find_homography(np.zeros((10, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="mask"):
        find_homography(x, x, mask=np.ones(9, bool))
    with pytest.raises(ValueError, match="threshold"):
        find_homography(x, x, threshold=0)
    with pytest.raises(TypeError):
        find_homography([[0, 0]], [[0, 0]])
    with pytest.raises(ValueError, match="K0"):
        find_essential(x, x, K0=np.eye(3))


def test_too_few_points_single_problem():
    H, mask = find_homography(np.random.rand(3, 2), np.random.rand(3, 2))
    assert np.isnan(H).all() and mask.shape == (3,) and not mask.any()
    F, mask = find_fundamental(np.zeros((0, 2)), np.zeros((0, 2)))
    assert np.isnan(F).all() and mask.shape == (0,)


def test_deterministic_under_seed_and_weights():
    p = _h_batch(1, 500, 0.3, noise=1.0, seed=7)[0]
    a = find_homography(p["src"], p["dst"], seed=3)
    b = find_homography(p["src"], p["dst"], seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # a prior that favours the true inliers still gives the right model, with far fewer samples
    w = np.where(p["inlier"], 1.0, 0.05)
    H, mask = find_homography(p["src"], p["dst"], weights=w, seed=3)
    assert corner_error(H, p["H"]) < 2.0
    # a zero prior everywhere falls back to uniform sampling instead of failing
    H0, _ = find_homography(p["src"], p["dst"], weights=np.zeros(500), seed=3)
    assert corner_error(H0, p["H"]) < 2.0


def _pose_batch(n_prob, n, ratio, seed):
    rng = np.random.default_rng(seed)
    return [relative_pose_problem(rng, n, ratio, noise=0.0) for _ in range(n_prob)]


def test_fundamental_exact_recovery():
    probs = _pose_batch(2, 300, 0.6, seed=1)
    k0 = np.stack([p["kpts0"] for p in probs])
    k1 = np.stack([p["kpts1"] for p in probs])
    F, mask = find_fundamental(k0, k1, threshold=0.5)
    for i, p in enumerate(probs):
        Ki = np.linalg.inv(p["K"])
        t = p["t"]
        E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ p["R"]
        Ft = Ki.T @ E @ Ki
        Ft /= np.linalg.norm(Ft)
        assert min(np.abs(F[i] - Ft).max(), np.abs(F[i] + Ft).max()) < 1e-5
        # all true inliers kept; an outlier may lie on its epipolar line by chance
        assert mask[i][p["inlier"]].all()
        assert (mask[i] & ~p["inlier"]).sum() <= 0.02 * (~p["inlier"]).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relative_pose_exact_recovery(dtype, device):
    probs = _pose_batch(2, 200, 0.6, seed=2)
    k0 = torch.tensor(np.stack([p["kpts0"] for p in probs]), dtype=dtype, device=device)
    k1 = torch.tensor(np.stack([p["kpts1"] for p in probs]), dtype=dtype, device=device)
    K = torch.tensor(probs[0]["K"], dtype=dtype, device=device)
    R, t, mask = estimate_relative_pose(k0, k1, K, K, threshold=0.5)
    assert R.shape == (2, 3, 3) and t.shape == (2, 3) and mask.shape == (2, 200)
    assert R.device.type == t.device.type == mask.device.type == device.type
    R, t, mask, k0, k1, K = R.cpu(), t.cpu(), mask.cpu(), k0.cpu(), k1.cpu(), K.cpu()
    tol = 0.05 if dtype == torch.float32 else 1e-4
    for i, p in enumerate(probs):
        assert rotation_error_deg(R[i].double().numpy(), p["R"]) < tol
        assert translation_error_deg(t[i].double().numpy(), p["t"]) < tol
        assert mask[i][torch.from_numpy(p["inlier"])].float().mean() > 0.98
    # the essential matrix alone, in normalised coordinates
    c0 = (k0.double() - K[:2, 2].double()) / K[0, 0].double()
    c1 = (k1.double() - K[:2, 2].double()) / K[0, 0].double()
    E, m = find_essential(c0, c1, threshold=1e-3)
    assert E.shape == (2, 3, 3) and m[0][torch.from_numpy(probs[0]["inlier"])].all()


def test_converged_local_optimisation_skips_final_refit_without_changing_the_model():
    """With ``irls_tol`` the final refit is skipped for models whose local optimisation
    converged; the result must match the exhaustive refit (``irls_tol=0``) to well below the
    noise, and the inlier sets must agree."""
    rng = np.random.default_rng(11)
    probs = [homography_problem(rng, 1000, r, noise=1.0) for r in (0.5, 0.2, 0.1)]
    src = torch.tensor(np.stack([p["src"] for p in probs]))
    dst = torch.tensor(np.stack([p["dst"] for p in probs]))
    H_fast, m_fast = find_homography(src, dst)
    H_full, m_full = find_homography(src, dst, irls_tol=0.0)
    for i, p in enumerate(probs):
        e_fast = corner_error(H_fast[i].numpy(), p["H"])
        e_full = corner_error(H_full[i].numpy(), p["H"])
        assert e_fast < 1.5 and abs(e_fast - e_full) < 0.05, (e_fast, e_full)
        assert (m_fast[i] != m_full[i]).float().mean() < 0.005


def _normalised(probs):
    """The engine's inputs for a batch of homography problems: normalised points, validity,
    scales and the normalising transforms ``(n0, n1, valid, s0, s1, T0, T1)``."""
    from correspondence.geometry import apply_similarity, normalizing_transform

    x0 = torch.from_numpy(np.stack([p["src"] for p in probs]))
    x1 = torch.from_numpy(np.stack([p["dst"] for p in probs]))
    valid = torch.ones(x0.shape[:2], dtype=torch.bool)
    (T0, s0), (T1, s1) = normalizing_transform(x0, valid), normalizing_transform(x1, valid)
    n0, n1 = apply_similarity(T0, x0), apply_similarity(T1, x1)
    return n0, n1, valid, s0, s1, T0, T1


def test_prior_sampling_finds_models_faster_at_low_inlier_ratio():
    """The default consistency prior (spatially coherent inliers) stops after far fewer samples
    than uniform sampling at 10 % inliers; both find every model."""
    from correspondence.ransac import HOMOGRAPHY, RobustEstimator

    probs = _h_batch(4, 1000, 0.1, noise=1.0, seed=11)
    n0, n1, valid, s0, s1, T0, T1 = _normalised(probs)
    iters = {}
    for prior in ("consistency", "uniform"):
        Hn, _, iters[prior] = RobustEstimator(HOMOGRAPHY, 3.0, prior=prior)(n0, n1, valid, None, s0, s1)
        H = (torch.linalg.solve(T1, Hn) @ T0).numpy()
        for p, h in zip(probs, H):
            assert corner_error(h / h[2, 2], p["H"]) < 3.0, prior
    # uniform sampling at r = 0.1 needs ~69k samples for 0.999 confidence
    assert (iters["consistency"] * 4 < iters["uniform"]).all(), iters


def test_homography_switches_to_the_prior_after_the_first_round():
    """At 10 % inliers a homography problem tests the switch to the consistency prior after its
    first round of 256 uniform samples (``prior_check``), not after the second (2304): it draws
    fewer samples in all and still finds every model; F and E keep ``prior_after // 8``."""
    from correspondence.ransac import ESSENTIAL, FUNDAMENTAL, HOMOGRAPHY, RobustEstimator

    assert RobustEstimator(HOMOGRAPHY, 3.0).prior_check == 256
    assert RobustEstimator(FUNDAMENTAL, 1.0).prior_check == 4096 // 8
    assert RobustEstimator(ESSENTIAL, 1.0).prior_check == 2048 // 8
    probs = _h_batch(4, 500, 0.1, noise=1.0, seed=5)
    n0, n1, valid, s0, s1, T0, T1 = _normalised(probs)
    iters = {}
    for check in (256, 2304):
        Hn, _, iters[check] = RobustEstimator(HOMOGRAPHY, 3.0, prior_check=check)(n0, n1, valid, None, s0, s1)
        H = (torch.linalg.solve(T1, Hn) @ T0).numpy()
        for p, h in zip(probs, H):
            assert corner_error(h / h[2, 2], p["H"]) < 3.0, check
    # the early switch skips the second uniform round of 2048 samples
    assert (iters[256] + 2048 <= iters[2304]).all(), iters
