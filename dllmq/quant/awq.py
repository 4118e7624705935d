"""AWQ (Lin et al. 2024): protect salient input channels by scaling them up before weight
quantization, the scale folded into the operation that produces the input.

For a group of linears sharing an input X (C channels) and the op `prev` producing X:
    s = mean|X|^r / sqrt(max * min),  r in {0, 1/n_grid, ..., (n_grid-1)/n_grid}
    W' = Q(W diag(s)) diag(s)^-1   (evaluated),   r* = argmin || f(X; W) - f(X; W') ||^2
then prev's output is divided by s and the linears' columns multiplied by s (exact in float),
and each weight's clipping range is searched per group (max shrink 0.5 over n_grid steps).

Follows mit-han-lab/llm-awq `awq/quantize/auto_scale.py` (`_search_module_scale`, scale
groups, `apply_scale`) and `auto_clip.py` (`auto_clip_layer`, q/k skipped). The scale groups
come from the ArchSpec, identical for LLaDA and Dream:
    attn_norm -> q, k, v   objective: attention output (o's output), from the block input
    v -> o                 only when v and o weights have the same shape (no GQA); Dream's
                           GQA makes v narrower than o's input, so this group is skipped as
                           llm-awq does for GQA models (llm-awq PR #67)
    mlp_norm -> gate, up   objective: the SwiGLU MLP output
    up -> down             objective: down's output
Where we differ:
- the quantizer is Eq. 1 with the range widened to contain 0 (dllmq's one convention,
  shared with GPTQ and compressed-tensors); llm-awq's pseudo_quantize uses the raw min/max;
- the authors' LLaDA branch (FelixMessi/QDLM llm-awq) inspects the *whole block* fed with the
  *normed* input for the q/k/v and gate/up groups (a block applied to an already normed
  input, MLP included); here the objective is the sub-layer output, as llm-awq does for Llama;
- like llm-awq, the next block sees the float outputs of this block (the search runs on the
  float model); `sequential=True` feeds it the quantized block's outputs instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dllmq.models import LINEAR_KINDS, ArchSpec, get_module

from .calib import BlockInputs, Calibration, walk_blocks
from .primitives import QuantSpec, fake_quant, quantize_weight
from .qlinear import as_qlinear
from .registry import check_kinds, check_weight_spec, register, require_float

log = logging.getLogger(__name__)


# ---- the math ---------------------------------------------------------------------------------
def act_scale(x: torch.Tensor) -> torch.Tensor:
    """mean |x| per input channel: (T, C) -> (C,) float32 (llm-awq `get_act_scale`)."""
    return x.abs().reshape(-1, x.shape[-1]).float().mean(0)


def candidate_scales(x_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    s = x_mean.pow(ratio).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scales(
    x_mean: torch.Tensor,
    weights: Sequence[torch.Tensor],
    loss_fn: Callable[[list[torch.Tensor]], float],
    qspec: QuantSpec,
    n_grid: int = 20,
    ratios: Sequence[float] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Grid search of the AWQ scale exponent. `loss_fn(ws)` returns the objective when the
    linears use weights `ws` (same order as `weights`). Returns (best scales (C,), losses per
    grid point); grid point 0 is scale 1, so losses[argmin] <= losses[0] always.
    ratios default to llm-awq's i / n_grid (i < n_grid); llm-compressor uses i / (n_grid - 1)."""
    losses: list[float] = []
    best, best_s = float("inf"), None
    for r in ratios if ratios is not None else [i / n_grid for i in range(n_grid)]:
        s = candidate_scales(x_mean, r)
        ws = [(fake_quant(w * s.to(w.dtype), qspec.for_features(w.shape[1])) / s.to(w.dtype))
              for w in weights]
        loss = loss_fn(ws)
        losses.append(loss)
        if loss < best:
            best, best_s = loss, s
    if best_s is None:
        raise FloatingPointError(f"AWQ scale search found no finite loss (losses {losses}); "
                                 "check the calibration inputs for NaN/inf")
    return best_s, losses


@torch.no_grad()
def search_clip(
    w: torch.Tensor,
    x: torch.Tensor,
    qspec: QuantSpec,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_token: int = 512,
    rows_per_batch: int = 256,
) -> torch.Tensor:
    """Per (row, group) clipping threshold minimising the group-wise output error
    || x_g w_g - x_g Q(clamp(w_g, -m, m)) ||^2 over m = absmax * (1 - i / n_grid),
    i < max_shrink * n_grid (llm-awq `auto_clip_layer`). w (out, in), x (T, in) -> (out, G).
    The group products are batched matmuls (llm-awq broadcasts (o, n, G, g) and sums, which
    moves ~g times more memory); same sums, another summation order."""
    qspec = qspec.for_features(w.shape[1])
    g = qspec.group_len(w.shape[1]) if qspec.granularity == "group" else w.shape[1]
    out_f, in_f = w.shape
    x = x.reshape(-1, in_f)
    x = x[0::max(1, x.shape[0] // n_sample_token)]  # (n, in)
    G = in_f // g
    xg = x.reshape(x.shape[0], G, g).transpose(0, 1).to(w.dtype)  # (G, n, g)

    def group_out(wb: torch.Tensor) -> torch.Tensor:  # wb (o, G, g) -> x_g w_g^T per group (G, n, o)
        return torch.bmm(xg, wb.permute(1, 2, 0))

    best_all = []
    for r0 in range(0, out_f, rows_per_batch):
        wb = w[r0:r0 + rows_per_batch].reshape(-1, G, g)  # (o, G, g)
        org_max = wb.abs().amax(dim=-1, keepdim=True)  # (o, G, 1)
        best_max = org_max.clone()
        min_err = torch.full_like(org_max, float("inf"), dtype=torch.float32)
        org_out = group_out(wb)  # (G, n, o)
        for i in range(int(max_shrink * n_grid)):
            m = org_max * (1 - i / n_grid)
            cur = torch.clamp(wb, -m, m)
            q = fake_quant(cur.reshape(-1, in_f), qspec).reshape(cur.shape)
            err = (group_out(q) - org_out).float().pow(2).mean(1).T[..., None]  # (o, G, 1)
            better = err < min_err
            min_err[better] = err[better]
            best_max[better] = m[better]
        best_all.append(best_max.reshape(-1, G))
    return torch.cat(best_all)  # (out, G)


def apply_clip(w: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """Clamp each (row, group) of w (out, in) to +-max_val (out, G)."""
    G = max_val.shape[1]
    wg = w.reshape(w.shape[0], G, -1)
    m = max_val[..., None].to(w.dtype)
    return torch.clamp(wg, -m, m).reshape(w.shape)


# ---- wiring -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AWQConfig:
    """weight: the weight spec (paper: int4/int3 asym g128); n_grid: scale grid points
    (llm-awq 20); clip: run the clipping search (llm-awq: on, q/k skipped); sequential: feed
    the next block the quantized block's outputs (llm-awq: False, float outputs)."""

    weight: QuantSpec = QuantSpec(4, sym=False, granularity="group", group_size=128)
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512
    sequential: bool = False
    kinds: tuple[str, ...] = LINEAR_KINDS
    needs_calibration: ClassVar[bool] = True
    needs_float_linears: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_kinds(self.kinds)
        if self.n_grid < 1 or self.clip_grid < 1:
            raise ValueError("n_grid and clip_grid must be >= 1 (llm-awq: 20)")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink={self.max_shrink} must lie in [0, 1) (llm-awq: 0.5)")
        if self.weight.granularity not in ("group", "channel"):
            raise ValueError("AWQ weight granularity must be 'group' or 'channel'")


class _Stop(Exception):
    pass


def _probe(block: nn.Module, inputs: BlockInputs, path: str) -> list[torch.Tensor]:
    """Output of the module at `path` when the block runs on the stored inputs; the forward
    stops there (nothing after it is computed)."""
    outs: list[torch.Tensor] = []

    def grab(_m, _a, out):
        outs.append(out)
        raise _Stop

    h = get_module(block, path).register_forward_hook(grab)
    try:
        for i, x in enumerate(inputs.xs):
            with contextlib.suppress(_Stop):
                block(x, *inputs.block_kwargs(i))
    finally:
        h.remove()
    return outs


def _swiglu(block: nn.Module, spec: ArchSpec, h: torch.Tensor) -> torch.Tensor:
    gate, up, down = (get_module(block, spec.linear_name(k)) for k in ("gate", "up", "down"))
    return down(F.silu(gate(h)) * up(h))


def _mse(a: list[torch.Tensor] | torch.Tensor, b: list[torch.Tensor] | torch.Tensor) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).float().pow(2).mean())
    num = sum(float((x - y).float().pow(2).sum()) for x, y in zip(a, b, strict=True))
    return num / sum(x.numel() for x in a)


def _with_weights(mods: list[nn.Module], ws: list[torch.Tensor], fn: Callable[[], object]):
    saved = [m.weight.data for m in mods]
    try:
        for m, w in zip(mods, ws, strict=True):
            m.weight.data = w
        return fn()
    finally:
        for m, w in zip(mods, saved, strict=True):
            m.weight.data = w


@torch.no_grad()
def _fold_into_norm(norm: nn.Module, mods: list[nn.Module], s: torch.Tensor) -> None:
    norm.weight.div_(s.to(norm.weight.dtype))
    for m in mods:
        m.weight.mul_(s.to(m.weight.dtype)[None, :])


@torch.no_grad()
def _fold_into_linear(prev: nn.Module, mods: list[nn.Module], s: torch.Tensor) -> None:
    prev.weight.div_(s.to(prev.weight.dtype)[:, None])
    if prev.bias is not None:
        prev.bias.div_(s.to(prev.bias.dtype))
    for m in mods:
        m.weight.mul_(s.to(m.weight.dtype)[None, :])


@torch.no_grad()
def awq_block(block: nn.Module, inputs: BlockInputs, spec: ArchSpec, cfg: AWQConfig) -> dict[str, float]:
    """Scale search + folding for every input group of the ArchSpec (forward order), clipping
    search, then RTN of every selected linear of one block. Returns the best/scale-1 loss ratio
    per scale group (for logging and tests)."""
    name = spec.linear_name
    lin = {k: get_module(block, name(k)) for k in LINEAR_KINDS}
    feats = inputs.collect(block, [name(g.linears[0]) for g in spec.input_groups])
    x_in = {g.name: feats[name(g.linears[0])] for g in spec.input_groups}
    qspec = cfg.weight
    report: dict[str, float] = {}

    def search(key: str, mods: list[nn.Module], x: torch.Tensor, loss_fn) -> torch.Tensor:
        s, losses = search_scales(act_scale(x), [m.weight.data for m in mods], loss_fn, qspec,
                                  cfg.n_grid)
        report[key] = min(losses) / losses[0] if losses[0] > 0 else 1.0
        return s.to(x.device)

    def attention_loss(mods: list[nn.Module], _x: torch.Tensor):
        ref = _probe(block, inputs, name("o"))  # attention output given the block input
        return lambda ws: _with_weights(mods, ws, lambda: _mse(_probe(block, inputs, name("o")), ref))

    def mlp_loss(mods: list[nn.Module], x: torch.Tensor):
        ref = _swiglu(block, spec, x)  # MLP output
        return lambda ws: _with_weights(mods, ws, lambda: _mse(_swiglu(block, spec, x), ref))

    def own_loss(mods: list[nn.Module], x: torch.Tensor):
        (m,) = mods
        ref = m(x)
        return lambda ws: _mse(F.linear(x, ws[0], m.bias), ref)

    # llm-awq's objective per group: the sub-layer output for a norm-fed group, else the
    # linear's own output
    objective = {"qkv": attention_loss, "gate_up": mlp_loss}
    for g in spec.input_groups:
        chosen = [k for k in g.linears if k in cfg.kinds]
        source = get_module(block, spec.source_path(g))
        if not chosen:
            continue
        if not g.source_is_norm and source.weight.shape[0] != lin[g.linears[0]].weight.shape[1]:
            continue  # v -> o under grouped-query attention: no one-to-one fold (llm-awq PR #67)
        mods = [lin[k] for k in chosen]
        x = x_in[g.name]
        s = search(g.name, mods, x, objective.get(g.name, own_loss)(mods, x))
        # the source feeds every linear of the group: all take the scale, quantized or not
        fold = _fold_into_norm if g.source_is_norm else _fold_into_linear
        fold(source, [lin[k] for k in g.linears], s)
        x_in[g.name] = x / s.to(x.dtype)

    x_of = {k: x_in[g.name] for g in spec.input_groups for k in g.linears}
    for k in cfg.kinds:
        w = lin[k].weight.data
        if cfg.clip and k not in ("q", "k"):  # llm-awq skips q/k: their error hits the scores
            w = apply_clip(w, search_clip(w, x_of[k], qspec, cfg.clip_grid, cfg.max_shrink,
                                          cfg.clip_tokens))
        q = as_qlinear(block, name(k))
        q.set_weight(quantize_weight(w, qspec.for_features(w.shape[1])), "awq")
    return report


def check_awq(model: nn.Module, cfg: AWQConfig) -> None:
    require_float(model, "AWQ")
    check_weight_spec(model, cfg.weight, cfg.kinds, "AWQ")


@register(AWQConfig, check=check_awq)
def apply_awq(model: nn.Module, cfg: AWQConfig, calib: Calibration | None) -> None:
    if calib is None:
        raise ValueError("AWQ needs calibration data; pass calib=Calibration(...)")
    spec = model.spec

    def step(i: int, block: nn.Module, inputs: BlockInputs):
        fp_out = None if cfg.sequential else inputs.outputs(block)
        report = awq_block(block, inputs, spec, cfg)
        log.debug("AWQ block %d: best/scale-1 loss %s", i, report)
        return fp_out

    walk_blocks(model, calib, step, desc=f"AWQ {cfg.weight.describe()}")
