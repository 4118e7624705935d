"""What the notebooks share: preset parameters, paths relative to the repo root, and model
roles. Kept small: anything a notebook needs that is longer than a few lines lives here or in
the module it belongs to."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
PARAMS_DIR = REPO_ROOT / "params"


def repo_path(p: str | Path) -> Path:
    """A path from the params files, relative to the repo root (absolute paths kept)."""
    p = Path(p)
    return p if p.is_absolute() else REPO_ROOT / p


def load_params(preset: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """params/<preset>.yaml. A preset with `extends: other` starts from `other`'s params and
    replaces the top-level keys it sets (a whole `tasks` or `beyond` block, not a merge)."""
    path = PARAMS_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no preset {preset!r} (params/{preset}.yaml); known presets: {known}")
    with open(path) as f:
        params = yaml.safe_load(f)
    base = params.pop("extends", None)
    if base is None:
        return params
    if base in (*_seen, preset):
        raise ValueError(f"params/{preset}.yaml: `extends: {base}` makes a cycle ({' -> '.join((*_seen, preset, base))})")
    return {**load_params(base, (*_seen, preset)), **params}


def setup_notebook() -> None:
    """What every notebook does first: the figure style, and known noise silenced (tqdm's
    "IProgress not found" warning where ipywidgets is missing, lm-eval's per-task info lines
    such as "Custom kwargs can be passed", transformers' advisory warnings)."""
    import warnings

    from tqdm import TqdmExperimentalWarning, TqdmWarning

    from .report import set_style

    set_style()
    warnings.filterwarnings("ignore", category=TqdmWarning)
    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
    for name in ("lm_eval", "lm-eval", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def output_dirs(params: dict[str, Any] | str) -> tuple[Path, Path]:
    """(figures/, tables/) of a preset, created: params' `figures_dir` and `tables_dir` if set,
    else figures/ and tables/ under its `out_dir` (a bare string is taken as the out_dir)."""
    p = {"out_dir": params} if isinstance(params, str) else params
    root = repo_path(p["out_dir"])
    figs = repo_path(p["figures_dir"]) if p.get("figures_dir") else root / "figures"
    tabs = repo_path(p["tables_dir"]) if p.get("tables_dir") else root / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    return figs, tabs


# ---- running the grid behind a notebook ----------------------------------------------------
def task_specs(params: dict[str, Any], categories) -> list[dict[str, Any]]:
    """The params' tasks of the given categories as sweep task entries."""
    out = []
    for cat in categories:
        for t in params["tasks"][cat]:
            out.append({"task": t["task"], "settings": dict(t.get("settings", {}))})
    return out


def with_limits(params: dict[str, Any], limits: dict[str, int | None]) -> dict[str, Any]:
    """params with the item limit of the named tasks replaced ({task: limit}); the other tasks
    and params untouched. An unknown task name is an error (a typo would silently do nothing)."""
    known = {t["task"] for ts in params["tasks"].values() for t in ts}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise ValueError(f"limits name tasks the preset does not run: {', '.join(unknown)} "
                         f"(its tasks: {', '.join(sorted(known))})")
    tasks = {cat: [{**t, "settings": {**t.get("settings", {}), "limit": limits[t["task"]]}}
                   if t["task"] in limits else t for t in ts]
             for cat, ts in params["tasks"].items()}
    return {**params, "tasks": tasks}


def category_of(params: dict[str, Any]) -> dict[str, str]:
    return {t["task"]: cat for cat, ts in params["tasks"].items() for t in ts}


def _model_type(name: str) -> str:
    from .models.io import read_config, resolve

    return read_config(resolve(name)).model_type


def role_tasks(params: dict[str, Any], role: str, categories=("qa", "math", "code")) -> list[dict[str, Any]]:
    """The categories' task entries as one role evaluates them: the chat template as a
    per-task setting, Dream without LLaDA's sampler-only settings, then params'
    `family_settings` ({family: {task: settings}}) over the task settings."""
    from .harness import foreign_settings
    from .models import arch_spec

    family = arch_spec(_model_type(params["models"][role])).family
    overrides = params.get("family_settings", {}).get(family, {})
    chat_cats = set(params.get("chat_template", {}).get(role, []))
    tasks = []
    for cat in categories:
        for t in task_specs(params, [cat]):
            t["settings"]["apply_chat_template"] = cat in chat_cats
            if family == "dream":
                t["settings"] = {k: v for k, v in t["settings"].items()
                                 if k not in foreign_settings("dream")}
            t["settings"].update(overrides.get(t["task"], {}))
            tasks.append(t)
    return tasks


def study_grid(params: dict[str, Any], role: str, recipes, categories=("qa", "math", "code"),
               axes: dict[str, list] | None = None):
    """The sweep grid `run_study` evaluates for one role: its model x recipes x the categories'
    tasks as `role_tasks` sets them (one sweep per role, with the chat template a per-task
    setting, so each recipe is quantized once for all of the role's tasks)."""
    from .sweep import parse_grid

    return parse_grid({
        "models": [params["models"][role]], "recipes": list(recipes),
        "tasks": role_tasks(params, role, categories),
        "seeds": list(params.get("seeds", [0])),
        "settings": {"limit": params["limit"]},
        "include_path": [str(repo_path(p)) for p in params.get("include_path", [])],
        "include_defaults": False, "calib": dict(params["calib"]), "device": params["device"],
        "confirm_run_unsafe_code": True,  # code tasks run generated programs in a sandbox
        "axes": dict(axes or {}),
    }, f"{params['preset']} preset, {role}")


_IMPORTED: set[tuple[str, str, int, int]] = set()


def import_store_bundle(params: dict[str, Any]) -> tuple[int, int] | None:
    """Import params' `store_bundle` (`dllmq.bundle`: a committed file of a run's cells) into
    params' store, once per process and bundle file: (added, already present), or None when
    the preset names no bundle, the file is not there (a run that has not exported one), or
    this process imported that file into that store already."""
    from .bundle import import_cells

    if not params.get("store_bundle"):
        return None
    bundle = repo_path(params["store_bundle"])
    if not bundle.is_file():
        return None
    st, store = bundle.stat(), repo_path(params["store"])
    memo = (str(store), str(bundle), st.st_size, st.st_mtime_ns)
    if memo in _IMPORTED:
        return None
    got = import_cells(store, bundle)
    _IMPORTED.add(memo)
    if got[0]:
        log.info("%s: %d cells imported into %s (%d already there)", params["store_bundle"],
                 got[0], params["store"], got[1])
    return got


def run_study(params: dict[str, Any], roles, recipes, categories=("qa", "math", "code"),
              progress: bool = True, axes: dict[str, list] | None = None, compute: bool = True,
              missing_ok: bool = False):
    """Evaluate every (role's model) x recipe x task of the categories into the preset's store,
    skipping stored cells; returns the tidy frame (model, role, recipe, task, category, metric,
    value, stderr) of exactly these cells, averaged over seeds. `axes` adds one cell per value
    of a model setting (e.g. {"steps": [8, 16]}); their values appear as extra columns.

    The chat template is applied to the categories params["chat_template"][role] lists (the
    instruct model's generation tasks), never guessed. Dream models get the task settings
    without LLaDA's sampler-only keys (block_length, remasking, cfg_scale). With
    params["workers"] > 1 the missing cells are computed by local worker processes first.
    With `compute=False` nothing is computed: a cell missing from the store is an error, or
    with `missing_ok` left out of the frame (logged: for judging a run that has not finished)."""
    import pandas as pd

    from .store import Store
    from .sweep import run_sweep

    path = repo_path(params["store"])  # opened only once a grid passed validation
    import_store_bundle(params)
    if not compute and not path.is_file():
        raise ValueError(f"{params['store']} does not exist; run `make reproduce "
                         f"PRESET={params['preset']}` first")
    cat_of, metric_of = category_of(params), params["metrics"]
    rows = []
    for role in roles:
        grid = study_grid(params, role, recipes, categories, axes)
        if not compute:
            store = Store(path)
            rows += result_rows(store, _stored_results(grid, store, params, missing_ok), role, cat_of,
                                metric_of, axes)
            continue
        _require_device(grid, path, params)
        workers = int(params.get("workers", 1))
        if workers > 1:
            _run_workers(grid, path, workers, params, progress)
        report = run_sweep(grid, path, progress=progress)
        rows += result_rows(Store(path), report.done, role, cat_of, metric_of, axes)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return average_seeds(df, ["model", "role", "recipe", "task", "category", "metric", *(axes or {})])


def _require_device(grid, path: Path, params: dict[str, Any]) -> None:
    """Before any worker starts: a CUDA preset on a machine without CUDA is one error line when
    cells are missing from the store (none missing: the stored cells are only read)."""
    import torch

    from .store import Store

    if not str(params.get("device") or "").startswith("cuda") or torch.cuda.is_available():
        return
    cells, results = _keyed_results(grid, Store(path) if path.is_file() else None)
    missing = [c for c, r in zip(cells, results, strict=True) if r is None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(cells)} cells (e.g. {missing[0].label()}) are not in "
                         f"{params['store']} and preset {params['preset']!r} runs them on "
                         f"{params['device']}, which this machine does not have: run it on a GPU; "
                         f"judge the stored cells with `python tools/decided_share.py --preset "
                         f"{params['preset']} --present`")


def _keyed_results(grid, store) -> tuple[list, list]:
    """(the grid's keyed cells, the store's result of each or None), in grid order; no store:
    every result None."""
    from .sweep import keyed_cells, task_manager, validate

    cells = keyed_cells(grid, validate(grid, task_manager(grid)), cache=store)
    return cells, [None if store is None else store.get(c) for c in cells]


def _stored_results(grid, store, params: dict[str, Any], missing_ok: bool = False) -> list:
    """The stored results of a grid's cells, in grid order; a missing cell is an error (with
    `missing_ok`: left out, and logged)."""
    cells, results = _keyed_results(grid, store)
    missing = [c for c, r in zip(cells, results, strict=True) if r is None]
    if missing and missing_ok:
        log.warning("%d of %d cells not stored, left out: %s", len(missing), len(cells),
                    "; ".join(c.label() for c in missing))
        return [r for r in results if r is not None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(cells)} cells of {params['models']} are not in "
                         f"{params['store']} (e.g. {missing[0].label()}); run `make reproduce "
                         f"PRESET={params['preset']}` first")
    return results


def findings_frame(params: dict[str, Any], progress: bool = False, compute: bool = True,
                   missing_ok: bool = False):
    """The frame notebook 04 judges the findings from: both LLaDA roles x every recipe x every
    category; Dream with the weight-activation recipes on every category and the weight-only
    ones on QA (the paper's Table 5), as `run_study` returns them."""
    import pandas as pd

    wo, wa = params["recipes_weight_only"], params["recipes_weight_act"]
    parts = [run_study(params, ["llada_base", "llada_instruct"], ["fp16", *wo, *wa],
                       progress=progress, compute=compute, missing_ok=missing_ok),
             run_study(params, ["dream_base"], ["fp16", *wa], progress=progress, compute=compute,
                       missing_ok=missing_ok),
             run_study(params, ["dream_base"], wo, categories=("qa",), progress=progress,
                       compute=compute, missing_ok=missing_ok)]
    return pd.concat(parts, ignore_index=True)


def _run_workers(grid, store_path, workers: int, params: dict[str, Any], progress: bool) -> None:
    """The grid's missing cells computed by `workers` local worker processes
    (`dllmq.executors.run_local`): on CPU each with params["threads"] torch threads (a tiny
    model's forward gains little from a second thread: two one-thread workers ran notebook 01 of
    the default preset 1.2x faster than one two-thread process); on one GPU,
    all on it (a tiny model leaves an H200 mostly idle, and its code execution and lm-eval work
    run on the CPU). `run_local` starts none when the store holds every cell."""
    from .executors import run_local

    devices = None
    if params["device"] != "cpu":
        index = params["device"].partition(":")[2] or "0"
        devices = [index] * workers
    failed = run_local(grid, store_path, workers, progress=progress, devices=devices,
                       threads=params.get("threads"))
    if failed:
        raise RuntimeError(f"{failed} of {workers} workers failed (their log is above); the "
                           "finished cells are stored: run the notebook again to resume")


def result_rows(store, results, role: str, cat_of: dict[str, str], metric_of: dict[str, str],
                axes=None) -> list[dict[str, Any]]:
    """One row per stored result with the params' metric and the cell's per-item scores (read
    from the store's per-sample records; an error if a cell has none)."""
    rows = []
    for r in results:
        picked = metric_key(r.metrics, metric_of[r.cell.task], r.cell.task)
        m = r.metrics[picked]
        scores = item_scores(store.samples(r.cell), picked, r.cell)
        mean = sum(scores.values()) / len(scores)
        if abs(mean - m["value"]) > 1e-6:  # the per-item records are not what the metric averaged
            raise ValueError(f"cell {r.cell}: the mean of its {len(scores)} per-item {picked} scores is "
                             f"{mean:.6f}, the stored metric {m['value']:.6f}; the samples do not belong "
                             "to this metric (delete the cell and evaluate it again)")
        rows.append({"model": r.cell.model, "role": role, "recipe": r.cell.recipe, "task": r.cell.task,
                     "category": cat_of[r.cell.task], "metric": picked, "seed": r.cell.seed,
                     **{k: r.cell.settings.get(k) for k in (axes or {})},
                     "value": m["value"], "stderr": m["stderr"] or 0.0, "scores": scores})
    return rows


def metric_key(metrics, want: str, task: str) -> str:
    """The one stored metric name that params' `metrics` entry `want` names ("acc" matches
    "acc,none"); a KeyError naming the task otherwise."""
    picked = [k for k in metrics if k == want or k.startswith(want + ",")]
    if len(picked) != 1:
        raise KeyError(f"task {task} has metrics {sorted(metrics)}; params 'metrics' names "
                       f"{want!r}, which matches {len(picked)} of them")
    return picked[0]


def item_scores(samples, metric: str, cell=None) -> dict[tuple[int, int], float]:
    """Per-item scores of one cell from its stored per-sample records: {(doc_id, seed): score}
    for the metric ("acc,none" = metric acc under filter none). A cell with no per-item record
    of that metric is an error: comparisons are paired and never fall back to unpaired."""
    name, _, filt = metric.partition(",")
    filt = filt or "none"
    seed = getattr(cell, "seed", 0)
    out: dict[tuple[int, int], float] = {}
    for s in samples:
        if s.get("filter", "none") != filt or name not in s:
            continue
        key = (int(s["doc_id"]), seed)
        if key in out:
            raise ValueError(f"cell {cell}: two per-item records of {metric} for document {key[0]}")
        out[key] = float(s[name])
    if not out:
        raise ValueError(f"cell {cell} has no per-item samples of {metric} in the store; paired "
                         "statistics need them: delete the cell and evaluate it again")
    return out


def average_seeds(df, keys):
    """One row per `keys` group: the per-item scores of every seed together ({(doc, seed):
    score}), value = their mean and stderr = the sample standard error over items (seeds of one
    document averaged first, so a document counts once)."""
    import numpy as np
    import pandas as pd

    rows = []
    for k, g in df.groupby(keys, sort=False, dropna=False):
        scores: dict = {}
        for s in g["scores"]:
            scores.update(s)
        by_doc: dict[int, list[float]] = {}
        for (doc, _seed), v in scores.items():
            by_doc.setdefault(doc, []).append(v)
        x = np.array([sum(v) / len(v) for v in by_doc.values()])
        se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
        rows.append({**dict(zip(keys, k, strict=True)), "value": float(x.mean()), "stderr": se,
                     "n": len(x), "scores": scores})
    return pd.DataFrame(rows)


# ---- the paper's tables as data ---------------------------------------------------------------
PAPER_TABLES: dict[str, dict[str, Any]] = {
    "table1_weight_only_general": {"title": "Table 1: weight-only quantization, general (QA) tasks",
                                   "roles": ("llada_base", "llada_instruct"), "recipes": "recipes_weight_only",
                                   "groups": ("qa",)},
    "table2_weight_act_general": {"title": "Table 2: weight-activation quantization, general (QA) tasks",
                                  "roles": ("llada_base", "llada_instruct"), "recipes": "recipes_weight_act",
                                  "groups": ("qa",)},
    "table3_weight_only_math_code": {"title": "Table 3: weight-only quantization, math and code",
                                     "roles": ("llada_base", "llada_instruct"), "recipes": "recipes_weight_only",
                                     "groups": ("math", "code")},
    "table4_weight_act_math_code": {"title": "Table 4: weight-activation quantization, math and code",
                                    "roles": ("llada_base", "llada_instruct"), "recipes": "recipes_weight_act",
                                    "groups": ("math", "code")},
    "table5_dream_weight_only_general": {"title": "Table 5: Dream, weight-only quantization, general (QA) tasks",
                                         "roles": ("dream_base",), "recipes": "recipes_weight_only",
                                         "groups": ("qa",)},
    # beyond the paper: Dream under weight-activation quantization (the paper left it out)
    "table6_dream_weight_act_all": {"title": "Beyond the paper: Dream, weight-activation quantization, all categories",
                                    "roles": ("dream_base",), "recipes": "recipes_weight_act",
                                    "groups": ("qa", "math", "code")},
}
PAPER_TABLES_ENV = "DLLMQ_PAPER_TABLES"  # the folder of the paper's printed tables (CSVs)


def paper_table_dir(params: dict[str, Any]) -> Path | None:
    """Where the paper's printed tables are: params `paper_tables`, else $DLLMQ_PAPER_TABLES;
    None when neither is set (no default outside the package)."""
    where = params.get("paper_tables") or os.environ.get(PAPER_TABLES_ENV)
    return repo_path(where) if where else None
PAPER_PRINTED = ("table1_weight_only_general", "table2_weight_act_general",  # table6 is ours
                 "table3_weight_only_math_code", "table4_weight_act_math_code",
                 "table5_dream_weight_only_general")


def write_paper_table(name: str, df, params: dict[str, Any], tab_dir: Path, with_paper: bool | None = None):
    """tables/<name>.csv/.md in the paper's layout from the tidy frame; in the `paper` preset
    (or with params `paper_numbers: true`, or with_paper=True) the paper's printed numbers
    follow ours in the Markdown."""
    import pandas as pd

    from .report import paper_table, write_table

    spec = PAPER_TABLES[name]
    models = [params["models"][r] for r in spec["roles"] if r in params["models"]]
    groups = {g: [t["task"] for t in params["tasks"][g]] for g in spec["groups"]}
    table = paper_table(df, models, params[spec["recipes"]], groups)
    cols = [t for g in groups.values() for t in g]
    for g in groups:
        cols += [f"{g}_avg", f"{g}_drop_pct"]
    paper = None
    if with_paper if with_paper is not None else params.get("paper_numbers", params["preset"] == "paper"):
        where = paper_table_dir(params)
        src = where / f"{name}.csv" if where else None
        paper = pd.read_csv(src) if src is not None and src.is_file() else None
        if paper is None and name in PAPER_PRINTED:
            log.warning("%s is written without the paper's numbers: %s (set %s or params "
                        "`paper_tables` to the folder of the paper's table CSVs)", name,
                        f"{src} not found" if src else "no folder set", PAPER_TABLES_ENV)
    write_table(table, cols, tab_dir / name, spec["title"], paper=paper)
    return table


def write_pivot(df, columns: str, out: Path, caption: str):
    """Accuracy (%) with recipe labels as rows and one column per value of `columns` (plus its
    `_se` column), to out.csv and out.md (report.write_table, `value ± se` cells); returns the
    pivot of values."""
    from .report import write_table

    pivot = df.pivot_table(index="label", columns=columns, values="value", sort=False)
    se = df.pivot_table(index="label", columns=columns, values="se", sort=False)
    cols = [str(c) for c in pivot.columns]
    table = pivot.set_axis(cols, axis=1).join(se.set_axis([f"{c}_se" for c in cols], axis=1)).reset_index()
    write_table(table, cols, out, caption + " (± standard error over items)", keys=("label",))
    return pivot.round(1)


def packed_sizes(model_name: str, recipes, calib: dict[str, Any], device: str, seed: int = 0):
    """Bytes on disk of a model's saved weights, unquantized and under each recipe (packed
    low-bit layout, `quant.export.save_quantized`); one row per recipe: recipe (the FP row named
    by the dtype it is saved in, e.g. "FP (float32)"), MB, and the ratio to the FP row."""
    import tempfile

    import pandas as pd

    from . import load, load_tokenizer, save_pretrained
    from .data import calibration_set
    from .quant import quantize_
    from .quant.export import save_quantized
    from .report import FP_RECIPE

    tok = load_tokenizer(model_name)
    batches = calibration_set(tok, calib["source"], calib["samples"], calib["seqlen"], seed=seed)
    rows = []
    for recipe in recipes:
        model = load(model_name, device=device)
        with tempfile.TemporaryDirectory() as d:
            if recipe == FP_RECIPE:
                dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
                save_pretrained(model, d)
                label = f"FP ({dtype})"
            else:
                quantize_(model, recipe, batches, progress=False)
                save_quantized(model, d)
                label = recipe
            size = sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
        rows.append({"recipe": label, "MB": size / 1e6})
        del model
    out = pd.DataFrame(rows)
    out["vs FP"] = out["MB"] / out["MB"].iloc[0]
    return out


def outlier_stats(params: dict[str, Any]):
    """Notebook 00's measurement: for each of params' `outlier_models`, the activation
    statistics of every linear input at `outlier_layers` (`outliers.stats_table`) on clean text
    and, for a masked-diffusion model, on text with `outlier_mask_ratio` of its tokens masked;
    plus the last layer's q/o/gate/down inputs of one sequence for Figure 1.
    Returns (frame: model, role, input, then stats_table's columns; {model: captured inputs})."""
    import pandas as pd
    import torch

    from . import load, load_tokenizer
    from .data import calibration_set
    from .outliers import capture_linear_inputs, mask_tokens, stats_table

    rows, acts = [], {}
    seed = params["seed"]
    for role in params["outlier_models"]:
        name = params["models"][role]
        model = load(name, device=params["device"])
        tok = load_tokenizer(name)
        ids = calibration_set(tok, params["calib_source"], params["outlier_samples"], params["outlier_seqlen"],
                              seed=seed, split=params["calib_split"]).input_ids
        layers = [i for i in params["outlier_layers"] if i < len(model.blocks)]
        inputs = {"clean": ids}
        if not model.config.causal:  # an AR model never sees mask tokens
            ratio = params["outlier_mask_ratio"]
            g = torch.Generator().manual_seed(seed)
            inputs[f"masked {ratio:.0%}"] = mask_tokens(ids, ratio, model.config.mask_token_id, g)
        for kind, x in inputs.items():
            rows += [{"model": name, "role": role, "input": kind, **r} for r in stats_table(model, [x], layers)]
        acts[name] = capture_linear_inputs(model, ids[:1], [layers[-1]], ("q", "o", "gate", "down"))
        del model
    out = pd.DataFrame(rows)
    out["top_channels"] = out["top_channels"].map(lambda c: " ".join(map(str, c)))
    return out, acts


def calibration_spread(params: dict[str, Any], progress: bool = False):
    """params' `calib_seeds` block (role, recipes, seeds, optional categories): each recipe
    quantized once per calibration seed and evaluated; returns (drops: one row per seed x
    recipe x category, `report.relative_drops` columns + calib_seed; summary: per recipe x
    category the mean drop over seeds, the sd of the drops over seeds (calibration spread), the
    median paired se over items (item spread) and their ratio)."""
    import pandas as pd

    from .report import relative_drops

    cs = params["calib_seeds"]
    cats = tuple(cs.get("categories", ("qa", "math", "code")))
    parts = []
    for seed in cs["seeds"]:
        p = {**params, "calib": {**params["calib"], "seed": int(seed)}}
        df = run_study(p, [cs["role"]], ["fp16", *cs["recipes"]], categories=cats, progress=progress)
        parts.append(relative_drops(df, by="category").assign(calib_seed=int(seed)))
    drops = pd.concat(parts, ignore_index=True)
    g = drops.groupby(["label", "category"], sort=False)
    summary = g.agg(seeds=("drop", "size"), mean_drop=("drop", "mean"), calib_sd=("drop", "std"),
                    item_se=("se", "median")).reset_index()
    summary["calib_sd / item_se"] = summary["calib_sd"] / summary["item_se"]
    return drops, summary
