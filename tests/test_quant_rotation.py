"""QuaRot (dllmq/quant/quarot.py) on tiny LLaDA and Dream models, CPU, fp32."""

import pytest
import torch
from dllmq.models import get_module, random_model, set_module, tiny_config
from dllmq.quant import QuantSpec, RTNConfig, quantize_
from dllmq.quant.qlinear import QLinear
from dllmq.quant.quarot import HeadActQuant, QuaRotConfig, rotate_model

ARCHS = ["llada", "Dream"]


def _model(arch: str, seed: int = 0, **cfg):
    """A tiny model whose norm weights and q/k/v biases are not trivial (random init sets them to
    1 and 0, which would hide a wrong fold)."""
    m = random_model(tiny_config(arch, **cfg), seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return m


def _ids(n=2, L=16, seed=1):
    return torch.randint(0, 60, (n, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_rotation_leaves_fp_outputs_unchanged(arch):
    m = _model(arch)
    ids = _ids()
    ref = m(ids)
    q_before = get_module(m.blocks[0], m.spec.q).weight.clone()
    quantize_(m, (QuaRotConfig(act=None, kv=None),))
    out = m(ids)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # not a no-op: weights rotated, online transforms installed where the math says
    assert not torch.allclose(get_module(m.blocks[0], m.spec.q).weight, q_before, atol=1e-3)
    down = get_module(m.blocks[0], m.spec.down)
    o = get_module(m.blocks[0], m.spec.o)
    assert isinstance(down, QLinear) and down.input_transform is not None
    assert isinstance(o, QLinear) and o.input_transform is not None
    assert torch.equal(get_module(m.blocks[1], m.spec.attn_norm).weight, torch.ones(32))


@pytest.mark.parametrize("arch", ARCHS)
def test_rotation_with_padding_mask_and_gqa(arch):
    """Dream tiny has 4 query heads over 2 KV heads; padded batches go through the same maths."""
    m = _model(arch, num_heads=8, num_kv_heads=2 if arch == "Dream" else 8)
    ids = _ids(3, 12, seed=4)
    am = torch.ones_like(ids)
    am[0, 9:] = 0
    ref = m(ids, attention_mask=am)
    rotate_model(m, seed=5)
    out = m(ids, attention_mask=am)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("arch", ARCHS)
def test_qk_head_hadamard_keeps_attention(arch):
    """q_hook/k_hook rotate q and k over the head dimension by the same orthogonal H_D."""
    m = _model(arch)
    ids = _ids()
    ref = m(ids)

    for blk in m.blocks:
        set_module(blk, m.spec.q_hook, HeadActQuant(hadamard=True, spec=None))
        set_module(blk, m.spec.k_hook, HeadActQuant(hadamard=True, spec=None))
    assert torch.allclose(m(ids), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_tied_embeddings_rejected():
    m = random_model(tiny_config("Dream", tie_word_embeddings=True), seed=0)
    with pytest.raises(ValueError, match="untied embeddings"):
        rotate_model(m, seed=0)


def _recipe(bits: int, seed: int = 0, kv: bool = True):
    act = QuantSpec(bits, sym=True, granularity="token")
    return (QuaRotConfig(seed=seed, act=act, kv=act if kv else None),
            RTNConfig(weight=QuantSpec(bits, sym=True, granularity="channel")))


@pytest.mark.parametrize("arch", ARCHS)
def test_w8a8_error_small_w4a4_larger(arch):
    ids = _ids(2, 16)
    ref = _model(arch)(ids)
    errs = {}
    for bits in (8, 4):
        m = _model(arch)
        summary = quantize_(m, _recipe(bits))
        assert summary.weight_counts == summary.act_counts == {k: 2 for k in
                                                              ("q", "k", "v", "o", "gate", "up", "down")}
        errs[bits] = ((m(ids) - ref).norm() / ref.norm()).item()
    assert errs[8] < 0.05, errs
    assert errs[4] > 3 * errs[8], errs


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_runs_repeat_exactly(arch):
    ids = _ids()
    outs = []
    for seed in (3, 3, 4):
        m = _model(arch)
        quantize_(m, _recipe(4, seed=seed))
        outs.append(m(ids))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_kv_quant_error_within_per_token_bound():
    """K after the head Hadamard, quantized per token over all heads: error <= half a step,
    step = 2 absmax / (2^b - 1) of that token (dllmq's symmetric convention)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 16)  # (B, Hkv, L, D)
    x[:, 1, :, 5] *= 30
    hook = HeadActQuant(hadamard=True, spec=QuantSpec(4, sym=True, granularity="token"))
    rot = HeadActQuant(hadamard=True, spec=None)(x)
    err = (hook(x) - rot).abs().transpose(1, 2).reshape(2, 10, -1).amax(-1)  # (B, L)
    step = 2 * rot.abs().transpose(1, 2).reshape(2, 10, -1).amax(-1) / 15
    assert (err <= step / 2 + 1e-6).all()


def _linear_input_stats(m, ids, path):
    got = []
    mod = get_module(m.blocks[0], path)
    h = mod.register_forward_pre_hook(lambda _m, a: got.append(a[0].detach()))
    m(ids)
    h.remove()
    x = got[0].reshape(-1, got[0].shape[-1])
    if isinstance(mod, QLinear) and mod.input_transform is not None:
        x = mod.input_transform(x)
    a = x.abs()
    kurt = (((x - x.mean(-1, keepdim=True)) ** 4).mean(-1) / x.var(-1, unbiased=False) ** 2).mean()
    ratio = (a.amax(-1) / a.median(-1).values).mean()
    return kurt.item(), ratio.item()


@pytest.mark.parametrize("arch", ARCHS)
def test_rotation_removes_injected_outlier_channel(arch):
    """An outlier channel in the residual stream (embedding column x40) and in one FFN hidden
    unit (up row x40) shows at the q and down inputs; after rotation both inputs are flat."""
    cfg = dict(hidden_size=64, intermediate_size=192, num_heads=4,
               num_kv_heads=4 if arch == "llada" else 2)
    m = _model(arch, **cfg)
    with torch.no_grad():
        get_module(m, m.spec.embed).weight[:, 7] *= 40
        get_module(m.blocks[0], m.spec.up).weight[11] *= 40
    ids = _ids(2, 32)
    before = {k: _linear_input_stats(m, ids, m.spec.linear_name(k)) for k in ("q", "down")}
    rotate_model(m, seed=0)
    after = {k: _linear_input_stats(m, ids, m.spec.linear_name(k)) for k in ("q", "down")}
    for k in ("q", "down"):
        assert before[k][0] > 20 and after[k][0] < before[k][0] / 4, (k, before, after)
        assert after[k][1] < before[k][1] / 3, (k, before, after)


def test_named_quarot_recipes_follow_appendix_a_and_run():
    from dllmq.quant import Calibration, GPTQConfig, get_recipe
    from dllmq.quant.gptq import MSEClip

    for bits in (8, 4):
        rot, gptq = get_recipe(f"w{bits}a{bits}-quarot")
        assert isinstance(rot, QuaRotConfig) and isinstance(gptq, GPTQConfig)
        assert rot.act == rot.kv == QuantSpec(bits, sym=True, granularity="token")
        assert gptq.weight == QuantSpec(bits, sym=True, granularity="channel")
        # the authors' --w_clip (QuaRot's grid 100, maxshrink 0.8, norm 2.4) and their order:
        # activation quantizers configured after GPTQ
        assert gptq.mse_clip == MSEClip(grid=100, maxshrink=0.8, norm=2.4)
        assert rot.calibrate_with_act_quant is False
        assert get_recipe(f"w{bits}a{bits}-quarot:code") == (rot, gptq)
    ids = _ids()
    m = _model("Dream")
    ref = m(ids)
    s = quantize_(m, "w8a8-quarot", Calibration.random(60, 4, 16, seed=0), progress=False)
    assert s.weight_counts["q"] == 2 and "gptq" in s.weight_specs["down"][0]
    assert ((m(ids) - ref).norm() / ref.norm()).item() < 0.02


def test_unconstructible_width_fails_before_touching_the_model():
    from dllmq.quant.hadamard import HadamardError

    m = _model("llada", intermediate_size=52)  # 52 = 4 * 13: no construction here
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(HadamardError, match="order 52"):
        rotate_model(m, seed=0)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    rotate_model(m, seed=0, online_down=False)  # the residual rotation alone needs only 32


# ---- calibration order: GPTQ on the rotated full-precision model (the authors' main.py) -------
def _w4a4(calibrate_with_act_quant=False, act=True, kinds=None):
    from dllmq.quant import GPTQConfig

    spec = QuantSpec(4, sym=True, granularity="token")
    gptq = GPTQConfig(weight=QuantSpec(4, sym=True, granularity="channel"), blocksize=16)
    if kinds is not None:
        gptq = GPTQConfig(weight=gptq.weight, blocksize=16, kinds=kinds)
    return (QuaRotConfig(seed=0, act=spec if act else None, kv=spec if act else None,
                         calibrate_with_act_quant=calibrate_with_act_quant), gptq)


def _recorded_hessians(monkeypatch, model, recipe, calib):
    """Run quantize_ and return the Hessian of every gptq_quantize call, in call order."""
    import dllmq.quant.gptq as gptq_mod

    seen, real = [], gptq_mod.gptq_quantize

    def spy(W, H, *args, **kw):
        seen.append(H.clone())
        return real(W, H, *args, **kw)

    monkeypatch.setattr(gptq_mod, "gptq_quantize", spy)
    quantize_(model, recipe, calib, progress=False)
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_gptq_hessian_comes_from_rotated_fp_model_unless_asked(arch, monkeypatch):
    """GPTQ of block 0's down projection only: by default its Hessian is 2 X^T X / T of the
    down input (after the online Hadamard) of the rotated, otherwise untouched FP model; with
    calibrate_with_act_quant the A4/KV4 fake-quant upstream (q/k/v/o/gate/up inputs, K, V)
    changes it."""
    from dllmq.quant import Calibration
    from dllmq.quant.gptq import hessian

    calib = Calibration(_ids(4, 16, seed=7))
    ref = _model(arch)
    rotate_model(ref, seed=0)
    down = get_module(ref.blocks[0], ref.spec.down)
    xs = []
    h = down.register_forward_pre_hook(lambda _m, a: xs.append(down.input_transform(a[0])))
    with torch.no_grad():
        ref(calib.input_ids)
    h.remove()
    H_fp = hessian(xs[0].reshape(-1, xs[0].shape[-1]))

    H_default = _recorded_hessians(monkeypatch, _model(arch), _w4a4(kinds=("down",)), calib)[0]
    torch.testing.assert_close(H_default, H_fp, rtol=1e-4, atol=1e-5 * H_fp.abs().max().item())
    H_actq = _recorded_hessians(monkeypatch, _model(arch),
                                _w4a4(calibrate_with_act_quant=True, kinds=("down",)), calib)[0]
    assert (H_actq - H_fp).norm() > 1e-3 * H_fp.norm()


@pytest.mark.parametrize("arch", ARCHS)
def test_act_quant_switched_on_after_gptq(arch):
    """Default order: GPTQ computes exactly the weights of the weight-only (A16) recipe, and the
    A4/KV4 quantizers are active once quantize_ returns (outputs differ from the A16 model).
    calibrate_with_act_quant=True calibrates through them and gets other weights."""
    from dllmq.quant import Calibration

    calib = Calibration(_ids(4, 16, seed=7))
    ids = _ids()

    def run(**kw):
        m = _model(arch)
        summary = quantize_(m, _w4a4(**kw), calib, progress=False)
        weights = [get_module(b, m.spec.linear_name(k)).weight.clone() for b in m.blocks
                   for k in ("q", "k", "v", "o", "gate", "up", "down")]
        return m, summary, weights

    m_a16, s_a16, w_a16 = run(act=False)
    m, s, w = run()
    m_early, _, w_early = run(calibrate_with_act_quant=True)
    assert all(torch.equal(a, b) for a, b in zip(w, w_a16, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(w_early, w_a16, strict=True))
    assert s_a16.act_counts == {} and s.act_counts == {k: 2 for k in
                                                      ("q", "k", "v", "o", "gate", "up", "down")}
    for blk in m.blocks:
        assert get_module(blk, m.spec.k_hook).spec == QuantSpec(4, sym=True, granularity="token")
    with torch.no_grad():
        out, out_a16 = m(ids), m_a16(ids)
    assert ((out - out_a16).norm() / out_a16.norm()).item() > 1e-3
