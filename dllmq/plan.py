"""`python -m dllmq plan GRID.yaml`: the grid's cells, what the store holds, and the time left.

For every cell: stored (with the wall time it took), running (claimed by a live worker), or to
run, with an estimate; a cell split into shards (the grid's `shard_size`, `dllmq.sweep`) shows
its shards stored of all, and is estimated on the items of the shards left. The estimate is the number of items the cell evaluates times a rate in
seconds per item, taken from the store, most specific first:

1. cells of the same checkpoint (content), recipe, task and settings (all but limit and seed),
   run on the same device and dtype;
2. the same, any recipe (quantization changes a linear's values, not its cost, except for
   online transforms);
3. with neither, a short calibration run: the cell itself on 1 and on `calib_items` items
   (after a 1-item warm-up), timed and not stored, giving a fixed cost per cell plus a cost per item (`calibrate=False`
   prints "?" instead).

Items are lm-eval documents (a group's are summed over its tasks), so a rate transfers
between limits. Model loading and quantization are not in the rates: the estimate is of
evaluation time (`simple_evaluate`), which dominates at the paper's sizes (hours per cell).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Cell, Result, Store

log = logging.getLogger(__name__)

RATE_FREE = ("limit",)  # settings that change how many items run, not what one costs


@dataclass
class CellPlan:
    cell: Cell
    items: int
    status: str  # stored | running | todo
    seconds: float | None  # stored: measured; todo/running: estimated (None: unknown)
    source: str  # "stored", "same recipe", "any recipe", "calibration run", "-"
    shards: int = 0  # shards of a sharded cell (0: not split)
    shards_stored: int = 0


def _items(loaded: Mapping[str, Any], limit: Any) -> int:
    """Documents a cell evaluates (`dllmq.sweep.n_docs`: lm-eval's rounding of a fraction)."""
    from .sweep import n_docs

    return n_docs(loaded, limit)


def _rate_key(cell: Cell, recipe: bool) -> tuple:
    s = {k: v for k, v in cell.settings.items() if k not in RATE_FREE}
    k = cell.key
    return (k.get("checkpoint"), cell.recipe if recipe else None, cell.task,
            tuple(sorted(s.items())), str(k.get("runtime")))


def rates_from(results: list[Result]) -> tuple[dict, dict]:
    """Seconds per item by (checkpoint, recipe, task, settings, runtime) and by the same without
    recipe, from stored cells that recorded their wall time."""
    sums: list[dict] = [{}, {}]
    for r in results:
        if r.legacy or not r.wall_s or not r.n_samples:
            continue
        for i, with_recipe in enumerate((True, False)):
            k = _rate_key(r.cell, with_recipe)
            t, n = sums[i].get(k, (0.0, 0))
            sums[i][k] = (t + r.wall_s, n + r.n_samples)
    return tuple({k: t / n for k, (t, n) in d.items()} for d in sums)  # type: ignore[return-value]


def _calibrate(grid, cell: Cell, tm, loaded, calib_items: int) -> tuple[float, float]:
    """(seconds per cell, seconds per item) from the cell run on 1 item, then on
    `calib_items` items, after a warm-up run on 1 item; nothing is stored."""
    import dataclasses

    from .harness import DLLMEvalLM
    from .sweep import build_model, evaluate_cell

    model, tok = build_model(grid, cell)
    lm = DLLMEvalLM(model=model, tokenizer=tok)
    points = []
    for n in (1, 1, max(2, calib_items)):  # the first run warms up and is not counted
        short = dataclasses.replace(cell, settings={**cell.settings, "limit": n})
        t0 = time.perf_counter()
        evaluate_cell(lm, short, tm, grid.confirm_run_unsafe_code)
        points.append((_items(loaded, n), time.perf_counter() - t0))
    log.debug("calibration points %s", points)
    (n1, t1), (n2, t2) = points[1:]
    rate = max(0.0, (t2 - t1) / (n2 - n1)) if n2 > n1 else t2 / max(n2, 1)
    fixed = max(0.0, t1 - rate * n1)
    log.info("calibration run: %s %.3g s + %.3g s/item", cell.label(), fixed, rate)
    return fixed, rate


def plan_grid(grid, store: Store | None, tm=None, calibrate: bool = True,
              calib_items: int = 3) -> list[CellPlan]:
    from .sweep import keyed_cells, shards_of, task_manager, validate

    tm = tm or task_manager(grid)
    checked = validate(grid, tm)
    cells = keyed_cells(grid, checked, cache=store)
    sharded = shards_of(grid, checked, cells)
    stored = {r.cell.cell_id: r for r in store.results(shards=True)} if store is not None else {}
    running = {c.cell_id for c in store.claims() if not c.stale()} if store is not None else set()
    by_recipe, any_recipe = rates_from(list(stored.values()))
    calibrated: dict[tuple, tuple[float, float]] = {}
    out = []
    for cell in cells:
        items = _items(checked.tasks[cell.task], cell.settings.get("limit"))
        shards = sharded.get(cell, [])
        done = [u for u in shards if u.cell_id in stored]
        if cell.cell_id in stored:
            out.append(CellPlan(cell, items, "stored", stored[cell.cell_id].wall_s, "stored",
                                len(shards), len(done)))
            continue
        left = [u for u in shards if u.cell_id not in stored]
        status = "running" if ({u.cell_id for u in left} | {cell.cell_id}) & running else "todo"
        n_left = sum(b - a for a, b in (u.shard for u in left)) if shards else items
        units = len(left) if shards else 1
        rate, source = by_recipe.get(_rate_key(cell, True)), "same recipe"
        if rate is None:
            rate, source = any_recipe.get(_rate_key(cell, False)), "any recipe"
        fixed = 0.0
        if rate is None and calibrate:
            k = _rate_key(cell, True)
            if k not in calibrated:
                calibrated[k] = _calibrate(grid, cell, tm, checked.tasks[cell.task], calib_items)
            (fixed, rate), source = calibrated[k], "calibration run"
        out.append(CellPlan(cell, items, status,
                            None if rate is None else fixed * units + rate * n_left,
                            source if rate is not None else "-", len(shards), len(done)))
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
