"""The online transform modules: what a QLinear applies to its input (`input_transform`) and
what stands in attention's q/k/v ActHook slots, each the activation-side half of an orthogonal
change of basis whose weight-side half a method folded into the weights.

- `OnlineHadamard` (QuaRot's FFN-down rotation), `HeadMixHadamard` (QuaRot's V/O head mix);
- `DuQuantTransform` (DuQuant's block rotations and zigzag permutations);
- `HeadActQuant` (q/k/v quantizers: QuaRot's K/V, SmoothQuant's and DuQuant's attention
  matmul inputs), optionally after a head-dim Hadamard.
They live below the methods so that a method (SmoothQuant) can use one without importing
another (QuaRot), and so that export can rebuild them knowing no method.
"""

from __future__ import annotations

import torch
from torch import nn

from .hadamard import factor_order, hadamard_transform
from .primitives import QuantSpec, fake_quant


def head_mix_hadamard(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., H*D): H_H / sqrt(H) applied across heads at every in-head index: (H_H (x) I_D) x."""
    shape = x.shape
    y = x.reshape(*shape[:-1], num_heads, -1).transpose(-1, -2)  # (..., D, H)
    return hadamard_transform(y).transpose(-1, -2).reshape(shape)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class OnlineHadamard(nn.Module):
    """x (..., n) -> H_n x / sqrt(n), computed in at least float32 (QuaRot's fp32_had)."""

    def __init__(self, n: int):
        super().__init__()
        factor_order(n)  # fail now, with the one-line error, if n has no construction
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(_wide(x)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class HeadMixHadamard(nn.Module):
    """The o projection's online half of the V/O rotation: (H_H (x) I_D) x / sqrt(H)."""

    def __init__(self, num_heads: int):
        super().__init__()
        factor_order(num_heads)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_mix_hadamard(_wide(x), self.num_heads).to(x.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}"


class HeadActQuant(nn.Module):
    """Replaces an ActHook on q/k/v (B, Hx, L, D): optionally rotate the head dimension by
    H_D / sqrt(D), then optionally fake-quantize per token, over all heads of the token
    (QuaRot's `QKRotationWrapper` with k_groupsize -1, and v_proj's out_quantizer) or, with
    per_head, over each head's D values (DuQuant/SmoothQuant code's `QuantMatMul` inputs)."""

    def __init__(self, hadamard: bool, spec: QuantSpec | None, per_head: bool = False):
        super().__init__()
        self.hadamard, self.spec, self.per_head = hadamard, spec, per_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hadamard:
            x = hadamard_transform(_wide(x)).to(x.dtype)
        if self.spec is None:
            return x
        if self.per_head:
            return fake_quant(x, self.spec)  # groups: the last dim D of every (b, head, token)
        B, Hx, L, D = x.shape
        tok = x.transpose(1, 2).reshape(B, L, Hx * D)  # (B, L, Hx*D)
        return fake_quant(tok, self.spec).reshape(B, L, Hx, D).transpose(1, 2)

    def extra_repr(self) -> str:
        spec = self.spec.describe() if self.spec else "fp"
        return f"hadamard={self.hadamard}, spec={spec}, per_head={self.per_head}"


def apply_block_rotation(x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """x (..., nb*b) -> every block of b channels times its own R (nb, b, b)."""
    nb, b, _ = R.shape
    lead = x.shape[:-1]
    y = torch.einsum("...nb,nbc->...nc", x.reshape(*lead, nb, b), R.to(x.dtype))
    return y.reshape(*lead, nb * b)


class DuQuantTransform(nn.Module):
    """x -> x R_1 P_1 R_2 ... P_k R_{k+1}: block rotations `rots` (k+1, nb, b, b) interleaved
    with permutations `perms` (k, C); orthogonal, so W <- forward(W) keeps x W^T."""

    def __init__(self, rots: torch.Tensor, perms: torch.Tensor):
        super().__init__()
        self.register_buffer("rots", rots)
        self.register_buffer("perms", perms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x.to(torch.promote_types(dtype, torch.float32))
        for i in range(self.perms.shape[0]):
            y = apply_block_rotation(y, self.rots[i])[..., self.perms[i]]
        return apply_block_rotation(y, self.rots[-1]).to(dtype)

    def extra_repr(self) -> str:
        k, nb, b, _ = self.rots.shape
        return f"blocks={nb}x{b}, rotations={k}"
