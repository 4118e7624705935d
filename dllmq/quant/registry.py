"""The bottom of `dllmq.quant`: the method table and what every method shares before it runs.

- `METHODS` maps each method config type to its apply function (pytorch/ao's handler table),
  all with one signature `apply(model, cfg, calib) -> None | deferred step`; `CHECKS` maps it to
  a check `check(model, cfg) -> None` that raises on anything the apply would fail on. `quantize_`
  runs every check of a recipe before the first apply, so a bad setting never leaves a model
  half-quantized. `register(ConfigType, check=...)` fills both.
- The one order rule of a recipe (`check_order`): a method that needs plain float linears
  (AWQ, QuaRot, DuQuant: `needs_float_linears`) may only follow methods that leave them so
  (SmoothQuant, activation-only RTN: `keeps_float_linears`); `require_float` checks the model
  itself (a model quantized by an earlier call).
- Walking helpers: `block_linears` (every block x linear kind, as ArchSpec paths),
  `check_kinds`, `check_weight_spec` (a weight spec fits every linear it will meet).

Nothing here imports another module of `dllmq.quant`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn

from dllmq.models import LINEAR_KINDS, get_module

DeferredStep = Callable[[], None]
ApplyFn = Callable[[nn.Module, Any, Any], "DeferredStep | None"]
CheckFn = Callable[[nn.Module, Any], None]

METHODS: dict[type, ApplyFn] = {}
CHECKS: dict[type, CheckFn] = {}


def register(config_type: type, check: CheckFn | None = None) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: `@register(GPTQConfig, check=check_gptq) def apply(model, cfg, calib): ...`."""

    def deco(fn: ApplyFn) -> ApplyFn:
        if config_type in METHODS and METHODS[config_type] is not fn:
            raise ValueError(f"{config_type.__name__} is already registered to "
                             f"{METHODS[config_type].__module__}")
        METHODS[config_type] = fn
        if check is not None:
            CHECKS[config_type] = check
        return fn

    return deco


def label(cfg: Any) -> str:
    """A config's method name as logs and messages say it: GPTQConfig -> "GPTQ"."""
    return type(cfg).__name__.removesuffix("Config")


def needs_calibration(cfg: Any) -> bool:
    return bool(getattr(cfg, "needs_calibration", True))


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """Validate a tuple of linear kinds (a config's `kinds` field); unknown names raise."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in LINEAR_KINDS]
    if bad:
        raise ValueError(f"linear kind(s) {bad} match nothing; valid kinds are {LINEAR_KINDS}")
    if not kinds:
        raise ValueError(f"kinds is empty; name at least one of {LINEAR_KINDS}")
    return kinds


def block_linears(model: nn.Module, kinds: Iterable[str]) -> Iterator[tuple[int, nn.Module, str, str]]:
    """Yield (block index, block, kind, block-relative path) for every block and kind."""
    kinds = check_kinds(kinds)
    for i, block in enumerate(model.blocks):
        for kind in kinds:
            yield i, block, kind, model.spec.linear_name(kind)


def check_weight_spec(model: nn.Module, wspec: Any, kinds: Iterable[str], method: str) -> None:
    """Raise now if `wspec` cannot quantize some selected linear (a group size that does not
    divide its input features), naming the linear, instead of failing halfway through."""
    for i, block, kind, path in block_linears(model, kinds):
        features = get_module(block, path).in_features
        try:
            wspec.for_features(features)
        except ValueError as e:
            raise ValueError(f"{method}: block {i} {kind} ({path}, {features} input features): "
                             f"{e}") from None


# ---- the one "put X first" rule --------------------------------------------------------------
def keeps_float(cfg: Any) -> bool:
    """Whether a config leaves every linear a plain float one (no quantized weight, no input
    transform): SmoothQuant only rescales, activation-only RTN only sets activation specs."""
    return bool(getattr(cfg, "keeps_float_linears", False))


def needs_float(cfg: Any) -> bool:
    return bool(getattr(cfg, "needs_float_linears", False))


def check_order(configs: tuple) -> None:
    """A method needing plain float linears may only follow methods that keep them."""
    for i, cfg in enumerate(configs):
        if not needs_float(cfg):
            continue
        before = [c for c in configs[:i] if not keeps_float(c)]
        if before:
            raise ValueError(f"{label(cfg)} needs float linears without transforms, but "
                             f"{label(before[0])} comes before it in the recipe and changes "
                             f"them; put {label(cfg)} first in the recipe")


def require_float(model: nn.Module, method: str, kinds: Iterable[str] = LINEAR_KINDS,
                  head: bool = False) -> None:
    """Raise if a selected block linear (or the LM head) already carries a quantized weight or
    an input transform (the model was quantized before): `method` must come first."""
    mods = [(f"block {i} {kind}", get_module(block, path))
            for i, block, kind, path in block_linears(model, kinds)]
    if head and model.head_linear is not None:
        mods.append(("the LM head", model.head_linear))
    for what, mod in mods:
        if (getattr(mod, "weight_spec", None) is not None
                or getattr(mod, "input_transform", None) is not None):
            raise ValueError(f"{method} needs float linears, but {what} already carries a "
                             f"quantized weight or a transform; put {method} first in the recipe "
                             "and quantize a freshly loaded model")
