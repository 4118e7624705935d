"""DuQuant (dllmq/quant/duquant.py) on tiny LLaDA and Dream models, CPU, fp32."""

import pytest
import torch
from dllmq.models import get_module
from dllmq.quant import QuantSpec, RTNConfig, fake_quant, quantize_, quantize_weight
from dllmq.quant.duquant import (
    DuQuantConfig,
    DuQuantTransform,
    apply_block_rotation,
    fit_transform,
    greedy_block_rotation,
    spread_matrix,
    zigzag_permutation,
)
from dllmq.quant.qlinear import QLinear
from dllmq.quant.smoothquant import smoothing_scales

from test_quant_rotation import _ids, _model
from test_quant_smoothquant import _calib, _outlier_model, _rel

ARCHS = ["llada", "Dream"]


def test_spread_matrix_is_orthogonal_with_flat_first_coordinate():
    R = spread_matrix(16, torch.Generator().manual_seed(0))
    assert torch.allclose(R @ R.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(R[0, 0], torch.tensor(0.25, dtype=torch.float64))
    assert (R[0].abs() < 0.9).all()  # channel 0 no longer holds its mass alone


def test_greedy_rotation_lowers_every_block_peak():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g)
    x[:, 3] *= 40  # block 0
    x[:, 21] *= 20  # block 2
    R = greedy_block_rotation(x, 8, 32, spread_matrix(8, g))
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(8, dtype=torch.float64).expand(4, 8, 8),
                          atol=1e-10)
    y = apply_block_rotation(x.double(), R)
    peak = lambda t: t.abs().reshape(64, 4, 8).amax(dim=(0, 2))  # noqa: E731
    assert (peak(y) <= peak(x.double()) + 1e-9).all()
    # one dominant channel spread over 8: ideally / sqrt(8); the greedy gets at least / 1.8
    assert peak(y)[0] < peak(x.double())[0] / 1.8 and peak(y)[2] < peak(x.double())[2] / 1.8
    assert torch.equal(greedy_block_rotation(x, 8, 0, spread_matrix(8, g)),
                       torch.eye(8, dtype=torch.float64).expand(4, 8, 8))


def test_zigzag_deals_channels_boustrophedon():
    """8 channels, blocks of 2: ranks 0..7 go to blocks 0,1,2,3,3,2,1,0."""
    channel_max = torch.tensor([5.0, 80, 1, 30, 7, 60, 3, 10])  # ranks: 1,5,3,7,4,0,6,2
    perm = zigzag_permutation(channel_max, 2)
    assert perm.tolist() == [1, 2, 5, 6, 3, 0, 7, 4]
    assert sorted(perm.tolist()) == list(range(8))


def test_transform_is_orthogonal_and_matches_weight_absorption():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 32, generator=g)
    x[:, 9] *= 25
    t = fit_transform(x, 8, 16, 1, g)
    assert isinstance(t, DuQuantTransform)
    T = t(torch.eye(32, dtype=torch.float64))  # rows: e_i T
    assert torch.allclose(T @ T.T, torch.eye(32, dtype=torch.float64), atol=1e-6)
    W = torch.randn(6, 32, generator=g, dtype=torch.float64)
    assert torch.allclose(t(x.double()) @ t(W).T, x.double() @ W.T, atol=1e-4)
    y = t(x)
    assert y.abs().amax() < x.abs().amax() / 2


def test_shared_rotation_is_one_matrix_for_all_blocks():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 32, generator=g)
    x[:, 9] *= 25
    t = fit_transform(x, 8, 8, 1, g, shared=True)
    assert torch.equal(t.rots[:, :1].expand_as(t.rots), t.rots)
    assert not torch.equal(t.rots[0, 0], torch.eye(8))
    T = t(torch.eye(32, dtype=torch.float64))
    assert torch.allclose(T @ T.T, torch.eye(32, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("arch,shared", [("llada", False), ("Dream", False), ("Dream", True)])
def test_duquant_leaves_fp_outputs_unchanged(arch, shared):
    m = _model(arch, num_heads=8, num_kv_heads=2 if arch == "Dream" else 8)
    ids = _ids()
    ref = m(ids)
    q_before = get_module(m.blocks[0], m.spec.q).weight.clone()
    quantize_(m, (DuQuantConfig(act=None, block_size=8, rotation_steps=8, shared_rotation=shared),),
              _calib(), progress=False)
    assert torch.allclose(m(ids), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    for k in ("q", "k", "v", "o", "gate", "up", "down"):
        lin = get_module(m.blocks[1], m.spec.linear_name(k))
        assert isinstance(lin, QLinear) and isinstance(lin.input_transform, DuQuantTransform)
    assert not torch.allclose(get_module(m.blocks[0], m.spec.q).weight, q_before, atol=1e-3)


def _dq(bits, clip=True, seed=0, attn=False):
    act = QuantSpec(bits, sym=False, granularity="token", clip_ratio=0.9 if clip else 1.0)
    return (DuQuantConfig(act=act, block_size=8, rotation_steps=4, seed=seed,
                          attn=QuantSpec(bits, sym=False, granularity="token") if attn else None),
            RTNConfig(weight=QuantSpec(bits, sym=False, granularity="channel",
                                       clip_ratio=0.8 if clip else 1.0)))


@pytest.mark.parametrize("arch", ARCHS)
def test_w8a8_small_w4a4_larger(arch):
    ids = _ids()
    ref = _outlier_model(arch)(ids)
    errs = {}
    for bits in (8, 4):
        m = _outlier_model(arch)
        quantize_(m, _dq(bits, clip=False), _calib(), progress=False)
        errs[bits] = _rel(m(ids), ref)
    assert errs[8] < 0.02, errs
    assert errs[4] > 3 * errs[8], errs


def test_rotation_beats_smoothing_alone_on_a_w4a4_layer():
    """One linear whose input has outlier channels (a normal-outlier pattern): after the same
    smoothing, DuQuant's transform lowers the W4A4 output error (paper F4/F5's mechanism)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(256, 64, generator=g)
    X[:, [3, 40]] *= torch.tensor([60.0, 25.0])
    W = torch.randn(32, 64, generator=g) * 0.05
    s = smoothing_scales(X.abs().amax(0), [W], 0.5)
    Xs, Ws = X / s, W * s
    a4 = QuantSpec(4, sym=False, granularity="token")
    w4 = QuantSpec(4, sym=False, granularity="channel")
    ref = X @ W.T

    def err(x, w):
        return _rel(fake_quant(x, a4) @ quantize_weight(w, w4).weight.T, ref)

    t = fit_transform(Xs, 16, 32, 1, g)
    e_sq, e_dq = err(Xs, Ws), err(t(Xs), t(Ws))
    assert e_dq < 0.7 * e_sq, (e_sq, e_dq)


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_runs_repeat_exactly(arch):
    ids = _ids()
    outs = []
    for seed in (0, 0, 1):
        m = _model(arch)
        quantize_(m, _dq(4, seed=seed, attn=True), _calib(), progress=False)
        outs.append(m(ids))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="power of two"):
        DuQuantConfig(block_size=96)
    with pytest.raises(ValueError, match="alpha"):
        DuQuantConfig(alpha=2.0)
    m = _model("llada", hidden_size=48, num_heads=4)
    with pytest.raises(ValueError, match="does not divide 48"):
        quantize_(m, (DuQuantConfig(block_size=32, rotation_steps=2),), _calib(), progress=False)


def test_named_duquant_recipes_follow_appendix_a():
    from dllmq.quant import get_recipe

    for bits in (8, 4):
        dq, rtn = get_recipe(f"w{bits}a{bits}-duquant")
        assert (dq.alpha, dq.block_size, dq.rotation_steps, dq.permutation_times) == (0.5, 128, 256, 1)
        assert dq.act == QuantSpec(bits, sym=False, granularity="token", clip_ratio=0.9)
        assert rtn.weight == QuantSpec(bits, sym=False, granularity="channel", clip_ratio=0.8)
        assert dq.attn is None and not dq.shared_rotation
        code = get_recipe(f"w{bits}a{bits}-duquant:code")[0]
        assert code.attn == QuantSpec(bits, sym=False, granularity="token") and code.shared_rotation
