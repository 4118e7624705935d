"""AWQ: chosen scales beat scale 1 on the search objective, folding is exact, clipping helps,
groups follow the ArchSpec (v->o skipped under Dream's GQA)."""

import pytest
import torch
import torch.nn.functional as F
from dllmq.models import random_model, tiny_config
from dllmq.quant import Calibration
from dllmq.quant.awq import (
    AWQConfig,
    _fold_into_linear,
    _fold_into_norm,
    act_scale,
    apply_clip,
    awq_block,
    search_clip,
    search_scales,
)
from dllmq.quant.calib import BlockInputs
from dllmq.quant.primitives import QuantSpec, fake_quant


def _salient_layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 64, generator=g)
    x[:, :4] *= 20  # salient input channels
    w = torch.randn(32, 64, generator=g) * 0.05
    return w, x


def test_search_scales_beats_scale_one():
    w, x = _salient_layer()
    spec = QuantSpec(3, group_size=16)
    ref = x @ w.t()

    def loss(ws):
        return float(((x @ ws[0].t() - ref) ** 2).mean())

    s, losses = search_scales(act_scale(x), [w], loss, spec, n_grid=20)
    assert len(losses) == 20
    assert losses[0] == pytest.approx(loss([fake_quant(w, spec)]))  # grid point 0 is scale 1
    best = min(losses)
    assert best < 0.95 * losses[0]
    ws = fake_quant(w * s, spec) / s
    assert loss([ws]) == pytest.approx(best)


def test_clip_search_never_worse_than_no_clip():
    w, x = _salient_layer(1)
    spec = QuantSpec(3, group_size=16)
    m = search_clip(w, x, spec, n_grid=20, max_shrink=0.5, n_sample_token=256)
    assert m.shape == (32, 4)
    xg = x.reshape(-1, 4, 16)
    absmax = w.reshape(32, 4, 16).abs().amax(-1)
    assert (m <= absmax + 1e-7).all() and (m >= 0.5 * absmax - 1e-6).all()

    def group_err(wq):
        return ((torch.einsum("tgc,ogc->otg", xg, wq.reshape(32, 4, 16))
                 - torch.einsum("tgc,ogc->otg", xg, w.reshape(32, 4, 16))) ** 2).mean(1)

    clipped = group_err(fake_quant(apply_clip(w, m), spec))
    plain = group_err(fake_quant(w, spec))
    assert (clipped <= plain * (1 + 1e-5)).all() and (clipped < plain).any()


@pytest.mark.parametrize("arch", ["llada", "Dream"])
def test_folding_is_output_invariant(arch):
    model = random_model(tiny_config(arch), seed=0)
    ids = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = model(ids)
    blk, sp = model.blocks[0], model.spec
    g = torch.Generator().manual_seed(1)
    C = model.config.hidden_size
    s = torch.rand(C, generator=g) + 0.5
    with torch.no_grad():
        _fold_into_norm(blk.get_submodule(sp.attn_norm),
                        [blk.get_submodule(sp.linear_name(k)) for k in ("q", "k", "v")], s)
        s2 = torch.rand(model.config.intermediate_size, generator=g) + 0.5
        _fold_into_linear(blk.get_submodule(sp.up), [blk.get_submodule(sp.down)], s2)
    torch.testing.assert_close(model(ids), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,has_vo", [("llada", True), ("Dream", False)])
def test_scale_groups_follow_arch(arch, has_vo):
    model = random_model(tiny_config(arch), seed=0)
    calib = Calibration.random(60, 4, 16, batch_size=2, progress=False)
    inputs = BlockInputs.capture(model, calib)
    report = awq_block(model.blocks[0], inputs, model.spec,
                       AWQConfig(QuantSpec(3, granularity="channel"), n_grid=5, clip_grid=4))
    assert set(report) == ({"qkv", "o", "gate_up", "down"} if has_vo else {"qkv", "gate_up", "down"})
    assert all(r <= 1.0 for r in report.values())  # best never worse than scale 1


def test_awq_end_to_end_beats_rtn_on_llada_output():
    from dllmq.quant import quantize_

    calib = Calibration.random(60, 4, 16, batch_size=2)
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(3))
    errs = {}
    for recipe in ("w3a16g128-rtn", "w3a16g128-awq"):
        model = random_model(tiny_config("llada"), seed=0)
        ref = model(ids)
        quantize_(model, recipe, calib, progress=False)
        errs[recipe] = float(F.mse_loss(model(ids), ref).detach())
    assert errs["w3a16g128-awq"] < errs["w3a16g128-rtn"]


def test_subset_of_kinds_keeps_unselected_linears_exact():
    """AWQ on q only still folds its scale into k and v (they read the same norm): the model
    with only q quantized equals the FP model up to q's quantization, so quantizing q at 8 bits
    leaves the output close to FP."""
    from dllmq.quant import quantize_

    model = random_model(tiny_config("llada"), seed=0)
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        s = quantize_(model, (AWQConfig(QuantSpec(8, granularity="channel"), kinds=("q",), n_grid=4),),
                      Calibration.random(60, 2, 16), progress=False)
        out = model(ids)
    assert s.weight_counts == {"q": 2}
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-3 * ref.abs().max().item())


def test_clip_search_picks_what_llm_awq_broadcast_formula_picks():
    """search_clip's batched matmuls choose the same thresholds as llm-awq's auto_clip_layer
    formula (broadcast (o, n, G, g) products summed over g), written out here."""
    w, x = _salient_layer(2)
    spec = QuantSpec(4, group_size=16)
    xs = x.reshape(-1, 64)[0::max(1, x.reshape(-1, 64).shape[0] // 128)]
    xg = xs.reshape(1, xs.shape[0], 4, 16)
    wb = w.reshape(32, 1, 4, 16)
    org_max = wb.abs().amax(-1, keepdim=True)
    best, min_err = org_max.clone(), torch.full_like(org_max, float("inf"))
    org_out = (xg * wb).sum(-1)
    for i in range(10):
        m = org_max * (1 - i / 20)
        q = fake_quant(torch.clamp(wb, -m, m).reshape(-1, 64), spec).reshape(wb.shape)
        err = ((xg * q).sum(-1) - org_out).pow(2).mean(1).reshape(min_err.shape)
        better = err < min_err
        min_err[better], best[better] = err[better], m[better]
    ours = search_clip(w, x, spec, n_grid=20, max_shrink=0.5, n_sample_token=128)
    torch.testing.assert_close(ours, best.reshape(32, 4), rtol=0, atol=0)
