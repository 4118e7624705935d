"""Sweeps: a grid of models x recipes x tasks x seeds x settings, run into the results store.

    # grid.yaml
    store: results/embedded.sqlite      # relative to this file; `--store` overrides
    models: [tiny-llada-instruct]
    recipes: [fp16, w4a16g128-gptq]     # fp16 = not quantized
    tasks:                              # names, or {task: name, settings: {...}} per task
      - dllmq_qa
      - {task: gsm8k, settings: {num_fewshot: 4, gen_length: 256, steps: 256, block_length: 32}}
    seeds: [0, 1]
    settings: {limit: 100, mc_num: 32}  # every cell
    axes: {steps: [64, 128]}            # optional: one cell per value (cartesian product)
    include_path: [tasks/]              # optional lm-eval task folders (relative to this file)
    include_defaults: true              # all of lm-eval's tasks (dllmq's own always)
    data_dir: /data/benchmarks          # optional: local benchmark files (else $DLLMQ_DATA_DIR)
    confirm_run_unsafe_code: false      # code tasks execute generated programs: say so here
    calib: {samples: 16, w4a16g128-awq: {seqlen: 256}}   # optional; default: each recipe's own
                                        # (plain keys: every recipe; a recipe's entry: that one)
    device: cpu                         # optional
    shard_size: 256                     # optional: split cells of more items into item ranges

`load_grid` checks the file's shape, `validate` checks it against the world (tasks exist,
recipes exist, local data files exist, generation fits each model's context, sampler settings
are valid for each architecture); both raise `GridError` with one line and write nothing.
`keyed_cells` gives every cell its full key (the calibration `harness.resolve_calibration`
resolves for the recipe, the checkpoint's content fingerprint, the task's config and documents,
device and dtype, the dllmq and lm-eval versions: `dllmq.store`, `dllmq.fingerprint`).
`run_sweep` evaluates every cell missing from the store: it claims the cell in the store first
(so any number of sweeps and workers on one store split the grid, see `dllmq.store` and
`dllmq.executors`), the model is loaded and quantized with exactly the key's calibration once
per model x recipe (only if one of its cells is missing; cached next to the store in the
export format for other workers), each cell is one `simple_evaluate` call on one task,
committed to the store when it completes.

Shards: with `shard_size` (default none: the unit of work is the cell, which is right on the
CPU default preset), a cell of more than shard_size items (lm-eval documents, after `limit`)
is split into item ranges [0, shard_size), [shard_size, 2 shard_size), ...; each shard is a
unit of work claimed, leased, stored and resumed like a cell (a store row keyed by the cell's
key plus its range, `Store.results` leaves shard rows out), and the cell's row (metrics,
stderrs, every item's sample) is assembled from its shards once all are stored
(`assemble`). lm-eval still builds every request of the task, so few-shot contexts are those
of the whole task, and the harness computes only the shard's documents
(`DLLMEvalLM.for_docs`), batching and seeding per block of `doc_block` documents: with
shard_size a multiple of doc_block, a sharded cell is bit-identical on CPU to the same cell
run whole (tests/test_sweep.py). A cell's metrics are recomputed from its items with
lm-eval's own `mean` and `mean_stderr`, so only tasks whose every metric is a mean of
per-item scores can be sharded (not perplexities, not groups with aggregate metrics): others
are refused in one line before any work.

Cell settings are the grid's settings, the task's and the axis values, as given (defaults are
not filled in). The cell's seed seeds the model's
Monte Carlo and sampling draws; lm-eval's own seeds (few-shot order) stay at their defaults,
so prompts are the same for every seed. A cell's model settings are explicit model args of
`DLLMEvalLM`, so they win over the task's YAML and the paper's per-task settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .harness import (
    NO_QUANT,
    SETTING_NAMES,
    EvalSettings,
    check_calibration_override,
    check_sampler,
    sampler_config,
    task_defaults,
)
from .store import Cell, Result, Store
from .tasks.lm_eval import UnknownTaskError, check_task_names

log = logging.getLogger(__name__)

EVAL_KEYS = ("limit", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn")
SETTING_KEYS = EVAL_KEYS + SETTING_NAMES
GRID_KEYS = ("store", "models", "recipes", "tasks", "seeds", "settings", "axes", "include_path",
             "include_defaults", "data_dir", "confirm_run_unsafe_code", "calib", "device", "dtype",
             "shard_size")
CALIB_KEYS = ("source", "samples", "seqlen", "seed")


class GridError(ValueError):
    """A grid that cannot run; the message is one line naming the problem."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    recipes: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    seeds: tuple[int, ...] = (0,)
    settings: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, tuple] = field(default_factory=dict)
    store: Path | None = None
    include_path: tuple[Path, ...] = ()
    include_defaults: bool = True
    data_dir: Path | None = None
    confirm_run_unsafe_code: bool = False
    calib: Mapping[str, Any] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    shard_size: int | None = None  # split cells of more items into shards of this many

    def cells(self) -> list[Cell]:
        """All cells, grouped by model then recipe (the order they run in)."""
        names = list(self.axes)
        combos = list(itertools.product(*(self.axes[n] for n in names))) or [()]
        out = []
        for model, recipe, task in itertools.product(self.models, self.recipes, self.tasks):
            for combo in combos:
                settings = {**self.settings, **task.settings, **dict(zip(names, combo, strict=True))}
                out.extend(Cell(model, recipe, task.name, settings, seed) for seed in self.seeds)
        return out


# ---- reading and checking a grid --------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise GridError(msg)


def _str_list(d: Mapping, key: str, where: str) -> tuple[str, ...]:
    v = d[key]
    v = [v] if isinstance(v, str) else v
    _need(isinstance(v, list) and v and all(isinstance(x, str) and x for x in v),
          f"{where}: `{key}` must be a non-empty list of names")
    _need(len(set(v)) == len(v), f"{where}: `{key}` lists a name twice")
    return tuple(v)


def _settings(d: Any, where: str) -> dict[str, Any]:
    _need(isinstance(d, dict), f"{where}: settings must be a mapping of name: value")
    unknown = sorted(set(d) - set(SETTING_KEYS))
    _need(not unknown, f"{where}: unknown setting(s) {', '.join(map(str, unknown))}; valid: "
                       f"{', '.join(SETTING_KEYS)}")
    for k, v in d.items():
        _need(v is None or isinstance(v, bool | int | float | str),
              f"{where}: setting {k} must be a single value, got {type(v).__name__} "
              "(put value lists under `axes`)")
    return dict(d)


def parse_grid(raw: Any, where: str = "grid", base: Path | None = None) -> Grid:
    """A Grid from a parsed YAML mapping; relative paths are resolved against `base`."""
    _need(isinstance(raw, dict), f"{where}: the grid must be a YAML mapping with keys "
                                 f"{', '.join(GRID_KEYS)}")
    unknown = sorted(set(map(str, raw)) - set(GRID_KEYS))
    _need(not unknown, f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(GRID_KEYS)}")
    for key in ("models", "recipes", "tasks"):
        _need(key in raw, f"{where}: missing `{key}`")
    base = base or Path.cwd()
    tasks = []
    tlist = raw["tasks"] if isinstance(raw["tasks"], list) else [raw["tasks"]]
    _need(bool(tlist), f"{where}: `tasks` is empty")
    for t in tlist:
        if isinstance(t, str) and t:
            tasks.append(TaskSpec(t))
            continue
        _need(isinstance(t, dict) and isinstance(t.get("task"), str) and set(t) <= {"task", "settings"},
              f"{where}: a task is a name or {{task: name, settings: {{...}}}}, got {t!r}")
        tasks.append(TaskSpec(t["task"], _settings(t.get("settings", {}), f"{where}: task {t['task']}")))
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    _need(isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)
          and len(set(seeds)) == len(seeds), f"{where}: `seeds` must be a list of distinct integers")
    axes = raw.get("axes") or {}
    _need(isinstance(axes, dict), f"{where}: `axes` must map a setting to a list of values")
    _settings({k: None for k in axes}, f"{where}: axes")
    for k, v in axes.items():
        _need(isinstance(v, list) and v and len(set(map(json.dumps, v))) == len(v),
              f"{where}: axis {k} must be a non-empty list of distinct values")
    calib = raw.get("calib") or {}
    try:
        check_calibration_override(calib, f"{where}: calib")
    except ValueError as e:
        raise GridError(str(e)) from None
    inc = raw.get("include_path") or []
    inc = [inc] if isinstance(inc, str) else inc
    _need(isinstance(inc, list) and all(isinstance(p, str) for p in inc),
          f"{where}: `include_path` must be a folder or a list of folders")
    include = tuple((base / p) if not Path(p).is_absolute() else Path(p) for p in inc)
    for p in include:
        _need(p.is_dir(), f"{where}: include_path {p} is not a directory")
    store = raw.get("store")
    _need(store is None or isinstance(store, str), f"{where}: `store` must be a file path")
    inc_def = raw.get("include_defaults", True)
    unsafe = raw.get("confirm_run_unsafe_code", False)
    _need(isinstance(inc_def, bool) and isinstance(unsafe, bool),
          f"{where}: `include_defaults` and `confirm_run_unsafe_code` must be true or false")
    data_dir = raw.get("data_dir")
    _need(data_dir is None or isinstance(data_dir, str), f"{where}: `data_dir` must be a folder")
    if data_dir is not None:
        data_dir = base / data_dir if not Path(data_dir).is_absolute() else Path(data_dir)
        _need(data_dir.is_dir(), f"{where}: data_dir {data_dir} is not a directory")
    shard_size = raw.get("shard_size")
    _need(shard_size is None or (type(shard_size) is int and shard_size >= 1),
          f"{where}: `shard_size` must be a positive number of items (or absent: no shards)")
    return Grid(
        models=_str_list(raw, "models", where), recipes=_str_list(raw, "recipes", where),
        tasks=tuple(tasks), seeds=tuple(seeds),
        settings=_settings(raw.get("settings") or {}, f"{where}: settings"),
        axes={k: tuple(v) for k, v in axes.items()},
        store=None if store is None else (base / store if not Path(store).is_absolute() else Path(store)),
        include_path=include, include_defaults=inc_def, data_dir=data_dir,
        confirm_run_unsafe_code=unsafe, calib=dict(calib),
        device=raw.get("device"), dtype=raw.get("dtype"), shard_size=shard_size)


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    _need(path.is_file(), f"grid file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise GridError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', e)})") from None
    return parse_grid(raw, str(path), path.parent.resolve())


def task_manager(grid: Grid):
    """The one lm-eval TaskManager of dllmq (`dllmq.tasks.lm_eval.task_manager`) for a grid: its
    include_path folders, include_defaults and data_dir."""
    from .tasks.lm_eval import LocalDataError
    from .tasks.lm_eval import task_manager as lm_task_manager

    try:
        return lm_task_manager(data_dir=grid.data_dir, include_defaults=grid.include_defaults,
                               include_path=grid.include_path)
    except LocalDataError as e:
        raise GridError(str(e)) from None


def _task_config(tm, name: str) -> dict[str, Any]:
    """The task's config as lm-eval indexed it (includes resolved; empty for groups/tags)."""
    entry = tm.task_index.get(name)
    cfg = getattr(entry, "cfg", None)
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _data_files(cfg: Mapping[str, Any]) -> list[Path]:
    """Local files a task config names (dataset_kwargs.data_files / data_dir, a local path)."""
    out: list[Any] = []
    kw = cfg.get("dataset_kwargs") or {}
    files = kw.get("data_files")
    if isinstance(files, Mapping):
        files = list(files.values())
    for f in [files] if isinstance(files, str) else (files or []):
        out.extend([f] if isinstance(f, str) else f)
    if isinstance(kw.get("data_dir"), str):
        out.append(kw["data_dir"])
    path = cfg.get("dataset_path")
    if isinstance(path, str) and path.startswith(("/", "./", "../", "~")):
        out.append(path)
    return [Path(p).expanduser() for p in out if isinstance(p, str) and "://" not in p]


def _gen_length(cfg: Mapping[str, Any], settings: Mapping[str, Any]) -> int | None:
    """Tokens a generation task generates (None for likelihood tasks); settings include the
    paper's per-task ones under the cell's."""
    if cfg.get("output_type") != "generate_until" and settings.get("block_length") is None \
            and "steps" not in settings:
        return None
    if settings.get("gen_length") is not None:
        return int(settings["gen_length"])
    gk = cfg.get("generation_kwargs") or {}
    n = gk.get("max_gen_toks", gk.get("gen_length"))
    return int(n) if n is not None else EvalSettings().gen_length


@dataclass
class Checked:
    """What `validate` read, so nothing is read twice: each model's config, each task as
    `TaskManager.load` built it."""

    configs: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)


def validate(grid: Grid, tm=None) -> Checked:
    """Check the grid against tasks, recipes, models and data; raise GridError (one line).
    Returns the model configs and loaded tasks it read."""
    from .models.io import LoadError, read_config, resolve, shipped_models
    from .tasks.lm_eval import check_runnable

    for r in grid.recipes:
        if r == NO_QUANT:
            continue
        from .quant.api import resolve_recipe

        try:
            resolve_recipe(r)
        except (KeyError, ValueError, ImportError) as e:
            raise GridError(f"recipe {r!r}: {e.args[0] if e.args else e}") from None
    configs = {}
    for m in grid.models:
        local = Path(m).expanduser()
        if m in shipped_models() or local.exists():
            try:
                configs[m] = read_config(resolve(m))
            except (LoadError, OSError, ValueError) as e:
                raise GridError(f"model {m!r}: {e}") from None
        elif m.count("/") != 1 or m.startswith((".", "/")):
            raise GridError(f"model {m!r} is neither a shipped model ({', '.join(shipped_models()) or 'none'}), "
                            "an existing directory, nor a Hub id owner/name")
    tm = tm or task_manager(grid)
    try:
        check_task_names([t.name for t in grid.tasks], tm)
    except UnknownTaskError as e:
        raise GridError(str(e)) from None
    for cell in grid.cells():
        for f in _data_files(_task_config(tm, cell.task)):
            _need(f.exists(), f"task {cell.task}: data file {f} is missing (set DLLMQ_DATA_DIR "
                              "or the grid's data_dir to the folder holding it)")
    loaded = {}
    for name in dict.fromkeys(t.name for t in grid.tasks):  # build each task once: its data loads
        try:
            loaded[name] = tm.load([name])
        except Exception as e:  # missing local file, offline Hub, broken YAML: one line each
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise GridError(f"task {name}: cannot be loaded ({type(e).__name__}: {first})") from None
    for cell in grid.cells():  # code tasks confirmed, shots that exist: before any model loads
        try:
            check_runnable(loaded[cell.task]["tasks"], grid.confirm_run_unsafe_code,
                           cell.settings.get("num_fewshot"), "`confirm_run_unsafe_code: true`")
        except ValueError as e:
            raise GridError(str(e)) from None
    for cell in grid.cells():
        model_type = configs[cell.model].model_type if cell.model in configs else "llada"
        s = {**task_defaults(model_type, cell.task), **cell.settings}  # as DLLMEvalLM merges them
        model_s = {k: v for k, v in s.items() if k in SETTING_NAMES}
        try:
            es = EvalSettings(**model_s)
        except (TypeError, ValueError) as e:
            raise GridError(f"cell {cell.task} / {cell.model}: {e}") from None
        cfg = _task_config(tm, cell.task)
        if cell.model not in configs:
            continue
        mc = configs[cell.model]
        n = _gen_length(cfg, s)
        ctx = min(mc.max_position, es.max_length or mc.max_position)
        _need(n is None or n < ctx, f"task {cell.task}: generation of {n} tokens does not fit "
                                    f"model {cell.model}'s context of {ctx} tokens")
        try:
            if n is None:  # a likelihood task: only what DLLMEvalLM checks when it is built
                check_sampler(mc.model_type, es)
            else:
                sampler_config(mc.model_type, es.replace(gen_length=n))
        except ValueError as e:
            raise GridError(f"task {cell.task} on {cell.model}: {e}") from None
    return Checked(configs, loaded)


def runtime_of(grid: Grid) -> dict[str, str]:
    """The device kind and dtype a grid runs with (they change the numbers: bf16 on GPU,
    fp32 on CPU by default), as part of every cell key."""
    import torch

    from .models.io import default_dtype

    device = torch.device(grid.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _dtype(grid.dtype) if grid.dtype is not None else default_dtype(device)
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch.")}


def keyed_cells(grid: Grid, checked: Checked, cache=None) -> list[Cell]:
    """The grid's cells with their full key: the calibration each recipe is applied with
    (`harness.resolve_calibration`, the same dict `build_model` quantizes with), the
    checkpoint's content fingerprint, the task's config + documents fingerprint and the
    versions (`dllmq.fingerprint`). `cache` keeps file digests (the store does)."""
    from .fingerprint import checkpoint_fingerprint, task_fingerprint, versions
    from .harness import HARNESS_REVISION, resolve_calibration
    from .models.io import read_config, resolve

    vers = versions()
    runtime = runtime_of(grid)
    tfp = {name: task_fingerprint(loaded) for name, loaded in checked.tasks.items()}
    mfp: dict[str, str] = {}
    calib: dict[tuple[str, str], Any] = {}
    out = []
    for c in grid.cells():
        if c.model not in mfp:
            mfp[c.model] = checkpoint_fingerprint(c.model, cache)
            if c.model not in checked.configs:
                checked.configs[c.model] = read_config(resolve(c.model))
        if (c.model, c.recipe) not in calib:
            calib[c.model, c.recipe] = resolve_calibration(
                c.recipe, c.model, grid.calib, checked.configs[c.model].max_position)
        key = {"calib": calib[c.model, c.recipe], "checkpoint": mfp[c.model],
               "task": tfp[c.task], "versions": vers, "runtime": runtime,
               "harness": HARNESS_REVISION}
        out.append(dataclasses.replace(c, key=key))
    return out


# ---- shards ----------------------------------------------------------------------------------------
def n_docs(loaded: Mapping[str, Any], limit: Any) -> int:
    """Documents lm-eval evaluates for a loaded task (summed over a group's tasks) at `limit`
    (a count, or a fraction < 1 of the documents, rounded up as lm-eval does)."""
    n = 0
    for task in loaded.get("tasks", {}).values():
        docs = len(task.eval_docs)
        if isinstance(limit, float) and limit < 1.0:
            docs = int(math.ceil(docs * limit))
        elif limit is not None:
            docs = min(int(limit), docs)
        n += docs
    return n


def _shardable(loaded: Mapping[str, Any], name: str) -> str | None:
    """Why a loaded task cannot be sharded (None: it can): one task, no group aggregates,
    every metric aggregated by lm-eval's `mean` of per-item scores."""
    from lm_eval.api.metrics import mean

    tasks = loaded.get("tasks", {})
    if len(tasks) != 1:
        return f"it is a group of {len(tasks)} tasks"
    for g, obj in loaded.get("groups", {}).items():
        cfg = getattr(obj, "config", obj)
        agg = cfg.get("aggregate_metric_list") if isinstance(cfg, Mapping) \
            else getattr(cfg, "aggregate_metric_list", None)
        if agg:
            return f"group {g} aggregates its metrics"
    (task,) = tasks.values()
    other = {m: getattr(f, "__name__", str(f)) for m, f in task.aggregation().items() if f is not mean}
    if other:
        m, f = next(iter(other.items()))
        return f"metric {m} aggregates by {f}, not a mean of per-item scores"
    return None


def shard_cell(cell: Cell, start: int, stop: int) -> Cell:
    """The shard of a cell for documents start <= doc_id < stop: the cell's key plus the range."""
    return dataclasses.replace(cell, key={**cell.key, "shard": [start, stop]})


def shards_of(grid: Grid, checked: Checked, cells: Sequence[Cell]) -> dict[Cell, list[Cell]]:
    """{cell: its shards} for the cells of more than `grid.shard_size` items (none without
    shard_size). Raises GridError (one line) for a cell that would be split but cannot be
    (`_shardable`) or a shard_size that is not a multiple of the cell's doc_block."""
    out: dict[Cell, list[Cell]] = {}
    if grid.shard_size is None:
        return out
    for cell in cells:
        loaded = checked.tasks[cell.task]
        n = n_docs(loaded, cell.settings.get("limit"))
        if n <= grid.shard_size:
            continue
        why = _shardable(loaded, cell.task)
        _need(why is None, f"task {cell.task} ({n} items) cannot be split into shards of "
                           f"{grid.shard_size}: {why}; raise shard_size to {n} or more")
        block = int(cell.settings.get("doc_block") or EvalSettings().doc_block)
        _need(grid.shard_size % block == 0, f"shard_size {grid.shard_size} is not a multiple of "
                                            f"doc_block {block} (task {cell.task}); give one")
        out[cell] = [shard_cell(cell, a, min(a + grid.shard_size, n))
                     for a in range(0, n, grid.shard_size)]
    return out


def metrics_from_samples(keys: Sequence[str], samples: Sequence[Mapping[str, Any]],
                         leaf: str | None = None) -> dict[str, tuple[float, float | None]]:
    """Metrics named as `metrics_of` names them ("acc,none", "leaf/acc,none") recomputed from
    per-item samples as lm-eval does (`mean`, and `mean_stderr` for more than one item), items
    in the samples' order."""
    from lm_eval.api.metrics import mean, mean_stderr

    out: dict[str, tuple[float, float | None]] = {}
    for key in keys:
        name = key.split("/", 1)[1] if leaf is not None and key.startswith(f"{leaf}/") else key
        metric, _, filt = name.partition(",")
        items = [x[metric] for x in samples if x.get("filter") == filt and metric in x]
        if not items:
            raise RuntimeError(f"no per-item {metric} ({filt}) in the samples to assemble {key}")
        out[key] = (float(mean(items)), float(mean_stderr(items)) if len(items) > 1 else None)
    return out


def assemble(parts: Sequence[tuple[Sequence[str], list[dict], float | None]]
             ) -> tuple[dict[str, tuple[float, float | None]], list[dict], float]:
    """A cell's (metrics, samples, wall seconds) from its shards' (metric names, samples, wall
    seconds), shards in range order: samples ordered as lm-eval logs them (filter by filter,
    documents in order), metrics recomputed over all items (`metrics_from_samples`)."""
    samples = [x for _, xs, _ in parts for x in xs]
    rank = {f: i for i, f in reversed(list(enumerate(x.get("filter") for x in samples)))}
    samples.sort(key=lambda x: rank[x.get("filter")])  # stable: documents stay in order
    leaf = next((x["task"] for x in samples if "task" in x), None)
    return (metrics_from_samples(list(parts[0][0]), samples, leaf), samples,
            sum(w or 0.0 for _, _, w in parts))


# ---- running -------------------------------------------------------------------------------------
def metrics_of(results: Mapping[str, Any], task: str) -> dict[str, tuple[float, float | None]]:
    """{"acc,none": (value, stderr)} for a task (and "subtask/metric" for a group's members).
    A group without metrics of its own that wraps exactly one task (paper_arc_easy wraps
    arc_easy) is that task: its member's metrics are given under the plain names too."""
    out: dict[str, tuple[float, float | None]] = {}
    blocks = results.get("results", {})
    own = blocks.get(task, {})
    members = [n for n in blocks if n != task]
    alias = members[0] if len(members) == 1 and not any(
        isinstance(v, int | float) and not isinstance(v, bool) and k not in ("sample_len",)
        for k, v in own.items()) else None
    for name, block in blocks.items():
        prefixes = [""] if name == task else [f"{name}/"] + ([""] if name == alias else [])
        for prefix in prefixes:
            _add_metrics(out, prefix, block)
    if not out:
        raise RuntimeError(f"lm-eval returned no metrics for task {task}")
    return out


def _add_metrics(out: dict, prefix: str, block: Mapping[str, Any]) -> None:
    for k, v in block.items():
        if k in ("alias", "name", "sample_len", "sample_count") or "_stderr," in k:
            continue
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        metric, _, filt = k.partition(",")
        err = block.get(f"{metric}_stderr,{filt}")
        out[prefix + k] = (float(v), float(err) if isinstance(err, int | float) else None)


def compact_sample(task: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """A per-sample record without the document and the full prompts (hashes kept)."""
    drop = {"doc", "arguments", "resps"}
    rec = {k: v for k, v in s.items() if k not in drop}
    rec["task"] = task
    return rec


@dataclass
class SweepReport:
    done: list[Result] = field(default_factory=list)  # cells present before or written now
    ran: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def table(self, max_rows: int = 40) -> str:
        """Model/recipe rows x task columns, the first metric of each task as mean ± error
        over seeds and settings (the error: the root mean square of the cells' stderrs, the
        typical one cell's; none when lm-eval gave none); one screen."""
        cols: dict[str, str] = {}
        vals: dict[tuple[str, str], dict[str, list[tuple[float, float | None]]]] = {}
        for r in self.done:
            metric = next(iter(r.metrics))
            cols.setdefault(r.cell.task, metric.removesuffix(",none"))
            vals.setdefault((r.cell.model, r.cell.recipe), {}).setdefault(r.cell.task, []).append(
                (r.metrics[metric]["value"], r.metrics[metric].get("stderr")))
        tasks = list(cols)
        head = ["model", "recipe", *[f"{t} ({cols[t]})" for t in tasks]]
        rows = [[m, rc, *[_mean_pm(d[t]) if t in d else "-" for t in tasks]]
                for (m, rc), d in list(vals.items())[:max_rows]]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True))
                 for row in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{len(self.done)} cells: {self.ran} run now, {self.skipped} already stored; "
                     f"{self.seconds:.0f} s")
        return "\n".join(lines)


def _mean_pm(pairs: list[tuple[float, float | None]]) -> str:
    """'0.7 ± 0.153' (mean value ± root mean square stderr), or the mean alone without stderrs."""
    mean = sum(v for v, _ in pairs) / len(pairs)
    errs = [e for _, e in pairs if e is not None]
    if len(errs) < len(pairs):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {(sum(e * e for e in errs) / len(errs)) ** 0.5:.2g}"


def evaluate_cell(lm, cell: Cell, tm, confirm_run_unsafe_code: bool = False
                  ) -> tuple[dict, list[dict], float, float]:
    """One `simple_evaluate` on one task with the cell's settings: (metrics, samples, seconds,
    of those the seconds in the model's request methods). The cell's model settings are explicit model args, so they win over the task's. A shard
    (`Cell.shard`) computes only its documents; its samples are those documents' and its
    metrics are recomputed from them (`metrics_from_samples`)."""
    import lm_eval

    s = dict(cell.settings)
    model_s = {k: v for k, v in s.items() if k in SETTING_NAMES}
    model = lm.with_settings(seed=cell.seed, **model_s)
    if cell.shard is not None:
        model = model.for_docs(*cell.shard)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=model, tasks=[cell.task], task_manager=tm,
        limit=s.get("limit"), num_fewshot=s.get("num_fewshot"),
        apply_chat_template=s.get("apply_chat_template", False),
        fewshot_as_multiturn=s.get("fewshot_as_multiturn", False),
        confirm_run_unsafe_code=confirm_run_unsafe_code, log_samples=True, bootstrap_iters=1000)
    wall = time.perf_counter() - t0
    if res is None:  # a non-zero rank under data parallel
        return {}, [], wall, model.request_s
    samples = [compact_sample(t, x) for t, xs in res.get("samples", {}).items() for x in xs]
    metrics = metrics_of(res, cell.task)
    if cell.shard is not None:
        a, b = cell.shard
        samples = [x for x in samples if a <= x["doc_id"] < b]
        metrics = metrics_from_samples(list(metrics), samples, samples[0]["task"])
    return metrics, samples, wall, model.request_s


LEASE_S = 120.0  # a claim's lease; the owner renews it every LEASE_S / 4 while it works
POLL_S = 1.0  # how often a worker looks at cells other workers hold


def quantized_cache_dir(store_path: Path) -> Path:
    """Where quantized models are cached next to a store (`<store>.models/`)."""
    return store_path.with_name(store_path.name + ".models")


def model_key(cell: Cell) -> str:
    """A quantized model's cache name: checkpoint content + recipe + calibration + version."""
    from .store import canonical_json

    k = cell.key
    text = canonical_json({"checkpoint": k.get("checkpoint"), "recipe": cell.recipe,
                           "calib": k.get("calib"), "dllmq": cell.version})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def build_model(grid: Grid, cell: Cell, cache_dir: Path | None = None):
    """(model, tokenizer) of a cell: loaded, then quantized with exactly the calibration in the
    cell's key. With `cache_dir`, the quantized model is saved there in the export format
    (`dllmq.quant.export.save_quantized`, under `model_key`) and every worker, the one that
    quantized it included, evaluates the copy loaded back, so a result never depends on which
    worker quantized. The save is a temporary directory renamed into place."""
    from . import load
    from .data import calibration_set
    from .models import load_tokenizer
    from .quant.api import quantize_
    from .quant.export import save_quantized

    dtype = None if grid.dtype is None else _dtype(grid.dtype)
    tok = load_tokenizer(cell.model)
    if cell.recipe == NO_QUANT:
        return load(cell.model, device=grid.device, dtype=dtype), tok
    target = None if cache_dir is None else cache_dir / model_key(cell)
    if target is not None and (target / "config.json").is_file():
        log.info("%s %s: loading the quantized model from %s", cell.model, cell.recipe, target)
        return load(target, device=grid.device, dtype=dtype), tok
    model = load(cell.model, device=grid.device, dtype=dtype)
    calib = cell.key.get("calib")
    data = None if calib is None else calibration_set(tok, **calib)
    quantize_(model, cell.recipe, data)
    if target is None:
        return model, tok
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        save_quantized(model, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another worker saved it first: same key, same model
            log.info("%s: saved by another worker meanwhile", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model
    return load(target, device=grid.device, dtype=dtype), tok


def _build_claim(store: Store | None, cell: Cell, owner: str, lease_s: float,
                 cache_dir: Path | None) -> Cell | str | None:
    """Claim the quantization of a cell's model x recipe when it is not cached yet, so that
    workers do not quantize one model at the same time: the claimed pseudo-cell (release it
    once the model is saved), "taken" (another live worker is quantizing it), or None
    (nothing to claim: no cache, not quantized, or already cached)."""
    if store is None or cache_dir is None or cell.recipe == NO_QUANT \
            or (cache_dir / model_key(cell) / "config.json").is_file():
        return None
    build = Cell(cell.model, cell.recipe, "quantize", key={"model_key": model_key(cell)})
    return build if store.claim(build, owner, lease_s) == "mine" else "taken"


class _Heartbeat:
    """Renews the owner's leases every lease_s / 4 in a background thread."""

    def __init__(self, store: Store, owner: str, lease_s: float):
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dllmq-lease", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.lease_s / 4):
            self.store.renew(self.owner, self.lease_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.store.release(self.owner)


def _owner(new_owner) -> str:
    """This process's claim owner. Under `accelerate launch` every rank evaluates the same
    cell together, so all ranks share one owner (the launcher's pid: dead when they are)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        host = new_owner().split(":")[0]
        return f"{host}:{os.getppid()}:dp{os.environ.get('MASTER_PORT', '')}"
    return new_owner()


def run_sweep(grid: Grid, store: Store | str | Path | None = None, progress: bool = True,
              tm=None, lease_s: float = LEASE_S, start: int = 0,
              cache_models: bool = False, request_progress: bool | None = None) -> SweepReport:
    """Validate, then run every cell missing from the store; returns what the store holds
    for the grid. A store given as a path is checked for writability first and opened
    (created) only after the grid passed validation.

    With a store, each cell is claimed before it is computed (`Store.claim`), so any number
    of run_sweep calls (processes, hosts sharing the store's file system) split the grid;
    a worker then waits for the cells others hold and takes over those whose owner died.
    `start` rotates the order of model x recipe groups (the local executor gives each
    worker its own, so workers begin on different models). With `cache_models` (the executors'
    workers), quantized models are cached next to the store (`quantized_cache_dir`) for the
    other workers; a single process quantizes in memory and writes nothing besides the store
    (a packed 8B model is GBs per recipe). `request_progress`: the harness's per-request bars
    (None: shown only when the sweep's own bar is not; executors' workers turn them off, the
    launcher shows the grid's progress)."""
    from . import harness
    from .store import StoreError, check_writable, new_owner

    try:
        if store is not None and not isinstance(store, Store):
            check_writable(store)
        tm = tm or task_manager(grid)
        checked = validate(grid, tm)
        shards_of(grid, checked, grid.cells())  # refuses a split that cannot be, before any file
        if store is not None and not isinstance(store, Store):
            store = Store(store)
        cells = keyed_cells(grid, checked, cache=store)
        sharded = shards_of(grid, checked, cells)
    except StoreError as e:
        raise GridError(str(e)) from None
    report = SweepReport()
    t0 = time.perf_counter()
    stored = store.stored_ids() if store is not None else set()
    missing = [c for c in cells if c.cell_id not in stored]
    todo = [u for c in missing for u in sharded.get(c, [c]) if u.cell_id not in stored]
    report.skipped = len(cells) - len(missing)
    log.info("sweep: %d cells, %d already stored, %d to run (%d units of work)", len(cells),
             report.skipped, len(missing), len(todo))
    groups = [list(g) for _, g in itertools.groupby(todo, key=lambda c: (c.model, c.recipe))]
    if groups:
        k = start % len(groups)
        groups = groups[k:] + groups[:k]
    cache_dir = None
    if store is not None and cache_models:
        cache_dir = quantized_cache_dir(store.path)
        cache_dir.mkdir(exist_ok=True)
    results: dict[Cell, Result] = {}
    parts: dict[Cell, tuple[list[str], list[dict], float, float]] = {}  # shards, no store
    owner = _owner(new_owner)
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)
    beat = _Heartbeat(store, owner, lease_s) if store is not None else contextlib.nullcontext()
    lm = None
    with beat:
        pending = [c for g in groups for c in g]
        while pending:
            waiting: list[Cell] = []
            lm, lm_of = None, None
            for cell in pending:
                state = "mine" if store is None else store.claim(cell, owner, lease_s)
                if state == "taken":
                    waiting.append(cell)
                    continue
                if state == "mine":
                    if lm_of != (cell.model, cell.recipe):
                        build = _build_claim(store, cell, owner, lease_s, cache_dir)
                        if build == "taken":  # another worker is quantizing it: do other cells
                            store.release(owner, cell)
                            waiting.append(cell)
                            continue
                        lm = None  # free the previous model first
                        bar.set_postfix_str(f"{cell.model} {cell.recipe}: loading")
                        model, tok = build_model(grid, cell, cache_dir)
                        if isinstance(build, Cell):
                            store.release(owner, build)
                        # its per-request bars off while the sweep shows its own
                        lm = harness.DLLMEvalLM(
                            model=model, tokenizer=tok,
                            progress=not progress if request_progress is None else request_progress)
                        lm_of = (cell.model, cell.recipe)
                    bar.set_postfix_str(cell.label())
                    try:
                        metrics, samples, wall, req = evaluate_cell(
                            lm, cell, tm, grid.confirm_run_unsafe_code)
                    except BaseException:
                        if store is not None:
                            store.release(owner, cell)
                        raise
                    if lm.rank == 0:
                        if store is not None:
                            store.put(cell, metrics, samples, wall_s=wall, worker=owner,
                                      request_s=req)
                        elif cell.shard is not None:
                            parts[cell] = (list(metrics), samples, wall, req)
                        else:
                            results[cell] = Result(cell, {k: {"value": v, "stderr": e}
                                                          for k, (v, e) in metrics.items()},
                                                   len(samples), wall, "", request_s=req)
                    report.ran += 1
                bar.update()
            pending = [c for c in waiting if not store.has(c)]
            if pending:
                bar.set_postfix_str(f"waiting for {len(pending)} cell(s) other workers hold")
                time.sleep(POLL_S)
        for cell, shards in sharded.items():  # every shard is stored now: assemble the cell
            if cell.cell_id in stored or (lm is not None and lm.rank != 0):
                continue
            if store is None:
                metrics, samples, wall = assemble([parts[u][:3] for u in shards])
                results[cell] = Result(cell, {k: {"value": v, "stderr": e}
                                              for k, (v, e) in metrics.items()},
                                       len(samples), wall, "",
                                       request_s=sum(parts[u][3] for u in shards))
            elif not store.has(cell):
                got = [(store.get(u), store.samples(u)) for u in shards]
                metrics, samples, wall = assemble([(list(r.metrics), xs, r.wall_s)
                                                   for r, xs in got])
                reqs = [r.request_s for r, _ in got]
                store.put(cell, metrics, samples, wall_s=wall, worker=owner,
                          request_s=None if None in reqs else sum(reqs))
    bar.close()
    if store is not None:
        wanted = {c.cell_id for c in cells}
        results.update({r.cell: r for r in store.results() if r.cell.cell_id in wanted})
    report.done = [results[c] for c in cells if c in results]
    report.seconds = time.perf_counter() - t0
    return report


def _dtype(name: str):
    from .harness import parse_dtype

    return parse_dtype(name)


def with_overrides(grid: Grid, **changes: Any) -> Grid:
    return dataclasses.replace(grid, **{k: v for k, v in changes.items() if v is not None})


def grid_for_eval(models: Sequence[str], recipes: Sequence[str], tasks: Sequence[str],
                  seeds: Sequence[int] = (0,), settings: Mapping[str, Any] | None = None,
                  include_path: Sequence[str | Path] = (), include_defaults: bool = True,
                  device: str | None = None, data_dir: str | Path | None = None,
                  confirm_run_unsafe_code: bool = False) -> Grid:
    """The grid behind `python -m dllmq eval` (same checks as a grid file)."""
    raw: dict[str, Any] = {"models": list(models), "recipes": list(recipes), "tasks": list(tasks),
                           "seeds": list(seeds), "settings": dict(settings or {}),
                           "include_path": [str(p) for p in include_path],
                           "include_defaults": include_defaults,
                           "confirm_run_unsafe_code": confirm_run_unsafe_code}
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    if device is not None:
        raw["device"] = device
    return parse_grid(raw, "eval")


def grid_to_raw(grid: Grid) -> dict[str, Any]:
    """The grid as a plain mapping `parse_grid` reads back to an equal Grid (absolute paths):
    how executors hand a grid to worker processes."""
    raw: dict[str, Any] = {
        "models": list(grid.models), "recipes": list(grid.recipes),
        "tasks": [{"task": t.name, "settings": dict(t.settings)} for t in grid.tasks],
        "seeds": list(grid.seeds), "settings": dict(grid.settings),
        "axes": {k: list(v) for k, v in grid.axes.items()},
        "include_path": [str(Path(p).resolve()) for p in grid.include_path],
        "include_defaults": grid.include_defaults,
        "confirm_run_unsafe_code": grid.confirm_run_unsafe_code, "calib": dict(grid.calib)}
    for name in ("store", "data_dir"):
        if getattr(grid, name) is not None:
            raw[name] = str(Path(getattr(grid, name)).resolve())
    for name in ("device", "dtype", "shard_size"):
        if getattr(grid, name) is not None:
            raw[name] = getattr(grid, name)
    return raw
