"""QuaRot: rotate the residual stream by a random Hadamard matrix so activations lose their
outliers, then quantize weights and activations (Ashkboos et al. 2024, "QuaRot: Outlier-Free
4-Bit Inference in Rotated LLMs"; upstream spcl/QuaRot `fake_quant/rotation_utils.py`,
`hadamard_utils.py`, `main.py`, as vendored for LLaDA/Dream in FelixMessi/QDLM `QuaRot/`).

With row vectors x (tokens, C) and an orthogonal Q (C x C), the model computes the same function
when the residual stream carries x Q instead of x:
- every RMSNorm weight g is folded into the linears it feeds (W <- W diag(g), g <- 1), so the
  norm is a pure x / rms(x), which commutes with Q (||x Q|| = ||x||);
- embedding rows E <- E Q; linears reading the stream (q, k, v, gate, up, LM head) W <- W Q;
  linears writing it (o, down) W <- Q^T W, b <- Q^T b. Input-side biases (Dream's q/k/v) are
  untouched: (W Q)(x Q)^T + b = W x^T + b.
Three more orthogonal changes of basis, each applied online to the activation and absorbed into
the weight on the other side, make the remaining linear inputs outlier-free too:
- FFN down projection: input h -> H_F h (online, H_F of order 12288 = 12 * 2^10 for LLaDA,
  18944 = 148 * 2^7 for Dream), W_down <- W_down H_F^T;
- V/O: v's output is rotated per head by H_D (folded into W_v, b_v), the o input is mixed across
  heads online by H_H (x) I, and W_o <- W_o (H_H (x) H_D)^T;
- Q/K (only when K is quantized): q and k after RoPE are rotated over the head dimension by H_D
  in the q_hook/k_hook slots; q . k is unchanged, and the rotated K is quantized.
Activations at every block linear input are then fake-quantized per token, symmetric; queries
stay 16-bit; the LM head input stays FP. Weights are quantized by the next config of the recipe
(RTN or GPTQ, symmetric per channel), which sees the rotated weights.

Calibration order: the authors' `main.py` rotates, runs GPTQ, and only then configures the
activation and K/V quantizers (until then their ActQuantWrappers hold 16-bit quantizers), so
GPTQ's Hessians come from the rotated model with full-precision activations. `apply_quarot`
does the same by default: it rotates at once and hands `quantize_` a deferred step that installs
the activation fake-quant after the last config of the recipe. `calibrate_with_act_quant=True`
installs it at once instead, so a later calibrated config sees quantized activations upstream
of every linear it calibrates (the inputs a weight quantizer records are still taken before that
linear's own activation quantizer: calib.BlockInputs).

Where we differ from upstream: QuaRot subtracts the mean of every embedding row during norm
fusion, which is exact only for LayerNorm models; for RMSNorm models (LLaMA, LLaDA, Dream) it
changes the function, so we do not do it, and full-precision outputs are unchanged to rounding
(tests/test_quant_rotation.py). The Hadamard base matrices are constructed (hadamard.py) instead
of shipped as tables. Activation and weight rounding follow dllmq's symmetric convention
(primitives.py: scale 2 absmax / (2^b - 1)) where QuaRot uses absmax / (2^(b-1) - 1); the weight
range search (`--w_clip`, gptq.MSEClip) then searches shrinks of that range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dllmq.models import get_module, set_module

from .api import DeferredStep, register
from .calib import Calibration
from .hadamard import factor_order, hadamard_transform, random_hadamard_matrix
from .primitives import QuantSpec, fake_quant
from .qlinear import QLinear, as_qlinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuaRotConfig:
    """seed: the random signs of the residual Hadamard Q. act: per-token activation spec for
    every block linear input (None: rotation only). kv: spec for K (after RoPE and the head-dim
    Hadamard) and V, per token over all KV heads (None: 16-bit K/V; the authors ran 8-bit).
    online_down / rotate_ov: the FFN-down online Hadamard and the head-wise V/O Hadamard.
    calibrate_with_act_quant: install the activation/KV fake-quant right after the rotation, so
    later calibrated configs (GPTQ) calibrate through it; False (the authors' order): install it
    after the recipe's last config, GPTQ calibrating on the rotated full-precision model."""

    seed: int = 0
    act: QuantSpec | None = field(default_factory=lambda: QuantSpec(8, sym=True, granularity="token"))
    kv: QuantSpec | None = None
    online_down: bool = True
    rotate_ov: bool = True
    calibrate_with_act_quant: bool = False
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for name, spec in (("act", self.act), ("kv", self.kv)):
            if spec is not None and spec.granularity != "token":
                raise ValueError(f"QuaRot {name} granularity {spec.granularity!r}: use 'token' "
                                 "(dynamic per token)")


# ---- math: folding and rotating weights (float64, in place) ---------------------------------
def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


@torch.no_grad()
def fuse_norm_into_linears(norm: nn.Module, linears: list[nn.Module]) -> None:
    """y = W (g * n(x)) = (W diag(g)) n(x): scale W's columns by the norm weight, set g <- 1."""
    g = _f64(norm.weight)
    for lin in linears:
        lin.weight.data = (_f64(lin.weight) * g).to(lin.weight.dtype)
    norm.weight.data.fill_(1.0)


@torch.no_grad()
def rotate_input_side(lin: nn.Module, Q: torch.Tensor, chunk: int = 16384) -> None:
    """W <- W Q (rows chunked so an embedding or LM head never exists whole in float64)."""
    W = lin.weight.data
    for s in range(0, W.shape[0], chunk):
        W[s:s + chunk] = (_f64(W[s:s + chunk]) @ Q).to(W.dtype)


@torch.no_grad()
def rotate_output_side(lin: nn.Module, Q: torch.Tensor) -> None:
    """W <- Q^T W, b <- Q^T b: the linear now writes x Q into the residual stream."""
    lin.weight.data = (Q.T @ _f64(lin.weight)).to(lin.weight.dtype)
    if lin.bias is not None:
        lin.bias.data = (Q.T @ _f64(lin.bias)).to(lin.bias.dtype)


def head_local_hadamard(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., H*D): H_D / sqrt(D) applied inside every head: (I_H (x) H_D) x."""
    shape = x.shape
    return hadamard_transform(x.reshape(*shape[:-1], num_heads, -1)).reshape(shape)


def head_mix_hadamard(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., H*D): H_H / sqrt(H) applied across heads at every in-head index: (H_H (x) I_D) x."""
    shape = x.shape
    y = x.reshape(*shape[:-1], num_heads, -1).transpose(-1, -2)  # (..., D, H)
    return hadamard_transform(y).transpose(-1, -2).reshape(shape)


@torch.no_grad()
def rotate_value_heads(v: nn.Module, head_dim: int) -> None:
    """W_v <- (I (x) H_D) W_v and b_v likewise: every value head comes out rotated by H_D."""
    W = _f64(v.weight)  # (Hkv*D, C)
    Hkv = W.shape[0] // head_dim
    Wh = W.reshape(Hkv, head_dim, -1).transpose(1, 2)  # (Hkv, C, D)
    v.weight.data = hadamard_transform(Wh).transpose(1, 2).reshape(W.shape).to(v.weight.dtype)
    if v.bias is not None:
        b = _f64(v.bias).reshape(Hkv, head_dim)
        v.bias.data = hadamard_transform(b).reshape(-1).to(v.bias.dtype)


@torch.no_grad()
def absorb_input_transform(lin: nn.Module, fn) -> None:
    """W <- W M^T for an orthogonal M given as a function on vectors (fn(w) = M w row-wise), so
    W (M x) = W x: the weight-side twin of an online transform M."""
    lin.weight.data = fn(_f64(lin.weight)).to(lin.weight.dtype)


# ---- online transforms (modules installed in QLinear.input_transform and the ActHook slots) --
def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class OnlineHadamard(nn.Module):
    """x (..., n) -> H_n x / sqrt(n), computed in at least float32 (QuaRot's fp32_had)."""

    def __init__(self, n: int):
        super().__init__()
        factor_order(n)  # fail now, with the one-line error, if n has no construction
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(_wide(x)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class HeadMixHadamard(nn.Module):
    """The o projection's online half of the V/O rotation: (H_H (x) I_D) x / sqrt(H)."""

    def __init__(self, num_heads: int):
        super().__init__()
        factor_order(num_heads)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_mix_hadamard(_wide(x), self.num_heads).to(x.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}"


class HeadActQuant(nn.Module):
    """Replaces an ActHook on q/k/v (B, Hx, L, D): optionally rotate the head dimension by
    H_D / sqrt(D), then optionally fake-quantize per token, over all heads of the token
    (QuaRot's `QKRotationWrapper` with k_groupsize -1, and v_proj's out_quantizer) or, with
    per_head, over each head's D values (DuQuant/SmoothQuant code's `QuantMatMul` inputs)."""

    def __init__(self, hadamard: bool, spec: QuantSpec | None, per_head: bool = False):
        super().__init__()
        self.hadamard, self.spec, self.per_head = hadamard, spec, per_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hadamard:
            x = hadamard_transform(_wide(x)).to(x.dtype)
        if self.spec is None:
            return x
        if self.per_head:
            return fake_quant(x, self.spec)  # groups: the last dim D of every (b, head, token)
        B, Hx, L, D = x.shape
        tok = x.transpose(1, 2).reshape(B, L, Hx * D)  # (B, L, Hx*D)
        return fake_quant(tok, self.spec).reshape(B, L, Hx, D).transpose(1, 2)

    def extra_repr(self) -> str:
        spec = self.spec.describe() if self.spec else "fp"
        return f"hadamard={self.hadamard}, spec={spec}, per_head={self.per_head}"


# ---- wiring -------------------------------------------------------------------------------------
def _plain(mod: nn.Module, what: str) -> nn.Module:
    if isinstance(mod, QLinear) and (mod.is_weight_quantized or mod.input_transform is not None):
        raise ValueError(f"{what} is already quantized or transformed; put QuaRot first in the recipe")
    return mod


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int, online_down: bool = True,
                 rotate_ov: bool = True) -> None:
    """Fold norms and rotate the residual stream (and optionally down / V-O) in place; the model
    computes the same function afterwards. Online transforms are installed as QLinear inputs."""
    spec, cfg = model.spec, model.config
    if cfg.tie_word_embeddings:
        raise ValueError("QuaRot needs untied embeddings (the LM head absorbs the final norm); "
                         "untie lm_head from the embedding first")
    C, H, D = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    # every Hadamard order checked before anything is modified (one-line HadamardError)
    for n, used in ((C, True), (cfg.intermediate_size, online_down), (H, rotate_ov),
                    (D, rotate_ov)):
        if used:
            factor_order(n)
    emb = get_module(model, spec.embed)
    head = _plain(get_module(model, spec.lm_head), "the LM head")
    dev = emb.weight.device
    Q = random_hadamard_matrix(C, torch.Generator().manual_seed(seed), torch.float64, dev)

    rotate_input_side(emb, Q)
    fuse_norm_into_linears(get_module(model, spec.final_norm), [head])
    rotate_input_side(head, Q)
    for block in model.blocks:
        lin = {k: _plain(get_module(block, spec.linear_name(k)), k)
               for k in ("q", "k", "v", "o", "gate", "up", "down")}
        fuse_norm_into_linears(get_module(block, spec.attn_norm), [lin["q"], lin["k"], lin["v"]])
        fuse_norm_into_linears(get_module(block, spec.mlp_norm), [lin["gate"], lin["up"]])
        for k in ("q", "k", "v", "gate", "up"):
            rotate_input_side(lin[k], Q)
        for k in ("o", "down"):
            rotate_output_side(lin[k], Q)
        if online_down:
            absorb_input_transform(lin["down"], hadamard_transform)
            as_qlinear(block, spec.down).input_transform = OnlineHadamard(cfg.intermediate_size)
        if rotate_ov:
            rotate_value_heads(lin["v"], D)
            absorb_input_transform(
                lin["o"], lambda w: head_mix_hadamard(head_local_hadamard(w, H), H))
            as_qlinear(block, spec.o).input_transform = HeadMixHadamard(H)
    log.info("QuaRot: rotated %d blocks (hidden %d, seed %d, online down %s, V/O %s)",
             len(model.blocks), C, seed, online_down, rotate_ov)


def install_act_quant(model: nn.Module, act: QuantSpec | None, kv: QuantSpec | None) -> None:
    """Per-token activation fake-quant on every block linear input; K (rotated over the head
    dim, with q rotated alike so q . k is kept) and V fake-quantized when kv is set."""
    spec = model.spec
    for block in model.blocks:
        if act is not None:
            for k in ("q", "k", "v", "o", "gate", "up", "down"):
                as_qlinear(block, spec.linear_name(k)).act_spec = act
        if kv is not None:
            set_module(block, spec.q_hook, HeadActQuant(hadamard=True, spec=None))
            set_module(block, spec.k_hook, HeadActQuant(hadamard=True, spec=kv))
            set_module(block, spec.v_hook, HeadActQuant(hadamard=False, spec=kv))


@register(QuaRotConfig)
def apply_quarot(model: nn.Module, cfg: QuaRotConfig, calib: Calibration | None
                 ) -> DeferredStep | None:
    """Rotate now; the activation fake-quant now (calibrate_with_act_quant) or as the deferred
    step `quantize_` runs after the recipe's last config (the authors' order)."""
    rotate_model(model, cfg.seed, cfg.online_down, cfg.rotate_ov)

    def install_quarot_act_quant() -> None:
        install_act_quant(model, cfg.act, cfg.kv)

    if cfg.calibrate_with_act_quant:
        install_quarot_act_quant()
        return None
    return install_quarot_act_quant


def recipe(wbits: int, abits: int, variant: str) -> tuple:
    """Appendix A: Hadamard rotation, per-channel weights, symmetric per-token activations,
    queries 16-bit; K/V at the activation bit width (the authors' scripts/llada_quarot.sh:
    `--a_bits 8 --k_bits 8 --v_bits 8 --w_bits 8 --w_clip --rotate`: weights by GPTQ, symmetric,
    per channel, the range of every row found by an MSE search, `gptq.MSEClip()`).

    The two variants agree. The paper's text says only that it follows QuaRot's "original
    configuration" (16-bit queries, symmetric activations), and the command QuaRot's own README
    (`QuaRot/fake_quant/README.md`) gives for reproducing the QuaRot paper passes `--w_clip`, so
    the paper variant clips too. Both calibrate GPTQ on full-precision activations, as the
    authors' main.py does (QuaRotConfig.calibrate_with_act_quant=False).
    """
    from .gptq import GPTQConfig, MSEClip

    act = QuantSpec(abits, sym=True, granularity="token")
    weight = QuantSpec(wbits, sym=True, granularity="channel")
    return (QuaRotConfig(seed=0, act=act, kv=act),
            GPTQConfig(weight=weight, blocksize=128, damp=0.01, act_order=False,
                       true_sequential=True, mse_clip=MSEClip(grid=100, maxshrink=0.8, norm=2.4)))
