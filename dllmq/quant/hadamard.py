"""Walsh-Hadamard matrices and fast transforms for the sizes LLaDA and Dream need.

A Hadamard matrix H of order n has entries +-1 and H H^T = n I, so H / sqrt(n) is orthogonal.
Rotating a vector by it spreads every coordinate over all others, which is what QuaRot
(Ashkboos et al. 2024, spcl/QuaRot `hadamard_utils.py`) uses to remove activation outliers.

Orders handled: n = m * 2^k with a base order m built here:
- m = 1 (Sylvester: H_{2n} = [[H, H], [H, -H]]);
- m = q + 1 for a prime q = 3 mod 4 (Paley I), e.g. 12 (q=11), 20 (q=19), 44, 60, 108 ...;
- m = 2 (q + 1) for a prime q = 1 mod 4 (Paley II), e.g. 28 (q=13), 36 (q=17), 148 (q=73).
H_n = H_m (x) H_{2^k} (Kronecker product), so a transform reshapes (..., n) -> (..., m, 2^k),
runs the fast butterfly on the power-of-two axis and a small m x m matmul on the other.
LLaDA-8B: hidden 4096 = 2^12, FFN 12288 = 12 * 2^10, head 128. Dream-7B: hidden 3584 = 28 * 2^7,
FFN 18944 = 148 * 2^7, 28 heads = 28 * 2^0, head 128.

Where we differ from upstream: QuaRot/QuIP# ship the base matrices as hard-coded tables
(`get_had12`, `get_had172`, ...); here they are constructed, and tests check H H^T = n I.
"""

from __future__ import annotations

import functools
import math

import torch


class HadamardError(ValueError):
    """No Hadamard matrix of the requested order can be constructed here."""


# ---- constructions (exact, integer entries, float64) --------------------------------------
def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) with chi the quadratic character mod the prime q (q x q)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)],
                       dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 mod 4: H = I + [[0, 1^T], [-1, Q]] (Q antisymmetric)."""
    n = q + 1
    S = torch.zeros(n, n, dtype=torch.float64)
    S[0, 1:] = 1.0
    S[1:, 0] = -1.0
    S[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + S


def _paley2(q: int) -> torch.Tensor:
    """Order 2 (q + 1) for a prime q = 1 mod 4, from the symmetric conference matrix
    C = [[0, 1^T], [1, Q]]: H = C (x) [[1, -1], [-1, -1]] + I (x) [[1, 1], [1, -1]]."""
    n = q + 1
    C = torch.zeros(n, n, dtype=torch.float64)
    C[0, 1:] = 1.0
    C[1:, 0] = 1.0
    C[1:, 1:] = _jacobsthal(q)
    A = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(C, A) + torch.kron(torch.eye(n, dtype=torch.float64), B)


def _sylvester(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _base_construction(m: int) -> str | None:
    """Name of the construction giving order m (m not divisible by 4 only for m in {1, 2})."""
    if m in (1, 2):
        return "sylvester"
    if m % 4:
        return None
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return "paley1"
    if _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return "paley2"
    return None


def factor_order(n: int) -> tuple[int, int]:
    """n -> (m, p) with n = m * p, p the largest power of two for which order m is constructible."""
    if n < 1:
        raise HadamardError(f"Hadamard order must be positive, got {n}")
    p = n & -n  # largest power of two dividing n
    while p >= 1:
        m = n // p
        if _base_construction(m) is not None:
            return (1, n) if m in (1, 2) else (m, p)
        p //= 2
    raise HadamardError(
        f"no Hadamard matrix of order {n} is constructed here: n must be m * 2^k with m = q + 1 "
        "(prime q = 3 mod 4) or m = 2 (q + 1) (prime q = 1 mod 4); pad the dimension or pick "
        "another rotation"
    )


@functools.lru_cache(maxsize=32)
def _base_matrix(m: int) -> torch.Tensor:
    kind = _base_construction(m)
    if kind == "sylvester":
        return _sylvester(m)
    if kind == "paley1":
        return _paley1(m - 1)
    if kind == "paley2":
        return _paley2(m // 2 - 1)
    raise HadamardError(f"no base Hadamard construction for order {m}")


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The +-1 Hadamard matrix H_n = H_m (x) H_{2^k} (n x n); H H^T = n I. Dense: use
    `hadamard_transform` for large n."""
    m, p = factor_order(n)
    H = torch.kron(_base_matrix(m), _sylvester(p)) if m > 1 else _sylvester(p)
    return H.to(dtype=dtype, device=device)


# ---- fast application ------------------------------------------------------------------------
_DENSE_MAX = 128  # powers of two up to this size are one matmul; larger ones are Kronecker products


@functools.lru_cache(maxsize=64)
def _dense(kind: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cached +-1 matrices on the device (no host-to-device copy per call)."""
    H = _sylvester(n) if kind == "sylvester" else _base_matrix(n)
    return H.to(dtype=dtype, device=device)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform on the last axis (a power of two p): x -> x H_p
    (H_p Sylvester, symmetric). H_{ab} = H_a (x) H_b, so (..., p) is viewed as (..., a, b) with
    b <= 128 and transformed by one dense matmul per factor: O(p (a + b)) per row, two or three
    large matmuls instead of log2(p) memory-bound butterfly passes."""
    p = x.shape[-1]
    if p & (p - 1):
        raise HadamardError(f"fwht needs a power-of-two length, got {p}")
    if p <= _DENSE_MAX:
        return x @ _dense("sylvester", p, x.dtype, x.device)
    lead = x.shape[:-1]
    b = _DENSE_MAX
    y = fwht(x.reshape(*lead, p // b, b))  # inner factor H_b on the last axis
    y = fwht(y.transpose(-1, -2)).transpose(-1, -2)  # outer factor H_{p/b} across chunks
    return y.reshape(*lead, p)


def hadamard_transform(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """x (..., n) -> (H_n / sqrt(n)) x on every vector of the last axis, i.e. x @ H_n^T / sqrt(n)
    (orthogonal). `transpose=True` applies H_n^T / sqrt(n), the inverse. Computed in x's dtype;
    pass float32/float64 for exactness."""
    n = x.shape[-1]
    m, p = factor_order(n)
    lead = x.shape[:-1]
    y = fwht(x.reshape(*lead, m, p))  # (..., m, p) @ H_p^T
    if m > 1:
        Hm = _dense("base", m, x.dtype, x.device)
        if transpose:
            Hm = Hm.T
        y = torch.einsum("ij,...jp->...ip", Hm, y)  # H_m @ (..., m, p)
    return y.reshape(*lead, n) / math.sqrt(n)


def random_signs(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """n random +-1 entries drawn from `generator` (on CPU, so seeds repeat across devices)."""
    bits = torch.randint(0, 2, (n,), generator=generator)
    return (bits * 2 - 1).to(dtype=dtype, device=device)


def random_hadamard_matrix(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Q = diag(s) H_n^T / sqrt(n) with random signs s (orthogonal, n x n), as QuaRot's
    `random_hadamard_matrix` (QuIP#'s randomized Hadamard): x @ Q = H (s * x) / sqrt(n)."""
    s = random_signs(n, generator)
    Q = hadamard_transform(torch.diag(s))  # row i = H (s_i e_i) / sqrt(n)
    return Q.to(dtype=dtype, device=device)
