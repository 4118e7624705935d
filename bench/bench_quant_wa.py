"""Wall time and peak memory of the weight-activation methods (SmoothQuant, QuaRot, DuQuant) on
8B-shaped LLaDA / 7B-shaped Dream with random weights, and the cost of their fake-quant forward.

    python bench/bench_quant_wa.py --out bench_quant_wa.md                 # CUDA, bf16, 4 blocks
    python bench/bench_quant_wa.py --layers 0 --out bench_quant_wa.md      # all 32 / 28 blocks
    python bench/bench_quant_wa.py --tiny --out /tmp/bench_wa.md           # CPU, tiny shapes

Each cell runs `dllmq.quantize_(model, "w{b}a{b}-<method>", calib)` on a fresh random model with
128 x 2048 random-token calibration (the paper's size), and reports the seconds per block (the
whole-model time scales with the block count; embedding capture is a small fixed cost), the peak
GPU memory, and the ms of one (1 x seqlen) forward before and after (the fake-quant overhead:
online Hadamards, DuQuant's block rotations, per-token quantization). Random weights make the
output error meaningless as accuracy; it is printed only as a finiteness check.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dllmq.models import tiny_config  # noqa: E402
from dllmq.quant import Calibration, quantize_  # noqa: E402

from bench.bench_models import dream_7b, llada_8b, random_model_on, seconds_per_call, sync  # noqa: E402

METHODS = ("smoothquant", "quarot", "duquant")


def _config(arch: str, tiny: bool, layers: int):
    if tiny:
        cfg = tiny_config(arch, hidden_size=64, intermediate_size=256, num_heads=4,
                          num_kv_heads=4 if arch == "llada" else 2)
    else:
        cfg = llada_8b() if arch == "llada" else dream_7b()
    return cfg.replace(num_layers=layers) if layers else cfg


def bench_cell(arch: str, method: str, bits: int, args, device, dtype) -> dict:
    cfg = _config(arch, args.tiny, args.layers)
    model = random_model_on(cfg, device, dtype, seed=0)
    calib = Calibration.random(cfg.vocab_size, args.nsamples, args.seqlen, seed=0,
                               batch_size=args.batch_size, progress=False)
    ids = calib.input_ids[:1].to(device)
    with torch.no_grad():
        ref = model(ids).float()
        fp_ms = 1e3 * seconds_per_call(lambda: model(ids), device, iters=3, warmup=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    summary = quantize_(model, f"w{bits}a{bits}-{method}", calib, progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    with torch.no_grad():
        out = model(ids).float()
        q_ms = 1e3 * seconds_per_call(lambda: model(ids), device, iters=3, warmup=1)
    rel = ((out - ref).norm() / ref.norm()).item()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(arch=arch, method=method, bits=bits, blocks=cfg.num_layers, seconds=seconds,
                per_block=seconds / cfg.num_layers, split=", ".join(
                    f"{k} {v:.1f}" for k, v in summary.seconds.items()),
                peak_gib=peak, fp_ms=fp_ms, q_ms=q_ms, rel_err=rel)


def invariance_row(arch: str, method: str, args, device) -> dict:
    """Transform only (no quantization), fp32, one block at the real widths, norm weights and
    biases randomised: the largest logit change relative to the largest logit."""
    from dllmq.quant.duquant import DuQuantConfig
    from dllmq.quant.quarot import QuaRotConfig
    from dllmq.quant.smoothquant import SmoothQuantConfig

    cfg = _config(arch, args.tiny, 1)
    model = random_model_on(cfg, device, torch.float32, seed=0)
    g = torch.Generator(device).manual_seed(1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "norm" in name:
                prm.copy_(1 + 0.5 * torch.randn(prm.shape, generator=g, device=device))
            elif name.endswith(".bias"):
                prm.copy_(0.05 * torch.randn(prm.shape, generator=g, device=device))
    calib = Calibration.random(cfg.vocab_size, 4, min(args.seqlen, 512), seed=0, progress=False)
    ids = calib.input_ids[:2].to(device)
    with torch.no_grad():
        ref = model(ids)
    config = {"smoothquant": SmoothQuantConfig(act=None), "quarot": QuaRotConfig(act=None),
              "duquant": DuQuantConfig(act=None)}[method]
    quantize_(model, (config,), calib, progress=False)
    with torch.no_grad():
        out = model(ids)
    return dict(arch=arch, method=method, hidden=cfg.hidden_size, ffn=cfg.intermediate_size,
                change=((out - ref).abs().max() / ref.abs().max()).item())


def markdown(rows: list[dict], device, dtype, args, inv: list[dict] | None = None) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [f"# Weight-activation quantization cost ({name}, {dtype}, calibration "
             f"{args.nsamples} x {args.seqlen}{', tiny shapes' if args.tiny else ''})", "",
             "| model | recipe | blocks | total s | s / block | split (s) | peak GiB | "
             "forward ms FP | forward ms quant | rel. logit change |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | w{r['bits']}a{r['bits']}-{r['method']} | {r['blocks']} | "
                     f"{r['seconds']:.1f} | {r['per_block']:.2f} | {r['split']} | "
                     f"{r['peak_gib']:.1f} | {r['fp_ms']:.1f} | {r['q_ms']:.1f} | {r['rel_err']:.3g} |")
    if inv:
        lines += ["", "Full-precision invariance at these widths (fp32, one block, transform only):",
                  "", "| model | method | hidden | FFN | max logit change / max logit |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['method']} | {r['hidden']} | {r['ffn']} | {r['change']:.2e} |"
                  for r in inv]
    lines += ["", "Command: `python bench/bench_quant_wa.py " + " ".join(sys.argv[1:]) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (a smoke test)")
    p.add_argument("--arch", choices=("llada", "Dream", "both"), default="both")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--bits", default="4", help="comma list of W=A bit widths (8, 4)")
    p.add_argument("--layers", type=int, default=4, help="blocks to build (0: the model's own)")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--check", action="store_true",
                   help="also check FP invariance of each transform at the real widths (fp32)")
    args = p.parse_args(argv)
    if args.tiny:
        args.nsamples, args.seqlen = min(args.nsamples, 4), min(args.seqlen, 32)
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; run with --tiny on CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    archs = ("llada", "Dream") if args.arch == "both" else (args.arch,)
    rows = []
    for arch in archs:
        for method in methods:
            for bits in (int(b) for b in args.bits.split(",")):
                rows.append(bench_cell(arch, method, bits, args, device, dtype))
                print(rows[-1], flush=True)
    inv = []
    if args.check:
        for arch in archs:
            for method in methods:
                inv.append(invariance_row(arch, method, args, device))
                print(inv[-1], flush=True)
    text = markdown(rows, device, dtype, args, inv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
