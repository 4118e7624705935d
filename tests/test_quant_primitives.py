"""Eq. 1 primitives: error bounds, code ranges, exact hand-computed values, bad input."""

import pytest
import torch
from dllmq.quant.primitives import (
    QuantSpec,
    dequantize,
    fake_quant,
    quant_params,
    quantize,
    quantize_weight,
)

SPECS = [QuantSpec(b, sym, gran, 16) for b in (2, 3, 4, 8) for sym in (False, True)
         for gran in ("tensor", "channel", "group", "token")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_error_within_half_step(spec):
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0)) * 3
    scale, zero = quant_params(x, spec)
    err = (fake_quant(x, spec) - x).abs().reshape(scale.shape[0], scale.shape[1], -1)
    # every value lies inside the range (clip_ratio 1); sym: +absmax sits exactly half a step
    # above the top code, so the bound is tight there. Slack: float32 rounding of x itself.
    bound = scale[..., None] / 2
    assert (err <= bound + 4 * torch.finfo(torch.float32).eps * x.abs().max()).all()
    assert (err > bound * 0.9).any()  # the bound is attained, not vacuous


@pytest.mark.parametrize("spec", SPECS[::3], ids=lambda s: s.describe())
def test_codes_in_range_and_roundtrip(spec):
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    scale, zero = quant_params(x, spec)
    codes = quantize(x, scale, zero, spec)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= spec.maxq
    assert torch.equal(dequantize(codes, scale, zero, spec), fake_quant(x, spec))
    assert torch.equal(zero, zero.round())
    if spec.sym:
        assert (zero == 2 ** (spec.bits - 1)).all()


def test_eq1_by_hand():
    # x in [-1, 2] at 2 bits: s = 3/3 = 1, z = -round(-1/1) = 1; codes round(x/s)+z
    x = torch.tensor([[-1.0, 0.5, 2.0, 1.4]])
    spec = QuantSpec(2, sym=False, granularity="channel")
    scale, zero = quant_params(x, spec)
    assert scale.item() == 1.0 and zero.item() == 1.0
    assert quantize(x, scale, zero, spec).tolist() == [[0, 1, 3, 2]]  # round(0.5)=0 (half-even)
    assert fake_quant(x, spec).tolist() == [[-1.0, 0.0, 2.0, 1.0]]


def test_zero_exact_and_all_zero_group():
    x = torch.cat([torch.zeros(1, 8), torch.rand(1, 8) + 1])  # row 0 all zero, row 1 positive
    for sym in (False, True):
        y = fake_quant(x, QuantSpec(3, sym=sym, granularity="channel"))
        assert torch.equal(y[0], torch.zeros(8))  # no division by a zero scale
        assert torch.isfinite(y).all()


def test_clip_ratio_shrinks_range():
    x = torch.linspace(-4, 4, 64)[None]
    spec = QuantSpec(4, sym=True, granularity="channel", clip_ratio=0.5)
    y = fake_quant(x, spec)
    scale, _ = quant_params(x, spec)
    assert y.abs().max() <= 2.0 + scale.item() / 2 + 1e-6
    assert y.abs().max() < 3.0


def test_dtype_preserved_and_group_layout():
    w = torch.randn(4, 32).to(torch.bfloat16)
    r = quantize_weight(w, QuantSpec(4, group_size=8))
    assert r.weight.dtype == torch.bfloat16 and r.scale.shape == (4, 4) and r.codes.shape == (4, 32)
    # group j of row i uses scale[i, j]: quantizing one group alone gives the same values
    alone = fake_quant(w[:, 8:16], QuantSpec(4, granularity="channel"))
    assert torch.equal(r.weight[:, 8:16], alone)


def test_bad_specs_one_line_errors():
    with pytest.raises(ValueError, match="bits=9"):
        QuantSpec(9)
    with pytest.raises(ValueError, match="granularity"):
        QuantSpec(4, granularity="row")
    with pytest.raises(ValueError, match="clip_ratio"):
        QuantSpec(4, clip_ratio=0.0)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quant(torch.randn(2, 48), QuantSpec(4, group_size=32))
    with pytest.raises(ValueError, match="does not divide"):
        QuantSpec(4, group_size=32).for_features(48)


def test_group_larger_than_row_becomes_per_channel(caplog):
    spec = QuantSpec(4, group_size=128)
    with caplog.at_level("INFO", logger="dllmq.quant.primitives"):
        small = spec.for_features(40)
    assert small.group_size == 40
    x = torch.randn(3, 40)
    assert torch.equal(fake_quant(x, small),
                       fake_quant(x, QuantSpec(4, granularity="channel")))
