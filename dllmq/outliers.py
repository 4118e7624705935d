"""Activation statistics at the inputs of each linear kind: the data behind the paper's
Figures 1, 2, B1, B2 and its finding F0 (normal and massive outliers; massive ones at the FFN
down projection; in dLLMs they spread over more tokens than in an autoregressive model).

Criteria (stated once, used everywhere; relative, so they apply to an 8B model and a 5M one):
- a *massive* activation is an entry with |x| >= MASSIVE_RATIO x median(|x|) of that input
  tensor (Sun et al. 2024, "Massive activations", use |x| > 100 and > 1000x the median for
  8B models; with tiny models only the relative part is meaningful);
- a *normal outlier channel* is a channel whose median |x| over tokens is >= CHANNEL_RATIO x
  the median over all channels: large on (almost) every token, as SmoothQuant describes.
- the *token spread* of massive outliers is the fraction of tokens holding at least one
  massive entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .models import LINEAR_KINDS, get_module, input_hooks
from .models.model import DLLM

MASSIVE_RATIO = 100.0
CHANNEL_RATIO = 10.0


@torch.no_grad()
def capture_linear_inputs(
    model: DLLM,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    kinds: Sequence[str] = LINEAR_KINDS,
    attention_mask: torch.Tensor | None = None,
) -> dict[tuple[int, str], torch.Tensor]:
    """|input| of each chosen linear for one batch: {(layer, kind): (B, L, in_features) fp32}."""
    out: dict[tuple[int, str], torch.Tensor] = {}
    n_layers = len(model.blocks)
    mods: dict[tuple[int, str], nn.Module] = {}
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
        for kind in kinds:
            mods[(layer, kind)] = get_module(model.blocks[layer], model.spec.linear_name(kind))

    def grab(key, _m, args):
        out[key] = args[0].detach().abs().float().cpu()

    with input_hooks(mods, grab):
        model(input_ids.to(model.device), attention_mask=attention_mask)
    return out


@dataclass(frozen=True)
class OutlierStats:
    peak: float
    median: float
    peak_to_median: float
    n_massive: int
    massive_token_spread: float  # fraction of tokens with >= 1 massive entry
    n_outlier_channels: int
    top_channels: tuple[int, ...]  # channels of the largest entries, most extreme first

    @property
    def kind_of_outlier(self) -> str:
        if self.n_massive:
            return "massive"
        return "normal" if self.n_outlier_channels else "none"


def outlier_stats(act: torch.Tensor, top: int = 3) -> OutlierStats:
    """Statistics of one |activation| tensor (..., tokens, channels)."""
    a = act.reshape(-1, act.shape[-1]).abs().float()  # (T, C)
    med = a.median().item()
    peak = a.max().item()
    massive = a >= MASSIVE_RATIO * max(med, 1e-12)
    chan_med = a.median(dim=0).values  # (C,)
    outlier_channels = chan_med >= CHANNEL_RATIO * max(med, 1e-12)
    chan_peak = a.max(dim=0).values
    return OutlierStats(
        peak=peak,
        median=med,
        peak_to_median=peak / max(med, 1e-12),
        n_massive=int(massive.sum()),
        massive_token_spread=float(massive.any(dim=1).float().mean()),
        n_outlier_channels=int(outlier_channels.sum()),
        top_channels=tuple(int(i) for i in chan_peak.argsort(descending=True)[:top]),
    )


def mask_tokens(
    input_ids: torch.Tensor, ratio: float, mask_id: int, generator: torch.Generator,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace a `ratio` fraction of tokens (chosen uniformly, seeded) by the mask token: what a
    dLLM sees at an intermediate denoising step. `keep` (bool, same shape) marks never-masked
    positions (e.g. a prompt)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    m = draw < ratio
    if keep is not None:
        m &= ~keep
    return torch.where(m, torch.full_like(input_ids, mask_id), input_ids)


def stats_table(
    model: DLLM,
    batches: Iterable[torch.Tensor],
    layers: Sequence[int],
    kinds: Sequence[str] = LINEAR_KINDS,
) -> list[dict]:
    """One row per (layer, kind): stats over all given batches concatenated along tokens."""
    acc: dict[tuple[int, str], list[torch.Tensor]] = {}
    for ids in batches:
        for key, a in capture_linear_inputs(model, ids, layers, kinds).items():
            acc.setdefault(key, []).append(a.reshape(-1, a.shape[-1]))
    rows = []
    for (layer, kind), parts in sorted(acc.items(), key=lambda kv: (kv[0][0], LINEAR_KINDS.index(kv[0][1]))):
        s = outlier_stats(torch.cat(parts))
        rows.append({"layer": layer, "kind": kind, "peak": s.peak, "median": s.median,
                     "peak_to_median": s.peak_to_median, "n_massive": s.n_massive,
                     "massive_token_spread": s.massive_token_spread,
                     "n_outlier_channels": s.n_outlier_channels, "outlier": s.kind_of_outlier,
                     "top_channels": list(s.top_channels)})
    return rows


# ---- figures -----------------------------------------------------------------------------
KIND_TITLES = {"q": "attention input (q/k/v)", "k": "k_proj input", "v": "v_proj input",
               "o": "attention output (o input)", "gate": "FFN input (gate/up)",
               "up": "FFN input (gate/up)", "down": "FFN down-projection input"}


def _downsample(a: torch.Tensor, max_tokens: int, max_channels: int) -> torch.Tensor:
    """(T, C) |x| -> at most (max_tokens, max_channels) by max-pooling, so peaks survive."""
    T, C = a.shape
    if T > max_tokens:
        a = torch.nn.functional.adaptive_max_pool1d(a.T[None], max_tokens)[0].T
    if C > max_channels:
        a = torch.nn.functional.adaptive_max_pool1d(a[None], max_channels)[0]
    return a


def plot_activation_grid(acts: dict[tuple[int, str], torch.Tensor], panels: Sequence[tuple[int, str]],
                         title: str, sample: int = 0, max_tokens: int = 64, max_channels: int = 256):
    """One 3-D token x channel x |value| panel per (layer, kind), like the paper's Figure 1."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plt.figure(figsize=(4.2 * len(panels), 3.8))
    for i, key in enumerate(panels):
        a = _downsample(acts[key][sample], max_tokens, max_channels).numpy()  # (T, C)
        T, C = a.shape
        X, Y = np.meshgrid(np.arange(C), np.arange(T))
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        ax.plot_surface(X, Y, a, cmap="coolwarm", linewidth=0, antialiased=False, rstride=1, cstride=1,
                        rasterized=True)  # vector PDFs of a token x channel surface run to MBs
        s = outlier_stats(acts[key][sample])
        ax.set_title(f"({chr(97 + i)}) layer {key[0]}: {KIND_TITLES[key[1]]}\n"
                     f"peak {s.peak:.1f}, peak/median {s.peak_to_median:.0f}x", fontsize=9)
        ax.set_xlabel("channel")
        ax.set_ylabel("token")
        ax.set_zlabel("|x|")
        ax.view_init(elev=25, azim=-60)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
