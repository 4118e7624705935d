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

Where we differ: the authors' code takes max|W| over the first linear of a group only
(q_proj, up_proj); we take it over all linears that read the input (mit-han-lab's smooth.py).
Weights are quantized by the next config of the recipe (RTN, per channel).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import get_module, set_module

from .api import register
from .calib import BlockInputs, Calibration, walk_blocks
from .primitives import QuantSpec
from .qlinear import as_qlinear
from .quarot import HeadActQuant

log = logging.getLogger(__name__)

CLIPMIN = 1e-5  # the authors' floor on statistics and scales (DuQuant/quantize/const.py)

# name -> (producer kind: a norm attribute of the ArchSpec or a linear kind, consumer kinds)
SMOOTH_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("attn_norm", ("q", "k", "v")),
    "gate_up": ("mlp_norm", ("gate", "up")),
    "down": ("up", ("down",)),
    "o": ("v", ("o",)),
}
ALL_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class SmoothQuantConfig:
    """alpha: migration strength. groups: which of SMOOTH_GROUPS to smooth. act: per-token
    activation spec on every block linear input (None: smoothing only). attn: per-(token, head)
    spec for q, k (after RoPE) and v, the attention matmul inputs the authors' code quantizes
    too (their `QuantMatMul`); None keeps them 16-bit."""

    alpha: float = 0.5
    groups: tuple[str, ...] = ("qkv", "gate_up", "down", "o")
    act: QuantSpec | None = field(default_factory=lambda: QuantSpec(8, sym=False, granularity="token"))
    attn: QuantSpec | None = None
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] (paper: 0.5)")
        check_groups(self.groups)
        for name, spec in (("act", self.act), ("attn", self.attn)):
            if spec is not None and spec.granularity != "token":
                raise ValueError(f"SmoothQuant {name} granularity {spec.granularity!r}: use 'token'")


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    groups = tuple(groups)
    bad = [g for g in groups if g not in SMOOTH_GROUPS]
    if bad:
        raise ValueError(f"smoothing group(s) {bad} unknown; valid: {tuple(SMOOTH_GROUPS)}")
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
def group_input_kind(group: str) -> str:
    """The linear whose input carries the group's statistics (all consumers share that input)."""
    return SMOOTH_GROUPS[group][1][0]


@torch.no_grad()
def collect_absmax(block: nn.Module, inputs: BlockInputs, paths: Iterable[str]) -> dict[str, torch.Tensor]:
    """Per-channel max |x| over all calibration tokens at the inputs of the linears at `paths`."""
    stats: dict[str, torch.Tensor] = {}

    def hook(path: str, x: torch.Tensor) -> None:
        m = x.abs().amax(dim=0).float()
        stats[path] = m if path not in stats else torch.maximum(stats[path], m)

    inputs.run(block, {p: hook for p in paths})
    return stats


@torch.no_grad()
def smooth_block(model: nn.Module, block: nn.Module, act_absmax: dict[str, torch.Tensor],
                 groups: Iterable[str], alpha: float) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant scales for `groups` into `block` in place; returns the scale per group
    (over the consumers' input channels)."""
    spec, cfg = model.spec, model.config
    scales = {}
    for g in groups:
        producer, consumers = SMOOTH_GROUPS[g]
        lins = [get_module(block, spec.linear_name(k)) for k in consumers]
        a = act_absmax[spec.linear_name(consumers[0])]
        prod = get_module(block, getattr(spec, producer) if producer.endswith("norm")
                          else spec.linear_name(producer))
        if g == "o" and cfg.num_kv_heads != cfg.num_heads:
            H, Hkv = cfg.num_heads, cfg.num_kv_heads
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


def install_attn_quant(model: nn.Module, spec: QuantSpec, qk_hadamard: bool = False,
                       qk_spec: QuantSpec | None = None) -> None:
    """q/k (after RoPE) and v fake-quantized per (token, head), as the authors' QuantMatMul;
    with qk_hadamard, q and k are first rotated over the head dimension (DuQuant's code)."""
    for block in model.blocks:
        set_module(block, model.spec.q_hook, HeadActQuant(qk_hadamard, qk_spec or spec, per_head=True))
        set_module(block, model.spec.k_hook, HeadActQuant(qk_hadamard, qk_spec or spec, per_head=True))
        set_module(block, model.spec.v_hook, HeadActQuant(False, spec, per_head=True))


def install_act_quant(model: nn.Module, act: QuantSpec) -> None:
    for block in model.blocks:
        for k in ALL_KINDS:
            as_qlinear(block, model.spec.linear_name(k)).act_spec = act


@register(SmoothQuantConfig)
def apply_smoothquant(model: nn.Module, cfg: SmoothQuantConfig, calib: Calibration | None) -> None:
    if calib is None:
        raise ValueError("SmoothQuant needs calibration data for its activation ranges")
    paths = [model.spec.linear_name(group_input_kind(g)) for g in cfg.groups]

    def step(_i: int, block: nn.Module, inputs: BlockInputs) -> None:
        smooth_block(model, block, collect_absmax(block, inputs, paths), cfg.groups, cfg.alpha)

    walk_blocks(model, calib, step, desc="SmoothQuant")
    if cfg.act is not None:
        install_act_quant(model, cfg.act)
    if cfg.attn is not None:
        install_attn_quant(model, cfg.attn)


def recipe(wbits: int, abits: int, variant: str) -> tuple:
    """Appendix A: alpha 0.5, per-channel weights, per-token activations; the authors' code
    (DuQuant main.py `--smooth --alpha 0.5`): weights asymmetric min-max RTN, activations
    dynamic asymmetric per token. "code" also quantizes q/k/v at the attention matmuls."""
    from .rtn import RTNConfig

    act = QuantSpec(abits, sym=False, granularity="token")
    return (SmoothQuantConfig(alpha=0.5, act=act, attn=act if variant == "code" else None),
            RTNConfig(weight=QuantSpec(wbits, sym=False, granularity="channel")))
