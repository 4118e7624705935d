"""save_quantized / load_quantized for every paper recipe (both variants) on both architectures:
the loaded model computes the in-memory quantized model's logits bit for bit and has the same
modules; the dllmq extension says what compressed-tensors cannot, and unknown kinds are refused."""

import json

import pytest
import torch
from dllmq.models import random_model, tiny_config
from dllmq.quant import RECIPES, Calibration, load_quantized, quantize_, save_quantized
from dllmq.quant.api import summarize

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llada", "Dream"]
NAMES = [n + suffix for n in RECIPES for suffix in ("", ":code")]


def _structure(model) -> list[tuple[str, str, str]]:
    return [(n, type(m).__name__, m.extra_repr()) for n, m in model.named_modules()]


def _summary(model) -> dict:
    s = summarize(model, "r", {})
    return {k: v for k, v in vars(s).items() if k != "seconds"}


def _quantized(arch: str, recipe: str):
    model = random_model(tiny_config(arch), seed=0)
    calib = Calibration.random(60, 2, 16, batch_size=2, progress=False)
    quantize_(model, recipe, calib, progress=False)
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", NAMES)
def test_every_recipe_loads_back_bit_identical(tmp_path, arch, recipe):
    model = _quantized(arch, recipe)
    save_quantized(model, tmp_path)
    loaded = load_quantized(tmp_path, "cpu", torch.float32)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)
    am[1, 12:] = 0
    with torch.no_grad():
        assert torch.equal(loaded.denoise_logits(ids), model.denoise_logits(ids))
        assert torch.equal(loaded.denoise_logits(ids, attention_mask=am),
                           model.denoise_logits(ids, attention_mask=am))
    assert _structure(loaded) == _structure(model)
    assert _summary(loaded) == _summary(model)


def test_extension_lists_transforms_hooks_and_clips(tmp_path):
    model = _quantized("llada", "w4a4-duquant:code")
    save_quantized(model, tmp_path)
    q = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    ext = q["dllmq"]
    down = f"{model.spec.blocks}.0.{model.spec.down}"
    assert ext["requires_dllmq"] and ext["version"] == 1
    assert ext["modules"][down]["input_transform"]["kind"] == "duquant"
    assert ext["modules"][down]["act_clip_ratio"] == 0.9
    assert ext["modules"][down]["weight_clip_ratio"] == 0.8
    assert ext["hooks"][f"{model.spec.blocks}.1.{model.spec.k_hook}"]["kind"] == "head_act_quant"
    acts = {json.dumps(g["input_activations"], sort_keys=True) for g in q["config_groups"].values()}
    assert [json.loads(a) for a in acts] == [{"num_bits": 4, "type": "int", "symmetric": False,
                                              "group_size": None, "strategy": "token",
                                              "dynamic": True, "observer": None}]
    # weight-only: nothing beyond compressed-tensors changes the function
    plain = _quantized("Dream", "w4a16g128-rtn")
    save_quantized(plain, tmp_path / "plain")
    ext = json.loads((tmp_path / "plain" / "config.json").read_text())["quantization_config"]["dllmq"]
    assert not ext["requires_dllmq"] and ext["hooks"] == {}


def test_unknown_extension_kind_is_refused_in_one_line(tmp_path):
    model = _quantized("llada", "w8a8-quarot")
    save_quantized(model, tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    entry = cfg["quantization_config"]["dllmq"]["modules"][f"{model.spec.blocks}.0.{model.spec.down}"]
    entry["input_transform"]["kind"] = "spinquant_r4"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"names kind\(s\) \['spinquant_r4'\]") as e:
        load_quantized(tmp_path)
    assert "\n" not in str(e.value)


def test_cli_quantize_saves_weight_act_recipes_packed(tmp_path):
    from dllmq.cli import main
    from dllmq.harness import quantize_model
    from dllmq.models import load, load_tokenizer

    from evalkit import make_model_dir

    src = make_model_dir(tmp_path / "m")
    out = tmp_path / "q"
    calib = ["--calib", "embedded", "--calib-samples", "2", "--calib-seqlen", "16"]
    assert main(["quantize", "--model", str(src), "--recipe", "w4a4-quarot", "--out", str(out),
                 "--device", "cpu", *calib]) == 0
    ref = load(src, device="cpu")
    quantize_model(ref, load_tokenizer(src), "w4a4-quarot", "embedded", 2, 16)
    x = torch.randint(0, 59, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_quantized(out).denoise_logits(x), ref.denoise_logits(x))
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()


def test_dllmq_load_reads_a_packed_checkpoint(tmp_path):
    """dllmq.load routes a save_quantized directory to load_quantized (same outputs)."""
    import dllmq

    model = random_model(tiny_config("llada", hidden_size=128, intermediate_size=256), seed=0)
    quantize_(model, "w4a16g128-rtn", None)
    save_quantized(model, tmp_path / "q")
    x = torch.randint(0, 50, (2, 9))
    assert torch.equal(dllmq.load(tmp_path / "q", device="cpu").denoise_logits(x), model.denoise_logits(x))


def test_weight_only_export_keeps_the_source_dtype_and_file_modes(tmp_path):
    """A bf16 checkpoint quantized on the CPU (fp32 there) is saved with bf16 float tensors,
    normal file modes; the packed weights still load back exactly."""
    import os
    import stat

    from safetensors import safe_open

    cfg = tiny_config("Dream", hidden_size=128, intermediate_size=256)
    model = random_model(cfg.replace(extra={"torch_dtype": "bfloat16"}), seed=0)
    quantize_(model, "w4a16g128-rtn", None, progress=False)
    out = save_quantized(model, tmp_path / "q")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.self_attn.q_proj.bias").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight_scale").dtype == torch.float32
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name
    back = load_quantized(out)
    assert torch.equal(back.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_models_load_refuses_a_packed_checkpoint_in_one_line(tmp_path):
    """models/ knows nothing of quantization: its load names dllmq.load for a packed directory."""
    from dllmq.models import LoadError, load

    model = random_model(tiny_config("llada", hidden_size=128, intermediate_size=256), seed=0)
    quantize_(model, "w4a16g128-rtn", None, progress=False)
    save_quantized(model, tmp_path / "q")
    with pytest.raises(LoadError) as e:
        load(tmp_path / "q", device="cpu")
    assert "\n" not in str(e.value) and "dllmq.load" in str(e.value)
