"""The Triton kernels of the real paths (GPU only; imported when a CUDA tensor reaches them).

- `fp8_rowwise(x)`: per-row e4m3 quantization of activations in one kernel (one program per
  row: a max pass, then a divide-and-cast pass over the row, which is in L1/L2 by then), the
  same arithmetic as `fp8.fp8_rowwise_reference`.
- `dequant4_t(packed_t, scale_t, zero_t, group_size, dtype)`: the w4a16 "dequant" mode's unpack,
  W_hat^T (K, N) from the packed codes in one memory-bound kernel (each program expands a tile
  of words into its 8 output rows), bit-identical to `int4.W4A16Linear.dequantized_weight_t`
  ((q - z) exactly in fp32 by the bit trick below, times s, one rounding to dtype).
- `w4a16_matmul(x, packed_t, scale_t, zero_t, group_size)`: the fused dequantize-GEMM,
  y = x @ W_hat^T with W_hat dequantized tile by tile from the packed int4 codes, stored
  transposed (K/8, N) so that a warp's loads along n are coalesced (the export's (N, K/8) layout
  put neighbouring n 6 KiB apart and ran 20x slower than bf16 on an H200). Each tile of codes
  is read from the packed int32 words (word k // 8, shift 4 (k mod 8): eight threads read one
  word, served by L1), dequantized as (q - z) * s in fp32 and cast to x's dtype, exactly as
  `primitives.dequantize`, then multiplied with `tl.dot` (fp32 accumulation). BLOCK_K divides
  the group size, so one scale/zero per column serves a whole tile. Two operand orders:
  `_w4a16_kernel` computes the (BLOCK_M x BLOCK_N) output tile with the dequantized weight as
  the B operand; `_w4a16_nt_kernel` computes its transpose, W_hat tile (registers) as A and the
  activation tile as B, the order Hopper's wgmma can take from registers (A only). The
  load-and-shift unpacking follows the GPTQ Triton kernels (fpgaminer/GPTQ-triton
  `quant_linear.py`); the grouped program order is the Triton matmul tutorial's.
Exact (q - z) without an int -> float conversion (a quarter-rate instruction on Hopper): the
bits 0x4B000000 | q read as fp32 are 2^23 + q (q < 16), and (2^23 + q) - (2^23 + z) = q - z
exactly.
Tile sizes: `W4A16_CONFIGS` lists candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, expand,
swap) configurations; `tune_w4a16(shapes)` times each (triton.testing.do_bench, median), rejects
any whose output differs from the fp32 reference by more than bf16 rounding, and remembers the
fastest per (M, N, K); `w4a16_matmul` then uses the tuned configuration of the same (N, K) at
the nearest tuned M, else the default (128 x 128 x 64, 8 warps, 4 stages; 64 x 128 x 64 for
M <= 64). The choice is plain Python on static shapes, so torch.compile traces it as a constant.
expand=1 loads each packed word once and broadcasts it to the eight codes it holds in
registers; expand=0 loads the word once per code (eight loads, served by L1).
Why it is slow (bench/sass_w4a16.py, tables/sass_w4a16.md: the kernel compiled ahead of time
for sm_90 by Triton 3.6 and its main loop counted in SASS): at 128 x 128 x 64 with 8 warps a
thread issues 432 instructions per K step (unpacking, dequantizing, shared-memory stores,
addresses), 864 issue cycles per SM against 512 cycles of wgmma work, and the wgmma is waited on
within the iteration (pendings = 0), so the two add: ~2.7x of an MMA-bound GEMM, as measured.
- `w4a16_kp_matmul(x, packed_p, scale_t, zero_t, group_size)`: a second fused kernel, on the
  k-permuted packing of `int4.kperm_pack` (two codes per shift-and-mask, dequantized by two packed
  bf16x2/f16x2 FMAs per pair; 265 instructions per 64 of K instead of 432). It is not what
  realize runs: on an H200 it was no faster (tables/bench_w4a16_kp.md: 2.4-2.9x of cuBLAS at 512
  rows), and that table shows why no register-dequantizing Triton kernel can be: Triton's own
  bf16 matmul with its weight tile merely passed through registers runs 2.0-2.7x of cuBLAS
  (1.2-1.3x loaded straight to shared memory), its wgmma waited on in the loop.
Measured on one H200 (tables/bench_kernels.md, its notes, M = 512 rows, the 8B block shapes):
the fused kernel runs 2.4-3.4x slower than cuBLAS bf16 in either operand order (4.5-5.2x at
Dream's 512-wide k/v projections; swapping the operands changed its time by -5 % to +17 %, so
the register-operand hypothesis for its slowness did not hold), and torch's tinygemm int4
kernel (`aten._weight_int4pack_mm`, built for decoding's few rows) 20-26x; the "dequant" mode
(this unpack, 0.48-0.54x of the cuBLAS GEMM's time, then cuBLAS: 1.5-2.3x of cuBLAS alone) is
realize's default.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn  # fp8.E4M3 (not imported: fp8 imports this module)


@triton.jit
def _fp8_rowwise_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, tiny,
                        BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * stride_q
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.maximum(tl.max(amax, axis=0), tiny) / 448.0  # fp8.E4M3_MAX
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = tl.clamp(v / scale, -448.0, 448.0)
        tl.store(q_row + offs, q.to(tl.float8e4nv), mask=offs < K)


def fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) CUDA -> (e4m3 (M, K), fp32 scales (M, 1))."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    q = torch.empty((M, K), dtype=E4M3, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    _fp8_rowwise_kernel[(M,)](x, q, s, K, x.stride(0), q.stride(0), 1e-12, BLOCK=1024,
                              num_warps=4)
    return q, s


@triton.jit
def _grouped_pid(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` in the Triton matmul tutorial's grouped order: GROUP_M
    row tiles are walked down each column of tiles before moving on, so their operand tiles are
    reused from L2. Called with M and N swapped, it groups along N instead."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.jit
def _w4a16_kernel(a_ptr, b_ptr, s_ptr, z_ptr, c_ptr, M, N, K, stride_am, stride_bk,
                  stride_cm, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  EXPAND: tl.constexpr):
    pid_m, pid_n = _grouped_pid(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    if EXPAND:
        offs_w = tl.arange(0, BLOCK_K // 8)
        b_ptrs = b_ptr + offs_w[:, None].to(tl.int64) * stride_bk + offs_n[None, :]
    else:
        b_ptrs = b_ptr + (offs_k[:, None] // 8).to(tl.int64) * stride_bk + offs_n[None, :]
    shifts = (offs_k[:, None] % 8) * 4  # (BLOCK_K, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
        if EXPAND:
            w8 = tl.load(b_ptrs, mask=n_ok[None, :], other=0)  # (BLOCK_K / 8, BLOCK_N) int32
            words = tl.reshape(tl.broadcast_to(w8[:, None, :], (BLOCK_K // 8, 8, BLOCK_N)),
                               (BLOCK_K, BLOCK_N))  # row k holds word k // 8
        else:
            words = tl.load(b_ptrs, mask=n_ok[None, :], other=0)  # (BLOCK_K, BLOCK_N) int32
        q = (words >> shifts) & 0xF
        g = (k0 // GROUP_SIZE) * N  # < 2^31: G * N is the size of the scale tensor
        s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0)
        z = tl.load(z_ptr + g + offs_n, mask=n_ok, other=0).to(tl.float32)
        w = ((q.to(tl.float32) - z[None, :]) * s[None, :]).to(a.dtype)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        b_ptrs += (BLOCK_K // 8) * stride_bk
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _w4a16_nt_kernel(a_ptr, b_ptr, s_ptr, z_ptr, c_ptr, M, N, K, stride_am, stride_bk,
                     stride_cm, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
                     EXPAND: tl.constexpr):
    """C^T tile (BLOCK_N, BLOCK_M) = W_hat tile (BLOCK_N, BLOCK_K) @ x tile^T (BLOCK_K, BLOCK_M):
    the dequantized weight is the A operand (registers), the activation tile B (shared memory),
    the operand order Hopper's wgmma can take without a register -> shared memory round trip."""
    pid_n, pid_m = _grouped_pid(tl.program_id(0), N, M, BLOCK_N, BLOCK_M, GROUP_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    m_ok = offs_m < M
    xt_ptrs = a_ptr + offs_m[None, :].to(tl.int64) * stride_am + offs_k[:, None]  # (BK, BM)
    if EXPAND:
        offs_w = tl.arange(0, BLOCK_K // 8)
        w_ptrs = b_ptr + offs_w[:, None].to(tl.int64) * stride_bk + offs_n[None, :]  # (BK/8, BN)
    else:
        w_ptrs = b_ptr + (offs_k[None, :] // 8).to(tl.int64) * stride_bk + offs_n[:, None]  # (BN, BK)
    shifts = (offs_k % 8) * 4  # (BK,)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        xt = tl.load(xt_ptrs, mask=m_ok[None, :], other=0.0)
        if EXPAND:
            w8 = tl.load(w_ptrs, mask=n_ok[None, :], other=0)  # (BK/8, BN) int32
            words = tl.trans(tl.reshape(tl.broadcast_to(w8[:, None, :], (BLOCK_K // 8, 8, BLOCK_N)),
                                        (BLOCK_K, BLOCK_N)))  # (BN, BK): column k holds word k // 8
        else:
            words = tl.load(w_ptrs, mask=n_ok[:, None], other=0)  # (BN, BK) int32
        # (q - z) exactly in fp32 without an int -> float conversion: the bits 0x4B000000 | q are
        # the float 2^23 + q (q < 16), and 2^23 + z is exact too
        q = (((words >> shifts[None, :]) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
        g = (k0 // GROUP_SIZE) * N
        s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0)
        z = tl.load(z_ptr + g + offs_n, mask=n_ok, other=0).to(tl.float32) + 8388608.0
        w = ((q - z[:, None]) * s[:, None]).to(xt.dtype)
        acc = tl.dot(w, xt, acc)
        xt_ptrs += BLOCK_K
        w_ptrs += (BLOCK_K // 8) * stride_bk
    c_ptrs = c_ptr + offs_m[None, :].to(tl.int64) * stride_cm + offs_n[:, None]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _half_pair(t, zn, s, ASM: tl.constexpr, FP16: tl.constexpr):
    """t: int32 words whose 16-bit halves are the numbers C + q in x's 16-bit float format (bf16:
    the bits 0x4300 | q, C = 128; fp16: 0x6400 | q, C = 1024; q < 16); zn = -(C + z) and s in
    that format. Returns the two halves' ((C + q) - (C + z)) * s: the subtraction is exact ((q - z)
    is a small integer), the product rounded once (rn). ASM=1 does each pair in two packed FMAs
    (PTX fma.rn.bf16x2 / fma.rn.f16x2, sm_80+); ASM=0 is the same arithmetic in plain Triton
    (bit-identical: the product of two 16-bit floats is exact in fp32)."""
    if ASM:
        zn2 = zn.to(tl.uint16, bitcast=True).to(tl.int32)
        s2 = s.to(tl.uint16, bitcast=True).to(tl.int32)
        zn2 = tl.broadcast_to(zn2 | (zn2 << 16), t.shape)
        s2 = tl.broadcast_to(s2 | (s2 << 16), t.shape)
        if FP16:
            lo, hi = tl.inline_asm_elementwise(
                "{ .reg .b32 one, nz, d; mov.b32 one, 0x3C003C00; mov.b32 nz, 0x80008000; "
                "fma.rn.f16x2 d, $2, one, $3; fma.rn.f16x2 d, d, $4, nz; mov.b32 {$0, $1}, d; }",
                "=h,=h,r,r,r", [t, zn2, s2], dtype=(tl.float16, tl.float16), is_pure=True, pack=1)
        else:
            lo, hi = tl.inline_asm_elementwise(
                "{ .reg .b32 one, nz, d; mov.b32 one, 0x3F803F80; mov.b32 nz, 0x80008000; "
                "fma.rn.bf16x2 d, $2, one, $3; fma.rn.bf16x2 d, d, $4, nz; mov.b32 {$0, $1}, d; }",
                "=h,=h,r,r,r", [t, zn2, s2], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1)
    else:
        dt = s.dtype
        lo = (t & 0xFFFF).to(tl.uint16).to(dt, bitcast=True).to(tl.float32)
        hi = (t >> 16).to(tl.uint16).to(dt, bitcast=True).to(tl.float32)
        lo = ((lo + zn.to(tl.float32)) * s.to(tl.float32)).to(dt)
        hi = ((hi + zn.to(tl.float32)) * s.to(tl.float32)).to(dt)
    return lo, hi


@triton.jit
def _stack_rows(x, y):
    """(R, C), (R, C) -> (2R, C): x's rows, then y's."""
    return tl.reshape(tl.permute(tl.join(x, y), (2, 0, 1)), (2 * x.shape[0], x.shape[1]))


@triton.jit
def _w4a16_kp_kernel(a_ptr, b_ptr, s_ptr, z_ptr, c_ptr, M, N, K, stride_am, stride_bk,
                     stride_cm, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                     STACK: tl.constexpr, ASM: tl.constexpr):
    """The fused dequantize-GEMM on the k-permuted packing (int4.kperm_pack, BLOCK_K = its
    block): word w of a K block holds, at nibble r, the code of row r * BW + w (BW = BLOCK_K / 8),
    so one shift-and-mask of the (BW, BLOCK_N) words gives rows j * BW + w (low halves) and
    (j + 4) * BW + w (high halves) as 16-bit pairs C + q (_half_pair), eight contiguous row
    slices of the tile per K step. STACK=0 multiplies each slice with its BW columns of the
    activation tile (eight tl.dot of depth BW); STACK=1 stacks the slices into the (BLOCK_K,
    BLOCK_N) tile and does one tl.dot."""
    BW: tl.constexpr = BLOCK_K // 8
    dt = a_ptr.dtype.element_ty
    FP16: tl.constexpr = dt == tl.float16
    MAGIC: tl.constexpr = 0x64006400 if FP16 else 0x43004300  # the halves: C + 0 in dt
    OFFSET: tl.constexpr = 1024.0 if FP16 else 128.0  # C
    pid_m, pid_n = _grouped_pid(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_w = tl.arange(0, BW)
    b_ptrs = b_ptr + offs_w[:, None].to(tl.int64) * stride_bk + offs_n[None, :]
    if STACK:
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + tl.arange(0, BLOCK_K)[None, :]
    else:
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_w[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        words = tl.load(b_ptrs, mask=n_ok[None, :], other=0)  # (BW, BLOCK_N) int32
        g = (k0 // GROUP_SIZE) * N
        s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0).to(dt)[None, :]
        zn = -(tl.load(z_ptr + g + offs_n, mask=n_ok, other=0).to(tl.float32) + OFFSET)
        zn = zn.to(dt)[None, :]
        lo0, hi0 = _half_pair((words & 0x000F000F) | MAGIC, zn, s, ASM, FP16)
        lo1, hi1 = _half_pair(((words >> 4) & 0x000F000F) | MAGIC, zn, s, ASM, FP16)
        lo2, hi2 = _half_pair(((words >> 8) & 0x000F000F) | MAGIC, zn, s, ASM, FP16)
        lo3, hi3 = _half_pair(((words >> 12) & 0x000F000F) | MAGIC, zn, s, ASM, FP16)
        if STACK:
            w = _stack_rows(_stack_rows(_stack_rows(lo0, lo1), _stack_rows(lo2, lo3)),
                            _stack_rows(_stack_rows(hi0, hi1), _stack_rows(hi2, hi3)))
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            acc = tl.dot(a, w.to(a.dtype), acc)
        else:
            acc = tl.dot(tl.load(a_ptrs, mask=m_ok[:, None], other=0.0), lo0, acc)
            acc = tl.dot(tl.load(a_ptrs + BW, mask=m_ok[:, None], other=0.0), lo1, acc)
            acc = tl.dot(tl.load(a_ptrs + 2 * BW, mask=m_ok[:, None], other=0.0), lo2, acc)
            acc = tl.dot(tl.load(a_ptrs + 3 * BW, mask=m_ok[:, None], other=0.0), lo3, acc)
            acc = tl.dot(tl.load(a_ptrs + 4 * BW, mask=m_ok[:, None], other=0.0), hi0, acc)
            acc = tl.dot(tl.load(a_ptrs + 5 * BW, mask=m_ok[:, None], other=0.0), hi1, acc)
            acc = tl.dot(tl.load(a_ptrs + 6 * BW, mask=m_ok[:, None], other=0.0), hi2, acc)
            acc = tl.dot(tl.load(a_ptrs + 7 * BW, mask=m_ok[:, None], other=0.0), hi3, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BW * stride_bk
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# (BLOCK_M, BLOCK_N, warps, stages, stack, asm); BLOCK_K is the packing's block (KPERM_BLOCK)
KPERM_BLOCK = 128
W4A16_KP_CONFIGS = tuple((bm, bn, w, st, stack, asm) for asm in (1, 0) for stack in (0, 1)
                         for bm, bn, w in ((128, 128, 8), (128, 64, 4), (256, 64, 8),
                                           (256, 128, 8), (64, 128, 4))
                         for st in (3, 4))


def w4a16_kp_matmul(x: torch.Tensor, packed_p: torch.Tensor, scale_t: torch.Tensor,
                    zero_t: torch.Tensor, group_size: int, config: tuple | None = None
                    ) -> torch.Tensor:
    """x (M, K) bf16/fp16 @ W_kp^T -> (M, N): packed_p (K/8, N) int32 in the k-permuted packing of
    int4.kperm_pack (block KPERM_BLOCK), scale_t (G, N) fp32 (used rounded to x's dtype), zero_t
    (G, N) uint8. W_kp = dt((q - z) * dt(s)): int4.kperm_dequant_t is its torch twin.
    config: one of W4A16_KP_CONFIGS (default 128 x 128, 8 warps, 3 stages, eight dots, packed
    FMAs; bench/bench_w4a16_kp.py times them all)."""
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"the k-permuted w4a16 kernel computes in bf16 or fp16; got x in {x.dtype}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    N = packed_p.shape[1]
    BK = KPERM_BLOCK
    if K % BK or group_size % BK:
        raise ValueError(f"the k-permuted w4a16 kernel needs K ({K}) and the group size "
                         f"({group_size}) to be multiples of {BK}; use mode 'dequant'")
    BM, BN, warps, stages, stack, asm = config or (128, 128, 8, 3, 0, 1)
    c = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _w4a16_kp_kernel[grid](x, packed_p, scale_t, zero_t, c, M, N, K, x.stride(0),
                           packed_p.stride(0), c.stride(0), GROUP_SIZE=group_size, BLOCK_M=BM,
                           BLOCK_N=BN, BLOCK_K=BK, GROUP_M=8, STACK=stack, ASM=asm,
                           num_warps=warps, num_stages=stages)
    return c


@triton.jit
def _dequant4_t_kernel(p_ptr, s_ptr, z_ptr, w_ptr, KW, N, GROUP_SIZE: tl.constexpr,
                       BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """W_hat^T (K, N) from packed_t (K/8, N): each program expands a (BLOCK_W words x BLOCK_N)
    tile of codes into its 8 BLOCK_W x BLOCK_N output rows (k = 8 w + j), each row contiguous."""
    offs_w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (offs_w[:, None] < KW) & (offs_n[None, :] < N)
    words = tl.load(p_ptr + offs_w[:, None].to(tl.int64) * N + offs_n[None, :], mask=ok, other=0)
    g = (offs_w * 8) // GROUP_SIZE  # a word's 8 codes share one group (GROUP_SIZE % 8 == 0)
    sz = g[:, None].to(tl.int64) * N + offs_n[None, :]
    s = tl.load(s_ptr + sz, mask=ok, other=0.0)
    z = tl.load(z_ptr + sz, mask=ok, other=0).to(tl.float32) + 8388608.0
    rows = w_ptr + (offs_w[:, None] * 8).to(tl.int64) * N + offs_n[None, :]
    for j in tl.static_range(8):
        # (q - z) exactly in fp32 (the bit trick of _w4a16_nt_kernel), times s, cast
        q = (((words >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
        tl.store(rows + j * N, ((q - z) * s).to(w_ptr.dtype.element_ty), mask=ok)


def dequant4_t(packed_t: torch.Tensor, scale_t: torch.Tensor, zero_t: torch.Tensor,
               group_size: int, dtype: torch.dtype, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """W_hat^T (K, N) in dtype from packed_t (K/8, N) int32, scale_t (G, N) fp32, zero_t (G, N)
    uint8: the values of int4.W4A16Linear.dequantized_weight_t ((q - z) * s in fp32, then the
    cast), in one memory-bound kernel. out: a contiguous (K, N) tensor of dtype to write into
    (a fixed buffer, e.g. for double-buffering across streams); default a new one."""
    if group_size % 8:
        raise ValueError(f"dequant4_t needs a group size divisible by 8 (the codes of a word), "
                         f"got {group_size}")
    KW, N = packed_t.shape
    if out is not None and (out.shape != (KW * 8, N) or out.dtype != dtype
                            or not out.is_contiguous()):
        raise ValueError(f"dequant4_t: out must be a contiguous ({KW * 8}, {N}) {dtype} tensor, "
                         f"got {tuple(out.shape)} {out.dtype}")
    w = torch.empty((KW * 8, N), dtype=dtype, device=packed_t.device) if out is None else out
    BW, BN = 8, 256
    grid = (triton.cdiv(KW, BW), triton.cdiv(N, BN))
    _dequant4_t_kernel[grid](packed_t, scale_t, zero_t, w, KW, N, GROUP_SIZE=group_size,
                             BLOCK_W=BW, BLOCK_N=BN, num_warps=4)
    return w


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, expand, swap); swap=1: the _w4a16_nt_kernel order
W4A16_CONFIGS = (
    (128, 128, 64, 8, 4, 0, 0), (128, 128, 64, 8, 4, 1, 0), (128, 256, 64, 8, 3, 1, 0),
    (256, 128, 64, 8, 3, 1, 0), (128, 128, 128, 8, 3, 1, 0), (128, 64, 64, 4, 4, 1, 0),
    (64, 128, 64, 4, 4, 0, 0), (64, 256, 64, 8, 4, 1, 0),
    (128, 128, 64, 8, 4, 0, 1), (128, 128, 64, 8, 4, 1, 1), (256, 128, 64, 8, 3, 0, 1),
    (256, 128, 64, 8, 3, 1, 1), (128, 64, 64, 4, 4, 0, 1), (256, 64, 64, 4, 3, 0, 1),
    (64, 128, 64, 4, 4, 0, 1),
)  # (128, 128, 128, 8, 3, 0, 1) needs 241 KiB of shared memory, over an H200's 227 KiB
_TUNED: dict[tuple[int, int, int], tuple] = {}  # filled by tune_w4a16 only


def _config(M: int, N: int, K: int) -> tuple:
    same = [m for (m, n, k) in _TUNED if (n, k) == (N, K)]
    if same:
        m = min(same, key=lambda m: abs(math.log(m) - math.log(max(M, 1))))
        return _TUNED[(m, N, K)]
    return (128, 128, 64, 8, 4, 0, 0) if M > 64 else (64, 128, 64, 4, 4, 0, 0)


def w4a16_matmul(x: torch.Tensor, packed_t: torch.Tensor, scale_t: torch.Tensor,
                 zero_t: torch.Tensor, group_size: int, config: tuple | None = None) -> torch.Tensor:
    """x (M, K) @ W_hat^T -> (M, N) in x's dtype. The kernel layout is the transpose of the
    export's, so that neighbouring threads (neighbouring output columns n) read neighbouring
    words: packed_t (K/8, N) int32, scale_t (G, N) fp32, zero_t (G, N) uint8, all contiguous.
    config: one of W4A16_CONFIGS (default: the tuned or default one, module docstring)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    N = packed_t.shape[1]
    BM, BN, BK, warps, stages, expand, swap = config or _config(M, N, K)
    if K % BK or group_size % BK:
        raise ValueError(f"w4a16 kernel needs K ({K}) and the group size ({group_size}) to be "
                         f"multiples of {BK}; use mode 'dequant'")
    c = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    kernel = _w4a16_nt_kernel if swap else _w4a16_kernel
    kernel[grid](x, packed_t, scale_t, zero_t, c, M, N, K, x.stride(0), packed_t.stride(0),
                 c.stride(0), GROUP_SIZE=group_size, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                 **{"GROUP_N" if swap else "GROUP_M": 8}, EXPAND=expand, num_warps=warps,
                 num_stages=stages)
    return c


@torch.no_grad()
def tune_w4a16(shapes, device, group_size: int = 128, dtype=torch.bfloat16) -> list[str]:
    """Time every W4A16_CONFIGS entry at each (M, N, K) on random operands, keep the fastest whose
    output is within 5e-3 relative (Frobenius) of the fp32 reference (bf16 output rounding is
    ~2e-3), and return one line per shape: the choice, its time, cuBLAS bf16 at the same shape."""
    from triton.testing import do_bench

    from dllmq.quant.export import pack_int32

    lines = []
    g = torch.Generator(device).manual_seed(0)
    for M, N, K in shapes:
        G = K // group_size
        codes = torch.randint(0, 16, (N, K), device=device, generator=g, dtype=torch.int32)
        packed_t = pack_int32(codes, 4).t().contiguous()
        scale_t = torch.rand(G, N, device=device, generator=g) * 0.01 + 1e-3
        zero_t = torch.randint(0, 16, (G, N), device=device, generator=g, dtype=torch.uint8)
        x = torch.randn(M, K, device=device, generator=g, dtype=dtype)
        w = ((codes.t().reshape(G, group_size, N).float() - zero_t[:, None].float())
             * scale_t[:, None]).reshape(K, N).to(dtype)  # (K, N)
        ref = x.float() @ w.float()
        t_cublas = do_bench(lambda x=x, w=w: x @ w, warmup=5, rep=25, return_mode="median")
        best = None
        for cfg in W4A16_CONFIGS:
            if K % cfg[2] or group_size % cfg[2]:
                continue
            try:
                y = w4a16_matmul(x, packed_t, scale_t, zero_t, group_size, cfg)
                err = ((y.float() - ref).norm() / ref.norm()).item()
                if not err <= 5e-3:
                    log.warning("w4a16 config %s at %s: rel. error %.2e, rejected", cfg, (M, N, K), err)
                    continue
                t = do_bench(partial(w4a16_matmul, x, packed_t, scale_t, zero_t, group_size, cfg),
                             warmup=5, rep=25, return_mode="median")
            except Exception as e:  # a config Triton cannot build here is skipped, and said
                log.warning("w4a16 config %s at %s failed: %s: %s", cfg, (M, N, K),
                            type(e).__name__, str(e)[:200])
                continue
            if best is None or t < best[0]:
                best = (t, cfg)
        if best is None:
            lines.append(f"w4a16 tune (M {M}, N {N}, K {K}): no config ran; default kept")
            continue
        _TUNED[(M, N, K)] = best[1]
        lines.append(f"w4a16 tune (M {M}, N {N}, K {K}): {best[1]} {best[0] * 1e3:.1f} us, "
                     f"cuBLAS bf16 {t_cublas * 1e3:.1f} us ({best[0] / t_cublas:.2f}x)")
    return lines
