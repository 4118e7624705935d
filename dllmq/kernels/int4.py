"""W4A16: 4-bit weights packed eight to an int32, group-wise scales and zero points, 16-bit
activations. The layout is the compressed-tensors "pack-quantized" one that
`dllmq.quant.export.save_quantized` writes (`weight_packed` (N, K/8) int32, code k of a row at
bits 4 (k mod 8) of word k // 8, stored value = unsigned code), kept transposed (K/8, N) for
the kernel's coalesced loads; a model loaded with `load_quantized` and an in-memory quantized
model realize to the same buffers.

    W_hat[n, k] = (q[n, k] - z[n, g]) * s[n, g],   g = k // group_size   (fp32, cast to x's dtype)
    y = x @ W_hat^T + b

The dequantization is the one `dllmq.quant.primitives.dequantize` computes (the fake-quant
QLinear's weight), so the real path multiplies by exactly the fake-quant weight: on CPU the
outputs are bit-identical; on a GPU the fused Triton kernel (triton_kernels.w4a16_matmul)
dequantizes each (BLOCK_K x BLOCK_N) tile in registers, then accumulates in fp32 with
`tl.dot`, a different accumulation order than cuBLAS.

Memory: 4 bits per weight + an fp32 scale and a uint8 zero point per group of 128, i.e. 4.31
bits per weight (0.27x of bf16). Zero points are kept as uint8, not packed, for simplicity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dllmq.quant.export import pack_int32, unpack_int32
from dllmq.quant.primitives import QuantSpec, dequantize
from dllmq.quant.qlinear import QLinear

MODES = ("dequant", "triton")


def check_w4a16(q: QLinear, name: str) -> None:
    w = q.weight_spec
    if w is None or w.bits != 4:
        raise ValueError(f"{name}: w4a16 needs 4-bit weights, found {w.describe() if w else 'fp'}; "
                         "quantize with a W4 recipe (e.g. w4a16g128-gptq)")
    if q.act_spec is not None:
        raise ValueError(f"{name}: w4a16 keeps activations in 16 bits but this linear quantizes them "
                         f"({q.act_spec.describe()}); use a weight-only recipe")
    if q.g_idx is not None:
        raise ValueError(f"{name}: act-order groups (g_idx) are not supported by the w4a16 kernel; "
                         "quantize with act_order=False or static_groups=True")
    if q.in_features % 8:
        raise ValueError(f"{name}: {q.in_features} input features is not a multiple of 8 (packing)")


class W4A16Linear(nn.Module):
    def __init__(self, q: QLinear, name: str = "linear", mode: str = "dequant"):
        super().__init__()
        check_w4a16(q, name)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} unknown; use one of {MODES}")
        self.in_features, self.out_features = q.in_features, q.out_features
        self.spec: QuantSpec = q.weight_spec.for_features(q.in_features)
        self.group_size = self.spec.group_len(q.in_features) if self.spec.granularity != "tensor" \
            else q.in_features
        if self.spec.granularity == "tensor":
            raise ValueError(f"{name}: per-tensor 4-bit weights are not supported; use group or channel")
        self.mode = mode
        self.input_transform = q.input_transform
        # kept transposed, the layout the Triton kernel reads coalesced (triton_kernels.py)
        self.register_buffer("weight_packed_t", pack_int32(q.codes, 4).t().contiguous())  # (K/8, N)
        self.register_buffer("weight_scale_t", q.scale.float().t().contiguous())  # (G, N)
        self.register_buffer("weight_zero_t", q.zero.to(torch.uint8).t().contiguous())  # (G, N)
        self.out_dtype = q.weight.dtype
        self.bias = None if q.bias is None else nn.Parameter(q.bias.detach().clone(), requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W_hat (N, K) in dtype: the fake-quant weight, rebuilt from the packed codes."""
        codes = unpack_int32(self.weight_packed_t.t(), 4, self.in_features)  # (N, K)
        return dequantize(codes, self.weight_scale_t.t(), self.weight_zero_t.t().float(), self.spec,
                          dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.mode == "triton" and not x.is_cuda:
            raise RuntimeError("w4a16 mode 'triton' needs a CUDA tensor; use mode 'dequant' on CPU")
        if self.mode == "dequant":
            return F.linear(x, self.dequantized_weight(x.dtype), self.bias)
        from . import triton_kernels  # needs triton, which CUDA builds of torch ship with

        lead = x.shape[:-1]
        y = triton_kernels.w4a16_matmul(x.reshape(-1, self.in_features), self.weight_packed_t,
                                        self.weight_scale_t, self.weight_zero_t, self.group_size)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, w4a16 packed int4 "
                f"{self.spec.describe()}, mode={self.mode}")
