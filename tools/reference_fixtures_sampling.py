"""Build tests/fixtures/sampling/ from the OFFICIAL decoding and likelihood code.

Run with the reference environment (torch 2.13, transformers 4.46.2):

    /work/refenv/bin/python tools/reference_fixtures_sampling.py \
        --qdlm /work/.mirror/FelixMessi+QDLM/repo --llada /work/.mirror/ML-GSAI+LLaDA/repo

Both arguments are (bare) git clones; files are read with `git show HEAD:<path>` into a temporary
package and imported from there, so nothing of the official code enters this repository:
- model code: QDLM `DuQuant/models/{modeling,configuration}_{llada,dream}.py`,
  `dream_generation_utils.py` (Dream's `diffusion_generate` / `_sample`);
- LLaDA `generate.py` and `get_log_likelihood.py`. generate.py hard-codes LLaDA-8B's EOS
  (126081) and EoT (126348) ids; for the tiny model these two literals are replaced by the tiny
  ids before the source is executed (the only change);
- Dream's likelihood: the methods `_forward_process`, `get_logits`, `_eval_target_nll_mc` of
  QDLM `lm-evaluation-harness/lm_eval/models/dream_base.py`, and LLaDA's lm-eval
  `suffix_greedy_prediction` / `get_logits` (QDLM `.../models/llada.py`), taken out of their
  classes with `ast` (their modules import lm_eval/accelerate) and bound to a small stand-in.

Writes: llada/ and dream/ (official save_pretrained: config.json + model.safetensors, which
`dllmq.models.load` reads), cases.json (settings, prompts, seeds, reference tokens),
likelihood.json (requests, settings, seeds, reference values and greedy flags).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "official_sampling_ref"
MODEL_FILES = ("modeling_llada.py", "configuration_llada.py", "modeling_dream.py",
               "configuration_dream.py", "dream_generation_utils.py")

VOCAB, MASK, EOS, EOT, BOS = 96, 95, 94, 92, 93
LLADA_CONFIG = dict(
    model_type="llada", architectures=["LLaDAModelLM"], d_model=32, n_heads=4, n_kv_heads=4,
    n_layers=2, mlp_ratio=4, mlp_hidden_size=64, max_sequence_length=128, vocab_size=VOCAB,
    embedding_size=VOCAB, block_type="llama", rope=True, rope_full_precision=True,
    rope_theta=500000.0, layer_norm_type="rms", layer_norm_with_affine=True, rms_norm_eps=1e-5,
    activation_type="silu", alibi=False, flash_attention=False, attention_layer_norm=False,
    include_bias=False, include_qkv_bias=False, bias_for_layer_norm=False, scale_logits=False,
    weight_tying=False, input_emb_norm=False, block_group_size=1, attention_dropout=0.0,
    residual_dropout=0.0, embedding_dropout=0.0, init_device="cpu", mask_token_id=MASK,
    eos_token_id=EOS, pad_token_id=EOS, eot_token_id=EOT, use_cache=False,
)
DREAM_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128,
    rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_cache=False,
    attention_dropout=0.0, mask_token_id=MASK, pad_token_id=EOS, eos_token_id=EOS,
    bos_token_id=BOS, architectures=["DreamModel"],
)

# ---- the cases -------------------------------------------------------------------------------
LLADA_PROMPTS = [[5, 17, 33, 2, 48, 60, 11], [70, 3, 3, 21, 88, 9, 40]]  # equal length: LLaDA
# ignores the attention mask, so only unpadded batches are comparable
LLADA_SINGLE = [[12, 7, 81, 30, 6]]
LLADA_SHAPES = [dict(gen_length=16, block_length=16, steps=8),
                dict(gen_length=16, block_length=8, steps=8),
                dict(gen_length=16, block_length=4, steps=12),  # 3 steps per 4-token block
                dict(gen_length=16, block_length=16, steps=5)]  # uneven: 4,3,3,3,3


def llada_cases() -> list[dict]:
    cases = []
    for remasking in ("low_confidence", "random"):
        for temperature in (0.0, 0.7):
            for cfg_scale in (0.0, 1.5):
                for shape in LLADA_SHAPES:
                    cases.append(dict(prompts=LLADA_PROMPTS, remasking=remasking,
                                      temperature=temperature, cfg_scale=cfg_scale, **shape))
    for t in (0.0, 0.7):
        for flags in (dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True),
                      dict(logits_eos_inf=True, confidence_eos_eot_inf=True)):
            cases.append(dict(prompts=LLADA_PROMPTS, remasking="low_confidence", temperature=t,
                              cfg_scale=0.0, **LLADA_SHAPES[1], **flags))
    cases.append(dict(prompts=LLADA_SINGLE, remasking="low_confidence", temperature=0.0,
                      cfg_scale=0.0, **LLADA_SHAPES[1]))
    for i, c in enumerate(cases):
        c.setdefault("logits_eos_inf", False)
        c.setdefault("confidence_eos_eot_inf", False)
        c["seed"] = 1000 + i
    return cases


DREAM_PROMPTS = [[BOS, 5, 17, 33, 2, 48, 60, 11], [BOS, 70, 3, 21], [BOS, 12, 7, 81, 30, 6]]
DREAM_SINGLE = [[BOS, 70, 3, 21]]


def dream_cases() -> list[dict]:
    cases = []
    for alg in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        for temperature, top_p, top_k in ((0.0, None, None), (0.8, None, None), (0.8, 0.9, None),
                                          (0.8, None, 5), (0.8, 0.95, 8)):
            cases.append(dict(prompts=DREAM_PROMPTS, alg=alg, temperature=temperature,
                              top_p=top_p, top_k=top_k, alg_temp=None, steps=8))
    cases.append(dict(prompts=DREAM_PROMPTS, alg="maskgit_plus", temperature=0.0, top_p=None,
                      top_k=None, alg_temp=0.5, steps=8))
    cases.append(dict(prompts=DREAM_PROMPTS, alg="entropy", temperature=0.8, top_p=None,
                      top_k=None, alg_temp=0.3, steps=6))
    cases.append(dict(prompts=DREAM_SINGLE, alg="entropy", temperature=0.0, top_p=None,
                      top_k=None, alg_temp=None, steps=16))
    cases.append(dict(prompts=DREAM_SINGLE, alg="origin", temperature=0.5, top_p=0.9,
                      top_k=None, alg_temp=None, steps=5))
    for i, c in enumerate(cases):
        c.update(max_new_tokens=12, eps=1e-3, seed=2000 + i)
    return cases


LL_REQUESTS = [([BOS, 5, 17, 33, 2, 48, 60, 11, 9], [40, 41, 7, 22, EOS]),
               ([BOS, 70, 3, 21], [8, 8, 19, 60, 2, 77, 5, EOS]),
               ([BOS, 12, 7, 81, 30, 6, 1, 2, 3, 4, 5], [66, EOS]),
               ([BOS, 44], [30, 31, 32, EOS])]
LL_SETTINGS = [dict(mc_num=8, batch_size=4, cfg_scale=0.0, seed=31),
               dict(mc_num=12, batch_size=3, cfg_scale=0.0, seed=32),
               dict(mc_num=8, batch_size=4, cfg_scale=1.0, seed=33)]


# ---- importing the official code -------------------------------------------------------------
def git_show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


def import_official(qdlm: Path, llada: Path, tmp: Path):
    pkg = tmp / PACKAGE
    pkg.mkdir()
    for name in MODEL_FILES:
        (pkg / name).write_text(git_show(qdlm, f"DuQuant/models/{name}"))
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    mods = {n[:-3]: importlib.import_module(f"{PACKAGE}.{n[:-3]}") for n in MODEL_FILES}
    gen_src = git_show(llada, "generate.py").replace("126081", str(EOS)).replace("126348", str(EOT))
    mods["generate"] = exec_module("llada_generate", gen_src)
    mods["get_log_likelihood"] = exec_module("llada_ll", git_show(llada, "get_log_likelihood.py"))
    mods["dream_base"] = class_methods(
        git_show(qdlm, "lm-evaluation-harness/lm_eval/models/dream_base.py"), "DreamBase",
        ("_forward_process", "get_logits", "_eval_target_nll_mc"))
    mods["llada_lm"] = class_methods(
        git_show(qdlm, "lm-evaluation-harness/lm_eval/models/llada.py"), "LLaDAEvalHarness",
        ("get_logits", "suffix_greedy_prediction"))
    return mods


def exec_module(name: str, src: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(src, name, "exec"), mod.__dict__)
    return mod


def class_methods(src: str, cls_name: str, names: tuple[str, ...]) -> type:
    """A class holding only the named methods of `cls_name` in `src` (module imports skipped)."""
    tree = ast.parse(src)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
    if cls is None:  # the LLaDA harness class name differs between versions: take the one with
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)  # the methods
                   and {f.name for f in n.body if isinstance(f, ast.FunctionDef)} >= set(names))
    funcs = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name in names]
    if len(funcs) != len(names):
        raise SystemExit(f"{cls.name}: found {[f.name for f in funcs]}, need {names}")
    ns = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), cls.name, "exec"), ns)
    return type(cls.name, (), {n: ns[n] for n in names})


def seed_weights(model: torch.nn.Module, seed: int) -> None:
    """O(1) logits so argmax and confidences are well separated: linear N(0, 1/fan_in),
    embeddings N(0, 1), norm weights 1 + N(0, 0.01), biases N(0, 0.01)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def favour_special_tokens(lm_head: torch.Tensor, seed: int) -> None:
    """Give EOS, EoT and MASK the output rows of frequent tokens (plus noise), so that the
    fixtures exercise logits_eos_inf / confidence_eos_eot_inf and a predicted [MASK]
    (which stays masked and eligible later); with random rows they are never predicted."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for dst, src in ((EOS, 20), (EOT, 6), (MASK, 70)):
            noise = torch.randn(lm_head.shape[1], generator=g)
            lm_head[dst] = lm_head[src] + 0.3 * lm_head[src].norm() / lm_head.shape[1] ** 0.5 * noise


# ---- running the official code ---------------------------------------------------------------
def run_llada(gen, model, case: dict) -> list[list[int]]:
    prompt = torch.tensor(case["prompts"])
    torch.manual_seed(case["seed"])
    out = gen.generate(model, prompt, attention_mask=torch.ones_like(prompt),
                       steps=case["steps"], gen_length=case["gen_length"],
                       block_length=case["block_length"], temperature=case["temperature"],
                       cfg_scale=case["cfg_scale"], remasking=case["remasking"], mask_id=MASK,
                       logits_eos_inf=case["logits_eos_inf"],
                       confidence_eos_eot_inf=case["confidence_eos_eot_inf"])
    return out[:, prompt.shape[1]:].tolist()


def run_dream(gu, model, case: dict) -> list[list[int]]:
    P = max(len(p) for p in case["prompts"])
    ids = torch.tensor([[EOS] * (P - len(p)) + p for p in case["prompts"]])
    attn = ids.ne(EOS)  # as QDLM's dream_base wrapper: pad positions
    gcfg = gu.DreamGenerationConfig(mask_token_id=MASK, pad_token_id=EOS, eos_token_id=EOS,
                                    bos_token_id=BOS, max_new_tokens=case["max_new_tokens"],
                                    steps=case["steps"], eps=case["eps"], alg=case["alg"],
                                    alg_temp=case["alg_temp"], temperature=case["temperature"],
                                    top_p=case["top_p"], top_k=case["top_k"],
                                    return_dict_in_generate=True)
    torch.manual_seed(case["seed"])
    out = model.diffusion_generate(ids, generation_config=gcfg, attention_mask=attn)
    return out.sequences[:, P:].tolist()


def llada_likelihood(mods, model, s: dict) -> list[float]:
    torch.manual_seed(s["seed"])  # one seed, then the requests in order
    return [mods["get_log_likelihood"].get_log_likelihood(
        model, torch.tensor(c), torch.tensor(t), mc_num=s["mc_num"], batch_size=s["batch_size"],
        cfg_scale=s["cfg_scale"], mask_id=MASK) for c, t in LL_REQUESTS]


def dream_likelihood(mods, model, s: dict) -> list[float]:
    cls = mods["dream_base"]
    lm = cls()
    lm.model, lm.device, lm.batch_size, lm.mc_num = model, torch.device("cpu"), s["batch_size"], s["mc_num"]
    lm.log_type, lm.sampling_eps = "ftb", 1e-3
    lm.classifier_free_guidance = 1.0  # >1 crashes upstream (self.cfg is never set)
    lm.tokenizer = types.SimpleNamespace(mask_token_id=MASK)
    torch.manual_seed(s["seed"])
    return [-lm._eval_target_nll_mc(torch.tensor(c), torch.tensor(t)) for c, t in LL_REQUESTS]


def llada_greedy(mods, model, gen) -> tuple[list, list[bool]]:
    """Requests whose continuation is (a) LLaDA's own one-token-per-step greedy decode (so the
    check must say True) and (b) the same with one token changed (False), plus LL_REQUESTS."""
    lm = mods["llada_lm"]()
    lm.model, lm.device, lm.cfg, lm.mask_id, lm.is_check_greedy = model, torch.device("cpu"), 0.0, MASK, True
    requests = list(LL_REQUESTS)
    for ctx in ([BOS, 5, 17, 33], [BOS, 70, 3, 21, 8, 9]):
        p = torch.tensor([ctx])
        out = gen.generate(model, p, steps=4, gen_length=4, block_length=4, mask_id=MASK)
        tgt = out[0, len(ctx):].tolist()
        requests += [(ctx, tgt), (ctx, tgt[:-1] + [(tgt[-1] + 1) % (VOCAB - 4)])]
    flags = [bool(lm.suffix_greedy_prediction(torch.tensor(c), torch.tensor(t))) for c, t in requests]
    return requests, flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qdlm", type=Path, default=Path("/work/.mirror/FelixMessi+QDLM/repo"))
    ap.add_argument("--llada", type=Path, default=Path("/work/.mirror/ML-GSAI+LLaDA/repo"))
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "sampling")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    out = args.out
    with tempfile.TemporaryDirectory() as t:
        mods = import_official(args.qdlm.resolve(), args.llada.resolve(), Path(t))
        llada = mods["modeling_llada"].LLaDAModelLM(
            mods["configuration_llada"].LLaDAConfig(**LLADA_CONFIG), init_params=False).eval()
        seed_weights(llada, seed=5)
        favour_special_tokens(llada.model.transformer.ff_out.weight, seed=9)
        dcfg = mods["configuration_dream"].DreamConfig(**DREAM_CONFIG)
        dcfg._attn_implementation = "sdpa"
        dream = mods["modeling_dream"].DreamModel(dcfg).eval()
        seed_weights(dream, seed=6)
        for name, model in (("llada", llada), ("dream", dream)):
            if (out / name).exists():
                shutil.rmtree(out / name)
            model.save_pretrained(out / name, safe_serialization=True)
        with torch.no_grad():
            lc = llada_cases()
            for c in lc:
                c["reference_tokens"] = run_llada(mods["generate"], llada, c)
            dc = dream_cases()
            for c in dc:
                c["reference_tokens"] = run_dream(mods["dream_generation_utils"], dream, c)
            ll = {"requests": LL_REQUESTS, "settings": LL_SETTINGS,
                  "llada": [llada_likelihood(mods, llada, s) for s in LL_SETTINGS],
                  "dream": [dream_likelihood(mods, dream, s) for s in LL_SETTINGS
                            if s["cfg_scale"] == 0]}
            greedy_requests, flags = llada_greedy(mods, llada, mods["generate"])
            ll["greedy_llada"] = {"requests": greedy_requests, "is_greedy": flags}
    (out / "cases.json").write_text(json.dumps({"llada": lc, "dream": dc}, indent=1) + "\n")
    (out / "likelihood.json").write_text(json.dumps(ll, indent=1) + "\n")
    print(f"{len(lc)} LLaDA + {len(dc)} Dream decoding cases, likelihoods {ll['llada']} "
          f"{ll['dream']}, greedy {flags} -> {out}")


if __name__ == "__main__":
    main()
