"""The results store: one SQLite file, one row per evaluated cell, safe to share.

A *cell* is model x recipe x task x settings x seed, keyed by everything that determines its
numbers (`Cell.key`, built by `dllmq.sweep`): the resolved calibration the recipe was applied
with, the checkpoint's content fingerprint (never its path), the task's config and documents
fingerprint, and the dllmq and lm-eval versions (`dllmq.fingerprint`). The cell id is the
SHA-256 of all of it; a result is served only for an equal id, so a changed calibration,
checkpoint file, task file or version runs the cell again. Rows written by older dllmq
versions (store schema 1, keyed without calibration or content) stay readable
(`results`, `to_dataframe`, flagged `legacy`) but never match a cell.

Each finished cell is written in one transaction together with its per-sample outputs, so a
killed process leaves either the whole cell or nothing; a UNIQUE cell id keeps every cell
present at most once.

Concurrency (the design `dllmq.sweep`'s workers rely on): SQLite in WAL mode on a *local*
file system (the store refuses a file system where WAL does not work), busy timeout and
`BEGIN IMMEDIATE`, so writers queue instead of failing. Before computing a cell a worker
*claims* it (`claim`): a row with its owner and a lease expiry, taken in one transaction, so
two workers never hold the same cell. The owner renews its leases while it works; a claim
whose lease expired, or whose owner process is gone (same host, pid not alive), is stale and
the next worker takes it over, so a killed worker's cells are redone. `put` removes the
claim; a finished cell is never claimed again. Several sweeps on one store therefore split
the work between them. SQLite's locking is not reliable over NFS: keep the store on a local
or lock-safe file system that all workers see (one host with many GPUs: any local disk).
One store file per node, merged by readers, is not implemented.

    store = Store("results.sqlite")
    cell = Cell("tiny-llada-instruct", "w4a16g128-gptq", "arc_easy", {"mc_num": 128}, seed=0,
                key={"calib": {...}, "checkpoint": "sha256:...", ...})
    if not store.has(cell):
        store.put(cell, {"acc": (0.61, 0.01)}, samples=[{"doc_id": 0, ...}])
    store.to_dataframe()  # one row per cell x metric

A *shard* (`Cell.shard`, a cell's key plus an item range) is stored, claimed and leased like
a cell; `results` and `to_dataframe` leave shard rows out (the sweep writes the cell's own row
once its shards are stored).

Metrics are stored as {name: {"value": v, "stderr": s}}; lm-eval's "acc,none" style
names are kept as given. Each row also keeps the evaluation's wall seconds and, of those, the
model's (`request_s`), which `dllmq.plan` estimates other cells from; a store written before
request_s existed is read as it is and gains the column with its next `put`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
KEY_COLUMNS = ("model", "recipe", "task", "settings_hash", "seed", "version")
FILTER_COLUMNS = (*KEY_COLUMNS, "cell_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id            INTEGER PRIMARY KEY,
    cell_id       TEXT    UNIQUE,    -- sha256 of the whole key, NULL for legacy (schema 1) rows
    model         TEXT    NOT NULL,
    recipe        TEXT    NOT NULL,
    task          TEXT    NOT NULL,
    settings_hash TEXT    NOT NULL,
    seed          INTEGER NOT NULL,
    version       TEXT    NOT NULL,
    settings      TEXT    NOT NULL,  -- canonical JSON of the settings that were hashed
    key           TEXT,              -- canonical JSON of the rest of the key (calib, content...)
    metrics       TEXT    NOT NULL,  -- JSON {name: {"value": float, "stderr": float|null}}
    n_samples     INTEGER NOT NULL,
    wall_s        REAL,
    created_at    TEXT    NOT NULL,
    worker        TEXT,
    request_s     REAL               -- of wall_s, the model's (added to older stores by `put`)
);
CREATE TABLE IF NOT EXISTS samples (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    data      TEXT    NOT NULL,      -- JSON of one per-sample record
    PRIMARY KEY (result_id, idx)
);
CREATE TABLE IF NOT EXISTS claims (
    cell_id   TEXT    PRIMARY KEY,
    owner     TEXT    NOT NULL,      -- host:pid:nonce of the worker computing the cell
    host      TEXT    NOT NULL,
    pid       INTEGER NOT NULL,
    claimed   REAL    NOT NULL,      -- time.time() when taken
    expires   REAL    NOT NULL       -- lease end, the owner renews it while it works
);
CREATE TABLE IF NOT EXISTS digests (
    stat_key  TEXT    PRIMARY KEY,   -- path|size|mtime_ns|ctime_ns|inode|device
    digest    TEXT    NOT NULL
)
"""

class StoreError(RuntimeError):
    """A store that cannot be opened or a record that cannot be written (one line)."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text (and hash)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(settings)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """The key of one result. `settings` are the evaluation settings (limit, shots, mc_num,
    sampler settings...); `key` is the rest of what determines the numbers (calibration,
    checkpoint and task fingerprints, versions), as `dllmq.sweep.keyed_cells` builds it.
    Both are stored and hashed canonically; `cell_id` hashes every field."""

    model: str
    recipe: str
    task: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    version: str = __version__
    key: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model", "recipe", "task", "version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise StoreError(f"cell {name} must be a non-empty string, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.seed, int):
            raise StoreError(f"cell seed must be an int, got {self.seed!r}")
        for what in ("settings", "key"):
            try:
                canonical_json(dict(getattr(self, what)))
            except (TypeError, ValueError) as e:
                raise StoreError(f"cell {what} must be plain JSON (str/int/float/bool/None, "
                                 f"lists, dicts; no NaN): {e}") from e

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def cell_id(self) -> str:
        return hashlib.sha256(canonical_json({
            "model": self.model, "recipe": self.recipe, "task": self.task,
            "settings": dict(self.settings), "seed": self.seed, "version": self.version,
            "key": dict(self.key)}).encode()).hexdigest()[:32]

    def __hash__(self) -> int:
        return hash(self.cell_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.cell_id == other.cell_id

    @property
    def shard(self) -> tuple[int, int] | None:
        """(start, stop) documents of a shard (`dllmq.sweep.shard_cell`), None for a cell."""
        r = self.key.get("shard")
        return None if r is None else (int(r[0]), int(r[1]))

    def label(self) -> str:
        part = "" if self.shard is None else f" items {self.shard[0]}-{self.shard[1] - 1}"
        return f"{self.model} {self.recipe} {self.task} seed {self.seed}{part}"


@dataclass(frozen=True)
class Result:
    cell: Cell
    metrics: dict[str, dict[str, float | None]]
    n_samples: int
    wall_s: float | None
    created_at: str
    legacy: bool = False  # written by store schema 1 (keyed without calibration or content)
    worker: str | None = None  # the claim owner that computed it
    request_s: float | None = None  # of wall_s, seconds in the model's request methods


@dataclass(frozen=True)
class Claim:
    cell_id: str
    owner: str
    host: str
    pid: int
    claimed: float
    expires: float

    def stale(self, now: float | None = None) -> bool:
        """Lease expired, or the owner is a process of this host that no longer exists."""
        if (now or time.time()) > self.expires:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def new_owner() -> str:
    """A worker identity: host:pid:nonce (the nonce tells two runs of one pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


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


def check_writable(path: str | Path) -> None:
    """Raise StoreError (one line) unless a store can be written at `path`; creates nothing.
    Callers run it before any long work."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path} is a directory; pass a file path for the results store")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"results store {path} is not writable; choose another --store path "
                             "or fix its permissions")
        Store(path)  # opens it: a damaged file fails here, naming the file
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create results store {path}: {parent} is not a writable "
                         "directory; choose another --store path")


class Store:
    """SQLite results store (WAL, busy timeout); each `put` is one atomic transaction."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 600.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; pass a file path for the results store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create results store {self.path}: {e.strerror}; choose "
                             "another --store path") from None
        with self._open() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise StoreError(f"{self.path} has store schema {version}, this dllmq writes "
                                 f"{SCHEMA_VERSION}; use a new store file")
            if version == SCHEMA_VERSION:
                return
            con.execute("PRAGMA foreign_keys = OFF")  # the migration drops a parent table
            con.execute("BEGIN IMMEDIATE")
            version = con.execute("PRAGMA user_version").fetchone()[0]  # another process?
            if version == 1:
                _migrate_1_to_2(con)
            for statement in _statements():
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")

    def _open(self) -> _Connection:
        return _Connection(self)

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as e:
            raise _store_error(self.path, e) from None
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
        worker: str | None = None,
        request_s: float | None = None,
        created_at: str | None = None,
    ) -> bool:
        """Write one finished cell with its samples in one transaction (and drop its claim).
        `wall_s`: the evaluation's seconds; `request_s`: of those, the model's (the rest is
        lm-eval's own work), which `dllmq.plan` estimates from. `created_at`: when it was
        computed (default now; `dllmq.bundle` keeps the original's).

        Returns True if written, False if the cell was already present (another process
        finished it first); the existing row is kept untouched."""
        metric_json = canonical_json({k: _metric_record(v) for k, v in metrics.items()})
        sample_rows = [json.dumps(s, sort_keys=True, default=str) for s in samples]
        created = created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._open() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if not _has_request_s(con):  # a store of an earlier dllmq 2-schema
                    con.execute("ALTER TABLE results ADD COLUMN request_s REAL")
                cur = con.execute(
                    "INSERT OR IGNORE INTO results (cell_id, model, recipe, task, settings_hash, "
                    "seed, version, settings, key, metrics, n_samples, wall_s, created_at, worker, "
                    "request_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (cell.cell_id, cell.model, cell.recipe, cell.task, cell.settings_hash,
                     cell.seed, cell.version, canonical_json(dict(cell.settings)),
                     canonical_json(dict(cell.key)), metric_json, len(sample_rows), wall_s,
                     created, worker, request_s))
                con.execute("DELETE FROM claims WHERE cell_id = ?", (cell.cell_id,))
                if cur.rowcount == 0:
                    con.execute("COMMIT")
                    log.info("cell %s already in %s; kept the existing result", cell.label(),
                             self.path)
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
        with self._open() as con:
            cur = con.execute("DELETE FROM results WHERE cell_id = ?", (cell.cell_id,))
            return cur.rowcount > 0

    # ---- claims (work split between workers) ----------------------------------------
    def claim(self, cell: Cell, owner: str, lease_s: float = 120.0) -> str:
        """Take a cell for `owner`: "mine" (claimed now, or already ours), "done" (stored),
        or "taken" (another live worker holds it). A stale claim is taken over."""
        host, pid = owner.split(":")[0], int(owner.split(":")[1])
        now = time.time()
        with self._open() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("SELECT 1 FROM results WHERE cell_id = ?",
                               (cell.cell_id,)).fetchone():
                    con.execute("COMMIT")
                    return "done"
                row = con.execute(f"SELECT {_CLAIM_COLUMNS} FROM claims WHERE cell_id = ?",
                                  (cell.cell_id,)).fetchone()
                if row is not None and row[1] != owner and not Claim(*row).stale(now):
                    con.execute("COMMIT")
                    return "taken"
                if row is not None and row[1] != owner:
                    log.warning("cell %s: taking over the stale claim of %s", cell.label(), row[1])
                con.execute("INSERT OR REPLACE INTO claims (cell_id, owner, host, pid, claimed, "
                            "expires) VALUES (?,?,?,?,?,?)",
                            (cell.cell_id, owner, host, pid, now, now + lease_s))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return "mine"

    def renew(self, owner: str, lease_s: float = 120.0) -> int:
        """Extend every lease `owner` holds; returns how many."""
        with self._open() as con:
            return con.execute("UPDATE claims SET expires = ? WHERE owner = ?",
                               (time.time() + lease_s, owner)).rowcount

    def release(self, owner: str, cell: Cell | None = None) -> None:
        """Drop `owner`'s claim on `cell` (all its claims when None)."""
        with self._open() as con:
            if cell is None:
                con.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                con.execute("DELETE FROM claims WHERE owner = ? AND cell_id = ?",
                            (owner, cell.cell_id))

    def claims(self) -> list[Claim]:
        with self._open() as con:
            return [Claim(*r) for r in con.execute(f"SELECT {_CLAIM_COLUMNS} FROM claims")]

    # ---- the checkpoint digest cache (dllmq.fingerprint.DigestCache) -------------------
    def get_digest(self, key: str) -> str | None:
        with self._open() as con:
            row = con.execute("SELECT digest FROM digests WHERE stat_key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_digest(self, key: str, digest: str) -> None:
        with self._open() as con:
            con.execute("INSERT OR REPLACE INTO digests (stat_key, digest) VALUES (?,?)",
                        (key, digest))

    # ---- reading -------------------------------------------------------------------
    def has(self, cell: Cell) -> bool:
        with self._open() as con:
            return con.execute("SELECT 1 FROM results WHERE cell_id = ?",
                               (cell.cell_id,)).fetchone() is not None

    def stored_ids(self) -> set[str]:
        with self._open() as con:
            return {r[0] for r in con.execute(
                "SELECT cell_id FROM results WHERE cell_id IS NOT NULL")}

    def get(self, cell: Cell) -> Result | None:
        with self._open() as con:
            row = con.execute(f"SELECT {_row_columns(con)} FROM results WHERE cell_id = ?",
                              (cell.cell_id,)).fetchone()
        return None if row is None else _result(row)

    def samples(self, cell: Cell) -> list[dict[str, Any]]:
        with self._open() as con:
            rows = con.execute(
                "SELECT s.data FROM samples s JOIN results r ON s.result_id = r.id WHERE "
                "r.cell_id = ? ORDER BY s.idx", (cell.cell_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def results(self, shards: bool = False, **where: Any) -> list[Result]:
        """All results (legacy rows included), optionally filtered on key columns
        (model=..., task=..., cell_id=...). Shards of a sharded cell (`Cell.shard`: rows the
        sweep assembles the cell's row from) only with `shards=True`."""
        unknown = sorted(set(where) - set(FILTER_COLUMNS))
        if unknown:
            raise StoreError(f"cannot filter on {', '.join(unknown)}; filter on "
                             f"{', '.join(FILTER_COLUMNS)}")
        with self._open() as con:
            sql = f"SELECT {_row_columns(con)} FROM results"
            if where:
                sql += " WHERE " + " AND ".join(f"{c} = ?" for c in where)
            sql += " ORDER BY id"
            rows = con.execute(sql, tuple(where.values())).fetchall()
        return [x for x in map(_result, rows) if shards or x.cell.shard is None]

    def cells(self, **where: Any) -> list[Cell]:
        return [r.cell for r in self.results(**where)]

    def to_dataframe(self, **where: Any):
        """One row per cell x metric: key columns, settings (JSON), metric, value, stderr,
        and `legacy` (True for rows of an older store schema)."""
        import pandas as pd

        rows = []
        for r in self.results(**where):
            base = {"model": r.cell.model, "recipe": r.cell.recipe, "task": r.cell.task,
                    "settings_hash": r.cell.settings_hash, "seed": r.cell.seed,
                    "version": r.cell.version, "settings": canonical_json(dict(r.cell.settings)),
                    "n_samples": r.n_samples, "legacy": r.legacy}
            for name, m in r.metrics.items():
                rows.append({**base, "metric": name, "value": m["value"], "stderr": m["stderr"]})
        columns = [*KEY_COLUMNS, "settings", "n_samples", "metric", "value", "stderr", "legacy"]
        return pd.DataFrame(rows, columns=columns)

    def check(self) -> None:
        """SQLite's integrity check plus: every result has exactly its n_samples samples."""
        with self._open() as con:
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


class _Connection:
    """`with store._open() as con:` a connection that is closed after, with SQLite's errors
    (a damaged file, a read-only one, a full disk) turned into one StoreError naming the file."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.con = self.store._connect()
        return self.con

    def __exit__(self, exc_type, exc, tb) -> bool:
        with closing(self.con):
            if self.con.in_transaction and exc_type is not None:
                with suppress(sqlite3.Error):  # the original error is what the user needs
                    self.con.execute("ROLLBACK")
        if exc_type is not None and issubclass(exc_type, sqlite3.Error) \
                and not issubclass(exc_type, sqlite3.IntegrityError):
            raise _store_error(self.store.path, exc) from None
        return False


def _store_error(path: Path, e: sqlite3.Error) -> StoreError:
    msg = str(e)
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg):
        return StoreError(f"results store {path} is damaged or not a dllmq store ({msg}); move it "
                          "away and rerun (finished cells in it are lost), or pass another --store")
    if "readonly" in msg or "unable to open" in msg:
        return StoreError(f"results store {path} cannot be written ({msg}); choose another "
                          "--store path or fix its permissions")
    return StoreError(f"results store {path}: {msg}")


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def _migrate_1_to_2(con: sqlite3.Connection) -> None:
    """Schema 1 -> 2 inside the caller's transaction: `results` rebuilt without the old UNIQUE
    (model, recipe, task, settings_hash, seed, version), so fully keyed rows can sit next to the
    legacy ones; legacy rows keep their ids (their samples stay attached) and get cell_id NULL."""
    log.info("store schema 1 -> 2: old rows stay readable, they are never matched to a cell")
    results_sql = _statements()[0].replace("IF NOT EXISTS results", "results_v2")
    con.execute(results_sql)
    con.execute("INSERT INTO results_v2 (id, cell_id, model, recipe, task, settings_hash, seed, "
                "version, settings, key, metrics, n_samples, wall_s, created_at, worker) "
                "SELECT id, NULL, model, recipe, task, settings_hash, seed, version, settings, "
                "NULL, metrics, n_samples, wall_s, created_at, NULL FROM results")
    con.execute("DROP TABLE results")  # foreign keys are off: the samples stay
    con.execute("ALTER TABLE results_v2 RENAME TO results")


_ROW_COLUMNS = ", ".join(("model", "recipe", "task", "settings", "seed", "version", "key",
                          "metrics", "n_samples", "wall_s", "created_at", "worker"))


def _has_request_s(con: sqlite3.Connection) -> bool:
    """Whether `results` has the request_s column (stores written before it have not, until
    their next `put`: reading a store never changes its file)."""
    return any(row[1] == "request_s" for row in con.execute("PRAGMA table_info(results)"))


def _row_columns(con: sqlite3.Connection) -> str:
    return _ROW_COLUMNS + (", request_s" if _has_request_s(con) else ", NULL")
_CLAIM_COLUMNS = "cell_id, owner, host, pid, claimed, expires"


def _result(row: tuple) -> Result:
    model, recipe, task, settings, seed, version, key, metrics, n, wall, created, worker, \
        request_s = row
    return Result(Cell(model, recipe, task, json.loads(settings), seed, version,
                       json.loads(key) if key is not None else {}),
                  json.loads(metrics), n, wall, created, legacy=key is None, worker=worker,
                  request_s=request_s)
