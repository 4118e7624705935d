"""Monte Carlo log-likelihood of a continuation under a masked diffusion model (lm-eval's
`loglikelihood`), packed so that samples of many requests share full batches.

The estimate is the diffusion ELBO, unbiased for a lower bound of log p(continuation | context):
mask some continuation tokens (the context stays visible), score the masked tokens, weight each
by 1 / p_mask, average over Monte Carlo samples. Two mask draws, as the evaluations of the paper:
- "llada" (ML-GSAI/LLaDA `get_log_likelihood.py` = its lm-eval wrapper in FelixMessi/QDLM
  `lm_eval/models/llada.py`): per group of `batch_size` samples one k ~ U{1..T}, mask counts
  spread evenly k, k + T/b, ... (mod T) across the group, exactly that many positions masked
  (a random permutation per sample); weight T / count.
- "dream" (QDLM `lm_eval/models/dream_base.py`, `_eval_target_nll_mc`, log_type "ftb"): per group
  one u0 ~ U[0,1), times t_i = (u0 + i/b) mod 1, p_i = (1 - eps) t_i + eps, every continuation
  position masked independently with p_i, except the sequence's first and last positions (the
  wrapper appends EOS to the continuation: that token is never scored); weight 1 / p_i. The
  upstream scores with the shifted logits (position i predicts token i + 1), which is what
  `denoise_logits` returns aligned. Its CFG branch crashes upstream (`self.cfg` is never set);
  here cfg_scale uses LLaDA's formula for both: `un + (cfg_scale + 1) * (cond - un)`, so 0 is
  no guidance and 1.0 twice the conditional direction (sampling.LLaDASamplerConfig).
Both average mc_num // batch_size groups (Dream: at least one group).

`draw_masks` draws exactly the official random numbers, in the official order, from the given
generator (the official code uses the global RNG; on GPU its randperm even runs on the CPU RNG).
We always draw on the CPU, so `torch.manual_seed(s)` + official on CPU == ours with
`torch.Generator().manual_seed(s)`, on any device. `evaluate_masks` is then pure evaluation:
all samples of all requests are sorted by length and cut into model calls of a token budget
(or a fixed row count), right-padded with an attention mask only where lengths differ, so the
device stays full and equal-length calls keep the unmasked (flash) attention path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .sampling import cfg_logits, guide, unconditional_pair

log = logging.getLogger(__name__)

ESTIMATORS = ("llada", "dream")
Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


@dataclass
class MaskDraw:
    """The Monte Carlo samples of one request: which continuation tokens are masked
    (n_samples, T) and each sample's mask probability (n_samples,), float32 as upstream."""

    is_mask: torch.Tensor
    p_mask: torch.Tensor


# ---- mask draws (the official forward processes) --------------------------------------------
def _llada_group(ctx_len: int, T: int, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """get_log_likelihood.py forward_process for one group of b samples."""
    k = torch.randint(1, T + 1, (), generator=g)
    x = torch.round(torch.linspace(float(k), k + (b - 1) * (T / b), steps=b)).long()
    x = ((x - 1) % T) + 1  # mask counts in 1..T
    is_mask = torch.arange(T).repeat(b, 1) < x[:, None]  # (b, T)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(T, generator=g)]
    return is_mask, x / T


def _dream_group(ctx_len: int, T: int, b: int, g: torch.Generator,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dream_base.py _forward_process for one group of b samples (drawn over the whole
    sequence, as upstream, then cut to the continuation)."""
    u0 = torch.rand(1, generator=g)
    t = (u0 + torch.arange(b).float() / b) % 1
    p_mask = (1 - eps) * t + eps  # (b,)
    m = torch.rand((b, ctx_len + T), generator=g) < p_mask[:, None]
    m[:, 0] = False
    m[:, -1] = False
    return m[:, ctx_len:], p_mask


def num_groups(mc_num: int, batch_size: int, estimator: str) -> int:
    if estimator == "dream":
        return max(mc_num // batch_size, 1)
    if mc_num < batch_size:
        raise ValueError(f"mc_num {mc_num} < batch_size {batch_size} gives no LLaDA sample; "
                         "lower batch_size to at most mc_num")
    return mc_num // batch_size


def draw_masks(ctx_len: int, cont_len: int, mc_num: int, batch_size: int,
               generator: torch.Generator, estimator: str = "llada", eps: float = 1e-3) -> MaskDraw:
    """The official forward-process draws for one request, groups of batch_size in order."""
    if cont_len < 1:
        raise ValueError("empty continuation; a request needs at least one continuation token")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
    groups = []
    for _ in range(num_groups(mc_num, batch_size, estimator)):
        if estimator == "llada":
            groups.append(_llada_group(ctx_len, cont_len, batch_size, generator))
        else:
            groups.append(_dream_group(ctx_len, cont_len, batch_size, generator, eps))
    return MaskDraw(torch.cat([m for m, _ in groups]), torch.cat([p for _, p in groups]))


# ---- batched evaluation ---------------------------------------------------------------------
def logits_at(model, x: torch.Tensor, attention_mask: torch.Tensor | None, select: torch.Tensor,
              prompt_index: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """`masked_logits(...)[select]` (N, V), with the LM head applied to the N selected positions
    only (`DLLM.logits_at`): for the likelihood, a tenth of the positions (saves ~7% of an 8B
    forward and the full (B, L, V) logits). The model undoes its own logit shift."""
    rows, cols = select.nonzero(as_tuple=True)  # row-major, the order of logits[select]
    if cfg_scale == 0:
        return model.logits_at(x, attention_mask, rows, cols)
    both_x, both_am = unconditional_pair(x, attention_mask, prompt_index, model.config.mask_token_id)
    h = model.hidden_states(both_x, both_am)
    src = model.source_positions(cols)
    cond, un = model.head_logits(h[rows, src]), model.head_logits(h[rows + x.shape[0], src])
    return guide(cond, un, cfg_scale)


def masked_logits(model, x: torch.Tensor, attention_mask: torch.Tensor | None,
                  prompt_index: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """denoise_logits, with LLaDA's unsupervised CFG when cfg_scale > 0 (prompt masked)."""
    return cfg_logits(model, x, attention_mask, None, prompt_index, cfg_scale,
                      model.config.mask_token_id)


def plan_batches(lengths: list[int], rows_per_forward: int | None,
                 tokens_per_forward: int) -> list[list[int]]:
    """Row indices grouped into model calls: sorted by length (stable, so equal lengths share a
    call and need no padding), then either fixed groups of rows_per_forward, or as many rows as
    keep rows x longest <= tokens_per_forward (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if rows_per_forward:
        return [order[i:i + rows_per_forward] for i in range(0, len(order), rows_per_forward)]
    chunks: list[list[int]] = [[]]
    for i in order:  # ascending lengths: the newest row is the chunk's longest
        if chunks[-1] and (len(chunks[-1]) + 1) * lengths[i] > tokens_per_forward:
            chunks.append([])
        chunks[-1].append(i)
    return chunks


@torch.no_grad()
def evaluate_masks(model, requests: list[Request], draws: list[MaskDraw], cfg_scale: float = 0.0,
                   rows_per_forward: int | None = None, tokens_per_forward: int = 16384,
                   progress: bool = False) -> list[float]:
    """Mean over each request's samples of -sum_masked CE / p_mask, i.e. the log-likelihood
    estimate; the samples of all requests are packed into model calls (`plan_batches`)."""
    device, mask_id, pad_id = model.device, model.config.mask_token_id, model.config.pad_token_id
    rows = [(r, j) for r, d in enumerate(draws) for j in range(d.is_mask.shape[0])]
    lengths = [len(requests[r][0]) + len(requests[r][1]) for r, _ in rows]
    longest = max(lengths)
    if longest > model.config.max_position:
        raise ValueError(f"a request has {longest} tokens, beyond the model's context of "
                         f"{model.config.max_position}; truncate the context on the left")
    total = torch.zeros(len(draws), dtype=torch.float64, device=device)
    chunks = plan_batches(lengths, rows_per_forward, tokens_per_forward)
    for chunk in tqdm(chunks, disable=not progress, desc="likelihood batches"):
        L = max(lengths[i] for i in chunk)
        seq = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        is_mask = torch.zeros((len(chunk), L), dtype=torch.bool)
        prompt_index = torch.zeros((len(chunk), L), dtype=torch.bool)
        attn = torch.zeros((len(chunk), L), dtype=torch.long)
        p_row = torch.ones(len(chunk), dtype=torch.float32)
        req_row = torch.empty(len(chunk), dtype=torch.long)
        for n, i in enumerate(chunk):
            r, j = rows[i]
            ctx, cont = requests[r]
            C, T = len(ctx), len(cont)
            seq[n, :C + T] = torch.tensor(ctx + cont, dtype=torch.long)
            is_mask[n, C:C + T] = draws[r].is_mask[j]
            prompt_index[n, :C] = True
            attn[n, :C + T] = 1
            p_row[n] = draws[r].p_mask[j]
            req_row[n] = r
        seq, is_mask, prompt_index = seq.to(device), is_mask.to(device), prompt_index.to(device)
        attn = None if bool(attn.all()) else attn.to(device)
        noisy = seq.masked_fill(is_mask, mask_id)
        logits = logits_at(model, noisy, attn, is_mask, prompt_index, cfg_scale)  # (N, V)
        p_full = p_row.to(device)[:, None].expand(-1, L)
        loss = F.cross_entropy(logits, seq[is_mask], reduction="none") / p_full[is_mask]
        row_of = torch.arange(len(chunk), device=device)[:, None].expand(-1, L)[is_mask]
        per_row = torch.zeros(len(chunk), dtype=torch.float64, device=device)
        per_row.index_add_(0, row_of, loss.double())
        total.index_add_(0, req_row.to(device), per_row)
    counts = torch.tensor([d.is_mask.shape[0] for d in draws], dtype=torch.float64, device=device)
    return (-total / counts).tolist()


def loglikelihood(model, requests: list[Request], mc_num: int, batch_size: int,
                  cfg_scale: float = 0.0, generator: torch.Generator | None = None, *,
                  estimator: str | None = None, rows_per_forward: int | None = None,
                  tokens_per_forward: int = 16384, eps: float = 1e-3,
                  progress: bool = False) -> list[float]:
    """Monte Carlo log p(continuation | context) per request (see the module docstring).

    batch_size: the official group size of the stratified draw (what the official code also
    uses as its batch). Model calls: rows_per_forward rows each if given, else as many rows as
    fit tokens_per_forward tokens (16384: 136 rows of 120 tokens, 8 rows of 2048). Logits are
    computed for masked positions only, so memory per call is the activations of that many
    tokens (8B, bf16: a few GB).
    estimator: "llada" or "dream" (default: the model's architecture).
    generator: a CPU torch.Generator (None: seeded with 0)."""
    if mc_num < 1 or batch_size < 1:
        raise ValueError("mc_num and batch_size must be >= 1")
    if not requests:
        return []
    estimator = estimator or model.spec.family  # the ArchSpec's: "llada" | "dream"
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if generator.device.type != "cpu":
        raise ValueError("mask draws use a CPU generator (as the official randperm); pass "
                         "torch.Generator() without a device")
    draws = [draw_masks(len(c), len(t), mc_num, batch_size, generator, estimator, eps)
             for c, t in requests]
    return evaluate_masks(model, requests, draws, cfg_scale, rows_per_forward, tokens_per_forward,
                          progress)


# ---- lm-eval's is_greedy --------------------------------------------------------------------
@torch.no_grad()
def greedy_check(model, requests: list[Request], cfg_scale: float = 0.0) -> list[bool]:
    """Would greedy decoding (one most-confident token per step) produce the continuation?
    LLaDA's lm-eval `suffix_greedy_prediction` (QDLM lm_eval/models/llada.py); costs
    len(continuation) forward passes per request, so it runs only when asked."""
    device, mask_id = model.device, model.config.mask_token_id
    out = []
    for ctx, cont in requests:
        C, T = len(ctx), len(cont)
        seq = torch.full((1, C + T), mask_id, dtype=torch.long, device=device)
        seq[0, :C] = torch.tensor(ctx, dtype=torch.long)
        prompt_index = torch.zeros_like(seq, dtype=torch.bool)
        prompt_index[0, :C] = True
        for _ in range(T):
            mask_index = seq == mask_id
            logits = masked_logits(model, seq, None, prompt_index, cfg_scale)[mask_index]
            x0 = torch.argmax(logits, dim=-1)
            p = torch.softmax(logits.float(), dim=-1)
            confidence = torch.gather(p, -1, x0[:, None]).squeeze(-1)
            _, index = torch.sort(confidence, descending=True)
            x0[index[1:]] = mask_id  # commit only the most confident
            seq[mask_index] = x0
        out.append(bool((seq[0, C:].cpu() == torch.tensor(cont)).all()))
    return out
