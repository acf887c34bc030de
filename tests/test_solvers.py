"""Minimal and non-minimal solvers of correspondence.homography / correspondence.epipolar on
exact synthetic data: the true model must be among the solutions, to numerical precision."""
import numpy as np
import pytest
import torch

from correspondence.epipolar import (decompose_essential, essential_5pt, essential_fit, fundamental_7pt,
                                     fundamental_fit, recover_pose, refine_pose, sampson_error_rows, solve_cubic)
from correspondence.geometry import homogeneous_rows, sampson_error, skew, smallest_eigenvector
from correspondence.homography import (homography_dlt, homography_minimal, homography_sample_degenerate,
                                       transfer_error)
from correspondence.synthetic import random_homography, relative_pose_problem


def _normalised(M):
    M = M / np.linalg.norm(M)
    return M * np.sign(M.flat[np.argmax(np.abs(M))])


def _closest(models, ok, truth):
    """Smallest sign-invariant distance between unit-norm candidate models and the truth."""
    t = truth / np.linalg.norm(truth)
    best = np.inf
    for Mi, oi in zip(models, ok):
        if oi:
            Mi = Mi / np.linalg.norm(Mi)
            best = min(best, np.abs(Mi - t).max(), np.abs(Mi + t).max())
    return best


def _scene(seed, n):
    p = relative_pose_problem(np.random.default_rng(seed), n=n, inlier_ratio=1.0, noise=0.0)
    Ki = np.linalg.inv(p["K"])
    c0 = np.c_[p["kpts0"], np.ones(n)] @ Ki.T
    c1 = np.c_[p["kpts1"], np.ones(n)] @ Ki.T
    E = skew(torch.from_numpy(p["t"]))[None].numpy()[0] @ p["R"]
    return p, c0[:, :2], c1[:, :2], E


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_homography_minimal_and_dlt_exact(dtype):
    rng = np.random.default_rng(0)
    Hs, x0s, x1s = [], [], []
    for _ in range(16):
        H = random_homography(rng)
        x0 = rng.uniform([-1, -1], [1, 1], (4, 2))
        # apply in normalised-like coordinates: conjugate H to the [-1, 1] square
        S = np.diag([320.0, 240.0, 1.0]); S[:2, 2] = [320, 240]
        Hn = np.linalg.inv(S) @ H @ S
        y = np.c_[x0, np.ones(4)] @ Hn.T
        Hs.append(Hn)
        x0s.append(x0)
        x1s.append(y[:, :2] / y[:, 2:])
    x0 = torch.tensor(np.array(x0s), dtype=dtype)
    x1 = torch.tensor(np.array(x1s), dtype=dtype)
    H, ok = homography_minimal(x0, x1)
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    for i in range(16):
        assert _closest(H[i].numpy(), ok[i].numpy(), Hs[i]) < tol
    Hd = homography_dlt(x0, x1)
    for i in range(16):
        assert _closest(Hd[i:i + 1].numpy(), [True], Hs[i]) < 10 * tol
    # the minimal model reproduces the points
    err = transfer_error(H, x0, x1)
    assert float(err.max()) < (1e-5 if dtype == torch.float32 else 1e-18)


def test_homography_degeneracy_filter():
    x0 = torch.tensor([[[0.0, 0], [1, 0], [1, 1], [0, 1]]])
    ok_sample = torch.cat([x0, x0 * 2 + 0.1])  # similarity: consistent orientation
    assert not homography_sample_degenerate(ok_sample[:1], ok_sample[1:]).item()
    mirrored = x0 * torch.tensor([-1.0, 1.0])  # reflection flips every triangle
    assert homography_sample_degenerate(x0, mirrored).item()
    collinear = torch.tensor([[[0.0, 0], [1, 1], [2, 2], [0, 1]]])
    assert homography_sample_degenerate(collinear, x0).item()
    swapped = x0[:, [1, 0, 2, 3]]  # one swapped correspondence: orientation inconsistent
    assert homography_sample_degenerate(x0, swapped).item()


def test_solve_cubic_roots():
    roots = torch.tensor([[1.0, -2.0, 0.5], [3.0, 3.0, 3.0]], dtype=torch.float64)
    c = []
    for r in roots:
        p = np.poly(r.numpy())[::-1] * 2.5  # c0..c3
        c.append(p)
    got, valid = solve_cubic(torch.tensor(np.array(c)))
    assert valid[0].all()
    assert torch.allclose(got[0].sort().values, roots[0].sort().values, atol=1e-9)
    # one real root (x^3 + x + 1 has a single real root near -0.6823)
    got, valid = solve_cubic(torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    assert valid[0].tolist() == [True, False, False]
    assert abs(got[0, 0].item() + 0.6823278) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fundamental_7pt_and_8pt_exact(dtype):
    for seed in range(4):
        p, c0, c1, E = _scene(seed, 40)
        F = _normalised(np.linalg.inv(p["K"]).T @ E @ np.linalg.inv(p["K"]))
        # normalised image coordinates (what the estimator passes): use the camera coordinates
        Ft = E
        x0 = torch.tensor(c0[None, :7], dtype=dtype)
        x1 = torch.tensor(c1[None, :7], dtype=dtype)
        Fs, ok = fundamental_7pt(x0, x1)
        assert ok[0].any()
        assert _closest(Fs[0].double().numpy(), ok[0].numpy(), Ft) < (2e-3 if dtype == torch.float32 else 1e-8)
        F8 = fundamental_fit(torch.tensor(c0[None], dtype=dtype), torch.tensor(c1[None], dtype=dtype))
        assert _closest(F8.double().numpy(), [True], Ft) < (2e-3 if dtype == torch.float32 else 1e-8)
        assert abs(np.linalg.det(F8[0].double().numpy())) < 1e-6
        assert F.shape == (3, 3)


def test_essential_5pt_exact_and_fit():
    for seed in range(6):
        _, c0, c1, E = _scene(seed, 30)
        Es, ok = essential_5pt(torch.tensor(c0[None, :5]), torch.tensor(c1[None, :5]))
        assert _closest(Es[0].numpy(), ok[0].numpy(), E) < 1e-5
        # every returned solution satisfies the essential constraints
        for Ei, oi in zip(Es[0].numpy(), ok[0].numpy()):
            if oi:
                s = np.linalg.svd(Ei, compute_uv=False)
                assert s[2] < 1e-3 * s[0] and abs(s[0] - s[1]) < 1e-3 * s[0]
        Ef = essential_fit(torch.tensor(c0[None]), torch.tensor(c1[None]))
        assert _closest(Ef.numpy(), [True], E) < 1e-8


def test_sampson_rows_match_direct_error():
    rng = np.random.default_rng(3)
    F = torch.tensor(rng.normal(size=(2, 3, 3, 3)))
    x0 = torch.tensor(rng.normal(size=(2, 50, 2)))
    x1 = torch.tensor(rng.normal(size=(2, 50, 2)))
    s0, s1 = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.tensor([1.5, 3.0], dtype=torch.float64)
    got = sampson_error_rows(F, homogeneous_rows(x0), homogeneous_rows(x1), s0, s1)
    assert torch.allclose(got, sampson_error(F, x0, x1, s0, s1), rtol=1e-10)


def test_transfer_error_matches_projection():
    rng = np.random.default_rng(5)
    H = rng.normal(size=(2, 3, 3, 3))
    H[..., 2, 2] += 5  # keep the points away from infinity
    x0, x1 = rng.normal(size=(2, 40, 2)), rng.normal(size=(2, 40, 2))
    y = np.einsum("gkab,gpb->gkpa", H, np.concatenate([x0, np.ones((2, 40, 1))], -1))
    want = ((x1[:, None] - y[..., :2] / y[..., 2:]) ** 2).sum(-1) / 4.0
    got = transfer_error(torch.tensor(H), torch.tensor(x0), torch.tensor(x1), None,
                         torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert np.allclose(got.numpy(), want, rtol=1e-10)
    # a point mapped to infinity has an infinite error
    Hinf = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    Hinf[0, 0, 0, 0] = Hinf[0, 0, 1, 1] = 1
    assert torch.isinf(transfer_error(Hinf, torch.tensor(x0[:1]), torch.tensor(x1[:1]))).all()


def test_smallest_eigenvector_inverse_iteration():
    rng = np.random.default_rng(6)
    A = torch.tensor(rng.normal(size=(8, 30, 9)))
    A[:, :, 0] *= 1e-3  # a clear smallest direction
    M = A.mT @ A
    ref = smallest_eigenvector(M)
    start = ref + 0.2 * torch.tensor(rng.normal(size=(8, 9)))  # a rough warm start
    got = smallest_eigenvector(M, start, steps=3)
    assert (got * ref).sum(1).abs().min() > 1 - 1e-10
    # a singular matrix (exact data) still works: the shift keeps the solve regular
    Ms = M.clone()
    Ms[:, :, 0] = 0
    Ms[:, 0, :] = 0
    got = smallest_eigenvector(Ms, torch.ones(8, 9, dtype=torch.float64))
    assert got[:, 0].abs().min() > 1 - 1e-8


def test_recover_pose_cheirality():
    p, c0, c1, E = _scene(11, 100)
    R4, t4 = decompose_essential(torch.tensor(E[None]))
    assert R4.shape == (1, 4, 3, 3)
    R, t, front = recover_pose(torch.tensor(E[None]), torch.tensor(c0[None]), torch.tensor(c1[None]),
                               torch.ones(1, 100, dtype=torch.bool))
    assert np.allclose(R[0].numpy(), p["R"], atol=1e-8)
    assert np.allclose(t[0].numpy(), p["t"], atol=1e-8)
    assert bool(front.all())


def test_refine_pose_recovers_perturbed_pose():
    """Gauss-Newton on the Sampson error pulls a pose several degrees off back to the truth,
    despite 40 % outliers (robust loss), for every problem of a batch."""
    from correspondence.synthetic import rotation_error_deg, translation_error_deg
    probs = [relative_pose_problem(np.random.default_rng(s), n=400, inlier_ratio=0.6, noise=0.3) for s in (1, 2)]
    Ki = np.linalg.inv(probs[0]["K"])
    c0 = torch.tensor(np.stack([(np.c_[p["kpts0"], np.ones(400)] @ Ki.T)[:, :2] for p in probs]))
    c1 = torch.tensor(np.stack([(np.c_[p["kpts1"], np.ones(400)] @ Ki.T)[:, :2] for p in probs]))
    R_gt = torch.tensor(np.stack([p["R"] for p in probs]))
    t_gt = torch.tensor(np.stack([p["t"] for p in probs]))
    from correspondence.epipolar import _so3_exp
    R0 = R_gt @ _so3_exp(torch.tensor([[0.03, -0.02, 0.02], [-0.02, 0.03, 0.01]], dtype=torch.float64))
    t0 = t_gt + torch.tensor([[0.08, -0.05, 0.03], [-0.06, 0.04, 0.07]], dtype=torch.float64)
    t0 = t0 / t0.norm(dim=1, keepdim=True)
    valid = torch.ones(2, 400, dtype=torch.bool)
    R, t = refine_pose(R0, t0, c0, c1, valid, torch.full((2,), 1.0 / 500, dtype=torch.float64), iters=30)
    for i in range(2):
        assert rotation_error_deg(R0[i].numpy(), probs[i]["R"]) > 1.5  # the start is off
        assert rotation_error_deg(R[i].numpy(), probs[i]["R"]) < 0.3
        assert translation_error_deg(t[i].numpy(), probs[i]["t"]) < 1.0
        assert abs(np.linalg.det(R[i].numpy()) - 1) < 1e-9 and abs(np.linalg.norm(t[i].numpy()) - 1) < 1e-9
    # converged within 10 steps (IRLS-weighted Gauss-Newton alone was still 0.02 / 0.6 deg away
    # from its limit after 10 steps of this start)
    R10, t10 = refine_pose(R0, t0, c0, c1, valid, torch.full((2,), 1.0 / 500, dtype=torch.float64), iters=10)
    for i in range(2):
        assert rotation_error_deg(R10[i].numpy(), R[i].numpy()) < 1e-3
        assert translation_error_deg(t10[i].numpy(), t[i].numpy()) < 1e-2


@pytest.mark.parametrize("m", [5, 300])
def test_batched_eig_split_over_threads_equals_one_call(m):
    """The thread-split eig (batches >= EIG_SPLIT_MIN on CPU) returns exactly what one
    torch.linalg.eig call returns, also with fewer threads than chunks would need."""
    from correspondence.epipolar import EIG_SPLIT_MIN, batched_eig

    a = torch.randn(m, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            vals, vecs = batched_eig(a)
            ref_vals, ref_vecs = torch.linalg.eig(a)
            assert torch.equal(vals, ref_vals) and torch.equal(vecs, ref_vecs)
            assert vals.shape == (m, 10) and vecs.shape == (m, 10, 10)
    finally:
        torch.set_num_threads(threads)
    assert 5 < EIG_SPLIT_MIN <= 300  # both paths are exercised
