"""The one verb: `quantize_(model, recipe, calib)` applies an ordered recipe in place.

A recipe is a recipe name (`dllmq.quant.recipes.RECIPES`) or an ordered tuple of method configs,
frozen dataclasses that validate themselves. Each config type is registered with its apply
function, all sharing one signature `apply(model, cfg, calib) -> None | step`, in the explicit table
`METHODS` (pytorch/ao's `quantize_(model, config)` and its handler table; registry.py).
Transforms that must see float weights (smoothing, rotation) come first in a recipe, the weight
quantizer last. Before the first apply, `quantize_` checks the whole recipe against the model
(`registry.check_order` and every method's registered check: group sizes, block sizes, Hadamard
orders, tied heads, already-quantized linears), so a bad setting leaves the model untouched.

An apply function may return a *deferred step* (a callable without arguments) instead of None:
`quantize_` runs the deferred steps, in recipe order, once every config has been applied. QuaRot
uses this to switch its activation quantizers on after the weight quantizer, as the authors'
`QuaRot/fake_quant/main.py` does, so GPTQ calibrates on full-precision activations.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from torch import nn

from dllmq.models import LINEAR_KINDS, get_module

from .calib import Calibration
from .qlinear import QLinear
from .recipes import get_recipe
from .registry import (  # noqa: F401 (re-exported: the old home of the table and its helpers)
    CHECKS,
    METHODS,
    DeferredStep,
    block_linears,
    check_kinds,
    check_order,
    label,
    needs_calibration,
    register,
)

log = logging.getLogger(__name__)

@dataclass
class QuantSummary:
    """What `quantize_` did: per linear kind, how many linears carry quantized weights and
    activations and under which specs, the methods' own errors, and the time per method."""

    recipe: str
    weight_counts: dict[str, int] = field(default_factory=dict)
    act_counts: dict[str, int] = field(default_factory=dict)
    weight_specs: dict[str, list[str]] = field(default_factory=dict)
    act_specs: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # kind -> mean objective (GPTQ/AWQ)
    seconds: dict[str, float] = field(default_factory=dict)  # method -> wall time
    lm_head_quantized: bool = False
    num_blocks: int = 0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def __str__(self) -> str:
        lines = [f"recipe {self.recipe}: {self.num_blocks} blocks, {self.total_seconds:.1f} s "
                 f"({', '.join(f'{k} {v:.1f} s' for k, v in self.seconds.items())})"]
        for k in LINEAR_KINDS:
            w = self.weight_counts.get(k, 0)
            a = self.act_counts.get(k, 0)
            err = f", err {self.errors[k]:.4g}" if k in self.errors else ""
            lines.append(f"  {k:5s} weights {w:3d} [{'; '.join(self.weight_specs.get(k, [])) or 'fp'}]"
                         f" acts {a:3d} [{'; '.join(self.act_specs.get(k, [])) or 'fp'}]{err}")
        lines.append(f"  lm_head {'quantized' if self.lm_head_quantized else 'fp'}")
        return "\n".join(lines)


def summarize(model: nn.Module, recipe: str, seconds: dict[str, float]) -> QuantSummary:
    """Read what the model now holds (QLinear states), block by block through the ArchSpec."""
    s = QuantSummary(recipe=recipe, seconds=seconds, num_blocks=len(model.blocks))
    w_specs: dict[str, set[str]] = {}
    a_specs: dict[str, set[str]] = {}
    errs: dict[str, list[float]] = {}
    wc: Counter[str] = Counter()
    ac: Counter[str] = Counter()
    for block in model.blocks:
        for kind in LINEAR_KINDS:
            mod = get_module(block, model.spec.linear_name(kind))
            if not isinstance(mod, QLinear):
                continue
            if mod.weight_spec is not None:
                wc[kind] += 1
                w_specs.setdefault(kind, set()).add(f"{mod.weight_spec.describe()} ({mod.method})")
                if mod.quant_error is not None:
                    errs.setdefault(kind, []).append(mod.quant_error)
            if mod.act_spec is not None:
                ac[kind] += 1
                a_specs.setdefault(kind, set()).add(mod.act_spec.describe())
    s.weight_counts, s.act_counts = dict(wc), dict(ac)
    s.weight_specs = {k: sorted(v) for k, v in w_specs.items()}
    s.act_specs = {k: sorted(v) for k, v in a_specs.items()}
    s.errors = {k: sum(v) / len(v) for k, v in errs.items()}
    head = model.head_linear
    s.lm_head_quantized = isinstance(head, QLinear) and head.weight_spec is not None
    return s


def resolve_recipe(recipe: str | tuple | list) -> tuple[str, tuple]:
    """(name, configs) for a recipe name or a sequence of configs; unknown names list the valid."""
    if isinstance(recipe, str):
        return recipe, get_recipe(recipe)
    configs = tuple(recipe) if isinstance(recipe, tuple | list) else (recipe,)
    if not configs:
        raise ValueError("recipe is empty; pass a recipe name or at least one method config")
    for cfg in configs:
        if type(cfg) not in METHODS:
            raise TypeError(f"{type(cfg).__name__} is not a registered method config; "
                            f"registered: {sorted(t.__name__ for t in METHODS)}")
    return "+".join(type(c).__name__.removesuffix("Config").lower() for c in configs), configs


def quantize_(model: nn.Module, recipe: str | tuple | list, calib: Calibration | None = None, *,
              progress: bool = True) -> QuantSummary:
    """Quantize `model` in place with `recipe`; returns a summary of what was quantized.

    Every linear inside the blocks is quantized, q/k/v included (the authors' GPTQ for LLaDA
    listed `attn_q/attn_k/attn_v`, names LLaDA does not have, so their q/k/v stayed FP16:
    ../shared/paper/README.md); the LM head and embeddings stay FP unless a config asks.
    """
    name, configs = resolve_recipe(recipe)
    if calib is None and any(needs_calibration(c) for c in configs):
        raise ValueError(f"recipe {name!r} needs calibration data; pass calib=Calibration(...)")
    check_order(configs)
    for cfg in configs:  # every check before the first change: never a half-quantized model
        if type(cfg) in CHECKS:
            CHECKS[type(cfg)](model, cfg)
    if calib is not None:
        calib = calib.with_(progress=progress)
    seconds: dict[str, float] = {}
    deferred: list[tuple[str, DeferredStep]] = []
    for cfg in configs:
        method = label(cfg)
        log.info("quantize_: %s %s", method, cfg)
        t0 = time.perf_counter()
        step = METHODS[type(cfg)](model, cfg, calib)
        if step is not None:
            deferred.append((method, step))
        seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t0
    for method, step in deferred:  # e.g. QuaRot's activation quantizers, after the weights
        log.info("quantize_: %s deferred step", method)
        t0 = time.perf_counter()
        step()
        seconds[method] += time.perf_counter() - t0
    summary = summarize(model, name, seconds)
    log.info("%s", summary)
    return summary
