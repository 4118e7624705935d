"""Build the model-equivalence fixtures in tests/fixtures/models/ from the OFFICIAL model code.

Run with the reference environment (transformers 4.46.2), pointing at a directory that holds the
official files modeling_llada.py, configuration_llada.py, modeling_dream.py,
configuration_dream.py and dream_generation_utils.py (e.g. extracted from FelixMessi/QDLM
`DuQuant/models/`):

    /work/refenv/bin/python tools/reference_fixtures_models.py --official-dir /tmp \
        --out tests/fixtures/models

For each architecture it builds the official model from a tiny config written in the official
config.json format, fills its weights from a seeded generator, saves it with the official
`save_pretrained` (config.json + model.safetensors, official names), runs fixed inputs and stores
the fp32 logits in `reference.safetensors`. Nothing from the official code is copied here: the
files are imported from the given directory.

It then checks the reverse direction: a model written by `dllmq.models.save_pretrained` is loaded
by the official `from_pretrained` and must give dllmq's logits. The max abs differences are
printed and written to `reverse_check.json` in --out (the README quotes them).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_FILES = ("modeling_llada.py", "configuration_llada.py", "modeling_dream.py",
                  "configuration_dream.py", "dream_generation_utils.py")
PACKAGE = "official_dllm_ref"

# Tiny configs in the official formats. Everything the official code reads is set explicitly.
LLADA_CONFIG = dict(
    model_type="llada", architectures=["LLaDAModelLM"], d_model=32, n_heads=4, n_kv_heads=4,
    n_layers=2, mlp_ratio=4, mlp_hidden_size=64, max_sequence_length=64, vocab_size=96,
    embedding_size=128,  # padded table, as LLaDA pads beyond vocab_size
    block_type="llama", rope=True, rope_full_precision=True, rope_theta=500000.0,
    layer_norm_type="rms", layer_norm_with_affine=True, rms_norm_eps=1e-5,
    activation_type="silu", alibi=False, flash_attention=False, attention_layer_norm=False,
    include_bias=False, include_qkv_bias=False, bias_for_layer_norm=False, scale_logits=False,
    weight_tying=False, input_emb_norm=False, block_group_size=1, attention_dropout=0.0,
    residual_dropout=0.0, embedding_dropout=0.0, init_device="cpu", mask_token_id=95,
    eos_token_id=94, pad_token_id=94, use_cache=False,
)
DREAM_CONFIG = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_cache=False,
    attention_dropout=0.0, mask_token_id=95, pad_token_id=94, eos_token_id=94, bos_token_id=93,
    architectures=["DreamModel"],
)
BATCH, LENGTH = 2, 16
PAD_LENGTHS = (16, 11, 5)  # Dream's left-padded batch: real tokens per row


def import_official(official_dir: Path, tmp: Path):
    """Import the official files as one package (they use relative imports)."""
    pkg = tmp / PACKAGE
    pkg.mkdir()
    for name in OFFICIAL_FILES:
        src = official_dir / name
        if not src.is_file():
            raise SystemExit(f"{src} not found; --official-dir must hold {', '.join(OFFICIAL_FILES)}")
        shutil.copy(src, pkg / name)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    return (importlib.import_module(f"{PACKAGE}.modeling_llada"),
            importlib.import_module(f"{PACKAGE}.configuration_llada"),
            importlib.import_module(f"{PACKAGE}.modeling_dream"),
            importlib.import_module(f"{PACKAGE}.configuration_dream"))


def seed_weights(model: torch.nn.Module, seed: int) -> None:
    """Weights with O(1) logits so a 1e-5 comparison means something: linear weights
    N(0, 1/fan_in), embeddings N(0, 1), norm weights 1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # RMSNorm weight
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def fixed_ids(vocab: int, mask_id: int, seed: int, shape=(BATCH, LENGTH)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, shape, generator=g)
    ids[:, shape[1] // 2:: 3] = mask_id  # some [MASK] tokens, as in every denoising step
    return ids


def left_padded(ids: torch.Tensor, lengths: tuple[int, ...], pad_id: int):
    """Left-pad rows to ids.shape[1]; attention mask and Dream's position ids
    (dream_generation_utils: tok_idx = cumsum(mask) - 1, pads set to 1)."""
    L = ids.shape[1]
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    out = torch.full((len(lengths), L), pad_id, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, L - n:] = 1
        out[b, L - n:] = ids[b, :n]
    tok_idx = mask.cumsum(-1) - 1
    tok_idx.masked_fill_(mask == 0, 1)
    return out, mask, tok_idx


def dream_4d_mask(mask: torch.Tensor) -> torch.Tensor:
    """The (B, 1, L, L) boolean mask dream_generation_utils passes to the model."""
    return torch.logical_and(mask[:, None, None, :].bool(), mask[:, None, :, None].bool())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def build_llada(ml, cl, out: Path) -> dict[str, torch.Tensor]:
    cfg = cl.LLaDAConfig(**LLADA_CONFIG)
    model = ml.LLaDAModelLM(cfg, init_params=False).eval()
    seed_weights(model, seed=1)
    model.save_pretrained(out, safe_serialization=True)
    ids = fixed_ids(LLADA_CONFIG["vocab_size"], LLADA_CONFIG["mask_token_id"], seed=11)
    logits = model(input_ids=ids).logits.float()
    # LLaDA's SDPA call ignores the attention mask (modeling_llada.py, attention(): attn_mask=None),
    # so a padded batch is not comparable with dllmq's masked attention; only unpadded is stored.
    return {"input_ids": ids, "logits": logits}


@torch.no_grad()
def llada_padding_effect(official, fixture_dir: Path) -> dict[str, float]:
    """How far a left-padded row's real-token logits move from the row alone: official LLaDA
    (mask ignored) vs dllmq (pad keys masked, positions from the mask). Documentation only."""
    from dllmq.models import load

    ours = load(fixture_dir, device="cpu", dtype=torch.float32)
    ids = fixed_ids(LLADA_CONFIG["vocab_size"], LLADA_CONFIG["mask_token_id"], seed=14,
                    shape=(len(PAD_LENGTHS), LENGTH))
    p_ids, p_mask, p_pos = left_padded(ids, PAD_LENGTHS, LLADA_CONFIG["pad_token_id"])
    theirs_p = official(input_ids=p_ids, attention_mask=p_mask).logits
    ours_p = ours(p_ids, attention_mask=p_mask, position_ids=p_pos)
    diffs = {"official": 0.0, "dllmq": 0.0}
    for b, n in enumerate(PAD_LENGTHS):
        alone = ids[b: b + 1, :n]
        diffs["official"] = max(diffs["official"],
                                max_diff(theirs_p[b, LENGTH - n:], official(input_ids=alone).logits[0]))
        diffs["dllmq"] = max(diffs["dllmq"], max_diff(ours_p[b, LENGTH - n:], ours(alone)[0]))
    return diffs


@torch.no_grad()
def build_dream(md, cd, out: Path) -> dict[str, torch.Tensor]:
    cfg = cd.DreamConfig(**DREAM_CONFIG)
    cfg._attn_implementation = "sdpa"
    model = md.DreamModel(cfg).eval()
    seed_weights(model, seed=2)
    model.save_pretrained(out, safe_serialization=True)
    ids = fixed_ids(DREAM_CONFIG["vocab_size"], DREAM_CONFIG["mask_token_id"], seed=12)
    logits = model(input_ids=ids).logits.float()
    base = fixed_ids(DREAM_CONFIG["vocab_size"], DREAM_CONFIG["mask_token_id"], seed=13,
                     shape=(len(PAD_LENGTHS), LENGTH))
    p_ids, p_mask, p_pos = left_padded(base, PAD_LENGTHS, DREAM_CONFIG["pad_token_id"])
    p_logits = model(p_ids, dream_4d_mask(p_mask), p_pos).logits.float()
    # pad query rows see no key at all in the official mask; their logits are meaningless
    p_logits = p_logits.masked_fill(p_mask[..., None] == 0, 0.0)
    return {"input_ids": ids, "logits": logits, "padded_input_ids": p_ids,
            "padded_attention_mask": p_mask, "padded_position_ids": p_pos,
            "padded_logits": p_logits}


@torch.no_grad()
def reverse_check(name: str, official_cls, fixture_dir: Path, tmp: Path) -> dict[str, float]:
    """dllmq model -> dllmq.save_pretrained -> official from_pretrained: same logits?"""
    from dllmq.models import load, random_model, save_pretrained, tiny_config

    results = {}
    mt = "llada" if name == "llada" else "Dream"
    candidates = {
        "fixture": load(fixture_dir, device="cpu", dtype=torch.float32),
        "tiny_config": random_model(tiny_config(mt, rope_theta=500000.0), seed=3),
    }
    seed_weights(candidates["tiny_config"], seed=4)  # O(1) logits, as in the fixtures
    for label, ours in candidates.items():
        d = tmp / f"{name}_{label}"
        save_pretrained(ours, d)
        kwargs = {"attn_implementation": "sdpa"} if mt == "Dream" else {}
        official = official_cls.from_pretrained(d, torch_dtype=torch.float32, **kwargs)
        theirs, mine = official.state_dict(), ours.state_dict()
        if set(theirs) != set(mine) or any(not torch.equal(theirs[k], mine[k]) for k in mine):
            raise SystemExit(f"{name}/{label}: official from_pretrained did not load dllmq's "
                             f"weights as saved (keys differ: {set(theirs) ^ set(mine)})")
        ids = fixed_ids(ours.config.vocab_size, ours.config.mask_token_id, seed=21)
        results[label] = max_diff(official.eval()(input_ids=ids).logits, ours(ids))
    return results


@torch.no_grad()
def bf16_check(name: str, official_cls, fixture_dir: Path) -> float:
    """Same fixture in bf16, both implementations: how far apart (documentation only)."""
    from dllmq.models import load

    kwargs = {"attn_implementation": "sdpa"} if name == "dream" else {}
    official = official_cls.from_pretrained(fixture_dir, torch_dtype=torch.bfloat16, **kwargs).eval()
    ours = load(fixture_dir, device="cpu", dtype=torch.bfloat16)
    ids = fixed_ids(ours.config.vocab_size, ours.config.mask_token_id, seed=22)
    return max_diff(official(input_ids=ids).logits, ours(ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "models")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        ml, cl, md, cd = import_official(args.official_dir.resolve(), tmp)
        builders = {"llada": (build_llada, ml, cl, ml.LLaDAModelLM),
                    "dream": (build_dream, md, cd, md.DreamModel)}
        summary = {}
        for name, (build, mod, conf, cls) in builders.items():
            d = args.out / name
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            tensors = build(mod, conf, d)
            save_file({k: v.contiguous() for k, v in tensors.items()},
                      str(d / "reference.safetensors"), metadata={"format": "pt"})
            summary[name] = {"reverse_max_abs_diff": reverse_check(name, cls, d, tmp),
                             "bf16_vs_official_max_abs_diff": bf16_check(name, cls, d),
                             "logits_abs_max": tensors["logits"].abs().max().item()}
            if name == "llada":
                official = cls.from_pretrained(d, torch_dtype=torch.float32).eval()
                summary[name]["padded_row_vs_alone_max_abs_diff"] = llada_padding_effect(official, d)
            print(name, json.dumps(summary[name]))
    (args.out / "reverse_check.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
