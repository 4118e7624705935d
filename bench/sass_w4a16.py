"""Why the fused w4a16 Triton kernel runs 2.5-3x slower than cuBLAS on Hopper: a static count of
the instructions in its main loop, compiled ahead of time for sm_90 (no GPU needed).

    pip install triton==3.6.0     # beside torch; the GPU machine's Triton (torch 2.11's)
    python bench/sass_w4a16.py > tables/sass_w4a16.md

For each configuration it compiles `triton_kernels._w4a16_kernel` / `_w4a16_nt_kernel` for an
sm_90 target (pointer and integer arguments marked divisible by 16, as the JIT marks the
benchmark's), disassembles the cubin with the nvdisasm Triton ships and counts, between the
branches around the HGMMA (wgmma) instructions: the SASS instructions a thread issues per
K step, the HGMMAs, the shared-memory stores (the dequantized tile going to shared memory), and
the warp-group waits. The cost model printed beside it: a K step's instruction issue is
warps x instructions / 4 schedulers cycles per SM; its MMA work is 2 BM BN BK flops at ~4096
bf16 flops per cycle per SM (an H100/H200's dense peak over 132 SMs at boost clock). Where the
loop body waits for its wgmmas (`warp_group_dot_wait` with pendings = 0 inside the TTGIR's
scf.for), the two add up rather than overlap within a program. A second table counts the
k-permuted kernel and bench_w4a16_kp's plain Triton bf16 matmul, its weight tile from memory
(pipelined: one wgmma kept in flight) or through registers (waited in the loop, as every fused
dequantize-GEMM here is).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, expand, swap): W4A16_CONFIGS entries
    (128, 128, 64, 8, 4, 0, 0), (128, 128, 64, 8, 4, 1, 0), (128, 128, 64, 8, 4, 1, 1),
    (256, 128, 64, 8, 3, 1, 0),
]
KP_CONFIGS = [(128, 128, 8, 4, 0, 1), (128, 128, 8, 4, 0, 0)]  # (BM, BN, warps, stages, stack, asm)
SIG = {"a_ptr": "*bf16", "b_ptr": "*i32", "s_ptr": "*fp32", "z_ptr": "*u8", "c_ptr": "*bf16",
       "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_bk": "i32",
       "stride_cm": "i32"}


def _triton_kernels():
    """dllmq/kernels/triton_kernels.py loaded on its own (it needs torch and triton only)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "dllmq" / "kernels" / "triton_kernels.py"
    spec = importlib.util.spec_from_file_location("dllmq_triton_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def loop_counts(cfg) -> dict:
    tk = _triton_kernels()
    BM, BN, BK, warps, stages, expand, swap = cfg
    const = {"GROUP_SIZE": 128, "BLOCK_M": BM, "BLOCK_N": BN, "BLOCK_K": BK,
             "GROUP_N" if swap else "GROUP_M": 8, "EXPAND": expand}
    fn = tk._w4a16_nt_kernel if swap else tk._w4a16_kernel
    return _counts(fn, SIG, const, warps, stages, "w4a16_" + "_".join(map(str, cfg)))


def kp_loop_counts(cfg) -> dict:
    """The k-permuted kernel (BLOCK_K = KPERM_BLOCK = 128: one K step is two of the others')."""
    tk = _triton_kernels()
    BM, BN, warps, stages, stack, asm = cfg
    const = {"GROUP_SIZE": 128, "BLOCK_M": BM, "BLOCK_N": BN, "BLOCK_K": tk.KPERM_BLOCK,
             "GROUP_M": 8, "STACK": stack, "ASM": asm}
    return _counts(tk._w4a16_kp_kernel, SIG, const, warps, stages,
                   "w4a16kp_" + "_".join(map(str, cfg)))


def mm_loop_counts(reg: int) -> dict:
    """bench_w4a16_kp's plain Triton bf16 matmul (128 x 128 x 64, 8 warps, 4 stages), its weight
    tile straight from memory (reg 0) or through registers (reg 1)."""
    import importlib.util

    path = Path(__file__).resolve().parent / "bench_w4a16_kp.py"
    spec = importlib.util.spec_from_file_location("bench_w4a16_kp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "one_ptr": "*fp32", "M": "i32",
           "N": "i32", "K": "i32"}
    const = {"BM": 128, "BN": 128, "BK": 64, "REG": reg, "WS": False, "GROUP_M": 8}
    return _counts(mod._mm_kernel(), sig, const, 8, 4, f"mm_reg{reg}")


def _counts(fn, sig0: dict, const: dict, warps: int, stages: int, name: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(sig0, **{c: "constexpr" for c in const})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(sig0))}
    ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                        target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": warps, "num_stages": stages})
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    cubin = Path("/tmp") / f"{name}.cubin"
    cubin.write_bytes(ck.asm["cubin"])
    sass = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    ins = [re.sub(r"/\*[0-9a-f]+\*/", "", ln).strip() for ln in sass.splitlines()
           if re.search(r"/\*[0-9a-f]{4}\*/", ln)]
    mma = [i for i, ln in enumerate(ins) if "HGMMA" in ln]
    bra = [i for i, ln in enumerate(ins) if re.search(r"\bBRA\b", ln)]
    lo = max([b for b in bra if b < mma[0]] + [0])
    hi = min([b for b in bra if b > mma[-1]] + [len(ins)])
    body = ins[lo:hi + 1]
    return dict(instrs=len(body), hgmma=sum("HGMMA" in ln for ln in body),
                sts=sum(bool(re.search(r"\bSTS\b|\bSTS\.", ln)) for ln in body),
                waits=sum("WARPGROUP.DEPBAR" in ln for ln in body),
                smem_kib=ck.metadata.shared / 1024,
                pendings0=_waited_in_loop(ck.asm["ttgir"]))


def _waited_in_loop(ttgir: str) -> bool:
    """Whether the main loop (the TTGIR's scf.for) waits for all of its wgmmas (a
    warp_group_dot_wait with pendings = 0 inside the loop body) rather than keeping one in flight
    (pendings = 1, the software-pipelined form)."""
    lines = ttgir.splitlines()
    start = next(i for i, ln in enumerate(lines) if "scf.for" in ln)
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(i for i in range(start + 1, len(lines))
               if lines[i].startswith(" " * indent + "}") and not lines[i].startswith(" " * (indent + 1)))
    return any("warp_group_dot_wait" in ln and "pendings = 0" in ln for ln in lines[start:end])


def main() -> None:
    try:
        import triton
    except ImportError:
        raise SystemExit("bench/sass_w4a16.py needs triton (pip install triton==3.6.0)") from None
    print(f"# The fused w4a16 kernel's main loop in SASS (triton {triton.__version__}, sm_90, "
          "compiled ahead of time)\n\nCommand: `python bench/sass_w4a16.py`. Issue cycles: "
          "warps x instructions / 4 schedulers, per SM and K step; MMA cycles: 2 BM BN BK / 4096 "
          "(dense bf16 peak per SM per cycle). Both per program; where the loop waits for its "
          "wgmmas (a warp_group_dot_wait with pendings = 0 in the loop body of the TTGIR), the "
          "two add, where it keeps one in flight (pendings = 1, the pipelined form) they overlap."
          "\n")
    print("| BM x BN x BK, warps, stages, expand, swap | SASS per thread per K step | HGMMA | "
          "STS | warp-group waits | wgmma waited in-iteration | shared KiB | issue cycles | "
          "MMA cycles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg in CONFIGS:
        c = loop_counts(cfg)
        BM, BN, BK, warps = cfg[:4]
        issue, mma = warps * c["instrs"] / 4, 2 * BM * BN * BK / 4096
        print(f"| {BM} x {BN} x {BK}, {warps}, {cfg[4]}, {cfg[5]}, {cfg[6]} | {c['instrs']} | "
              f"{c['hgmma']} | {c['sts']} | {c['waits']} | {c['pendings0']} | "
              f"{c['smem_kib']:.0f} | {issue:.0f} | {mma:.0f} |")
    print("\nThe k-permuted kernel (`_w4a16_kp_kernel`, bench/bench_w4a16_kp.py; its K step is 128, "
          "so the counts per 64 of K, comparable with the rows above, are halved in brackets) and "
          "bench_w4a16_kp's plain Triton bf16 matmul (128 x 128 x 64, 8 warps, 4 stages), its "
          "weight tile loaded straight to shared memory or passed through registers:\n")
    print("| kernel | SASS per thread per K step | HGMMA | STS | warp-group waits | wgmma waited "
          "in-iteration | shared KiB | issue cycles | MMA cycles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cfg in KP_CONFIGS:
        c = kp_loop_counts(cfg)
        BM, BN, warps = cfg[:3]
        issue, mma = warps * c["instrs"] / 4, 2 * BM * BN * 128 / 4096
        print(f"| k-permuted {BM} x {BN} x 128, {warps}, {cfg[3]}, stack {cfg[4]}, asm {cfg[5]} | "
              f"{c['instrs']} ({c['instrs'] / 2:.0f}) | {c['hgmma']} | {c['sts']} | {c['waits']} | "
              f"{c['pendings0']} | {c['smem_kib']:.0f} | {issue:.0f} ({issue / 2:.0f}) | "
              f"{mma:.0f} ({mma / 2:.0f}) |")
    for reg in (0, 1):
        c = mm_loop_counts(reg)
        print(f"| Triton bf16 matmul, weight tile {'through registers' if reg else 'from memory'} | "
              f"{c['instrs']} | {c['hgmma']} | {c['sts']} | {c['waits']} | {c['pendings0']} | "
              f"{c['smem_kib']:.0f} | {8 * c['instrs'] / 4:.0f} | 512 |")


if __name__ == "__main__":
    main()
