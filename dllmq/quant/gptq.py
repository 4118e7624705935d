"""GPTQ (Frantar et al. 2023): quantize a weight column by column, pushing each column's rounding
error onto the columns not yet quantized through the inverse Hessian of the layer objective

    min_Q || W X - Q X ||^2,   H = 2 X X^T / T   (X: the layer's calibration inputs, T tokens).

Follows IST-DASLab/gptq `gptq.py: GPTQ.fasterquant` (lazy block updates of `blocksize` columns,
Cholesky factor of H^-1 computed once, damping = damp * mean(diag H), dead inputs zeroed,
act-order = columns by decreasing diag(H), `static_groups` = group parameters fixed from the
unquantized weight before act-order, as AutoGPTQ/gptqmodel do). Where we differ:
- H is accumulated in float32 as sum(X^T X) with one matmul per batch and normalised once,
  instead of the running rescale per batch (same matrix up to rounding);
- linears fed by the same input (q/k/v; gate/up) share one Hessian and are quantized as one
  stacked matrix: GPTQ treats rows independently given H, so this is exact and saves
  launches (3 loops fewer per block);
- a Hessian that is not positive definite after damping gets 10x the damping, with a log line,
  up to 6 times, instead of failing;
- group parameters are taken from the group's columns *as updated so far*; upstream reads
  them from `W`, which misses the updates made inside the current lazy block when a group
  starts mid-block. With group_size a multiple of blocksize (the paper: 128/128) both agree;
  here the result never depends on blocksize (test_lazy_block_updates_are_exact);
- per-channel (and per-tensor) parameters are computed *after* dead inputs (diag H = 0) are
  zeroed; upstream calls `find_params(W)` before zeroing them, so a dead column's weights
  still widen its rows' ranges. Grouped and static-group parameters are computed after the
  zeroing in both (test_per_channel_params_ignore_dead_columns);
- symmetric rounding of a row or group with no negative weight uses [-absmax, absmax], not
  upstream's clipped [0, absmax] grid (primitives.py). Each of these three gives dllmq the
  smaller layer error; none matters for real weights (checked bit-identical to `fasterquant`
  at the paper's settings, issue 16).

Optional MSE clip search of the weight range (`MSEClip`, QuaRot's `--w_clip`; upstream spcl/QuaRot
`fake_quant/quant_utils.py: WeightQuantizer.find_params` with mse=True, itself from the GPTQ
repo's `quant.py`): every time GPTQ fixes a row's scale and zero (once for per-channel, when each
group starts for grouped weights), the range [min, max] is shrunk by p = 1, 1 - 1/grid, ... for
int(maxshrink * grid) values and the p with the smallest sum |w - Q(w)|^norm is kept per row. As
upstream: grid 100, maxshrink 0.8 (p from 1 down to 0.21), norm 2.4, ties keep the larger p.
Rounding follows dllmq's conventions (primitives.py), so the symmetric grid differs from QuaRot's
(absmax / (2^(b-1) - 1) there); the search itself is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import LINEAR_KINDS, ArchSpec

from .calib import BlockInputs, Calibration, walk_blocks
from .primitives import QuantResult, QuantSpec, quant_params, quantize_with
from .qlinear import as_qlinear
from .registry import check_kinds, check_weight_spec, register

log = logging.getLogger(__name__)


# ---- the math ---------------------------------------------------------------------------------
def hessian(xs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / T (float32) from inputs (T, in) or a list of such batches."""
    acc = HessianAccumulator()
    for x in xs if isinstance(xs, list) else [xs]:
        acc.add(x)
    return acc.finalize()


class HessianAccumulator:
    """Running sum of X^T X in float32, one matmul per batch."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (T, in)
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
        self.sum.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def finalize(self) -> torch.Tensor:
        if self.sum is None or self.tokens == 0:
            raise ValueError("no calibration tokens reached this layer; cannot build its Hessian")
        return self.sum * (2.0 / self.tokens)


def layer_error(dw: torch.Tensor, h: torch.Tensor) -> float:
    """Mean over rows of dw_r H dw_r^T / 2 = ||(W - Q) X||^2 / (T * out) with H = 2 X^T X / T."""
    dw = dw.float()
    return float(((dw @ h) * dw).sum() / (2 * dw.shape[0]))


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping I)^-1; raises the damping until H is PD."""
    diag = torch.arange(h.shape[0], device=h.device)
    mean_diag = float(h.diagonal().mean())
    for attempt in range(7):
        d = damp * 10**attempt
        hd = h.clone()
        hd[diag, diag] += d * mean_diag
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                if attempt:
                    log.warning("GPTQ: Hessian not positive definite at damp=%g; went on with "
                                "damp=%g", damp, d)
                return upper
    raise torch.linalg.LinAlgError(f"GPTQ: Hessian not positive definite even with damp="
                                   f"{damp * 10**6:g}; check the calibration inputs for NaN/inf")


@dataclass(frozen=True)
class MSEClip:
    """The weight-range search of QuaRot's `--w_clip`: shrink factors p = 1 - i / grid for
    i < int(maxshrink * grid), error sum |w - Q(w)|^norm per row (upstream: 100, 0.8, 2.4)."""

    grid: int = 100
    maxshrink: float = 0.8
    norm: float = 2.4

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"MSEClip grid={self.grid} must be >= 1 (QuaRot: 100)")
        if not 0 < self.maxshrink <= 1 or int(self.maxshrink * self.grid) < 1:
            raise ValueError(f"MSEClip maxshrink={self.maxshrink} must lie in (0, 1] and give at "
                             f"least one shrink with grid={self.grid} (QuaRot: 0.8)")
        if self.norm <= 0:
            raise ValueError(f"MSEClip norm={self.norm} must be > 0 (QuaRot: 2.4)")

    def shrinks(self) -> list[float]:
        """The candidate factors, largest first (1.0 first: no clipping)."""
        return [1 - i / self.grid for i in range(int(self.maxshrink * self.grid))]


def mse_clip_params(w: torch.Tensor, qspec: QuantSpec, clip: MSEClip
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of w (R, n): scale and zero (R, 1) of the shrunk range p * [min, max] with the
    smallest sum |w - Q(w)|^norm, and the chosen p (R,). A later p replaces an earlier one only
    when strictly better, so a row where clipping cannot help keeps p = 1 (min-max)."""
    if qspec.clip_ratio < 1:
        raise ValueError(f"clip_ratio={qspec.clip_ratio} with an MSE clip search: the search picks "
                         "the ratio; leave the weight spec's clip_ratio at 1.0")
    w = w.float()  # (R, n)
    row = QuantSpec(qspec.bits, qspec.sym, "channel")
    best = torch.full((w.shape[0],), float("inf"), device=w.device)
    scale = torch.ones(w.shape[0], 1, device=w.device)
    zero = torch.zeros(w.shape[0], 1, device=w.device)
    shrink = torch.ones(w.shape[0], device=w.device)
    for p in clip.shrinks():
        s, z = quant_params(w, replace(row, clip_ratio=p))  # (R, 1)
        err = (quantize_with(w, s, z, row) - w).abs_().pow_(clip.norm).sum(dim=1)  # (R,)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better[:, None], s, scale)
        zero = torch.where(better[:, None], z, zero)
        shrink = torch.where(better, p, shrink)
    return scale, zero, shrink


def _col_params(w: torch.Tensor, qspec: QuantSpec, clip: MSEClip | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero (out, 1) for a slice of columns (one group, or all columns per channel);
    with `clip`, each row's range comes from the MSE search (per-tensor: one search over all)."""
    if qspec.granularity == "tensor":
        if clip is None:
            s, z = quant_params(w, qspec)  # (1, 1)
        else:
            s, z, _ = mse_clip_params(w.reshape(1, -1), qspec, clip)
        return s.expand(w.shape[0], 1), z.expand(w.shape[0], 1)
    if clip is not None:
        s, z, _ = mse_clip_params(w, qspec, clip)
        return s, z
    s, z = quant_params(w, QuantSpec(qspec.bits, qspec.sym, "channel", clip_ratio=qspec.clip_ratio))
    return s, z  # (out, 1)


@torch.no_grad()
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    qspec: QuantSpec,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    mse_clip: MSEClip | None = None,
) -> QuantResult:
    """GPTQ of one weight W (out, in) given its Hessian H (in, in). Pure: W and H are not changed.
    mse_clip: search each row's (group's) range by MSEClip instead of taking min-max.

    Returns the dequantized weight (W's dtype), uint8 codes, per-group scale/zero (out, G),
    g_idx when act-order reorders groups, and error = layer_error(W - Q, H) (undamped H).
    """
    if qspec.granularity == "token":
        raise ValueError("GPTQ quantizes weights; use granularity 'group', 'channel' or 'tensor'")
    out_f, in_f = W.shape
    qspec = qspec.for_features(in_f)
    g = qspec.group_len(in_f) if qspec.granularity == "group" else in_f
    dtype = W.dtype
    W0 = W.detach().float()
    W = W0.clone()  # (out, in)
    H = H.detach().float().clone()  # (in, in)
    H0 = H.clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    grouped = qspec.granularity == "group"
    n_groups = in_f // g
    if grouped and static_groups:
        sz = [_col_params(W[:, j * g:(j + 1) * g], qspec, mse_clip) for j in range(n_groups)]
        scales = torch.cat([s for s, _ in sz], 1)  # (out, G)
        zeros = torch.cat([z for _, z in sz], 1)
    else:
        scales = torch.zeros(out_f, n_groups, device=W.device)
        zeros = torch.zeros(out_f, n_groups, device=W.device)
        if not grouped:
            scales[:, :1], zeros[:, :1] = _col_params(W, qspec, mse_clip)

    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    Hinv = _inverse_cholesky(H, damp)  # (in, in) upper
    Q = torch.zeros_like(W)
    codes = torch.zeros(out_f, in_f, dtype=torch.uint8, device=W.device)
    # group of each (permuted) column: which scale/zero column quantizes it
    col_group = torch.zeros(in_f, dtype=torch.long)
    if grouped:
        pos = torch.arange(in_f)
        col_group = (perm.cpu() if (perm is not None and static_groups) else pos) // g

    scale = zero = None  # the current column's (out,) parameters
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1 = W[:, i1:i2].clone()  # (out, b)
        Err1 = torch.zeros_like(W1)
        C1 = torch.zeros_like(W1)  # codes of this block, as floats until the block ends
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            w = W1[:, i]  # (out,)
            d = Hinv1[i, i]
            if grouped and not static_groups and c % g == 0:
                # the group's columns as updated so far: in-block from W1, later ones from W
                # (columns past the block still lack this block's pending updates: add them)
                rest = W[:, i2:c + g] - Err1[:, :i] @ Hinv[i1:c, i2:c + g]
                cols = torch.cat([W1[:, i:i + g], rest], 1)  # (out, g)
                s, z = _col_params(cols, qspec, mse_clip)
                scales[:, c // g], zeros[:, c // g] = s[:, 0], z[:, 0]
            if grouped or scale is None:
                j = int(col_group[c])
                scale, zero = scales[:, j], zeros[:, j]
            qcode = torch.clamp(torch.round(w / scale) + zero, 0, qspec.maxq)  # (out,)
            q = (qcode - zero) * scale
            C1[:, i] = qcode
            Q[:, c] = q
            err = (w - q) / d
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # rank-1 update, one kernel
            Err1[:, i] = err
        codes[:, i1:i2] = C1.to(torch.uint8)
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    g_idx = None
    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
        if grouped and not static_groups:
            g_idx = (inv.cpu() // g).to(torch.int32)  # column -> group in quantization order
    return QuantResult(Q.to(dtype), codes, scales, zeros, qspec, g_idx, layer_error(Q - W0, H0))


# ---- wiring: the block walk -------------------------------------------------------------------


@dataclass(frozen=True)
class GPTQConfig:
    """weight: the weight spec (paper: int4/int3 asym g128); blocksize/damp/act_order/
    static_groups as in fasterquant/AutoGPTQ (static_groups=False: a group's parameters come
    from the weight as updated when the group starts; True: from the unquantized weight, as
    llm-compressor's observer does); true_sequential: quantize q/k/v, then o, then gate/up,
    then down, each with inputs recomputed through the parts already quantized (authors'
    setting) instead of all linears from the block's float inputs. mse_clip: an MSE search of
    every row's (group's) weight range (QuaRot's `--w_clip`, `MSEClip()`); None: min-max."""

    weight: QuantSpec = QuantSpec(4, sym=False, granularity="group", group_size=128)
    blocksize: int = 128
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = False  # AutoGPTQ's default, which the authors ran
    true_sequential: bool = True
    mse_clip: MSEClip | None = None
    kinds: tuple[str, ...] = LINEAR_KINDS
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_kinds(self.kinds)
        if self.blocksize < 1:
            raise ValueError(f"blocksize={self.blocksize} must be >= 1 (fasterquant: 128)")
        if not 0 < self.damp < 1:
            raise ValueError(f"damp={self.damp} must lie in (0, 1) (fasterquant: 0.01)")
        if self.weight.granularity == "token":
            raise ValueError("GPTQ weight spec granularity must be group, channel or tensor")
        if self.mse_clip is not None and not isinstance(self.mse_clip, MSEClip):
            raise TypeError(f"mse_clip={self.mse_clip!r}: pass MSEClip(...) or None")
        if self.mse_clip is not None and self.weight.clip_ratio < 1:
            raise ValueError(f"weight clip_ratio={self.weight.clip_ratio} with mse_clip: the search "
                             "picks the ratio; leave clip_ratio at 1.0 or set mse_clip=None")


def quantize_block_gptq(block: nn.Module, inputs: BlockInputs, spec: ArchSpec,
                        cfg: GPTQConfig) -> None:
    """GPTQ every selected linear of one block, the linears of one input group (ArchSpec:
    q/k/v, o, gate/up, down, in forward order) stacked."""
    spec_of = spec.linear_name
    groups = [tuple(k for k in grp.linears if k in cfg.kinds) for grp in spec.input_groups]
    groups = [grp for grp in groups if grp]
    stages = [[grp] for grp in groups] if cfg.true_sequential else [groups]
    for stage in stages:
        accs = {spec_of(grp[0]): HessianAccumulator() for grp in stage}
        inputs.run(block, {p: (lambda path, x, accs=accs: accs[path].add(x)) for p in accs})
        for grp in stage:
            H = accs[spec_of(grp[0])].finalize()
            mods = [as_qlinear(block, spec_of(k)) for k in grp]
            W = torch.cat([m.weight.data for m in mods])  # (sum out, in)
            res = gptq_quantize(W, H, cfg.weight, cfg.blocksize, cfg.damp, cfg.act_order,
                                cfg.static_groups, cfg.mse_clip)
            row = 0
            for m in mods:
                r = slice(row, row + m.out_features)
                row += m.out_features
                part = QuantResult(res.weight[r].clone(), res.codes[r].clone(), res.scale[r].clone(),
                                   res.zero[r].clone(),
                                   res.spec, res.g_idx,
                                   layer_error(res.weight[r].float() - m.weight.data.float(), H))
                m.set_weight(part, "gptq")


def check_gptq(model: nn.Module, cfg: GPTQConfig) -> None:
    check_weight_spec(model, cfg.weight, cfg.kinds, "GPTQ")


@register(GPTQConfig, check=check_gptq)
def apply_gptq(model: nn.Module, cfg: GPTQConfig, calib: Calibration | None) -> None:
    if calib is None:
        raise ValueError("GPTQ needs calibration data; pass calib=Calibration(...)")
    in_min = min(model.config.hidden_size, model.config.intermediate_size)
    if calib.num_tokens < in_min:
        log.warning("GPTQ: %d calibration tokens < %d input features; Hessians are rank-deficient "
                    "and held up by damping only", calib.num_tokens, in_min)
    walk_blocks(model, calib, lambda i, block, inputs: quantize_block_gptq(block, inputs, model.spec, cfg),
                desc=f"GPTQ {cfg.weight.describe()}")
    log.info("GPTQ done (%d blocks, %s, damp %g, act_order %s, mse_clip %s)", len(model.blocks),
             cfg.weight.describe(), cfg.damp, cfg.act_order, cfg.mse_clip)
