"""SmoothQuant: move activation outliers into the weights by a per-channel scale, then quantize
weights per channel and activations per token (Xiao et al. 2023, "SmoothQuant: Accurate and
Efficient Post-Training Quantization for Large Language Models"; upstream mit-han-lab/smoothquant
`smooth.py`, and the copy the paper's authors ran: FelixMessi/QDLM `DuQuant/quantize/duquant.py`
with `--smooth --alpha 0.5`, `DuQuant/quantize/utils.py: smooth_and_let_inplace`).

For a linear y = x W^T whose input channel j has calibration range max|X_j| and weight range
max|W_:,j| (over every linear reading that input):

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha),     x <- x / s,   W <- W diag(s)

The division by s is folded into whatever produced x, so the model's function is unchanged:
- attn_norm -> q, k, v and mlp_norm -> gate, up: the norm weight g <- g / s;
- up -> down (the FFN hidden is silu(gate) * up, linear in up): up's rows (and bias) / s;
- v -> o (attention is linear in v): v's rows (and bias) / s. Under grouped-query attention
  (Dream) one v channel feeds the o columns of every query head in its group, so the o scale
  is taken per v channel (max over the group) and repeated.
These are the four pairs of the authors' code (`qkv`, `fc1`, `down`, `out`); their q.k smoothing
scale is initialised to 1 and left there with `--epochs 0`, so it is omitted here.

Statistics come from the full-precision model: the walker advances through smoothed blocks (the
same function) and activation fake-quant is switched on only after the last block, as the
authors' act scales were collected on the FP model (`generate_act_scale_shift.py`).

Where we differ from the authors' code (deliberate; none matters for the paper's models):
- max|W| over all linears that read the input (mit-han-lab's smooth.py); the authors' code
  takes it over the first linear of a group only (q_proj, up_proj);
- Dream's grouped-query v -> o pair: we fold one scale per v channel into v (the max over the
  query heads it serves, repeated over o's columns), so o's input needs no online scaling;
  the authors' fold cannot divide v's rows per o channel and falls back to smoothing each o
  input channel with its own scale, applied online. Measured (issue 16): dllmq's o output
  error is 1.00-1.05x theirs. MHA (LLaDA): both are the same;
- scale floor: smoothing scales below CLIPMIN = 1e-5 are raised to it; the authors' smoothing
  raises scales below 0.01 to 0.01 (issue 16's comparison). Only channels whose activation
  range is below ~1e-4 of their weight range differ, and the fold is exact either way.
Weights are quantized by the next config of the recipe (RTN, per channel).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import INPUT_GROUPS, get_module, set_module

from .calib import BlockInputs, Calibration, walk_blocks
from .primitives import QuantSpec
from .qlinear import set_act_specs
from .registry import register
from .transforms import HeadActQuant

log = logging.getLogger(__name__)

CLIPMIN = 1e-5  # dllmq's floor on statistics and scales (the authors' const.py CLIPMIN)

# the ArchSpec input groups smoothed, in the order the authors' code folds them
SMOOTH_ORDER = ("qkv", "gate_up", "down", "o")


@dataclass(frozen=True)
class SmoothQuantConfig:
    """alpha: migration strength. groups: which ArchSpec input groups to smooth, in order. act: per-token
    activation spec on every block linear input (None: smoothing only). attn: per-(token, head)
    spec for q, k (after RoPE) and v, the attention matmul inputs the authors' code quantizes
    too (their `QuantMatMul`); None keeps them 16-bit."""

    alpha: float = 0.5
    groups: tuple[str, ...] = SMOOTH_ORDER
    act: QuantSpec | None = field(default_factory=lambda: QuantSpec(8, sym=False, granularity="token"))
    attn: QuantSpec | None = None
    needs_calibration: ClassVar[bool] = True
    keeps_float_linears: ClassVar[bool] = True  # rescales float weights, sets act specs only

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] (paper: 0.5)")
        check_groups(self.groups)
        for name, qspec in (("act", self.act), ("attn", self.attn)):
            if qspec is not None and qspec.granularity != "token":
                raise ValueError(f"SmoothQuant {name} granularity {qspec.granularity!r}: use 'token'")


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    groups = tuple(groups)
    valid = tuple(g.name for g in INPUT_GROUPS)
    bad = [g for g in groups if g not in valid]
    if bad:
        raise ValueError(f"smoothing group(s) {bad} unknown; valid: {valid}")
    return groups


# ---- math ------------------------------------------------------------------------------------
def smoothing_scales(act_absmax: torch.Tensor, weights: Iterable[torch.Tensor],
                     alpha: float) -> torch.Tensor:
    """s = max|X|^alpha / max|W|^(1-alpha) per input channel (float32, >= CLIPMIN); weights are
    (out, in) matrices reading the same input, their column ranges combined by max."""
    w_absmax = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    a = act_absmax.float().clamp(min=CLIPMIN)
    s = a.pow(alpha) / w_absmax.clamp(min=CLIPMIN).pow(1 - alpha)
    return s.clamp(min=CLIPMIN)


def gqa_fold(x: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """(H*D,) over o's input channels -> (Hkv*D,) over v's output channels, max within a group."""
    D = x.shape[0] // num_heads
    return x.reshape(num_kv_heads, num_heads // num_kv_heads, D).amax(dim=1).reshape(-1)


def gqa_expand(x: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """(Hkv*D,) -> (H*D,): a v channel's value repeated for every query head of its group."""
    D = x.shape[0] // num_kv_heads
    return x.reshape(num_kv_heads, 1, D).expand(-1, num_heads // num_kv_heads, -1).reshape(-1)


@torch.no_grad()
def scale_columns(lin: nn.Module, s: torch.Tensor) -> None:
    """W <- W diag(s)."""
    lin.weight.data = (lin.weight.data.double() * s.double()).to(lin.weight.dtype)


@torch.no_grad()
def divide_output(mod: nn.Module, s: torch.Tensor) -> None:
    """A norm's weight, or a linear's rows and bias, divided by s: its output becomes x / s."""
    w = mod.weight.data
    mod.weight.data = (w.double() / (s.double() if w.dim() == 1 else s.double()[:, None])).to(w.dtype)
    if getattr(mod, "bias", None) is not None:
        mod.bias.data = (mod.bias.data.double() / s.double()).to(mod.bias.dtype)


# ---- statistics and folding on one block ----------------------------------------------------------
@torch.no_grad()
def smooth_block(model: nn.Module, block: nn.Module, act_absmax: dict[str, torch.Tensor],
                 groups: Iterable[str], alpha: float) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant scales for `groups` into `block` in place; returns the scale per group
    (over the consumers' input channels)."""
    spec, mcfg = model.spec, model.config
    scales = {}
    for g in groups:
        grp = spec.group(g)
        lins = [get_module(block, spec.linear_name(k)) for k in grp.linears]
        a = act_absmax[spec.linear_name(grp.linears[0])]
        prod = get_module(block, spec.source_path(grp))
        if grp.source == "v" and mcfg.num_kv_heads != mcfg.num_heads:  # o reads v per head group
            H, Hkv = mcfg.num_heads, mcfg.num_kv_heads
            w_kv = gqa_fold(lins[0].weight.abs().amax(dim=0), H, Hkv)
            s_v = smoothing_scales(gqa_fold(a, H, Hkv), [w_kv[None]], alpha)
            s = gqa_expand(s_v, H, Hkv)
            divide_output(prod, s_v)
        else:
            s = smoothing_scales(a, [lin.weight for lin in lins], alpha)
            divide_output(prod, s)
        for lin in lins:
            scale_columns(lin, s)
        scales[g] = s
    return scales


def install_attn_quant(model: nn.Module, attn: QuantSpec, qk_hadamard: bool = False,
                       qk_spec: QuantSpec | None = None) -> None:
    """q/k (after RoPE) and v fake-quantized per (token, head), as the authors' QuantMatMul;
    with qk_hadamard, q and k are first rotated over the head dimension (DuQuant's code)."""
    spec = model.spec
    for block in model.blocks:
        set_module(block, spec.q_hook, HeadActQuant(qk_hadamard, qk_spec or attn, per_head=True))
        set_module(block, spec.k_hook, HeadActQuant(qk_hadamard, qk_spec or attn, per_head=True))
        set_module(block, spec.v_hook, HeadActQuant(False, attn, per_head=True))


@register(SmoothQuantConfig)
def apply_smoothquant(model: nn.Module, cfg: SmoothQuantConfig, calib: Calibration | None) -> None:
    if calib is None:
        raise ValueError("SmoothQuant needs calibration data for its activation ranges")
    paths = [model.spec.linear_name(model.spec.group(g).linears[0]) for g in cfg.groups]

    def step(_i: int, block: nn.Module, inputs: BlockInputs) -> None:
        smooth_block(model, block, inputs.absmax(block, paths)[0], cfg.groups, cfg.alpha)

    walk_blocks(model, calib, step, desc="SmoothQuant")
    if cfg.act is not None:
        set_act_specs(model, cfg.act)
    if cfg.attn is not None:
        install_attn_quant(model, cfg.attn)
