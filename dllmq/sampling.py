"""Masked-diffusion decoding: LLaDA's semi-autoregressive remasking and Dream's algorithms.

Follows ML-GSAI/LLaDA `generate.py` (blocks, evenly spread transfer counts, low-confidence or
random remasking, float64 Gumbel noise, unsupervised classifier-free guidance) and Dream's
`dream_generation_utils.py` `_sample` (timesteps linspace(1, eps, steps + 1); algorithms
origin / maskgit_plus / topk_margin / entropy; top-p / top-k / temperature sampling).
Read top-down: the pure tensor steps first, then one denoising step per architecture,
then `generate`.

Randomness and the seed convention: every random number comes from the `torch.Generator`
passed in, drawn with the same shapes, dtypes and order as the official code draws them from
the global RNG. Hence `torch.manual_seed(s)` + official == ours with
`torch.Generator().manual_seed(s)` on CPU (and with a CUDA generator vs
`torch.cuda.manual_seed(s)` on GPU). To keep that, noise is drawn for the full (B, L, V)
logits even where only the current block is used. `generator=None` means a fresh generator
seeded with 0 on the model's device.

Where we differ from the official code (all documented, none changes single-prompt output):
- Prompts of different lengths are left-padded with the model's pad id, with an attention
  mask and position ids cumsum(mask) - 1 (Dream's `tok_idx`) for BOTH architectures, so a
  padded prompt decodes as it would alone. (Official LLaDA ignores the attention mask and
  shifts positions, so its padded batches differ from its single prompts.)
  Deterministic settings (temperature 0, no random remasking, Dream alg != origin) thus give
  each prompt the tokens it gets alone; random draws depend on the batch shape, as upstream.
- A prompt may not contain the mask token (the official code would fill it in too).
- LLaDA computes argmax, softmax and the float64 Gumbel arithmetic only on the positions that
  can be committed (the generated part up to the current block's end); the official computes
  them everywhere and discards the rest. Top-k runs on full rows, so ties break as upstream.
- LLaDA's `confidence_eos_eot_inf` reproduces the official effect exactly: the EoT logit is
  set to -inf before the confidence softmax, and so is the EOS logit, but only at
  temperature 0 (upstream writes EOS into the noisy logits, which alias the logits only then).
- Dream's `sample_tokens` falls back to argmax inside a bare `except` when
  `torch.distributions.Categorical` rejects the probabilities (e.g. NaN); we never fall back
  (a NaN raises in torch.multinomial). Probabilities are normalised as Categorical does, so
  the draws are identical otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


# ---- configs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLaDASamplerConfig:
    """LLaDA's `generate()` arguments (generate.py); defaults are the paper's 128/128/128.

    cfg_scale: LLaDA's unsupervised classifier-free guidance, `un + (cfg_scale + 1) * (cond -
    un)` with `un` the logits when every prompt token is masked (generate.py; `cfg_logits`).
    0 means no guidance (cond alone: the paper's setting for LLaDA and Dream); 1.0 is not "no
    guidance" but one extra step along (cond - un), twice the conditional direction. Dream's
    official sampler has no guidance; dllmq applies this same formula to either model."""

    gen_length: int = 128
    steps: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False  # LLaDA Appendix B.4: never predict EOS
    confidence_eos_eot_inf: bool = False  # LLaDA Appendix B.4: EOS/EoT never most confident

    def __post_init__(self) -> None:
        if self.gen_length < 1 or self.block_length < 1 or self.steps < 1:
            raise ValueError("gen_length, block_length and steps must be >= 1")
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length {self.gen_length} is not a multiple of block_length "
                             f"{self.block_length}; pick a block_length that divides it")
        if self.steps % self.num_blocks:
            raise ValueError(f"steps {self.steps} is not a multiple of the {self.num_blocks} blocks; "
                             f"use steps divisible by gen_length // block_length")
        if self.remasking not in LLADA_REMASKING:
            raise ValueError(f"remasking {self.remasking!r} is unknown; use one of "
                             f"{', '.join(LLADA_REMASKING)}")
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError("temperature and cfg_scale must be >= 0 (0 disables them)")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def new_tokens(self) -> int:
        return self.gen_length


@dataclass(frozen=True)
class DreamSamplerConfig:
    """Dream's `diffusion_generate()` arguments (dream_generation_utils.py)."""

    max_new_tokens: int = 128
    steps: int = 128
    eps: float = 1e-3
    alg: str = "origin"
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.steps < 1:
            raise ValueError("max_new_tokens and steps must be >= 1")
        if self.alg not in DREAM_ALGS:
            raise ValueError(f"alg {self.alg!r} is unknown; use one of {', '.join(DREAM_ALGS)}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps {self.eps} must lie in (0, 1); Dream uses 1e-3")
        if self.temperature < 0 or (self.alg_temp is not None and self.alg_temp < 0):
            raise ValueError("temperature and alg_temp must be >= 0 (0 means greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p} must lie in (0, 1]; None disables it")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k {self.top_k} must be >= 1; None disables it")

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens


SamplerConfig = LLaDASamplerConfig | DreamSamplerConfig


@dataclass
class GenerationResult:
    """tokens: the generated part (B, new_tokens). committed_at (only with trace=True):
    (B, new_tokens) global step index at which each position was last written (-1: never);
    for LLaDA step = block * steps_per_block + step_in_block."""

    tokens: torch.Tensor
    committed_at: torch.Tensor | None = None


# ---- pure tensor steps ----------------------------------------------------------------------
def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator,
                     positions: slice = slice(None), length: int | None = None) -> torch.Tensor:
    """exp(logits) / (-log u)^T in float64 (LLaDA generate.py; float64 after arXiv:2409.02908),
    whose argmax samples softmax(logits / T); identity at T = 0 (no draw). logits are those of
    `positions` (along L) of a canvas of `length` (default: all of logits); the uniform noise is
    drawn for the whole (B, length, V), as upstream draws it, and only `positions` are used."""
    if temperature == 0:
        return logits
    B, n, V = logits.shape
    noise = torch.rand((B, length or n, V), dtype=torch.float64, device=logits.device,
                       generator=generator)
    return logits.to(torch.float64).exp() / (-torch.log(noise[:, positions])) ** temperature


def num_transfer_tokens(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps: n // steps each, remainder to the first steps
    (LLaDA's linear schedule, generate.py get_num_transfer_tokens)."""
    base, rem = divmod(n_masked, steps)
    return [base + (i < rem) for i in range(steps)]


def top_k_mask(confidence: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Boolean mask of the k most confident entries per row of (B, N).

    An int k (same for every row) uses torch.topk, as the official per-row loop does; a (B,)
    tensor of per-row k is vectorised by ranking: sort each row once, keep ranks < k."""
    if isinstance(k, int):
        idx = torch.topk(confidence, k, dim=-1).indices
        return torch.zeros_like(confidence, dtype=torch.bool).scatter_(-1, idx, True)
    order = torch.argsort(confidence, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(confidence.shape[-1], device=confidence.device).expand_as(order))
    return ranks < k.to(confidence.device)[:, None]


def top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest prefix of sorted tokens with mass > top_p (Dream)."""
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cum > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_idx, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(logits: torch.Tensor, cfg: DreamSamplerConfig, generator: torch.Generator,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits -> (confidence (N,), token (N,)) as Dream's `sample_tokens`, the confidence
    chosen by cfg.alg: probability of the token (origin, maskgit_plus), top1 - top2 margin
    (topk_margin) or negative entropy (entropy)."""
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = top_p_logits(logits, cfg.top_p)
    if cfg.top_k is not None:
        logits = top_k_logits(logits, cfg.top_k)
    probs = torch.softmax(logits, dim=-1)  # (N, V)
    if cfg.temperature > 0 and probs.shape[0] > 0:
        # torch.distributions.Categorical(probs).sample(), with its normalisation
        x0 = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, True,
                               generator=generator).T.reshape(-1)
        confidence = torch.gather(probs, -1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if cfg.alg == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values if probs.shape[-1] > 1 else probs
        confidence = top2[:, 0] - top2[:, 1]
    elif cfg.alg == "entropy":
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def _twice(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.cat([t, t])


def unconditional_pair(x: torch.Tensor, attention_mask: torch.Tensor | None,
                       prompt_index: torch.Tensor, mask_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(2B, L) ids: x, then x with every prompt position masked (the unconditional half of
    LLaDA's unsupervised CFG), and the attention mask for both halves."""
    return torch.cat([x, x.masked_fill(prompt_index, mask_id)]), _twice(attention_mask)


def guide(cond: torch.Tensor, un: torch.Tensor, scale: float) -> torch.Tensor:
    """LLaDA's guidance formula: un + (scale + 1)(cond - un) (scale 0: cond)."""
    return un + (scale + 1) * (cond - un)


def cfg_logits(model, x: torch.Tensor, attention_mask, position_ids, prompt_index: torch.Tensor,
               scale: float, mask_id: int, window: slice | None = None) -> torch.Tensor:
    """Logits (B, L, V), or (B, hi - lo, V) for a window; with scale > 0 LLaDA's unsupervised
    classifier-free guidance: un + (scale + 1)(cond - un), `un` from a second pass with every
    prompt position masked."""
    if scale == 0:
        return model.denoise_logits(x, attention_mask, position_ids, window=window)
    both_x, both_am = unconditional_pair(x, attention_mask, prompt_index, mask_id)
    logits = model.denoise_logits(both_x, both_am, _twice(position_ids), window=window)
    cond, un = logits.chunk(2, dim=0)
    return guide(cond, un, scale)


# ---- prompts --------------------------------------------------------------------------------
@dataclass
class Prompts:
    ids: torch.Tensor  # (B, P) left-padded
    attention_mask: torch.Tensor | None  # (B, P) 1 = token; None when nothing is padded


def pad_prompts(prompts, pad_id: int, device: torch.device) -> Prompts:
    """List of token-id lists (any lengths) or a (B, L) tensor -> left-padded batch."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompt tensor must be (B, L), got shape {tuple(prompts.shape)}")
        return Prompts(prompts.to(device=device, dtype=torch.long), None)
    rows = [list(map(int, p)) for p in prompts]
    if not rows:
        raise ValueError("no prompts given; pass at least one token-id list")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, P - len(r):] = torch.tensor(r)
            mask[b, P - len(r):] = 1
    padded = any(len(r) < P for r in rows)
    return Prompts(ids.to(device), mask.to(device) if padded else None)


def canvas(prompts: Prompts, new_tokens: int, mask_id: int):
    """Prompt + new_tokens masks, its attention mask and position ids (Dream's tok_idx:
    cumsum(mask) - 1, pads at 1), the latter two None when nothing is padded."""
    B, P = prompts.ids.shape
    x = torch.cat([prompts.ids, prompts.ids.new_full((B, new_tokens), mask_id)], dim=1)
    if prompts.attention_mask is None:
        return x, None, None
    attn = torch.cat([prompts.attention_mask, prompts.attention_mask.new_ones((B, new_tokens))], 1)
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    return x, attn, pos


def _check(model, prompts: Prompts, new_tokens: int) -> None:
    c = model.config
    total = prompts.ids.shape[1] + new_tokens
    if total > c.max_position:
        raise ValueError(f"prompt ({prompts.ids.shape[1]} tokens) + {new_tokens} new tokens = "
                         f"{total} exceeds the model's context of {c.max_position}; shorten the "
                         "prompt or generate fewer tokens")
    if c.pad_token_id == c.mask_token_id:
        raise ValueError("the model's pad_token_id equals its mask_token_id; set a different pad id")
    if bool((prompts.ids == c.mask_token_id).any()):
        raise ValueError(f"a prompt contains the mask token id {c.mask_token_id}; remove it "
                         "(the sampler would overwrite it)")


# ---- one denoising step per architecture ----------------------------------------------------
def llada_denoise_step(model, x, attn, pos, prompt_index, lo: int, hi: int, k: int,
                       cfg: LLaDASamplerConfig, generator: torch.Generator):
    """Commit the k most confident (or k random) masked positions before `hi` (the current
    block's end). [lo, hi) spans every generated position up to the block end: earlier blocks
    are normally full, but a position whose prediction was the mask token stays masked and, as
    upstream, stays eligible. Returns (x, transfer (B, L) bool)."""
    c = model.config
    mask_id = c.mask_token_id
    window = slice(lo, hi)  # no logit outside it is ever read: the LM head runs there only
    logits = cfg_logits(model, x, attn, pos, prompt_index, cfg.cfg_scale, mask_id, window)
    if cfg.logits_eos_inf:
        logits[:, :, c.eos_token_id] = -torch.inf
    noisy = add_gumbel_noise(logits, cfg.temperature, generator, window, x.shape[1])  # (B, hi-lo, V)
    x0 = torch.argmax(noisy, dim=-1)  # (B, hi - lo)
    if cfg.remasking == "low_confidence":
        blk = logits
        if cfg.confidence_eos_eot_inf:
            blk = blk.clone()
            blk[:, :, c.eot_token_id] = -torch.inf
            if cfg.temperature == 0:
                blk[:, :, c.eos_token_id] = -torch.inf
        p = F.softmax(blk, dim=-1)
        x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # (B, hi - lo)
    else:
        x0_p = torch.rand(x.shape, device=x.device, generator=generator)[:, lo:hi]
    # top-k over the full rows (B, L), -inf outside [lo, hi): the same ties as upstream
    confidence = torch.full(x.shape, -torch.inf, dtype=x0_p.dtype, device=x.device)
    confidence[:, lo:hi] = torch.where(x[:, lo:hi] == mask_id, x0_p, -torch.inf)
    transfer = top_k_mask(confidence, k)  # (B, L)
    x = x.clone()
    x[:, lo:hi] = torch.where(transfer[:, lo:hi], x0, x[:, lo:hi])
    return x, transfer


def dream_denoise_step(model, x, attn, pos, i: int, timesteps: torch.Tensor,
                       cfg: DreamSamplerConfig, generator: torch.Generator, prompt_len: int = 0):
    """Step i of Dream's `_sample`: from t = timesteps[i] to s = timesteps[i + 1].
    Returns (x, transfer (B, L) bool). Masks lie after the prompt only, so the LM head runs on
    positions [prompt_len, L) (the same rows of logits[mask_index], in the same order)."""
    mask_id = model.config.mask_token_id
    last = i == cfg.steps - 1
    mask_index = x == mask_id  # (B, L)
    logits = model.denoise_logits(x, attn, pos, window=slice(prompt_len, None))  # i predicts i
    mask_logits = logits[mask_index[:, prompt_len:]]  # (N, V), row-major over the batch
    t, s = timesteps[i], timesteps[i + 1]
    x = x.clone()
    if cfg.alg == "origin":
        p_transfer = 1 if last else 1 - s / t
        x0 = torch.full((mask_logits.shape[0],), mask_id, dtype=torch.long, device=x.device)
        go = torch.rand(x0.shape, device=x.device, generator=generator) < p_transfer
        x0[go] = sample_tokens(mask_logits[go], cfg, generator)[1]
        transfer = torch.zeros_like(mask_index)
        transfer[mask_index] = go
        x[mask_index] = x0
        return x, transfer
    confidence, x0 = sample_tokens(mask_logits, cfg, generator)
    per_row = mask_index.sum() / mask_index.shape[0]  # float tensor, as upstream
    n = int(per_row) if last else int(per_row * (1 - s / t))
    transfer = torch.zeros_like(mask_index)
    if n == 0:
        return x, transfer
    full_conf = torch.full(x.shape, -torch.inf, dtype=logits.dtype, device=x.device)
    full_conf[mask_index] = confidence
    if not cfg.alg_temp:
        idx = torch.topk(full_conf, n).indices  # (B, n)
    else:
        idx = torch.multinomial(F.softmax(full_conf / cfg.alg_temp, dim=-1), n, generator=generator)
    proposal = torch.full_like(x, mask_id)
    proposal[mask_index] = x0
    x.scatter_(1, idx, proposal.gather(1, idx))
    transfer.scatter_(1, idx, True)
    return x, transfer


# ---- the entry point ------------------------------------------------------------------------
@torch.no_grad()
def generate(model, prompts, cfg: SamplerConfig, generator: torch.Generator | None = None,
             trace: bool = False, progress: bool = False) -> GenerationResult:
    """Decode cfg.new_tokens tokens after each prompt with LLaDA's or Dream's sampler (chosen by
    the config type; both work with either model, as `denoise_logits` is aligned).

    prompts: list of token-id lists (left-padded here) or a (B, L) tensor (used as is)."""
    if not isinstance(cfg, LLaDASamplerConfig | DreamSamplerConfig):
        raise TypeError(f"cfg must be LLaDASamplerConfig or DreamSamplerConfig, got {type(cfg).__name__}")
    device = model.device
    if generator is None:
        generator = torch.Generator(device).manual_seed(0)
    c = model.config
    batch = pad_prompts(prompts, c.pad_token_id, device)
    _check(model, batch, cfg.new_tokens)
    if isinstance(cfg, LLaDASamplerConfig) and cfg.confidence_eos_eot_inf and c.eot_token_id is None:
        raise ValueError("confidence_eos_eot_inf needs the model config's eot_token_id; set it "
                             "(LLaDA: 126348)")
    x, attn, pos = canvas(batch, cfg.new_tokens, c.mask_token_id)
    P = batch.ids.shape[1]
    committed = torch.full((x.shape[0], cfg.new_tokens), -1, dtype=torch.long, device=device)

    def record(step: int, transfer: torch.Tensor) -> None:
        if trace:
            committed.masked_fill_(transfer[:, P:], step)

    if isinstance(cfg, LLaDASamplerConfig):
        prompt_index = torch.zeros_like(x, dtype=torch.bool)
        prompt_index[:, :P] = True
        spb = cfg.steps_per_block
        bar = tqdm(total=cfg.steps, disable=not progress, desc="LLaDA decoding")
        for b in range(cfg.num_blocks):
            hi = P + (b + 1) * cfg.block_length
            for i, k in enumerate(num_transfer_tokens(cfg.block_length, spb)):
                x, transfer = llada_denoise_step(model, x, attn, pos, prompt_index, P, hi, k,
                                                 cfg, generator)
                record(b * spb + i, transfer)
                bar.update()
        bar.close()
    else:
        timesteps = torch.linspace(1, cfg.eps, cfg.steps + 1, device=device)
        for i in tqdm(range(cfg.steps), disable=not progress, desc="Dream decoding"):
            x, transfer = dream_denoise_step(model, x, attn, pos, i, timesteps, cfg, generator, P)
            record(i, transfer)
    return GenerationResult(tokens=x[:, P:], committed_at=committed if trace else None)
