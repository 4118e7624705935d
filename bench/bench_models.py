"""GPU throughput of dllmq's LLaDA-8B and Dream-7B models: forward, matmul peak, sampler.

    python bench/bench_models.py --out bench_models.md          # CUDA, 8B / 7B shapes, bf16
    python bench/bench_models.py --tiny --out /tmp/bench.md     # CPU, tiny shapes, same code

Models get random weights built directly on the device in the benchmark dtype (a meta model
materialised with `to_empty`, then initialised in place): no checkpoint, no CPU copy. Measured:
- forward tokens/s at batch x seq (default 8 x 512), and its model FLOP/s as a fraction of
- a bf16 matmul peak measured in the same run (n x n x n matmuls, default n = 8192);
- `dllmq.sampling.generate` (LLaDA: prompt 256, gen 256, steps 256, block 32, low-confidence
  remasking; Dream: 256 new tokens, 256 steps, entropy) at batch 1 and 8: ms per denoising
  step and generated tokens/s, next to a bare forward at the same shape (the sampler's
  own overhead is the difference).
Anchors (official code, one H100, measured by the issue author): forward 30k tokens/s at 8 x 512
(59% of 773 TFLOP/s), LLaDA generate (prompt 256, gen 256, block 32) 44 ms/step at batch 1.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dllmq.models import DLLMConfig, tiny_config  # noqa: E402
from dllmq.models.model import DLLM, MODEL_CLASSES  # noqa: E402

SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
ANCHORS = {
    "forward_tokens_per_s": 30_000, "forward_fraction_of_peak": 0.59, "matmul_tflops": 773,
    "llada_generate_ms_per_step_b1": 44,
}


# ---- shapes ---------------------------------------------------------------------------------
def llada_8b() -> DLLMConfig:
    """LLaDA-8B (Base/Instruct) shapes, as the config.json of GSAI-ML/LLaDA-8B-Base gives them."""
    return tiny_config(
        "llada", vocab_size=126464, hidden_size=4096, intermediate_size=12288, num_layers=32,
        num_heads=32, num_kv_heads=32, max_position=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
        qkv_bias=False, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
        bos_token_id=126080, eot_token_id=126348)


def dream_7b() -> DLLMConfig:
    """Dream-7B (Qwen2.5-7B layout) shapes."""
    return tiny_config(
        "Dream", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
        num_heads=28, num_kv_heads=4, max_position=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        qkv_bias=True, mask_token_id=151666, eos_token_id=151643, pad_token_id=151643,
        bos_token_id=151643)


@dataclass(frozen=True)
class BenchShapes:
    batch: int = 8
    seq: int = 512
    matmul_n: int = 8192
    prompt: int = 256
    gen: int = 256
    steps: int = 256
    block: int = 32
    gen_batches: tuple[int, ...] = (1, 8)
    iters: int = 10


TINY = BenchShapes(batch=2, seq=32, matmul_n=128, prompt=8, gen=16, steps=16, block=8,
                   gen_batches=(1, 2), iters=2)


# ---- arithmetic -----------------------------------------------------------------------------
def matmul_params(cfg: DLLMConfig) -> int:
    """Weights used in matmuls per token: every block linear plus the LM head (the embedding is
    a lookup)."""
    C, F_, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * cfg.head_dim
    per_block = C * C * 2 + C * kv * 2 + 3 * C * F_  # q, o, k, v, gate, up, down
    return cfg.num_layers * per_block + C * cfg.table_size


def forward_flops_per_token(cfg: DLLMConfig, seq: int) -> float:
    """2 FLOPs per weight per token, plus attention scores and weighted sum
    (2 x 2 x seq x hidden per layer, bidirectional: every query sees all seq keys)."""
    return 2.0 * matmul_params(cfg) + 4.0 * seq * cfg.hidden_size * cfg.num_layers


# ---- building and timing --------------------------------------------------------------------
def random_model_on(cfg: DLLMConfig, device: torch.device, dtype: torch.dtype,
                    seed: int = 0) -> DLLM:
    """Random model materialised directly on `device` in `dtype` (no CPU copy, no fp32 copy):
    linear/embedding weights N(0, 0.02^2), biases 0, norm weights 1 (build_model's init)."""
    with torch.device("meta"):
        model = MODEL_CLASSES[cfg.model_type](cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, iters: int,
                     warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def median_seconds_per_call(fn: Callable[[], object], device: torch.device, iters: int,
                            warmup: int = 1) -> float:
    """The median over `iters` calls of one call's seconds (each call synchronized), after
    `warmup` untimed calls (compilation, CUDA-graph capture, allocator growth)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def matmul_tflops(n: int, device: torch.device, dtype: torch.dtype, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    s = seconds_per_call(lambda: a @ b, device, iters=5 * iters, warmup=iters)
    return 2 * n**3 / s / 1e12


def random_ids(cfg: DLLMConfig, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Token ids below the special ids (no mask token in prompts)."""
    g = torch.Generator(device).manual_seed(1)
    high = min(cfg.mask_token_id, cfg.pad_token_id, cfg.eos_token_id)
    return torch.randint(0, high, shape, device=device, generator=g)


# ---- measurements ---------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    measurement: str
    shape: str
    value: float
    unit: str
    note: str = ""


@torch.no_grad()
def bench_forward(name: str, model: DLLM, batch: int, seq: int, peak: float | None,
                  iters: int) -> tuple[Row, float]:
    ids = random_ids(model.config, (batch, seq), model.device)
    s = seconds_per_call(lambda: model(ids), model.device, iters)
    tps = batch * seq / s
    tflops = tps * forward_flops_per_token(model.config, seq) / 1e12
    note = f"{tflops:.3g} TFLOP/s model FLOPs"
    if peak:
        note += f", {tflops / peak:.0%} of the matmul peak"
    return Row(name, "forward", f"{batch}x{seq}", tps, "tokens/s", note), s


def sampler_config(model: DLLM, shapes: BenchShapes):
    from dllmq.sampling import DreamSamplerConfig, LLaDASamplerConfig

    if model.config.model_type == "llada":
        return (LLaDASamplerConfig(gen_length=shapes.gen, steps=shapes.steps,
                                   block_length=shapes.block),
                f"LLaDA sampler, block {shapes.block}, low-confidence")
    return (DreamSamplerConfig(max_new_tokens=shapes.gen, steps=shapes.steps, alg="entropy"),
            "Dream sampler, entropy")


@torch.no_grad()
def bench_generate(name: str, model: DLLM, batch: int, shapes: BenchShapes) -> list[Row]:
    from dllmq.sampling import generate

    cfg, what = sampler_config(model, shapes)
    dev = model.device
    prompts = random_ids(model.config, (batch, shapes.prompt), dev)
    warm = type(cfg)(**{**cfg.__dict__, **_short(cfg)})
    generate(model, prompts, warm, generator=torch.Generator(dev).manual_seed(0))
    sync(dev)
    t0 = time.perf_counter()
    out = generate(model, prompts, cfg, generator=torch.Generator(dev).manual_seed(0))
    sync(dev)
    total = time.perf_counter() - t0
    assert out.tokens.shape == (batch, shapes.gen)
    ms_step = 1e3 * total / cfg.steps
    L = shapes.prompt + shapes.gen
    _, fwd_s = bench_forward(name, model, batch, L, None, shapes.iters)
    shape = f"b{batch} p{shapes.prompt} g{shapes.gen} s{cfg.steps}"
    return [
        Row(name, "generate", shape, ms_step, "ms/step",
            f"{what}; bare forward {1e3 * fwd_s:.1f} ms at {batch}x{L} "
            f"(sampler overhead {ms_step - 1e3 * fwd_s:+.1f} ms/step)"),
        Row(name, "generate", shape, batch * shapes.gen / total, "tokens/s", what),
    ]


def _short(cfg) -> dict:
    """A few-step warm-up version of a sampler config (same shapes, same kernels)."""
    if hasattr(cfg, "block_length"):
        return {"steps": cfg.num_blocks}
    return {"steps": 2}


def run(shapes: BenchShapes, device: torch.device, dtype: torch.dtype,
        archs: dict[str, Callable[[], DLLMConfig]], sampler: bool,
        compile_model: bool = False) -> list[Row]:
    peak = matmul_tflops(shapes.matmul_n, device, dtype, shapes.iters)
    n = shapes.matmul_n
    rows = [Row("-", "matmul peak", f"{n}x{n}x{n}", peak, "TFLOP/s", str(dtype))]
    print(_md_row(rows[-1]), flush=True)
    for name, make in archs.items():
        cfg, start = make(), len(rows)
        t0 = time.perf_counter()
        model = random_model_on(cfg, device, dtype)
        sync(device)
        build_s = time.perf_counter() - t0
        if compile_model:  # in place, so the sampler's model.denoise_logits runs compiled too
            model.compile()
        params = sum(p.numel() for p in model.parameters())
        rows.append(Row(name, "build (random, on device)", f"{params / 1e6:,.1f}M params",
                        build_s, "s"))
        rows.append(bench_forward(name, model, shapes.batch, shapes.seq, peak, shapes.iters)[0])
        if sampler:
            for b in shapes.gen_batches:
                rows += bench_generate(name, model, b, shapes)
        if device.type == "cuda":
            rows.append(Row(name, "peak memory", "", torch.cuda.max_memory_allocated(device) / 2**30,
                            "GiB"))
        for r in rows[start:]:
            print(_md_row(r), flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return rows


# ---- output ---------------------------------------------------------------------------------
HEADER = "| model | measurement | shape | value | unit | note |\n|---|---|---|---|---|---|"


def _md_row(r: Row) -> str:
    v = f"{r.value:,.0f}" if r.value >= 100 else f"{r.value:.3g}"
    return f"| {r.model} | {r.measurement} | {r.shape} | {v} | {r.unit} | {r.note} |"


def markdown(rows: list[Row], device: torch.device, dtype: torch.dtype, tiny: bool) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        "# dllmq model benchmark" + (" (--tiny: CPU smoke shapes, numbers mean nothing)" if tiny else ""),
        "",
        f"Device: {name}; torch {torch.__version__}; dtype {dtype}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Random weights built on the device; `python bench/bench_models.py "
        + " ".join(sys.argv[1:]) + "`.",
        "",
        HEADER,
        *(_md_row(r) for r in rows),
        "",
        "Anchors (official code, one H100, issue author): forward "
        f"{ANCHORS['forward_tokens_per_s']:,} tokens/s at 8x512 "
        f"({ANCHORS['forward_fraction_of_peak']:.0%} of {ANCHORS['matmul_tflops']} TFLOP/s); "
        f"LLaDA generate (prompt 256, gen 256, block 32) {ANCHORS['llada_generate_ms_per_step_b1']} "
        "ms/step at batch 1.",
        "Model FLOPs: 2 per matmul weight per token (blocks + LM head) + 4 x seq x hidden per "
        "layer for attention.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description="Throughput of dllmq's LLaDA/Dream models.")
    ap.add_argument("--out", type=Path, required=True, help="Markdown table to write")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test)")
    ap.add_argument("--arch", choices=["llada", "dream", "both"], default="both")
    ap.add_argument("--no-sampler", action="store_true", help="skip the generate timings")
    ap.add_argument("--batch", type=int, help="forward batch (default 8)")
    ap.add_argument("--seq", type=int, help="forward sequence length (default 512)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (warm-up calls absorb compilation)")
    ap.add_argument("--sdpa", choices=["default", *SDPA_BACKENDS], default="default",
                    help="restrict scaled_dot_product_attention to one backend")
    args = ap.parse_args(argv)
    if args.tiny:
        shapes, device, dtype = TINY, torch.device("cpu"), torch.float32
        archs = {"tiny-llada": lambda: tiny_config("llada", max_position=64),
                 "tiny-dream": lambda: tiny_config("Dream", max_position=64)}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; run with --tiny for the CPU smoke version")
        shapes, device, dtype = BenchShapes(), torch.device("cuda"), torch.bfloat16
        archs = {"LLaDA-8B": llada_8b, "Dream-7B": dream_7b}
    overrides = {k: v for k, v in (("batch", args.batch), ("seq", args.seq)) if v}
    shapes = BenchShapes(**{**shapes.__dict__, **overrides})
    if args.arch != "both":
        archs = dict([list(archs.items())[args.arch == "dream"]])
    print(HEADER, flush=True)
    # "default" leaves torch's own backend choice alone (listing all would also enable cuDNN)
    only = sdpa_kernel([SDPA_BACKENDS[args.sdpa]]) if args.sdpa != "default" else nullcontext()
    with only:
        rows = run(shapes, device, dtype, archs, sampler=not args.no_sampler,
                   compile_model=args.compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, device, dtype, args.tiny))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
