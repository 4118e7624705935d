"""Why the compiled forward's GEMMs take longer than the official code's: the GEMM kernels each
forward launches, their GPU time, and the SM clock and board power while it runs (one GPU).

    python bench/bench_gemm_clocks.py --official DIR --out tables/bench_gemm_clocks.md

For LLaDA-8B and Dream-7B shapes (random bf16 weights, batch 8 x 512, full logits) it builds
official-bf16, bf16 (dllmq eager) and bf16-compiled (bench_kernels.py's backends), all resident
at once, then for two rounds and each backend in turn: one profiled forward (torch.profiler:
every cuBLAS kernel by name, its launches and GPU ms), then --calls timed forwards (median wall
ms) while `nvidia-smi -lms 50` samples the SM clock and the board power (medians over the
phase, its first 0.3 s dropped). The backends alternate, so a drift of the GPU's temperature
over the run reaches them alike. "same GEMM kernels as official-bf16" compares the sets of
(kernel name, launches).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import bench_kernels as bk  # noqa: E402
from bench.bench_models import dream_7b, llada_8b  # noqa: E402

BACKENDS = ("official-bf16", "bf16", "bf16-compiled")
GEMM = ("nvjet", "gemm", "cutlass", "xmma")


def gemm_kernels(fn) -> dict[str, tuple[int, float]]:
    """{cuBLAS kernel name: (launches, GPU ms)} of one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    return {e.key: (e.count, e.device_time_total / 1e3) for e in p.key_averages()
            if any(s in e.key.lower() for s in GEMM)}


def timed_ms(fn, calls: int) -> tuple[float, float, float]:
    """(median wall ms, phase start, phase end) of `calls` synchronized calls."""
    t0, ts = time.time(), []
    for _ in range(calls):
        s = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e3, t0, time.time()


def smi_samples(path: Path) -> list[tuple[float, float, float]]:
    """[(epoch s, SM MHz, W)] from nvidia-smi's csv (its timestamps are the host's local time)."""
    out = []
    for line in path.read_text().splitlines():
        p = [q.strip() for q in line.split(",")]
        try:
            t = datetime.datetime.strptime(p[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((t, float(p[1]), float(p[2])))
        except (ValueError, IndexError):
            continue  # a header or a sample nvidia-smi could not read
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tables" / "bench_gemm_clocks.md")
    ap.add_argument("--calls", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gemm_clocks needs a CUDA GPU (and nvidia-smi)")
    dev, dt = torch.device("cuda"), torch.bfloat16
    mods = bk.import_official(a.official, Path(tempfile.mkdtemp()))
    smi_csv = Path(tempfile.mkdtemp()) / "smi.csv"
    with open(smi_csv, "w") as f:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw",
                                "--format=csv,noheader,nounits", "-lms", "50"], stdout=f)
    phases, kernels = [], {}
    g = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for arch, cfg in (("llada", llada_8b()), ("Dream", dream_7b())):
                x = torch.randint(0, cfg.vocab_size - 2, (8, 512), generator=g).to(dev)
                fns = {}
                for b in BACKENDS:
                    fns[b] = bk.forward_fn(bk.build(b, cfg, dev, dt, mods), b, x)
                    fns[b]()
                    fns[b]()  # compiles, warms up
                torch.cuda.synchronize()
                for rnd in range(a.rounds):
                    for b, fn in fns.items():
                        kernels[(arch, b, rnd)] = gemm_kernels(fn)
                        time.sleep(1.0)
                        phases.append((arch, b, rnd, *timed_ms(fn, a.calls)))
                        print(phases[-1], flush=True)
                del fns
                bk.release(dev)
    finally:
        time.sleep(0.3)
        smi.terminate()
        smi.wait()
    samples = smi_samples(smi_csv)
    md = [f"# GEMM kernels, SM clock and power of the 8 x 512 forward ({torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, random weights)", "",
          f"Command: `python bench/bench_gemm_clocks.py --official DIR --calls {a.calls} --rounds "
          f"{a.rounds}`; one run; each phase {a.calls} timed forwards, the backends alternating.", "",
          "| arch | backend | round | forward ms (median) | GEMM GPU ms (one profiled call) | "
          "GEMM launches | same GEMM kernels as official-bf16 | SM clock MHz (median) | "
          "power W (median) | samples |", "|---" * 10 + "|"]
    for arch, b, rnd, ms, t0, t1 in phases:
        k = kernels[(arch, b, rnd)]
        ref = {n: c for n, (c, _) in kernels[(arch, "official-bf16", rnd)].items()}
        sel = [s for s in samples if t0 + 0.3 <= s[0] <= t1]
        clk = f"{statistics.median(s[1] for s in sel):.0f}" if sel else "no samples"
        pw = f"{statistics.median(s[2] for s in sel):.0f}" if sel else "no samples"
        md.append(f"| {arch} | {b} | {rnd} | {ms:.1f} | {sum(t for _, t in k.values()):.1f} | "
                  f"{sum(c for c, _ in k.values())} | "
                  f"{'yes' if {n: c for n, (c, _) in k.items()} == ref else 'no'} | {clk} | {pw} | "
                  f"{len(sel)} |")
    md += ["", "GEMM kernels (round 0): " + "; ".join(
        f"{arch} {b}: " + ", ".join(f"{n[:60]} x{c} {t:.1f} ms" for n, (c, t) in
                                    sorted(kernels[(arch, b, 0)].items(), key=lambda kv: -kv[1][1])[:4])
        for arch in ("llada", "Dream") for b in BACKENDS if (arch, b, 0) in kernels)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
