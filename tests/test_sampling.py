"""dllmq.sampling against the official LLaDA generate.py / Dream _sample (fixtures made by
tools/reference_fixtures_sampling.py), plus batching invariance, trace and config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dllmq.models import load
from dllmq.sampling import (
    DreamSamplerConfig,
    LLaDASamplerConfig,
    add_gumbel_noise,
    generate,
    num_transfer_tokens,
    top_k_mask,
)

FIX = Path(__file__).parent / "fixtures" / "sampling"
CASES = json.loads((FIX / "cases.json").read_text())
CONFIGS = {"llada": LLaDASamplerConfig, "dream": DreamSamplerConfig}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return {name: load(FIX / name, device="cpu", dtype=torch.float32) for name in CONFIGS}


def config_of(name: str, case: dict):
    cls = CONFIGS[name]
    return cls(**{k: v for k, v in case.items() if k in cls.__dataclass_fields__})


def case_id(case: dict) -> str:
    keys = ("remasking", "alg", "temperature", "cfg_scale", "block_length", "steps", "top_p",
            "top_k", "alg_temp", "logits_eos_inf", "confidence_eos_eot_inf")
    return "-".join(f"{k}={case[k]}" for k in keys if case.get(k) not in (None, False))


@pytest.mark.parametrize("name,case", [(n, c) for n in CONFIGS for c in CASES[n]],
                         ids=[f"{n}:{case_id(c)}:{len(c['prompts'])}p" for n in CONFIGS for c in CASES[n]])
def test_same_tokens_as_official(models, name, case):
    """torch.manual_seed(s) + official == Generator().manual_seed(s) + ours, token for token."""
    out = generate(models[name], case["prompts"], config_of(name, case),
                   generator=torch.Generator().manual_seed(case["seed"]))
    assert out.tokens.tolist() == case["reference_tokens"]


DETERMINISTIC = [
    ("llada", LLaDASamplerConfig(gen_length=12, steps=12, block_length=4)),
    ("llada", LLaDASamplerConfig(gen_length=12, steps=6, block_length=12, cfg_scale=1.0)),
    ("dream", DreamSamplerConfig(max_new_tokens=10, steps=5, alg="maskgit_plus")),
    ("dream", DreamSamplerConfig(max_new_tokens=10, steps=10, alg="topk_margin")),
    ("dream", DreamSamplerConfig(max_new_tokens=10, steps=4, alg="entropy", top_k=5)),
]


@pytest.mark.parametrize("name,cfg", DETERMINISTIC, ids=lambda v: getattr(v, "alg", None)
                         or getattr(v, "remasking", str(v)))
def test_batched_prompts_decode_as_alone(models, name, cfg):
    """Left padding + attention mask + position ids: a padded prompt gives its solo tokens."""
    prompts = [[93, 5, 17, 33, 2, 48, 60, 11], [93, 70], [93, 12, 7, 81, 30]]
    together = generate(models[name], prompts, cfg).tokens
    for b, p in enumerate(prompts):
        alone = generate(models[name], [p], cfg).tokens[0]
        assert together[b].tolist() == alone.tolist()


def test_trace_follows_the_schedule(models):
    cfg = LLaDASamplerConfig(gen_length=16, steps=10, block_length=8)
    plain = generate(models["llada"], [[10, 11, 12]], cfg)
    traced = generate(models["llada"], [[10, 11, 12]], cfg, trace=True)
    assert traced.tokens.tolist() == plain.tokens.tolist() and plain.committed_at is None
    # a predicted [MASK] would be written again later; this prompt predicts none
    assert 95 not in traced.tokens[0].tolist()
    at = traced.committed_at[0]
    per_step = torch.bincount(at, minlength=cfg.steps).tolist()
    assert per_step == num_transfer_tokens(8, 5) * 2
    assert at[:8].max() < 5 <= at[8:].min()  # semi-autoregressive: block 0 first
    d = generate(models["dream"], [[93, 4]], DreamSamplerConfig(max_new_tokens=8, steps=4,
                                                                 alg="entropy"), trace=True)
    assert bool((d.committed_at >= 0).all()) and d.committed_at.max() == 3


def test_generator_is_the_only_randomness(models):
    cfg = DreamSamplerConfig(max_new_tokens=12, steps=6, alg="origin", temperature=1.0)
    run = lambda s: generate(models["dream"], [[93, 4, 5]], cfg,  # noqa: E731
                             generator=torch.Generator().manual_seed(s)).tokens
    torch.manual_seed(0)
    a = run(7)
    torch.manual_seed(1)  # the global RNG must not matter
    assert run(7).tolist() == a.tolist()
    assert run(8).tolist() != a.tolist()


def test_gumbel_max_samples_softmax_over_temperature():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).repeat(40000, 1)[None]  # (1, L, V)
    T = 0.7
    picks = add_gumbel_noise(logits, T, torch.Generator().manual_seed(0)).argmax(-1)[0]
    freq = torch.bincount(picks, minlength=4).double() / picks.numel()
    assert torch.allclose(freq, torch.softmax(logits[0, 0].double() / T, -1), atol=0.01)
    assert torch.equal(add_gumbel_noise(logits, 0.0, torch.Generator()), logits)


def test_num_transfer_tokens_spreads_the_remainder_first():
    for n in range(1, 40):
        for steps in range(1, 12):
            sched = num_transfer_tokens(n, steps)
            assert sum(sched) == n and len(sched) == steps
            assert sched == sorted(sched, reverse=True) and max(sched) - min(sched) <= 1


def test_top_k_mask_per_row_k_equals_per_row_topk():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(6, 20, generator=g)
    conf[:, 15:] = -torch.inf
    k = torch.tensor([0, 1, 3, 7, 15, 2])
    got = top_k_mask(conf, k)
    for j in range(6):
        want = torch.zeros(20, dtype=torch.bool)
        want[torch.topk(conf[j], int(k[j])).indices] = True
        assert torch.equal(got[j], want)
    assert torch.equal(top_k_mask(conf, 3), top_k_mask(conf, torch.full((6,), 3)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(gen_length=10, block_length=4), "block_length that divides"),
    (dict(gen_length=16, block_length=4, steps=6), "steps divisible"),
    (dict(remasking="top"), "low_confidence, random"),
    (dict(temperature=-1.0), ">= 0"),
])
def test_llada_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLaDASamplerConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alg="greedy"), "origin, maskgit_plus"),
    (dict(eps=0.0), "eps"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=0), "top_k"),
])
def test_dream_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DreamSamplerConfig(**kwargs)


def test_prompt_errors(models):
    cfg = LLaDASamplerConfig(gen_length=16, steps=16, block_length=16)
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        generate(models["llada"], [[1] * 120], cfg)
    with pytest.raises(ValueError, match="mask token id 95"):
        generate(models["llada"], [[1, 95, 2]], cfg)
    with pytest.raises(TypeError, match="LLaDASamplerConfig or DreamSamplerConfig"):
        generate(models["llada"], [[1]], dict(steps=4))
