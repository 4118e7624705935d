"""GPTQ: beats RTN on its layer objective, lazy batching is exact, stacking rows is exact,
act-order bookkeeping, damping recovery, seeded repeat; the MSE clip search (QuaRot's --w_clip)."""

import pytest
import torch
from dllmq.quant.gptq import (
    GPTQConfig,
    HessianAccumulator,
    MSEClip,
    gptq_quantize,
    hessian,
    layer_error,
    mse_clip_params,
)
from dllmq.quant.primitives import QuantSpec, quant_params, quantize_weight, quantize_with


def _layer(seed=0, out=24, inp=64, tokens=512):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    x = torch.randn(tokens, inp, generator=g) @ mix  # correlated inputs
    x[:, :3] *= 8  # a few outlier channels, as in dLLMs (F0)
    w = torch.randn(out, inp, generator=g) * 0.1
    return w, x


def _out_err(w, q, x):
    return float(((x @ (w - q).t()) ** 2).sum())


@pytest.mark.parametrize("spec", [QuantSpec(4, sym=False, group_size=16),
                                  QuantSpec(3, sym=True, granularity="channel"),
                                  QuantSpec(2, sym=False, group_size=32)], ids=lambda s: s.describe())
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("clip", [None, MSEClip()], ids=["minmax", "mse_clip"])
def test_gptq_beats_rtn_on_layer_objective(spec, act_order, clip):
    w, x = _layer()
    res = gptq_quantize(w, hessian(x), spec, blocksize=16, act_order=act_order, mse_clip=clip)
    rtn = quantize_weight(w, spec)
    assert _out_err(w, res.weight, x) < 0.9 * _out_err(w, rtn.weight, x)
    # the reported error is ||(W-Q)X||^2 / (T * out)
    assert res.error == pytest.approx(_out_err(w, res.weight, x) / (x.shape[0] * w.shape[0]), rel=1e-3)
    # the stored integer state is what the weight dequantizes from (searched scales included)
    gi = (torch.arange(64) // spec.group_len(64) if spec.granularity == "group"
          else torch.zeros(64, dtype=torch.long))
    gi = res.g_idx.long() if res.g_idx is not None else gi
    torch.testing.assert_close((res.codes.float() - res.zero[:, gi]) * res.scale[:, gi], res.weight,
                               rtol=0, atol=1e-6)


def test_hessian_accumulator_is_2xtx_over_t():
    _, x = _layer(tokens=100)
    acc = HessianAccumulator()
    for chunk in x.split(30):
        acc.add(chunk)
    torch.testing.assert_close(acc.finalize(), 2 * x.t() @ x / 100, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="no calibration tokens"):
        HessianAccumulator().finalize()


@pytest.mark.parametrize("clip", [None, MSEClip(grid=20)], ids=["minmax", "mse_clip"])
def test_lazy_block_updates_are_exact(clip):
    w, x = _layer(1)
    w, x = w.double(), x.double()
    H = hessian(x).double()
    spec = QuantSpec(4, group_size=16)
    a = gptq_quantize(w, H, spec, blocksize=1, mse_clip=clip)
    b = gptq_quantize(w, H, spec, blocksize=16, mse_clip=clip)
    c = gptq_quantize(w, H, spec, blocksize=24, mse_clip=clip)  # groups start mid-block
    assert torch.equal(a.codes, b.codes) and torch.equal(b.codes, c.codes)


def test_stacked_rows_equal_separate_layers():
    w, x = _layer(2)
    H = hessian(x)
    spec = QuantSpec(4, group_size=16)
    both = gptq_quantize(w, H, spec, blocksize=16)
    top = gptq_quantize(w[:10], H, spec, blocksize=16)
    bottom = gptq_quantize(w[10:], H, spec, blocksize=16)
    assert torch.equal(both.codes, torch.cat([top.codes, bottom.codes]))
    torch.testing.assert_close(both.weight, torch.cat([top.weight, bottom.weight]))


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_codes_dequantize_to_weight(static_groups):
    w, x = _layer(3)
    res = gptq_quantize(w, hessian(x), QuantSpec(4, group_size=16), blocksize=16, act_order=True,
                        static_groups=static_groups)
    if static_groups:
        assert res.g_idx is None  # groups stay contiguous: export needs no g_idx
        gi = torch.arange(64) // 16
    else:
        assert res.g_idx is not None and sorted(res.g_idx.tolist()) == sorted((torch.arange(64) // 16).tolist())
        gi = res.g_idx.long()
    deq = (res.codes.float() - res.zero[:, gi]) * res.scale[:, gi]
    torch.testing.assert_close(deq, res.weight, rtol=0, atol=1e-6)


def test_dead_inputs_zeroed():
    w, x = _layer(4)
    x[:, 5] = 0
    res = gptq_quantize(w, hessian(x), QuantSpec(4, group_size=16), blocksize=16)
    assert torch.isfinite(res.weight).all()


def test_indefinite_hessian_raises_damping_and_goes_on(caplog):
    w, _ = _layer(5, inp=16)
    H = torch.eye(16) + 2 * torch.diag(torch.ones(15), 1) + 2 * torch.diag(torch.ones(15), -1)
    with caplog.at_level("WARNING", logger="dllmq.quant.gptq"):
        res = gptq_quantize(w, H, QuantSpec(4, granularity="channel"), blocksize=8)
    assert "not positive definite" in caplog.text
    assert torch.isfinite(res.weight).all()


def test_error_is_objective_of_original_weight():
    w, x = _layer(6)
    H = hessian(x)
    res = gptq_quantize(w, H, QuantSpec(4, group_size=16))
    assert res.error == pytest.approx(layer_error(res.weight - w, H))
    assert torch.equal(gptq_quantize(w, H, QuantSpec(4, group_size=16)).codes, res.codes)  # repeat


# ---- MSE clip search (QuaRot's --w_clip) ----------------------------------------------------
def _row_err(w, scale, zero, spec, norm):
    """sum over each row of |w - Q(w)|^norm with the given per-row parameters (R, 1)."""
    row = QuantSpec(spec.bits, spec.sym, "channel")
    return (quantize_with(w, scale, zero, row) - w).abs().pow(norm).sum(1)


@pytest.mark.parametrize("spec", [QuantSpec(4, sym=False, granularity="channel"),
                                  QuantSpec(3, sym=True, granularity="channel"),
                                  QuantSpec(8, sym=True, granularity="channel")],
                         ids=lambda s: s.describe())
def test_mse_clip_never_worse_than_minmax_and_better_on_heavy_tails(spec):
    g = torch.Generator().manual_seed(0)
    clip = MSEClip()
    gauss = torch.randn(32, 96, generator=g)
    # Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3), heavy tails, a few large values
    heavy = torch.randn(32, 96, generator=g) / (torch.randn(3, 32, 96, generator=g) ** 2).mean(0).sqrt()
    for w in (gauss, heavy, torch.rand(32, 96, generator=g)):
        s0, z0 = quant_params(w, spec)
        s, z, shrink = mse_clip_params(w, spec, clip)
        err0, err = _row_err(w, s0, z0, spec, clip.norm), _row_err(w, s, z, spec, clip.norm)
        assert (err <= err0).all()
        assert ((shrink <= 1) & (shrink >= 0.21 - 1e-9)).all()  # 1 - 79/100: QuaRot's last shrink
        # the kept parameters are those of the kept shrink
        for r in (0, 7):
            sr, zr = quant_params(w[r:r + 1], QuantSpec(spec.bits, spec.sym, "channel",
                                                        clip_ratio=float(shrink[r])))
            assert torch.equal(sr, s[r:r + 1]) and torch.equal(zr, z[r:r + 1])
    s0, z0 = quant_params(heavy, spec)
    s, z, shrink = mse_clip_params(heavy, spec, clip)
    err0, err = _row_err(heavy, s0, z0, spec, clip.norm), _row_err(heavy, s, z, spec, clip.norm)
    assert err.sum() < err0.sum()
    if spec.bits < 8:  # few levels: clipping the tail pays on almost every row
        assert (err < err0).float().mean() > 0.8 and err.sum() < 0.95 * err0.sum()


@pytest.mark.parametrize("bits", [3, 4])
def test_mse_clip_keeps_full_range_on_grid_values(bits):
    """Rows whose values are exactly the min-max grid (every level present) quantize with zero
    error at p = 1; any shrink clips the extremes, so the search must keep p = 1."""
    g = torch.Generator().manual_seed(1)
    spec = QuantSpec(bits, sym=False, granularity="channel")
    levels = torch.arange(spec.maxq + 1, dtype=torch.float32)  # codes 0..maxq
    rows = []
    for r in range(8):
        step, z0 = 0.01 * (r + 1), r % (spec.maxq + 1)
        vals = (levels.repeat(3) - z0) * step  # (3 * 2^b,) includes min and max of the grid
        rows.append(vals[torch.randperm(vals.numel(), generator=g)])
    w = torch.stack(rows)
    s0, z0 = quant_params(w, spec)
    s, z, shrink = mse_clip_params(w, spec, MSEClip())
    assert torch.equal(shrink, torch.ones(8))
    assert torch.equal(s, s0) and torch.equal(z, z0)
    torch.testing.assert_close(quantize_with(w, s, z, QuantSpec(bits, False, "channel")), w,
                               rtol=0, atol=1e-6)


def test_mse_clip_config_validation():
    assert MSEClip().shrinks()[0] == 1.0 and len(MSEClip().shrinks()) == 80
    for bad in (dict(grid=0), dict(maxshrink=0.0), dict(maxshrink=1.5), dict(norm=0.0),
                dict(grid=2, maxshrink=0.4)):
        with pytest.raises(ValueError, match="MSEClip"):
            MSEClip(**bad)
    with pytest.raises(ValueError, match="leave clip_ratio at 1.0"):
        GPTQConfig(weight=QuantSpec(4, granularity="channel", clip_ratio=0.8), mse_clip=MSEClip())
    with pytest.raises(TypeError, match="MSEClip"):
        GPTQConfig(mse_clip=True)


# ---- the documented differences from IST-DASLab's quantizer (gptq.py, primitives.py) ----------
def test_symmetric_group_without_negative_values_keeps_its_maximum():
    """dllmq: range [-absmax, absmax]; IST-DASLab's find_params keeps xmin = 0 for such a row, so
    scale = absmax / maxq with zero at the midpoint and values above ~absmax / 2 clip."""
    row = torch.tensor([[0.1, 0.5, 1.0, 2.0]])
    spec = QuantSpec(4, sym=True, granularity="channel")
    scale, zero = quant_params(row, spec)
    assert torch.allclose(scale, torch.tensor([[2 * 2.0 / 15]])) and zero.item() == 8
    ours = quantize_with(row, scale, zero, spec)
    assert (ours - row).abs().max() <= scale.item() / 2 + 1e-6
    ref_scale = torch.tensor([[2.0 / 15]])  # the reference grid (xmin stays 0)
    ref = quantize_with(row, ref_scale, zero, spec)
    assert ref[0, -1] < 1.1  # the reference clips 2.0 to (15 - 8) * 2 / 15
    assert (ours - row).pow(2).sum() < (ref - row).pow(2).sum()


def test_per_channel_params_ignore_dead_columns():
    """Per-channel scales are computed after dead inputs are zeroed (upstream: before)."""
    w, x = _layer(6)
    x[:, 3] = 0  # dead input
    w[:, 3] = 50.0  # would dominate every row's range if it were counted
    spec = QuantSpec(4, granularity="channel")
    res = gptq_quantize(w, hessian(x), spec, blocksize=16)
    live = w.clone()
    live[:, 3] = 0
    expected, _ = quant_params(live, spec)
    torch.testing.assert_close(res.scale, expected)
    assert (res.weight[:, 3] == 0).all()
