"""QLinear: the module that stands where an nn.Linear stood inside a block once it is quantized.

    y = F.linear(act_quant(transform(x)), W_hat, b)

- `weight` is the fake-quantized (dequantized) weight, a float tensor of the original dtype,
  so the block computes exactly what real low-bit kernels would, and `state_dict()` keeps the
  official key `<path>.weight` (+ `.bias`).
- `input_transform` is an optional module applied to the input first (an online Hadamard for
  QuaRot's down projection, a channel permutation/rotation for DuQuant); its weight-side twin
  must already be folded into `weight` by the method that installed it.
- `act_spec` fake-quantizes the (transformed) input per token, dynamically (W8A8/W4A4).
- `codes`, `scale`, `zero`, `g_idx` are the integer state for export (non-persistent buffers:
  they follow `.to(device)` but stay out of `state_dict()`; `dllmq.quant.export` writes them).

Methods compose: SmoothQuant/QuaRot may install a QLinear with a transform and an act spec and
the plain float weight; GPTQ/RTN then replace its weight by `set_weight(result)`, keeping the
transform and the act spec. This follows gpt-fast's "compute the state, then swap modules".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dllmq.models import LINEAR_KINDS, get_module, set_module

from .primitives import QuantResult, QuantSpec, fake_quant


class QLinear(nn.Module):
    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        input_transform: nn.Module | None = None,
        act_spec: QuantSpec | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_transform = input_transform
        self.act_spec = act_spec
        self.weight_spec: QuantSpec | None = None
        self.quant_error: float | None = None
        self.method: str | None = None
        for name in ("codes", "scale", "zero", "g_idx"):
            self.register_buffer(name, None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear | QLinear, **kw) -> QLinear:
        """A QLinear computing what `linear` computes (plus whatever `kw` adds)."""
        if isinstance(linear, QLinear):
            if linear.weight_spec is not None:
                raise ValueError("re-wrapping an already weight-quantized QLinear would drop its "
                                 "codes; quantize weights last in the recipe")
            kw = {"input_transform": linear.input_transform, "act_spec": linear.act_spec, **kw}
        return cls(linear.weight, linear.bias, **kw)

    @property
    def is_weight_quantized(self) -> bool:
        return self.weight_spec is not None

    def set_weight(self, result: QuantResult, method: str) -> None:
        """Install a quantized weight (and its integer state) computed by `method`."""
        if tuple(result.weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"quantized weight {tuple(result.weight.shape)} does not fit "
                             f"QLinear({self.in_features} -> {self.out_features})")
        self.weight.data = result.weight.to(self.weight.dtype)
        self.codes, self.scale, self.zero = result.codes, result.scale, result.zero
        self.g_idx = result.g_idx
        self.weight_spec = result.spec
        self.quant_error = result.error
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.act_spec is not None:
            x = fake_quant(x, self.act_spec)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        w = self.weight_spec.describe() if self.weight_spec else "fp"
        a = self.act_spec.describe() if self.act_spec else "fp"
        t = f", transform={type(self.input_transform).__name__}" if self.input_transform else ""
        return f"{self.in_features} -> {self.out_features}, w={w}, a={a}{t}"


def as_qlinear(block: nn.Module, path: str) -> QLinear:
    """The QLinear at `path` inside `block`, swapping one in for a plain nn.Linear first."""
    mod = get_module(block, path)
    if isinstance(mod, QLinear):
        return mod
    if not isinstance(mod, nn.Linear):
        raise TypeError(f"{path!r} is a {type(mod).__name__}, expected nn.Linear or QLinear")
    q = QLinear.from_linear(mod)
    set_module(block, path, q)
    return q


def set_act_specs(model: nn.Module, act: QuantSpec, kinds: Iterable[str] = LINEAR_KINDS) -> None:
    """Per-token activation fake-quant on the input of every block linear of `kinds` (the one
    place RTN, SmoothQuant, QuaRot and DuQuant switch activation quantization on)."""
    for block in model.blocks:
        for kind in kinds:
            as_qlinear(block, model.spec.linear_name(kind)).act_spec = act
