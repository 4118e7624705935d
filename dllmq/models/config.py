"""One config for both architectures, read from and written to the official config.json.

LLaDA's config.json (model_type "llada") and Dream's (model_type "Dream", Qwen2 field names)
name the same quantities differently; `DLLMConfig` holds them once. The original dict is kept
so that a saved model writes back every field the official code expects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODEL_TYPES = ("llada", "Dream")

# Official config.json fields whose other values select code that dllmq does not implement
# (checked when present; the released checkpoints all have these values).
SUPPORTED_VALUES: dict[str, dict[str, Any]] = {
    "llada": {"block_type": "llama", "rope": True, "alibi": False, "layer_norm_type": "rms",
              "layer_norm_with_affine": True, "activation_type": "silu", "include_bias": False,
              "scale_logits": False, "attention_layer_norm": False, "input_emb_norm": False,
              "block_group_size": 1},
    "Dream": {"hidden_act": "silu", "rope_scaling": None, "use_sliding_window": False},
}


class ConfigError(ValueError):
    """A config.json that dllmq cannot build a model from."""


@dataclass
class DLLMConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    tie_word_embeddings: bool
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None = None
    eot_token_id: int | None = None
    embedding_size: int | None = None  # LLaDA pads its embedding table beyond vocab_size
    causal: bool = False  # True only for the autoregressive `tiny-ar` starting point
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type {self.model_type!r}; dllmq supports {', '.join(MODEL_TYPES)}"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rope_full_precision(self) -> bool:
        """LLaDA rotates q/k in float32 (its config's `rope_full_precision`); Dream, like Qwen2,
        in the model dtype."""
        return self.model_type == "llada" and bool(self.extra.get("rope_full_precision", True))

    @property
    def table_size(self) -> int:
        """Rows of the embedding / LM-head matrices."""
        return self.embedding_size or self.vocab_size

    # ---- official config.json <-> DLLMConfig -------------------------------------------
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> DLLMConfig:
        mt = d.get("model_type")
        for key, value in SUPPORTED_VALUES.get(mt, {}).items():
            if key in d and d[key] != value:
                raise ConfigError(f"config.json sets {key}={d[key]!r}; dllmq implements {mt} only "
                                  f"with {key}={value!r} (as in the released checkpoints)")
        if mt == "llada":
            return cls(
                model_type="llada",
                vocab_size=d["vocab_size"],
                embedding_size=d.get("embedding_size"),
                hidden_size=d["d_model"],
                intermediate_size=d.get("mlp_hidden_size") or d["mlp_ratio"] * d["d_model"],
                num_layers=d["n_layers"],
                num_heads=d["n_heads"],
                num_kv_heads=d.get("n_kv_heads") or d["n_heads"],
                max_position=d["max_sequence_length"],
                rope_theta=d.get("rope_theta", 10000.0),
                rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                qkv_bias=bool(d.get("include_qkv_bias") or d.get("include_bias")),
                tie_word_embeddings=bool(d.get("weight_tying", False)),
                mask_token_id=d.get("mask_token_id", 126336),
                eos_token_id=d.get("eos_token_id", 126081),
                pad_token_id=d.get("pad_token_id", 126081),
                bos_token_id=d.get("bos_token_id"),
                eot_token_id=d.get("eot_token_id"),
                causal=bool(d.get("dllmq_causal", False)),
                extra=dict(d),
            )
        if mt == "Dream":
            return cls(
                model_type="Dream",
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_layers=d["num_hidden_layers"],
                num_heads=d["num_attention_heads"],
                num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                max_position=d.get("max_position_embeddings", 32768),
                rope_theta=d.get("rope_theta", 10000.0),
                rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                qkv_bias=True,
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                mask_token_id=d.get("mask_token_id", 151666),
                eos_token_id=d.get("eos_token_id", 151643),
                pad_token_id=d.get("pad_token_id", 151643),
                bos_token_id=d.get("bos_token_id"),
                eot_token_id=d.get("eot_token_id"),
                causal=bool(d.get("dllmq_causal", False)),
                extra=dict(d),
            )
        raise ConfigError(
            f"unknown model_type {mt!r} in config.json; dllmq supports {', '.join(MODEL_TYPES)}"
        )

    def to_hf(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.pop("dllmq_causal", None)  # written below only when causal, so a flip is saved
        common = {"vocab_size": self.vocab_size, "rope_theta": self.rope_theta,
                  "rms_norm_eps": self.rms_norm_eps, "mask_token_id": self.mask_token_id,
                  "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}
        if self.bos_token_id is not None:
            common["bos_token_id"] = self.bos_token_id
        if self.eot_token_id is not None:
            common["eot_token_id"] = self.eot_token_id
        if self.causal:
            common["dllmq_causal"] = True
        if self.model_type == "llada":
            d.update(
                model_type="llada", architectures=["LLaDAModelLM"], d_model=self.hidden_size,
                mlp_hidden_size=self.intermediate_size, mlp_ratio=d.get("mlp_ratio", 4),
                n_layers=self.num_layers, n_heads=self.num_heads, n_kv_heads=self.num_kv_heads,
                max_sequence_length=self.max_position, include_qkv_bias=self.qkv_bias,
                include_bias=False, weight_tying=self.tie_word_embeddings,
                embedding_size=self.table_size, rope=True,
                rope_full_precision=self.rope_full_precision,
                block_type="llama", activation_type="silu", layer_norm_type="rms",
                layer_norm_with_affine=True, alibi=False, scale_logits=False,
                attention_layer_norm=False, input_emb_norm=False, flash_attention=False,
                attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
                block_group_size=1, use_cache=False, **common,
            )
        else:
            d.update(
                model_type="Dream", architectures=["DreamModel"], hidden_size=self.hidden_size,
                intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                max_position_embeddings=self.max_position, hidden_act="silu",
                tie_word_embeddings=self.tie_word_embeddings, use_cache=False,
                attention_dropout=0.0, use_sliding_window=False, **common,
            )
        return d

    def replace(self, **changes: Any) -> DLLMConfig:
        return dataclasses.replace(self, **changes)


def tiny_config(model_type: str, **overrides: Any) -> DLLMConfig:
    """A few-thousand-parameter config of either architecture, for tests (no download)."""
    base = dict(
        model_type=model_type, vocab_size=64, hidden_size=32, intermediate_size=96,
        num_layers=2, num_heads=4, num_kv_heads=4 if model_type == "llada" else 2,
        max_position=128, rope_theta=10000.0, rms_norm_eps=1e-5 if model_type == "llada" else 1e-6,
        qkv_bias=model_type == "Dream", tie_word_embeddings=False, mask_token_id=63,
        eos_token_id=62, pad_token_id=62, bos_token_id=61,
    )
    base.update(overrides)
    return DLLMConfig(**base)
