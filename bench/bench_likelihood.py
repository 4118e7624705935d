"""Seconds per likelihood request for `dllmq.likelihood.loglikelihood` under different packings.

    python bench/bench_likelihood.py --out bench_likelihood.md         # CUDA, LLaDA-8B shapes, bf16
    python bench/bench_likelihood.py --model dream --out dream.md      # Dream-7B shapes
    python bench/bench_likelihood.py --tiny --out /tmp/bench_ll.md     # CPU smoke test, same code

Random weights built on the device (bench_models.random_model_on). Workloads: "fixed"
(prefix 100 + target 20 tokens, the setting where the official get_log_likelihood takes
1.42 s/request on one H100 at mc_num 128, batch 32) and "mixed" (prefix 50-200, target 5-40).
Modes: "per request" (one loglikelihood call per request, rows_per_forward = batch_size: the
official call structure), "rows R" (all requests in one call, R rows per model call) and
"budget T" (rows chosen to fill T tokens per call, the default T = 16384). Every mode draws
the same masks (same seed), so the estimates must agree up to bf16 batch-shape noise: the
last column gives the max relative difference to the first mode.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dllmq.likelihood import loglikelihood  # noqa: E402
from dllmq.models import tiny_config  # noqa: E402

from bench.bench_models import dream_7b, llada_8b, random_model_on, sync  # noqa: E402


def workload(kind: str, n: int, vocab_high: int, tiny: bool) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(0)
    scale = 0.1 if tiny else 1.0

    def ids(k: int) -> list[int]:
        return torch.randint(0, vocab_high, (max(1, int(k * scale)),), generator=g).tolist()

    if kind == "fixed":
        return [(ids(100), ids(20)) for _ in range(n)]
    lens = torch.randint(0, 10**6, (n, 2), generator=g)
    return [(ids(50 + int(a) % 151), ids(5 + int(b) % 36)) for a, b in lens.tolist()]


def timed(fn, device: torch.device):
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - t0, out, peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", choices=("llada", "dream"), default="llada")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shapes (smoke test)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--mc-num", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args(argv)
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if a.tiny:
        cfg = tiny_config("llada" if a.model == "llada" else "Dream", max_position=512)
        a.requests, a.mc_num, a.batch_size = 4, 8, 4
    else:
        cfg = llada_8b() if a.model == "llada" else dream_7b()
    model = random_model_on(cfg, device, dtype)
    high = min(cfg.mask_token_id, cfg.pad_token_id, cfg.eos_token_id)
    bs, mc = a.batch_size, a.mc_num
    modes = [("per request", None, None), (f"rows {bs}", bs, None), (f"rows {4 * bs}", 4 * bs, None),
             ("budget 8192", None, 8192), ("budget 16384", None, 16384),
             ("budget 32768", None, 32768)]
    warm = workload("fixed", 1, high, a.tiny)
    loglikelihood(model, warm, mc, bs, generator=torch.Generator().manual_seed(0))
    lines = []
    for kind in ("fixed", "mixed"):
        reqs = workload(kind, a.requests, high, a.tiny)
        n_tok = sum((len(c) + len(t)) for c, t in reqs) * (mc // bs) * bs
        first = None
        for name, rows, budget in modes:
            def run(rows=rows, budget=budget, name=name, reqs=reqs):
                gen = torch.Generator().manual_seed(1)
                if name == "per request":
                    return [v for r in reqs for v in loglikelihood(
                        model, [r], mc, bs, generator=gen, rows_per_forward=bs)]
                return loglikelihood(model, reqs, mc, bs, generator=gen, rows_per_forward=rows,
                                     tokens_per_forward=budget or 16384)
            secs, vals, peak = timed(run, device)
            first = first or vals
            diff = max(abs(v - f) / max(abs(f), 1e-9) for v, f in zip(vals, first, strict=True))
            lines.append(f"| {kind} | {name} | {secs / len(reqs):.3f} | {n_tok / secs:,.0f} | "
                         f"{peak:.1f} | {diff:.1e} |")
            print(lines[-1], flush=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    text = "\n".join([
        f"# Likelihood packing, {a.model} {'tiny' if a.tiny else 'full-size'} shapes, {dev}, {dtype}",
        "", f"mc_num {mc}, batch_size {bs}, {a.requests} requests per workload; "
        f"command: `python bench/bench_likelihood.py {' '.join(argv or sys.argv[1:])}`", "",
        "| workload | mode | s/request | tokens/s | peak GiB | max rel diff |",
        "|---|---|---|---|---|---|", *lines, ""])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
