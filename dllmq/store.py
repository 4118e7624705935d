"""The results store: one SQLite file, one row per evaluated cell, safe to share.

A *cell* is model x recipe x task x settings (hashed) x seed x dllmq version. Each
finished cell is written in one transaction together with its per-sample outputs, so a
killed process leaves either the whole cell or nothing. A UNIQUE constraint on the cell
key keeps every cell present at most once, also when several processes write at once
(WAL journal, busy timeout, `BEGIN IMMEDIATE` so writers queue instead of failing).

    store = Store("results.sqlite")
    cell = Cell("tiny-llada-instruct", "w4a16g128-gptq", "arc_easy", {"mc_num": 128}, seed=0)
    if not store.has(cell):
        store.put(cell, {"acc": (0.61, 0.01)}, samples=[{"doc_id": 0, ...}])
    store.to_dataframe()  # one row per cell x metric

Metrics are stored as {name: {"value": v, "stderr": s}}; lm-eval's "acc,none" style
names are kept as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KEY_COLUMNS = ("model", "recipe", "task", "settings_hash", "seed", "version")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id            INTEGER PRIMARY KEY,
    model         TEXT    NOT NULL,
    recipe        TEXT    NOT NULL,
    task          TEXT    NOT NULL,
    settings_hash TEXT    NOT NULL,
    seed          INTEGER NOT NULL,
    version       TEXT    NOT NULL,
    settings      TEXT    NOT NULL,  -- canonical JSON of the settings that were hashed
    metrics       TEXT    NOT NULL,  -- JSON {name: {"value": float, "stderr": float|null}}
    n_samples     INTEGER NOT NULL,
    wall_s        REAL,
    created_at    TEXT    NOT NULL,
    UNIQUE (model, recipe, task, settings_hash, seed, version)
);
CREATE TABLE IF NOT EXISTS samples (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    data      TEXT    NOT NULL,      -- JSON of one per-sample record
    PRIMARY KEY (result_id, idx)
);
"""


class StoreError(RuntimeError):
    """A store that cannot be opened or a record that cannot be written."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text (and hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(settings)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """The key of one result. `settings` are everything else that changes the numbers
    (limit, shots, mc_num, sampler settings...); they are stored and hashed canonically."""

    model: str
    recipe: str
    task: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    version: str = __version__

    def __post_init__(self) -> None:
        for name in ("model", "recipe", "task", "version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise StoreError(f"cell {name} must be a non-empty string, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.seed, int):
            raise StoreError(f"cell seed must be an int, got {self.seed!r}")
        try:
            canonical_json(dict(self.settings))
        except (TypeError, ValueError) as e:
            raise StoreError(f"cell settings must be plain JSON (str/int/float/bool/None, "
                             f"lists, dicts; no NaN): {e}") from e

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def key(self) -> tuple:
        return (self.model, self.recipe, self.task, self.settings_hash, self.seed, self.version)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.key == other.key


@dataclass(frozen=True)
class Result:
    cell: Cell
    metrics: dict[str, dict[str, float | None]]
    n_samples: int
    wall_s: float | None
    created_at: str


def _metric_record(v: Any) -> dict[str, float | None]:
    """Accept `value`, `(value, stderr)` or `{"value":, "stderr":}`; NaN stderr -> None."""
    if isinstance(v, Mapping):
        value, stderr = v["value"], v.get("stderr")
    elif isinstance(v, (tuple, list)):
        value, stderr = v
    else:
        value, stderr = v, None
    value = float(value)
    stderr = None if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)) \
        else float(stderr)
    if math.isnan(value):
        raise StoreError("a metric value is NaN; the evaluation did not produce a number")
    return {"value": value, "stderr": stderr}


class Store:
    """SQLite results store (WAL, busy timeout); each `put` is one atomic transaction."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 600.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; pass a file path for the results store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{self.path} has store schema {version}, this dllmq writes "
                                 f"{SCHEMA_VERSION}; use a new store file")
            con.execute("BEGIN IMMEDIATE")
            for statement in _statements():
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open results store {self.path}: {e}") from e
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put the "
                             "store on a local file system")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        return con

    # ---- writing -------------------------------------------------------------------
    def put(
        self,
        cell: Cell,
        metrics: Mapping[str, Any],
        samples: Iterable[Mapping[str, Any]] = (),
        wall_s: float | None = None,
    ) -> bool:
        """Write one finished cell with its samples in one transaction.

        Returns True if written, False if the cell was already present (another process
        finished it first); the existing row is kept untouched."""
        metric_json = canonical_json({k: _metric_record(v) for k, v in metrics.items()})
        sample_rows = [json.dumps(s, sort_keys=True, default=str) for s in samples]
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute(
                    "INSERT OR IGNORE INTO results (model, recipe, task, settings_hash, seed, "
                    "version, settings, metrics, n_samples, wall_s, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (*cell.key, canonical_json(dict(cell.settings)), metric_json,
                     len(sample_rows), wall_s, created))
                if cur.rowcount == 0:
                    con.execute("ROLLBACK")
                    log.info("cell %s already in %s; kept the existing result", cell.key, self.path)
                    return False
                rid = cur.lastrowid
                con.executemany("INSERT INTO samples (result_id, idx, data) VALUES (?,?,?)",
                                ((rid, i, d) for i, d in enumerate(sample_rows)))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return True

    def delete(self, cell: Cell) -> bool:
        with closing(self._connect()) as con:
            cur = con.execute(_WHERE_KEY.format("DELETE FROM results"), cell.key)
            return cur.rowcount > 0

    # ---- reading -------------------------------------------------------------------
    def has(self, cell: Cell) -> bool:
        with closing(self._connect()) as con:
            return con.execute(_WHERE_KEY.format("SELECT 1 FROM results"), cell.key).fetchone() \
                is not None

    def get(self, cell: Cell) -> Result | None:
        with closing(self._connect()) as con:
            row = con.execute(_WHERE_KEY.format(f"SELECT {_ROW_COLUMNS} FROM results"),
                              cell.key).fetchone()
        return None if row is None else _result(row)

    def samples(self, cell: Cell) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT s.data FROM samples s JOIN results r ON s.result_id = r.id WHERE "
                + " AND ".join(f"r.{c} = ?" for c in KEY_COLUMNS) + " ORDER BY s.idx",
                cell.key).fetchall()
        return [json.loads(r[0]) for r in rows]

    def results(self, **where: Any) -> list[Result]:
        """All results, optionally filtered on key columns (model=..., task=..., ...)."""
        unknown = sorted(set(where) - set(KEY_COLUMNS))
        if unknown:
            raise StoreError(f"cannot filter on {', '.join(unknown)}; filter on "
                             f"{', '.join(KEY_COLUMNS)}")
        sql = f"SELECT {_ROW_COLUMNS} FROM results"
        if where:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c in where)
        sql += " ORDER BY id"
        with closing(self._connect()) as con:
            rows = con.execute(sql, tuple(where.values())).fetchall()
        return [_result(r) for r in rows]

    def cells(self, **where: Any) -> list[Cell]:
        return [r.cell for r in self.results(**where)]

    def to_dataframe(self, **where: Any):
        """One row per cell x metric: key columns, settings (JSON), metric, value, stderr."""
        import pandas as pd

        rows = []
        for r in self.results(**where):
            base = {"model": r.cell.model, "recipe": r.cell.recipe, "task": r.cell.task,
                    "settings_hash": r.cell.settings_hash, "seed": r.cell.seed,
                    "version": r.cell.version, "settings": canonical_json(dict(r.cell.settings)),
                    "n_samples": r.n_samples}
            for name, m in r.metrics.items():
                rows.append({**base, "metric": name, "value": m["value"], "stderr": m["stderr"]})
        columns = [*KEY_COLUMNS, "settings", "n_samples", "metric", "value", "stderr"]
        return pd.DataFrame(rows, columns=columns)

    def check(self) -> None:
        """SQLite's integrity check plus: every result has exactly its n_samples samples."""
        with closing(self._connect()) as con:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"{self.path} failed SQLite's integrity check: {ok}")
            bad = con.execute(
                "SELECT r.id, r.n_samples, COUNT(s.idx) FROM results r LEFT JOIN samples s "
                "ON s.result_id = r.id GROUP BY r.id HAVING COUNT(s.idx) != r.n_samples"
            ).fetchall()
        if bad:
            raise StoreError(f"{self.path}: {len(bad)} result(s) with a wrong number of samples, "
                             f"e.g. id {bad[0][0]} has {bad[0][2]} of {bad[0][1]}")


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


_WHERE_KEY = "{} WHERE " + " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
_ROW_COLUMNS = ", ".join(("model", "recipe", "task", "settings", "seed", "version", "metrics",
                          "n_samples", "wall_s", "created_at"))


def _result(row: tuple) -> Result:
    model, recipe, task, settings, seed, version, metrics, n, wall, created = row
    return Result(Cell(model, recipe, task, json.loads(settings), seed, version),
                  json.loads(metrics), n, wall, created)
