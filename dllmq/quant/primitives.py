"""Uniform integer quantization, the paper's Eq. 1, as pure tensor functions.

    X_q = clamp(round(X / s) + z, 0, 2^b - 1),   s = (max X - min X) / (2^b - 1),   z = -round(min X / s)
    X_hat = (X_q - z) * s

Statistics (min/max) are taken over one *group* of values: the whole tensor, one output
channel of a weight (a row), `group_size` consecutive input columns of a row, or one token
of an activation (a row of the flattened (tokens, channels) matrix). Every granularity is
"reduce over the last dim in chunks", so one code path serves all four.

Conventions (these follow IST-DASLab/gptq `quant.py: Quantizer.find_params` and
compressed-tensors, so codes are interchangeable with both, except where noted):
- asymmetric: the range is widened to contain 0 (min <= 0 <= max) so zero is exact;
- symmetric: s = 2 * absmax / (2^b - 1) and z = 2^(b-1) (codes stay unsigned in [0, 2^b-1];
  subtracting z gives compressed-tensors' signed codes in [-2^(b-1), 2^(b-1)-1]). Where we
  differ from IST-DASLab: for a group with no negative value their `find_params` keeps
  xmin = 0 (it mirrors xmin only where xmin < 0), so s = absmax / (2^b - 1) with z still at
  the midpoint, and every value above ~absmax / 2 clips to the top code; here the range is
  always [-absmax, absmax], so the group's largest value is represented to half a step
  (tests/test_quant_gptq.py pins both). Real weight rows always hold negative values, where
  the two agree;
- clip_ratio c in (0, 1] shrinks the range before s and z are computed (DuQuant's weight and
  activation clipping);
- an all-zero group gets the range [-1, 1] (as GPTQ) so no scale is ever 0.
Arithmetic is float32 whatever the input dtype; results are cast back to the input dtype.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace

import torch

log = logging.getLogger(__name__)

GRANULARITIES = ("tensor", "channel", "group", "token")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor. `group_size` is used only with granularity "group"."""

    bits: int = 4
    sym: bool = False
    granularity: str = "group"
    group_size: int = 128
    clip_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ValueError(f"bits={self.bits!r} unsupported; use an integer from 2 to 8")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} unknown; use one of {GRANULARITIES}")
        if self.granularity == "group" and self.group_size < 1:
            raise ValueError(f"group_size={self.group_size} must be >= 1 for granularity 'group'")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise ValueError(f"clip_ratio={self.clip_ratio} must lie in (0, 1]")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group_len(self, features: int) -> int:
        """Number of consecutive values sharing one scale along the last dim."""
        if self.granularity == "group":
            if features % self.group_size:
                raise ValueError(f"group_size={self.group_size} does not divide {features} features; "
                                 "pick a divisor or call spec.for_features(n) to clamp")
            return self.group_size
        return features

    def for_features(self, features: int) -> QuantSpec:
        """This spec made valid for a tensor with `features` input columns.

        The one documented adaptation: a group larger than the row (tiny models under a g128
        recipe) becomes one group per row, i.e. per-channel, with a log line. A group that is
        smaller but does not divide the row still raises.
        """
        if self.granularity == "group" and self.group_size > features:
            _log_clamp(self.group_size, features)
            return replace(self, group_size=features)
        self.group_len(features)
        return self

    def describe(self) -> str:
        g = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        clip = f" clip{self.clip_ratio:g}" if self.clip_ratio < 1 else ""
        return f"int{self.bits} {'sym' if self.sym else 'asym'} {g}{clip}"


@functools.cache
def _log_clamp(group_size: int, features: int) -> None:
    """Log each (group_size, features) clamp once per process, not once per linear."""
    log.info("group_size %d > %d features: using one group per row (per-channel)", group_size,
             features)


def _grouped(x: torch.Tensor, qspec: QuantSpec) -> torch.Tensor:
    """x (..., C) -> float32 view (R, G, g): R rows, G groups per row of g values."""
    if qspec.granularity == "tensor":
        return x.reshape(1, 1, -1).float()
    C = x.shape[-1]
    g = qspec.group_len(C)
    return x.reshape(-1, C // g, g).float()  # (R, G, g)


def quant_params(x: torch.Tensor, qspec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point per group: float32 tensors of shape (R, G).

    R = rows of x flattened to (-1, C) (1 for per-tensor), G = groups per row (1 unless
    granularity is "group"). Zeros are whole numbers stored as float32.
    """
    xg = _grouped(x, qspec)
    xmin = xg.amin(dim=-1).clamp(max=0) * qspec.clip_ratio  # (R, G)
    xmax = xg.amax(dim=-1).clamp(min=0) * qspec.clip_ratio
    if qspec.sym:
        xmax = torch.maximum(xmax, -xmin)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / qspec.maxq
    if qspec.sym:
        zero = torch.full_like(scale, (qspec.maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def _broadcast(p: torch.Tensor, x: torch.Tensor, qspec: QuantSpec) -> torch.Tensor:
    """Per-group params (R, G) -> (R, G, 1) against x's (R, G, g) view."""
    return p.reshape(-1, p.shape[-1], 1) if qspec.granularity != "tensor" else p.reshape(1, 1, 1)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qspec: QuantSpec) -> torch.Tensor:
    """Integer codes in [0, 2^b - 1] (uint8, same shape as x)."""
    xg = _grouped(x, qspec)
    q = torch.clamp(torch.round(xg / _broadcast(scale, xg, qspec)) + _broadcast(zero, xg, qspec),
                    0, qspec.maxq)
    return q.to(torch.uint8).reshape(x.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qspec: QuantSpec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(codes - zero) * scale, cast to dtype."""
    qg = _grouped(codes, qspec)
    x = (qg - _broadcast(zero, qg, qspec)) * _broadcast(scale, qg, qspec)
    return x.reshape(codes.shape).to(dtype)


def fake_quant(x: torch.Tensor, qspec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize with dynamic statistics of x itself (same shape and dtype).

    Fused into one expression so activation fake-quant allocates no uint8 codes.
    """
    scale, zero = quant_params(x, qspec)
    return quantize_with(x, scale, zero, qspec)


def quantize_with(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qspec: QuantSpec) -> torch.Tensor:
    """Fake-quantize x with given (not recomputed) params; used by GPTQ column by column."""
    xg = _grouped(x, qspec)
    s, z = _broadcast(scale, xg, qspec), _broadcast(zero, xg, qspec)
    q = torch.clamp(torch.round(xg / s) + z, 0, qspec.maxq)
    return ((q - z) * s).reshape(x.shape).to(x.dtype)


@dataclass(frozen=True, eq=False)
class QuantResult:
    """A quantized weight (out, in): the float weight it dequantizes to, and its integer state.

    codes (out, in) uint8 in [0, 2^b-1]; scale/zero (out, G) float32; g_idx (in,) int32 maps each
    input column to its group (None when groups are contiguous); error: the method's own
    objective (GPTQ: summed squared layer-output error; None where not computed).
    """

    weight: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: QuantSpec
    g_idx: torch.Tensor | None = None
    error: float | None = None


def quantize_weight(w: torch.Tensor, qspec: QuantSpec) -> QuantResult:
    """Round-to-nearest of a weight (out, in) under spec (the RTN baseline's math)."""
    scale, zero = quant_params(w, qspec)
    codes = quantize(w, scale, zero, qspec)
    return QuantResult(dequantize(codes, scale, zero, qspec, w.dtype), codes, scale, zero, qspec)
