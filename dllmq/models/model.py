"""LLaDA and Dream as plain nn.Modules with the official weight names.

The two architectures are the same transformer (pre-norm, RoPE, SwiGLU, bidirectional
attention) under different names: LLaDA keeps everything flat inside a block
(`model.transformer.blocks.N.q_proj`), Dream follows Qwen2 (`model.layers.N.self_attn.q_proj`),
adds q/k/v biases and grouped-query attention, and predicts token i+1 at position i.
One `Block` computes both; `LLaDABlock`/`DreamBlock` only place its parameters under the
official names, so `state_dict()` keys equal the official checkpoint's.

Where we differ from the official code: the official LLaDA ignores `attention_mask` (its SDPA
call passes `attn_mask=None`, modeling_llada.py `LLaDABlock.attention`) and always uses positions
0..L-1, so in a padded batch its real tokens attend to pads. Here pad keys are masked and
`position_ids` are honoured for both architectures, so a padded batch gives each sequence's own
logits. On unpadded input (all the official pipelines use) the logits are the official ones;
tests/fixtures/models/README.md records the check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .arch import DREAM_SPEC, LLADA_SPEC, ArchSpec, get_module, has_module
from .config import DLLMConfig
from .layers import ActHook, RMSNorm, apply_rope, attention, key_padding_mask, rope_cos_sin


def _attend(
    blk: nn.Module,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    bias: torch.Tensor | None,
    cfg: DLLMConfig,
) -> torch.Tensor:
    """Self-attention on the normed input x (B, L, C); `blk` holds q/k/v/o + hooks."""
    B, L, _ = x.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    fused = getattr(blk, "qkv_proj", None)  # dllmq.kernels.fuse_projections' one GEMM
    if fused is None:
        q, k, v = blk.q_proj(x), blk.k_proj(x), blk.v_proj(x)
    else:
        q, k, v = fused(x).split((H * D, Hkv * D, Hkv * D), dim=-1)
    q = q.view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
    k = k.view(B, L, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D)
    v = v.view(B, L, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D)
    cos, sin = rope
    q = blk.q_hook(apply_rope(q, cos, sin, cfg.rope_full_precision))
    k = blk.k_hook(apply_rope(k, cos, sin, cfg.rope_full_precision))
    v = blk.v_hook(v)
    out = attention(q, k, v, bias, causal=cfg.causal)  # (B, H, L, D)
    return out.transpose(1, 2).reshape(B, L, H * D)  # (B, L, C)


def _swiglu(mlp: nn.Module, x: torch.Tensor, gate: str) -> torch.Tensor:
    """silu(gate(x)) * up(x), through `gate_up_proj` (one GEMM) where
    dllmq.kernels.fuse_projections installed it."""
    fused = getattr(mlp, "gate_up_proj", None)
    if fused is None:
        return F.silu(getattr(mlp, gate)(x)) * mlp.up_proj(x)
    g, u = fused(x).chunk(2, dim=-1)
    return F.silu(g) * u


def _qkv(cfg: DLLMConfig) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    C, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    return (nn.Linear(C, C, bias=cfg.qkv_bias), nn.Linear(C, kv, bias=cfg.qkv_bias),
            nn.Linear(C, kv, bias=cfg.qkv_bias))


class LLaDABlock(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        C, F_ = cfg.hidden_size, cfg.intermediate_size
        self.cfg = cfg
        self.attn_norm = RMSNorm(C, cfg.rms_norm_eps)
        self.q_proj, self.k_proj, self.v_proj = _qkv(cfg)
        self.attn_out = nn.Linear(C, C, bias=False)
        self.ff_norm = RMSNorm(C, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(C, F_, bias=False)  # gate
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.ff_out = nn.Linear(F_, C, bias=False)  # down
        self.q_hook, self.k_hook, self.v_hook = ActHook(), ActHook(), ActHook()

    def forward(self, x, rope, bias):
        x = x + self.attn_out(_attend(self, self.attn_norm(x), rope, bias, self.cfg))
        h = self.ff_norm(x)
        return x + self.ff_out(_swiglu(self, h, "ff_proj"))


class DreamAttention(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj, self.k_proj, self.v_proj = _qkv(cfg)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.q_hook, self.k_hook, self.v_hook = ActHook(), ActHook(), ActHook()

    def forward(self, x, rope, bias):
        return self.o_proj(_attend(self, x, rope, bias, self.cfg))


class DreamMLP(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        C, F_ = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x):
        return self.down_proj(_swiglu(self, x, "gate_proj"))


class DreamBlock(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DreamMLP(cfg)

    def forward(self, x, rope, bias):
        x = x + self.self_attn(self.input_layernorm(x), rope, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class DLLM(nn.Module):
    """Common interface: `forward` returns the official logits; `denoise_logits` returns
    logits aligned so that position i predicts token i (Dream's one-position shift undone)."""

    spec: ArchSpec
    config: DLLMConfig

    @property
    def blocks(self) -> nn.ModuleList:
        return get_module(self, self.spec.blocks)

    @property
    def head_linear(self) -> nn.Module | None:
        """The LM head module, or None when the head is the embedding matrix itself (a tied
        LLaDA has no `ff_out` module; a tied Dream keeps `lm_head`, sharing the weight)."""
        if self.config.tie_word_embeddings and not has_module(self, self.spec.lm_head):
            return None
        return get_module(self, self.spec.lm_head)

    @property
    def tied_keys(self) -> tuple[str, ...]:
        """state_dict keys a tied checkpoint does not store (the head's copy of the embedding)."""
        return (self.spec.lm_head + ".weight",) if self.config.tie_word_embeddings else ()

    def tie_weights(self) -> None:
        """Point a tied head at the embedding again (after a load or a module swap)."""
        head = self.head_linear if self.config.tie_word_embeddings else None
        if head is not None:
            head.weight = get_module(self, self.spec.embed).weight

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """(embedding, blocks, final norm, LM head as a function of hidden states)."""
        raise NotImplementedError

    def _body(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """Hidden states (B, L, C) after the last block, before the final norm."""
        B, L = input_ids.shape
        if self.config.max_position < L:
            raise ValueError(
                f"sequence of {L} tokens exceeds the model's context of {self.config.max_position}; "
                "shorten the prompt or the generation length"
            )
        wte, blocks, _, _ = self.parts()
        x = wte(input_ids)
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device)
        rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        bias = key_padding_mask(attention_mask, x.dtype)
        for blk in blocks:
            x = blk(x, rope, bias)
        return x

    def forward(self, input_ids, attention_mask=None, position_ids=None, window=None) -> torch.Tensor:
        """The official logits (LLaDA: position i predicts token i; Dream: token i + 1);
        `window` (dllmq): the final norm and LM head only at those positions."""
        x = self._body(input_ids, attention_mask, position_ids)
        _, _, norm, head = self.parts()
        if window is not None:
            x = x[:, window]
        return head(norm(x))

    # ---- the forward API the likelihood needs (logits at chosen positions, shift applied) ----
    def hidden_states(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Final-norm hidden states (B, L, C): the forward without its LM head."""
        _, _, norm, _ = self.parts()
        return norm(self._body(input_ids, attention_mask, position_ids))

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on final-norm hidden states (..., C) -> logits (..., V)."""
        return self.parts()[3](h)

    def source_positions(self, cols: torch.Tensor) -> torch.Tensor:
        """The hidden-state positions whose logits predict the tokens at `cols`: cols minus the
        ArchSpec's logit shift (Dream: 1), position 0 reading itself (as denoise_logits)."""
        shift = self.spec.logit_shift
        return cols if shift == 0 else (cols - shift).clamp(min=0)

    def logits_at(self, input_ids, attention_mask, rows: torch.Tensor, cols: torch.Tensor,
                  position_ids=None) -> torch.Tensor:
        """`denoise_logits(...)[rows, cols]` (N, V) with the LM head applied to those N
        positions only (the likelihood scores a tenth of the positions)."""
        h = self.hidden_states(input_ids, attention_mask, position_ids)
        return self.head_logits(h[rows, self.source_positions(cols)])

    def denoise_logits(self, input_ids, attention_mask=None, position_ids=None,
                       window: slice | None = None) -> torch.Tensor:
        """Logits aligned so that position i predicts token i (Dream's shift undone).
        window: only positions [lo, hi) (a step-1 slice) -> (B, hi - lo, V), computing the LM
        head there only (a sampler needs the current block's logits, not the prompt's)."""
        dream = self.spec.logit_shift == 1  # the one shift either official model has
        if window is None:
            logits = self(input_ids, attention_mask=attention_mask, position_ids=position_ids)
            return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if dream else logits
        lo, hi, step = window.indices(input_ids.shape[1])
        if step != 1 or hi <= lo:
            raise ValueError(f"window {window} must be a non-empty slice with step 1")
        if not dream:
            return self(input_ids, attention_mask, position_ids, window=slice(lo, hi))
        raw_lo, raw_hi = max(lo - 1, 0), max(hi - 1, 1)  # aligned i reads raw i - 1 (0 reads 0)
        raw = self(input_ids, attention_mask, position_ids, window=slice(raw_lo, raw_hi))
        idx = torch.tensor([max(i - 1, 0) - raw_lo for i in range(lo, hi)], device=raw.device)
        return raw[:, idx]


class LLaDATransformer(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.table_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.num_layers))
        self.ln_f = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if not cfg.tie_word_embeddings:
            self.ff_out = nn.Linear(cfg.hidden_size, cfg.table_size, bias=False)


class _LLaDAInner(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.transformer = LLaDATransformer(cfg)


class LLaDAModel(DLLM):
    """LLaDA-8B (Base/Instruct) layout: `model.transformer.{wte, blocks.N.*, ln_f, ff_out}`."""

    spec = LLADA_SPEC

    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.config = cfg
        self.model = _LLaDAInner(cfg)

    def parts(self):
        t = self.model.transformer
        head = t.ff_out if not self.config.tie_word_embeddings else (
            lambda h: F.linear(h, t.wte.weight))
        return t.wte, t.blocks, t.ln_f, head


class _DreamInner(nn.Module):
    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(DLLM):
    """Dream-7B (Qwen2.5 layout): `model.{embed_tokens, layers.N.*, norm}` + `lm_head`."""

    spec = DREAM_SPEC

    def __init__(self, cfg: DLLMConfig):
        super().__init__()
        self.config = cfg
        self.model = _DreamInner(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def parts(self):
        m = self.model
        return m.embed_tokens, m.layers, m.norm, self.lm_head


MODEL_CLASSES: dict[str, type[DLLM]] = {"llada": LLaDAModel, "Dream": DreamModel}


def build_model(cfg: DLLMConfig) -> DLLM:
    """An initialised (random, std 0.02) model of the config's architecture."""
    model = MODEL_CLASSES[cfg.model_type](cfg)
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, std=0.02)
    model.tie_weights()
    return model
