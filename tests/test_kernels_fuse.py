"""fuse_projections (dllmq.kernels.fuse): one GEMM for q/k/v and one for gate/up, on CPU.

Tolerance of the equivalence checks: the fused GEMM computes each output element as the same
dot product over the same K inputs; BLAS may pick another kernel for the wider matrix and sum in
another order, a difference of float rounding (Higham: <= gamma_K |x| @ |W|^T per linear,
~1e-7 relative in fp32 at these K). Through the tiny models' two blocks that stays far below
1e-5 of the largest logit, the bound asserted; a wrong split (q's rows read as k's, gate and
up swapped) changes the logits by O(1) of their scale. Greedy tokens must be identical.
"""

import copy

import pytest
import torch
from dllmq.kernels import FusedLinear, compile_blocks, fuse_projections, realize, weight_bytes
from dllmq.models import random_model, tiny_config
from dllmq.models.layers import rope_cos_sin
from dllmq.quant import quantize_
from dllmq.sampling import DreamSamplerConfig, LLaDASamplerConfig, generate

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llada", "Dream"]


def _model(arch):
    # Dream: q/k/v biases and grouped-query heads (k, v narrower than q)
    model = random_model(tiny_config(arch, hidden_size=64, intermediate_size=256), seed=0)
    for name, p in model.named_parameters():  # non-zero biases, so a misplaced bias shows
        if name.endswith("bias"):
            p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return model


def _ids(model, batch=2, length=24):
    return torch.randint(0, model.config.vocab_size - 4, (batch, length),
                         generator=torch.Generator().manual_seed(1))


def _sampler(arch):
    return (LLaDASamplerConfig(gen_length=16, steps=4, block_length=8) if arch == "llada"
            else DreamSamplerConfig(max_new_tokens=16, steps=4))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_model_computes_the_unfused_logits_and_tokens(arch):
    plain = _model(arch)
    fused = fuse_projections(copy.deepcopy(plain))
    blk = fused.blocks[0]
    attn = blk if arch == "llada" else blk.self_attn
    mlp = blk if arch == "llada" else blk.mlp
    assert isinstance(attn.qkv_proj, FusedLinear) and isinstance(mlp.gate_up_proj, FusedLinear)
    assert not hasattr(attn, "q_proj") and not hasattr(mlp, "up_proj")  # the parts are freed
    assert weight_bytes(fused) == weight_bytes(plain)
    x = _ids(plain)
    with torch.no_grad():
        a, b = plain(x), fused(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    ta = generate(plain, x[:, :8], _sampler(arch), torch.Generator().manual_seed(0)).tokens
    tb = generate(fused, x[:, :8], _sampler(arch), torch.Generator().manual_seed(0)).tokens
    assert torch.equal(ta, tb)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_block_compiles_without_graph_breaks(arch):
    torch._dynamo.reset()
    fused = fuse_projections(_model(arch))
    cfg = fused.config
    h = torch.randn(2, 16, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    rope = rope_cos_sin(torch.arange(16), cfg.head_dim, cfg.rope_theta)
    assert torch._dynamo.explain(fused.blocks[0])(h, rope, None).graph_break_count == 0
    compiled = compile_blocks(copy.deepcopy(fused), backend="eager")
    x = _ids(fused)
    with torch.no_grad():
        assert torch.equal(fused(x), compiled(x))
    torch._dynamo.reset()


def test_fuse_refuses_quantized_fused_and_then_realized_models():
    model = _model("llada")
    quantize_(model, "w4a16g128-rtn", None, progress=False)
    with pytest.raises(TypeError, match="plain nn.Linear"):
        fuse_projections(model)
    assert hasattr(model.blocks[0], "q_proj")  # refused before changing anything

    half = _model("Dream")  # only the last block quantized: the first must stay unfused
    last = half.blocks[-1].self_attn
    last.v_proj = copy.deepcopy(_quantized_v(half))
    with pytest.raises(TypeError, match=r"layers\.1\.self_attn\.v_proj"):
        fuse_projections(half)
    assert hasattr(half.blocks[0].self_attn, "q_proj")

    fused = fuse_projections(_model("llada"))
    with pytest.raises(ValueError, match="already fused"):
        fuse_projections(fused)
    with pytest.raises(ValueError, match="fused"):
        realize(fused, "fp8")


def _quantized_v(model):
    q = copy.deepcopy(model)
    quantize_(q, "w4a16g128-rtn", None, progress=False)
    return q.blocks[-1].self_attn.v_proj
