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
outputs are bit-identical. Two modes:
- "dequant" (default): unpack the layer's whole W_hat^T to 16 bits when it runs, then one BLAS
  GEMM. On a GPU the unpacking is one Triton kernel (triton_kernels.dequant4_t, bit-identical to
  `dequantized_weight_t`: the benchmark checks it with torch.equal on the 8B shapes), on CPU the
  torch expression. The 16-bit weight lives only for that layer's GEMM: one layer's worth of
  transient memory, never a resident copy.
- "inductor": the same torch expression as the CPU path, marked for torch.compile as one
  quantization op (`torch._higher_order_ops.InvokeQuant`, fp32 arithmetic kept), so that
  inductor under mode "max-autotune" may fuse it into the prologue of its Triton GEMM template
  (it benchmarks the fused and unfused choices and keeps the faster); eager, it is the CPU path.
  On an H200 it made the batch-1 step slower than "dequant" under CUDA graphs (22.9 against
  18.2 ms on LLaDA-8B, tables/bench_kernels_autotune.md).
- "triton": the fused dequantize-GEMM (triton_kernels.w4a16_matmul), which dequantizes each
  (BLOCK_K x BLOCK_N) tile in registers and accumulates in fp32 with `tl.dot`, a different
  accumulation order than cuBLAS; slower than "dequant" on an H200 (tables/bench_kernels.md).
`kperm_pack` / `kperm_dequant_t` serve a second fused kernel (triton_kernels.w4a16_kp_matmul),
measured in bench/bench_w4a16_kp.py and no faster; no mode runs it.

Memory: 4 bits per weight + an fp32 scale and a uint8 zero point per group of 128, i.e. 4.31
bits per weight (0.27x of bf16). Zero points are kept as uint8, not packed, for simplicity.

The two vocab-sized matrices (LM head and input embedding, 2 x 1 GiB of LLaDA-8B's 15 GiB in
bf16) can take the same format (`realize(model, "w4a16", head="int4")`): the head becomes a
W4A16Linear, the embedding an `Int4Embedding`, which gathers the packed rows of the tokens it
looks up and dequantizes only those (the same `dequantize`, so its rows equal the fake-quant
table's rows exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dllmq.quant.export import pack_int32, unpack_int32
from dllmq.quant.primitives import QuantSpec, dequantize, quantize_weight
from dllmq.quant.qlinear import QLinear

MODES = ("dequant", "triton", "inductor")
# the w4a16g128 recipes' weight spec (RTNConfig's default): what an int4 head and embedding get
# when the model carries no quantized head of its own
VOCAB_SPEC = QuantSpec(4, sym=False, granularity="group", group_size=128)


def unpack4_t(packed_t: torch.Tensor) -> torch.Tensor:
    """(K/8, N) int32 words -> (K, N) int32 codes, code k at bits 4 (k mod 8) of word k // 8:
    the same codes as `unpack_int32(packed_t.t(), 4, K).t()`, by elementwise shifts only (no
    gather, no int64), which torch.compile fuses into the dequantization."""
    shifts = torch.arange(0, 32, 4, device=packed_t.device, dtype=torch.int32)
    q = (packed_t.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF  # (K/8, 8, N)
    return q.reshape(-1, packed_t.shape[1])  # (K, N)


def _dequant_t(packed_t: torch.Tensor, scale_t: torch.Tensor, zero_t: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """W_hat^T (K, N) in dtype from packed_t (K/8, N), scale_t (G, N), zero_t (G, N): fp32
    (q - z) * s, then one rounding to dtype (`W4A16Linear.dequantized_weight_t`)."""
    G, N = scale_t.shape
    q = unpack4_t(packed_t).view(G, -1, N).float()  # (G, g, N)
    z = zero_t.view(G, 1, N).float()
    return ((q - z) * scale_t.view(G, 1, N)).reshape(-1, N).to(dtype)  # (K, N)


def _dequant_t_indexed(packed_t, scale_t, zero_t, dtype):
    """`_dequant_t`'s values computed elementwise over (K, N) by index arithmetic (word k // 8,
    shift 4 (k mod 8), group k // g), with no reshape: the output of a marked quantization op
    must be a buffer of its own, not a view, and inductor turns these gathers by arange
    expressions into plain indexing."""
    G, N = scale_t.shape
    K = packed_t.shape[0] * 8
    k = torch.arange(K, device=packed_t.device)
    q = (packed_t[k // 8] >> ((k % 8) * 4).to(torch.int32)[:, None]) & 0xF  # (K, N)
    g = k // (K // G)
    return ((q.float() - zero_t[g].float()) * scale_t[g]).to(dtype)


def kperm_pack(packed_t: torch.Tensor, block: int = 128) -> torch.Tensor:
    """The k-permuted packing of triton_kernels._w4a16_kp_kernel: (K/8, N) words in the layout
    above -> (K/8, N) words in which, within each block of `block` rows (BW = block / 8 words),
    word w holds at nibble r the code of the block's row r * BW + w. Nibbles r and r + 4 are 16
    bits apart, so one shift-and-mask of a word yields two codes as the halves of an int32."""
    KW, N = packed_t.shape
    K = KW * 8
    if block % 8 or K % block:
        raise ValueError(f"kperm_pack: {K} input features is not a multiple of the block {block}")
    codes = unpack4_t(packed_t).view(K // block, 8, block // 8, N)  # [b, r, w] = row b*block + r*BW + w
    perm = codes.transpose(1, 2).reshape(K, N)  # row 8 (b*BW + w) + r: word b*BW + w, nibble r
    return pack_int32(perm.t(), 4).t().contiguous()  # as W4A16Linear packs weight_packed_t


def kperm_dequant_t(packed_t: torch.Tensor, scale_t: torch.Tensor, zero_t: torch.Tensor,
                    dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """W_kp^T (K, N) in dtype (bf16 or fp16) from the (unpermuted) packed_t, scale_t, zero_t:
    dtype((q - z) * dtype(s)), the weight the k-permuted kernel multiplies by (its 16-bit
    arithmetic: (q - z) exact, times the scale rounded to dtype, one rounding). It differs from
    the fake-quant weight (fp32 scale) by the scale's rounding (bf16: at most 2^-9 relative)
    before the common final rounding."""
    return _dequant_t(packed_t, scale_t.to(dtype).float(), zero_t, dtype)


def _invoke_quant():
    """torch's marker for a quantization prologue (fp32 codegen kept); a clear error where this
    torch has none."""
    try:
        from torch._higher_order_ops._invoke_quant import InvokeQuant
    except ImportError as e:
        raise RuntimeError(f"w4a16 mode 'inductor' needs torch's InvokeQuant (torch >= 2.7; this "
                           f"is {torch.__version__}); use mode 'dequant'") from e
    return InvokeQuant(codegen_low_precision=False)


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

    def dequantized_weight_t(self, dtype: torch.dtype) -> torch.Tensor:
        """W_hat^T (K, N) in dtype, the values of `dequantized_weight` (the same fp32 (q - z) * s,
        then the cast) in the kernel layout: what the "dequant" mode multiplies by."""
        return _dequant_t(self.weight_packed_t, self.weight_scale_t, self.weight_zero_t, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.mode == "triton" and not x.is_cuda:
            raise RuntimeError("w4a16 mode 'triton' needs a CUDA tensor; use mode 'dequant' on CPU")
        if self.mode == "inductor" or (self.mode == "dequant" and not x.is_cuda):
            w_t = _invoke_quant()(_dequant_t_indexed, self.weight_packed_t, self.weight_scale_t,
                                  self.weight_zero_t, x.dtype) if self.mode == "inductor" \
                else self.dequantized_weight_t(x.dtype)
            return F.linear(x, w_t.t(), self.bias)
        from . import triton_kernels  # needs triton, which CUDA builds of torch ship with

        if self.mode == "dequant":  # the same values, unpacked by one memory-bound Triton kernel
            w_t = triton_kernels.dequant4_t(self.weight_packed_t, self.weight_scale_t,
                                            self.weight_zero_t, self.group_size, x.dtype)
            return F.linear(x, w_t.t(), self.bias)

        lead = x.shape[:-1]
        y = triton_kernels.w4a16_matmul(x.reshape(-1, self.in_features), self.weight_packed_t,
                                        self.weight_scale_t, self.weight_zero_t, self.group_size)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, w4a16 packed int4 "
                f"{self.spec.describe()}, mode={self.mode}")


def int4_qlinear(weight: torch.Tensor, name: str, spec: QuantSpec = VOCAB_SPEC) -> QLinear:
    """RTN of a float (out, in) matrix under `spec` as a weight-only QLinear (the fake-quant twin
    of what W4A16Linear / Int4Embedding run)."""
    q = QLinear(weight.detach(), None)
    try:
        q.set_weight(quantize_weight(weight.detach(), spec.for_features(weight.shape[1])), "rtn")
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return q


class Int4Embedding(nn.Module):
    """An embedding table in packed int4 (rows = tokens, groups along the hidden dim), looked up
    by gathering the packed rows of the requested tokens and dequantizing those rows only:

        E_hat[t, c] = (q[t, c] - z[t, c // g]) * s[t, c // g]

    Buffers in the export's row layout: weight_packed (V, C/8) int32, weight_scale (V, G) fp32,
    weight_zero (V, G) uint8. `weight` (the whole dequantized table) serves a head tied to it."""

    def __init__(self, q: QLinear, name: str = "embedding"):
        super().__init__()
        check_w4a16(q, name)
        self.num_embeddings, self.embedding_dim = q.out_features, q.in_features
        self.spec: QuantSpec = q.weight_spec.for_features(q.in_features)
        if self.spec.granularity == "tensor":
            raise ValueError(f"{name}: per-tensor 4-bit weights are not supported; use group or channel")
        self.register_buffer("weight_packed", pack_int32(q.codes, 4))  # (V, C/8)
        self.register_buffer("weight_scale", q.scale.float().contiguous())  # (V, G)
        self.register_buffer("weight_zero", q.zero.to(torch.uint8).contiguous())  # (V, G)
        self.out_dtype = q.weight.dtype

    @property
    def weight(self) -> torch.Tensor:
        """E_hat (V, C) in the table's dtype (a tied LM head multiplies by it)."""
        codes = unpack_int32(self.weight_packed, 4, self.embedding_dim)
        return dequantize(codes, self.weight_scale, self.weight_zero.float(), self.spec, self.out_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)  # (T,)
        codes = unpack_int32(self.weight_packed[flat], 4, self.embedding_dim)  # (T, C)
        rows = dequantize(codes, self.weight_scale[flat], self.weight_zero[flat].float(), self.spec,
                          self.out_dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}, packed int4 {self.spec.describe()}"
