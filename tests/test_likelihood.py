"""dllmq.likelihood against the official LLaDA get_log_likelihood.py and QDLM's Dream lm-eval
estimator (fixtures made by tools/reference_fixtures_sampling.py), plus packing invariance,
the draws' structure, the exact single-token case and the greedy check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dllmq.likelihood import (
    draw_masks,
    evaluate_masks,
    greedy_check,
    logits_at,
    loglikelihood,
    masked_logits,
    plan_batches,
)
from dllmq.models import load, random_model, tiny_config

FIX = Path(__file__).parent / "fixtures" / "sampling"
REF = json.loads((FIX / "likelihood.json").read_text())
REQUESTS = [(c, t) for c, t in REF["requests"]]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return {name: load(FIX / name, device="cpu", dtype=torch.float32) for name in ("llada", "dream")}


def cases():
    for name in ("llada", "dream"):
        settings = [s for s in REF["settings"] if name == "llada" or s["cfg_scale"] == 0]
        for s, ref in zip(settings, REF[name], strict=True):
            yield name, s, ref


@pytest.mark.parametrize("name,s,ref", list(cases()),
                         ids=[f"{n}-mc{s['mc_num']}-b{s['batch_size']}-cfg{s['cfg_scale']}"
                              for n, s, _ in cases()])
@pytest.mark.parametrize("rows_per_forward", [None, 5, 64])
def test_equals_official_estimate(models, name, s, ref, rows_per_forward):
    """Same seed -> same draws -> the official value to 1e-5, however the rows are packed."""
    ours = loglikelihood(models[name], REQUESTS, s["mc_num"], s["batch_size"], s["cfg_scale"],
                         torch.Generator().manual_seed(s["seed"]), rows_per_forward=rows_per_forward)
    assert ours == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("estimator", ["llada", "dream"])
def test_packing_does_not_change_the_estimate(models, estimator):
    g = torch.Generator().manual_seed(3)
    draws = [draw_masks(len(c), len(t), 12, 4, g, estimator) for c, t in REQUESTS]
    model = models["llada"]
    alone = [evaluate_masks(model, [r], [d], rows_per_forward=4)[0] for r, d in zip(REQUESTS, draws,
                                                                                      strict=True)]
    for rows, budget in ((3, 0), (48, 0), (None, 40), (None, 16384)):
        packed = evaluate_masks(model, REQUESTS, draws, rows_per_forward=rows,
                                tokens_per_forward=budget)
        assert packed == pytest.approx(alone, rel=1e-6)


def test_plan_batches_respects_the_token_budget():
    lengths = [14, 12, 7, 7, 30, 7, 12, 14, 5]
    chunks = plan_batches(lengths, None, 28)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert len(c) * max(lengths[i] for i in c) <= 28 or len(c) == 1
    assert [lengths[i] for c in chunks for i in c] == sorted(lengths)
    assert [len(c) for c in plan_batches(lengths, 4, 28)] == [4, 4, 1]


def test_llada_draws_are_stratified_exact_counts():
    T, b = 7, 5
    d = draw_masks(3, T, 20, b, torch.Generator().manual_seed(0), "llada")
    counts = d.is_mask.sum(1)
    assert torch.equal(d.p_mask, counts / T) and bool((counts >= 1).all())
    for grp in counts.view(-1, b):  # k, k + T/b, ... mod T: spread over the whole range
        spread = sorted(grp.tolist())
        assert max(spread) - min(spread) >= T - T / b - 1


def test_dream_draws_never_mask_the_last_token():
    d = draw_masks(0, 6, 400, 8, torch.Generator().manual_seed(0), "dream")
    assert not d.is_mask[:, 0].any() and not d.is_mask[:, -1].any()  # first of seq, last (EOS)
    assert d.is_mask[:, 1:-1].any()
    rate = d.is_mask[:, 1:-1].float().mean(1)
    assert torch.corrcoef(torch.stack([rate, d.p_mask]))[0, 1] > 0.8


def test_single_token_continuation_is_exact(models):
    """LLaDA's estimator with one continuation token always masks it with p = 1: the estimate is
    the exact log-softmax at that position, for every Monte Carlo sample."""
    model = models["llada"]
    ctx, tok = [93, 4, 8, 15], 16
    x = torch.tensor([ctx + [model.config.mask_token_id]])
    exact = torch.log_softmax(model.denoise_logits(x)[0, -1].double(), -1)[tok].item()
    got = loglikelihood(model, [(ctx, [tok])], mc_num=8, batch_size=4)[0]
    assert got == pytest.approx(exact, rel=1e-6)


def test_greedy_check_equals_official(models):
    g = REF["greedy_llada"]
    flags = greedy_check(models["llada"], [(c, t) for c, t in g["requests"]])
    assert flags == g["is_greedy"] and any(flags) and not all(flags)


def test_errors(models):
    with pytest.raises(ValueError, match="lower batch_size"):
        loglikelihood(models["llada"], REQUESTS, mc_num=2, batch_size=4)
    with pytest.raises(ValueError, match="beyond the model's context"):
        loglikelihood(models["llada"], [([1] * 130, [2])], mc_num=4, batch_size=4)
    with pytest.raises(ValueError, match="empty continuation"):
        loglikelihood(models["llada"], [([1], [])], mc_num=4, batch_size=4)
    with pytest.raises(ValueError, match="estimator 'x'"):
        loglikelihood(models["llada"], REQUESTS, 4, 4, estimator="x")


@pytest.mark.parametrize("arch,tied", [("llada", False), ("llada", True), ("Dream", False),
                                       ("Dream", True)])
def test_head_on_selected_positions_equals_full_logits(arch, tied):
    """logits_at runs the blocks itself and the head on masked positions only: it must equal
    the model's own denoise_logits there (guards against drift from the model's forward)."""
    model = random_model(tiny_config(arch, tie_word_embeddings=tied), seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 60, (3, 11), generator=g)
    select = torch.rand(3, 11, generator=g) < 0.4
    select[:, 0] = True
    attn = torch.ones(3, 11, dtype=torch.long)
    attn[1, 8:] = 0
    select &= attn.bool()
    prompt = torch.zeros(3, 11, dtype=torch.bool)
    prompt[:, :3] = True
    for cfg_scale in (0.0, 0.7):
        want = masked_logits(model, x, attn, prompt, cfg_scale)[select]
        got = logits_at(model, x, attn, select, prompt, cfg_scale)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
