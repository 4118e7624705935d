"""w4a16 without a fused kernel: unpack the weight in column chunks that stay in L2, and unpack
chunk i + 1 on a second stream while cuBLAS multiplies chunk i. One GPU:

    python bench/bench_w4a16_overlap.py --out-dir tables   # writes bench_w4a16_overlap.{md,csv}

The "dequant" mode of W4A16Linear unpacks a whole layer to bf16 (written to and read back from
HBM: 4 bytes per weight beside the 0.5 of the codes) and then runs one GEMM: 1.5x of cuBLAS at a
batch-1 step's 512 rows (tables/bench_w4a16_kp.md). The fused Triton kernels lose more (2.4-2.9x)
because Triton waits for each wgmma when an operand comes from registers. This benchmark
measures the two ways left without a new kernel, per block-linear shape of LLaDA-8B and
Dream-7B at M = 512:
- "chunked": the layer's columns in chunks of C (the codes stored chunk by chunk, contiguous);
  each chunk unpacked (triton_kernels.dequant4_t into a fixed buffer) and multiplied at once, on
  one stream, so the bf16 chunk (K x C x 2 bytes) is read back from L2 rather than HBM when it
  fits (an H200's L2 is 50 MB);
- "overlap": the same chunks with two buffers, unpacking on a side stream while the GEMM of the
  previous chunk runs (events order them), so the memory-bound unpack runs beside the
  tensor-core-bound GEMM.
Every variant, the cuBLAS bf16 reference and "dequant" included, is captured in a CUDA graph and
timed by replaying it (triton.testing.do_bench, median), so the chunks' extra launches cost what
they cost under graphs (the batch-1 backends run under graphs). Each output is checked equal to
the "dequant" output (torch.equal: the same unpacked values, and each output column is the same
cuBLAS dot product; a difference would be said in the notes, with its size).

`--cpu-check` runs the chunking on CPU with the torch unpack (no GPU) and checks the chunks
reassemble the layer's dequantized weight exactly.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_w4a16_kp import BLOCKS  # noqa: E402  the block-linear shapes and counts


def split_columns(packed_t: torch.Tensor, scale_t: torch.Tensor, zero_t: torch.Tensor,
                  chunk: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The kernel-layout buffers of one layer ((K/8, N), (G, N), (G, N)) as contiguous column
    chunks of at most `chunk` columns, in order: what a chunked layer would store."""
    N = packed_t.shape[1]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 column, got {chunk}")
    return [tuple(t[:, n0:n0 + chunk].contiguous() for t in (packed_t, scale_t, zero_t))
            for n0 in range(0, N, chunk)]


def cpu_check() -> None:
    from dllmq.kernels.int4 import _dequant_t
    from dllmq.quant.export import pack_int32

    g = torch.Generator().manual_seed(0)
    N, K, G = 300, 256, 2
    codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32)
    packed_t = pack_int32(codes, 4).t().contiguous()
    scale_t = torch.rand(G, N, generator=g) * 0.01 + 1e-3
    zero_t = torch.randint(0, 16, (G, N), generator=g, dtype=torch.uint8)
    full = _dequant_t(packed_t, scale_t, zero_t, torch.bfloat16)
    x = torch.randn(7, K, generator=g).bfloat16()
    ref = x.float() @ full.float()
    unpack = lambda c, out: out.copy_(_dequant_t(*c, torch.bfloat16))  # noqa: E731
    for chunk in (1, 64, 128, 299, 300, 1000):
        parts = [_dequant_t(*c, torch.bfloat16) for c in split_columns(packed_t, scale_t, zero_t, chunk)]
        assert torch.equal(torch.cat(parts, 1), full), chunk
        bufs = [torch.empty(K, chunk, dtype=torch.bfloat16) for _ in range(2)]
        y = chunked(x, split_columns(packed_t, scale_t, zero_t, chunk), unpack, bufs)
        err = ((y.float() - ref).norm() / ref.norm()).item()
        assert y.shape == (7, N) and err < 5e-3, (chunk, err)  # bf16 output rounding: ~2e-3
    print("cpu check: the chunks reassemble the dequantized weight exactly, and the chunked "
          "product is x @ W_hat^T (6 chunk sizes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tables")
    ap.add_argument("--chunks", default="1024,2048,4096", help="chunk widths C, comma-separated")
    ap.add_argument("--m", type=int, default=512, help="rows (a batch-1 step: 512)")
    ap.add_argument("--cpu-check", action="store_true", help="check the chunking on CPU and stop")
    args = ap.parse_args()
    widths = [int(c) for c in args.chunks.split(",")]
    if args.cpu_check:
        return cpu_check()
    if not torch.cuda.is_available():
        sys.exit("bench_w4a16_overlap needs a CUDA GPU (use --cpu-check on CPU)")
    from dllmq.kernels import triton_kernels as tk
    from dllmq.quant.export import pack_int32
    from triton.testing import do_bench

    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    side = torch.cuda.Stream()
    t0 = time.time()

    def graphed(fn):
        """fn captured in a CUDA graph (after a warm-up call on a side stream); returns
        (replay, the output tensor the graph writes)."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = fn()
        return graph.replay, y

    rows, notes = [], []
    M = args.m

    def unpack(c, out):
        return tk.dequant4_t(*c, 128, torch.bfloat16, out=out)

    for N, K in sorted({s for b in BLOCKS.values() for s in b}):
        G = K // 128
        codes = torch.randint(0, 16, (N, K), device=dev, generator=g, dtype=torch.int32)
        packed_t = pack_int32(codes, 4).t().contiguous()
        scale_t = torch.rand(G, N, device=dev, generator=g) * 0.01 + 1e-3
        zero_t = torch.randint(0, 16, (G, N), device=dev, generator=g, dtype=torch.uint8)
        x = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
        w = tk.dequant4_t(packed_t, scale_t, zero_t, 128, torch.bfloat16)
        variants = {"cublas": lambda x=x, w=w: x @ w,
                    "dequant": lambda x=x, c=(packed_t, scale_t, zero_t):
                        x @ tk.dequant4_t(*c, 128, torch.bfloat16)}
        for C in widths:
            if C >= N:
                continue
            chunks = split_columns(packed_t, scale_t, zero_t, C)
            bufs = [torch.empty(K, C, device=dev, dtype=torch.bfloat16) for _ in range(2)]
            variants[f"chunked {C}"] = lambda x=x, ch=chunks, b=bufs: chunked(x, ch, unpack, b)
            variants[f"overlap {C}"] = (lambda x=x, ch=chunks, b=bufs:
                                        overlapped(x, ch, unpack, b, side))
        ref = None
        row = {"M": M, "N": N, "K": K}
        for name, fn in variants.items():
            try:
                replay, y = graphed(fn)
                replay()
                torch.cuda.synchronize()
                if name == "dequant":
                    ref = y.clone()
                elif ref is not None and not torch.equal(y, ref):
                    d = (y.float() - ref.float()).abs().max().item()
                    notes.append(f"{name} at N {N}, K {K}: output differs from dequant's "
                                 f"(max abs diff {d:.2e})")
                row[name] = round(do_bench(replay, warmup=5, rep=30, return_mode="median") * 1e3, 2)
            except Exception as e:
                notes.append(f"{name} at N {N}, K {K} failed: {type(e).__name__}: {str(e)[:160]}")
        rows.append(row)
        print(row, flush=True)
    _write(args.out_dir, rows, notes, widths, M, time.time() - t0)


def _buf(bufs: list[torch.Tensor], width: int, i: int) -> torch.Tensor:
    """Buffer i % 2 as a contiguous (K, width) tensor over its first K x width elements (a chunk
    narrower than C, the last, gets a contiguous view, not a column slice)."""
    b = bufs[i % 2]
    return b.view(-1)[: b.shape[0] * width].view(b.shape[0], width)


def chunked(x: torch.Tensor, chunks, unpack, bufs: list[torch.Tensor]) -> torch.Tensor:
    """y = x @ W_hat^T chunk by chunk on the current stream: unpack(chunk, buf) writes the chunk's
    (K, C) bf16 weight into a fixed buffer, then one GEMM; the outputs concatenated."""
    outs = []
    for c in chunks:
        w = _buf(bufs, c[0].shape[1], 0)
        unpack(c, w)
        outs.append(x @ w)
    return torch.cat(outs, 1)


def overlapped(x: torch.Tensor, chunks, unpack, bufs: list[torch.Tensor],
               side: torch.cuda.Stream) -> torch.Tensor:
    """`chunked` with two buffers: chunk i is unpacked on `side` (once the GEMM that last read its
    buffer, chunk i - 2's, is done) while the current stream multiplies chunk i - 1."""
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    ready = [torch.cuda.Event() for _ in chunks]
    free = [torch.cuda.Event() for _ in chunks]
    outs = []
    for i, c in enumerate(chunks):
        w = _buf(bufs, c[0].shape[1], i)
        with torch.cuda.stream(side):
            if i >= 2:
                side.wait_event(free[i - 2])
            unpack(c, w)
            ready[i].record(side)
        main.wait_event(ready[i])
        outs.append(x @ w)
        free[i].record(main)
    main.wait_stream(side)
    return torch.cat(outs, 1)


def _write(out_dir: Path, rows, notes, widths, M, secs) -> None:
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["cublas", "dequant"] + [f"{k} {C}" for C in widths for k in ("chunked", "overlap")]
    with open(out_dir / "bench_w4a16_overlap.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, ["M", "N", "K"] + names)
        wr.writeheader()
        wr.writerows(rows)
    md = [f"# w4a16: chunked and overlapped unpacking ({torch.cuda.get_device_name()}, torch "
          f"{torch.__version__}, Triton {triton.__version__})", "",
          f"Command: `python bench/bench_w4a16_overlap.py --out-dir DIR --m {M} --chunks "
          f"{','.join(map(str, widths))}`; {secs:.0f} s. Times in us, each a CUDA graph replayed "
          "(median of triton.testing.do_bench); x = ratio to cuBLAS bf16 (lower is faster).", "",
          "| M | N | K | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for r in rows:
        c = r.get("cublas")
        cells = [f"{r[n]:.1f}" + (f" ({r[n] / c:.2f}x)" if c and n != "cublas" else "")
                 if n in r else "" for n in names]
        md.append(f"| {r['M']} | {r['N']} | {r['K']} | " + " | ".join(cells) + " |")
    md.append("")
    for arch, block in BLOCKS.items():
        by = {(r["N"], r["K"]): r for r in rows}
        if not all(s in by for s in block):
            continue
        best = lambda r: min((r[n], n) for n in names[1:] if n in r)  # noqa: E731
        tot_c = sum(n * by[s].get("cublas", float("nan")) for s, n in block.items())
        tot_d = sum(n * by[s].get("dequant", float("nan")) for s, n in block.items())
        tot_b = sum(n * best(by[s])[0] for s, n in block.items())
        md.append(f"- {arch} block linears at M {M}: cuBLAS bf16 {tot_c:.0f} us, dequant "
                  f"{tot_d:.0f} us ({tot_d / tot_c:.2f}x), the best variant per shape "
                  f"{tot_b:.0f} us ({tot_b / tot_c:.2f}x: "
                  + ", ".join(f"{s[0]}x{s[1]} {best(by[s])[1]}" for s in block) + ")")
    md += [f"- {n}" for n in notes]
    (out_dir / "bench_w4a16_overlap.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
