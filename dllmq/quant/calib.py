"""Calibration data and the block-by-block walker every calibrated method shares.

`Calibration` holds token ids (N, L), an optional attention mask, and one dLLM-specific option
the paper did not try: replace a fraction of the tokens by the mask token (one ratio for all
samples, or a per-sample schedule), seeded, because a masked diffusion LM sees mask tokens at
every denoising step, not clean text.

The walker follows GPTQ's sequential scheme (IST-DASLab/gptq `llama.py: llama_sequential`):
capture the inputs of block 0 by stopping the model's own forward there, then for each block
let the method look at the inputs of the linears it needs (forward pre-hooks), quantize the
block, and recompute the block's outputs *through the already-quantized block* as the next
block's inputs. Unlike the reference, the rope tables and attention bias are captured from the
model's forward rather than rebuilt, so the walker knows nothing about either architecture.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from dllmq.models import get_module, input_hooks

from .qlinear import QLinear

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Calibration token ids for the quantizers.

    input_ids: (N, L) int64. attention_mask: (N, L) 1 = token, 0 = padding (padding is left out
    of every statistic). mask_ratio: fraction of (non-pad) tokens replaced by `mask_token_id`,
    a float for all samples or a sequence of N floats (a schedule, e.g. `mask_schedule(N)`);
    positions drawn with a torch.Generator seeded by `seed`. batch_size: samples per forward.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    mask_ratio: float | tuple[float, ...] | None = None
    mask_token_id: int | None = None
    seed: int = 0
    batch_size: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError("calibration input_ids must be an integer tensor of shape (N, L)")
        if ids.shape[0] == 0:
            raise ValueError("calibration set is empty; pass at least one sample (paper: 128 x 2048)")
        if ids.shape[1] < 2:
            raise ValueError(f"calibration sequences of {ids.shape[1]} token(s) are too short; "
                             "use at least 2 tokens per sample (paper: 2048)")
        if self.attention_mask is not None and self.attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(self.attention_mask.shape)} must match "
                             f"input_ids {tuple(ids.shape)}")
        if self.mask_ratio is not None:
            ratios = (self.mask_ratio,) if isinstance(self.mask_ratio, float | int) else self.mask_ratio
            if not isinstance(self.mask_ratio, float | int) and len(ratios) != ids.shape[0]:
                raise ValueError(f"mask_ratio schedule has {len(ratios)} entries for "
                                 f"{ids.shape[0]} samples; give one ratio per sample")
            if any(not 0.0 <= r <= 1.0 for r in ratios):
                raise ValueError("mask_ratio values must lie in [0, 1]")
            if self.mask_token_id is None:
                raise ValueError("mask_ratio needs mask_token_id (model.config.mask_token_id)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")

    @property
    def num_tokens(self) -> int:
        if self.attention_mask is None:
            return self.input_ids.numel()
        return int(self.attention_mask.sum())

    def with_(self, **changes) -> Calibration:
        return replace(self, **changes)

    def masked_ids(self) -> torch.Tensor:
        """input_ids with the configured fraction of tokens replaced by the mask token."""
        ids = self.input_ids.clone()
        if self.mask_ratio is None:
            return ids
        N, L = ids.shape
        ratios = ([float(self.mask_ratio)] * N if isinstance(self.mask_ratio, float | int)
                  else [float(r) for r in self.mask_ratio])
        gen = torch.Generator().manual_seed(self.seed)
        valid = (torch.ones_like(ids, dtype=torch.bool) if self.attention_mask is None
                 else self.attention_mask.bool().cpu())
        for i, r in enumerate(ratios):
            pos = valid[i].nonzero().flatten()
            k = round(r * len(pos))
            pick = pos[torch.randperm(len(pos), generator=gen)[:k]]
            ids[i, pick.to(ids.device)] = self.mask_token_id
        return ids

    def batches(self, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        ids = self.masked_ids()
        for s in range(0, ids.shape[0], self.batch_size):
            am = None if self.attention_mask is None else self.attention_mask[s:s + self.batch_size]
            yield ids[s:s + self.batch_size].to(device), None if am is None else am.to(device)

    @classmethod
    def random(cls, vocab_size: int, nsamples: int, seqlen: int, seed: int = 0, **kw) -> Calibration:
        """Uniform random token ids (tests, timing)."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randint(0, vocab_size, (nsamples, seqlen), generator=gen), seed=seed, **kw)

    @classmethod
    def from_token_stream(cls, tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0,
                          **kw) -> Calibration:
        """`nsamples` random windows of `seqlen` tokens from one long token stream, as GPTQ's
        `get_wikitext2` draws them (the paper: 128 x 2048 WikiText-2)."""
        tokens = tokens.flatten()
        if tokens.numel() <= seqlen:
            raise ValueError(f"token stream of {tokens.numel()} tokens is too short for windows "
                             f"of {seqlen}; use more text or a shorter seqlen")
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, tokens.numel() - seqlen, (nsamples,), generator=gen)
        return cls(torch.stack([tokens[s:s + seqlen] for s in starts.tolist()]), seed=seed, **kw)


def mask_schedule(nsamples: int, low: float = 0.0, high: float = 1.0) -> tuple[float, ...]:
    """Mask ratios spread evenly over [low, high], one per sample (a denoising trajectory)."""
    if nsamples == 1:
        return ((low + high) / 2,)
    return tuple(low + (high - low) * i / (nsamples - 1) for i in range(nsamples))


class _Captured(Exception):
    """Raised inside block 0 to stop the forward once its inputs are captured."""


InputHook = Callable[[str, torch.Tensor], None]


class BlockInputs:
    """The calibration hidden states at the input of the current block, with rope and bias.

    Use `BlockInputs.capture(model, calib)`, then per block `run(block, hooks)` and
    `advance(block)`. Hooks receive (path, x) with x of shape (T, in_features): the valid
    (non-pad) tokens of one batch as the linear's *weight* sees them, i.e. after a QLinear's
    input transform and before its activation fake-quant (as QuaRot's GPTQ pass does).
    """

    def __init__(self, xs: list[torch.Tensor], ropes: list, biases: list,
                 valid: list[torch.Tensor | None], progress: bool):
        self.xs, self.ropes, self.biases, self.valid = xs, ropes, biases, valid
        self.progress = progress

    @classmethod
    @torch.no_grad()
    def capture(cls, model: nn.Module, calib: Calibration) -> BlockInputs:
        xs, ropes, biases, valid = [], [], [], []

        def grab(_key, _mod, args):
            x, rope, bias = args
            xs.append(x)
            ropes.append(rope)
            biases.append(bias)
            raise _Captured

        with input_hooks({0: model.blocks[0]}, grab):
            for ids, am in calib.batches(model.device):
                with contextlib.suppress(_Captured):
                    model(ids, attention_mask=am)
                valid.append(None if am is None else am.bool())
                if len(xs) != len(valid):
                    raise RuntimeError("the model's forward never reached block 0; cannot capture "
                                       "calibration inputs")
        log.debug("captured %d calibration batches at block 0", len(xs))
        return cls(xs, ropes, biases, valid, calib.progress)

    def _flat(self, x: torch.Tensor, i: int) -> torch.Tensor:
        v = self.valid[i]
        return x.reshape(-1, x.shape[-1]) if v is None else x[v]  # (T, C)

    @torch.no_grad()
    def run(self, block: nn.Module, hooks: Mapping[str, InputHook]) -> None:
        """Forward every batch through `block`, calling hooks[path](path, x) on the inputs of the
        modules at those block-relative paths. A path matching no module raises."""
        batch = [0]

        def pre(path: str, m: nn.Module, args: tuple) -> None:
            x = args[0]
            if isinstance(m, QLinear) and m.input_transform is not None:
                x = m.input_transform(x)
            hooks[path](path, self._flat(x, batch[0]))

        with input_hooks({path: get_module(block, path) for path in hooks}, pre):
            for i, x in enumerate(self.xs):
                batch[0] = i
                block(x, self.ropes[i], self.biases[i])

    @torch.no_grad()
    def collect(self, block: nn.Module, paths: Sequence[str]) -> dict[str, torch.Tensor]:
        """The inputs of the modules at `paths`, all batches concatenated: (T_total, in)."""
        got: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
        self.run(block, {p: lambda path, x: got[path].append(x) for p in paths})
        return {p: torch.cat(v) for p, v in got.items()}

    @torch.no_grad()
    def absmax(self, block: nn.Module, paths: Sequence[str], sample_tokens: int = 0
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One pass: per-channel max |x| (float32, (in,)) over all calibration tokens at the
        inputs of the modules at `paths`, and the first `sample_tokens` of those tokens
        (float32, (<= sample_tokens, in); empty dict when 0). SmoothQuant's and DuQuant's
        statistics."""
        stats: dict[str, torch.Tensor] = {}
        kept: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
        count = dict.fromkeys(paths, 0)

        def hook(path: str, x: torch.Tensor) -> None:
            m = x.abs().amax(dim=0).float()
            stats[path] = m if path not in stats else torch.maximum(stats[path], m)
            if count[path] < sample_tokens:
                take = x[: sample_tokens - count[path]].float()
                kept[path].append(take)
                count[path] += take.shape[0]

        self.run(block, dict.fromkeys(paths, hook))
        return stats, ({p: torch.cat(v) for p, v in kept.items()} if sample_tokens else {})

    @torch.no_grad()
    def outputs(self, block: nn.Module) -> list[torch.Tensor]:
        return [block(x, self.ropes[i], self.biases[i]) for i, x in enumerate(self.xs)]

    def advance(self, block: nn.Module) -> None:
        """Replace the stored states by `block`'s outputs (the next block's inputs)."""
        self.xs = self.outputs(block)

    def block_kwargs(self, i: int) -> tuple:
        """(rope, bias) of batch i, for methods that run the block themselves (AWQ)."""
        return self.ropes[i], self.biases[i]


def walk_blocks(model: nn.Module, calib: Calibration,
                step: Callable[[int, nn.Module, BlockInputs], list[torch.Tensor] | None],
                desc: str) -> None:
    """GPTQ's sequential scheme: step(i, block, inputs) quantizes block i in place, then the
    inputs advance through the quantized block. A step may instead return the next block's
    inputs itself (AWQ, as llm-awq, passes on the float block's outputs)."""
    inputs = BlockInputs.capture(model, calib)
    for i, block in enumerate(tqdm(model.blocks, desc=desc, disable=not calib.progress)):
        nxt = step(i, block, inputs)
        if nxt is None:
            inputs.advance(block)
        else:
            inputs.xs = nxt
