"""Descriptor matching against brute-force references."""
import numpy as np
import pytest
import torch

from correspondence import match_descriptors, match_descriptors_batch, matches_from_batch


def _brute_mnn(a, b):
    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    nn01, nn10 = d.argmin(1), d.argmin(0)
    return np.array([(i, j) for i, j in enumerate(nn01) if nn10[j] == i])


def _data(n0=300, n1=250, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n0, dim)).astype(np.float32)
    b = rng.normal(size=(n1, dim)).astype(np.float32)
    k = min(150, n0 - 50, n1)
    b[:k] = a[50:50 + k] + 0.05 * rng.normal(size=(k, dim))  # k true pairs (50+i, i)
    return a, b


def test_mnn_equals_brute_force_and_chunking_is_invisible():
    a, b = _data()
    m, s = match_descriptors(a, b)
    np.testing.assert_array_equal(m, _brute_mnn(a, b))
    m2, s2 = match_descriptors(a, b, chunk_size=7)
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_allclose(s, s2, atol=1e-6)
    true = {(50 + i, i) for i in range(150)}
    assert true <= {tuple(x) for x in m}
    assert isinstance(m, np.ndarray) and m.dtype == np.int64


def test_ratio_test_removes_ambiguous_matches():
    a, b = _data()
    b[200] = b[0] + 1e-3  # a near-duplicate makes the match of a[50] ambiguous
    m, _ = match_descriptors(a, b, method="mnn_ratio", ratio=0.8)
    assert 50 not in m[:, 0]
    m_nn, _ = match_descriptors(a, b, method="nn")
    assert len(m_nn) == len(a)
    m_r, _ = match_descriptors(a, b, method="ratio", ratio=0.8)
    assert set(map(tuple, m_r)) <= set(map(tuple, m_nn))


def test_torch_input_and_bad_input():
    a, b = _data()
    m, s = match_descriptors(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(m, torch.Tensor)
    e, es = match_descriptors(a[:0], b)
    assert e.shape == (0, 2) and es.shape == (0,)
    with pytest.raises(ValueError, match="dimensions differ"):
        match_descriptors(a, b[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        a2 = a.copy(); a2[3, 3] = np.nan
        match_descriptors(a2, b)
    with pytest.raises(ValueError, match="ratio"):
        match_descriptors(a, b, method="ratio")
    with pytest.raises(ValueError, match="unknown"):
        match_descriptors(a, b, method="magic")


def test_batched_padded_matching_equals_per_pair():
    pairs = [_data(300, 250, seed=1), _data(120, 200, seed=2)]
    n0, n1 = 300, 250
    d0 = torch.zeros(2, n0, 32); d1 = torch.zeros(2, n1, 32)
    m0 = torch.zeros(2, n0, dtype=torch.bool); m1 = torch.zeros(2, n1, dtype=torch.bool)
    for i, (a, b) in enumerate(pairs):
        d0[i, :len(a)] = torch.from_numpy(a); m0[i, :len(a)] = True
        nb = min(len(b), n1)
        d1[i, :nb] = torch.from_numpy(b[:nb]); m1[i, :nb] = True
    matches0, scores0 = match_descriptors_batch(d0, d1, m0, m1)
    for i, (a, b) in enumerate(pairs):
        ref, _ = match_descriptors(a, b[:n1])
        got = matches_from_batch(matches0)[i].numpy()
        np.testing.assert_array_equal(got, ref)
    assert (matches0[1, 120:] == -1).all()
