"""W8A8 int8 through `torch._int_mm`: the integer arithmetic the paper's SmoothQuant/RTN W8A8
recipes imply (per-channel weights, dynamic per-token activations, either symmetric or not).

With unsigned codes and zero points (dllmq's convention, primitives.py), one output is

    y[m, n] = s_x[m] s_w[n] sum_k (qx[m, k] - zx[m]) (qw[n, k] - zw[n]).

`_int_mm` multiplies signed int8, so both sides are shifted by 128: a = qx - 128, b = qw - 128,
cx = 128 - zx, cw = 128 - zw (whole numbers), and

    sum_k (a + cx)(b + cw) = (a @ b^T) + cw sum_k a + cx (sum_k b + K cw).

The total is an integer of magnitude <= K * 255^2 (< 2^31 for K <= 33025, every linear of
LLaDA-8B and Dream-7B), so it is computed in int32: the partial products may wrap, but
arithmetic modulo 2^32 returns the exact total when it fits. A symmetric spec (z = 128) needs
no correction. The only rounding is the final fp32 scaling, so this matches the fake-quant
QLinear (which rounds every fp32 product and sum of x_hat @ W_hat^T) to within its own
accumulation error; tests/test_kernels.py states the bound.

Activation codes come from dllmq.quant.primitives (quant_params/quantize), the functions the
fake-quant path uses, so real and fake agree on every code for the same input. On a GPU this
quantization is several kernels in eager mode and fused under torch.compile (`compile_blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

from dllmq.quant.primitives import QuantSpec, quant_params, quantize
from dllmq.quant.qlinear import QLinear

INT32_SAFE_K = 33025  # K * 255^2 < 2^31


def check_int8(q: QLinear, name: str) -> None:
    """One line naming why a QLinear cannot run as W8A8 int8, or nothing."""
    w, a = q.weight_spec, q.act_spec
    if w is None or a is None:
        raise ValueError(f"{name}: int8 needs 8-bit weights and activations, found w={w and w.describe()} "
                         f"a={a and a.describe()}; quantize with a W8A8 recipe (e.g. w8a8-smoothquant)")
    if w.bits != 8 or a.bits != 8:
        raise ValueError(f"{name}: int8 needs 8-bit weights and activations, found "
                         f"w={w.describe()} a={a.describe()}; use backend 'w4a16' for 4-bit weights")
    if q.scale.shape[-1] != 1 or q.g_idx is not None:
        raise ValueError(f"{name}: int8 needs one weight scale per output channel, found "
                         f"{q.scale.shape[-1]} groups; use a per-channel weight spec")
    if a.granularity != "token":
        raise ValueError(f"{name}: int8 needs per-token activation scales, found {a.describe()}")
    if q.in_features > INT32_SAFE_K:
        raise ValueError(f"{name}: {q.in_features} input features could overflow int32 accumulation "
                         f"(limit {INT32_SAFE_K})")


class Int8Linear(nn.Module):
    def __init__(self, q: QLinear, name: str = "linear"):
        super().__init__()
        check_int8(q, name)
        self.in_features, self.out_features = q.in_features, q.out_features
        self.act_spec: QuantSpec = q.act_spec
        self.input_transform = q.input_transform
        b = (q.codes.to(torch.int16) - 128).to(torch.int8)  # (N, K)
        cw = (128 - q.zero.reshape(-1)).round().to(torch.int32)  # (N,)
        self.register_buffer("weight_int8", b.contiguous())
        self.register_buffer("weight_scale", q.scale.reshape(1, -1).float())  # (1, N)
        self.register_buffer("cw", cw.reshape(1, -1))
        self.register_buffer("bw", (b.to(torch.int32).sum(1) + self.in_features * cw).reshape(1, -1))
        self.weight_sym = bool((cw == 0).all())
        self.bias = None if q.bias is None else nn.Parameter(q.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        sx, zx = quant_params(x2, self.act_spec)  # (M, 1) each, float32
        a = (quantize(x2, sx, zx, self.act_spec).to(torch.int16) - 128).to(torch.int8)  # (M, K)
        total = torch._int_mm(a, self.weight_int8.t())  # (M, N) int32
        if not self.weight_sym:
            total = total + a.to(torch.int32).sum(1, keepdim=True) * self.cw
        if not self.act_spec.sym:
            total = total + (128 - zx).to(torch.int32) * self.bw
        y = (total.float() * (sx * self.weight_scale)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, w8a8 int8 (a={self.act_spec.describe()})"
