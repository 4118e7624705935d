"""Hadamard constructions and fast transforms (dllmq/quant/hadamard.py)."""

import pytest
import torch
from dllmq.quant.hadamard import (
    HadamardError,
    factor_order,
    fwht,
    hadamard_matrix,
    hadamard_transform,
    random_hadamard_matrix,
)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 28, 36, 44, 148, 24, 56, 296, 448, 1024])
def test_hadamard_matrix_is_hadamard(n):
    H = hadamard_matrix(n)
    assert set(H.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n,base", [(12288, 12), (18944, 148), (3584, 28), (4096, 1), (128, 1)])
def test_model_sizes_factor_as_expected(n, base):
    m, p = factor_order(n)
    assert (m, m * p) == (base, n)


def test_fwht_equals_sylvester_matmul():
    x = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ hadamard_matrix(64).T, atol=1e-12)


@pytest.mark.parametrize("n", [12, 28, 40, 148 * 2, 3584])
def test_transform_equals_dense_matrix(n):
    x = torch.randn(3, 2, n, dtype=torch.float64)
    H = hadamard_matrix(n) / n**0.5
    assert torch.allclose(hadamard_transform(x), x @ H.T, atol=1e-12)
    assert torch.allclose(hadamard_transform(x, transpose=True), x @ H, atol=1e-12)


@pytest.mark.parametrize("n", [12288, 18944])
def test_large_ffn_widths_are_orthogonal_transforms(n):
    """Transform only (no dense n x n): norms kept, inverse recovers the input, and the
    transform of a unit vector is a flat +-1/sqrt(n) vector (what spreads an outlier)."""
    x = torch.randn(4, n, dtype=torch.float64)
    y = hadamard_transform(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)
    assert torch.allclose(hadamard_transform(y, transpose=True), x, atol=1e-12)
    e = torch.zeros(1, n, dtype=torch.float64)
    e[0, 17] = 1.0
    assert torch.allclose(hadamard_transform(e).abs(), torch.full((1, n), n**-0.5, dtype=torch.float64))


def test_random_hadamard_is_orthogonal_and_seeded():
    Q1 = random_hadamard_matrix(28, torch.Generator().manual_seed(3))
    Q2 = random_hadamard_matrix(28, torch.Generator().manual_seed(3))
    Q3 = random_hadamard_matrix(28, torch.Generator().manual_seed(4))
    assert torch.equal(Q1, Q2)
    assert not torch.equal(Q1, Q3)
    assert torch.allclose(Q1 @ Q1.T, torch.eye(28, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Q1.abs(), torch.full((28, 28), 28**-0.5, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 6, 52, 92])
def test_unconstructible_orders_raise(n):
    with pytest.raises(HadamardError, match="no Hadamard matrix of order"):
        factor_order(n)
