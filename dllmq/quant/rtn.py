"""Round-to-nearest (RTN): every weight quantized independently with Eq. 1, no calibration.

The baseline of every table. With `act` set it is also the weight-activation baseline (W8A8 /
W4A4 RTN): weights per channel, activations per token, dynamic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import LINEAR_KINDS, get_module, set_module

from .api import block_linears, check_kinds, register
from .calib import Calibration
from .primitives import QuantSpec, quantize_weight
from .qlinear import QLinear, as_qlinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RTNConfig:
    """weight: the weight spec (None leaves weights FP, e.g. activation-only); act: per-token
    activation spec or None; kinds: which block linears; lm_head: also quantize the LM head's
    weight (per-channel/group RTN)."""

    weight: QuantSpec | None = field(default_factory=lambda: QuantSpec(4, sym=False, group_size=128))
    act: QuantSpec | None = None
    kinds: tuple[str, ...] = LINEAR_KINDS
    lm_head: bool = False
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_kinds(self.kinds)
        if self.weight is None and self.act is None:
            raise ValueError("RTNConfig with weight=None and act=None does nothing; set one")
        if self.act is not None and self.act.granularity not in ("token", "tensor"):
            raise ValueError(f"activation granularity {self.act.granularity!r}: use 'token' "
                             "(dynamic per token) or 'tensor'")


def set_act_spec(block: nn.Module, path: str, act: QuantSpec) -> QLinear:
    q = as_qlinear(block, path)
    q.act_spec = act
    return q


@torch.no_grad()
def quantize_linear_rtn(block: nn.Module, path: str, spec: QuantSpec) -> QLinear:
    q = as_qlinear(block, path)
    q.set_weight(quantize_weight(q.weight.data, spec.for_features(q.in_features)), "rtn")
    return q


@register(RTNConfig)
def apply_rtn(model: nn.Module, cfg: RTNConfig, calib: Calibration | None) -> None:
    for _i, block, _kind, path in block_linears(model, cfg.kinds):
        if cfg.weight is not None:
            quantize_linear_rtn(block, path, cfg.weight)
        if cfg.act is not None:
            set_act_spec(block, path, cfg.act)
    if cfg.lm_head and cfg.weight is not None:
        head = get_module(model, model.spec.lm_head)
        if not isinstance(head, nn.Linear | QLinear):
            raise TypeError(f"LM head is a {type(head).__name__}; only a Linear head can be quantized")
        q = QLinear.from_linear(head) if isinstance(head, nn.Linear) else head
        q.set_weight(quantize_weight(q.weight.data, cfg.weight.for_features(q.in_features)), "rtn")
        set_module(model, model.spec.lm_head, q)
