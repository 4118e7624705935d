"""dllmq.train: objectives, data rows, determinism, resumption and the end-to-end preset run,
on micro models and a synthetic corpus (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from dllmq.models import load, load_tokenizer
from dllmq.train import (
    PRESETS,
    BatchSampler,
    Preset,
    Rows,
    SpecialIds,
    activation_stats,
    ar_loss,
    forward_process,
    init_model,
    lr_at,
    mdm_loss,
    pack_documents,
    sft_loss,
    sft_rows,
    step_loss,
    tokenize_data,
    train,
    train_preset,
    write_model_card,
)

SPECIALS = ["<|bos|>", "<|eos|>", "<|mask|>", "<|eot|>", "<|user|>", "<|assistant|>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +-=?.:#\n")
SPECIAL = SpecialIds(mask=2, bos=0, eos=1, eot=3)
VOCAB = len(SPECIALS) + len(CHARS)


def micro(name="micro", arch="llada", objective="mdm", **kw) -> Preset:
    base = dict(name=name, arch=arch, objective=objective, causal=objective == "ar",
                hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2 if arch == "Dream" else 4,
                intermediate_size=64, max_position=64, seq_len=24, batch_size=8, steps=20,
                lr=3e-3, warmup_steps=2, log_every=5, ckpt_every=5, random_length_prob=0.0)
    base.update(kw)
    return Preset(**base)


def char_tokenizer():
    """A character-level fast tokenizer with the specials and a chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="#"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                mask_token="<|mask|>")
    t.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                       "<|eot|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return t


def arithmetic(n: int, seed: int = 0) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 50, (2, n), generator=g).tolist()
    return [(f"{x}+{y}?", f"{x + y}") for x, y in zip(a, b, strict=True)]


@pytest.fixture(scope="module")
def data():
    pairs = arithmetic(96)
    texts = [f"q: {p} a: {r}." for p, r in pairs]
    return tokenize_data(char_tokenizer(), texts, pairs, "synthetic sums")


def pretrain_rows(seq_len=24, n=64) -> Rows:
    docs = [[6 + (i * 7 + j) % 20 for j in range(5 + i % 9)] for i in range(n)]
    return pack_documents(docs, seq_len, SPECIAL.bos, SPECIAL.eos)


pytestmark = pytest.mark.usefixtures("one_thread")


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- objectives ----------------------------------------------------------------------------
def test_forward_process_masks_at_rate_t_and_respects_keep():
    ids = torch.randint(6, VOCAB, (4000, 40), generator=torch.Generator().manual_seed(0))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :5] = True
    noisy, masked, p = forward_process(ids, SPECIAL.mask, 1e-3, torch.Generator().manual_seed(1),
                                       keep)
    assert torch.equal(noisy[:, :5], ids[:, :5]) and not masked[:, :5].any()
    assert torch.equal(noisy == SPECIAL.mask, masked)
    assert torch.equal(noisy[~masked], ids[~masked])
    # per-row mask rate follows p; p ~ U[eps, 1)
    rate = masked[:, 5:].float().mean(1)
    assert (rate - p[:, 0]).abs().mean() < 0.07
    assert 0.45 < p.mean() < 0.55 and p.min() >= 1e-3


def test_mdm_loss_is_llada_normalisation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    masked = torch.rand(3, 7, generator=g) < 0.5
    p = torch.tensor([[0.2], [0.5], [0.9]])
    ce = torch.nn.functional.cross_entropy(logits[masked], ids[masked], reduction="none")
    expected = (ce / p.expand(3, 7)[masked]).sum() / 21
    torch.testing.assert_close(mdm_loss(logits, ids, masked, p), expected)
    # SFT: per-row division by the answer length (L - prompt length), then mean over rows
    plen = torch.tensor([2, 3, 6])
    ans = (7 - plen).float()[:, None].expand(3, 7)[masked]
    expected = (ce / p.expand(3, 7)[masked] / ans).sum() / 3
    torch.testing.assert_close(sft_loss(logits, ids, masked, p, plen), expected)


def test_ar_loss_predicts_next_token():
    ids = torch.tensor([[5, 6, 7, 8]])
    logits = torch.full((1, 4, 10), -30.0)
    logits[0, torch.arange(3), ids[0, 1:]] = 30.0  # position i puts all mass on token i+1
    assert ar_loss(logits, ids) < 1e-6
    assert ar_loss(torch.roll(logits, 1, dims=1), ids) > 10


def test_lr_schedule_warms_up_then_decays_to_floor():
    p = micro(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, p) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(100, p) == pytest.approx(1e-4)


# ---- data rows -----------------------------------------------------------------------------
def test_pack_documents_keeps_documents_whole_and_rows_start_with_bos():
    docs = [[10] * 5, [11] * 9, [12] * 3, [13] * 30]
    rows = pack_documents(docs, 16, bos=0, eos=1).ids
    assert (rows[:, 0] == 0).all()
    flat = [t for r in rows.tolist() for t in r[1:] if t != 1]
    assert flat == [t for d in docs for t in d]  # order kept, nothing lost
    # the 9-token doc does not fit after the 5-token one in 15 slots with EOS: new row
    assert rows[0, 1:8].tolist() == [10] * 5 + [1, 1] and rows[1, 1:11].tolist() == [11] * 9 + [1]
    assert rows.shape[1] == 16


def test_sft_rows_pad_response_with_eos_and_drop_too_long():
    rows, dropped = sft_rows([([0, 4, 9], [20, 21, 3]), ([0] * 10, [5] * 10)], 12, eos=1)
    assert dropped == 1
    assert rows.ids[0].tolist() == [0, 4, 9, 20, 21, 3] + [1] * 6
    assert rows.prompt_lengths.tolist() == [3]


def test_batch_sampler_is_a_function_of_seed_and_step():
    a = BatchSampler(50, 8, seed=3, device=torch.device("cpu"))
    b = BatchSampler(50, 8, seed=3, device=torch.device("cpu"))
    seq_a = [a.indices(s) for s in range(14)]
    assert all(torch.equal(b.indices(s), seq_a[s]) for s in reversed(range(14)))
    epoch0 = torch.cat(seq_a[:6])  # 6 batches per epoch, no repeats inside an epoch
    assert len(set(epoch0.tolist())) == 48
    assert not torch.equal(BatchSampler(50, 8, 4, torch.device("cpu")).indices(0), seq_a[0])


# ---- SFT masks only the response -----------------------------------------------------------
def test_sft_step_masks_only_response_tokens(data):
    preset = micro(objective="sft", seq_len=32)
    model = init_model(preset, data.special, len(data.tokenizer), torch.device("cpu"))
    rows, _ = sft_rows(data.sft_examples, 32, data.special.eos)
    seen = {}
    original = model.denoise_logits

    def spy(noisy, *a, **k):
        out = original(noisy, *a, **k)
        out.retain_grad()
        seen["noisy"], seen["logits"] = noisy, out
        return out

    model.denoise_logits = spy
    total_masked = 0
    for step in range(5):
        ids, plen = rows.ids[:16], rows.prompt_lengths[:16]
        loss = step_loss(model, ids, plen, preset, step, data.special.mask)
        loss.backward()
        noisy, grad = seen["noisy"], seen["logits"].grad
        prompt = torch.arange(32)[None] < plen[:, None]
        assert torch.equal(noisy[prompt], ids[prompt])  # the prompt is never noised
        masked = noisy == data.special.mask
        total_masked += int(masked.sum())
        # the loss reads logits of masked response positions only
        assert grad[~masked].abs().max() == 0
        assert (grad[masked].abs().sum(-1) > 0).all()
    assert total_masked > 0


def test_dream_never_masks_position_zero_and_uses_shifted_logits(data):
    preset = micro(arch="Dream")
    model = init_model(preset, data.special, len(data.tokenizer), torch.device("cpu"))
    ids = pretrain_rows().ids[:8]
    calls = {}
    original = model.forward

    def spy(x, *a, **k):
        calls["in"] = x
        out = original(x, *a, **k)
        out.retain_grad()
        calls["out"] = out
        return out

    model.forward = spy
    for step in range(4):
        step_loss(model, ids, None, preset, step, data.special.mask).backward()
        noisy = calls["in"]
        assert (noisy[:, 0] == data.special.bos).all()
        masked = noisy == data.special.mask
        # official Dream logits at i-1 predict the masked token at i
        used = calls["out"].grad.abs().sum(-1) > 0
        assert torch.equal(used[:, :-1], masked[:, 1:]) and not used[:, -1].any()


# ---- training: loss falls, determinism, resumption -----------------------------------------
def _eval_loss(model, rows, preset, mask_id):
    with torch.no_grad():
        return sum(float(step_loss(model, rows.ids[i * 8:(i + 1) * 8], None, preset, 10_000 + i,
                                   mask_id)) for i in range(4)) / 4


@pytest.mark.parametrize("arch,objective", [("llada", "mdm"), ("Dream", "ar")])
def test_micro_model_loss_falls(arch, objective):
    preset = micro(arch=arch, objective=objective, steps=60, log_every=10, ckpt_every=10)
    rows = pretrain_rows()
    model = init_model(preset, SPECIAL, VOCAB, torch.device("cpu"))
    before = _eval_loss(model, rows, preset, SPECIAL.mask)
    result = train(model, rows, preset, "cpu")
    after = _eval_loss(model, rows, preset, SPECIAL.mask)
    assert after < 0.75 * before, (before, after)
    assert result.history["step"] == list(range(10, 61, 10))
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_same_seed_same_weights_other_seed_differs():
    rows = pretrain_rows()

    def run(seed):
        preset = micro(steps=6, seed=seed)
        model = init_model(preset, SPECIAL, VOCAB, torch.device("cpu"))
        return params(train(model, rows, preset, "cpu").model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    preset = micro(steps=12, ckpt_every=5, log_every=5, random_length_prob=0.3)
    rows = pretrain_rows()
    full = train(init_model(preset, SPECIAL, VOCAB, torch.device("cpu")), rows, preset, "cpu")
    ckpt = tmp_path / "last.pt"
    # a run killed after 7 steps: its last checkpoint is the one of step 5
    train(init_model(preset, SPECIAL, VOCAB, torch.device("cpu")), rows, preset, "cpu",
          ckpt_path=ckpt, stop_after=7)
    assert torch.load(ckpt, weights_only=False)["step"] == 5
    fresh = init_model(preset, SPECIAL, VOCAB, torch.device("cpu"))
    resumed = train(fresh, rows, preset, "cpu", ckpt_path=ckpt)
    assert resumed.resumed_from == 5
    a, b = params(full.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == full.history
    with pytest.raises(ValueError, match="different recipe"):
        train(init_model(preset, SPECIAL, VOCAB, torch.device("cpu")), rows,
              dataclasses.replace(preset, lr=1e-2), "cpu", ckpt_path=ckpt)


# ---- end to end: presets, files, model card ------------------------------------------------
def test_train_preset_chain_writes_loadable_models_and_card(tmp_path, data):
    ar = micro(name="m-ar", arch="Dream", objective="ar", steps=10, seq_len=32)
    dream = micro(name="m-dream", arch="Dream", objective="mdm", init_from="m-ar", steps=10,
                  seq_len=32)
    with pytest.raises(FileNotFoundError, match="run --preset m-ar first"):
        train_preset(dream, data, tmp_path, "cpu")
    ar_dir = train_preset(ar, data, tmp_path, "cpu", command="test")
    dream_dir = train_preset(dream, data, tmp_path, "cpu", command="test")
    m_ar, m_dream = load(ar_dir, device="cpu"), load(dream_dir, device="cpu")
    assert m_ar.config.causal and not m_dream.config.causal
    assert m_dream.config.mask_token_id == data.special.mask
    st = m_dream.state_dict()
    assert all(v.dtype == torch.float32 for v in st.values())
    assert not (dream_dir / "checkpoints").exists()
    tok = load_tokenizer(dream_dir)
    assert tok("ab")["input_ids"] == data.tokenizer("ab")["input_ids"]
    log = json.loads((dream_dir / "train_log.json").read_text())
    assert log["finished"] and log["seed"] == 0 and len(log["history"]["loss"]) == 2
    assert (dream_dir / "train.log").read_text().count("loss") >= 2
    stats = json.loads((dream_dir / "activation_stats.json").read_text())["layers"]
    assert len(stats) == 2 and all(s["down"]["peak"] >= s["down"]["median"] > 0 for s in stats)
    card = (dream_dir / "MODEL_CARD.md").read_text()
    assert "Not measured yet" in card and "initialised from `m-ar`" in card
    write_model_card(dream_dir, {"math": {"accuracy": 0.512, "n": 200, "command": "dllmq eval"}})
    card = (dream_dir / "MODEL_CARD.md").read_text()
    assert "accuracy 0.512" in card and "`dllmq eval`" in card and "Not measured" not in card


def test_activation_stats_match_direct_computation():
    preset = micro()
    model = init_model(preset, SPECIAL, VOCAB, torch.device("cpu")).eval()
    ids = pretrain_rows().ids[:8]
    stats = activation_stats(model, [ids])
    captured = {}
    blk = model.blocks[1]
    h = blk.ff_out.register_forward_hook(lambda m, a, o: captured.update(x=a[0]))
    with torch.no_grad():
        model(ids)
    h.remove()
    x = captured["x"].abs()
    assert stats[1]["down"]["peak"] == pytest.approx(float(x.max()))
    assert stats[1]["down"]["median"] == pytest.approx(float(x.median()))


def test_shipped_presets_are_consistent():
    for name, p in PRESETS.items():
        assert p.name == name
        if p.init_from:
            base = PRESETS[p.init_from]
            assert base.arch == p.arch
    assert PRESETS["tiny-ar"].causal and not PRESETS["tiny-dream-base"].causal
    with pytest.raises(ValueError, match="causal"):
        micro(objective="mdm", causal=True)
