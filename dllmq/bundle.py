"""Cell bundles: a store's finished cells in one small file that git can carry.

A results store (`dllmq.store`, SQLite) holds every per-sample record lm-eval logs (hashes of
each prompt, document and target, the filtered responses): the `full` preset's store is about
250 MB. A bundle keeps, per cell, its whole key, its metrics and timing, and of each sample
only what the metrics and the paired statistics are computed from (`SAMPLE_FIELDS` and every
metric the record names): about 0.2 MB for the same cells, xz-compressed JSON lines.

    python -m dllmq bundle export results/full.sqlite results/full.cells.jsonl.xz
    python -m dllmq bundle import results/full.sqlite results/full.cells.jsonl.xz

Import adds the cells the store does not have, under their original cell ids (each id is
recomputed from the record's key and must match, so an edited or damaged record is refused),
and keeps every cell the store already has. The whole file is read and checked before the
first write: a bad bundle leaves the store untouched. An imported cell's samples are the slim
records, so `Store.samples` returns doc_id, task, filter, metrics and the metric values for
it, not the hashes or responses. A preset's `store_bundle` (params) is imported by
`dllmq.study` before it reads the store, so the committed findings of a GPU run can be judged
again, and a run finished, on another machine.
"""

from __future__ import annotations

import json
import lzma
import os
import tempfile
from pathlib import Path
from typing import Any

from .store import Cell, Store, StoreError, canonical_json

FORMAT = "dllmq-cells"
VERSION = 1
SAMPLE_FIELDS = ("doc_id", "task", "filter", "metrics")


def slim_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The fields of one per-sample record that metrics and paired statistics read."""
    keep = (*SAMPLE_FIELDS, *sample.get("metrics", ()))
    return {k: sample[k] for k in keep if k in sample}


def export_cells(store: Store, path: str | Path, **where: Any) -> int:
    """Write the store's cells (optionally filtered as `Store.results`) to `path`, sorted by
    cell id so equal stores give equal files; written to a temporary file renamed into place.
    Returns the number of cells. Rows of store schema 1 (no cell id) are left out."""
    path = Path(path)
    results = sorted((r for r in store.results(**where) if not r.legacy),
                     key=lambda r: r.cell.cell_id)
    if not results:
        raise StoreError(f"{store.path} has no cells{' matching ' + str(where) if where else ''} "
                         "to export")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with lzma.open(tmp, "wt", preset=9, encoding="utf-8") as f:
            f.write(canonical_json({"format": FORMAT, "version": VERSION, "cells": len(results)}) + "\n")
            for r in results:
                c = r.cell
                rec = {"cell_id": c.cell_id, "model": c.model, "recipe": c.recipe, "task": c.task,
                       "settings": dict(c.settings), "seed": c.seed, "version": c.version,
                       "key": dict(c.key), "metrics": r.metrics, "n_samples": r.n_samples,
                       "wall_s": r.wall_s, "request_s": r.request_s, "created_at": r.created_at,
                       "worker": r.worker,
                       "samples": [slim_sample(s) for s in store.samples(c)]}
                f.write(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(results)


def read_cells(path: str | Path) -> list[tuple[Cell, dict[str, Any]]]:
    """Every (cell, record) of a bundle, checked: format, count, cell ids, sample counts."""
    path = Path(path)
    try:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise StoreError(f"bundle {path} does not exist") from None
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise StoreError(f"bundle {path} is damaged or not xz-compressed ({e})") from None
    try:
        head = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        head = {}
    if head.get("format") != FORMAT or head.get("version") != VERSION:
        raise StoreError(f"{path} is not a {FORMAT} v{VERSION} bundle (header {lines[0][:80] if lines else ''!r})")
    if head.get("cells") != len(lines) - 1:
        raise StoreError(f"bundle {path} is truncated: its header lists {head.get('cells')} cells, "
                         f"it holds {len(lines) - 1}")
    out = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            rec = json.loads(line)
            cell = Cell(rec["model"], rec["recipe"], rec["task"], rec["settings"], seed=rec["seed"],
                        version=rec["version"], key=rec["key"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"bundle {path} line {i}: not a cell record ({e})") from None
        if cell.cell_id != rec.get("cell_id"):
            raise StoreError(f"bundle {path} line {i} ({cell.label()}): its key does not give its "
                             "cell id: the record was edited or damaged")
        if len(rec.get("samples", ())) != rec.get("n_samples"):
            raise StoreError(f"bundle {path} line {i} ({cell.label()}): {len(rec.get('samples', ()))} "
                             f"samples, the record says {rec.get('n_samples')}")
        out.append((cell, rec))
    return out


def import_cells(store: Store | str | Path, path: str | Path) -> tuple[int, int]:
    """Add the bundle's cells that the store lacks; returns (added, already present). A store
    given by its path is opened only once the bundle passed its checks, so a bad bundle creates
    no store file."""
    cells = read_cells(path)  # everything checked before the first write
    if not isinstance(store, Store):
        store = Store(store)
    have = store.stored_ids()
    added = 0
    for cell, rec in cells:
        if cell.cell_id in have:
            continue
        added += store.put(cell, rec["metrics"], rec["samples"], wall_s=rec.get("wall_s"),
                           worker=rec.get("worker"), request_s=rec.get("request_s"),
                           created_at=rec.get("created_at"))
    return added, len(cells) - added
