"""dllmq's LLaDA and Dream against the official model code, plus our own invariances and errors.

The reference logits in tests/fixtures/models/ come from the official modeling files
(tools/reference_fixtures_models.py; see tests/fixtures/models/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dllmq.models import ConfigError, LoadError, load, save_pretrained
from dllmq.models.layers import apply_rope, rope_cos_sin
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).parent / "fixtures" / "models"
ARCHS = ("llada", "dream")


def reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / name / "reference.safetensors"))


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only (Dream's tok_idx; pads get 1, as there)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param, load(FIXTURES / request.param, device="cpu", dtype=torch.float32)


# ---- equivalence with the official code ------------------------------------------------
@torch.no_grad()
def test_logits_equal_official(arch):
    name, model = arch
    ref = reference(name)
    logits = model(ref["input_ids"])
    assert logits.shape == ref["logits"].shape
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_dream_left_padded_batch_equals_official_on_real_tokens():
    model = load(FIXTURES / "dream", device="cpu", dtype=torch.float32)
    ref = reference("dream")
    mask = ref["padded_attention_mask"]
    assert (mask == 0).any(), "the fixture must contain padding"
    logits = model(ref["padded_input_ids"], attention_mask=mask,
                   position_ids=ref["padded_position_ids"])
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref["padded_logits"][real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_denoise_logits_alignment(arch):
    name, model = arch
    ids = reference(name)["input_ids"]
    out, den = model(ids), model.denoise_logits(ids)
    if name == "dream":  # official position i predicts token i+1; denoise position i predicts i
        assert torch.equal(den[:, 1:], out[:, :-1])
        assert torch.equal(den[:, 0], out[:, 0])
    else:
        assert torch.equal(den, out)


@torch.no_grad()
@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 5), (1, 4), (3, None), (None, None)])
def test_denoise_logits_window_equals_the_slice_of_all_logits(arch, lo, hi):
    name, model = arch
    ids = reference(name)["input_ids"]
    full = model.denoise_logits(ids)
    window = slice(lo, hi)
    torch.testing.assert_close(model.denoise_logits(ids, window=window), full[:, window],
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="step 1"):
        model.denoise_logits(ids, window=slice(0, 4, 2))


# ---- I/O -------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("shard_bytes", [5 * 2**30, 40_000])
def test_save_load_round_trip(arch, tmp_path, shard_bytes):
    name, model = arch
    save_pretrained(model, tmp_path, max_shard_bytes=shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").is_file()
    assert sharded == (shard_bytes < 5 * 2**30)
    back = load(tmp_path, device="cpu", dtype=torch.float32)
    assert type(back) is type(model)
    assert back.config.replace(extra={}) == model.config.replace(extra={})
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)
    ids = reference(name)["input_ids"]
    assert torch.equal(back(ids), model(ids))


@torch.no_grad()
def test_bf16_forward_close_to_fp32(arch):
    name, model32 = arch
    model16 = load(FIXTURES / name, device="cpu", dtype=torch.bfloat16)
    ids = reference(name)["input_ids"]
    l32, l16 = model32(ids), model16(ids)
    assert l16.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8); two blocks and a head of error
    # stay within a few steps of the largest logit (~4.5 here)
    scale = l32.abs().max()
    assert (l16.float() - l32).abs().max() < 8 * 2**-8 * scale
    assert (l16.float().argmax(-1) == l32.argmax(-1)).float().mean() > 0.9


def test_rope_precision_follows_each_official_model(arch):
    """LLaDA rotates q/k in float32 (`rope_full_precision`), Dream/Qwen2 in the model dtype; in
    bf16 this is the only difference from the official logits (reverse_check.json: 0.0 both)."""
    name, model = arch
    assert model.config.rope_full_precision == (name == "llada")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, model.config.head_dim, generator=g).to(torch.bfloat16)
    cos, sin = rope_cos_sin(torch.arange(16), model.config.head_dim, 1e6)
    half = model.config.head_dim // 2
    rot = lambda t: torch.cat([-t[..., half:], t[..., :half]], dim=-1)  # noqa: E731
    fp32 = (x.float() * cos + rot(x.float()) * sin).to(torch.bfloat16)
    low = x * cos.to(torch.bfloat16) + rot(x) * sin.to(torch.bfloat16)
    assert not torch.equal(fp32, low)
    assert torch.equal(apply_rope(x, cos, sin, True), fp32)
    assert torch.equal(apply_rope(x, cos, sin, False), low)


# ---- padding invariance (ours: masked keys + positions counted over real tokens) -----------
@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(arch, side):
    name, model = arch
    ids = reference(name)["input_ids"]
    L, pad = ids.shape[1], model.config.pad_token_id
    lengths = (L, 9)  # one full row, one padded
    batch = torch.full((len(lengths), L), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        span = slice(L - n, L) if side == "left" else slice(0, n)
        batch[b, span], mask[b, span] = ids[b, :n], 1
    logits = model(batch, attention_mask=mask, position_ids=positions_from_mask(mask))
    for b, n in enumerate(lengths):
        alone = model(ids[b: b + 1, :n])[0]
        torch.testing.assert_close(logits[b][mask[b].bool()], alone, atol=1e-5, rtol=0)


# ---- bad input: one line that names the fix --------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture
def ckpt(tmp_path):
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(FIXTURES / name, dst)
        (dst / "reference.safetensors").unlink()
        return dst
    return copy


def test_error_directory_without_config(tmp_path):
    with pytest.raises(LoadError) as e:
        load(tmp_path)
    assert "no config.json" in _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_error_cuda_asked_without_cuda(ckpt):
    with pytest.raises(LoadError) as e:
        load(ckpt("llada"), device="cuda")
    assert "CUDA is not available" in _one_line(e)


def test_error_unknown_model_type(ckpt):
    d = ckpt("llada")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ConfigError) as e:
        load(d)
    msg = _one_line(e)
    assert "'llama'" in msg and "llada" in msg and "Dream" in msg


def test_error_missing_shard(arch, tmp_path):
    _, model = arch
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(LoadError) as e:
        load(tmp_path)
    msg = _one_line(e)
    assert shard.name in msg and "index" in msg


def test_error_shape_mismatch(ckpt):
    d = ckpt("llada")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "mlp_hidden_size": 48}))
    with pytest.raises(LoadError) as e:
        load(d)
    msg = _one_line(e)
    assert "has shape" in msg and "config.json implies" in msg and "48" in msg


def test_error_unexpected_weight(ckpt):
    d = ckpt("dream")
    state = load_file(str(d / "model.safetensors"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(LoadError) as e:
        load(d)
    assert "rotary_emb.inv_freq" in _one_line(e)


def test_error_missing_weight(ckpt):
    d = ckpt("dream")
    state = load_file(str(d / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(LoadError) as e:
        load(d)
    assert "lacks 1 weight" in _one_line(e)


def test_error_sequence_longer_than_context(arch):
    _, model = arch
    n = model.config.max_position + 1
    with pytest.raises(ValueError) as e:
        model(torch.zeros(1, n, dtype=torch.long))
    msg = _one_line(e)
    assert str(n) in msg and "shorten" in msg


@pytest.mark.parametrize("name,key,value", [
    ("llada", "block_type", "sequential"), ("llada", "activation_type", "swiglu"),
    ("llada", "include_bias", True), ("dream", "use_sliding_window", True),
    ("dream", "rope_scaling", {"rope_type": "linear", "factor": 2.0}),
])
def test_error_unsupported_official_option(ckpt, name, key, value):
    d = ckpt(name)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ConfigError) as e:
        load(d)
    assert f"{key}=" in _one_line(e)


# ---- issue 16: tied checkpoints, NaN weights, truncated files, file modes ------------------
@pytest.mark.parametrize("arch", ["llada", "Dream"])
def test_tied_checkpoint_round_trips(arch, tmp_path):
    """A tied checkpoint has no head weight (the official save_pretrained drops it); it loads,
    the head is the embedding again, and the logits are the saved model's."""
    import dllmq
    from dllmq.models import random_model, tiny_config

    model = random_model(tiny_config(arch, tie_word_embeddings=True), seed=3)
    save_pretrained(model, tmp_path)
    assert model.spec.lm_head + ".weight" not in load_file(str(tmp_path / "model.safetensors"))
    back = dllmq.load(tmp_path, device="cpu", dtype=torch.float32)
    x = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    if arch == "Dream":
        assert back.lm_head.weight is back.model.embed_tokens.weight


def test_nan_weight_warns_naming_the_tensor(ckpt, caplog):
    d = ckpt("dream")
    state = load_file(str(d / "model.safetensors"))
    state["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, str(d / "model.safetensors"))
    with caplog.at_level("WARNING", logger="dllmq.models.io"):
        load(d, device="cpu")
    assert any("model.layers.0.mlp.up_proj.weight" in r.getMessage() and "NaN" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors_one_line_naming_the_file(ckpt, keep):
    d = ckpt("llada")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: max(int(len(data) * keep), 4)])
    with pytest.raises(LoadError) as e:
        load(d, device="cpu")
    msg = _one_line(e)
    assert str(f) in msg and "truncated" in msg


def test_saved_files_have_normal_modes(arch, tmp_path):
    import os
    import stat

    _, model = arch
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp_path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


@torch.no_grad()
def test_logits_at_are_denoise_logits_at_those_positions(arch):
    """The forward API the likelihood uses: the LM head on chosen positions, shift applied."""
    _, model = arch
    x = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(0))
    select = torch.rand(2, 11, generator=torch.Generator().manual_seed(1)) < 0.4
    select[0, 0] = True  # position 0 reads itself under Dream's shift
    rows, cols = select.nonzero(as_tuple=True)
    torch.testing.assert_close(model.logits_at(x, None, rows, cols), model.denoise_logits(x)[select],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("padded", [False, True])
def test_grouped_query_attention_equals_expanded_heads(dtype, padded):
    """layers.attention shares key/value heads (enable_gqa) only without a mask in 16-bit floats;
    every path gives exactly what SDPA on repeat_interleave'd heads gives."""
    import torch.nn.functional as F
    from dllmq.models.layers import attention, key_padding_mask

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 28, 37, 32, generator=g).to(dtype)
    k, v = (torch.randn(2, 4, 37, 32, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(2, 37, dtype=torch.long)
    if padded:
        mask[1, -6:] = 0
    bias = key_padding_mask(mask, dtype)
    assert (bias is None) == (not padded)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(7, 1), v.repeat_interleave(7, 1),
                                          attn_mask=bias)
    assert torch.equal(attention(q, k, v, bias, causal=False), want)
