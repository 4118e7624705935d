"""The paper's findings F0-F8 (shared/paper/README.md) judged from a run's own numbers.

Each finding is a set of numeric sub-claims (`report.Check`): a relative drop against a
threshold, or a gap between two relative drops against a margin, each with its *paired* standard
error (`dllmq.stats`: both cells answered the same items with the same seeds, and the
comparison is made item by item). A sub-claim holds or fails only when its interval
(value ± 2 se) lies wholly on one side of the threshold; otherwise it is within noise. Claims
about "most" cases use a majority over their sub-claims. No multiple-comparison correction is
applied; `dllmq.stats` says why, and findings.md prints each finding's expected number of
wrongly decided sub-claims. The verdict and the numbers that decide it are written to
tables/findings.md.

Sign convention: a drop is positive when the quantized model is worse.
Thresholds: "near-lossless" = relative drop below 4 % (the paper calls 4-bit near-lossless
with drops up to ~3.5 %, i.e. negligible or moderate); "significant" = drop above 4 %;
"collapse" = accuracy below 10 % of full precision (a drop above 90 %).
Comparisons ("X beats Y", "math degrades more than QA", "instruct is more robust") are gaps
between two relative drops, in points of relative drop, judged against MARGIN = 4 points, the
near-lossless threshold: "X beats Y" holds when drop(Y) - drop(X) lies wholly above 4 (X keeps
more of FP's accuracy by more than a negligible amount) and does not hold when it lies wholly
below 4 (X is at most negligibly better, equal or worse). Against a margin of 0, two methods
that are truly equal could never be told apart at any number of items; the margin makes "no
meaningful difference" a decidable answer (an equivalence test, one-sided). findings.md also
counts what a zero margin would decide, so the effect of this choice is visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import stats
from .report import NOISE, Check, Numbers, combine, fmt, parse_recipe

NEAR_LOSSLESS = 4.0
SIGNIFICANT = 4.0
COLLAPSE_PCT_OF_FP = 10.0
MARGIN = 4.0  # points of relative drop: the smallest gap between two drops that counts


@dataclass
class Finding:
    key: str
    claim: str
    checks: list[Check] = field(default_factory=list)
    majority: bool = False
    verdict_override: str | None = None

    @property
    def verdict(self) -> str:
        if self.verdict_override:
            return self.verdict_override
        return combine(self.checks, majority=self.majority) if self.checks else "not measured"


def _drop_check(n: Numbers, model: str, recipe: str, cat: str, op: str, thr: float) -> Check | None:
    d = n.drop(model, recipe, cat)
    return None if d is None else Check(f"{model} {recipe} {cat} drop %", d[0], d[1], op, thr)


def _beats_check(n: Numbers, model: str, winner: str, loser: str, cat: str,
                 margin: float) -> Check | None:
    """`winner` beats `loser`: drop(loser) - drop(winner) > margin (points of relative drop, paired)."""
    d = n.drop_gap(model, loser, model, winner, cat)
    return None if d is None else Check(f"{model} {cat}: drop {loser} - drop {winner}", d[0], d[1],
                                        ">", margin)


def _keep(checks) -> list[Check]:
    return [c for c in checks if c is not None]


def _with(recipes: Sequence[str], *, method: str | None = None, wbits: int | None = None,
          abits: int | None = None) -> list[str]:
    out = []
    for r in recipes:
        i = parse_recipe(r)
        if (method is None or i.method == method) and (wbits is None or i.wbits == wbits) and (
                abits is None or i.abits == abits):
            out.append(r)
    return out


def judge(
    df: pd.DataFrame,
    categories: Mapping[str, str],
    roles: Mapping[str, str],
    outliers: pd.DataFrame | None = None,
    margin: float = MARGIN,
) -> list[Finding]:
    """roles: {"llada_base", "llada_instruct", "dream_base", "ar"} -> model name (any subset).
    outliers: rows (model, kind, peak_to_median, massive_token_spread) for F0. margin: the
    comparisons' margin in points of relative drop (module docstring)."""
    n = Numbers(df, categories)
    llada = [roles[k] for k in ("llada_base", "llada_instruct") if k in roles]
    dream = roles.get("dream_base")
    found: list[Finding] = []

    f0 = Finding("F0", "Massive outliers sit at the FFN down-projection input; in a dLLM they "
                 "spread over more tokens than in its autoregressive counterpart")
    if outliers is not None and len(outliers):
        for model, g in outliers.groupby("model"):
            down = g[g["kind"] == "down"]["peak_to_median"].max()
            other = g[g["kind"] != "down"]["peak_to_median"].max()
            f0.checks.append(Check(f"{model}: down peak/median minus others' max", down - other, 0.0, ">", 0.0))
        if dream in set(outliers["model"]) and roles.get("ar") in set(outliers["model"]):
            sd = outliers[(outliers.model == dream) & (outliers.kind == "down")]["massive_token_spread"].mean()
            sa = outliers[(outliers.model == roles["ar"]) & (outliers.kind == "down")]["massive_token_spread"].mean()
            f0.checks.append(Check(f"token spread of massive outliers, {dream} - {roles['ar']}", sd - sa, 0.0, ">", 0.0))
    found.append(f0)

    f1 = Finding("F1", "Weight-only: 4-bit near-lossless on QA and math; 3-bit drops significantly, most on math and code")
    for m in llada:
        wo = [r for r in n.recipes(m) if parse_recipe(r).weight_only and parse_recipe(r).method != "RTN"]
        for r in _with(wo, wbits=4):
            f1.checks += _keep(_drop_check(n, m, r, c, "<", NEAR_LOSSLESS) for c in ("qa", "math"))
        for r in _with(wo, wbits=3):
            f1.checks += _keep(_drop_check(n, m, r, c, ">", SIGNIFICANT) for c in ("math", "code"))
    found.append(f1)

    f2 = Finding("F2", "Weight-activation: W8A8 near-lossless for every method; W4A4 drops significantly in most cases")
    f2b = []
    for m in llada:
        wa = [r for r in n.recipes(m) if not parse_recipe(r).weight_only and parse_recipe(r).method != "RTN"]
        for r in _with(wa, wbits=8, abits=8):
            f2.checks += _keep(_drop_check(n, m, r, c, "<", NEAR_LOSSLESS) for c in n.cats())
        for r in _with(wa, wbits=4, abits=4):
            f2b += _keep(_drop_check(n, m, r, c, ">", SIGNIFICANT) for c in n.cats())
    if f2b:
        w4 = combine(f2b, majority=True)
        w8 = combine(f2.checks) if f2.checks else w4
        f2.checks += f2b
        f2.verdict_override = w8 if w8 == w4 else "mixed"
    found.append(f2)

    f3 = Finding("F3", "GPTQ beats AWQ in most cases; AWQ holds up better on 3-bit code", majority=True)
    f3_awq = []
    for m in llada + ([dream] if dream else []):
        for bits in (4, 3):
            g, a = _with(n.recipes(m), method="GPTQ", wbits=bits), _with(n.recipes(m), method="AWQ", wbits=bits)
            if g and a:
                f3.checks += _keep(_beats_check(n, m, g[0], a[0], c, margin) for c in n.cats() if not (bits == 3 and c == "code"))
                if bits == 3:
                    f3_awq += _keep([_beats_check(n, m, a[0], g[0], "code", margin)])
    if f3_awq:
        main, sub = combine(f3.checks, majority=True), combine(f3_awq, majority=True)
        f3.checks += f3_awq
        f3.verdict_override = main if main == sub else "mixed"
    found.append(f3)

    f4 = Finding("F4", "Rotation methods (QuaRot, DuQuant) beat SmoothQuant; SmoothQuant collapses at W4A4 on math and code", majority=True)
    for m in llada:
        for w, a in ((8, 8), (4, 4)):
            sq = _with(n.recipes(m), method="SmoothQuant", wbits=w, abits=a)
            for rot in ("QuaRot", "DuQuant"):
                rr = _with(n.recipes(m), method=rot, wbits=w, abits=a)
                if sq and rr:
                    f4.checks += _keep(_beats_check(n, m, rr[0], sq[0], c, margin) for c in n.cats())
        sq4 = _with(n.recipes(m), method="SmoothQuant", wbits=4, abits=4)
        for c in ("math", "code"):
            d = n.drop(m, sq4[0], c) if sq4 else None
            if d and not np.isnan(d[0]):
                f4.checks.append(Check(f"{m} {sq4[0]} {c} accuracy as % of FP", 100 - d[0], d[1],
                                       "<", COLLAPSE_PCT_OF_FP))
    found.append(f4)

    f5 = Finding("F5", "DuQuant beats QuaRot in most settings", majority=True)
    for m in llada:
        for w, a in ((8, 8), (4, 4)):
            d, q = _with(n.recipes(m), method="DuQuant", wbits=w, abits=a), _with(n.recipes(m), method="QuaRot", wbits=w, abits=a)
            if d and q:
                f5.checks += _keep(_beats_check(n, m, d[0], q[0], c, margin) for c in n.cats())
    found.append(f5)

    f6 = Finding("F6", "Math and code degrade more than general QA", majority=True)
    for m in llada:
        for r in n.recipes(m):
            dq = n.drop(m, r, "qa")
            for c in ("math", "code"):
                dc = n.drop(m, r, c)
                if dq and dc:  # different items: independent, variances add
                    f6.checks.append(Check(f"{m} {r}: drop {c} - drop qa", *stats.independent_diff(dc, dq), ">", margin))
    found.append(f6)

    f7 = Finding("F7", "The instruct model is more robust than the base model", majority=True)
    if "llada_base" in roles and "llada_instruct" in roles:
        b, i = roles["llada_base"], roles["llada_instruct"]
        for r in sorted(set(n.recipes(b)) & set(n.recipes(i))):
            for c in n.cats():
                d = n.drop_gap(b, r, i, r, c)
                if d:
                    f7.checks.append(Check(f"{r} {c}: drop base - drop instruct", d[0], d[1], ">", margin))
    found.append(f7)

    f8 = Finding("F8", "Dream: W4 near-lossless, W3 significant even on QA; GPTQ beats AWQ")
    if dream:
        wo = [r for r in n.recipes(dream) if parse_recipe(r).weight_only and parse_recipe(r).method != "RTN"]
        f8.checks += _keep(_drop_check(n, dream, r, "qa", "<", NEAR_LOSSLESS) for r in _with(wo, wbits=4))
        f8.checks += _keep(_drop_check(n, dream, r, "qa", ">", SIGNIFICANT) for r in _with(wo, wbits=3))
        for bits in (4, 3):
            g, a = _with(wo, method="GPTQ", wbits=bits), _with(wo, method="AWQ", wbits=bits)
            if g and a:
                f8.checks += _keep([_beats_check(n, dream, g[0], a[0], "qa", margin)])
    found.append(f8)
    return found


def decided(found: Sequence[Finding], keys: Sequence[str] = tuple(f"F{i}" for i in range(1, 9))) -> tuple[int, int]:
    """(decided, all) sub-claims of the findings `keys` (F1-F8 by default)."""
    vs = [c.verdict for f in found if f.key in keys for c in f.checks]
    return sum(v != NOISE for v in vs), len(vs)


def resize_items(df: pd.DataFrame, counts: Mapping[str, int | None] | None = None,
                 tile: Mapping[str, int] | None = None) -> pd.DataFrame:
    """The results frame as if each task had a different number of items, for "how many items
    would decide this?": `counts` {task: n} keeps documents 0..n-1 (the held-out splits are
    ordered so that any prefix is balanced, as a smaller `limit` evaluates); `tile` {task: k}
    repeats every item k times under new document ids, i.e. k times the items with the same
    per-item outcomes (the paired se shrinks by about sqrt(k), the effects stay). value and
    stderr are recomputed from the kept scores."""
    counts, tile = dict(counts or {}), dict(tile or {})
    rows = []
    for r in df.to_dict("records"):
        sc = r["scores"]
        n, k = counts.get(r["task"]), int(tile.get(r["task"], 1))
        if n is not None:
            sc = {key: v for key, v in sc.items() if key[0] < n}
        if k > 1:
            span = 1 + max(key[0] for key in sc)
            sc = {(d + i * span, *rest): v for (d, *rest), v in sc.items() for i in range(k)}
        x = np.array(list(sc.values()), dtype=float)
        rows.append({**r, "scores": sc, "value": float(x.mean()),
                     "stderr": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0})
    return pd.DataFrame(rows, columns=df.columns)


def findings_markdown(found: Sequence[Finding], at_zero_margin: Sequence[Finding] | None = None) -> str:
    """The findings table and each finding's sub-claims. `at_zero_margin`: the same run judged
    with margin 0 (`judge(..., margin=0)`), whose decided share is stated for comparison."""
    lines = ["# Findings F0-F8, judged from this run's numbers", "",
             "Every comparison is paired: the FP and quantized cells answered the same items with the "
             "same seeds, and drops and differences carry the paired standard error (`dllmq.stats`). "
             "A drop is positive when the quantized model is worse. A sub-claim holds or fails only "
             "when its interval (value ± 2 se) lies wholly on one side of its threshold; otherwise it "
             "is within noise. Claims about \"most\" cases use a majority of their sub-claims. No "
             "multiple-comparison correction: a sub-claim on its threshold is wrongly decided with "
             "probability about 2.3 %, so each finding below states how many such decisions to expect. "
             "Comparisons between two methods, two categories or two models are gaps between relative "
             f"drops judged against a margin of {MARGIN:g} points (the near-lossless threshold): \"X beats Y\" "
             f"holds when drop(Y) - drop(X) lies wholly above {MARGIN:g}, and does not hold when it lies "
             f"wholly below (X is at most negligibly better). "
             "Generated by `dllmq.findings.judge`; thresholds in its docstring.", ""]
    d, t = decided(found)
    line = f"Decided: {d} of {t} F1-F8 sub-claims ({100 * d / t:.0f} %)." if t else "No F1-F8 sub-claim measured."
    if at_zero_margin is not None and t:
        dz, tz = decided(at_zero_margin)
        line += (f" With a zero margin (\"X beats Y\" = drop(Y) - drop(X) > 0) {dz} of {tz} would be "
                 f"decided ({100 * dz / tz:.0f} %): a true gap near 0 can never be told from 0.")
    lines += [line, "",
             "| finding | claim | verdict | sub-claims (holds / fails / noise) |", "|---|---|---|---|"]
    for f in found:
        vs = [c.verdict for c in f.checks]
        lines.append(f"| {f.key} | {f.claim} | **{f.verdict}** | "
                     f"{vs.count('holds')} / {vs.count('does not hold')} / {vs.count('within noise')} |")
    lines.append("")
    for f in found:
        lines += [f"## {f.key}: {f.verdict}", "", f.claim, ""]
        if f.checks and f.key != "F0":
            lines += [f"{len(f.checks)} sub-claims; about {stats.ONE_SIDED_ERROR * len(f.checks):.1f} "
                      "would be wrongly decided if every true value sat on its threshold.", ""]
        lines += [f"- {c.line()}" for c in f.checks] or ["- not measured in this run"]
        lines.append("")
    return "\n".join(lines)


__all__ = ["MARGIN", "Finding", "Numbers", "decided", "findings_markdown", "fmt", "judge", "resize_items"]
