"""dllmq against the official LLaDA code, same random 8B-shaped weights, same GPU, one run.

    python bench/bench_official.py --official DIR --out tables/bench_official.md

DIR holds the official files (never committed to this repo): modeling_llada.py and
configuration_llada.py (FelixMessi/QDLM DuQuant/models/), llada_generate.py and
llada_get_log_likelihood.py (ML-GSAI/LLaDA generate.py, get_log_likelihood.py). Measured, each
for the official code and for dllmq on the identical state dict (bf16):
- forward tokens/s at batch 8 x 512;
- generation, prompt 256 + gen 256, 256 steps, block 32, low-confidence remasking, batch 1:
  ms per denoising step (and dllmq at batch 8: generated tokens/s);
- likelihood, mc_num 128, batch 32, prefix 100 + target 20 tokens: s per request (official
  `get_log_likelihood`, one request at a time; dllmq `loglikelihood`, requests packed).
Before timing, the two models' logits on one input are compared (max abs diff printed).
--tiny runs the same code on CPU with tiny shapes.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dllmq.likelihood import loglikelihood  # noqa: E402
from dllmq.models import tiny_config  # noqa: E402
from dllmq.models.model import LLaDAModel  # noqa: E402
from dllmq.sampling import LLaDASamplerConfig, generate  # noqa: E402

from bench.bench_models import llada_8b  # noqa: E402


def import_official(d: Path, tmp: Path):
    pkg = tmp / "official_llada"
    pkg.mkdir()
    for f in ("modeling_llada.py", "configuration_llada.py", "llada_generate.py",
              "llada_get_log_likelihood.py"):
        shutil.copy(d / f, pkg / f)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    m = importlib.import_module("official_llada.modeling_llada")
    c = importlib.import_module("official_llada.configuration_llada")
    g = importlib.import_module("official_llada.llada_generate")
    ll = importlib.import_module("official_llada.llada_get_log_likelihood")
    return m, c, g, ll


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps=3, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    sync(device)
    return (time.perf_counter() - t) / reps, out


def build_pair(mod, conf, cfg, device, dtype, seed=0):
    with torch.device(device):
        ours = LLaDAModel(cfg).to(dtype)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)
    ours.eval()
    hf = cfg.to_hf()
    hf.update(init_device="cpu", use_cache=False)
    oc = conf.LLaDAConfig(**hf)
    oc.use_cache = False
    with torch.device("meta"):
        official = mod.LLaDAModelLM(oc, init_params=False)
    official.load_state_dict(ours.state_dict(), assign=True, strict=True)
    official.eval()
    return ours, official


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--requests", type=int, default=32, help="likelihood requests for dllmq")
    a = ap.parse_args(argv)
    device = torch.device("cpu" if a.tiny else "cuda")
    dtype = torch.float32 if a.tiny else torch.bfloat16
    if a.tiny:
        cfg = tiny_config("llada", vocab_size=128, hidden_size=64, intermediate_size=192,
                          num_layers=2, num_heads=4, num_kv_heads=4, max_position=1024,
                          mask_token_id=127, eos_token_id=126, pad_token_id=126)
        fwd_b, fwd_l, P, G, blk, mc, bs, pre, tgt = 2, 64, 16, 16, 8, 8, 4, 10, 4
    else:
        cfg = llada_8b()
        fwd_b, fwd_l, P, G, blk, mc, bs, pre, tgt = 8, 512, 256, 256, 32, 128, 32, 100, 20
    with tempfile.TemporaryDirectory() as tmp:
        mod, conf, gen_mod, ll_mod = import_official(a.official, Path(tmp))
        ours, official = build_pair(mod, conf, cfg, device, dtype)
        V = cfg.vocab_size - 2
        gi = torch.Generator().manual_seed(1)
        x = torch.randint(0, V, (fwd_b, fwd_l), generator=gi).to(device)
        rows = []
        with torch.no_grad():
            diff = (ours(x[:1]).float() - official(x[:1]).logits.float()).abs().max().item()
            rows.append((f"logits max abs diff ours vs official (1 x {fwd_l}, {dtype})", f"{diff:.3g}", ""))
            t_o, _ = timed(lambda: official(x).logits, device)
            t_d, _ = timed(lambda: ours(x), device)
        n = fwd_b * fwd_l
        rows.append((f"forward tokens/s ({fwd_b} x {fwd_l})", f"{n / t_o:,.0f}", f"{n / t_d:,.0f}"))

        prompt = torch.randint(0, V, (1, P), generator=gi).to(device)
        steps = G
        t_o, _ = timed(lambda: gen_mod.generate(official, prompt, steps=steps, gen_length=G,
                                                block_length=blk, mask_id=cfg.mask_token_id),
                       device, reps=1)
        scfg = LLaDASamplerConfig(gen_length=G, steps=steps, block_length=blk)
        t_d, _ = timed(lambda: generate(ours, prompt, scfg), device, reps=1)
        rows.append((f"generate ms/step, batch 1 (prompt {P}, gen {G}, block {blk})",
                     f"{1000 * t_o / steps:.1f}", f"{1000 * t_d / steps:.1f}"))
        prompts8 = torch.randint(0, V, (8, P), generator=gi).to(device)
        t_d8, _ = timed(lambda: generate(ours, prompts8, scfg), device, reps=1)
        rows.append(("generate, batch 8: ms/step; generated tokens/s", "",
                     f"{1000 * t_d8 / steps:.1f}; {8 * G / t_d8:,.0f}"))

        reqs = [(torch.randint(0, V, (pre,), generator=gi).tolist(),
                 torch.randint(0, V, (tgt,), generator=gi).tolist()) for _ in range(a.requests)]
        n_off = 2 if not a.tiny else 2
        t_o, _ = timed(lambda: [ll_mod.get_log_likelihood(
            official, torch.tensor(c, device=device), torch.tensor(t, device=device), mc_num=mc,
            batch_size=bs, mask_id=cfg.mask_token_id) for c, t in reqs[:n_off]], device, reps=1)
        t_d, _ = timed(lambda: loglikelihood(ours, reqs, mc_num=mc, batch_size=bs,
                                             rows_per_forward=4 * bs if not a.tiny else bs),
                       device, reps=1)
        rows.append((f"likelihood s/request (mc {mc}, batch {bs}, {pre}+{tgt} tokens)",
                     f"{t_o / n_off:.3f}", f"{t_d / len(reqs):.3f}"))
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    md = [f"# dllmq vs the official LLaDA code ({'tiny shapes' if a.tiny else '8B shapes'}, {dev}, {dtype})",
          "", "Command: `python bench/bench_official.py --official DIR --out ...`; same random weights "
          "in both; each number measured in this run.", "",
          "| measure | official | dllmq |", "|---|---|---|"]
    md += [f"| {m} | {o} | {d} |" for m, o, d in rows]
    text = "\n".join(md) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)


if __name__ == "__main__":
    main()
