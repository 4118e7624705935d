"""Tables, figures and the findings check: from a tidy results frame to tables/ and figures/.

The input everywhere is a pandas DataFrame with one row per (model, recipe, task):
columns `model, recipe, task, value, stderr` (value and stderr as fractions, as lm-eval
reports accuracy), produced by the results store. Tables print percentages, each number with
its standard error; averages and drops are recomputed here, never copied.

Degradation levels follow the paper (relative to full precision): negligible < 1 %,
moderate 1-4 %, significant > 4 %.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

FP_RECIPE = "fp16"  # the store's name for "not quantized" (dllmq.harness.NO_QUANT)
LEVELS = ((1.0, "negligible"), (4.0, "moderate"), (math.inf, "significant"))
NOISE_Z = 2.0  # a difference counts only beyond 2 standard errors

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


# ---- numbers with standard errors ---------------------------------------------------------
def mean_se(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """Mean of independent estimates and its standard error."""
    n = len(values)
    return sum(values) / n, math.sqrt(sum(s * s for s in ses)) / n


def rel_drop(q: float, q_se: float, fp: float, fp_se: float) -> tuple[float, float]:
    """Relative drop 100 * (fp - q) / fp (positive = worse) and its delta-method se."""
    if fp <= 0:
        return math.nan, math.nan
    d = 100.0 * (fp - q) / fp
    se = 100.0 * math.sqrt((q_se / fp) ** 2 + (q * fp_se / fp**2) ** 2)
    return d, se


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
    relative drop `<group>_drop_pct` (+ se) against the model's FP row."""
    labels = dict(labels or {})
    idx = df.set_index(["model", "recipe", "task"])
    rows = []
    for model in models:
        fp_avgs: dict[str, tuple[float, float]] = {}
        for recipe in [FP_RECIPE, *[r for r in recipes if r != FP_RECIPE]]:
            info = parse_recipe(recipe)
            row: dict = {"model": labels.get(model, model), "setting": info.setting,
                         "method": info.method, "recipe": recipe}
            complete = True
            for group, tasks in groups.items():
                vals, ses = [], []
                for t in tasks:
                    if (model, recipe, t) not in idx.index:
                        complete = False
                        row[t], row[f"{t}_se"] = math.nan, math.nan
                        continue
                    r = idx.loc[(model, recipe, t)]
                    v, s = 100 * float(r["value"]), 100 * float(r["stderr"])
                    row[t], row[f"{t}_se"] = v, s
                    vals.append(v)
                    ses.append(s)
                if len(vals) == len(tasks) and vals:
                    avg, avg_se = mean_se(vals, ses)
                    row[f"{group}_avg"], row[f"{group}_avg_se"] = avg, avg_se
                    if recipe == FP_RECIPE:
                        fp_avgs[group] = (avg, avg_se)
                        row[f"{group}_drop_pct"] = row[f"{group}_drop_pct_se"] = math.nan
                    elif group in fp_avgs:
                        d, dse = rel_drop(avg, avg_se, *fp_avgs[group])
                        row[f"{group}_drop_pct"], row[f"{group}_drop_pct_se"] = d, dse
            if complete or recipe == FP_RECIPE:
                rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame, value_cols: Sequence[str], title: str = "") -> str:
    """Markdown with `value ± se` cells; drops printed as negative percentages like the paper."""
    header = ["Model", "Setting", "Method", *value_cols]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [str(r["model"]), str(r["setting"]), str(r["method"])]
        for c in value_cols:
            v, se = r.get(c, math.nan), r.get(f"{c}_se", math.nan)
            if c.endswith("_drop_pct") and not (isinstance(v, float) and math.isnan(v)):
                cells.append(fmt(-v, se) + f" ({degradation_level(v)})")
            else:
                cells.append(fmt(v, se))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, value_cols: Sequence[str], out: Path, title: str,
                paper: pd.DataFrame | None = None) -> None:
    """tables/<name>.csv + .md; with `paper`, the paper's printed rows follow ours in the .md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out.with_suffix(".csv"), table.round(4).to_csv(index=False))
    md = table_markdown(table, value_cols, title)
    if paper is not None:
        md += "\nThe paper's printed numbers (Lin, Xu et al. 2025), for comparison:\n\n"
        md += paper.to_markdown(index=False) + "\n"
    _atomic_write(out.with_suffix(".md"), md)


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
HOLDS, FAILS, NOISE, MIXED = "holds", "does not hold", "within noise", "mixed"


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
        if math.isnan(self.value):
            return NOISE
        lo, hi = self.value - NOISE_Z * self.se, self.value + NOISE_Z * self.se
        if self.op == "<":
            return HOLDS if hi < self.threshold else FAILS if lo > self.threshold else NOISE
        return HOLDS if lo > self.threshold else FAILS if hi < self.threshold else NOISE

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
                  x: str = "setting", ylabel: str = "accuracy (%)"):
    """Points with +-1 se error bars: x = setting, one line per `hue`, one panel per `col` (and
    `row`). df columns: x, hue, col, [row], value (%), se (%)."""
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
                            lw=1.2, color=palette[h], label=h)
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
