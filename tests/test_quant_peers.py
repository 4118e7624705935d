"""Cross-checks against maintained implementations on single layers (the `peers` extra:
llm-compressor 0.14 + compressed-tensors 0.19). Marked `peers`; skipped only when a package
is not importable.

Stated tolerances (all measured equal here, the tolerances only absorb float reordering):
- GPTQ vs gptqmodel's `GPTQ.quantize` (QuantizeConfig with act_group_aware=False, i.e. plain
  GPTQ; gptqmodel 7.6 turns its group-aware reordering on by default): equal quantized weights
  (to 1e-6) for sym/asym, desc_act off, and desc_act on with static groups on or off.
- GPTQ vs llm-compressor `quantize_weight` (static group parameters from the unquantized
  weight, i.e. dllmq's static_groups=True; act-order "weight" = static groups + act-order):
  quantized weights equal to 1e-6, so equal codes.
- AWQ scale search vs llm-compressor `AWQModifier._compute_best_scale` on the same
  up->down group (duo_scaling off, its grid i/(n-1)): same scales and same best loss.
- SmoothQuant (dllmq.quant.smoothquant) vs llm-compressor `_calculate_smoothing_scales`:
  llm-compressor uses the activation range (max - min) and 2 max|W|; fed 2 max|X| (the range
  of a symmetric channel) it returns 2^(2 alpha - 1) times dllmq's scales, exactly.
- compressed-tensors `pack_to_int32` equals dllmq's packing bit for bit.
"""

import pytest
import torch
import torch.nn.functional as F
from dllmq.quant.gptq import gptq_quantize, hessian, layer_error
from dllmq.quant.primitives import QuantSpec
from torch import nn

pytestmark = pytest.mark.peers



def _need(module: str):
    return pytest.importorskip(module, reason=f"{module} not installed (pip install '.[peers]')")


def _layer(inp=256, out=64, tokens=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    x = torch.randn(tokens, inp, generator=g) @ mix
    x[:, :4] *= 10
    return torch.randn(out, inp, generator=g) * 0.05, x


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size,actorder", [(128, None), (None, None), (128, "weight")])
def test_gptq_equals_llmcompressor(sym, group_size, actorder):
    _need("llmcompressor")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    W, x = _layer()
    H = hessian(x)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=sym,
                            strategy="group" if group_size else "channel",
                            group_size=group_size, actorder=actorder)
    G = W.shape[1] // group_size if group_size else 1
    wg = W.reshape(W.shape[0], G, -1)
    scale, zp = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
    theirs, _, fallback = quantize_weight(W[None].clone(), H[None].clone(), scale[None], zp[None],
                                          None, args, blocksize=128, percdamp=0.01)
    spec = QuantSpec(4, sym=sym, granularity="group" if group_size else "channel",
                     group_size=group_size or 128)
    ours = gptq_quantize(W, H, spec, blocksize=128, damp=0.01, act_order=actorder is not None,
                         static_groups=True)
    assert not bool(fallback.any())
    torch.testing.assert_close(ours.scale, scale.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.weight, theirs[0], rtol=0, atol=1e-6)
    assert layer_error(ours.weight - W, H) == pytest.approx(layer_error(theirs[0] - W, H), rel=1e-5)


def test_awq_scale_search_equals_llmcompressor():
    _need("llmcompressor")
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from dllmq.quant.awq import act_scale, search_scales
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.modifiers.transform.awq.mappings import ResolvedMapping
    from llmcompressor.pipelines.cache import IntermediatesCache

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 256, generator=g)
    x[..., :4] *= 20
    model = nn.Sequential(nn.Linear(256, 256, bias=False), nn.Linear(256, 128, bias=False))
    weights = QuantizationArgs(num_bits=3, type="int", symmetric=False, strategy="group", group_size=128)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"g": QuantizationScheme(targets=["Linear"], weights=weights)}))
    model.apply(lambda m: setattr(m, "quantization_enabled", False))  # as during calibration
    up, down = model[0], model[1]
    w0 = down.weight.data.clone()
    mod = AWQModifier(duo_scaling=False, n_grid=20)
    mod._smooth_activation_stats["up"] = [x.abs().reshape(-1, 256).sum(0), torch.tensor(4 * 64)]
    cache = IntermediatesCache.empty(0, torch.device("cpu"))
    cache.append({"input": x})
    mod._parent_args_cache[down] = cache
    with torch.no_grad():
        ref = F.linear(x, w0)
        theirs = mod._compute_best_scale(ResolvedMapping("up", up, [down], ["down"], down, "down"),
                                         [ref], {down: w0})
    ours, losses = search_scales(act_scale(x), [w0],
                                 lambda ws: float(F.mse_loss(F.linear(x, ws[0]), ref)),
                                 QuantSpec(3, group_size=128), ratios=[i / 19 for i in range(20)])
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)
    metrics = mod._error_metrics[-1]
    assert min(losses) == pytest.approx(metrics["best_error"], rel=1e-5)
    assert losses[0] == pytest.approx(metrics["initial_error"], rel=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_scales_match_llmcompressor(alpha):
    _need("llmcompressor")
    from dllmq.quant import smoothquant as smq
    from llmcompressor.modifiers.transform.smoothquant.base import SmoothQuantModifier

    g = torch.Generator().manual_seed(1)
    lins = [nn.Linear(64, 32, bias=False), nn.Linear(64, 48, bias=False)]
    absmax = torch.rand(64, generator=g) * 10 + 0.1
    ours = smq.smoothing_scales(absmax, [m.weight for m in lins], alpha)
    theirs = SmoothQuantModifier(smoothing_strength=alpha)._calculate_smoothing_scales(lins, 2 * absmax)
    torch.testing.assert_close(theirs.detach().float(), ours * 2 ** (2 * alpha - 1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_equals_compressed_tensors(bits):
    _need("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )
    from dllmq.quant.export import pack_int32

    codes = torch.randint(0, 2**bits, (6, 77), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(pack_int32(codes, bits), pack_to_int32(signed, bits))
    zp = pack_int32(codes.t().contiguous(), bits).t()  # zero points: packed along dim 0
    assert torch.equal(zp, pack_to_int32(signed, bits, packed_dim=0))
    assert torch.equal(unpack_from_int32(pack_int32(codes, bits), bits, codes.shape), signed)


@pytest.mark.parametrize("sym,desc_act,static", [(False, False, False), (True, False, False),
                                                 (False, True, False), (False, True, True)])
def test_gptq_equals_gptqmodel(sym, desc_act, static):
    _need("gptqmodel")
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    W, x = _layer()
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.clone()
    cfg = QuantizeConfig(bits=4, group_size=128, sym=sym, desc_act=desc_act, static_groups=static,
                         damp_percent=0.01, act_group_aware=False)
    solver = GPTQ(lin, cfg)
    solver.quantizer.configure(perchannel=True)  # as gptqmodel's GPTQProcessor does
    solver.add_batch(x[None], None)
    theirs, scale, _zero, g_idx, *_ = solver.quantize(blocksize=128)
    ours = gptq_quantize(W, hessian(x), QuantSpec(4, sym=sym, group_size=128), blocksize=128,
                         damp=0.01, act_order=desc_act, static_groups=static)
    torch.testing.assert_close(ours.weight, theirs.float(), rtol=0, atol=1e-6)
    if ours.g_idx is not None:
        assert torch.equal(ours.g_idx.to(torch.int32), g_idx.to(torch.int32).cpu())
