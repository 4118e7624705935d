"""Wall time and peak GPU memory of every quantization method on an 8B-shaped LLaDA, and GPTQ's
time per block against the reference.

    python bench/bench_quant.py --out bench_quant.md                      # CUDA, bf16, 4 blocks
    python bench/bench_quant.py --layers 0 --out bench_quant.md           # all 32 blocks
    python bench/bench_quant.py --methods gptq --nsamples 32 --out g.md   # one method, fewer samples
    python bench/bench_quant.py --tiny --out /tmp/bench_quant.md          # CPU, tiny shapes

Each method runs `dllmq.quantize_(model, recipe, calib)` on a fresh random bf16 model built on
the GPU (LLaDA-8B shapes: hidden 4096, FFN 12288, 32 heads), with random-token calibration of
the recipe's size (GPTQ and the weight-activation methods: 128 x 2048; AWQ: 128 x 512), capped
by --nsamples. Reported per method: total seconds, seconds per block (whole-model time scales
with the block count), peak GPU memory, and the recipe's mean layer error where the method
computes one (GPTQ). For GPTQ also the time inside `gptq_quantize` per block (the solver alone,
no calibration forwards or Hessian accumulation): the issue's anchor is the reference
IST-DASLab `fasterquant` (blocksize 128, group 128, one H100) at 14.1 s per LLaDA block of 7
linears. dllmq stacks q/k/v and gate/up (one solve per shared Hessian), so a block is 4 solves;
`--gptq-unstacked` times the 7 separate solves as the reference does them.
Random weights make the accuracy meaningless; the error column only shows the runs are sane.
"""

from __future__ import annotations

import argparse
import csv
import gc
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dllmq.quant.gptq as gptq_mod  # noqa: E402
from dllmq.models import tiny_config  # noqa: E402
from dllmq.quant import RECIPES, Calibration, quantize_  # noqa: E402

from bench.bench_models import llada_8b, random_model_on  # noqa: E402

METHODS = {"rtn": "w4a16g128-rtn", "gptq": "w4a16g128-gptq", "awq": "w4a16g128-awq",
           "smoothquant": "w8a8-smoothquant", "quarot": "w4a4-quarot", "duquant": "w4a4-duquant"}
ANCHOR_GPTQ_S_PER_BLOCK = 14.1  # reference fasterquant, LLaDA block of 7 linears, one H100


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SolverTimer:
    """Wraps dllmq.quant.gptq.gptq_quantize to sum the seconds spent inside it."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.calls = device, 0.0, 0
        self._orig = gptq_mod.gptq_quantize

    def __enter__(self):
        def timed(*a, **kw):
            sync(self.device)
            t0 = time.perf_counter()
            out = self._orig(*a, **kw)
            sync(self.device)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            return out

        gptq_mod.gptq_quantize = timed
        return self

    def __exit__(self, *exc):
        gptq_mod.gptq_quantize = self._orig


def run_method(name: str, cfg, device, dtype, nsamples: int, vocab: int) -> dict:
    recipe = METHODS[name]
    r = RECIPES[recipe]
    n = min(nsamples, r.nsamples)
    calib = Calibration.random(vocab, n, r.seqlen, seed=0, batch_size=8)
    model = random_model_on(cfg, device, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with SolverTimer(device) as timer:
        sync(device)
        t0 = time.perf_counter()
        summary = quantize_(model, recipe, calib, progress=True)
        sync(device)
        secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    err = (sum(summary.errors.values()) / len(summary.errors)) if summary.errors else float("nan")
    row = {"method": name, "recipe": recipe, "calib": f"{n}x{r.seqlen}", "blocks": cfg.num_layers,
           "seconds": secs, "s_per_block": secs / cfg.num_layers,
           "peak_GiB": peak / 2**30, "model_GiB": base / 2**30,
           "quantized_linears": sum(summary.weight_counts.values()),
           "mean_layer_error": err,
           "solver_s_per_block": timer.seconds / cfg.num_layers if timer.calls else float("nan")}
    del model
    return row


def gptq_unstacked(cfg, device, dtype, nsamples: int) -> dict:
    """The 7 linears of one block solved one by one (the reference's structure), Hessians from
    random inputs of the calibration's token count; solver time only."""
    from dllmq.quant.gptq import gptq_quantize, hessian
    from dllmq.quant.primitives import QuantSpec

    C, F_ = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_kv_heads * cfg.head_dim
    shapes = [(C, C), (kv, C), (kv, C), (C, C), (F_, C), (F_, C), (C, F_)]  # (out, in)
    g = torch.Generator(device=device).manual_seed(0)
    tokens = min(nsamples * 2048, 16384)
    Hs = {}
    for inp in {s[1] for s in shapes}:
        x = torch.randn(tokens, inp, generator=g, device=device, dtype=torch.float32)
        Hs[inp] = hessian(x)
    spec = QuantSpec(4, sym=False, granularity="group", group_size=min(128, C))
    total = 0.0
    for out, inp in shapes:
        W = (torch.randn(out, inp, generator=g, device=device) * 0.02).to(dtype)
        sync(device)
        t0 = time.perf_counter()
        gptq_quantize(W, Hs[inp], spec, blocksize=128, damp=0.01)
        sync(device)
        total += time.perf_counter() - t0
    return {"method": "gptq (7 separate solves, one block)", "solver_s_per_block": total}


def table(rows: list[dict], extra: dict | None, device_name: str, args) -> str:
    lines = [f"# dllmq quantization benchmark ({device_name}, torch {torch.__version__})", "",
             f"Command: `python bench/bench_quant.py {' '.join(sys.argv[1:])}`  ",
             f"Model: {'tiny' if args.tiny else 'LLaDA-8B shapes'}, {args.dtype}, random weights",
             "", "| method | recipe | calib | blocks | s total | s/block | GPTQ solver s/block "
             "| peak GiB | model GiB | linears | mean layer err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['recipe']} | {r['calib']} | {r['blocks']} | "
                     f"{r['seconds']:.1f} | {r['s_per_block']:.2f} | {r['solver_s_per_block']:.2f} | "
                     f"{r['peak_GiB']:.1f} | {r['model_GiB']:.1f} | {r['quantized_linears']} | "
                     f"{r['mean_layer_error']:.3g} |")
    lines += ["", f"Anchor: reference fasterquant {ANCHOR_GPTQ_S_PER_BLOCK} s per LLaDA block "
              "(7 linears, blocksize 128, group 128, one H100)."]
    if extra:
        lines.append(f"dllmq GPTQ, 7 separate solves of one block: {extra['solver_s_per_block']:.2f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="Markdown table (a .csv is written beside it)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    ap.add_argument("--layers", type=int, default=4, help="blocks in the model (0 = all 32)")
    ap.add_argument("--nsamples", type=int, default=128, help="calibration samples (cap)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--gptq-unstacked", action="store_true", help="also time 7 separate solves")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shapes (a smoke test)")
    args = ap.parse_args(argv)

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        cfg = tiny_config("llada", hidden_size=64, intermediate_size=256, num_layers=2,
                          max_position=4096)
        args.dtype = "float32"
        args.nsamples = min(args.nsamples, 2)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; run with --tiny on CPU")
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        torch.backends.cuda.matmul.allow_tf32 = False  # as the reference GPTQ
        cfg = llada_8b()
        if args.layers:
            cfg = cfg.replace(num_layers=args.layers)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the 7-solve timing first (seconds), then one method at a time; the table is rewritten after
    # each, so a run cut short by a time limit keeps every finished row
    extra = gptq_unstacked(cfg, device, dtype, args.nsamples) if args.gptq_unstacked else None
    rows = []
    for m in methods:
        row = run_method(m, cfg, device, dtype, args.nsamples, cfg.vocab_size - 2)
        rows.append(row)
        print(f"{m}: {row['seconds']:.1f} s, {row['s_per_block']:.2f} s/block, "
              f"peak {row['peak_GiB']:.1f} GiB", flush=True)
        write_outputs(rows, extra, device_name, args)
    print(args.out.read_text())


def write_outputs(rows: list[dict], extra: dict | None, device_name: str, args) -> None:
    tmp = args.out.with_name(args.out.name + ".part")
    tmp.write_text(table(rows, extra, device_name, args))
    tmp.replace(args.out)
    csv_path = args.out.with_suffix(".csv")
    tmp = csv_path.with_name(csv_path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(csv_path)


if __name__ == "__main__":
    main()
