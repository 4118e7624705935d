"""Where things are inside a model, as data. Quantizers and analyses walk models through an
`ArchSpec`, never by matching module names (LLaDA calls both the FFN down projection and the LM
head `ff_out`; only the spec tells them apart)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass

from torch import nn

LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class InputGroup:
    """Linears that read one and the same input, and what writes that input.

    source: an ArchSpec norm attribute ("attn_norm", "mlp_norm": the input is norm(x)) or a
    linear kind ("v": o reads attention's mix of v, head by head, each v head serving
    num_heads / num_kv_heads query heads; "up": down reads silu(gate) * up, linear in up).
    Scaling the input by 1/s is folded into the source (its weight, or its rows and bias);
    quantizers sample the input of `linears[0]`, which every member shares. The linears of a
    norm-fed group read the residual stream; those of a linear-fed group (o, down) write it
    (what QuaRot's rotation needs to know)."""

    name: str
    source: str
    linears: tuple[str, ...]

    @property
    def source_is_norm(self) -> bool:
        return self.source.endswith("norm")


# in forward order; identical for LLaDA and Dream (only the paths differ)
INPUT_GROUPS = (
    InputGroup("qkv", "attn_norm", ("q", "k", "v")),
    InputGroup("o", "v", ("o",)),
    InputGroup("gate_up", "mlp_norm", ("gate", "up")),
    InputGroup("down", "up", ("down",)),
)


@dataclass(frozen=True)
class ArchSpec:
    # model-level paths
    blocks: str
    embed: str
    final_norm: str
    lm_head: str
    # block-relative paths
    attn_norm: str
    q: str
    k: str
    v: str
    o: str
    mlp_norm: str
    gate: str
    up: str
    down: str
    k_hook: str  # ActHook on keys after RoPE, (B, Hkv, L, D)
    v_hook: str  # ActHook on values, (B, Hkv, L, D)
    q_hook: str  # ActHook on queries after RoPE, (B, H, L, D)
    # what the rest of dllmq needs to know instead of branching on model_type
    family: str = "llada"  # sampler and likelihood family: "llada" | "dream"
    logit_shift: int = 0  # Dream predicts token i from position i-1 (shift 1); LLaDA at i (0)
    input_groups: tuple[InputGroup, ...] = INPUT_GROUPS

    def linear_name(self, kind: str) -> str:
        if kind not in LINEAR_KINDS:
            raise KeyError(f"unknown linear kind {kind!r}; expected one of {LINEAR_KINDS}")
        return getattr(self, kind)

    def group(self, name: str) -> InputGroup:
        for g in self.input_groups:
            if g.name == name:
                return g
        raise KeyError(f"unknown input group {name!r}; valid: {self.group_names}")

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.input_groups)

    def source_path(self, group: InputGroup) -> str:
        """Block-relative path of the module that writes the group's input."""
        return getattr(self, group.source) if group.source_is_norm else self.linear_name(group.source)


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise AttributeError(f"{type(root).__name__} has no module at {path!r} (stuck at {part!r})")
        mod = getattr(mod, part)
    return mod


def has_module(root: nn.Module, path: str) -> bool:
    """Whether `path` names a module inside root (a tied LLaDA has no LM-head module)."""
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            return False
        mod = getattr(mod, part)
    return isinstance(mod, nn.Module)


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_module(root, parent_path) if parent_path else root
    if not hasattr(parent, name):
        raise AttributeError(f"{type(root).__name__} has no module at {path!r}")
    setattr(parent, name, new)


LLADA_SPEC = ArchSpec(
    blocks="model.transformer.blocks", embed="model.transformer.wte",
    final_norm="model.transformer.ln_f", lm_head="model.transformer.ff_out",
    attn_norm="attn_norm", q="q_proj", k="k_proj", v="v_proj", o="attn_out",
    mlp_norm="ff_norm", gate="ff_proj", up="up_proj", down="ff_out",
    k_hook="k_hook", v_hook="v_hook", q_hook="q_hook",
)

DREAM_SPEC = ArchSpec(
    blocks="model.layers", embed="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
    attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
    v="self_attn.v_proj", o="self_attn.o_proj", mlp_norm="post_attention_layernorm",
    gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj",
    k_hook="self_attn.k_hook", v_hook="self_attn.v_hook", q_hook="self_attn.q_hook",
    family="dream", logit_shift=1,
)

SPECS: dict[str, ArchSpec] = {"llada": LLADA_SPEC, "Dream": DREAM_SPEC}  # by config.model_type


def arch_spec(model_type: str) -> ArchSpec:
    """The ArchSpec of a config's `model_type` (what a caller holding only a config.json needs)."""
    if model_type not in SPECS:
        raise KeyError(f"unknown model_type {model_type!r}; dllmq supports {', '.join(SPECS)}")
    return SPECS[model_type]


@contextlib.contextmanager
def input_hooks(modules: Mapping[Hashable, nn.Module],
                fn: Callable[[Hashable, nn.Module, tuple], None]) -> Iterator[None]:
    """Inside the with-block, fn(key, module, args) sees the positional inputs of each module
    on every forward (a forward pre-hook; fn may raise to stop the forward there). The one
    place dllmq hooks linear inputs: the quantizers' calibration walk and outliers.py."""
    handles = [mod.register_forward_pre_hook(lambda m, args, key=key: fn(key, m, args))
               for key, mod in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
