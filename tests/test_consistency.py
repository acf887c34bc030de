"""Neighbourhood-consistency prior (correspondence.consistency) and its use by the RANSAC engine."""
import numpy as np
import pytest
import torch

from correspondence import estimate_relative_pose, find_homography
from correspondence.consistency import _radius, consistency_prior, neighbour_consistency
from correspondence.geometry import batch_correspondences, normalizing_transform, apply_similarity
from correspondence.ransac import ESSENTIAL, HOMOGRAPHY, RobustEstimator, _calibrate
from correspondence.synthetic import (corner_error, homography_problem, relative_pose_problem, rotation_error_deg,
                                      translation_error_deg)


def _brute_force(x0, x1, valid, k=16):
    n = valid.sum(1)
    r0, r1 = _radius(x0.float(), valid, n, k), _radius(x1.float(), valid, n, k)
    x0, x1 = x0.float(), x1.float()
    d0 = (x0[:, :, None] - x0[:, None]).square().sum(-1) < r0[:, None, None] ** 2
    d1 = (x1[:, :, None] - x1[:, None]).square().sum(-1) < r1[:, None, None] ** 2
    eye = torch.eye(x0.shape[1], dtype=torch.bool)
    return (d0 & d1 & valid[:, None] & valid[:, :, None] & ~eye).sum(-1).float()


def _batch(rs, n=600, seed=0):
    rng = np.random.default_rng(seed)
    ps = [homography_problem(rng, n=n, inlier_ratio=r) for r in rs]
    x0 = torch.tensor(np.stack([p["src"] for p in ps]))
    x1 = torch.tensor(np.stack([p["dst"] for p in ps]))
    return ps, x0, x1


def test_counts_equal_brute_force_with_padding_and_clusters():
    ps, x0, x1 = _batch([0.5, 0.2, 0.1])
    # a tight cluster (many keypoints at one place, as real detectors give) and padding
    x0[1, :40] = x0[1, :1] + torch.rand(40, 2, dtype=x0.dtype)
    valid = torch.ones(3, 600, dtype=torch.bool)
    valid[2, 450:] = False
    x0[0, 5] = float("nan")  # non-finite: treated as invalid
    got = neighbour_consistency(x0, x1, valid, max_per_cell=1000)
    want = _brute_force(torch.nan_to_num(x0), x1, valid & torch.isfinite(x0).all(-1))
    assert torch.equal(got.float(), want)
    assert got.dtype == x0.dtype
    assert float(got[2, 450:].abs().sum()) == 0 and float(got[0, 5]) == 0


def test_counts_are_permutation_equivariant_and_unit_free():
    _, x0, x1 = _batch([0.3])
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(1))
    c = neighbour_consistency(x0, x1)
    assert torch.equal(neighbour_consistency(x0[:, perm], x1[:, perm]), c[:, perm])
    # metres instead of pixels, different per image: the radii adapt
    assert torch.equal(neighbour_consistency(x0 * 0.25, x1 * 4.0), c)


def test_separates_inliers_from_uniform_outliers():
    ps, x0, x1 = _batch([0.1], n=2000)
    inl = torch.from_numpy(ps[0]["inlier"])
    c = neighbour_consistency(x0, x1)[0]
    assert float(c[inl].mean()) > 8 * float(c[~inl].mean())
    w = consistency_prior(x0, x1)[0]
    assert abs(float(w.sum()) - 1) < 1e-9
    assert float(w[inl].sum()) > 0.25  # 0.10 under uniform sampling
    assert float(w.min()) >= 0.5 / 2000 - 1e-12  # the uniform floor


def test_prior_without_any_consistent_pair_is_uniform():
    x0 = torch.tensor([[[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50.0, 50.0]]])
    x1 = x0.flip(1) * torch.tensor([1.0, -1.0])  # every neighbourhood scrambled
    valid = torch.tensor([[True, True, True, True, False]])
    w = consistency_prior(x0, x1, valid, k=1)
    assert torch.allclose(w, torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0]]))
    with pytest.raises(ValueError):
        consistency_prior(x0, x1, floor=0.0)
    with pytest.raises(ValueError):
        neighbour_consistency(x0, x1[:, :4])


def test_engine_switches_to_prior_only_at_low_inlier_ratio():
    ps, x0, x1 = _batch([0.6, 0.1], n=2000)
    src, dst, valid, _, _ = batch_correspondences(x0, x1)
    T0, s0 = normalizing_transform(src, valid)
    T1, s1 = normalizing_transform(dst, valid)
    n0, n1 = apply_similarity(T0, src), apply_similarity(T1, dst)
    runs = {}
    for prior in ("consistency", "uniform"):
        est = RobustEstimator(HOMOGRAPHY, 3.0, 0.999, 100_000, prior=prior)
        runs[prior] = est(n0, n1, valid, None, s0, s1)
    it_c, it_u = runs["consistency"][2], runs["uniform"][2]
    assert int(it_c[0]) == int(it_u[0])  # easy problem: same uniform sampling
    assert int(it_c[1]) * 10 < int(it_u[1])  # hard problem: far fewer samples
    for b, p in enumerate(ps):
        H = torch.linalg.solve(T1[b], runs["consistency"][0][b]) @ T0[b]
        assert corner_error((H / H[2, 2]).numpy(), p["H"]) < 3


def test_relative_pose_at_ten_percent_inliers():
    rng = np.random.default_rng(3)
    for _ in range(2):
        p = relative_pose_problem(rng, 2000, 0.1)
        R, t, inl = estimate_relative_pose(p["kpts0"], p["kpts1"], p["K"], p["K"])
        err = max(rotation_error_deg(R, p["R"]), translation_error_deg(t, p["t"]))
        assert err < 5, err
        assert inl[p["inlier"]].mean() > 0.5 and inl[~p["inlier"]].mean() < 0.01


def test_caller_weights_drive_termination():
    """Weights that favour the inliers make the engine stop much earlier than uniform sampling."""
    rng = np.random.default_rng(5)
    p = relative_pose_problem(rng, 1000, 0.2)
    c0, c1, valid, _, _, s0, s1 = _calibrate(p["kpts0"], p["kpts1"], p["K"], p["K"], None, None, None)
    w = torch.from_numpy(np.where(p["inlier"], 1.0, 0.05))[None]
    est = RobustEstimator(ESSENTIAL, 1.0, 0.999, 10_000, prior="uniform")
    _, m_w, it_w = est(c0, c1, valid, w.to(c0.dtype), s0, s1)
    _, _, it_u = est(c0, c1, valid, None, s0, s1)
    assert int(it_w[0]) * 5 < int(it_u[0])
    assert m_w[0][torch.from_numpy(p["inlier"])].float().mean() > 0.5


def test_counts_same_with_binary_search_fallback(monkeypatch):
    """Huge grids find the cells' ranges by binary search instead of the dense table: same counts."""
    import correspondence.consistency as cons

    ps, x0, x1 = _batch([0.5, 0.1], n=800, seed=4)
    valid = torch.ones(2, 800, dtype=torch.bool)
    valid[1, 700:] = False
    dense = neighbour_consistency(x0, x1, valid, max_per_cell=1000)
    monkeypatch.setattr(cons, "_DENSE_CELLS", 0)
    sparse = neighbour_consistency(x0, x1, valid, max_per_cell=1000)
    assert torch.equal(dense, sparse)
    assert torch.equal(sparse.float(), _brute_force(x0, x1, valid))
    assert float(sparse[1, 700:].abs().sum()) == 0
