"""Real low-bit execution (dllmq.kernels) against its fake-quant twin, on CPU.

What "equals the fake-quant twin" means, and the tolerance of each check:
- One linear, same input: the real module and the fake-quant one use the same codes and scales
  (int8: the activation codes come from the same primitives; fp8: the same e4m3 cast), so they
  differ only in rounding of the fp32 arithmetic. The fake path rounds every product and sum of
  x_hat @ W_hat^T (Higham's bound: |error| <= gamma_K (|x_hat| @ |W_hat|^T), gamma_K = K u /
  (1 - K u), u = 2^-24); the int8 path sums integers exactly and rounds only the final
  scaling (3 u relative). The test asserts |real - fake| <= (gamma_K + 4 u) (|x_hat| @ |W_hat|^T),
  the sum of the two bounds: deterministic, not a fitted number.
- A whole model: the same per-linear difference (~1e-7 relative) reaches the next layer's
  activation quantizer, and a value lying that close to a rounding boundary takes the other
  code: one code moves by one step. This is rare (a value must fall within ~1e-7 of a
  boundary), so the check has two parts: the MEDIAN |real - fake| over all logits is at most
  1e-5 of the largest logit (no flips on most positions: an arithmetic error, e.g. a wrong zero-
  point correction, would move every logit far more), and the MAXIMUM is at most 2 % of the
  largest logit (the effect of a few one-step flips on a tiny model, where one code is ~1/255
  of a token's range; observed <= 0.5 %). Greedy argmax tokens must be identical.
- w4a16 multiplies by exactly the fake-quant weight (the same `dequantize`), so on CPU its
  outputs are bit-identical: asserted with torch.equal.
- export -> load -> realize gives the buffers and logits of realizing the in-memory model,
  bit for bit (load_quantized rebuilds the codes exactly).
"""

import copy

import pytest
import torch
from dllmq.kernels import FakeFp8Linear, Fp8Linear, Int8Linear, W4A16Linear, realize
from dllmq.kernels.fp8 import E4M3_MAX, fp8_rowwise_reference
from dllmq.models import random_model, tiny_config
from dllmq.models.layers import rope_cos_sin
from dllmq.quant import (
    QLinear,
    QuantSpec,
    QuaRotConfig,
    RTNConfig,
    load_quantized,
    quantize_,
    quantize_weight,
    save_quantized,
)
from dllmq.quant.primitives import fake_quant, quant_params, quantize
from dllmq.sampling import DreamSamplerConfig, LLaDASamplerConfig, generate

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llada", "Dream"]
U = 2.0 ** -24


def _cfg(arch):
    return tiny_config(arch, hidden_size=64, intermediate_size=256)  # down: 2 groups of 128


def _model(arch, recipe=None):
    model = random_model(_cfg(arch), seed=0)
    if recipe is not None:
        quantize_(model, recipe, None, progress=False)
    return model


def _ids(arch, batch=2, length=24):
    return torch.randint(0, _cfg(arch).vocab_size - 4, (batch, length),
                         generator=torch.Generator().manual_seed(1))


def _higham(x_hat, w_hat):
    K = x_hat.shape[-1]
    gamma = K * U / (1 - K * U)
    return (gamma + 4 * U) * (x_hat.abs() @ w_hat.abs().T)


def _qlinear(wspec, aspec, K=256, N=48, bias=True):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    q = QLinear(w, b, act_spec=aspec)
    q.set_weight(quantize_weight(w, wspec.for_features(K)), "rtn")
    return q


# ---- one linear ----------------------------------------------------------------------------
@pytest.mark.parametrize("sym", [True, False])
def test_int8_linear_within_float_bound_of_fake_quant(sym):
    spec = QuantSpec(8, sym=sym, granularity="channel")
    q = _qlinear(spec, QuantSpec(8, sym=sym, granularity="token"))
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(2)) * 3 + 0.5  # off-centre
    real, fake = Int8Linear(q)(x), q(x)
    x_hat = fake_quant(x, q.act_spec)
    bound = _higham(x_hat, q.weight)
    assert ((real - fake).abs() <= bound).all()
    assert (real - fake).abs().max() > 0 or sym  # asym: the fake path does round


def test_int8_zero_point_corrections_are_exact_integers():
    """The int32 total (wrapping partial products) equals the int64 sum of code products."""
    q = _qlinear(QuantSpec(8, granularity="channel"), QuantSpec(8, granularity="token"), bias=False)
    x = torch.rand(20, 256, generator=torch.Generator().manual_seed(3)) * 5  # all >= 0: zx = 0
    lin = Int8Linear(q)

    sx, zx = quant_params(x, q.act_spec)
    qx = quantize(x, sx, zx, q.act_spec).long()
    exact = (qx - zx.long()) @ (q.codes.long() - q.zero.long()).T  # (M, N) int64
    y = lin(x)
    assert torch.allclose(y, exact.double().mul(sx.double() * q.scale.reshape(1, -1).double()).float(),
                          rtol=4 * U, atol=0)


def test_fp8_linear_within_float_bound_of_its_fake_twin():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 256, generator=g), torch.randn(48, generator=g)
    x = torch.randn(40, 256, generator=g) * 10
    real, fake = Fp8Linear(w, b), FakeFp8Linear(w, b)
    xq, sx = fp8_rowwise_reference(x)
    bound = _higham(xq.float() * sx, fake.weight)
    assert ((real(x) - fake(x)).abs() <= bound + 4 * U * b.abs()).all()


def test_fp8_rowwise_uses_the_e4m3_grid():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    x[3] = 0.0
    q, s = fp8_rowwise_reference(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (8, 1)
    assert torch.allclose(q.float().abs().amax(1)[[0, 1, 2, 4]], torch.full((4,), E4M3_MAX))
    assert (q[3].float() == 0).all() and (s > 0).all()
    # every code is an e4m3 value: casting again is the identity
    assert torch.equal(q.float().to(torch.float8_e4m3fn).float(), q.float())
    rel = ((q.float() * s - x).abs() / x.abs().clamp(min=1e-3))[x.abs() > s * 2 ** -6 * 448]
    assert rel.max() <= 2 ** -4  # 3 mantissa bits: half an ulp is 2^-4 relative


def test_w4a16_linear_bit_identical_on_cpu():
    q = _qlinear(QuantSpec(4, sym=False, granularity="group", group_size=128), None)
    x = torch.randn(5, 3, 256, generator=torch.Generator().manual_seed(5))
    lin = W4A16Linear(q)
    assert lin.weight_packed_t.dtype == torch.int32 and lin.weight_packed_t.shape == (32, 48)
    assert torch.equal(lin(x), q(x))


def test_kperm_pack_places_row_r_bw_plus_w_at_nibble_r_of_word_w():
    """The k-permuted kernel's packing: within each block of 128 rows (16 words), word w holds at
    nibble r the code of the block's row 16 r + w, for every block, word and nibble."""
    from dllmq.kernels.int4 import kperm_pack, unpack4_t
    from dllmq.quant.export import pack_int32

    K, N = 384, 6
    codes = torch.randint(0, 16, (N, K), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    packed_t = pack_int32(codes, 4).t().contiguous()
    nibbles = unpack4_t(kperm_pack(packed_t, 128))  # row 8 * word + nibble
    for word in range(K // 8):
        b, w = divmod(word, 16)
        for r in range(8):
            assert torch.equal(nibbles[8 * word + r], codes[:, b * 128 + r * 16 + w])
    with pytest.raises(ValueError, match="multiple of the block"):
        kperm_pack(packed_t[:40], 128)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kperm_weight_is_the_fake_quant_weight_up_to_the_scale_rounding(dtype):
    """kperm_dequant_t (the k-permuted kernel's weight, 16-bit scale) against the fake-quant
    weight (fp32 scale): both are one rounding of (q - z) * s, with s rounded to 16 bits or not,
    so they differ by at most one ulp of dtype, and are equal where s is already a dtype value."""
    from dllmq.kernels.int4 import _dequant_t, kperm_dequant_t

    q = _qlinear(QuantSpec(4, sym=False, granularity="group", group_size=128), None)
    lin = W4A16Linear(q)
    got = kperm_dequant_t(lin.weight_packed_t, lin.weight_scale_t, lin.weight_zero_t, dtype).float()
    ref = lin.dequantized_weight_t(dtype).float()
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10  # the ulp of [1, 2)
    bound = ulp * torch.exp2(torch.floor(torch.log2(ref.abs().clamp(min=1e-30))))
    assert ((got - ref).abs() <= bound + 1e-12).all() and not torch.equal(got, ref)
    exact = lin.weight_scale_t.to(dtype).float()
    got = kperm_dequant_t(lin.weight_packed_t, exact, lin.weight_zero_t, dtype)
    assert torch.equal(got, _dequant_t(lin.weight_packed_t, exact, lin.weight_zero_t, dtype))


def test_w4a16_inductor_mode_computes_the_fake_quant_output():
    """mode "inductor" (the unpacking marked as one quantization op for torch.compile to fuse
    into its GEMM): eager, and traced by torch.compile (the "eager" backend runs the traced
    graph: the marker and its subgraph survive tracing), the fake-quant linear's output."""
    q = _qlinear(QuantSpec(4, sym=False, granularity="group", group_size=128), None)
    x = torch.randn(5, 3, 256, generator=torch.Generator().manual_seed(5))
    lin = W4A16Linear(q, mode="inductor")
    assert torch.equal(lin(x), q(x))
    torch._dynamo.reset()
    traced = torch.compile(lin, backend="eager", fullgraph=True)
    assert torch.equal(traced(x), q(x))
    torch._dynamo.reset()


def test_backends_refuse_what_they_cannot_run():
    w4 = _qlinear(QuantSpec(4, granularity="group", group_size=128), None)
    with pytest.raises(ValueError, match="int8 needs 8-bit"):
        Int8Linear(w4)
    w4a8 = _qlinear(QuantSpec(4, granularity="channel"), QuantSpec(8, granularity="token"))
    with pytest.raises(ValueError, match="keeps activations in 16 bits"):
        W4A16Linear(w4a8)
    with pytest.raises(ValueError, match="backend 'nope' unknown"):
        realize(_model("llada"), "nope")
    model = _model("llada", "w4a16g128-rtn")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="int8 needs 8-bit"):
        realize(model, "int8")
    after = model.state_dict()  # nothing was swapped: no half-realized model
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="round its int4"):
        realize(model, "fp8")


# ---- whole models --------------------------------------------------------------------------
def _assert_twins(real_logits, fake_logits):
    diff = (real_logits - fake_logits).abs()
    scale = fake_logits.abs().max()
    assert diff.median() <= 1e-5 * scale, f"median {diff.median():.3g} vs scale {scale:.3g}"
    assert diff.max() <= 2e-2 * scale, f"max {diff.max():.3g} vs scale {scale:.3g}"
    assert torch.equal(real_logits.argmax(-1), fake_logits.argmax(-1))


W8A8_RTN_SYM = (RTNConfig(weight=QuantSpec(8, sym=True, granularity="channel"),
                          act=QuantSpec(8, sym=True, granularity="token")),)
W8A8_QUAROT_RTN = (QuaRotConfig(), RTNConfig(weight=QuantSpec(8, sym=True, granularity="channel")))
CASES = [  # (recipe, backend): fake = the quantized model itself, or the fp8 twin
    ("w8a8-rtn", "int8"),  # asymmetric weights and activations (the paper's W8A8 format)
    (W8A8_RTN_SYM, "int8"),
    (W8A8_QUAROT_RTN, "int8"),  # symmetric, online Hadamards on o and down (RTN, no calib)
    ("w4a16g128-rtn", "w4a16"),
    (None, "fp8"),
    ((QuaRotConfig(act=None),), "fp8"),  # rotation only, then fp8
]


def _pair(arch, recipe, backend):
    fake = _model(arch, recipe)
    real = copy.deepcopy(fake)
    if backend == "fp8":
        realize(fake, "fp8-fake")
    realize(real, backend)
    return real, fake


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe,backend", CASES, ids=lambda c: c if isinstance(c, str) else "fp" if c is None else
                         "+".join(type(x).__name__ for x in c))
def test_real_logits_equal_fake_quant_logits(arch, recipe, backend):
    real, fake = _pair(arch, recipe, backend)
    x = _ids(arch)
    with torch.no_grad():
        r, f = real(x), fake(x)
    if backend == "w4a16":
        assert torch.equal(r, f)
    else:
        _assert_twins(r, f)


def _greedy_tokens(arch, *models):
    """Each model's tokens for the same two prompts, 16 tokens in 8 steps, one seed."""
    cfg = (LLaDASamplerConfig(gen_length=16, steps=8, block_length=8) if arch == "llada" else
           DreamSamplerConfig(max_new_tokens=16, steps=8))
    prompts = _ids(arch, batch=2, length=8)
    return [generate(m, prompts, cfg, torch.Generator().manual_seed(0)).tokens for m in models]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe,backend", [("w8a8-rtn", "int8"), (None, "fp8")])
def test_greedy_tokens_equal(arch, recipe, backend):
    real, fake = _pair(arch, recipe, backend)
    assert torch.equal(*_greedy_tokens(arch, real, fake))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe,backend", [(W8A8_QUAROT_RTN, "int8"), ("w4a16g128-rtn", "w4a16")])
def test_export_load_realize_equals_realize_in_memory(tmp_path, arch, recipe, backend):
    model = _model(arch, recipe)
    save_quantized(model, tmp_path)
    loaded = realize(load_quantized(tmp_path, "cpu", torch.float32), backend)
    realize(model, backend)
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = _ids(arch)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("recipe,backend", [(None, "fp8"), ("w8a8-rtn", "int8"),
                                            ("w4a16g128-rtn", "w4a16")])
def test_compiled_blocks_compute_the_same(recipe, backend):
    """A realized block traces into one graph (no graph break: inductor fuses the activation
    quantization with its neighbours), and compile_blocks (dynamo, eager backend: no code
    generation on CPU) gives the samplers a model computing the same logits and tokens."""
    from dllmq.kernels import compile_blocks

    torch._dynamo.reset()
    eager = realize(_model("llada", recipe), backend)
    h = torch.randn(2, 16, eager.config.hidden_size)
    rope = rope_cos_sin(torch.arange(16), eager.config.head_dim, eager.config.rope_theta)
    assert torch._dynamo.explain(eager.blocks[0])(h, rope, None).graph_break_count == 0
    compiled = compile_blocks(copy.deepcopy(eager), backend="eager")
    x = _ids("llada")
    with torch.no_grad():
        assert torch.equal(eager(x), compiled(x))
    assert torch.equal(*_greedy_tokens("llada", eager, compiled))
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_projections_give_the_same_logits_and_tokens(arch):
    """fuse_projections puts q/k/v and gate/up into one linear each: the same dot products, so
    the logits agree to fp32 rounding (the wider GEMM may be blocked differently by the BLAS:
    1e-5 of the logits' scale is ~100 ulps), the tokens are equal, and no weight is lost."""
    from dllmq.kernels import fuse_projections

    model = _model(arch)
    fused = fuse_projections(copy.deepcopy(model))
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in fused.parameters()) == n_params
    for block in fused.blocks:
        names = {n.rpartition(".")[2] for n, _ in block.named_modules()}
        assert {"qkv_proj", "gate_up_proj"} <= names
        assert not names & {"q_proj", "k_proj", "v_proj", "up_proj", "ff_proj", "gate_proj"}
    x = _ids(arch)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.equal(*_greedy_tokens(arch, model, fused))


def test_fuse_projections_leaves_quantized_groups_alone():
    """A group holding a QLinear (fake quant) or a realized module keeps its own linears."""
    from dllmq.kernels import fuse_projections

    model = _model("llada", "w4a16g128-rtn")
    x = _ids("llada")
    with torch.no_grad():
        ref = model(x)
        fuse_projections(model)
        assert not hasattr(model.blocks[0], "qkv_proj")
        assert torch.equal(model(x), ref)
    realize(model, "w4a16")
    assert not hasattr(fuse_projections(model).blocks[0], "gate_up_proj")


def _pooled_backend(gm, example_inputs, **_options):
    """A torch.compile backend that returns its outputs in buffers reused by every call, as
    CUDA graphs do (a graph's outputs live in its memory pool; the next replay overwrites them;
    a graph with dynamic shapes records one graph, and pool, per shape)."""
    pools = {}

    def run(*args):
        outs = gm(*args)
        pool = pools.setdefault(tuple(tuple(o.shape) for o in outs), [o.clone() for o in outs])
        for buf, o in zip(pool, outs, strict=True):
            buf.copy_(o)
        return type(outs)(pool)

    return run


def test_graphed_blocks_return_outputs_that_outlive_the_next_replay(monkeypatch):
    """compile_blocks(mode="reduce-overhead"): every block call starts a new CUDA-graph step and
    returns a copy of the graph's output, so a block's output survives the next block's replay
    (without it, the H200 run failed: "accessing tensor output of CUDAGraphs that has been
    overwritten by a subsequent run"); the model's logits and tokens stay those of eager."""
    from dllmq.kernels import compile_blocks

    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    torch._dynamo.reset()
    eager = _model("llada")
    graphed = compile_blocks(copy.deepcopy(eager), mode="reduce-overhead", backend=_pooled_backend)
    blk = graphed.blocks[0]
    rope = rope_cos_sin(torch.arange(16), eager.config.head_dim, eager.config.rope_theta)
    h1, h2 = torch.randn(2, 2, 16, eager.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y1 = blk(h1, rope, None)
        want = y1.clone()
        blk(h2, rope, None)  # the next replay
        assert torch.equal(y1, want) and len(steps) == 2
        x = _ids("llada")
        assert torch.equal(eager(x), graphed(x))
    assert torch.equal(*_greedy_tokens("llada", eager, graphed))
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", ARCHS)
def test_graphed_w4a16_model_gives_the_eager_logits_and_tokens(arch):
    """The bench's w4a16-graphs backend: a w4a16 model with the int4 head and embedding under
    compile_blocks(mode="reduce-overhead") (blocks in pooled outputs, as CUDA graphs return
    them) computes the eager realized model's logits and greedy tokens exactly."""
    from dllmq.kernels import compile_blocks

    torch._dynamo.reset()
    eager = realize(_model(arch, "w4a16g128-rtn"), "w4a16", head="int4")
    graphed = compile_blocks(copy.deepcopy(eager), mode="reduce-overhead", backend=_pooled_backend)
    x = _ids(arch)
    with torch.no_grad():
        assert torch.equal(eager(x), graphed(x))
    assert torch.equal(*_greedy_tokens(arch, eager, graphed))
    torch._dynamo.reset()


def test_realized_weights_take_less_memory():
    from dllmq.kernels import weight_bytes

    fp = _model("llada")
    w4 = realize(_model("llada", "w4a16g128-rtn"), "w4a16")
    blocks = lambda m: weight_bytes(m.blocks)  # noqa: E731
    # 4-bit codes + fp32 scale + uint8 zero per group (64 or 128 values here), norms in fp32
    assert blocks(w4) < 0.25 * blocks(fp)


# ---- int4 LM head and embedding (realize(..., "w4a16", head="int4")) -------------------------
W4A16_HEAD = (RTNConfig(weight=QuantSpec(4, sym=False, granularity="group", group_size=128),
                        lm_head=True),)


def _fake_vocab_int4(model):
    """The fake-quant twin of head="int4", built from the primitives: the embedding table and a
    float head replaced by their RTN-g128 fake-quant values (a QLinear head is already that)."""
    from dllmq.kernels.int4 import VOCAB_SPEC

    emb = model.parts()[0]
    emb.weight.data = quantize_weight(emb.weight.data, VOCAB_SPEC.for_features(emb.weight.shape[1])).weight
    head = model.head_linear
    if head is not None and not isinstance(head, QLinear):
        head.weight.data = quantize_weight(head.weight.data,
                                           VOCAB_SPEC.for_features(head.in_features)).weight
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", ["w4a16g128-rtn", W4A16_HEAD], ids=["float-head", "rtn-head"])
def test_int4_head_equals_its_fake_quant(arch, recipe):
    """head="int4" multiplies by exactly the fake-quant head and looks up exactly the fake-quant
    table rows (the same `dequantize`): on CPU the logits and greedy tokens are bit-identical."""
    from dllmq.kernels import Int4Embedding

    fake = _model(arch, recipe)
    real = realize(copy.deepcopy(fake), "w4a16", head="int4")
    _fake_vocab_int4(fake)
    assert isinstance(real.head_linear, W4A16Linear) and isinstance(real.parts()[0], Int4Embedding)
    x = _ids(arch)
    with torch.no_grad():
        r, f = real(x), fake(x)
    assert torch.equal(r, f)
    fp = _model(arch)  # and the int4 head does change the function (the check can fail)
    with torch.no_grad():
        assert not torch.equal(realize(_model(arch, "w4a16g128-rtn"), "w4a16")(x), r)
        assert not torch.equal(fp(x), r)
    assert torch.equal(*_greedy_tokens(arch, real, fake))


def test_int4_embedding_gathers_the_dequantized_rows():
    from dllmq.kernels import Int4Embedding
    from dllmq.kernels.int4 import int4_qlinear

    table = torch.randn(50, 256, generator=torch.Generator().manual_seed(6))
    q = int4_qlinear(table, "emb")
    emb = Int4Embedding(q, "emb")
    assert emb.weight_packed.shape == (50, 32) and emb.weight_scale.shape == (50, 2)
    assert torch.equal(emb.weight, q.weight)  # the whole table = the fake-quant table
    ids = torch.tensor([[3, 3, 49], [0, 17, 8]])
    assert torch.equal(emb(ids), q.weight[ids])


def test_int4_head_on_a_tied_llada_serves_embedding_and_head():
    """A tied LLaDA has no head module: its head reads the int4 embedding's dequantized table."""
    cfg = tiny_config("llada", hidden_size=64, intermediate_size=256, tie_word_embeddings=True)
    fake = random_model(cfg, seed=0)
    quantize_(fake, "w4a16g128-rtn", None, progress=False)
    real = realize(copy.deepcopy(fake), "w4a16", head="int4")
    _fake_vocab_int4(fake)
    x = _ids("llada")
    with torch.no_grad():
        assert torch.equal(real(x), fake(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_export_load_realize_int4_head_equals_in_memory(tmp_path, arch):
    """The RTN head travels in the compressed-tensors export (a config group targets it, the
    `ignore` list is empty) and realizes to the same buffers and logits."""
    import json

    model = _model(arch, W4A16_HEAD)
    save_quantized(model, tmp_path)
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qcfg["ignore"] == [] and any(model.spec.lm_head in g["targets"]
                                        for g in qcfg["config_groups"].values())
    loaded = realize(load_quantized(tmp_path, "cpu", torch.float32), "w4a16", head="int4")
    realize(model, "w4a16", head="int4")
    sa, sb = model.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = _ids(arch)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_int4_head_refusals_and_memory():
    from dllmq.kernels import weight_bytes

    with pytest.raises(ValueError, match="head='int4' is a w4a16 option"):
        realize(_model("llada"), "fp8", head="int4")
    with pytest.raises(ValueError, match="head='bf16' unknown"):
        realize(_model("llada", "w4a16g128-rtn"), "w4a16", head="bf16")
    fp = _model("llada")
    float_head = realize(_model("llada", "w4a16g128-rtn"), "w4a16")
    int4_head = realize(_model("llada", "w4a16g128-rtn"), "w4a16", head="int4")
    with pytest.raises(ValueError, match="already realized"):
        realize(int4_head, "w4a16", head="int4")
    # fp32 on CPU: 4-bit codes + fp32 scale + uint8 zero per row group of 64 -> 4.6 of 32 bits
    vocab = lambda m: weight_bytes(m) - weight_bytes(m.blocks)  # noqa: E731
    assert vocab(int4_head) < 0.16 * vocab(fp) and vocab(float_head) == vocab(fp)


# ---- GPU paths (skipped without CUDA; run on the device by the benchmark's session) ---------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_w4a16_triton_configs_match_the_dequantized_weight():
    from dllmq.kernels import triton_kernels as tk

    q = _qlinear(QuantSpec(4, sym=False, granularity="group", group_size=128), None, K=1024, N=384,
                 bias=False)
    lin = W4A16Linear(q, mode="triton").cuda()
    w = lin.dequantized_weight(torch.bfloat16).float()
    for M in (7, 512):
        x = torch.randn(M, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
                        ).bfloat16()
        ref = x.float() @ w.T
        for cfg in tk.W4A16_CONFIGS:
            y = tk.w4a16_matmul(x, lin.weight_packed_t, lin.weight_scale_t, lin.weight_zero_t,
                                128, cfg)
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            assert rel < 5e-3, (cfg, M, rel)  # bf16 output rounding: ~2e-3
        dq = W4A16Linear(q, mode="dequant").cuda()
        assert ((dq(x).float() - ref).norm() / ref.norm()).item() < 5e-3


@cuda
def test_cuda_kperm_kernel_matches_its_weight():
    """The k-permuted fused kernel (every config this GPU builds, bf16 and fp16, packed-FMA and
    plain dequantization bit-identical) multiplies by kperm_dequant_t's weight."""
    from dllmq.kernels import triton_kernels as tk
    from dllmq.kernels.int4 import kperm_dequant_t, kperm_pack

    q = _qlinear(QuantSpec(4, sym=False, granularity="group", group_size=128), None, K=1024, N=384,
                 bias=False)
    lin = W4A16Linear(q).cuda()
    packed_p = kperm_pack(lin.weight_packed_t, tk.KPERM_BLOCK)
    for dtype in (torch.bfloat16, torch.float16):
        w = kperm_dequant_t(lin.weight_packed_t, lin.weight_scale_t, lin.weight_zero_t, dtype)
        x = torch.randn(300, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
                        ).to(dtype)
        ref = x.float() @ w.float()
        for cfg in tk.W4A16_KP_CONFIGS:
            try:
                y = tk.w4a16_kp_matmul(x, packed_p, lin.weight_scale_t, lin.weight_zero_t, 128, cfg)
            except Exception as e:  # over this GPU's shared memory
                assert type(e).__name__ == "OutOfResources", e
                continue
            assert ((y.float() - ref).norm() / ref.norm()).item() < 5e-3, (dtype, cfg)
            if cfg[5]:
                y0 = tk.w4a16_kp_matmul(x, packed_p, lin.weight_scale_t, lin.weight_zero_t, 128,
                                        cfg[:5] + (0,))
                assert torch.equal(y, y0), (dtype, cfg)


@cuda
def test_cuda_triton_unpack_equals_the_torch_unpack():
    """The "dequant" mode's Triton unpack (dequant4_t) computes the torch expression's values
    bit for bit, in bf16 and fp32, for groups of 128 and per-channel scales."""
    from dllmq.kernels import triton_kernels as tk

    for spec in (QuantSpec(4, sym=False, granularity="group", group_size=128),
                 QuantSpec(4, sym=True, granularity="channel")):
        q = _qlinear(spec, None, K=1024, N=384, bias=False)
        lin = W4A16Linear(q).cuda()
        for dtype in (torch.bfloat16, torch.float32):
            got = tk.dequant4_t(lin.weight_packed_t, lin.weight_scale_t, lin.weight_zero_t,
                                lin.group_size, dtype)
            assert torch.equal(got, lin.dequantized_weight_t(dtype)), (spec, dtype)


@cuda
@pytest.mark.parametrize("mode,bound", [("dequant", 1e-4), ("triton", 1e-2)])
def test_cuda_int4_head_model_matches_cpu(mode, bound):
    """fp32 model: "dequant" runs cuBLAS fp32 (float rounding only); Triton's tl.dot on fp32
    operands uses TF32 (10-bit mantissa, ~1e-3 per product), hence its looser bound."""
    model = _model("llada", "w4a16g128-rtn")
    cpu = realize(copy.deepcopy(model), "w4a16", head="int4")
    gpu = realize(copy.deepcopy(model).cuda(), "w4a16", head="int4", w4a16_mode=mode)
    x = _ids("llada")
    with torch.no_grad():
        a, b = cpu(x), gpu(x.cuda()).cpu()
    assert ((a - b).abs().max() / a.abs().max()).item() < bound


def test_compile_blocks_compiles_an_int4_head_to_the_same_logits():
    """compile_blocks also compiles a W4A16Linear head (automatic dynamic shapes: the samplers'
    windows and the likelihood's positions change its rows); dynamo's eager backend on CPU."""
    from dllmq.kernels import compile_blocks

    torch._dynamo.reset()
    eager = realize(_model("llada", "w4a16g128-rtn"), "w4a16", head="int4")
    compiled = compile_blocks(copy.deepcopy(eager), backend="eager")
    assert hasattr(compiled.head_linear, "_compiled_call_impl") and \
        compiled.head_linear._compiled_call_impl is not None
    x = _ids("llada")
    with torch.no_grad():
        assert torch.equal(eager(x), compiled(x))
        assert torch.equal(eager(x[:, :9]), compiled(x[:, :9]))
    torch._dynamo.reset()
