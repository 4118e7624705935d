"""`python -m dllmq plan GRID.yaml`: the grid's cells, what the store holds, and the time left.

For every cell: stored (with the wall time it took), running (claimed by a live worker), or to
run, with an estimate; a cell split into shards (the grid's `shard_size`, `dllmq.sweep`) shows
its shards stored of all, and is estimated on the shards left.

The estimate follows what one evaluation (`simple_evaluate`, one cell or one shard) costs
(`Cost`): lm-eval's own work (loading the task, building every document's requests, scoring:
a fixed part plus a part per document it builds) and the model's (`DLLMEvalLM.request_s`, the
seconds in its request methods, which the store keeps per cell): a part per batch plus a part
per document computed. Batches (`Shape`) are what the harness runs: generation in batches of
`batch_size` prompts within each block of `doc_block` documents, likelihoods per block (their
Monte Carlo rows are packed, so their cost follows the documents). On a GPU a generation
batch costs about the same whatever its rows; on a CPU each row costs; the fit tells which.
The rates come, most specific first, from:

1. stored cells (and shards) of the same checkpoint (content), recipe, task and settings (all
   but limit and seed), run on the same device and dtype;
2. the same, any recipe (quantization changes a linear's values, not its cost, except for
   online transforms);
3. with neither, a short calibration run, timed and not stored: after a 1-item warm-up, the
   cell on 1 item and on `calib_items` (8) items (at least one full generation batch), each
   `repeats` times, interleaved, the median of each kept (one run's timing on a shared machine
   can be several times the typical); `calibrate=False` prints "?" instead.

`fit_cost` fits the two parts separately, non-negative least squares on the median of each
shape. Stored cells of one size cannot tell the per-batch from the per-document model rate
apart: there the model's time is scaled by the number of batches for generation and by the
documents for likelihoods. Cells stored by a dllmq without `request_s` count as model time
entirely. Model loading and quantization are not in the estimate: it is of evaluation time,
which dominates at the paper's sizes (hours per cell).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Cell, Result, Store

log = logging.getLogger(__name__)

RATE_FREE = ("limit",)  # settings that change how many items run, not what one costs
GENERATION = "generate_until"


@dataclass
class CellPlan:
    cell: Cell
    items: int
    status: str  # stored | running | todo
    seconds: float | None  # stored: measured; todo/running: estimated (None: unknown)
    source: str  # "stored", "same recipe", "any recipe", "calibration run", "-"
    shards: int = 0  # shards of a sharded cell (0: not split)
    shards_stored: int = 0


@dataclass(frozen=True)
class Shape:
    """What one evaluation runs: documents lm-eval builds requests for (`built`: the whole
    cell's, also for a shard), documents the model computes (`items`) and its batches."""

    built: int
    items: int
    batches: int


def _blocks(start: int, stop: int, size: int) -> list[int]:
    """Documents per block of `size` (doc_id // size) in [start, stop)."""
    return [min(b + size, stop) - max(b, start) for b in range(start - start % size, stop, size)]


def shape_of(loaded: Mapping[str, Any], settings: Mapping[str, Any], model_type: str,
             shard: tuple[int, int] | None = None) -> Shape:
    """The Shape of a cell (a loaded task, summed over a group's tasks) with `settings` at their
    `limit`, or of one of its shards: generation batches of batch_size prompts per block of
    doc_block documents (`DLLMEvalLM.generate_until`), likelihoods one batch per block."""
    from .sweep import n_docs

    limit = settings.get("limit")
    built = items = batches = 0
    for name, task in loaded.get("tasks", {}).items():
        n = n_docs({"tasks": {name: task}}, limit)
        a, b = (0, n) if shard is None else shard
        s = _batching(name, settings, model_type)
        blocks = _blocks(a, b, s.doc_block) if b > a else []
        built += n
        items += b - a
        if getattr(task, "OUTPUT_TYPE", None) == GENERATION:
            batches += sum(math.ceil(k / s.batch_size) for k in blocks)
        else:
            batches += len(blocks)
    return Shape(built, items, batches)


def _batching(task: str, settings: Mapping[str, Any], model_type: str):
    """The batch_size and doc_block a task's requests run with (`DLLMEvalLM.settings_for`)."""
    from .harness import EvalSettings, task_defaults

    s = {**task_defaults(model_type, task), **settings}
    return EvalSettings().replace(**{k: s[k] for k in ("batch_size", "doc_block") if k in s})


def _generation(loaded: Mapping[str, Any]) -> bool:
    return any(getattr(t, "OUTPUT_TYPE", None) == GENERATION
               for t in loaded.get("tasks", {}).values())


@dataclass(frozen=True)
class Cost:
    """Seconds of one evaluation of a Shape: lm-eval's `fixed` + `per_built` per document it
    builds, plus the model's `per_batch` per batch + `per_item` per document it computes."""

    fixed: float = 0.0
    per_built: float = 0.0
    per_batch: float = 0.0
    per_item: float = 0.0

    def seconds(self, sh: Shape) -> float:
        return (self.fixed + self.per_built * sh.built + self.per_batch * sh.batches
                + self.per_item * sh.items)


def _fit2(x: list[tuple[float, float]], y: list[float], fallback: int) -> tuple[float, float]:
    """Non-negative least squares y ~ c0 x0 + c1 x1. Where the points cannot tell the two
    columns apart (collinear), the `fallback` column alone."""
    a00 = sum(u * u for u, _ in x)
    a01 = sum(u * v for u, v in x)
    a11 = sum(v * v for _, v in x)
    b0 = sum(u * t for (u, _), t in zip(x, y, strict=True))
    b1 = sum(v * t for (_, v), t in zip(x, y, strict=True))
    single = [(max(0.0, b0 / a00), 0.0) if a00 > 0 else (0.0, 0.0),
              (0.0, max(0.0, b1 / a11)) if a11 > 0 else (0.0, 0.0)]
    det = a00 * a11 - a01 * a01
    if det <= 1e-9 * a00 * a11:  # one shape only (or proportional shapes)
        return single[fallback]
    c0, c1 = (a11 * b0 - a01 * b1) / det, (a00 * b1 - a01 * b0) / det
    if c0 >= 0 and c1 >= 0:
        return c0, c1

    def sse(c: tuple[float, float]) -> float:
        return sum((c[0] * u + c[1] * v - t) ** 2 for (u, v), t in zip(x, y, strict=True))
    return min(single, key=sse)


def fit_cost(points: list[tuple[Shape, float, float | None]], by_batch: bool) -> Cost:
    """A Cost from evaluations (shape, wall seconds, of those the model's; None: unknown, all
    counted as the model's), on the median of each shape. `by_batch`: when the shapes cannot
    tell the model's per-batch from its per-document rate apart, per batch (generation) or per
    document (likelihoods)."""
    if any(r is not None for _, _, r in points):
        points = [p for p in points if p[2] is not None]
    shapes: dict[Shape, list[tuple[float, float]]] = {}
    for sh, wall, req in points:
        model_s = wall if req is None else min(req, wall)
        shapes.setdefault(sh, []).append((wall - model_s, model_s))
    shs = list(shapes)
    other = [statistics.median(o for o, _ in shapes[sh]) for sh in shs]
    model = [statistics.median(m for _, m in shapes[sh]) for sh in shs]
    fixed, per_built = _fit2([(1.0, sh.built) for sh in shs], other, fallback=0)
    per_batch, per_item = _fit2([(sh.batches, sh.items) for sh in shs], model,
                                fallback=0 if by_batch else 1)
    return Cost(fixed, per_built, per_batch, per_item)


def _rate_key(cell: Cell, recipe: bool) -> tuple:
    s = {k: v for k, v in cell.settings.items() if k not in RATE_FREE}
    k = cell.key
    return (k.get("checkpoint"), cell.recipe if recipe else None, cell.task,
            tuple(sorted(s.items())), str(k.get("runtime")))


def stored_by_key(results: list[Result]) -> tuple[dict, dict]:
    """Stored evaluations that recorded their wall time, by (checkpoint, recipe, task, settings,
    runtime) and by the same without recipe: cells run whole and shards, not the rows
    assembled from shards (their time is the shards')."""
    parents = {dataclasses.replace(r.cell, key={k: v for k, v in r.cell.key.items()
                                                if k != "shard"}).cell_id
               for r in results if r.cell.shard is not None}
    out: list[dict] = [{}, {}]
    for r in results:
        if r.legacy or not r.wall_s or r.cell.cell_id in parents:
            continue
        for i, with_recipe in enumerate((True, False)):
            out[i].setdefault(_rate_key(r.cell, with_recipe), []).append(r)
    return out[0], out[1]


def _calibrate(grid, cell: Cell, tm, loaded, model_type: str, calib_items: int,
               repeats: int) -> Cost:
    """The Cost of a cell from runs of it on 1 item and on `calib_items` items (at least one
    full generation batch), each `repeats` times, interleaved, after a warm-up run on 1 item;
    nothing is stored."""
    from .harness import DLLMEvalLM
    from .sweep import build_model, evaluate_cell, n_docs

    model, tok = build_model(grid, cell)
    lm = DLLMEvalLM(model=model, tokenizer=tok, progress=False)
    items = n_docs(loaded, cell.settings.get("limit"))
    full = [min(s.batch_size, s.doc_block) for s in (_batching(name, cell.settings, model_type)
            for name, t in loaded.get("tasks", {}).items()
            if getattr(t, "OUTPUT_TYPE", None) == GENERATION)]
    big = min(items, max([calib_items, *full]))
    points = []
    for i, n in enumerate([1] + [1, big] * repeats if big > 1 else [1] * (1 + repeats)):
        short = dataclasses.replace(cell, settings={**cell.settings, "limit": n})
        _, _, wall, req = evaluate_cell(lm, short, tm, grid.confirm_run_unsafe_code)
        if i:  # the first run warms up and is not counted
            points.append((shape_of(loaded, short.settings, model_type), wall, req))
    log.debug("calibration points %s", points)
    cost = fit_cost(points, _generation(loaded))
    log.info("calibration run: %s %s", cell.label(), cost)
    return cost


def plan_grid(grid, store: Store | None, tm=None, calibrate: bool = True,
              calib_items: int = 8, repeats: int = 3) -> list[CellPlan]:
    from .sweep import keyed_cells, n_docs, shards_of, task_manager, validate

    tm = tm or task_manager(grid)
    checked = validate(grid, tm)
    cells = keyed_cells(grid, checked, cache=store)
    sharded = shards_of(grid, checked, cells)
    rows = store.results(shards=True) if store is not None else []
    stored = {r.cell.cell_id: r for r in rows}
    running = {c.cell_id for c in store.claims() if not c.stale()} if store is not None else set()
    by_recipe, any_recipe = stored_by_key(rows)
    costs: dict[tuple, Cost] = {}
    out = []
    for cell in cells:
        loaded = checked.tasks[cell.task]
        model_type = checked.configs[cell.model].model_type
        items = n_docs(loaded, cell.settings.get("limit"))
        shards = sharded.get(cell, [])
        done = [u for u in shards if u.cell_id in stored]
        if cell.cell_id in stored:
            out.append(CellPlan(cell, items, "stored", stored[cell.cell_id].wall_s, "stored",
                                len(shards), len(done)))
            continue
        left = [u for u in shards if u.cell_id not in stored]
        status = "running" if ({u.cell_id for u in left} | {cell.cell_id}) & running else "todo"
        cost, source = None, "-"
        for key, found, name in ((_rate_key(cell, True), by_recipe, "same recipe"),
                                 (_rate_key(cell, False), any_recipe, "any recipe")):
            if key in costs:
                cost, source = costs[key], name
                break
            if key in found:
                points = [(shape_of(loaded, r.cell.settings, model_type, r.cell.shard), r.wall_s,
                           r.request_s) for r in found[key]]
                cost = costs[key] = fit_cost(points, _generation(loaded))
                source = name
                break
        if cost is None and calibrate:
            key = ("calibration", *_rate_key(cell, True))
            if key not in costs:
                costs[key] = _calibrate(grid, cell, tm, loaded, model_type, calib_items, repeats)
            cost, source = costs[key], "calibration run"
        shapes = [shape_of(loaded, cell.settings, model_type, u.shard) for u in left] if shards \
            else [shape_of(loaded, cell.settings, model_type)]
        out.append(CellPlan(cell, items, status,
                            None if cost is None else sum(map(cost.seconds, shapes)), source,
                            len(shards), len(done)))
    return out


def _fmt(s: float | None) -> str:
    if s is None:
        return "?"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def plan_table(plans: list[CellPlan], workers: int = 1) -> str:
    head = ["model", "recipe", "task", "seed", "items", "shards", "status", "time", "from"]
    rows = [[Path(p.cell.model).name, p.cell.recipe, p.cell.task, str(p.cell.seed), str(p.items),
             f"{p.shards_stored}/{p.shards}" if p.shards else "-", p.status, _fmt(p.seconds),
             p.source] for p in plans]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    left = [p for p in plans if p.status != "stored"]
    known = [p.seconds for p in left if p.seconds is not None]
    total = sum(known)
    unknown = len(left) - len(known)
    n_shards = sum(p.shards for p in plans)
    split = f" ({n_shards} shards, {sum(p.shards_stored for p in plans)} stored)" if n_shards \
        else ""
    lines.append(f"{len(plans)} cells{split}: {len(plans) - len(left)} stored, "
                 f"{sum(p.status == 'running' for p in plans)} running, "
                 f"{sum(p.status == 'todo' for p in plans)} to run; estimated {_fmt(total)} of "
                 f"evaluation" + (f" on {workers} workers: {_fmt(total / workers)} wall" if workers > 1
                                  else "") + (f" (+ {unknown} cells without a rate)" if unknown else ""))
    return "\n".join(lines)
