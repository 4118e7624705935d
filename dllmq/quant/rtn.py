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

from dllmq.models import LINEAR_KINDS, set_module

from .calib import Calibration
from .primitives import QuantSpec, quantize_weight
from .qlinear import QLinear, as_qlinear, set_act_specs
from .registry import block_linears, check_kinds, check_weight_spec, register

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

    @property
    def keeps_float_linears(self) -> bool:  # activation-only RTN leaves the weights float
        return self.weight is None

    def __post_init__(self) -> None:
        check_kinds(self.kinds)
        if self.weight is None and self.act is None:
            raise ValueError("RTNConfig with weight=None and act=None does nothing; set one")
        if self.act is not None and self.act.granularity not in ("token", "tensor"):
            raise ValueError(f"activation granularity {self.act.granularity!r}: use 'token' "
                             "(dynamic per token) or 'tensor'")


@torch.no_grad()
def quantize_linear_rtn(block: nn.Module, path: str, qspec: QuantSpec) -> QLinear:
    q = as_qlinear(block, path)
    q.set_weight(quantize_weight(q.weight.data, qspec.for_features(q.in_features)), "rtn")
    return q


def check_rtn(model: nn.Module, cfg: RTNConfig) -> None:
    if cfg.weight is None:
        return
    check_weight_spec(model, cfg.weight, cfg.kinds, "RTN")
    if cfg.lm_head:
        head = model.head_linear
        if head is None:
            raise ValueError("RTN lm_head=True, but the LM head is the embedding matrix (tied "
                             "weights); untie it or set lm_head=False")
        if not isinstance(head, nn.Linear | QLinear):
            raise TypeError(f"LM head is a {type(head).__name__}; only a Linear head can be quantized")
        cfg.weight.for_features(head.in_features)


@register(RTNConfig, check=check_rtn)
def apply_rtn(model: nn.Module, cfg: RTNConfig, calib: Calibration | None) -> None:
    if cfg.weight is not None:
        for _i, block, _kind, path in block_linears(model, cfg.kinds):
            quantize_linear_rtn(block, path, cfg.weight)
    if cfg.act is not None:
        set_act_specs(model, cfg.act, cfg.kinds)
    if cfg.lm_head and cfg.weight is not None:
        head = model.head_linear
        q = QLinear.from_linear(head) if isinstance(head, nn.Linear) else head
        q.set_weight(quantize_weight(q.weight.data, cfg.weight.for_features(q.in_features)), "rtn")
        set_module(model, model.spec.lm_head, q)
