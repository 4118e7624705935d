"""The paper's settings as data: one named recipe per cell of its tables (Appendix A, Table A1).

    weight-only (Table 1, 3, 5): w{4,3}a16g128-{rtn,gptq,awq}   asymmetric, group 128
    weight-activation (Table 2, 4): w{8,4}a{8,4}-{rtn,smoothquant,quarot,duquant}
                                     per-channel weights, per-token dynamic activations

Each recipe also names the calibration of each variant, `Recipe.calibration(variant) ->
CalibSpec(source, nsamples, seqlen)`: the paper's (GPTQ and the weight-activation methods:
128 x 2048 WikiText-2; AWQ: 128 x 512 Pile-val) and the code's, which differs for QuaRot on
LLaDA: the authors' LLaDA loader sets `model.seqlen = 4096`, so their GPTQ pass calibrates on
128 x 4096 windows (the ":code" variant; `harness.resolve_calibration` cuts windows to the
model's context). Where the authors' released code differs from
the paper's text a *variant* selects either: `get_recipe(name, variant="paper" | "code")`, or the
name suffix `":code"` (`quantize_(model, "w4a16g128-gptq:code", calib)`). Differences recorded:
- GPTQ: paper says asymmetric; their AutoGPTQ scripts use AutoGPTQ's default `sym=True`.
  Their LLaDA layer list also skipped q/k/v by a name mismatch; no variant reproduces that
  (it is a bug, not a setting): pass `kinds=` to a GPTQConfig to emulate it.
- RTN has no code in their repo; "code" equals "paper".

- SmoothQuant / DuQuant: "code" also quantizes q/k/v at the attention matmuls (their
  `QuantMatMul`); DuQuant's code shares one block rotation across all blocks.
- QuaRot: the two variants' configs agree (see `_quarot`); only the calibration differs.
Every setting is in this file; the methods' modules hold no recipes.

Group sizes larger than a layer's input (tiny models under a g128 recipe) become one group per
row (per-channel), with a log line: `QuantSpec.for_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .awq import AWQConfig
from .duquant import DuQuantConfig
from .gptq import GPTQConfig, MSEClip
from .primitives import QuantSpec
from .quarot import QuaRotConfig
from .rtn import RTNConfig
from .smoothquant import SmoothQuantConfig

VARIANTS = ("paper", "code")


@dataclass(frozen=True)
class CalibSpec:
    """A recipe's calibration: `source` ("wikitext2" | "pileval", the names dllmq.data reads),
    `nsamples` windows of `seqlen` tokens."""

    source: str
    nsamples: int
    seqlen: int


WIKITEXT2 = CalibSpec("wikitext2", 128, 2048)  # GPTQ's and the weight-activation methods'
PILEVAL = CalibSpec("pileval", 128, 512)  # AWQ's (llm-awq: 128 x 512 Pile validation)


@dataclass(frozen=True)
class Recipe:
    name: str
    build: Callable[[str], tuple]  # variant -> ordered method configs
    calib: CalibSpec  # the paper's calibration
    table: str  # which paper table(s) use it
    calib_code: CalibSpec | None = field(default=None)  # the code's, where it differs

    def configs(self, variant: str = "paper") -> tuple:
        return self.build(_check_variant(variant))

    def calibration(self, variant: str = "paper") -> CalibSpec:
        """The calibration this variant of the recipe was run with."""
        if _check_variant(variant) == "code" and self.calib_code is not None:
            return self.calib_code
        return self.calib

    # the paper variant's calibration, under the names callers used before CalibSpec
    @property
    def calib_dataset(self) -> str:
        return self.calib.source

    @property
    def nsamples(self) -> int:
        return self.calib.nsamples

    @property
    def seqlen(self) -> int:
        return self.calib.seqlen


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; use one of {VARIANTS}")
    return variant


# ---- weight-only (Tables 1, 3, 5) ------------------------------------------------------------
def _rtn(wbits: int, abits: int | None) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        if abits is None:
            return (RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="group", group_size=128)),)
        return (RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="channel"),
                          act=QuantSpec(abits, sym=False, granularity="token")),)

    return build


def _gptq(wbits: int) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        # paper: asymmetric; authors' AutoGPTQ scripts: sym=True (AutoGPTQ default)
        return (GPTQConfig(weight=QuantSpec(wbits, sym=variant == "code", granularity="group",
                                            group_size=128),
                           blocksize=128, damp=0.01, act_order=False, static_groups=False,
                           true_sequential=True),)

    return build


def _awq(wbits: int) -> Callable[[str], tuple]:
    def build(variant: str) -> tuple:
        return (AWQConfig(weight=QuantSpec(wbits, sym=False, granularity="group", group_size=128),
                          n_grid=20, clip=True),)

    return build


# ---- weight-activation (Tables 2, 4) -----------------------------------------------------------
def _smoothquant(wbits: int, abits: int) -> Callable[[str], tuple]:
    """Appendix A: alpha 0.5, per-channel weights, per-token activations; the authors' code
    (DuQuant main.py `--smooth --alpha 0.5`): weights asymmetric min-max RTN, activations
    dynamic asymmetric per token. "code" also quantizes q/k/v at the attention matmuls."""

    def build(variant: str) -> tuple:
        act = QuantSpec(abits, sym=False, granularity="token")
        return (SmoothQuantConfig(alpha=0.5, act=act, attn=act if variant == "code" else None),
                RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="channel")))

    return build


def _quarot(wbits: int, abits: int) -> Callable[[str], tuple]:
    """Appendix A: Hadamard rotation, per-channel weights, symmetric per-token activations,
    queries 16-bit; K/V at the activation bit width (the authors' scripts/llada_quarot.sh:
    `--a_bits 8 --k_bits 8 --v_bits 8 --w_bits 8 --w_clip --rotate`: weights by GPTQ, symmetric,
    per channel, the range of every row found by an MSE search, `gptq.MSEClip()`).

    The two variants' configs agree. The paper's text says only that it follows QuaRot's
    "original configuration" (16-bit queries, symmetric activations), and the command QuaRot's
    own README (`QuaRot/fake_quant/README.md`) gives for reproducing the QuaRot paper passes
    `--w_clip`, so the paper variant clips too. Both calibrate GPTQ on full-precision
    activations, as the authors' main.py does (QuaRotConfig.calibrate_with_act_quant=False).
    The code variant's calibration windows are 4096 tokens (`Recipe.calibration`)."""

    def build(variant: str) -> tuple:
        act = QuantSpec(abits, sym=True, granularity="token")
        weight = QuantSpec(wbits, sym=True, granularity="channel")
        return (QuaRotConfig(seed=0, act=act, kv=act),
                GPTQConfig(weight=weight, blocksize=128, damp=0.01, act_order=False,
                           true_sequential=True, mse_clip=MSEClip(grid=100, maxshrink=0.8, norm=2.4)))

    return build


def _duquant(wbits: int, abits: int) -> Callable[[str], tuple]:
    """Appendix A: alpha 0.5, activation clip 0.9, weight clip 0.8, rotation step 256, block 128,
    per-channel weights, per-token activations; the authors' code (`--quant_method duquant
    --alpha 0.5 --smooth --lac 0.9 --swc 0.8 --block_size 128 --max_rotation_step 256`): weights
    asymmetric RTN, activations dynamic asymmetric. "code" also quantizes q/k/v at the attention
    matmuls (q/k Hadamard-rotated over the head dim and clipped 0.9; v unclipped) and shares
    one block rotation across all blocks."""

    def build(variant: str) -> tuple:
        act = QuantSpec(abits, sym=False, granularity="token", clip_ratio=0.9)
        attn = QuantSpec(abits, sym=False, granularity="token") if variant == "code" else None
        return (DuQuantConfig(alpha=0.5, block_size=128, rotation_steps=256, permutation_times=1,
                              act=act, attn=attn, shared_rotation=variant == "code"),
                RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="channel", clip_ratio=0.8)))

    return build


def _table() -> dict[str, Recipe]:
    r: dict[str, Recipe] = {}
    for w in (4, 3):
        r[f"w{w}a16g128-rtn"] = Recipe(f"w{w}a16g128-rtn", _rtn(w, None), WIKITEXT2, "baseline")
        r[f"w{w}a16g128-gptq"] = Recipe(f"w{w}a16g128-gptq", _gptq(w), WIKITEXT2, "1, 3, 5")
        r[f"w{w}a16g128-awq"] = Recipe(f"w{w}a16g128-awq", _awq(w), PILEVAL, "1, 3, 5")
    for b in (8, 4):
        name = f"w{b}a{b}"
        r[f"{name}-rtn"] = Recipe(f"{name}-rtn", _rtn(b, b), WIKITEXT2, "baseline")
        r[f"{name}-smoothquant"] = Recipe(f"{name}-smoothquant", _smoothquant(b, b), WIKITEXT2, "2, 4")
        r[f"{name}-quarot"] = Recipe(f"{name}-quarot", _quarot(b, b), WIKITEXT2, "2, 4",
                                     calib_code=CalibSpec("wikitext2", 128, 4096))
        r[f"{name}-duquant"] = Recipe(f"{name}-duquant", _duquant(b, b), WIKITEXT2, "2, 4")
    return r


RECIPES: dict[str, Recipe] = _table()


def split_name(name: str, variant: str | None = None) -> tuple[str, str]:
    """(base name, variant) of "w4a4-quarot:code"; an explicit variant must agree."""
    base, _, suffix = name.partition(":")
    if suffix and variant is not None and suffix != variant:
        raise ValueError(f"recipe {name!r} names variant {suffix!r} but variant={variant!r} was passed")
    variant = _check_variant(suffix or variant or "paper")
    if base not in RECIPES:
        raise KeyError(f"unknown recipe {base!r}; valid: {', '.join(RECIPES)}")
    return base, variant


def get_recipe(name: str, variant: str | None = None) -> tuple:
    """Ordered method configs of a named recipe; `name:code` selects the authors'-code variant."""
    base, variant = split_name(name, variant)
    return RECIPES[base].configs(variant)


def get_calibration(name: str, variant: str | None = None) -> CalibSpec:
    """The calibration of a named recipe (`name:code` for the code variant's)."""
    base, variant = split_name(name, variant)
    return RECIPES[base].calibration(variant)
