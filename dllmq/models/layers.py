"""Building blocks shared by LLaDA and Dream: RMSNorm, rotary embeddings, attention.

Both official implementations compute RMSNorm in float32 and cast back; LLaDA rotates q/k
in float32 too, Dream (Qwen2) in the model dtype. We do the same, so bf16 outputs match each
official model's and fp32 outputs match to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), the statistic taken in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer positions (B, L) or (L,) -> (B or 1, 1, L, head_dim), float32."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    if positions.dim() == 1:
        positions = positions[None]
    freqs = positions.float()[..., None] * inv_freq  # (B, L, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, L, D)
    return emb.cos(), emb.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool = True
) -> torch.Tensor:
    """Rotate-half RoPE (the convention of both LLaDA and Qwen2/Dream).

    full_precision: rotate in float32 and cast back (LLaDA, `rope_full_precision`); otherwise
    cast cos/sin to x's dtype and rotate there (Dream/Qwen2), so bf16 matches each official model.
    """
    xr = x.float() if full_precision else x
    cos, sin = cos.to(xr.dtype), sin.to(xr.dtype)
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xr * cos + rotated * sin).to(x.dtype)


def key_padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) 1=token 0=pad -> additive (B, 1, 1, L) bias for SDPA, or None when nothing is padded.

    Every query row keeps at least its valid keys, so no row is fully masked (no NaNs at pads).
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask.bool()[:, None, None, :]
    bias = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return bias.masked_fill(~keep, torch.finfo(dtype).min)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """q (B, H, L, D), k/v (B, Hkv, L, D) -> (B, H, L, D); grouped-query heads shared.

    Without a mask, in 16-bit floats (the flash kernel's case on a GPU), SDPA's enable_gqa reads
    each key/value head for its H / Hkv query heads: the same values as expanding them with
    `repeat_interleave` (bit for bit on CPU and in flash on an H200: bench_kernels.py's notes),
    without Dream-7B's two (B, 28, L, 128) copies per block. Otherwise (a padding or causal mask,
    fp32) the heads are expanded as before: there SDPA's enable_gqa would leave the kernel that
    computed the committed results for another."""
    n_rep = q.shape[1] // k.shape[1]
    if causal:
        L = q.shape[2]
        causal_bias = torch.zeros(L, L, dtype=q.dtype, device=q.device)
        causal_bias.masked_fill_(
            torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), torch.finfo(q.dtype).min
        )
        bias = causal_bias if bias is None else bias + causal_bias
    gqa = n_rep > 1 and bias is None and q.dtype in (torch.float16, torch.bfloat16)
    if n_rep > 1 and not gqa:
        k = k.repeat_interleave(n_rep, dim=1)  # (B, H, L, D)
        v = v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)


class ActHook(nn.Module):
    """An identity on an activation the quantizers may need to transform (K or V after
    projection, the FFN's hidden state). Quantizers swap it for a quantizing module;
    keeping the slot in the model avoids setting ad-hoc attributes from outside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
