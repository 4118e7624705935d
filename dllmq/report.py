"""Tables, figures and the findings check: from a tidy results frame to tables/ and figures/.

The input everywhere is a pandas DataFrame with one row per (model, recipe, task):
columns `model, recipe, task, value, stderr, scores` (value and stderr as fractions, as lm-eval
reports accuracy; `scores` the cell's per-item scores {(doc_id, seed): score}), produced by
`study.run_study` from the results store. Tables print percentages, each accuracy with its
standard error and each drop against FP with its *paired* standard error (`dllmq.stats`);
averages and drops are recomputed here from the per-item scores, never copied.

Sign convention everywhere: a drop is positive when the quantized model is worse. The word
beside a drop follows the verdict rule of `dllmq.stats`: "near-lossless" when its interval
(drop ± 2 se) lies below 4 %, "significant" when above, "undecided" otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats

FP_RECIPE = "fp16"  # the store's name for "not quantized" (dllmq.harness.NO_QUANT)
LEVELS = ((1.0, "negligible"), (4.0, "moderate"), (math.inf, "significant"))
NOISE_Z = stats.Z  # a difference counts only when its interval ± 2 se excludes the threshold

_RECIPE_RE = re.compile(r"^w(?P<w>\d+)a(?P<a>\d+)(?:g(?P<g>\d+))?-(?P<method>[a-z0-9_]+)$")
METHOD_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant",
                "quarot": "QuaRot", "duquant": "DuQuant"}


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    setting: str  # "FP", "W4A16g128", "W8A8"
    method: str  # "-", "GPTQ", ...
    wbits: int
    abits: int

    @property
    def weight_only(self) -> bool:
        return self.abits >= 16 and self.wbits < 16


def parse_recipe(name: str) -> RecipeInfo:
    """`w4a16g128-gptq` -> setting W4A16g128, method GPTQ; `fp16` (or `fp`) -> FP."""
    if name in (FP_RECIPE, "fp"):
        return RecipeInfo(name, "FP", "-", 16, 16)
    m = _RECIPE_RE.match(name)
    if not m:
        raise ValueError(f"recipe name {name!r} is not of the form w<bits>a<bits>[g<group>]-<method> or 'fp16'")
    w, a, g = int(m["w"]), int(m["a"]), m["g"]
    setting = f"W{w}A{a}" + (f"g{g}" if g else "")
    return RecipeInfo(name, setting, METHOD_NAMES.get(m["method"], m["method"]), w, a)


def recipe_label(name: str) -> str:
    """Short label for plots: `w4a16g128-gptq` -> "W4A16 GPTQ", `fp16` -> "FP"."""
    i = parse_recipe(name)
    return "FP" if i.method == "-" else f"{i.setting.split('g')[0]} {i.method}"


def degradation_level(drop_pct: float) -> str:
    """Relative drop in percent (positive = worse) -> the paper's level."""
    for bound, level in LEVELS:
        if drop_pct < bound:
            return level
    return LEVELS[-1][1]


# ---- paired numbers from per-item scores -----------------------------------------------------
def aligned(a: Mapping, b: Mapping, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Two cells' per-item scores {(doc_id, seed): score} as aligned arrays, one entry per
    document (its seeds averaged: the document is the unit that is resampled). The cells must
    have been scored on exactly the same items and seeds: pairs are joined by key, never guessed."""
    if set(a) != set(b):
        only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
        raise ValueError(f"{what}: the two cells were not scored on the same items and seeds "
                         f"({only_a} only in the first, {only_b} only in the second); evaluate "
                         "both with the same limit and seeds")
    docs: dict = {}
    for k in sorted(a):
        docs.setdefault(k[0], []).append(k)
    xa = np.array([np.mean([a[k] for k in ks]) for ks in docs.values()])
    xb = np.array([np.mean([b[k] for k in ks]) for ks in docs.values()])
    return xa, xb


def per_doc(scores: Mapping) -> np.ndarray:
    """One cell's per-item scores, one entry per document (seeds averaged)."""
    return aligned(scores, scores)[0]


class Numbers:
    """Accuracies, paired drops and paired differences (percent) by task group, from the tidy
    frame of `study.run_study` (one row per model, recipe, task, with its per-item `scores`).
    `groups` maps task -> group (a category: qa, math, code); a group's number is the mean over
    its tasks with equal weights, as the paper averages."""

    def __init__(self, df: pd.DataFrame, groups: Mapping[str, str]):
        if "scores" not in df.columns:
            raise ValueError("the results frame has no per-item `scores` column; comparisons are "
                             "paired and need each cell's per-item samples (study.run_study)")
        self.df = df[df["task"].isin(groups)]
        self.groups = dict(groups)
        self._scores = {(r.model, r.recipe, r.task): r.scores for r in self.df.itertuples()}
        self._tasks: dict[str, list[str]] = {}
        for t, g in self.groups.items():
            self._tasks.setdefault(g, []).append(t)

    def _have(self, model: str, recipe: str, cat: str) -> bool:
        return bool(self._tasks.get(cat)) and all((model, recipe, t) in self._scores for t in self._tasks[cat])

    def _pairs(self, m1, r1, m2, r2, cat) -> list[tuple[np.ndarray, np.ndarray]] | None:
        if not (self._have(m1, r1, cat) and self._have(m2, r2, cat)):
            return None
        return [aligned(self._scores[(m1, r1, t)], self._scores[(m2, r2, t)],
                        f"{m1} {r1} vs {m2} {r2} on {t}") for t in self._tasks[cat]]

    def avg(self, model: str, recipe: str, cat: str) -> tuple[float, float] | None:
        if not self._have(model, recipe, cat):
            return None
        m, se = stats.category_mean([per_doc(self._scores[(model, recipe, t)]) for t in self._tasks[cat]])
        return 100 * m, 100 * se

    def task_acc(self, model: str, recipe: str, task: str) -> tuple[float, float] | None:
        """One task's accuracy (percent) with its se over items."""
        sc = self._scores.get((model, recipe, task))
        if sc is None:
            return None
        m, se = stats.mean_se(per_doc(sc))
        return 100 * m, 100 * se

    def drop(self, model: str, recipe: str, cat: str) -> tuple[float, float] | None:
        """Relative drop of `recipe` against the model's FP in percent, positive = worse, paired."""
        p = self._pairs(model, recipe, model, FP_RECIPE, cat)
        return None if p is None else stats.category_drop(p)

    def drop_gap(self, m1: str, r1: str, m2: str, r2: str, cat: str) -> tuple[float, float] | None:
        """drop(m1, r1) - drop(m2, r2), in points of relative drop (positive: the first drops
        more). All four cells (the two quantized ones and their models' FP) answered the same
        items, so they are paired: by the linearised drops for one task, a joint paired
        bootstrap for several. Two recipes of one model share its FP cell."""
        q = self._pairs(m1, r1, m2, r2, cat)
        f = self._pairs(m1, FP_RECIPE, m2, FP_RECIPE, cat)
        if q is None or f is None or self._pairs(m1, r1, m1, FP_RECIPE, cat) is None:
            return None  # (the last check also proves all four cells share their items)
        tasks = [(qa, fa, qb, fb) for (qa, qb), (fa, fb) in zip(q, f, strict=True)]
        if len(tasks) == 1:
            return stats.drop_diff(*tasks[0])

        def stat(mm):
            qa, fa, qb, fb = (mm[:, i].mean(axis=0) for i in range(4))
            return 100 * (fa - qa) / fa - 100 * (fb - qb) / fb
        est, se, _lo, _hi = stats.paired_bootstrap(tasks, stat)
        return est, se

    def mean_drop(self, cells: Sequence[tuple[str, str, str]]) -> tuple[float, float]:
        """Mean of the relative drops of several (model, recipe, group) cells, with a paired
        bootstrap se that resamples each task's items once for every cell on it (cells of two
        models or recipes on one task are correlated; cells on different tasks are not)."""
        terms = [(t, model, recipe) for model, recipe, cat in cells for t in self._tasks[cat]]
        arrays: dict[str, list[np.ndarray]] = {t: [] for t, _m, _r in terms}
        index: dict[tuple, int] = {}
        for t, model, recipe in terms:
            for r in (recipe, FP_RECIPE):
                if (t, model, r) not in index:
                    x, _ = aligned(self._scores[(model, r, t)], self._scores[(model, FP_RECIPE, t)],
                                   f"{model} {r} vs FP on {t}")
                    index[(t, model, r)] = len(arrays[t])
                    arrays[t].append(x)
        tasks = list(arrays)

        def stat(means):  # means (T, k, B); tasks with fewer than k arrays are padded below
            out = 0.0
            for model, recipe, cat in cells:
                q = sum(means[tasks.index(t), index[(t, model, recipe)]] for t in self._tasks[cat])
                f = sum(means[tasks.index(t), index[(t, model, FP_RECIPE)]] for t in self._tasks[cat])
                with np.errstate(divide="ignore", invalid="ignore"):  # FP at 0: NaN, no relative drop
                    out = out + 100 * (f - q) / f
            return out / len(cells)
        k = max(len(a) for a in arrays.values())
        padded = [a + [a[0]] * (k - len(a)) for a in (arrays[t] for t in tasks)]
        est, se, _lo, _hi = stats.paired_bootstrap(padded, stat)
        return est, se

    def recipes(self, model: str) -> list[str]:
        return sorted({r for (m, r, _t) in self._scores if m == model and r != FP_RECIPE})

    def cats(self) -> list[str]:
        return sorted(self._tasks)


def relative_drops(df: pd.DataFrame, by: str = "task", within: Sequence[str] = ()) -> pd.DataFrame:
    """One row per quantized (model, recipe, task) of a tidy frame, or per (model, recipe,
    category) with by="category": its relative drop against the same model's FP in percent
    (positive = worse) with the paired se. Columns: model, category, task, recipe, label,
    setting (bits, no group), method, drop, se, lo, hi (the ± 2 se interval). `within` names
    setting columns (e.g. ("steps",)): each value is compared with the FP cell of the same value."""
    if within:
        parts = [relative_drops(g, by).assign(**dict(zip(within, k if isinstance(k, tuple) else (k,), strict=True)))
                 for k, g in df.groupby(list(within), sort=False)]
        return pd.concat(parts, ignore_index=True)
    groups = dict(zip(df["task"], df[by] if by != "task" else df["task"], strict=True))
    cat_of = dict(zip(df["task"], df["category"], strict=True))
    n = Numbers(df, groups)
    rows = []
    for (model, recipe, key) in dict.fromkeys(zip(df["model"], df["recipe"], df[by], strict=True)):
        if recipe == FP_RECIPE:
            continue
        d = n.drop(model, recipe, key)
        if d is None:
            continue
        i = parse_recipe(recipe)
        lo, hi = stats.interval(*d)
        rows.append({"model": model, "category": key if by == "category" else cat_of[key],
                     "task": key if by == "task" else "", "recipe": recipe,
                     "label": recipe_label(recipe), "setting": i.setting.split("g")[0],
                     "method": i.method, "drop": d[0], "se": d[1], "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def rq1_panels(drops: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Figure RQ1's layout from `relative_drops(df, by="category")`: a `family` column
    (weight-only / weight-act) for the rows and an x label "<setting>\n<model>" per point, so a
    weight-only panel holds only W4A16/W3A16 positions and a weight-activation panel only
    W8A8/W4A4; returns (frame, x order per category)."""
    d = drops.copy()
    info = d["recipe"].map(parse_recipe)
    d["family"] = info.map(lambda i: "weight-only" if i.weight_only else "weight-act")
    d["x"] = d["setting"] + "\n" + d["model"].map(model_slug).str.replace("tiny-", "", regex=False)
    settings = ["W4A16", "W3A16", "W8A8", "W4A4"]
    models = list(dict.fromkeys(d["model"]))
    order = [f"{s}\n{model_slug(m).replace('tiny-', '')}" for s in settings for m in models]
    return d, {c: order for c in d["category"].unique()}


def rank_drops(df: pd.DataFrame, by: Sequence[str], label: str = "LLaDA pair") -> pd.DataFrame:
    """Mean relative drop (percent, positive = worse) over every model and category of each
    group of `by` (e.g. ("setting", "method") for the method ranking), with a paired bootstrap
    se, sorted best (smallest drop) first within each setting. Columns: model (= label), *by,
    mean_drop_pct, mean_drop_pct_se, level (the verdict rule's word)."""
    drops = relative_drops(df, by="category")
    n = Numbers(df, dict(zip(df["task"], df["category"], strict=True)))
    rows = []
    for key, g in drops.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, se = n.mean_drop(list(zip(g["model"], g["recipe"], g["category"], strict=True)))
        rows.append({"model": label, **dict(zip(by, key, strict=True)), "mean_drop_pct": m,
                     "mean_drop_pct_se": se, "level": stats.drop_level(m, se)})
    return pd.DataFrame(rows)


def fmt(v: float, se: float | None = None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if se is None or math.isnan(se) else f"{v:.{digits}f} ± {se:.{digits}f}"


# ---- paper-layout tables ------------------------------------------------------------------
def paper_table(
    df: pd.DataFrame,
    models: Sequence[str],
    recipes: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows (model, setting, method) in the given recipe order; for each task a column
    `task` and `task_se` (percent); per group of tasks an average `<group>_avg` (+ se) and
    relative drop `<group>_drop_pct` (+ paired se; positive = worse) against the model's FP row."""
    labels = dict(labels or {})
    n = Numbers(df, {t: g for g, ts in groups.items() for t in ts})
    rows = []
    for model in models:
        for recipe in [FP_RECIPE, *[r for r in recipes if r != FP_RECIPE]]:
            info = parse_recipe(recipe)
            row: dict = {"model": labels.get(model, model), "setting": info.setting,
                         "method": info.method, "recipe": recipe}
            complete = True
            for group, tasks in groups.items():
                for t in tasks:
                    a = n.task_acc(model, recipe, t)
                    if a is None:
                        complete = False
                        row[t] = row[f"{t}_se"] = math.nan
                    else:
                        row[t], row[f"{t}_se"] = a
                if n._have(model, recipe, group):
                    row[f"{group}_avg"], row[f"{group}_avg_se"] = n.avg(model, recipe, group)
                    d = None if recipe == FP_RECIPE else n.drop(model, recipe, group)
                    row[f"{group}_drop_pct"], row[f"{group}_drop_pct_se"] = d or (math.nan, math.nan)
            if complete or recipe == FP_RECIPE:
                rows.append(row)
    return pd.DataFrame(rows)


def _header(col: str) -> str:
    if col.endswith("_drop_pct"):
        return f"{col.removesuffix('_drop_pct')} drop % (+ = worse)"
    if col.endswith("_avg"):
        return f"{col.removesuffix('_avg')} avg"
    return col


def table_markdown(table: pd.DataFrame, value_cols: Sequence[str], title: str = "",
                   keys: Sequence[str] = ("model", "setting", "method")) -> str:
    """Markdown with the `keys` columns, then `value ± se` cells (a value column `c` takes its
    se from `c_se`). Drops are printed as they are computed, positive = worse, with the verdict
    rule's word (near-lossless / significant / undecided at 4 %)."""
    key_cols = [c for c in keys if c in table.columns]
    header = [c.capitalize() for c in key_cols] + [_header(c) for c in value_cols]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(r[c]) for c in key_cols]
        for c in value_cols:
            v, se = r.get(c, math.nan), r.get(f"{c}_se", math.nan)
            if "drop_pct" in c and not (isinstance(v, float) and math.isnan(v)):
                cells.append(fmt(v, se) + f" ({stats.drop_level(v, se)})")
            else:
                cells.append(fmt(v, se))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, value_cols: Sequence[str] | None, out: Path, title: str,
                paper: pd.DataFrame | None = None, index: bool = False,
                keys: Sequence[str] = ("model", "setting", "method")) -> None:
    """tables/<name>.csv + .md, each written atomically (a temporary file renamed into place).
    With value_cols, the Markdown shows `value ± se` cells (table_markdown); with None, the
    frame as it is (3 significant digits), under `title`. With `paper`, the paper's printed
    rows follow ours in the .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out.with_suffix(".csv"), table.round(4).to_csv(index=index))
    if value_cols is None:
        md = (f"{title}\n\n" if title else "") + table.to_markdown(index=index, floatfmt=".3g") + "\n"
    else:
        md = table_markdown(table, value_cols, title, keys)
    if paper is not None:
        md += "\nThe paper's printed numbers (Lin, Xu et al. 2025), for comparison:\n\n"
        md += paper.to_markdown(index=False) + "\n"
    _atomic_write(out.with_suffix(".md"), md)


def write_text(path: Path, text: str) -> None:
    """A text output (e.g. tables/findings.md) written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, text)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- figures -----------------------------------------------------------------------------
def set_style() -> None:
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    mpl.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "svg.hashsalt": "dllmq", "pdf.compression": 6})


def model_slug(name: str) -> str:
    """A file-name part for a model: the last path component of a shipped name, local directory
    or Hub id ("GSAI-ML/LLaDA-8B-Base" -> "LLaDA-8B-Base")."""
    return str(name).rstrip("/").split("/")[-1]


def save_figure(fig, out: Path) -> list[Path]:
    """PNG + PDF with fixed metadata, so an unchanged figure is byte-identical on rerun."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in ((".png", {"Software": None}),
                      (".pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
        p = out.with_suffix(ext)
        tmp = p.with_name(p.stem + ".part" + ext)
        fig.savefig(tmp, metadata=meta)
        tmp.replace(p)
        paths.append(p)
    return paths


# ---- findings ----------------------------------------------------------------------------
HOLDS, FAILS, NOISE, MIXED = stats.HOLDS, stats.FAILS, stats.NOISE, "mixed"


@dataclass(frozen=True)
class Check:
    """One numeric sub-claim: `value` compared against `threshold` in direction `op`."""
    what: str
    value: float
    se: float
    op: str  # "<" or ">"
    threshold: float

    @property
    def verdict(self) -> str:
        return stats.verdict(self.value, self.se, self.op, self.threshold)

    def line(self) -> str:
        return f"{self.what}: {fmt(self.value, self.se, 2)} {self.op} {self.threshold:g} -> {self.verdict}"


def combine(checks: Iterable[Check], majority: bool = False) -> str:
    """All hold -> holds; all fail -> does not hold; all noise -> within noise; else mixed.
    With `majority` (claims about "most" cases): among the decided sub-claims (not within
    noise), more holding than failing -> holds, more failing -> does not hold, a tie -> mixed;
    when fewer than a third of the sub-claims are decided -> within noise."""
    vs = [c.verdict for c in checks]
    if not vs:
        return NOISE
    n_h, n_f = vs.count(HOLDS), vs.count(FAILS)
    if majority:
        if 3 * (n_h + n_f) < len(vs):
            return NOISE
        return HOLDS if n_h > n_f else FAILS if n_f > n_h else MIXED
    if n_h == len(vs):
        return HOLDS
    if n_f == len(vs):
        return FAILS
    if n_h == n_f == 0:
        return NOISE
    return MIXED


def plot_accuracy(df: pd.DataFrame, x_order: Sequence[str], hue: str, col: str, row: str | None = None,
                  x: str = "setting", ylabel: str = "accuracy (%)", connect: bool = True):
    """Points with +-1 se error bars: x = setting, one line per `hue` (connect=False: points
    only, for categorical x), one panel per `col` (and `row`). df columns: x, hue, col, [row],
    value (%), se (%)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cols = list(dict.fromkeys(df[col]))
    rows = list(dict.fromkeys(df[row])) if row else [None]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.4 * len(cols), 2.8 * len(rows)),
                             squeeze=False, sharey=False)
    hues = list(dict.fromkeys(df[hue]))
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues)), strict=False))
    pos = {v: i for i, v in enumerate(x_order)}
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i][j]
            sub = df[(df[col] == cv) & ((df[row] == rv) if row else True)]
            for k, h in enumerate(hues):
                d = sub[sub[hue] == h].copy()
                d = d[d[x].isin(pos)]
                if d.empty:
                    continue
                d["_x"] = d[x].map(pos) + (k - (len(hues) - 1) / 2) * 0.06
                d = d.sort_values("_x")
                ax.errorbar(d["_x"], d["value"], yerr=d["se"], marker="o", ms=4, capsize=2,
                            lw=1.2 if connect else 0, elinewidth=1.2, color=palette[h], label=h)
            ax.set_xticks(range(len(x_order)), x_order)
            ax.set_title(f"{rv} · {cv}" if row else str(cv), fontsize=9)
            ax.set_ylabel(ylabel if j == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax_row in axes:
        for ax in ax_row:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab, strict=True):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6),
               bbox_to_anchor=(0.5, 1.02), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def plot_drops(df: pd.DataFrame, x: str, hue: str, col: str, row: str | None = None,
               x_orders: Mapping[str, Sequence[str]] | None = None, threshold: float = 4.0,
               ylabel: str = "drop vs FP (%, + = worse)", panel_width: float = 2.4,
               panel_height: float = 2.2):
    """Relative drops against FP with their paired intervals (drop ± 2 se, `lo`/`hi` columns of
    `relative_drops`): points only (x is categorical, so no lines join them), hues dodged side
    by side, one panel per `col` (and `row`), every panel on the same y range, a line at 0 and a
    dashed line at the near-lossless threshold. Each panel shows only the x values it has data
    for, in the order `x_orders[col value]` (or of first appearance)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cols = list(dict.fromkeys(df[col]))
    rows = list(dict.fromkeys(df[row])) if row else [None]
    hues = list(dict.fromkeys(df[hue]))
    df = df[np.isfinite(df["lo"].astype(float)) & np.isfinite(df["hi"].astype(float))]  # FP at 0: no relative drop
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues)), strict=False))
    widths = [max(1, max(df[(df[col] == c) & ((df[row] == r) if row else True)][x].nunique() for r in rows))
              for c in cols]
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False, sharey=True,
                             figsize=(panel_width * len(cols) + 0.8,
                                      panel_height * len(rows) + 0.6),
                             gridspec_kw={"width_ratios": widths})
    lo, hi = (float(df["lo"].min()), float(df["hi"].max())) if len(df) else (0.0, threshold)
    pad = 0.05 * (max(hi, threshold) - min(lo, 0.0))
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            ax = axes[i][j]
            sub = df[(df[col] == cv) & ((df[row] == rv) if row else True)]
            order = [v for v in (x_orders or {}).get(cv, dict.fromkeys(df[df[col] == cv][x]))
                     if v in set(sub[x])]  # only this panel's x values: no empty slots
            pos = {v: k for k, v in enumerate(order)}
            here = [h for h in hues if h in set(sub[hue])]  # dodge among this panel's hues only
            dodge = 0.7 / max(1, len(here))
            for k, h in enumerate(here):
                d = sub[(sub[hue] == h) & sub[x].isin(pos)]
                if d.empty:
                    continue
                xs = d[x].map(pos) + (k - (len(here) - 1) / 2) * dodge
                ax.errorbar(xs, d["drop"], yerr=[d["drop"] - d["lo"], d["hi"] - d["drop"]], fmt="o",
                            ms=4, capsize=2, elinewidth=1.1, color=palette[h], label=str(h))
            ax.axhline(0, color="0.3", lw=0.8)
            ax.axhline(threshold, color="0.3", lw=0.8, ls="--")
            ax.set_xticks(range(len(order)), order, fontsize=8)
            ax.set_xlim(-0.6, len(order) - 0.4)
            ax.set_ylim(min(lo, 0.0) - pad, max(hi, threshold) + pad)
            ax.set_title(f"{rv} · {cv}" if row else str(cv), fontsize=9)
            ax.set_ylabel(ylabel if j == 0 else "")
            ax.grid(axis="x", visible=False)
    handles, labels = [], []
    for ax in axes.flat:
        for hh, ll in zip(*ax.get_legend_handles_labels(), strict=True):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if labels:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6),
                   bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
