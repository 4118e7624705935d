"""W8A8 fp8 (e4m3): per-output-channel weight scales, dynamic per-token activation scales,
one `torch._scaled_mm` per linear.

    s_w[n] = max_k |W[n, k]| / 448          W_q = e4m3(W / s_w)          (once, at realize)
    s_x[m] = max_k |x[m, k]| / 448          x_q = e4m3(x / s_x)          (every call, fused)
    y = (x_q @ W_q^T) * s_x * s_w^T + b     (fp32 accumulation inside _scaled_mm)

448 is e4m3's largest finite value (torch.float8_e4m3fn, OCP FP8 "E4M3FN"), so each row's
largest entry maps to +-448 and no value saturates; rounding is round-to-nearest-even (torch's
cast, and Triton's `cvt.rn.satfinite` on Hopper). An all-zero row gets the scale 1e-12 / 448
(it quantizes to zeros either way), so no scale is ever 0.

The activation quantization is one kernel: the Triton kernel in `triton_kernels.py` in eager
mode on a GPU (one program per token: max pass, then divide-and-cast pass), or the torch
expression below, which inductor fuses into one kernel inside `torch.compile` (and which is the
CPU path). Three separate eager kernels (amax, divide, cast) cost more than fp8 saves (issue 12).

`FakeFp8Linear` is the fake-quant twin: the same scales and the same e4m3 rounding, dequantized
to float and multiplied by `F.linear`. The real and the twin differ only in how the fp32 dot
products are accumulated and where the two scales are applied (tests/test_kernels.py).

Following torchao's `Float8Linear` / fbgemm's row-wise fp8 recipe (`float8_dynamic_activation_
float8_weight(granularity=PerRow())`), written here against torch's `_scaled_mm` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
_TINY = 1e-12


def fp8_rowwise_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (e4m3 codes (M, K), fp32 scales (M, 1)), in torch ops (fusable by inductor)."""
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / E4M3_MAX  # (M, 1)
    q = (x32 / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def quantize_fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantization in one kernel: Triton in eager mode on CUDA, else the torch
    expression (inductor fuses it under torch.compile; CPU runs it as is)."""
    if x.is_cuda and not torch.compiler.is_compiling():
        from . import triton_kernels  # needs triton, which CUDA builds of torch ship with

        return triton_kernels.fp8_rowwise(x)
    return fp8_rowwise_reference(x)


def _weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = fp8_rowwise_reference(w)  # (N, K), (N, 1)
    return q, s.reshape(1, -1)  # scale_b of _scaled_mm is (1, N)


class Fp8Linear(nn.Module):
    """y = _scaled_mm(e4m3(t(x)), W_q^T) scaled, + bias; t the optional online input transform."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 input_transform: nn.Module | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, s = _weight_fp8(weight.detach())
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", s)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_transform = input_transform
        self.out_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        lead = x.shape[:-1]
        xq, sx = quantize_fp8_rowwise(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale,
                             out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        t = f", transform={type(self.input_transform).__name__}" if self.input_transform else ""
        return f"{self.in_features} -> {self.out_features}, w8a8 fp8 e4m3 row-wise{t}"


class FakeFp8Linear(nn.Module):
    """The fake-quant twin of Fp8Linear: the same e4m3 codes and scales, dequantized to float
    (x_hat = x_q * s_x, W_hat = W_q * s_w, in fp32, cast to x's dtype) and `F.linear`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 input_transform: nn.Module | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, s = fp8_rowwise_reference(weight.detach())
        self.weight = nn.Parameter((q.float() * s).to(weight.dtype), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_transform = input_transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        q, s = fp8_rowwise_reference(x.reshape(-1, self.in_features))
        x_hat = (q.float() * s).to(x.dtype).reshape(x.shape)
        return F.linear(x_hat, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, fake-quant fp8 e4m3 row-wise"
