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

from dllmq.models import LINEAR_KINDS, get_module, set_module

from .calib import Calibration
from .hadamard import factor_order, hadamard_transform, random_hadamard_matrix
from .primitives import QuantSpec
from .qlinear import as_qlinear, set_act_specs
from .registry import DeferredStep, register, require_float
from .transforms import (  # noqa: F401 (re-exported: their home before transforms.py)
    HeadActQuant,
    HeadMixHadamard,
    OnlineHadamard,
    head_mix_hadamard,
)

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
    needs_float_linears: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name, qspec in (("act", self.act), ("kv", self.kv)):
            if qspec is not None and qspec.granularity != "token":
                raise ValueError(f"QuaRot {name} granularity {qspec.granularity!r}: use 'token' "
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


# ---- wiring -------------------------------------------------------------------------------------
def check_rotatable(model: nn.Module, online_down: bool = True, rotate_ov: bool = True) -> None:
    """Everything rotate_model needs, checked before it changes anything (one line each)."""
    mcfg = model.config
    if mcfg.tie_word_embeddings:
        raise ValueError("QuaRot needs untied embeddings (the LM head absorbs the final norm); "
                         "untie lm_head from the embedding first")
    for n, used in ((mcfg.hidden_size, True), (mcfg.intermediate_size, online_down),
                    (mcfg.num_heads, rotate_ov), (mcfg.head_dim, rotate_ov)):
        if used:
            factor_order(n)  # one-line HadamardError for an order with no construction
    require_float(model, "QuaRot", head=True)


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int, online_down: bool = True,
                 rotate_ov: bool = True) -> None:
    """Fold norms and rotate the residual stream (and optionally down / V-O) in place; the model
    computes the same function afterwards. Online transforms are installed as QLinear inputs.

    The ArchSpec's input groups say which linears read the residual stream (those of the
    norm-fed groups: q, k, v, gate, up) and which write it (those fed by a linear: o, down)."""
    check_rotatable(model, online_down, rotate_ov)
    spec, mcfg = model.spec, model.config
    C, H, D = mcfg.hidden_size, mcfg.num_heads, mcfg.head_dim
    norm_groups = [g for g in spec.input_groups if g.source_is_norm]
    readers = [k for g in norm_groups for k in g.linears]
    writers = [k for g in spec.input_groups if not g.source_is_norm for k in g.linears]
    emb = get_module(model, spec.embed)
    head = model.head_linear
    dev = emb.weight.device
    Q = random_hadamard_matrix(C, torch.Generator().manual_seed(seed), torch.float64, dev)

    rotate_input_side(emb, Q)
    fuse_norm_into_linears(get_module(model, spec.final_norm), [head])
    rotate_input_side(head, Q)
    for block in model.blocks:
        lin = {k: get_module(block, spec.linear_name(k)) for k in LINEAR_KINDS}
        for g in norm_groups:
            fuse_norm_into_linears(get_module(block, spec.source_path(g)), [lin[k] for k in g.linears])
        for k in readers:
            rotate_input_side(lin[k], Q)
        for k in writers:
            rotate_output_side(lin[k], Q)
        if online_down:
            absorb_input_transform(lin["down"], hadamard_transform)
            as_qlinear(block, spec.down).input_transform = OnlineHadamard(mcfg.intermediate_size)
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
    if act is not None:
        set_act_specs(model, act)
    if kv is not None:
        for block in model.blocks:
            set_module(block, spec.q_hook, HeadActQuant(hadamard=True, spec=None))
            set_module(block, spec.k_hook, HeadActQuant(hadamard=True, spec=kv))
            set_module(block, spec.v_hook, HeadActQuant(hadamard=False, spec=kv))


def check_quarot(model: nn.Module, cfg: QuaRotConfig) -> None:
    check_rotatable(model, cfg.online_down, cfg.rotate_ov)


@register(QuaRotConfig, check=check_quarot)
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
