"""Save a quantized model with real packed low-bit weights, and load it back.

Layout: compressed-tensors' "pack-quantized" format (what llm-compressor writes and vLLM reads),
written here directly with safetensors, so the package needs no extra dependency:
- config.json: the model's config + `quantization_config` (quant_method "compressed-tensors",
  format "pack-quantized", one config group per distinct (weight, activation) scheme whose
  `targets` list the module names, `ignore` = the LM head when it stays FP);
- for each weight-quantized linear `<name>`: `<name>.weight_packed` int32 (out, ceil(in*b/32)),
  codes densely packed along the input dim, element i at bit i*b (compressed-tensors 0.19
  `pack_to_int32`: stored value = signed code + 2^(b-1) = dllmq's unsigned code);
  `<name>.weight_scale` (out, G); `<name>.weight_zero_point` (asymmetric only) int32 packed
  along dim 0 from (out, G); `<name>.weight_shape` int64 [out, in]; `<name>.bias` if any;
  `<name>.weight_g_idx` int32 (in,) when GPTQ act-order reordered the groups;
- every other tensor under its official name (embeddings, norms, LM head).
Where we differ from llm-compressor: scales are stored in float32 (it stores the model dtype),
so a load reproduces the quantized model's outputs bit for bit; readers cast as they need.
QLinears carrying an input transform (QuaRot's online Hadamard, DuQuant's rotations) and
quantizers installed on attention's q/k/v slots cannot be expressed in this format: saving raises
(keep the FP checkpoint and the recipe: quantize_ is deterministic).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dllmq.models import DLLMConfig, build_model, get_module, set_module
from dllmq.models.layers import ActHook

from .primitives import QuantResult, QuantSpec, dequantize
from .qlinear import QLinear

log = logging.getLogger(__name__)

FILE = "model.safetensors"
_NOT_EXPRESSIBLE = ("pack-quantized cannot express it; keep the FP checkpoint and the recipe and "
                    "re-run quantize_ (seeded runs repeat exactly)")


# ---- packing (pure) ---------------------------------------------------------------------------
def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (R, C) in [0, 2^bits) -> int32 (R, ceil(C*bits/32)), dense, little-endian
    bit order: element i occupies bits [i*bits, (i+1)*bits) of the row's bit string."""
    R, C = codes.shape
    n_words = math.ceil(C * bits / 32)
    pos = torch.arange(C, device=codes.device) * bits
    word, off = pos // 32, pos % 32
    shifted = codes.to(torch.int64) << off  # (R, C), up to 39 bits
    out = torch.zeros(R, n_words + 1, dtype=torch.int64, device=codes.device)
    out.scatter_add_(1, word.expand(R, -1), shifted & 0xFFFFFFFF)
    out.scatter_add_(1, (word + 1).expand(R, -1), shifted >> 32)
    out = out[:, :n_words]
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of pack_int32: int32 (R, W) -> uint8 codes (R, cols)."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    words = torch.cat([words, torch.zeros_like(words[:, :1])], 1)  # (R, W + 1)
    pos = torch.arange(cols, device=packed.device) * bits
    word, off = pos // 32, pos % 32
    both = words[:, word] | (words[:, word + 1] << 32)  # (R, cols)
    return ((both >> off) & (2**bits - 1)).to(torch.uint8)


# ---- config -----------------------------------------------------------------------------------
def _args(spec: QuantSpec, dynamic: bool) -> dict:
    strategy = {"group": "group", "channel": "channel", "tensor": "tensor", "token": "token"}
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.sym,
            "group_size": spec.group_size if spec.granularity == "group" else None,
            "strategy": strategy[spec.granularity], "dynamic": dynamic, "observer": "minmax"}


def _spec(args: dict | None) -> QuantSpec | None:
    if args is None:
        return None
    gran = args["strategy"]
    return QuantSpec(args["num_bits"], sym=args["symmetric"], granularity=gran,
                     group_size=args["group_size"] or 128)


def _qlinears(model: nn.Module) -> dict[str, QLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QLinear)}


# ---- save / load ------------------------------------------------------------------------------
@torch.no_grad()
def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write config.json + model.safetensors in compressed-tensors' pack-quantized layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for i, block in enumerate(model.blocks):
        for slot in (model.spec.q_hook, model.spec.k_hook, model.spec.v_hook):
            hook = get_module(block, slot)
            if type(hook) is not ActHook:
                raise ValueError(f"block {i} {slot} holds {type(hook).__name__} (attention "
                                 f"quantization); {_NOT_EXPRESSIBLE}")
    qlins = _qlinears(model)
    state: dict[str, torch.Tensor] = {}
    groups: dict[tuple, list[str]] = {}
    for name, q in qlins.items():
        if q.input_transform is not None:
            raise ValueError(f"{name} has an input transform ({type(q.input_transform).__name__}); "
                             f"{_NOT_EXPRESSIBLE}")
        key = (q.weight_spec, q.act_spec)
        groups.setdefault(key, []).append(name)
        if q.bias is not None:
            state[f"{name}.bias"] = q.bias.detach().cpu().contiguous()
        if q.weight_spec is None:
            state[f"{name}.weight"] = q.weight.detach().cpu().contiguous()
            continue
        spec = q.weight_spec
        state[f"{name}.weight_packed"] = pack_int32(q.codes.cpu(), spec.bits)
        state[f"{name}.weight_scale"] = q.scale.float().cpu().contiguous()
        state[f"{name}.weight_shape"] = torch.tensor([q.out_features, q.in_features])
        if not spec.sym:
            state[f"{name}.weight_zero_point"] = pack_int32(
                q.zero.to(torch.uint8).t().cpu(), spec.bits).t().contiguous()
        if q.g_idx is not None:
            state[f"{name}.weight_g_idx"] = q.g_idx.to(torch.int32).cpu().clone()
    skip = {f"{n}.{p}" for n in qlins for p in ("weight", "bias")}
    for k, v in model.state_dict().items():
        if k not in skip and k not in state:
            state[k] = v.detach().cpu().contiguous()
    if model.config.tie_word_embeddings:
        state.pop(model.spec.lm_head + ".weight", None)

    config_groups = {}
    for i, ((w, a), names) in enumerate(groups.items()):
        config_groups[f"group_{i}"] = {
            "targets": names,
            "weights": None if w is None else _args(w, dynamic=False),
            "input_activations": None if a is None else _args(a, dynamic=True),
        }
    ignore = [] if isinstance(get_module(model, model.spec.lm_head), QLinear) else [model.spec.lm_head]
    cfg = model.config.to_hf()
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "quantization_status": "compressed", "config_groups": config_groups, "ignore": ignore,
        "dllmq": {"methods": {n: q.method for n, q in qlins.items() if q.method}},
    }
    tmp = path / (FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path / FILE)
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    log.info("saved %d quantized linears (%d groups) to %s", len(qlins), len(groups), path)
    return path


@torch.no_grad()
def load_quantized(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model with QLinears rebuilt from the packed codes (outputs equal the saved model's)."""
    path = Path(path)
    cfg_d = json.loads((path / "config.json").read_text())
    qcfg = cfg_d.pop("quantization_config", None)
    if qcfg is None or qcfg.get("format") != "pack-quantized":
        raise ValueError(f"{path} holds no pack-quantized model; load it with dllmq.load")
    cfg = DLLMConfig.from_hf(cfg_d)
    with torch.device("meta"):
        model = build_model(cfg)
    with safe_open(str(path / FILE), framework="pt", device=str(device)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    for grp in qcfg["config_groups"].values():
        wspec, aspec = _spec(grp["weights"]), _spec(grp["input_activations"])
        for name in grp["targets"]:
            bias = tensors.pop(f"{name}.bias", None)
            if wspec is None:
                q = QLinear(tensors.pop(f"{name}.weight").to(dtype), bias, act_spec=aspec)
            else:
                out_f, in_f = tensors.pop(f"{name}.weight_shape").tolist()
                spec = wspec if wspec.granularity != "group" else QuantSpec(
                    wspec.bits, wspec.sym, "group", wspec.group_size)
                codes = unpack_int32(tensors.pop(f"{name}.weight_packed"), spec.bits, in_f)
                scale = tensors.pop(f"{name}.weight_scale").float()
                zp = tensors.pop(f"{name}.weight_zero_point", None)
                zero = (torch.full_like(scale, 2 ** (spec.bits - 1)) if zp is None else
                        unpack_int32(zp.t().contiguous(), spec.bits, out_f).t().float())
                g_idx = tensors.pop(f"{name}.weight_g_idx", None)
                spec = spec.for_features(in_f) if spec.granularity == "group" else spec
                if g_idx is None:
                    w = dequantize(codes, scale, zero, spec, dtype)
                else:
                    gi = g_idx.long()
                    w = ((codes.float() - zero[:, gi]) * scale[:, gi]).to(dtype)
                q = QLinear(w, None if bias is None else bias.to(dtype), act_spec=aspec)
                q.set_weight(QuantResult(w, codes, scale, zero, spec, g_idx), qcfg.get(
                    "dllmq", {}).get("methods", {}).get(name, "loaded"))
            set_module(model, name, q)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                           for k, v in tensors.items()}, strict=False, assign=True)
    if cfg.model_type == "Dream" and cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"{path} lacks {len(meta)} tensor(s), e.g. {meta[0]!r}")
    return model.to(device).eval()
