"""Paired statistics for comparisons on the same items: differences, relative drops, intervals,
verdicts. Pure functions on per-item scores (numpy arrays); nothing here reads a store.

Every FP-vs-quantized comparison in dllmq is paired: both cells answered the same documents
with the same seed, so an item's two scores are compared with each other and item difficulty
cancels. For per-item scores a (quantized) and b (FP) of n items,

    paired_diff(a, b) = (mean(a - b), sd(a - b, ddof=1) / sqrt(n)).

**Sign convention, everywhere:** a *drop* is positive when the quantized model is worse,
`drop = 100 * (FP - Q) / FP` in percent of FP accuracy; a *difference* `r1 - r2` is in
accuracy points.

**Relative drops** use the delta method on the paired means: with Q = mean(q), F = mean(fp),
each item contributes the linearised term `-100/F (q_i - Q) + 100 Q/F^2 (fp_i - F)` and the
drop's standard error is that term's sd / sqrt(n), which is the delta method with the paired
covariance of q and fp included. A category average over several tasks (the paper's six QA
tasks) is the mean of the tasks' accuracies; its drop's standard error comes from a paired
bootstrap that resamples each task's items with the same indices for both cells
(`paired_bootstrap`), and for one task both agree (tests/test_stats.py).

**Resolution floor.** With n items no change smaller than one item (1/n of the scale) can be
resolved, yet the sample formulas give a standard error of 0 when no item differs (identical
answers, or a cell that scores 0 everywhere). The standard error of a drop or of a difference
is therefore never taken below one item's worth: 100 / (n F) points of relative drop, 1 / n of
a difference (`paired_diff` itself stays the plain formula).

**Verdicts.** An interval is `value ± Z * se` with Z = 2 (about a 95 % two-sided interval).
"value < threshold" holds when the interval's upper bound is below the threshold and fails when
its lower bound is above it; otherwise the data cannot tell (within noise). So "near-lossless"
(drop < 4 %) holds only when the whole interval lies below 4 %, and "significant" (drop > 4 %)
only when it lies above.

**Multiplicity.** No per-claim correction (Holm, Bonferroni) is applied, on purpose: a finding's
verdict is not "at least one sub-claim holds" (the case such corrections protect) but "all" or
"most" of its sub-claims, and a single wrongly decided sub-claim can only move an "all" finding
to "mixed", never invent a "holds". What remains is stated with the table: at a true value
exactly on the threshold a sub-claim is wrongly decided with probability about 2.3 % (one side
of the interval), so a finding of k sub-claims expects about 0.023 k such decisions, which
`findings.md` prints per finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z = 2.0  # an interval is value ± Z * se (about 95 %, two-sided)
ONE_SIDED_ERROR = 0.0228  # P(N(0,1) > Z): a sub-claim wrongly decided at a value on the threshold
HOLDS, FAILS, NOISE = "holds", "does not hold", "within noise"


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of equal length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 items, got {len(a)}")
    return a, b


def mean_se(x) -> tuple[float, float]:
    """Mean of per-item scores and its standard error sd(ddof=1) / sqrt(n)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need a 1-D array of at least 2 scores, got shape {x.shape}")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def paired_diff(a, b) -> tuple[float, float]:
    """(mean(a - b), sd(a - b, ddof=1) / sqrt(n)) for per-item scores of two cells on the same items."""
    a, b = _pair(a, b)
    return mean_se(a - b)


def drop_terms(q, fp) -> np.ndarray:
    """Per-item linearised contributions to the relative drop 100 (F - Q) / F (delta method);
    their sd / sqrt(n) is the drop's paired standard error."""
    q, fp = _pair(q, fp)
    big_q, big_f = q.mean(), fp.mean()
    if big_f <= 0:
        return np.full(len(q), math.nan)
    return -100.0 / big_f * (q - big_q) + 100.0 * big_q / big_f**2 * (fp - big_f)


def rel_drop(q, fp) -> tuple[float, float]:
    """Relative drop 100 (mean(fp) - mean(q)) / mean(fp) in percent (positive = worse) and its
    paired delta-method standard error. NaN when FP scores nothing (no relative scale)."""
    q, fp = _pair(q, fp)
    big_f = fp.mean()
    if big_f <= 0:
        return math.nan, math.nan
    t = drop_terms(q, fp)
    se = max(float(t.std(ddof=1) / math.sqrt(len(t))), 100.0 / (len(t) * big_f))
    return float(100.0 * (big_f - q.mean()) / big_f), se


def drop_diff(q1, fp1, q2, fp2) -> tuple[float, float]:
    """drop(q1 vs fp1) - drop(q2 vs fp2) when all four were scored on the same items (e.g. base
    and instruct models under one recipe): paired, from the difference of the linearised terms."""
    d1, _ = rel_drop(q1, fp1)
    d2, _ = rel_drop(q2, fp2)
    t = drop_terms(q1, fp1) - drop_terms(q2, fp2)
    floor = 100.0 / (len(t) * min(np.mean(fp1), np.mean(fp2)))
    return d1 - d2, max(float(t.std(ddof=1) / math.sqrt(len(t))), floor)


def independent_diff(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
    """x - y for two estimates on different items (independent): standard errors add in quadrature."""
    return x[0] - y[0], math.hypot(x[1], y[1])


# ---- aggregates over several tasks -------------------------------------------------------------
def paired_bootstrap(
    tasks: Sequence[Sequence[np.ndarray]],
    stat: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """Paired bootstrap over items, within each task: `tasks[t]` holds k aligned score arrays of
    task t (e.g. quantized and FP); each replicate draws task t's item indices once and applies
    them to all k arrays, so the pairing is kept. `stat(means)` maps per-task means of shape
    (T, k, n_boot) (the observed means are passed as (T, k, 1)) to one value per replicate.
    Returns (estimate on the data, bootstrap se, 2.5 % and 97.5 % percentiles)."""
    rng = np.random.default_rng(seed)
    obs, boot = [], []
    for arrays in tasks:
        arr = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])  # (k, n)
        n = arr.shape[1]
        if n < 2:
            raise ValueError(f"a task with {n} items cannot be bootstrapped")
        idx = rng.integers(0, n, size=(n_boot, n))
        obs.append(arr.mean(axis=1, keepdims=True))       # (k, 1)
        boot.append(arr[:, idx].mean(axis=2))             # (k, n_boot)
    est = float(np.asarray(stat(np.stack(obs))).reshape(-1)[0])
    reps = np.asarray(stat(np.stack(boot)), dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return est, math.nan, math.nan, math.nan
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return est, float(reps.std(ddof=1)), float(lo), float(hi)


def _avg_drop(means: np.ndarray) -> np.ndarray:
    """means (T, 2, B): [:, 0] quantized, [:, 1] FP -> relative drop of the task average."""
    q, f = means[:, 0].mean(axis=0), means[:, 1].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, 100.0 * (f - q) / f, np.nan)


def category_drop(tasks: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """Relative drop of a category's average accuracy (tasks weighted equally, as the paper
    averages) with its paired se: the delta method for one task, the paired bootstrap for more."""
    if len(tasks) == 1:
        return rel_drop(*tasks[0])
    est, se, _lo, _hi = paired_bootstrap(tasks, _avg_drop, n_boot, seed)
    f = np.mean([np.mean(b) for _a, b in tasks])
    return est, max(se, 100.0 / (sum(len(a) for a, _b in tasks) * f)) if f > 0 else se


def category_diff(tasks: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """mean over tasks of mean(a - b) with its paired se (tasks have different items, so their
    variances add)."""
    parts = []
    for a, b in tasks:
        m, se = paired_diff(a, b)
        parts.append((m, max(se, 1.0 / len(a))))  # the resolution floor: one item's worth
    t = len(parts)
    return sum(p[0] for p in parts) / t, math.sqrt(sum(p[1] ** 2 for p in parts)) / t


def category_mean(tasks: Sequence[np.ndarray]) -> tuple[float, float]:
    """Average accuracy over tasks (equal weights) with its se."""
    parts = [mean_se(x) for x in tasks]
    t = len(parts)
    return sum(p[0] for p in parts) / t, math.sqrt(sum(p[1] ** 2 for p in parts)) / t


# ---- verdicts ----------------------------------------------------------------------------------
def interval(value: float, se: float, z: float = Z) -> tuple[float, float]:
    return value - z * se, value + z * se


def verdict(value: float, se: float, op: str, threshold: float, z: float = Z) -> str:
    """"value op threshold" (op "<" or ">") judged on the interval value ± z se: holds when the
    whole interval lies on the claimed side, does not hold when it lies on the other side,
    otherwise within noise (also for a NaN value or se)."""
    if op not in ("<", ">"):
        raise ValueError(f"op must be '<' or '>', got {op!r}")
    if math.isnan(value) or math.isnan(se):
        return NOISE
    lo, hi = interval(value, se, z)
    below, above = hi < threshold, lo > threshold
    if op == "<":
        return HOLDS if below else FAILS if above else NOISE
    return HOLDS if above else FAILS if below else NOISE


def drop_level(drop: float, se: float, threshold: float = 4.0, z: float = Z) -> str:
    """The word a table prints beside a drop, following the verdict rule: "near-lossless" when
    the interval lies below the threshold, "significant" when above, else "undecided"."""
    v = verdict(drop, se, "<", threshold, z)
    return "near-lossless" if v == HOLDS else "significant" if v == FAILS else "undecided"


def items_needed(se_per_sqrt_item: float, margin: float, z: float = Z) -> int:
    """Items n at which z * se_per_sqrt_item / sqrt(n) equals `margin` (a drop that far from the
    threshold is then decided): n = (z * s / margin)^2, rounded up."""
    if margin <= 0:
        raise ValueError("margin must be positive")
    return math.ceil((z * se_per_sqrt_item / margin) ** 2)


__all__ = ["FAILS", "HOLDS", "NOISE", "Z", "category_diff", "category_drop", "category_mean",
           "drop_diff", "drop_level", "drop_terms", "independent_diff", "interval", "items_needed",
           "mean_se", "paired_bootstrap", "paired_diff", "rel_drop", "verdict"]
