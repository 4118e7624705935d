"""The paper's settings as data: one named recipe per cell of its tables (Appendix A, Table A1).

    weight-only (Table 1, 3, 5): w{4,3}a16g128-{rtn,gptq,awq}   asymmetric, group 128
    weight-activation (Table 2, 4): w{8,4}a{8,4}-{rtn,smoothquant,quarot,duquant}
                                     per-channel weights, per-token dynamic activations

Each recipe also names the calibration the paper used (GPTQ and the weight-activation methods:
128 x 2048 WikiText-2; AWQ: 128 x 512 Pile-val). Where the authors' released code differs from
the paper's text a *variant* selects either: `get_recipe(name, variant="paper" | "code")`, or the
name suffix `":code"` (`quantize_(model, "w4a16g128-gptq:code", calib)`). Differences recorded:
- GPTQ: paper says asymmetric; their AutoGPTQ scripts use AutoGPTQ's default `sym=True`.
  Their LLaDA layer list also skipped q/k/v by a name mismatch; no variant reproduces that
  (it is a bug, not a setting): pass `kinds=` to a GPTQConfig to emulate it.
- RTN has no code in their repo; "code" equals "paper".

The weight-activation methods other than RTN are implemented in smoothquant.py, quarot.py and
duquant.py; their recipes are lazy references: the module's `recipe(wbits, abits, variant)`
returns the config tuple, imported when the recipe is first asked for.

Group sizes larger than a layer's input (tiny models under a g128 recipe) become one group per
row (per-channel), with a log line: `QuantSpec.for_features`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .primitives import QuantSpec

VARIANTS = ("paper", "code")


@dataclass(frozen=True)
class Recipe:
    name: str
    build: Callable[[str], tuple]  # variant -> ordered method configs
    calib_dataset: str  # "wikitext2" | "pile-val"
    nsamples: int
    seqlen: int
    table: str  # which paper table(s) use it

    def configs(self, variant: str = "paper") -> tuple:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} unknown; use one of {VARIANTS}")
        return self.build(variant)


def _rtn(wbits: int, abits: int | None) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        from .rtn import RTNConfig

        if abits is None:
            return (RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="group", group_size=128)),)
        return (RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="channel"),
                          act=QuantSpec(abits, sym=False, granularity="token")),)

    return build


def _gptq(wbits: int) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        from .gptq import GPTQConfig

        # paper: asymmetric; authors' AutoGPTQ scripts: sym=True (AutoGPTQ default)
        return (GPTQConfig(weight=QuantSpec(wbits, sym=variant == "code", granularity="group",
                                            group_size=128),
                           blocksize=128, damp=0.01, act_order=False, static_groups=False,
                           true_sequential=True),)

    return build


def _awq(wbits: int) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        from .awq import AWQConfig

        return (AWQConfig(weight=QuantSpec(wbits, sym=False, granularity="group", group_size=128),
                          n_grid=20, clip=True),)

    return build


def _lazy(module: str, wbits: int, abits: int) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        mod = importlib.import_module(f"dllmq.quant.{module}")
        if not hasattr(mod, "recipe"):
            raise ImportError(f"dllmq.quant.{module} defines no recipe(wbits, abits, variant)")
        return tuple(mod.recipe(wbits, abits, variant))

    return build


def _table() -> dict[str, Recipe]:
    r: dict[str, Recipe] = {}
    for w in (4, 3):
        r[f"w{w}a16g128-rtn"] = Recipe(f"w{w}a16g128-rtn", _rtn(w, None), "wikitext2", 128, 2048,
                                       "baseline")
        r[f"w{w}a16g128-gptq"] = Recipe(f"w{w}a16g128-gptq", _gptq(w), "wikitext2", 128, 2048,
                                        "1, 3, 5")
        r[f"w{w}a16g128-awq"] = Recipe(f"w{w}a16g128-awq", _awq(w), "pile-val", 128, 512,
                                       "1, 3, 5")
    for b in (8, 4):
        name = f"w{b}a{b}"
        r[f"{name}-rtn"] = Recipe(f"{name}-rtn", _rtn(b, b), "wikitext2", 128, 2048, "baseline")
        for method in ("smoothquant", "quarot", "duquant"):
            r[f"{name}-{method}"] = Recipe(f"{name}-{method}", _lazy(method, b, b), "wikitext2",
                                           128, 2048, "2, 4")
    return r


RECIPES: dict[str, Recipe] = _table()


def get_recipe(name: str, variant: str | None = None) -> tuple:
    """Ordered method configs of a named recipe; `name:code` selects the authors'-code variant."""
    base, _, suffix = name.partition(":")
    if suffix and variant is not None and suffix != variant:
        raise ValueError(f"recipe {name!r} names variant {suffix!r} but variant={variant!r} was passed")
    variant = suffix or variant or "paper"
    if base not in RECIPES:
        raise KeyError(f"unknown recipe {base!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[base].configs(variant)
