"""Save a quantized model with real packed low-bit weights, and load it back bit for bit.

Layout: compressed-tensors' "pack-quantized" format (what llm-compressor writes and vLLM reads),
written here directly with safetensors, so the package needs no extra dependency:
- config.json: the model's config + `quantization_config` (quant_method "compressed-tensors",
  format "pack-quantized", one config group per distinct (weight, activation) scheme whose
  `targets` list the module names, `ignore` = the LM head when it stays FP). Per-token dynamic
  activation quantization is a group's `input_activations` (strategy "token", dynamic true);
- for each weight-quantized linear `<name>`: `<name>.weight_packed` int32 (out, ceil(in*b/32)),
  codes densely packed along the input dim, element i at bit i*b (compressed-tensors 0.19
  `pack_to_int32`: stored value = signed code + 2^(b-1) = dllmq's unsigned code);
  `<name>.weight_scale` (out, G); `<name>.weight_zero_point` (asymmetric only) int32 packed
  along dim 0 from (out, G); `<name>.weight_shape` int64 [out, in]; `<name>.bias` if any;
  `<name>.weight_g_idx` int32 (in,) when GPTQ act-order reordered the groups;
- every other tensor under its official name (embeddings, norms, LM head).

The dllmq extension, `quantization_config["dllmq"]`, holds what compressed-tensors cannot say:
- `modules`: per linear, the method that quantized it, its GPTQ/AWQ error, the clip ratios of
  its weight and activation specs (DuQuant's 0.8 / 0.9; absent = 1), and its online
  `input_transform` as {"kind", parameters} (QuaRot's FFN-down Hadamard "hadamard" and V/O
  head mix "head_mix_hadamard", DuQuant's rotations and permutations "duquant", the latter's
  exact tensors stored as `<name>.input_transform.rots` / `.perms` in the same file);
- `hooks`: the quantizers in attention's q/k/v ActHook slots ("head_act_quant": optional
  head-dim Hadamard, then a per-token or per-head fake-quant spec), by module path;
- `requires_dllmq`: true when any of the above changes the function. A reader that knows only
  compressed-tensors (vLLM, llm-compressor) then computes a DIFFERENT model from these weights:
  the weights were rotated to expect the transformed inputs. Load such files with
  `load_quantized`, which refuses (one line) a kind it does not know.
Kinds are a small registry {kind: Kind(type, params, tensors, build)} (KINDS below); a module
of a type not in it is refused at save time rather than written half.

Where we differ from llm-compressor: scales are stored in float32 (it stores the model dtype),
and transform tensors keep the dtype they were fitted in, so a load reproduces the quantized
model's outputs bit for bit; readers cast as they need. compressed-tensors' own
`transform_config` (Hadamard transforms for SpinQuant/QuIP) is not used: its matrices for
non-power-of-two orders (LLaDA's FFN 12 * 2^10, Dream's 148 * 2^7) and its normalization are
not guaranteed to be the ones QuaRot here folded into the weights.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dllmq.models import DLLMConfig, build_model, get_module, set_module
from dllmq.models.io import open_safetensors, warn_nonfinite, write_safetensors
from dllmq.models.layers import ActHook

from .hadamard import factor_order
from .primitives import QuantResult, QuantSpec, dequantize
from .qlinear import QLinear
from .transforms import DuQuantTransform, HeadActQuant, HeadMixHadamard, OnlineHadamard

log = logging.getLogger(__name__)

FILE = "model.safetensors"
EXTENSION = "dllmq"
EXTENSION_VERSION = 1
_NOTE = ("dllmq extension: online input transforms, attention quantizers and clip ratios that "
         "compressed-tensors cannot express; when requires_dllmq is true a reader ignoring it "
         "computes a different model. Load with dllmq.quant.load_quantized.")


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


# ---- specs: compressed-tensors args and the extension's own dicts --------------------------------
def _args(qspec: QuantSpec, dynamic: bool) -> dict:
    """compressed-tensors QuantizationArgs of a spec (the clip ratio goes to the extension)."""
    return {"num_bits": qspec.bits, "type": "int", "symmetric": qspec.sym,
            "group_size": qspec.group_size if qspec.granularity == "group" else None,
            "strategy": qspec.granularity, "dynamic": dynamic,
            "observer": None if dynamic else "minmax"}


def _spec(args: dict | None, clip_ratio: float = 1.0) -> QuantSpec | None:
    if args is None:
        return None
    return QuantSpec(args["num_bits"], sym=args["symmetric"], granularity=args["strategy"],
                     group_size=args["group_size"] or 128, clip_ratio=clip_ratio)


def _spec_dict(qspec: QuantSpec | None) -> dict | None:
    """A spec in the extension: dllmq's own fields, exactly (clip ratio included)."""
    return None if qspec is None else asdict(qspec)


def _spec_from_dict(d: dict | None) -> QuantSpec | None:
    return None if d is None else QuantSpec(**d)


# ---- the extension's registry: module kinds it can write and rebuild -----------------------------
@dataclass(frozen=True)
class Kind:
    """How one module type is written (JSON params + named tensors) and rebuilt from them."""

    module_type: type
    params: Callable[[nn.Module], dict]
    tensors: Callable[[nn.Module], dict[str, torch.Tensor]]
    build: Callable[[dict, dict[str, torch.Tensor]], nn.Module]


def _no_tensors(_mod: nn.Module) -> dict[str, torch.Tensor]:
    return {}


def _hadamard_params(n: int) -> dict:
    m, p = factor_order(n)
    return {"order": n, "factorization": [m, p]}  # H_n = H_m (x) H_p, normalized by 1/sqrt(n)


def _hadamard_order(params: dict) -> int:
    """The order, checked against this dllmq's construction (another one is another matrix)."""
    n = params["order"]
    if list(factor_order(n)) != params["factorization"]:
        raise ValueError(f"Hadamard of order {n} saved as {params['factorization']} but built here "
                         f"as {list(factor_order(n))}; load with the dllmq version that saved it")
    return n


KINDS: dict[str, Kind] = {
    # QuaRot's online FFN-down Hadamard: x -> H_n x / sqrt(n)
    "hadamard": Kind(OnlineHadamard, lambda m: _hadamard_params(m.n), _no_tensors,
                     lambda p, _t: OnlineHadamard(_hadamard_order(p))),
    # QuaRot's o-input half of the V/O rotation: (H_H (x) I_D) x / sqrt(H)
    "head_mix_hadamard": Kind(HeadMixHadamard, lambda m: _hadamard_params(m.num_heads),
                              _no_tensors, lambda p, _t: HeadMixHadamard(_hadamard_order(p))),
    # DuQuant: x -> x R_1 P_1 R_2 ..., the fitted rotations and permutations themselves
    "duquant": Kind(DuQuantTransform,
                    lambda m: {"rotations": m.rots.shape[0], "blocks": m.rots.shape[1],
                               "block_size": m.rots.shape[2]},
                    lambda m: {"rots": m.rots, "perms": m.perms},
                    lambda _p, t: DuQuantTransform(t["rots"], t["perms"])),
    # q/k/v quantizers (QuaRot K/V, SmoothQuant/DuQuant "code" attention matmul inputs)
    "head_act_quant": Kind(HeadActQuant,
                           lambda m: {"hadamard": m.hadamard, "per_head": m.per_head,
                                      "spec": _spec_dict(m.spec)},
                           _no_tensors,
                           lambda p, _t: HeadActQuant(p["hadamard"], _spec_from_dict(p["spec"]),
                                                      p["per_head"])),
}


def _kind_name(mod: nn.Module, what: str) -> str:
    for name, kind in KINDS.items():
        if type(mod) is kind.module_type:
            return name
    raise ValueError(f"{what} ({type(mod).__name__}), which pack-quantized and the dllmq "
                     f"extension cannot express (known kinds: {', '.join(KINDS)})")


def write_module(mod: nn.Module, prefix: str, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(entry {"kind", **params, "tensors": [...]}, {f"{prefix}.{buffer}": tensor}) for a module."""
    name = _kind_name(mod, what)
    kind = KINDS[name]
    tensors = {k: v.detach().cpu().clone() for k, v in kind.tensors(mod).items()}  # clone: unshare
    entry = {"kind": name, **kind.params(mod)}
    if tensors:
        entry["tensors"] = sorted(tensors)
    return entry, {f"{prefix}.{k}": v for k, v in tensors.items()}


def read_module(entry: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a module written by write_module, taking its tensors out of `tensors`."""
    own = {k: tensors.pop(f"{prefix}.{k}") for k in entry.get("tensors", [])}
    params = {k: v for k, v in entry.items() if k not in ("kind", "tensors")}
    return KINDS[entry["kind"]].build(params, own)


# ---- save ---------------------------------------------------------------------------------------
def _qlinears(model: nn.Module) -> dict[str, QLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QLinear)}


def _hook_slots(model: nn.Module) -> list[str]:
    spec = model.spec
    return [f"{spec.blocks}.{i}.{slot}" for i in range(len(model.blocks))
            for slot in (spec.q_hook, spec.k_hook, spec.v_hook)]


def _weight_tensors(name: str, q: QLinear) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one linear (or its plain weight when only acts are quantized)."""
    out = {} if q.bias is None else {f"{name}.bias": q.bias.detach().cpu().contiguous()}
    qspec = q.weight_spec
    if qspec is None:
        out[f"{name}.weight"] = q.weight.detach().cpu().contiguous()
        return out
    out[f"{name}.weight_packed"] = pack_int32(q.codes.cpu(), qspec.bits)
    out[f"{name}.weight_scale"] = q.scale.float().cpu().contiguous()
    out[f"{name}.weight_shape"] = torch.tensor([q.out_features, q.in_features])
    if not qspec.sym:
        out[f"{name}.weight_zero_point"] = pack_int32(
            q.zero.to(torch.uint8).t().cpu(), qspec.bits).t().contiguous()
    if q.g_idx is not None:
        out[f"{name}.weight_g_idx"] = q.g_idx.to(torch.int32).cpu().clone()
    return out


def _module_entry(name: str, q: QLinear) -> tuple[dict, dict[str, torch.Tensor]]:
    """The extension's entry for one linear: what compressed-tensors' groups leave out."""
    entry: dict = {}
    if q.method is not None:
        entry["method"] = q.method
    if q.quant_error is not None:
        entry["quant_error"] = q.quant_error
    for key, qspec in (("weight_clip_ratio", q.weight_spec), ("act_clip_ratio", q.act_spec)):
        if qspec is not None and qspec.clip_ratio != 1.0:
            entry[key] = qspec.clip_ratio
    tensors: dict[str, torch.Tensor] = {}
    if q.input_transform is not None:
        prefix = f"{name}.input_transform"
        entry["input_transform"], tensors = write_module(
            q.input_transform, prefix, f"{name} has an input transform")
    return entry, tensors


def _hook_entries(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """Extension entries for every q/k/v slot holding a quantizer instead of the plain ActHook."""
    entries: dict = {}
    tensors: dict[str, torch.Tensor] = {}
    for path in _hook_slots(model):
        hook = get_module(model, path)
        if type(hook) is not ActHook:
            entries[path], t = write_module(hook, path, f"{path} holds a quantizer")
            tensors.update(t)
    return entries, tensors


def _config_groups(qlins: dict[str, QLinear]) -> dict:
    """One compressed-tensors config group per distinct (weight args, activation args)."""
    groups: dict[str, dict] = {}
    for name, q in qlins.items():
        w = None if q.weight_spec is None else _args(q.weight_spec, dynamic=False)
        a = None if q.act_spec is None else _args(q.act_spec, dynamic=True)
        key = json.dumps([w, a], sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": w, "input_activations": a})
        groups[key]["targets"].append(name)
    return {f"group_{i}": g for i, g in enumerate(groups.values())}


def source_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the checkpoint was published in (config.json's `torch_dtype`, or `dtype` as
    transformers 5 writes it), else the model's own: a bf16 checkpoint quantized on a CPU (fp32
    there) is saved in bf16 again, not at twice its size."""
    name = model.config.extra.get("torch_dtype") or model.config.extra.get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else model.dtype


@torch.no_grad()
def save_quantized(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors: compressed-tensors' pack-quantized layout plus the
    dllmq extension (transforms, attention quantizers, clip ratios) where the model has them.

    dtype: of the float tensors that stay float (embeddings, norms, LM head, biases, weights of
    act-only linears); default `source_dtype(model)`. Scales are float32 and transform tensors
    keep their dtype whatever it is (module docstring). A load then reproduces the quantized
    model bit for bit when the model is in that dtype already; a model upcast from bf16 comes
    back with its float tensors rounded to bf16 (the packed weights are exact either way)."""
    path = Path(path)
    dtype = dtype or source_dtype(model)
    qlins = _qlinears(model)
    state: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    for name, q in qlins.items():
        state.update(_weight_tensors(name, q))
        entry, tensors = _module_entry(name, q)
        state.update(tensors)
        if entry:
            modules[name] = entry
    hooks, hook_tensors = _hook_entries(model)
    state.update(hook_tensors)
    skip = {f"{n}.{p}" for n in qlins for p in ("weight", "bias")}
    for k, v in model.state_dict().items():
        if k not in skip and k not in state:
            state[k] = v.detach().cpu().contiguous()
    for k in model.tied_keys:
        state.pop(k, None)
    float_keys = {k for k in state if not k.endswith(".weight_scale")
                  and ".input_transform." not in k and k not in hook_tensors}
    state = {k: v.to(dtype) if k in float_keys and v.is_floating_point() else v
             for k, v in state.items()}

    changes_function = bool(hooks) or any(
        set(e) & {"input_transform", "weight_clip_ratio", "act_clip_ratio"} for e in modules.values())
    head_fp = not isinstance(model.head_linear, QLinear)
    hf_config = model.config.to_hf()
    hf_config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "quantization_status": "compressed", "config_groups": _config_groups(qlins),
        "ignore": [model.spec.lm_head] if head_fp else [],
        EXTENSION: {"version": EXTENSION_VERSION, "note": _NOTE,
                    "requires_dllmq": changes_function, "modules": modules, "hooks": hooks},
    }
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, path / FILE)
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path / "config.json")
    log.info("saved %d quantized linears, %d transforms, %d attention quantizers to %s",
             len(qlins), sum("input_transform" in e for e in modules.values()), len(hooks), path)
    return path


# ---- load ---------------------------------------------------------------------------------------
def read_extension(qcfg: dict, path: Path) -> dict:
    """The dllmq extension of a quantization_config, refusing versions and kinds not known here."""
    ext = qcfg.get(EXTENSION)
    if ext is None or ext.get("version") != EXTENSION_VERSION:
        found = None if ext is None else ext.get("version")
        raise ValueError(f"{path}: dllmq extension version {found!r}, this dllmq reads "
                         f"{EXTENSION_VERSION}; re-save the model with this dllmq")
    named = [e["input_transform"]["kind"] for e in ext["modules"].values() if "input_transform" in e]
    named += [e["kind"] for e in ext["hooks"].values()]
    unknown = sorted(set(named) - set(KINDS))
    if unknown:
        raise ValueError(f"{path}: dllmq extension names kind(s) {unknown} this dllmq does not "
                         f"know (known: {', '.join(KINDS)}); load it with the dllmq that saved it")
    return ext


def _packed_weight(name: str, wspec: QuantSpec, tensors: dict, dtype: torch.dtype,
                   error: float | None) -> QuantResult:
    """Unpack one linear's codes, scales and zero points into the QuantResult they came from."""
    out_f, in_f = tensors.pop(f"{name}.weight_shape").tolist()
    codes = unpack_int32(tensors.pop(f"{name}.weight_packed"), wspec.bits, in_f)
    scale = tensors.pop(f"{name}.weight_scale").float()
    zp = tensors.pop(f"{name}.weight_zero_point", None)
    zero = (torch.full_like(scale, 2 ** (wspec.bits - 1)) if zp is None else
            unpack_int32(zp.t().contiguous(), wspec.bits, out_f).t().float())
    g_idx = tensors.pop(f"{name}.weight_g_idx", None)
    qspec = wspec.for_features(in_f)
    if g_idx is None:
        w = dequantize(codes, scale, zero, qspec, dtype)
    else:
        gi = g_idx.long()
        w = ((codes.float() - zero[:, gi]) * scale[:, gi]).to(dtype)
    return QuantResult(w, codes, scale, zero, qspec, g_idx, error)


def _load_qlinear(name: str, group: dict, entry: dict, tensors: dict,
                  dtype: torch.dtype) -> QLinear:
    wspec = _spec(group["weights"], entry.get("weight_clip_ratio", 1.0))
    aspec = _spec(group["input_activations"], entry.get("act_clip_ratio", 1.0))
    transform = (read_module(entry["input_transform"], f"{name}.input_transform", tensors)
                 if "input_transform" in entry else None)
    bias = tensors.pop(f"{name}.bias", None)
    bias = None if bias is None else bias.to(dtype)
    if wspec is None:
        return QLinear(tensors.pop(f"{name}.weight").to(dtype), bias, input_transform=transform,
                       act_spec=aspec)
    result = _packed_weight(name, wspec, tensors, dtype, entry.get("quant_error"))
    q = QLinear(result.weight, bias, input_transform=transform, act_spec=aspec)
    q.set_weight(result, entry.get("method", "loaded"))
    return q


@torch.no_grad()
def load_quantized(path: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model with QLinears (weights, activation specs, input transforms) and attention
    quantizers rebuilt from a `save_quantized` directory; its outputs equal the saved model's."""
    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    qcfg = hf_config.pop("quantization_config", None)
    if qcfg is None or qcfg.get("format") != "pack-quantized":
        raise ValueError(f"{path} holds no pack-quantized model; load it with dllmq.load")
    ext = read_extension(qcfg, path)
    mcfg = DLLMConfig.from_hf(hf_config)
    with torch.device("meta"):
        model = build_model(mcfg)
    with open_safetensors(path / FILE, device) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    for k, t in tensors.items():
        warn_nonfinite(k, t, path / FILE)
    for group in qcfg["config_groups"].values():
        for name in group["targets"]:
            entry = ext["modules"].get(name, {})
            set_module(model, name, _load_qlinear(name, group, entry, tensors, dtype))
    for slot, entry in ext["hooks"].items():
        set_module(model, slot, read_module(entry, slot, tensors))
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                                    for k, v in tensors.items()}, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds {len(result.unexpected_keys)} tensor(s) the model has no "
                         f"place for, e.g. {result.unexpected_keys[0]!r}")
    model.tie_weights()
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"{path} lacks {len(meta)} tensor(s), e.g. {meta[0]!r}")
    return model.to(device).eval()
