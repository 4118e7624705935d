"""quantize_ on both architectures: what gets quantized, errors for bad input, calibration
masking, the block walker, seeded repeats."""

import pytest
import torch
from dllmq.models import LINEAR_KINDS, get_module, random_model, tiny_config
from dllmq.quant import (
    METHODS,
    RECIPES,
    BlockInputs,
    Calibration,
    GPTQConfig,
    QLinear,
    QuantSpec,
    RTNConfig,
    mask_schedule,
    quantize_,
    walk_blocks,
)
from torch import nn

ARCHS = ["llada", "Dream"]
WEIGHT_ONLY = [n for n in RECIPES if "a16" in n]


def _calib(n=4, L=16, **kw):
    return Calibration.random(60, n, L, batch_size=2, **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", WEIGHT_ONLY)
def test_weight_only_recipes_quantize_every_block_linear(arch, recipe):
    model = random_model(tiny_config(arch), seed=0)
    head_before = get_module(model, model.spec.lm_head).weight.clone()
    emb_before = get_module(model, model.spec.embed).weight.clone()
    s = quantize_(model, recipe, _calib(n=2), progress=False)
    n = model.config.num_layers
    assert s.weight_counts == {k: n for k in LINEAR_KINDS}
    assert s.act_counts == {} and not s.lm_head_quantized
    bits = int(recipe[1])
    for blk in model.blocks:
        for k in LINEAR_KINDS:
            q = get_module(blk, model.spec.linear_name(k))
            assert isinstance(q, QLinear) and q.weight_spec.bits == bits
            assert int(q.codes.max()) < 2**bits
    head = get_module(model, model.spec.lm_head)
    assert type(head) is nn.Linear and torch.equal(head.weight, head_before)
    assert torch.equal(get_module(model, model.spec.embed).weight, emb_before)


def test_seeded_runs_repeat_exactly():
    outs = []
    for _ in range(2):
        model = random_model(tiny_config("Dream"), seed=0)
        quantize_(model, "w4a16g128-gptq", _calib(mask_ratio=0.3, mask_token_id=63, seed=5),
                  progress=False)
        outs.append({k: v.clone() for k, v in model.state_dict().items()})
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_weight_act_rtn_and_lm_head_option():
    model = random_model(tiny_config("llada"), seed=0)
    s = quantize_(model, "w8a8-rtn", None, progress=False)
    n = model.config.num_layers
    assert s.act_counts == {k: n for k in LINEAR_KINDS} and not s.lm_head_quantized
    s = quantize_(random_model(tiny_config("Dream"), seed=0),
                  (RTNConfig(QuantSpec(8, granularity="channel"), lm_head=True),))
    assert s.lm_head_quantized


def test_act_quant_changes_outputs_within_int8_noise():
    model = random_model(tiny_config("llada"), seed=0)
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        quantize_(model, (RTNConfig(weight=None, act=QuantSpec(8, granularity="token")),))
        out = model(ids)
    assert not torch.equal(out, ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0.05 * ref.abs().max().item())


def test_bad_inputs_raise_one_line():
    model = random_model(tiny_config("llada"), seed=0)
    with pytest.raises(KeyError, match="w4a16g128-gptq"):  # lists the valid names
        quantize_(model, "w4a16-gptq", _calib())
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_(model, "w4a16g128-gptq", None)
    with pytest.raises(ValueError, match="empty"):
        Calibration(torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="too short"):
        Calibration(torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="match nothing"):
        GPTQConfig(kinds=("q", "attn_q"))
    with pytest.raises(TypeError, match="not a registered"):
        quantize_(model, (QuantSpec(4),), _calib())
    with pytest.raises(ValueError, match="mask_token_id"):
        Calibration(torch.zeros(2, 8, dtype=torch.long), mask_ratio=0.5)
    with pytest.raises(ValueError, match="one ratio per sample"):
        Calibration(torch.zeros(2, 8, dtype=torch.long), mask_ratio=(0.1, 0.2, 0.3), mask_token_id=63)
    assert set(METHODS) >= {RTNConfig, GPTQConfig}


def test_calibration_masking_ratio_schedule_and_seed():
    ids = torch.randint(0, 60, (4, 40), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 30:] = 0
    c = Calibration(ids, am, mask_ratio=0.25, mask_token_id=63, seed=3)
    m = c.masked_ids()
    masked = m == 63
    assert masked[0].sum() == 10 and masked[1].sum() == round(0.25 * 30)
    assert not masked[1, 30:].any()  # padding never masked
    assert torch.equal(m, Calibration(ids, am, mask_ratio=0.25, mask_token_id=63, seed=3).masked_ids())
    assert not torch.equal(m, Calibration(ids, am, mask_ratio=0.25, mask_token_id=63, seed=4).masked_ids())
    sched = mask_schedule(4, 0.0, 0.75)
    m2 = Calibration(ids, mask_ratio=sched, mask_token_id=63).masked_ids()
    assert (m2 == 63).sum(1).tolist() == [0, 10, 20, 30]


@pytest.mark.parametrize("arch", ARCHS)
def test_walker_reproduces_the_model_forward(arch):
    """With a step that quantizes nothing, the walk ends on the model's last hidden states,
    and hooks see exactly the valid (non-pad) tokens."""
    model = random_model(tiny_config(arch), seed=0)
    ids = torch.randint(0, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[2, 8:] = 0
    calib = Calibration(ids, am, batch_size=2, progress=False)
    seen = []

    def step(i, block, inputs):
        inputs.run(block, {model.spec.down: lambda path, x: seen.append(x.shape[0])})

    walk_blocks(model, calib, step, desc="test")
    assert seen == [24, 8, 24, 8]  # 2 full rows, then 1 row with 8 valid tokens, per block
    inputs = BlockInputs.capture(model, calib)
    for blk in model.blocks:
        inputs.advance(blk)
    final = get_module(model, model.spec.final_norm)
    head = get_module(model, model.spec.lm_head)
    with torch.no_grad():
        ref = model(ids, attention_mask=am)
        got = torch.cat([head(final(x)) for x in inputs.xs])
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("arch,recipe", [("llada", "w4a16g128-gptq"), ("Dream", "w3a16g128-rtn"),
                                         ("Dream", "w8a8-rtn")])
def test_save_load_packed_identical_outputs(tmp_path, arch, recipe):
    from dllmq.quant import load_quantized, save_quantized

    model = random_model(tiny_config(arch), seed=0)
    quantize_(model, recipe, _calib(n=2), progress=False)
    save_quantized(model, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"config.json", "model.safetensors"}
    loaded = load_quantized(tmp_path)
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    q = get_module(loaded.blocks[0], loaded.spec.down)
    assert isinstance(q, QLinear) and q.weight_spec.bits == int(recipe[1])


def test_pack_roundtrip_and_act_order_g_idx(tmp_path):
    from dllmq.quant.export import load_quantized, pack_int32, save_quantized, unpack_int32

    for bits in (2, 3, 4, 5, 8):
        codes = torch.randint(0, 2**bits, (3, 45), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(bits))
        packed = pack_int32(codes, bits)
        assert packed.dtype == torch.int32 and packed.shape == (3, -(-45 * bits // 32))
        assert torch.equal(unpack_int32(packed, bits, 45), codes)
    model = random_model(tiny_config("llada", hidden_size=64, intermediate_size=128), seed=0)
    cfg = GPTQConfig(QuantSpec(4, group_size=16), act_order=True, static_groups=False)
    quantize_(model, (cfg,), _calib(n=2), progress=False)
    assert get_module(model.blocks[0], model.spec.q).g_idx is not None
    save_quantized(model, tmp_path)
    ids = torch.randint(0, 60, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path)(ids), model(ids))


def test_every_paper_recipe_resolves_to_registered_configs():
    from dllmq.quant import get_recipe

    assert len(RECIPES) == 14
    for name in RECIPES:
        for variant in ("paper", "code"):
            configs = get_recipe(name, variant)
            assert configs and all(type(c) in METHODS for c in configs), name
    paper, code = get_recipe("w4a16g128-gptq")[0], get_recipe("w4a16g128-gptq:code")[0]
    assert not paper.weight.sym and code.weight.sym  # paper: asymmetric; authors' code: AutoGPTQ sym
    assert paper.weight.group_size == 128 and paper.damp == 0.01 and not paper.act_order
    with pytest.raises(ValueError, match="variant"):
        get_recipe("w4a16g128-gptq", "authors")


def test_save_refuses_what_the_format_cannot_express(tmp_path):
    from dllmq.models import set_module
    from dllmq.quant import save_quantized

    model = random_model(tiny_config("llada"), seed=0)
    path = model.spec.blocks + ".0." + model.spec.down
    set_module(model, path, QLinear.from_linear(get_module(model, path), input_transform=nn.Identity()))
    with pytest.raises(ValueError, match="input transform .* cannot express"):
        save_quantized(model, tmp_path)


# ---- issue 16: validate everything before changing the model ---------------------------------
def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _modules(model) -> list[tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_modules()]


@pytest.mark.parametrize("recipe", list(RECIPES)[:3] + ["w8a8-rtn"])
def test_tied_llada_quantizes_with_weight_recipes(recipe):
    """A weight-tied LLaDA has no LM-head module; summarize() and every weight recipe cope."""
    model = random_model(tiny_config("llada", tie_word_embeddings=True), seed=0)
    summary = quantize_(model, recipe, _calib(), progress=False)
    assert summary.weight_counts == dict.fromkeys(LINEAR_KINDS, 2)
    assert not summary.lm_head_quantized


def _bad_recipes():
    from dllmq.quant import AWQConfig, DuQuantConfig, QuaRotConfig, SmoothQuantConfig

    g64 = QuantSpec(4, granularity="group", group_size=64)  # fits q (32 -> per channel), not down (96)
    return {
        "rtn": (RTNConfig(weight=g64),),
        "gptq": (GPTQConfig(weight=g64),),
        "awq": (AWQConfig(weight=g64),),
        "smoothquant-then-rtn": (SmoothQuantConfig(), RTNConfig(weight=g64)),
        "duquant": (DuQuantConfig(block_size=64),),
        "rtn-head-tied": (RTNConfig(weight=QuantSpec(8, granularity="channel"), lm_head=True),),
        "quarot-tied": (QuaRotConfig(), RTNConfig(weight=QuantSpec(8, granularity="channel"))),
        "awq-after-rtn": (RTNConfig(weight=QuantSpec(8, granularity="channel")), AWQConfig()),
    }


@pytest.mark.parametrize("name", list(_bad_recipes()))
def test_bad_setting_fails_before_any_change(name):
    tied = name.endswith("tied")
    model = random_model(tiny_config("llada", tie_word_embeddings=tied), seed=0)
    before, mods = _state(model), _modules(model)
    with pytest.raises((ValueError, TypeError)) as e:
        quantize_(model, _bad_recipes()[name], _calib(), progress=False)
    assert "\n" not in str(e.value)
    assert _modules(model) == mods
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_transform_after_an_earlier_quantization_is_refused_before_any_change():
    from dllmq.quant import QuaRotConfig

    model = random_model(tiny_config("llada"), seed=0)
    quantize_(model, "w4a16g128-rtn", None, progress=False)
    before = _state(model)
    with pytest.raises(ValueError, match="put QuaRot first"):
        quantize_(model, (QuaRotConfig(),), None, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_each_variant_carries_its_calibration():
    from dllmq.quant import CalibSpec, get_calibration

    assert get_calibration("w4a4-quarot:code") == CalibSpec("wikitext2", 128, 4096)
    assert get_calibration("w4a4-quarot") == CalibSpec("wikitext2", 128, 2048)
    assert get_calibration("w4a16g128-awq:code") == CalibSpec("pileval", 128, 512)
    r = RECIPES["w4a4-quarot"]
    assert (r.calib_dataset, r.nsamples, r.seqlen) == ("wikitext2", 128, 2048)


def test_resolve_calibration_reads_the_variant():
    from dllmq.harness import resolve_calibration

    assert resolve_calibration("w4a4-quarot:code")["seqlen"] == 4096
    assert resolve_calibration("w4a4-quarot:code", max_position=2048)["seqlen"] == 2048
    assert resolve_calibration("w4a16g128-awq")["source"] == "pileval"
