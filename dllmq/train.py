"""Train the shipped tiny models: the recipe behind every file in `dllmq/assets/models/`.

    python -m dllmq.train --preset all --out dllmq/assets/models --device cuda

trains, in order, `tiny-ar` -> `tiny-dream-base` and `tiny-llada-base` -> `tiny-llada-instruct`,
each into `OUT/<name>/` (bf16 safetensors + config.json + tokenizer + train_log.json +
activation_stats.json + MODEL_CARD.md). A rerun continues from the last checkpoint; a finished
model is skipped unless `--force`.

Objectives (pure functions at the top of this file):
- `mdm_loss`: masked-diffusion pretraining as LLaDA's GUIDELINES.md (ML-GSAI/LLaDA):
  per sequence t ~ U(0, 1], p = (1 - eps) t + eps, each token masked with probability p,
  cross-entropy on masked tokens weighted 1/p, summed and divided by B * L. LLaDA truncates 1 %
  of batches to a random length (`random_length_prob`).
- `sft_loss`: LLaDA's SFT (same file): the prompt is never noised, the response is padded with
  EOS to the row length and the padding is part of the response (so the model learns to stop),
  each masked token weighted 1 / (p * response length), summed and divided by B.
- `ar_loss`: next-token cross-entropy, the autoregressive starting point of Dream's recipe.
- Dream (Ye et al., "Dream 7B", 2025) adapts an AR model to masked diffusion keeping its shifted
  logits (position i predicts token i + 1); `DLLM.denoise_logits` undoes the shift, so the same
  `mdm_loss` trains it. We do not implement Dream's context-adaptive noise rescheduling (CART):
  the plain 1/t weight is used.

Where we differ from LLaDA: 5 % of pretraining batches (not 1 %) are cut to a random length,
since evaluation sequences are short while training rows are full; position 0 always holds BOS
and is never masked (Dream's shifted logits cannot predict position 0; LLaDA's samplers never
mask it either); pretraining rows are whole documents packed greedily and filled with EOS
instead of a cut stream, so every row starts at a document boundary as evaluation prompts do,
and the model learns to fill the positions after an answer with EOS, as generation needs.

Determinism: data order and masking come from `torch.Generator`s seeded per step from the
preset's seed, so a run is a function of (preset, data, seed) and a resumed run equals an
uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models import (
    DLLM,
    LINEAR_KINDS,
    DLLMConfig,
    arch_spec,
    build_model,
    get_module,
    load,
    save_pretrained,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "models"
OBJECTIVES = ("mdm", "sft", "ar")
ARCHS = ("llada", "Dream")


# ---- the recipe as data --------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """One shipped model: architecture, objective, data, optimisation. Frozen; derive variants
    with `dataclasses.replace` (the CLI's --steps/--batch-size overrides do)."""

    name: str
    arch: str  # "llada" | "Dream"
    objective: str  # "mdm" | "sft" | "ar"
    init_from: str | None = None  # a preset trained before this one, loaded from OUT/<init_from>
    causal: bool = False
    # shape (ignored when init_from is set: the initial model fixes it)
    hidden_size: int = 256
    num_layers: int = 5
    num_heads: int = 8
    num_kv_heads: int = 8
    intermediate_size: int = 640
    max_position: int = 1024
    rope_theta: float = 10000.0
    # data
    seq_len: int = 128
    batch_size: int = 256
    # optimisation
    steps: int = 3000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    mask_eps: float = 1e-3
    random_length_prob: float = 0.01
    # Conditional rows (masked-diffusion presets): the train splits' question/answer pairs in the
    # evaluation format, question never masked, appended to the packed pretraining rows. LLaDA's
    # own pretraining masks whole sequences; a 5M-parameter model trained that way learns the
    # answer format but not the arithmetic (7 % on math, H100 run of 2026-11-24), so the base
    # models see these rows too. The instruct model's SFT differs in its chat template.
    conditional_rows: bool = False
    # Copies of the conditional rows: with one copy (46 % of rows, 6000 steps) the base models
    # answered 20 % of the math test; the instruct model, after SFT on the same pairs, 52 %.
    conditional_repeats: int = 1
    # Repeats of the world-fact documents in the packed rows (masked-diffusion presets): facts are
    # ~1.5 % of corpus tokens, and with one copy the models answered the QA test at chance.
    fact_repeats: int = 1
    seed: int = 0
    # bookkeeping
    log_every: int = 50
    ckpt_every: int = 500
    max_weight_bytes: int = 12_500_000  # bf16 weights; 60 MB cap for all shipped models
    description: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"Preset {self.name}: arch {self.arch!r} is not one of {ARCHS}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Preset {self.name}: objective {self.objective!r} is not one of "
                             f"{OBJECTIVES}")
        if self.causal != (self.objective == "ar"):
            raise ValueError(f"Preset {self.name}: causal attention goes with the 'ar' objective "
                             "and only with it; set causal=True exactly when objective='ar'")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"Preset {self.name}: hidden_size must divide by num_heads and "
                             "num_heads by num_kv_heads")
        for field in ("steps", "batch_size", "seq_len", "log_every", "ckpt_every",
                      "conditional_repeats", "fact_repeats"):
            if getattr(self, field) < 1:
                raise ValueError(f"Preset {self.name}: {field} must be >= 1")
        if self.ckpt_every % self.log_every:
            raise ValueError(f"Preset {self.name}: ckpt_every must be a multiple of log_every so "
                             "that a resumed run logs the same loss intervals")
        if self.seq_len > self.max_position:
            raise ValueError(f"Preset {self.name}: seq_len {self.seq_len} exceeds max_position "
                             f"{self.max_position}; raise max_position")
        if not 0 < self.mask_eps < 1:
            raise ValueError(f"Preset {self.name}: mask_eps must lie in (0, 1)")
        if not 0 <= self.random_length_prob <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"Preset {self.name}: random_length_prob and min_lr_ratio are "
                             "fractions in [0, 1]")

    def model_config(self, special: SpecialIds, vocab_size: int) -> DLLMConfig:
        """The DLLMConfig of a freshly initialised model of this preset."""
        return DLLMConfig(
            model_type=self.arch, vocab_size=vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            max_position=self.max_position, rope_theta=self.rope_theta,
            rms_norm_eps=1e-5 if self.arch == "llada" else 1e-6,
            qkv_bias=self.arch == "Dream", tie_word_embeddings=False,
            mask_token_id=special.mask, eos_token_id=special.eos, pad_token_id=special.eos,
            bos_token_id=special.bos, eot_token_id=special.eot, causal=self.causal,
        )


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset(name="tiny-ar", arch="Dream", objective="ar", causal=True, num_kv_heads=4,
               fact_repeats=12, steps=3000, random_length_prob=0.0,
               description="Dream architecture with causal attention, trained autoregressively "
                           "(next-token loss): the starting point of tiny-dream-base."),
        Preset(name="tiny-dream-base", arch="Dream", objective="mdm", init_from="tiny-ar",
               conditional_rows=True, conditional_repeats=2, fact_repeats=12,
               num_kv_heads=4, steps=7000, lr=1e-3, warmup_steps=200, random_length_prob=0.05,
               description="tiny-ar adapted to masked diffusion with Dream's shifted logits "
                           "(position i predicts token i+1), attention made bidirectional; plus conditional "
                           "rows (train-split questions kept visible, answers masked)."),
        Preset(name="tiny-llada-base", arch="llada", objective="mdm", conditional_rows=True,
               conditional_repeats=2, fact_repeats=12, steps=10000,
               random_length_prob=0.05,
               description="LLaDA architecture, masked-diffusion pretraining from scratch "
                           "(random mask ratio per sequence, 1/t-weighted loss); plus conditional rows "
                           "(train-split questions kept visible, answers masked)."),
        Preset(name="tiny-llada-instruct", arch="llada", objective="sft",
               init_from="tiny-llada-base", seq_len=160, batch_size=256, steps=1500, lr=5e-4,
               warmup_steps=50, random_length_prob=0.0,
               description="tiny-llada-base after supervised fine-tuning on prompt/response "
                           "pairs in the chat template (only response tokens masked)."),
    )
}
ALL_ORDER = ("tiny-ar", "tiny-dream-base", "tiny-llada-base", "tiny-llada-instruct")


@dataclass(frozen=True)
class SpecialIds:
    mask: int
    bos: int
    eos: int
    eot: int | None = None


# ---- objectives (pure tensor functions) ----------------------------------------------------
def forward_process(
    ids: torch.Tensor,
    mask_id: int,
    eps: float,
    generator: torch.Generator,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA's forward process: t ~ U[0, 1) per row, p = (1 - eps) t + eps, each token masked
    with probability p. `keep` (B, L) bool marks positions never masked (BOS, the prompt).
    Returns (noisy ids (B, L), masked (B, L) bool, p (B, 1))."""
    B, L = ids.shape
    t = torch.rand(B, generator=generator, device=ids.device)
    p = ((1 - eps) * t + eps)[:, None]  # (B, 1)
    masked = torch.rand(B, L, generator=generator, device=ids.device) < p
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked, p


def _token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position, (B, L, V) x (B, L) -> (B, L), in float32. Dense (no
    boolean indexing) so that no step waits on a device-to-host copy."""
    B, L, V = logits.shape
    return F.cross_entropy(logits.reshape(B * L, V).float(), ids.reshape(B * L),
                           reduction="none").view(B, L)


def mdm_loss(logits: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor,
             p: torch.Tensor) -> torch.Tensor:
    """LLaDA pretraining loss: sum over masked tokens of CE / p, divided by B * L.
    `logits` must be aligned so position i predicts token i (`denoise_logits`)."""
    weighted = _token_ce(logits, ids) * masked / p  # (B, L)
    return weighted.sum() / ids.numel()


def sft_loss(logits: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor, p: torch.Tensor,
             prompt_lengths: torch.Tensor) -> torch.Tensor:
    """LLaDA SFT loss: sum over masked tokens of CE / (p * response length), divided by B.
    The response length counts the EOS padding, as LLaDA's does."""
    B, L = ids.shape
    answer_len = (L - prompt_lengths).clamp(min=1).to(torch.float32)[:, None]  # (B, 1)
    weighted = _token_ce(logits, ids) * masked / (p * answer_len)  # (B, L)
    return weighted.sum() / B


def ar_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; `logits` in the official layout (position i predicts
    token i + 1)."""
    return _token_ce(logits[:, :-1], ids[:, 1:]).mean()


def lr_at(step: int, preset: Preset) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < preset.warmup_steps:
        return preset.lr * (step + 1) / preset.warmup_steps
    span = max(1, preset.steps - preset.warmup_steps)
    progress = min(1.0, (step - preset.warmup_steps) / span)
    floor = preset.lr * preset.min_lr_ratio
    return floor + 0.5 * (preset.lr - floor) * (1 + math.cos(math.pi * progress))


# ---- data: token rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """What training steps draw from: fixed-length token rows, plus the prompt length of each
    row for SFT (positions < prompt_length are never masked)."""

    ids: torch.Tensor  # (N, L) int64
    prompt_lengths: torch.Tensor | None = None  # (N,) int64

    def __post_init__(self) -> None:
        if self.ids.dim() != 2:
            raise ValueError(f"Rows.ids must be (N, L), got shape {tuple(self.ids.shape)}")
        if self.prompt_lengths is not None and self.prompt_lengths.shape != self.ids.shape[:1]:
            raise ValueError("Rows.prompt_lengths must hold one length per row")

    def to(self, device: torch.device) -> Rows:
        pl = None if self.prompt_lengths is None else self.prompt_lengths.to(device)
        return Rows(self.ids.to(device), pl)


def pack_documents(docs: Sequence[Sequence[int]], seq_len: int, bos: int, eos: int) -> Rows:
    """Greedy packing of whole documents into rows of `seq_len` tokens: each row starts with
    BOS, documents follow as `doc EOS`, and the rest of the row is filled with EOS. A document
    longer than a row is cut into row-sized pieces (each piece starts a row). Order is kept;
    shuffle the documents first."""
    body = seq_len - 1  # after the BOS
    rows: list[list[int]] = []
    cur: list[int] = []
    for doc in docs:
        piece_list = [list(doc[i:i + body - 1]) for i in range(0, max(len(doc), 1), body - 1)]
        for piece in piece_list:
            item = piece + [eos]
            if len(cur) + len(item) > body:
                rows.append(cur)
                cur = []
            cur.extend(item)
    if cur:
        rows.append(cur)
    out = torch.full((len(rows), seq_len), eos, dtype=torch.long)
    out[:, 0] = bos
    for i, r in enumerate(rows):
        out[i, 1:1 + len(r)] = torch.tensor(r, dtype=torch.long)
    return Rows(out)


def sft_rows(examples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
             eos: int) -> tuple[Rows, int]:
    """(prompt ids, response ids) pairs -> rows `prompt response EOS...` padded with EOS to
    `seq_len`, as LLaDA's SFT data. Pairs that do not fit (with at least one EOS) are dropped;
    returns (rows, number dropped)."""
    kept = [(p, r) for p, r in examples if len(p) + len(r) + 1 <= seq_len]
    if not kept:
        raise ValueError(f"no SFT pair fits in seq_len {seq_len}; raise the preset's seq_len")
    ids = torch.full((len(kept), seq_len), eos, dtype=torch.long)
    plen = torch.empty(len(kept), dtype=torch.long)
    for i, (p, r) in enumerate(kept):
        seq = list(p) + list(r)
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        plen[i] = len(p)
    return Rows(ids, plen), len(examples) - len(kept)


def _step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 101 + stream) % (2**63 - 1)


class BatchSampler:
    """Batch of step s = slice s of the seeded permutation of its epoch (drop-last): a pure
    function of (seed, step), so a resumed run sees the same batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, device: torch.device):
        if n_rows < batch_size:
            raise ValueError(f"only {n_rows} training rows for batch size {batch_size}; lower "
                             "the batch size or enlarge the corpus")
        self.n, self.b, self.seed, self.device = n_rows, batch_size, seed, device
        self.per_epoch = n_rows // batch_size
        self._epoch, self._perm = -1, torch.empty(0)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_step_seed(self.seed, epoch, stream=7))
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        return self._perm[i * self.b:(i + 1) * self.b]


# ---- model building ------------------------------------------------------------------------
def init_model(preset: Preset, special: SpecialIds, vocab_size: int, device: torch.device,
               init_dir: Path | None = None) -> DLLM:
    """A seeded fresh model, or the model in `init_dir` with attention set to the preset's
    (causal for AR, bidirectional otherwise), in float32 on `device`."""
    if init_dir is None:
        cfg = preset.model_config(special, vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_step_seed(preset.seed, 0, stream=1))
            model = build_model(cfg)
    else:
        start = load(init_dir, device="cpu", dtype=torch.float32)
        if start.spec is not arch_spec(preset.arch):
            raise ValueError(f"{preset.name} needs a {preset.arch} model to start from, "
                             f"{init_dir} holds {start.config.model_type}")
        cfg = start.config.replace(causal=preset.causal)
        model = build_model(cfg)  # blocks read `causal` from their config: rebuild, then copy
        model.load_state_dict(start.state_dict())
    nbytes = 2 * sum(p.numel() for p in model.parameters())
    if nbytes > preset.max_weight_bytes:
        raise ValueError(f"{preset.name}: {nbytes / 1e6:.1f} MB of bf16 weights exceeds "
                         f"{preset.max_weight_bytes / 1e6:.1f} MB; shrink hidden_size/num_layers "
                         "or the tokenizer's vocabulary")
    return model.to(device=device, dtype=torch.float32)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ---- one training step ---------------------------------------------------------------------
def step_loss(model: DLLM, batch_ids: torch.Tensor, prompt_lengths: torch.Tensor | None,
              preset: Preset, step: int, mask_id: int) -> torch.Tensor:
    """The loss of one step: random-length truncation (LLaDA's 1 %), the forward process and the
    preset's objective, with step-seeded generators."""
    cpu_g = torch.Generator().manual_seed(_step_seed(preset.seed, step, stream=2))
    dev_g = torch.Generator(device=batch_ids.device).manual_seed(
        _step_seed(preset.seed, step, stream=3))
    ids = batch_ids
    if preset.objective != "sft" and torch.rand(1, generator=cpu_g).item() < preset.random_length_prob:
        length = int(torch.randint(2, ids.shape[1] + 1, (1,), generator=cpu_g))
        ids = ids[:, :length]
    if preset.objective == "ar":
        return ar_loss(model(ids), ids)
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device)[None]  # (1, L)
    if prompt_lengths is not None:
        keep = pos < prompt_lengths[:, None]  # (B, L): the prompt, BOS included
    else:
        keep = (pos == 0).expand(B, L)  # BOS
    noisy, masked, p = forward_process(ids, mask_id, preset.mask_eps, dev_g, keep)
    logits = model.denoise_logits(noisy)
    if preset.objective == "sft":
        return sft_loss(logits, ids, masked, p, prompt_lengths)
    return mdm_loss(logits, ids, masked, p)


# ---- the loop ------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: DLLM
    history: dict[str, list[float]]  # {"step": [...], "loss": [...]} mean loss per log interval
    seconds: float
    resumed_from: int


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    model: DLLM,
    rows: Rows,
    preset: Preset,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None = None,
    ckpt_path: Path | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `model` in place for `preset.steps` steps on `rows`.

    `autocast_dtype` (e.g. torch.bfloat16 on CUDA) runs forward passes under autocast, weights
    and optimiser stay float32. With `ckpt_path`, the model, optimiser and loss history are
    saved there atomically every `ckpt_every` steps and loaded from there when present.
    `stop_after` ends the run early after that many steps (tests of resumption)."""
    device = torch.device(device)
    model.to(device).train()
    rows = rows.to(device)
    if preset.objective == "sft" and rows.prompt_lengths is None:
        raise ValueError(f"{preset.name} is an SFT preset; build its rows with sft_rows()")
    opt = torch.optim.AdamW(_param_groups(model, preset.weight_decay), lr=preset.lr,
                            betas=preset.betas, fused=device.type == "cuda")
    history: dict[str, list[float]] = {"step": [], "loss": []}
    start, elapsed = 0, 0.0
    if ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["preset"] != dataclasses.asdict(preset):
            raise ValueError(f"checkpoint {ckpt_path} was written by a different recipe; "
                             "delete it (or pass --force) to start over")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, history, elapsed = ckpt["step"], ckpt["history"], ckpt["seconds"]
        log.info("%s: resuming from step %d (%s)", preset.name, start, ckpt_path)
    sampler = BatchSampler(rows.ids.shape[0], preset.batch_size, preset.seed, device)
    mask_id = model.config.mask_token_id
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    end = preset.steps if stop_after is None else min(preset.steps, start + stop_after)
    running = torch.zeros((), device=device)
    n_running = 0
    t0 = time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=preset.steps, desc=preset.name,
               dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        idx = sampler.indices(step)
        plen = None if rows.prompt_lengths is None else rows.prompt_lengths[idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, preset)
        with amp:
            loss = step_loss(model, rows.ids[idx], plen, preset, step, mask_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if preset.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        opt.step()
        running += loss.detach()
        n_running += 1
        done = step + 1
        if done % preset.log_every == 0 or done == end:
            mean = float(running) / n_running  # the one host sync per interval
            history["step"].append(done)
            history["loss"].append(mean)
            running.zero_()
            n_running = 0
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr_at(step, preset):.2e}")
            log.debug("%s step %d/%d loss %.4f", preset.name, done, preset.steps, mean)
        if ckpt_path is not None and (done % preset.ckpt_every == 0 or done == preset.steps):
            _atomic_save({"preset": dataclasses.asdict(preset), "step": done,
                          "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "history": history,
                          "seconds": elapsed + time.perf_counter() - t0}, ckpt_path)
    bar.close()
    model.eval()
    return TrainResult(model, history, elapsed + time.perf_counter() - t0, start)


# ---- activation statistics for the model card ----------------------------------------------
@torch.no_grad()
def activation_stats(model: DLLM, batches: Sequence[torch.Tensor]) -> list[dict[str, dict]]:
    """Peak |x| and median |x| of the input of every linear layer in every block, with forward
    hooks, over `batches` of token ids (clean text, no masks). Per layer and kind:
    peak = max over batches, median = median of the per-batch medians."""
    per: dict[tuple[int, str], list[tuple[float, float]]] = {}
    handles = []
    for li, blk in enumerate(model.blocks):
        for kind in LINEAR_KINDS:
            mod = get_module(blk, model.spec.linear_name(kind))

            def hook(_mod, args, _out, key=(li, kind)):
                a = args[0].detach().abs().float()
                per.setdefault(key, []).append((a.max().item(), a.median().item()))

            handles.append(mod.register_forward_hook(hook))
    try:
        for ids in batches:
            model(ids.to(model.device))
    finally:
        for h in handles:
            h.remove()
    out: list[dict[str, dict]] = []
    for li in range(len(model.blocks)):
        layer = {}
        for kind in LINEAR_KINDS:
            vals = per[(li, kind)]
            peak = max(v[0] for v in vals)
            median = float(torch.tensor([v[1] for v in vals]).median())
            layer[kind] = {"peak": peak, "median": median,
                           "ratio": peak / median if median > 0 else float("inf")}
        out.append(layer)
    return out


# ---- model card ----------------------------------------------------------------------------
def _fmt_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_model_card(model_dir: str | Path, metrics: dict | None = None) -> Path:
    """Write MODEL_CARD.md next to the weights from train_log.json, activation_stats.json and
    `metrics` (measured FP accuracy: {category: {"accuracy": ..., "stderr": ..., "n": ...,
    "command": "..."}} or {category: number}). Categories without a measurement are listed as
    not measured; nothing is estimated here."""
    model_dir = Path(model_dir)
    train_log = json.loads((model_dir / "train_log.json").read_text())
    stats_file = model_dir / "activation_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
    p = train_log["preset"]
    lines = [f"# {train_log['name']}", "", p["description"], "",
             "## Recipe", "",
             f"- Architecture: {p['arch']} ({'causal' if p['causal'] else 'bidirectional'} "
             f"attention), {train_log['parameters'] / 1e6:.2f}M parameters, "
             f"{train_log['config_summary']}, stored in bf16.",
             f"- Objective: `{p['objective']}` (see `dllmq/train.py`)"
             + (f", initialised from `{p['init_from']}`." if p["init_from"] else ", from scratch."),
             f"- {p['steps']} steps, batch {p['batch_size']} x {p['seq_len']} tokens, AdamW "
             f"lr {p['lr']:g} (warm-up {p['warmup_steps']}, cosine to {p['min_lr_ratio']:g} x), "
             f"weight decay {p['weight_decay']:g}, grad clip {p['grad_clip']:g}, seed {p['seed']}.",
             f"- Trained on {train_log['device']} in {train_log['seconds']:.0f} s "
             f"(torch {train_log['torch']}, autocast {train_log['autocast']}); git commit "
             f"`{train_log['git_commit']}`.",
             f"- Reproduce: `{train_log['command']}`", "",
             "## Data", "",
             f"{train_log['data']['description']} {train_log['data']['rows']} rows of "
             f"{p['seq_len']} tokens; tokenizer vocabulary {train_log['vocab_size']}.", "",
             "## Training loss", "",
             f"First logged {train_log['history']['loss'][0]:.4f}, final "
             f"{train_log['final_loss']:.4f} (mean of the last logged interval, up to "
             f"{p['log_every']} steps).", "",
             "| step | loss |", "| ---: | ---: |"]
    hist = train_log["history"]
    n = len(hist["step"])
    shown = sorted(set([0, n - 1] + [round(i * (n - 1) / 9) for i in range(10)]))
    lines += [f"| {hist['step'][i]} | {hist['loss'][i]:.4f} |" for i in shown]
    lines += ["", "## FP accuracy per category (held-out test split)", ""]
    if metrics:
        lines += ["| category | value |", "| --- | --- |"]
        for cat, val in metrics.items():
            if isinstance(val, dict):
                parts = ", ".join(f"{k} {_fmt_metric(v)}" for k, v in val.items() if k != "command")
                lines.append(f"| {cat} | {parts} |")
            else:
                lines.append(f"| {cat} | {_fmt_metric(val)} |")
        commands = {cat: v["command"] for cat, v in metrics.items()
                    if isinstance(v, dict) and "command" in v}
        if commands:
            lines += ["", "Measured with:", ""] + [f"- {c}: `{cmd}`" for c, cmd in commands.items()]
    else:
        lines.append("Not measured yet (filled in from a real evaluation with "
                     "`dllmq.train.write_model_card(dir, metrics)`).")
    lines += ["", "## Activation statistics", ""]
    if stats:
        lines += [f"Peak |x| / median |x| of the input of each linear layer, "
                  f"{stats['description']}", "",
                  "| layer | " + " | ".join(LINEAR_KINDS) + " |",
                  "| ---: |" + " ---: |" * len(LINEAR_KINDS)]
        for li, layer in enumerate(stats["layers"]):
            cells = [f"{layer[k]['peak']:.3g} / {layer[k]['median']:.3g}" for k in LINEAR_KINDS]
            lines.append(f"| {li} | " + " | ".join(cells) + " |")
        worst = max(((li, k, layer[k]["ratio"]) for li, layer in enumerate(stats["layers"])
                     for k in LINEAR_KINDS), key=lambda x: x[2])
        lines += ["", f"Largest peak/median ratio: {worst[2]:.0f}x at the `{worst[1]}` input of "
                  f"layer {worst[0]}."]
    else:
        lines.append("Not computed (no activation_stats.json).")
    path = model_dir / "MODEL_CARD.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# ---- corpus and tokenizer (dllmq.tasks) ----------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """Token-level training data shared by all presets of one run."""

    tokenizer: Any  # transformers PreTrainedTokenizerFast with a chat template
    special: SpecialIds
    pretrain_docs: list[list[int]]
    sft_examples: list[tuple[list[int], list[int]]]
    description: str
    conditional_examples: list[tuple[list[int], list[int]]] = dataclasses.field(default_factory=list)
    sources: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def special_ids(tokenizer, eot_token: str | None = None) -> SpecialIds:
    """Mask, BOS, EOS (and end-of-turn, when `eot_token` names one) ids of a tokenizer."""
    missing = [n for n in ("mask_token_id", "bos_token_id", "eos_token_id")
               if getattr(tokenizer, n, None) is None]
    if missing:
        raise ValueError(f"tokenizer lacks {', '.join(missing)}; train it with the mask, BOS and "
                         "EOS specials (dllmq.tasks.tokenizer.train_tokenizer)")
    eot = None
    if eot_token is not None:
        eot = tokenizer.convert_tokens_to_ids(eot_token)
        if eot is None or eot == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {eot_token!r} token")
    return SpecialIds(tokenizer.mask_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
                      eot)


def encode_sft_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each exchange in the tokenizer's chat template: the prompt
    is the user turn plus the assistant header (what a user sends at inference), the response
    the rest of the rendered conversation (answer and end-of-turn)."""
    heads, tails = [], []
    for prompt, response in pairs:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                             tokenize=False)
        if not full.startswith(head):
            raise ValueError("the chat template renders the prompt differently with and without "
                             "the answer; cannot split prompt from response")
        heads.append(head)
        tails.append(full[len(head):])
    if not heads:
        return []
    p = tokenizer(heads, add_special_tokens=False)["input_ids"]
    r = tokenizer(tails, add_special_tokens=False)["input_ids"]
    return [(list(a), list(b)) for a, b in zip(p, r, strict=True)]


def conditional_pairs(data_seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) of every train-split item in the format the evaluation prompts with:
    `Question: ...\nAnswer:` + ` answer` (QA, math) and signature + docstring + body (code)."""
    from .tasks import build_suite

    suite = build_suite(data_seed)
    pairs = [(f"Question: {r['question']}\nAnswer:", " " + r["choices"][r["gold"]])
             for r in suite.rows("qa", "train")]
    pairs += [(f"Question: {r['question']}\nAnswer:", " " + r["answer"])
              for r in suite.rows("math", "train")]
    pairs += [(r["prompt"], r["canonical_solution"]) for r in suite.rows("code", "train")]
    return pairs


def encode_plain_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Prompt and answer tokenized apart, as the evaluation tokenizes a prompt and then decodes
    the answer after it; the prompt starts with BOS (position 0, never masked)."""
    if not pairs:
        return []
    p = tokenizer([a for a, _ in pairs], add_special_tokens=False)["input_ids"]
    r = tokenizer([b for _, b in pairs], add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [([bos, *a], list(b)) for a, b in zip(p, r, strict=True)]


def tokenize_data(tokenizer, pretrain_texts: Sequence[str], sft_pairs: Sequence[tuple[str, str]],
                  description: str, eot_token: str | None = None) -> TrainingData:
    docs = tokenizer(list(pretrain_texts), add_special_tokens=False)["input_ids"] \
        if pretrain_texts else []
    return TrainingData(tokenizer, special_ids(tokenizer, eot_token), [list(d) for d in docs],
                        encode_sft_pairs(tokenizer, sft_pairs), description)


def prepare_data(data_seed: int, tokenizer_dir: Path | None) -> TrainingData:
    """The corpus of `dllmq.tasks.corpus.build_corpus(data_seed)`, tokenized. The tokenizer in
    `tokenizer_dir` is reused when given (models trained into one directory share one
    tokenizer), else one is trained on the corpus (it is saved next to each model's weights).
    `data_seed` must be the seed of the suite the models are evaluated on: it fixes the
    generated world, problems and the train/test split."""
    from transformers import AutoTokenizer

    from .tasks.corpus import build_corpus
    from .tasks.tokenizer import EOT, train_tokenizer

    t0 = time.perf_counter()
    corpus = build_corpus(data_seed)
    if tokenizer_dir is not None:
        log.info("using the tokenizer of %s", tokenizer_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(corpus, Path(tmp))))
    data = tokenize_data(tokenizer, corpus.pretrain, corpus.sft, "", eot_token=EOT)
    data = dataclasses.replace(data, conditional_examples=encode_plain_pairs(
        tokenizer, conditional_pairs(data_seed)), sources=dict(corpus.sources))
    tokens = {name: sum(len(d) for d in data.pretrain_docs[a:b])
              for name, (a, b) in corpus.sources.items()}
    groups = ", ".join(f"{name} {b - a} documents / {tokens[name]} tokens"
                       for name, (a, b) in corpus.sources.items())
    description = (f"`dllmq.tasks.corpus.build_corpus({data_seed})` (Python "
                   f"{corpus.python_version} standard library): pretraining {groups}; "
                   f"{len(corpus.sft)} SFT pairs from the same train splits.")
    log.info("data ready in %.0f s: %s", time.perf_counter() - t0, description)
    return dataclasses.replace(data, description=description)


def rows_for(preset: Preset, data: TrainingData) -> Rows:
    """Training rows of a preset: shuffled documents packed into rows (pretraining, AR), or SFT
    pairs padded with EOS."""
    g = torch.Generator().manual_seed(_step_seed(preset.seed, 0, stream=5))
    if preset.objective == "sft":
        order = torch.randperm(len(data.sft_examples), generator=g).tolist()
        rows, dropped = sft_rows([data.sft_examples[i] for i in order], preset.seq_len,
                                 data.special.eos)
        if dropped:
            log.warning("%s: dropped %d of %d SFT pairs longer than %d tokens", preset.name,
                        dropped, len(data.sft_examples), preset.seq_len)
        return rows
    docs = list(data.pretrain_docs)
    if preset.fact_repeats > 1 and "facts" in data.sources:
        a, b = data.sources["facts"]
        docs += data.pretrain_docs[a:b] * (preset.fact_repeats - 1)
    order = torch.randperm(len(docs), generator=g).tolist()
    rows = pack_documents([docs[i] for i in order], preset.seq_len,
                          data.special.bos, data.special.eos)
    if not (preset.conditional_rows and data.conditional_examples):
        return rows
    cond, dropped = sft_rows(data.conditional_examples * preset.conditional_repeats,
                             preset.seq_len, data.special.eos)
    if dropped:
        log.warning("%s: dropped %d of %d conditional pairs longer than %d tokens", preset.name,
                    dropped, len(data.conditional_examples), preset.seq_len)
    log.info("%s: %d packed pretraining rows + %d conditional rows (question kept)", preset.name,
             rows.ids.shape[0], cond.ids.shape[0])
    ones = torch.ones(rows.ids.shape[0], dtype=torch.long)  # pretraining rows keep only BOS
    return Rows(torch.cat([rows.ids, cond.ids]), torch.cat([ones, cond.prompt_lengths]))


# ---- one preset, end to end ----------------------------------------------------------------
def git_commit() -> str | None:
    """HEAD of the checkout this file lives in, with '+dirty' when it has local changes, or
    None when it is not a git checkout (e.g. a copied working tree)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def is_finished(model_dir: Path) -> bool:
    f = model_dir / "train_log.json"
    return f.is_file() and json.loads(f.read_text()).get("finished", False) and \
        (model_dir / "model.safetensors").is_file()


def train_preset(
    preset: Preset,
    data: TrainingData,
    out: Path,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None = None,
    command: str = "",
    keep_checkpoints: bool = False,
    stats_batches: int = 4,
    commit: str | None = None,
) -> Path:
    """Train one preset into `out/<name>/`: weights (bf16), config, tokenizer, train_log.json,
    activation_stats.json, MODEL_CARD.md. Resumes from `out/<name>/checkpoints/last.pt`.
    `commit` is recorded as the code version; by default the git HEAD of this checkout."""
    device = torch.device(device)
    model_dir = out / preset.name
    ckpt_dir = model_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(model_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)  # the file gets every logged loss, the console INFO only
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        init_dir = None
        if preset.init_from is not None:
            init_dir = out / preset.init_from
            if not is_finished(init_dir):
                raise FileNotFoundError(f"{preset.name} starts from {preset.init_from}, which is "
                                        f"not trained in {out}; run --preset {preset.init_from} "
                                        "first (or --preset all)")
        vocab = len(data.tokenizer)
        model = init_model(preset, data.special, vocab, device, init_dir)
        rows = rows_for(preset, data)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("%s: %.2fM parameters, %d rows of %d tokens, %d steps of batch %d on %s",
                 preset.name, n_params / 1e6, rows.ids.shape[0], preset.seq_len, preset.steps,
                 preset.batch_size, device)
        result = train(model, rows, preset, device, autocast_dtype, ckpt_dir / "last.pt")
        shipped = copy.deepcopy(result.model).to(device="cpu", dtype=torch.bfloat16)
        save_pretrained(shipped, model_dir)
        data.tokenizer.save_pretrained(str(model_dir))
        cfg = shipped.config
        stats_model = load(model_dir, device=device, dtype=torch.float32)
        g = torch.Generator().manual_seed(_step_seed(preset.seed, 0, stream=6))
        pick = torch.randperm(rows.ids.shape[0], generator=g)[:stats_batches * 8]
        stats = activation_stats(stats_model, list(rows.ids[pick].split(8)))
        _write_json(model_dir / "activation_stats.json", {
            "description": f"over {len(pick)} training rows of {preset.seq_len} tokens (clean "
                           "text, no mask tokens), the shipped bf16 weights run in float32; "
                           "median = median of per-batch medians.",
            "layers": stats})
        hist = result.history
        tail = hist["loss"][-1]
        _write_json(model_dir / "train_log.json", {
            "name": preset.name, "preset": dataclasses.asdict(preset), "finished": True,
            "seed": preset.seed, "git_commit": commit or git_commit() or "unknown (not a git "
                                                                        "checkout)",
            "command": command,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "autocast": str(autocast_dtype),
            "seconds": result.seconds, "resumed_from_step": result.resumed_from,
            "parameters": n_params, "vocab_size": vocab,
            "config_summary": f"d {cfg.hidden_size}, {cfg.num_layers} blocks, {cfg.num_heads} "
                              f"heads ({cfg.num_kv_heads} KV), FFN {cfg.intermediate_size}",
            "data": {"description": data.description, "rows": rows.ids.shape[0]},
            "history": hist, "final_loss": tail})
        write_model_card(model_dir)
        if not keep_checkpoints:
            (ckpt_dir / "last.pt").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                ckpt_dir.rmdir()
        curve = " ".join(f"{hist['step'][i]}:{hist['loss'][i]:.3f}"
                         for i in sorted({round(j * (len(hist['step']) - 1) / 9) for j in range(10)}))
        log.info("%s: done in %.0f s, loss curve %s -> %s", preset.name, result.seconds, curve,
                 model_dir)
        return model_dir
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ---- command line --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dllmq.train", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=[*PRESETS, "all"],
                    help="model to train; 'all' trains the four in dependency order")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="models are written to OUT/<name>/")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0, help="training seed (init, order, masks)")
    ap.add_argument("--data-seed", type=int, help="corpus seed; default dllmq.tasks.DEFAULT_SEED, "
                                                   "the suite the models are evaluated on")
    ap.add_argument("--tokenizer", type=Path, help="reuse the tokenizer of this model directory "
                                                   "instead of training one (keeps token ids fixed "
                                                   "across retrains and parallel runs)")
    ap.add_argument("--steps", type=int, help="override every preset's step count (smoke runs)")
    ap.add_argument("--batch-size", type=int, help="override every preset's batch size")
    ap.add_argument("--force", action="store_true", help="retrain finished models from scratch")
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument("--commit", help="code version to record when not run from a git checkout "
                                     "(e.g. the output of `git rev-parse HEAD`)")
    return ap


def expand(name: str) -> list[str]:
    return list(ALL_ORDER) if name == "all" else [name]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = logging.getLogger()
    if not root.handlers:
        console = logging.StreamHandler()
        console.setLevel(logging.INFO)  # per-interval losses (DEBUG) go to each train.log only
        console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        root.addHandler(console)
        root.setLevel(logging.INFO)
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m dllmq.train " + " ".join(argv if argv is not None else sys.argv[1:])
    names = expand(args.preset)
    if args.data_seed is None:
        from .tasks import DEFAULT_SEED as data_seed
    else:
        data_seed = args.data_seed
    t0 = time.perf_counter()
    data: TrainingData | None = None
    for name in names:
        preset = PRESETS[name]
        overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size))
                     if v is not None}
        preset = dataclasses.replace(preset, seed=args.seed, **overrides)
        model_dir = out / name
        if args.force and model_dir.exists():
            for f in ("train_log.json", "checkpoints/last.pt"):
                (model_dir / f).unlink(missing_ok=True)
        if is_finished(model_dir):
            log.info("%s already trained in %s (pass --force to retrain)", name, model_dir)
            continue
        if data is None:
            trained = [out / n for n in ALL_ORDER if is_finished(out / n)]
            tokenizer_dir = args.tokenizer or (trained[0] if trained else None)
            data = prepare_data(data_seed, tokenizer_dir)
        train_preset(preset, data, out, device, autocast_dtype, command, args.keep_checkpoints,
                     commit=args.commit)
    log.info("trained %s in %.0f s", ", ".join(names), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
