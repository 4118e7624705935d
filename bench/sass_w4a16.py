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
bf16 flops per cycle per SM (an H100/H200's dense peak over 132 SMs at boost clock). The wgmma
is waited on in the same iteration (`warp_group_dot_wait pendings = 0` in the TTGIR), so the two
add up rather than overlap within a program.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, expand, swap): W4A16_CONFIGS entries
    (128, 128, 64, 8, 4, 0, 0), (128, 128, 64, 8, 4, 1, 0), (128, 128, 64, 8, 4, 1, 1),
    (256, 128, 64, 8, 3, 1, 0),
]
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
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tk = _triton_kernels()
    BM, BN, BK, warps, stages, expand, swap = cfg
    const = {"GROUP_SIZE": 128, "BLOCK_M": BM, "BLOCK_N": BN, "BLOCK_K": BK,
             "GROUP_N" if swap else "GROUP_M": 8, "EXPAND": expand}
    sig = dict(SIG, **{c: "constexpr" for c in const})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(SIG))}
    fn = tk._w4a16_nt_kernel if swap else tk._w4a16_kernel
    ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                        target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": warps, "num_stages": stages})
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    cubin = Path("/tmp") / f"w4a16_{'_'.join(map(str, cfg))}.cubin"
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
                pendings0="pendings = 0" in ck.asm["ttgir"])


def main() -> None:
    try:
        import triton
    except ImportError:
        raise SystemExit("bench/sass_w4a16.py needs triton (pip install triton==3.6.0)") from None
    print(f"# The fused w4a16 kernel's main loop in SASS (triton {triton.__version__}, sm_90, "
          "compiled ahead of time)\n\nCommand: `python bench/sass_w4a16.py`. Issue cycles: "
          "warps x instructions / 4 schedulers, per SM and K step; MMA cycles: 2 BM BN BK / 4096 "
          "(dense bf16 peak per SM per cycle). Both per program; the wgmma is waited on within "
          "the iteration, so they add.\n")
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


if __name__ == "__main__":
    main()
