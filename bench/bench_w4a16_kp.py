"""The k-permuted w4a16 kernel (triton_kernels._w4a16_kp_kernel) against cuBLAS bf16, the
"dequant" mode (dequant4_t + cuBLAS) and the first fused kernel, per block-linear shape of
LLaDA-8B and Dream-7B, at a batch-1 step's M = 512 rows and a batch-8 step's 4096. One GPU:

    python bench/bench_w4a16_kp.py --out-dir tables      # writes bench_w4a16_kp.{md,csv}

Every configuration of W4A16_KP_CONFIGS is timed (triton.testing.do_bench, median) after its
output passed the check against the fp32 product with int4.kperm_dequant_t's weight (relative
Frobenius error <= 5e-3; bf16 output rounding is ~2e-3); the fastest is reported. The ASM and
plain-Triton dequantizations are checked bit-identical (torch.equal of the outputs of the same
tile configuration). "block" rows sum one transformer block's linears (LLaDA: q, k, v, o 4096 x
4096, gate and up 12288 x 4096, down 4096 x 12288; Dream: q, o 3584 x 3584, k, v 512 x 3584,
gate and up 18944 x 3584, down 3584 x 18944).

The diagnosis notes time Triton's own bf16 matmul at the fused kernels' tiles (128 x 128 x 64,
8 warps, 4 stages): with both operands loaded from memory (the pipeliner's asynchronous copies to
shared memory), with the weight tile passed through registers (a runtime multiply by one, the
path a tile dequantized in registers takes to the tensor cores), and the latter with
`tl.range(..., warp_specialize=True)`; then the k-permuted kernel with and without the packed
FMAs (asm) and with the tile stacked into one dot (stack).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCKS = {  # (N, K): how many per block
    "llada": {(4096, 4096): 4, (12288, 4096): 2, (4096, 12288): 1},
    "Dream": {(3584, 3584): 2, (512, 3584): 2, (18944, 3584): 2, (3584, 18944): 1},
}


def _mm_kernel():
    import triton
    import triton.language as tl
    from dllmq.kernels.triton_kernels import _grouped_pid

    @triton.jit
    def mm(a_ptr, b_ptr, c_ptr, one_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
           BK: tl.constexpr, REG: tl.constexpr, WS: tl.constexpr, GROUP_M: tl.constexpr):
        """C = A @ B, bf16 (M, K) x (K, N), M, N, K multiples of the tiles; REG=1: B's tile goes
        through registers (times a one loaded at run time, which the compiler cannot fold)."""
        pid_m, pid_n = _grouped_pid(tl.program_id(0), M, N, BM, BN, GROUP_M)
        om = pid_m * BM + tl.arange(0, BM)
        on = pid_n * BN + tl.arange(0, BN)
        ok = tl.arange(0, BK)
        a_ptrs = a_ptr + om[:, None].to(tl.int64) * K + ok[None, :]
        b_ptrs = b_ptr + ok[:, None].to(tl.int64) * N + on[None, :]
        one = tl.load(one_ptr)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for _ in tl.range(0, K, BK, warp_specialize=WS):
            b = tl.load(b_ptrs)
            if REG:
                b = (b.to(tl.float32) * one).to(tl.bfloat16)
            acc = tl.dot(tl.load(a_ptrs), b, acc)
            a_ptrs += BK
            b_ptrs += BK * N
        tl.store(c_ptr + om[:, None].to(tl.int64) * N + on[None, :], acc.to(tl.bfloat16))

    return mm


def diagnose(bench, tk, kperm_pack, pack_int32) -> list[str]:
    """Where the fused kernels lose (module docstring): one line per shape."""
    import triton

    mm = _mm_kernel()
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(1)
    one = torch.ones(1, device=dev)
    lines = []
    for M, N, K in ((512, 4096, 4096), (512, 12288, 4096), (4096, 12288, 4096)):
        a = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
        b = torch.randn(K, N, device=dev, generator=g, dtype=torch.bfloat16)
        c = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
        ref = a.float() @ b.float()
        tc = bench(lambda a=a, b=b: a @ b)
        cells = [f"cuBLAS bf16 {tc:.1f}"]
        for label, reg, ws in (("Triton bf16", 0, False), ("B through registers", 1, False),
                               ("B through registers, warp_specialize", 1, True)):
            f = partial(mm[(triton.cdiv(M, 128) * triton.cdiv(N, 128),)], a, b, c, one, M, N, K,
                        BM=128, BN=128, BK=64, REG=reg, WS=ws, GROUP_M=8, num_warps=8,
                        num_stages=4)
            try:
                f()
                err = ((c.float() - ref).norm() / ref.norm()).item()
                t = bench(f)
                cells.append(f"{label} {t:.1f} ({t / tc:.2f}x, rel. error {err:.1e})")
            except Exception as e:
                cells.append(f"{label} failed: {type(e).__name__}: {str(e)[:120]}")
        G = K // 128
        codes = torch.randint(0, 16, (N, K), device=dev, generator=g, dtype=torch.int32)
        packed_p = kperm_pack(pack_int32(codes, 4).t().contiguous(), tk.KPERM_BLOCK)
        s = torch.rand(G, N, device=dev, generator=g) * 0.01 + 1e-3
        z = torch.randint(0, 16, (G, N), device=dev, generator=g, dtype=torch.uint8)
        for stack, asm in ((0, 1), (0, 0), (1, 1)):
            cfg = (128, 128, 8, 4, stack, asm)
            try:
                t = bench(partial(tk.w4a16_kp_matmul, a, packed_p, s, z, 128, cfg))
                cells.append(f"k-permuted stack {stack} asm {asm} {t:.1f} ({t / tc:.2f}x)")
            except Exception as e:
                cells.append(f"k-permuted {cfg} failed: {type(e).__name__}: {str(e)[:120]}")
        lines.append(f"diagnosis (M {M}, N {N}, K {K}), us: " + "; ".join(cells))
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tables")
    ap.add_argument("--ms", default="512,4096", help="row counts M, comma-separated")
    ap.add_argument("--no-diagnosis", action="store_true", help="skip the diagnosis notes")
    ap.add_argument("--budget", type=float, default=400.0, help="seconds; configs past it are skipped")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_w4a16_kp needs a CUDA GPU (the Triton kernels); none is visible")
    from dllmq.kernels import triton_kernels as tk
    from dllmq.kernels.int4 import kperm_dequant_t, kperm_pack
    from dllmq.quant.export import pack_int32
    from triton.testing import do_bench

    t0 = time.time()
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    rows, notes = [], []
    bench = lambda f: do_bench(f, warmup=5, rep=30, return_mode="median") * 1e3  # noqa: E731  us
    shapes = sorted({s for b in BLOCKS.values() for s in b})
    checked_asm = False
    too_big: set[tuple] = set()  # configs over the GPU's shared memory
    for M in (int(m) for m in args.ms.split(",")):
        for N, K in shapes:
            G = K // 128
            codes = torch.randint(0, 16, (N, K), device=dev, generator=g, dtype=torch.int32)
            packed_t = pack_int32(codes, 4).t().contiguous()
            packed_p = kperm_pack(packed_t, tk.KPERM_BLOCK)
            scale_t = torch.rand(G, N, device=dev, generator=g) * 0.01 + 1e-3
            zero_t = torch.randint(0, 16, (G, N), device=dev, generator=g, dtype=torch.uint8)
            x = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
            w = kperm_dequant_t(packed_t, scale_t, zero_t)
            ref = x.float() @ w.float()
            ops = (x, packed_t, scale_t, zero_t)
            t = {"cublas": bench(lambda x=x, w=w: x @ w),
                 "dequant": bench(lambda o=ops: o[0] @ tk.dequant4_t(*o[1:], 128, torch.bfloat16)),
                 "fused-v1": bench(lambda o=ops: tk.w4a16_matmul(*o, 128))}
            best = None
            for cfg in tk.W4A16_KP_CONFIGS:
                if time.time() - t0 > args.budget:
                    notes.append(f"budget reached at M {M}, N {N}, K {K}: later configs not timed")
                    break
                try:
                    y = tk.w4a16_kp_matmul(x, packed_p, scale_t, zero_t, 128, cfg)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    if not err <= 5e-3:
                        notes.append(f"config {cfg} at M {M}, N {N}, K {K}: rel. error {err:.2e}, rejected")
                        continue
                    if cfg[5] == 1 and not checked_asm:
                        y0 = tk.w4a16_kp_matmul(x, packed_p, scale_t, zero_t, 128, cfg[:5] + (0,))
                        notes.append(f"ASM vs plain dequantization, config {cfg} at M {M}, N {N}, "
                                     f"K {K}: outputs bit-identical {torch.equal(y, y0)}")
                        checked_asm = True
                    ms = bench(lambda o=(x, packed_p, scale_t, zero_t), cfg=cfg:
                               tk.w4a16_kp_matmul(*o, 128, cfg))
                except Exception as e:  # a config this GPU/Triton cannot build is said and skipped
                    if type(e).__name__ == "OutOfResources":
                        too_big.add(cfg)
                        continue
                    notes.append(f"config {cfg} at M {M}, N {N}, K {K} failed: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:160] if str(e) else ''}")
                    continue
                if best is None or ms < best[0]:
                    best = (ms, cfg, err)
            if best is not None:
                t["kperm"] = best[0]
            rows.append({"M": M, "N": N, "K": K, **{k: round(v, 2) for k, v in t.items()},
                         "kperm_config": best[1] if best else "", "kperm_err": f"{best[2]:.2e}" if best else ""})
            print(rows[-1], flush=True)
    if too_big:
        notes.append(f"configs over this GPU's shared memory (skipped): {sorted(too_big)}")
    if not args.no_diagnosis:
        notes = diagnose(bench, tk, kperm_pack, pack_int32) + notes
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["M", "N", "K", "cublas", "dequant", "fused-v1", "kperm", "kperm_config", "kperm_err"]
    with open(args.out_dir / "bench_w4a16_kp.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, cols)
        wr.writeheader()
        wr.writerows(rows)
    name = torch.cuda.get_device_name()
    import triton
    md = [f"# w4a16: the k-permuted kernel per shape ({name}, torch {torch.__version__}, "
          f"Triton {triton.__version__})", "",
          "Command: `python bench/bench_w4a16_kp.py --out-dir DIR`; times in us (median of "
          "triton.testing.do_bench), x = ratio to cuBLAS bf16 at the same shape (lower is faster).",
          "", "| M | N | K | cuBLAS bf16 | dequant + cuBLAS | fused v1 | k-permuted (best) | config "
          "(BM, BN, warps, stages, stack, asm) | rel. error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cublas"]
        cell = lambda k, r=r, c=c: f"{r[k]:.1f} ({r[k] / c:.2f}x)" if k in r else "n/a"  # noqa: E731
        md.append(f"| {r['M']} | {r['N']} | {r['K']} | {c:.1f} | {cell('dequant')} | {cell('fused-v1')} "
                  f"| {cell('kperm')} | {r['kperm_config']} | {r['kperm_err']} |")
    md.append("")
    for arch, block in BLOCKS.items():
        for M in sorted({r["M"] for r in rows}):
            by = {(r["N"], r["K"]): r for r in rows if r["M"] == M}
            if not all(s in by for s in block):
                continue
            tot = {k: sum(n * by[s].get(k, float("nan")) for s, n in block.items())
                   for k in ("cublas", "dequant", "fused-v1", "kperm")}
            md.append(f"- {arch} block linears at M {M}: cuBLAS bf16 {tot['cublas']:.0f} us, "
                      + ", ".join(f"{k} {tot[k]:.0f} us ({tot[k] / tot['cublas']:.2f}x)"
                                  for k in ("dequant", "fused-v1", "kperm")))
    md += [f"- {n}" for n in notes]
    (args.out_dir / "bench_w4a16_kp.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
