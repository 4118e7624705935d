"""SmoothQuant (dllmq/quant/smoothquant.py) on tiny LLaDA and Dream models, CPU, fp32."""

import pytest
import torch
from dllmq.models import get_module
from dllmq.quant import Calibration, QuantSpec, RTNConfig, quantize_
from dllmq.quant.smoothquant import (
    SmoothQuantConfig,
    gqa_expand,
    gqa_fold,
    smoothing_scales,
)

from test_quant_rotation import _ids, _model

ARCHS = ["llada", "Dream"]


def _calib(n=4, L=16, seed=0):
    return Calibration.random(60, n, L, seed=seed, progress=False)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_scales_balance_activation_and_weight_ranges():
    """alpha = 0.5: after x / s and W diag(s), every channel's activation and weight ranges
    are equal (the defining property of SmoothQuant's migration)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 8, generator=g) * torch.tensor([1, 1, 30, 1, 1, 0.1, 1, 5.0])
    W1, W2 = torch.randn(6, 8, generator=g), torch.randn(3, 8, generator=g)
    s = smoothing_scales(X.abs().amax(0), [W1, W2], alpha=0.5)
    x_range = (X / s).abs().amax(0)
    w_range = (torch.cat([W1, W2]) * s).abs().amax(0)
    assert torch.allclose(x_range, w_range, rtol=1e-5)
    # alpha = 1 moves all of it into the weights: every activation channel has range 1
    s1 = smoothing_scales(X.abs().amax(0), [W1], alpha=1.0)
    assert torch.allclose((X / s1).abs().amax(0), torch.ones(8), rtol=1e-6)


def test_gqa_fold_and_expand():
    x = torch.arange(24.0)  # 6 heads x D=4, 2 kv heads (3 query heads each)
    folded = gqa_fold(x, num_heads=6, num_kv_heads=2)
    assert torch.equal(folded, torch.tensor([8.0, 9, 10, 11, 20, 21, 22, 23]))
    assert torch.equal(gqa_expand(folded, 6, 2)[4:8], folded[:4])
    assert torch.equal(gqa_expand(folded, 6, 2)[12:16], folded[4:])


@pytest.mark.parametrize("arch", ARCHS)
def test_smoothing_leaves_fp_outputs_unchanged(arch):
    m = _model(arch, num_heads=8, num_kv_heads=2 if arch == "Dream" else 8)
    ids = _ids()
    ref = m(ids)
    norm_before = get_module(m.blocks[0], m.spec.attn_norm).weight.clone()
    v_before = get_module(m.blocks[0], m.spec.v).weight.clone()
    quantize_(m, (SmoothQuantConfig(act=None),), _calib(), progress=False)
    assert torch.allclose(m(ids), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert not torch.allclose(get_module(m.blocks[0], m.spec.attn_norm).weight, norm_before)
    assert not torch.allclose(get_module(m.blocks[0], m.spec.v).weight, v_before)  # v -> o fold


def _outlier_model(arch):
    m = _model(arch)
    with torch.no_grad():
        get_module(m, m.spec.embed).weight[:, 7] *= 40  # an outlier channel at q/k/v/gate/up inputs
    return m


def _sq(bits, attn=False):
    act = QuantSpec(bits, sym=False, granularity="token")
    return (SmoothQuantConfig(alpha=0.5, act=act, attn=act if attn else None),
            RTNConfig(weight=QuantSpec(bits, sym=False, granularity="channel")))


@pytest.mark.parametrize("arch", ARCHS)
def test_smoothquant_beats_rtn_with_outliers_and_w8_beats_w4(arch):
    """W8A8 with an outlier channel: smoothing beats plain RTN; W4A4 is far worse than W8A8."""
    ids = _ids()
    ref = _outlier_model(arch)(ids)
    errs = {}
    for bits in (8, 4):
        m = _outlier_model(arch)
        s = quantize_(m, _sq(bits), _calib(), progress=False)
        assert s.act_counts == s.weight_counts == {k: 2 for k in ("q", "k", "v", "o", "gate", "up", "down")}
        errs[bits] = _rel(m(ids), ref)
    for bits in (8, 4):
        rtn = _outlier_model(arch)
        quantize_(rtn, (RTNConfig(weight=QuantSpec(bits, sym=False, granularity="channel"),
                                  act=QuantSpec(bits, sym=False, granularity="token")),),
                  progress=False)
        errs[f"rtn{bits}"] = _rel(rtn(ids), ref)
    assert errs[8] < 0.02, errs
    assert errs[8] < errs["rtn8"], errs  # at W4A4 smoothing may lose to RTN (paper F4)
    assert errs[4] > 3 * errs[8], errs


@pytest.mark.parametrize("arch", ARCHS)
def test_code_variant_quantizes_attention_inputs_and_repeats(arch):
    ids = _ids()
    ref = _model(arch)(ids)
    outs = []
    for _ in range(2):
        m = _model(arch)
        quantize_(m, _sq(8, attn=True), _calib(), progress=False)
        outs.append(m(ids))
    assert torch.equal(outs[0], outs[1])
    m = _model(arch)
    quantize_(m, _sq(8), _calib(), progress=False)
    no_attn = m(ids)
    assert not torch.equal(outs[0], no_attn)  # q/k/v hooks changed something ...
    assert _rel(outs[0], ref) < 0.02  # ... within the 8-bit budget


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ValueError, match="unknown"):
        SmoothQuantConfig(groups=("qkv", "ffn"))
    m = _model("llada")
    with pytest.raises(ValueError, match="calibration"):
        quantize_(m, (SmoothQuantConfig(),), None)


@pytest.mark.parametrize("arch", ARCHS)
def test_smoothing_flattens_the_outlier_channel_at_q_input(arch):
    """The injected outlier channel dominates the q input's per-token range; after smoothing
    (alpha 0.5) a channel's range becomes sqrt(act range * weight range), so the max/median
    ratio of channel ranges shrinks roughly to its square root (weights being ~uniform)."""
    ids = _ids()

    def channel_ranges(m):
        got = []
        h = get_module(m.blocks[0], m.spec.q).register_forward_pre_hook(
            lambda _m, a: got.append(a[0].reshape(-1, a[0].shape[-1])))
        m(ids)
        h.remove()
        r = got[0].abs().amax(0)
        return (r.max() / r.median()).item()

    m = _outlier_model(arch)
    before = channel_ranges(m)
    quantize_(m, (SmoothQuantConfig(act=None),), _calib(), progress=False)
    after = channel_ranges(m)
    assert before > 4 and after < before**0.75, (before, after)


def test_named_smoothquant_recipes_follow_appendix_a():
    from dllmq.quant import get_recipe

    for bits in (8, 4):
        sq, rtn = get_recipe(f"w{bits}a{bits}-smoothquant")
        act = QuantSpec(bits, sym=False, granularity="token")
        assert sq.alpha == 0.5 and sq.act == act and sq.attn is None
        assert rtn.weight == QuantSpec(bits, sym=False, granularity="channel") and rtn.act is None
        sq_code, _ = get_recipe(f"w{bits}a{bits}-smoothquant:code")
        assert sq_code.attn == act
    m = _model("llada")
    ids = _ids()
    ref = m(ids)
    quantize_(m, "w8a8-smoothquant", _calib(), progress=False)
    assert _rel(m(ids), ref) < 0.02
