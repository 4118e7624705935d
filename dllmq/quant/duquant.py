"""DuQuant: smoothing, then a learned-free orthogonal change of basis on every linear input that
spreads outliers within blocks of channels and balances them across blocks (Lin et al. 2024,
"DuQuant: Distributing Outliers via Dual Transformation Makes Stronger Quantized LLMs";
upstream Hsu1023/DuQuant as vendored for LLaDA/Dream in FelixMessi/QDLM `DuQuant/`:
`quantize/quantizer.py` (rotation, permutation_zigzag, online_duquant_cali), `get_rot.py`,
`quantize/duquant.py`, `models/int_llada_layer.py`, `int_dream_layer.py`).

For the input x (tokens, C) of a group of linears (q/k/v, gate/up, o, down):
1. smoothing as SmoothQuant with alpha 0.5 (smoothquant.py; the same four fold pairs);
2. a block-diagonal rotation R1 (blocks of b = 128 channels): in every block, repeatedly take
   the channel holding the largest |x| and rotate it by an orthogonal b x b matrix whose row
   for that channel is flat (1/sqrt(b) in the first coordinate, a random unit direction on the
   rest), spreading the outlier over the block; of up to `rotation_steps` (256) greedy steps the
   prefix with the smallest block peak is kept;
3. a zigzag permutation P: channels sorted by max |x| are dealt to the blocks 0, 1, ..., n-1,
   n-1, ..., 0, 0, 1, ... so every block gets a similar share of large channels;
4. a second greedy block rotation R2 on the permuted activations.
With T = R1 P R2 (orthogonal), x W^T = (x T)(W T)^T: W <- W T offline, x -> x T online (the
QLinear input transform), so full-precision outputs are unchanged. Then weights per channel
(asymmetric, clip 0.8) and activations per token (asymmetric, clip 0.9), Appendix A.

Where we differ from the authors' code:
- one rotation per block of channels, each block searched on its own (the paper's BlockDiag of
  block-wise R_i); the code searches one b x b matrix shared by all blocks (here:
  `shared_rotation=True`, the "code" recipe variant), and picks the channel to rotate as
  `row % block_size` of the arg-max of the activation reshaped to (-1, block_size), a row
  (token/block) index rather than the channel (column) index: we always take the column;
- the greedy search runs on (up to `rot_tokens`) calibration tokens at each linear input; the
  code runs it on the mean over calibration samples of the layer input (one sequence);
- the block peak is max |x| per block; the code uses max - min over the whole matrix;
- the "Hadamard-like" block matrix is a Householder reflection taking e_0 to the flat vector,
  times diag(1, random orthogonal); the code builds the same first row from Givens rotations;
- the calibration flows through the full-precision (transformed) blocks; activation fake-quant
  is switched on after the last block (the code lets it flow through quantized blocks).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import get_module

from .calib import BlockInputs, Calibration, walk_blocks
from .primitives import QuantSpec
from .qlinear import as_qlinear, set_act_specs
from .registry import register, require_float
from .smoothquant import SMOOTH_ORDER, install_attn_quant, smooth_block
from .transforms import DuQuantTransform, apply_block_rotation  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# the ArchSpec input groups, in the order their transforms are fitted (one generator: the
# order fixes which random rotation each group gets)
FIT_ORDER = ("qkv", "gate_up", "o", "down")


@dataclass(frozen=True)
class DuQuantConfig:
    """alpha: smoothing strength (None: no smoothing). block_size / rotation_steps /
    permutation_times: the transform (Appendix A: 128, 256, 1). act: per-token activation spec
    with the activation clip (0.9). attn: per-(token, head) spec for q/k/v at the attention
    matmuls, as the authors' code (None: 16-bit); q/k are rotated over the head dim first and
    clipped with act's clip. rot_tokens: calibration tokens kept per input for the search.
    shared_rotation: one b x b matrix searched over all blocks at once and used for every block
    (the authors' code) instead of one search per block (the paper)."""

    alpha: float | None = 0.5
    block_size: int = 128
    rotation_steps: int = 256
    permutation_times: int = 1
    seed: int = 0
    act: QuantSpec | None = field(default_factory=lambda: QuantSpec(
        8, sym=False, granularity="token", clip_ratio=0.9))
    attn: QuantSpec | None = None
    rot_tokens: int = 2048
    shared_rotation: bool = False
    needs_calibration: ClassVar[bool] = True
    needs_float_linears: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] or be None (paper: 0.5)")
        if self.block_size < 2 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size} must be a power of two >= 2 (paper: 128)")
        if self.rotation_steps < 0 or self.permutation_times < 0 or self.rot_tokens < 1:
            raise ValueError("rotation_steps and permutation_times must be >= 0, rot_tokens >= 1")
        for name, qspec in (("act", self.act), ("attn", self.attn)):
            if qspec is not None and qspec.granularity != "token":
                raise ValueError(f"DuQuant {name} granularity {qspec.granularity!r}: use 'token'")


# ---- math: the rotation and the permutation ------------------------------------------------
def spread_matrix(b: int, generator: torch.Generator) -> torch.Tensor:
    """An orthogonal b x b matrix (float64) whose first row is (1/sqrt(b), v) with v a random
    direction of norm sqrt(1 - 1/b): x @ R sends channel 0 evenly over the block."""
    u = torch.full((b,), 1 / math.sqrt(b), dtype=torch.float64)
    v = -u.clone()
    v[0] += 1.0
    house = torch.eye(b, dtype=torch.float64) - 2 * torch.outer(v, v) / v.dot(v)  # e_0 <-> u
    g = torch.randn(b - 1, b - 1, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))[None]
    rand = torch.eye(b, dtype=torch.float64)
    rand[1:, 1:] = q
    return house @ rand


def greedy_block_rotation(x: torch.Tensor, block_size: int, steps: int,
                          R0: torch.Tensor) -> torch.Tensor:
    """Block-diagonal rotation (nb, b, b) for x (T, nb*b), every block searched on its own.

    Each step, per block: the channel c holding the block's largest |x| is swapped to position
    0, spread by R0, swapped back (R = P_c R0 P_c); the accumulated product with the smallest
    block peak max|x| over all prefixes (identity included) is returned.
    """
    T, C = x.shape
    nb, b = C // block_size, block_size
    # the search runs in float32 (the T x C products dominate); the product is kept in float64
    xb = x.float().reshape(T, nb, b).transpose(0, 1)  # (nb, T, b)
    eye = torch.eye(b, dtype=torch.float64, device=x.device)
    R0 = R0.to(device=x.device, dtype=torch.float64)
    acc = eye.expand(nb, b, b).clone()
    best = acc.clone()
    best_peak = xb.abs().amax(dim=(1, 2))  # (nb,)
    ar = torch.arange(b, device=x.device)
    for _ in range(steps):
        c = xb.abs().amax(dim=1).argmax(dim=-1)  # (nb,) channel of each block's peak
        perm = ar.expand(nb, b).clone()  # swap 0 <-> c per block
        perm[:, 0] = c
        perm.scatter_(1, c[:, None], 0)
        Rs = R0[perm[:, :, None], perm[:, None, :]]  # (nb, b, b) = P_c R0 P_c
        xb = xb @ Rs.float()
        acc = acc @ Rs
        peak = xb.abs().amax(dim=(1, 2))
        better = peak < best_peak  # no boolean indexing: keeps the loop free of host syncs
        best = torch.where(better[:, None, None], acc, best)
        best_peak = torch.where(better, peak, best_peak)
    return best


def zigzag_permutation(channel_max: torch.Tensor, block_size: int) -> torch.Tensor:
    """perm (C,) such that x[:, perm] deals channels, largest max first, to blocks in zigzag
    order 0..n-1, n-1..0, 0.. (DuQuant's `permutation_zigzag`), each block sorted descending."""
    C = channel_max.shape[0]
    nb = C // block_size
    order = torch.argsort(channel_max.cpu(), descending=True, stable=True)
    i = torch.arange(C)
    lap, pos = i // nb, i % nb
    block = torch.where(lap % 2 == 0, pos, nb - 1 - pos)  # boustrophedon over blocks
    members = [order[block == k] for k in range(nb)]  # each already sorted descending
    return torch.cat(members).to(channel_max.device)


def fit_transform(x: torch.Tensor, block_size: int, steps: int, permutation_times: int,
                  generator: torch.Generator, shared: bool = False) -> DuQuantTransform:
    """The DuQuant transform for sample activations x (T, C), float32 buffers on x's device
    (the authors' `online_duquant_cali`: rotation, zigzag, rotation). shared: one rotation for
    all blocks, searched on x viewed as (T * C / b, b), as the authors' `rotation` does."""
    rots, perms = [], []
    R0 = spread_matrix(block_size, generator)
    nb = x.shape[1] // block_size

    def search(y: torch.Tensor) -> torch.Tensor:
        if not shared:
            return greedy_block_rotation(y, block_size, steps, R0)
        R = greedy_block_rotation(y.reshape(-1, block_size), block_size, steps, R0)  # (1, b, b)
        return R.expand(nb, -1, -1).contiguous()

    y = x.to(torch.float64)
    for _ in range(permutation_times):
        R = search(y)
        y = apply_block_rotation(y, R)
        perm = zigzag_permutation(y.abs().amax(dim=0), block_size)
        y = y[:, perm]
        rots.append(R)
        perms.append(perm)
    rots.append(search(y))
    C = x.shape[1]
    P = torch.stack(perms) if perms else torch.empty(0, C, dtype=torch.long, device=x.device)
    return DuQuantTransform(torch.stack(rots).float(), P)


# ---- wiring -------------------------------------------------------------------------------------
def _block_size(cfg: DuQuantConfig, features: int) -> int:
    if cfg.block_size > features:
        log.info("DuQuant block_size %d > %d features: one block", cfg.block_size, features)
        return features
    if features % cfg.block_size:
        raise ValueError(f"DuQuant block_size={cfg.block_size} does not divide {features} features; "
                         "pick a divisor")
    return cfg.block_size


@torch.no_grad()
def duquant_block(model: nn.Module, block: nn.Module, inputs: BlockInputs, cfg: DuQuantConfig,
                  generator: torch.Generator) -> None:
    """Smooth, then fit and install the transform of every input group of one block."""
    spec = model.spec
    groups = [spec.group(name) for name in FIT_ORDER]
    paths = {g.name: spec.linear_name(g.linears[0]) for g in groups}
    absmax, sample = inputs.absmax(block, list(paths.values()), cfg.rot_tokens)
    xs = {g.name: sample[paths[g.name]] for g in groups}

    if cfg.alpha is not None:
        scales = smooth_block(model, block, absmax, SMOOTH_ORDER, cfg.alpha)
        for g in groups:  # the sampled inputs as the smoothed block now sees them: x / s
            xs[g.name] = xs[g.name] / scales[g.name]  # GQA o: already per o channel

    for g in groups:
        x = xs[g.name]
        t = fit_transform(x, _block_size(cfg, x.shape[1]), cfg.rotation_steps,
                          cfg.permutation_times, generator, cfg.shared_rotation)
        for k in g.linears:
            lin = get_module(block, spec.linear_name(k))
            lin.weight.data = t(lin.weight.data.to(torch.float64)).to(lin.weight.dtype)
            as_qlinear(block, spec.linear_name(k)).input_transform = DuQuantTransform(t.rots, t.perms)


def check_duquant(model: nn.Module, cfg: DuQuantConfig) -> None:
    require_float(model, "DuQuant")
    spec = model.spec
    for g in spec.input_groups:
        features = get_module(model.blocks[0], spec.linear_name(g.linears[0])).in_features
        if cfg.block_size <= features:  # larger: one block (logged by the apply)
            _block_size(cfg, features)


@register(DuQuantConfig, check=check_duquant)
def apply_duquant(model: nn.Module, cfg: DuQuantConfig, calib: Calibration | None) -> None:
    if calib is None:
        raise ValueError("DuQuant needs calibration data for its smoothing and rotations")
    generator = torch.Generator().manual_seed(cfg.seed)
    walk_blocks(model, calib, lambda _i, blk, inp: duquant_block(model, blk, inp, cfg, generator),
                desc="DuQuant")
    if cfg.act is not None:
        set_act_specs(model, cfg.act)
    if cfg.attn is not None:
        qk = QuantSpec(cfg.attn.bits, cfg.attn.sym, "token",
                       clip_ratio=cfg.act.clip_ratio if cfg.act is not None else 1.0)
        install_attn_quant(model, cfg.attn, qk_hadamard=True, qk_spec=qk)
