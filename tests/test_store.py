"""The results store: round trip, one row per cell, concurrent writers, crash safety."""

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from dllmq.store import Cell, Store, StoreError


def test_round_trip_and_settings_hash_ignores_key_order(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    cell = Cell("m", "fp16", "arc_easy", {"mc_num": 8, "limit": 4}, seed=1)
    samples = [{"doc_id": i, "resp": f"r{i}"} for i in range(3)]
    assert store.put(cell, {"acc,none": (0.5, 0.25), "n": 3}, samples, wall_s=1.5)
    same = Cell("m", "fp16", "arc_easy", {"limit": 4, "mc_num": 8}, seed=1)
    assert store.has(same)
    got = store.get(same)
    assert got.metrics == {"acc,none": {"value": 0.5, "stderr": 0.25},
                           "n": {"value": 3.0, "stderr": None}}
    assert got.cell == cell and dict(got.cell.settings) == {"mc_num": 8, "limit": 4}
    assert store.samples(cell) == samples
    assert not store.has(Cell("m", "fp16", "arc_easy", {"mc_num": 16, "limit": 4}, seed=1))
    assert not store.has(Cell("m", "fp16", "arc_easy", {"mc_num": 8, "limit": 4}, seed=2))
    assert not store.has(Cell("m", "fp16", "arc_easy", {"mc_num": 8, "limit": 4}, seed=1,
                              version="0.0.0"))
    # every part of the key counts: here the calibration the recipe was applied with
    assert not store.has(Cell("m", "fp16", "arc_easy", {"mc_num": 8, "limit": 4}, seed=1,
                              key={"calib": {"nsamples": 32}}))
    df = store.to_dataframe()
    assert sorted(df["metric"]) == ["acc,none", "n"]
    assert df.loc[df.metric == "acc,none", "stderr"].item() == 0.25


def test_second_put_keeps_first_result(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    cell = Cell("m", "fp16", "t", {}, seed=0)
    assert store.put(cell, {"acc": 0.1}, [{"a": 1}])
    assert not store.put(cell, {"acc": 0.9}, [{"a": 2}, {"a": 3}])
    assert store.get(cell).metrics["acc"]["value"] == 0.1
    assert store.samples(cell) == [{"a": 1}]
    assert len(store.cells()) == 1
    store.check()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    with pytest.raises(StoreError, match="plain JSON"):
        Cell("m", "fp16", "t", {"x": object()})
    with pytest.raises(StoreError, match="NaN"):
        store.put(Cell("m", "fp16", "t"), {"acc": float("nan")})
    assert store.cells() == []
    with pytest.raises(StoreError, match="filter on"):
        store.results(modle="m")
    (tmp_path / "d").mkdir()
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path / "d")


def test_wal_mode_and_unique_constraint_in_the_file(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path).put(Cell("m", "fp16", "t"), {"acc": 1.0})
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = con.execute("SELECT cell_id, model, recipe, task, settings_hash, seed, version, "
                      "settings, metrics, n_samples, wall_s, created_at FROM results").fetchone()
    with pytest.raises(sqlite3.IntegrityError):  # the constraint, not only our INSERT OR IGNORE
        con.execute("INSERT INTO results (cell_id, model, recipe, task, settings_hash, seed, "
                    "version, settings, metrics, n_samples, wall_s, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)


def _writer(path: str, worker: int, n: int) -> None:
    store = Store(path)
    for i in range(n):
        # both workers write the same cells (a race on every key) and a few of their own
        store.put(Cell("m", "fp16", f"task{i}", {"i": i}), {"acc": worker}, [{"w": worker}] * 5)
        store.put(Cell("m", f"w{worker}", f"task{i}"), {"acc": i}, [{"i": i}])


def test_two_processes_writing_at_once(tmp_path):
    path = str(tmp_path / "r.sqlite")
    Store(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(path)
    store.check()
    cells = store.cells()
    assert len(cells) == len(set(cells)) == 25 + 2 * 25
    for i in range(25):
        r = store.get(Cell("m", "fp16", f"task{i}", {"i": i}))
        assert r.n_samples == 5
        assert {s["w"] for s in store.samples(r.cell)} == {int(r.metrics["acc"]["value"])}


def test_sigkill_while_writing_leaves_only_whole_cells(tmp_path):
    path = tmp_path / "r.sqlite"
    Store(path)
    code = textwrap.dedent(f"""
        from dllmq.store import Cell, Store
        store = Store({str(path)!r})
        i = 0
        while True:
            store.put(Cell("m", "fp16", f"t{{i}}"), {{"acc": i}}, [{{"x": "y" * 100}}] * 2000)
            i += 1
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let a few cells land, then kill mid-transaction (most time is in puts)
        proc.stdout.readline()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(path)
    store.check()
    results = store.results()
    assert len(results) >= 3
    assert all(r.n_samples == 2000 for r in results)


V1_SCHEMA = """
CREATE TABLE results (id INTEGER PRIMARY KEY, model TEXT NOT NULL, recipe TEXT NOT NULL,
    task TEXT NOT NULL, settings_hash TEXT NOT NULL, seed INTEGER NOT NULL, version TEXT NOT NULL,
    settings TEXT NOT NULL, metrics TEXT NOT NULL, n_samples INTEGER NOT NULL, wall_s REAL,
    created_at TEXT NOT NULL, UNIQUE (model, recipe, task, settings_hash, seed, version));
CREATE TABLE samples (result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (result_id, idx));
PRAGMA user_version = 1;
"""


def test_schema_1_rows_stay_readable_and_never_match(tmp_path):
    """A store written by dllmq before cells were keyed by calibration and content (schema 1,
    built here by hand as that version wrote it)."""
    from dllmq.store import settings_hash

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    settings = {"limit": 4}
    con.execute("INSERT INTO results VALUES (1, 'm', 'w4a16g128-gptq', 't', ?, 0, '0.1.0', ?, "
                "'{\"acc\":{\"stderr\":null,\"value\":0.25}}', 2, 1.0, '2026-01-01T00:00:00Z')",
                (settings_hash(settings), '{"limit":4}'))
    con.executemany("INSERT INTO samples VALUES (1, ?, ?)", [(0, '{"a":0}'), (1, '{"a":1}')])
    con.commit()
    con.close()
    store = Store(path)
    (old,) = store.results()
    assert old.legacy and old.metrics["acc"]["value"] == 0.25 and old.n_samples == 2
    df = store.to_dataframe()
    assert df["legacy"].tolist() == [True] and df["value"].tolist() == [0.25]
    store.check()  # the legacy row kept its samples through the migration
    # the same model/recipe/task/settings/seed/version is not served from the legacy row...
    same = Cell("m", "w4a16g128-gptq", "t", settings, 0, "0.1.0")
    assert not store.has(same) and store.get(same) is None
    # ...and a fully keyed result is written next to it (the old UNIQUE constraint is gone)
    new = Cell("m", "w4a16g128-gptq", "t", settings, 0, "0.1.0",
               key={"calib": {"source": "embedded", "nsamples": 2, "seqlen": 32, "seed": 0}})
    assert store.put(new, {"acc": 0.5}, [{"a": 9}])
    assert store.get(new).metrics["acc"]["value"] == 0.5 and not store.get(new).legacy
    assert [r.legacy for r in store.results()] == [True, False]
    store.check()
    assert Store(path).results()[0].legacy  # reopening does not migrate again


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_store_file_is_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "r.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 200)
    else:
        store = Store(path)
        for i in range(50):
            store.put(Cell("m", "fp16", f"t{i}"), {"acc": i}, [{"x": "y" * 500}] * 20)
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
        for extra in (tmp_path / "r.sqlite-wal", tmp_path / "r.sqlite-shm"):
            extra.unlink(missing_ok=True)
    with pytest.raises(StoreError) as e:
        store = Store(path)
        store.results()
        store.check()
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and ("damaged" in msg or "integrity" in msg)


def test_unwritable_store_path_fails_before_any_work(tmp_path):
    from dllmq.store import check_writable

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="not a writable directory"):
        check_writable(f / "r.sqlite")  # a file where a folder should be
    with pytest.raises(StoreError, match="cannot create results store"):
        Store(f / "r.sqlite")
    check_writable(tmp_path / "new" / "r.sqlite")
    assert not (tmp_path / "new").exists()  # the check creates nothing
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            return  # root writes anywhere: only the case above applies
        with pytest.raises(StoreError, match="not a writable directory"):
            check_writable(ro / "sub" / "r.sqlite")
        with pytest.raises(StoreError, match="cannot"):
            Store(ro / "r.sqlite")
    finally:
        ro.chmod(0o700)


def test_claims_split_cells_and_stale_claims_are_taken_over(tmp_path):
    from dllmq.store import new_owner

    store = Store(tmp_path / "r.sqlite")
    a, b = Cell("m", "fp16", "t1"), Cell("m", "fp16", "t2")
    me, other = new_owner(), new_owner()
    assert store.claim(a, me) == "mine"
    assert store.claim(a, me) == "mine"  # idempotent for its owner
    assert store.claim(a, other) == "taken"  # a live owner (this very process)
    assert store.claim(b, other) == "mine"
    store.put(a, {"acc": 1.0})
    assert store.claim(a, other) == "done"
    assert [c.cell_id for c in store.claims()] == [b.cell_id]  # put dropped a's claim
    # an expired lease is stale even when its owner lives
    assert store.claim(Cell("m", "fp16", "t3"), me, lease_s=-1.0) == "mine"
    assert store.claim(Cell("m", "fp16", "t3"), other) == "mine"
    # a claim of a process that no longer exists on this host is stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    ghost = f"{new_owner().split(':')[0]}:{dead}:feed"
    c4 = Cell("m", "fp16", "t4")
    assert store.claim(c4, ghost, lease_s=3600) == "mine"
    assert store.claim(c4, me) == "mine"
    assert store.renew(me, lease_s=10) == 1 and store.renew(other) == 2


def test_request_seconds_round_trip_and_older_stores_gain_the_column_on_write(tmp_path):
    """`request_s` (the model's share of wall_s, what `plan` estimates from) is stored; a store
    of a dllmq before it (no such column) is read as it is, unchanged on disk, and gains the
    column with its next write, its rows kept (request_s None)."""
    path = tmp_path / "r.sqlite"
    store = Store(path)
    old, new = Cell("m", "fp16", "t", {"limit": 2}), Cell("m", "fp16", "t", {"limit": 4})
    assert store.put(old, {"acc": 0.5}, [{"doc_id": 0}], wall_s=2.0, request_s=0.5)
    assert store.get(old).request_s == 0.5
    con = sqlite3.connect(path)
    con.execute("UPDATE results SET request_s = NULL")
    con.execute("ALTER TABLE results DROP COLUMN request_s")  # as the previous dllmq wrote it
    con.commit()
    con.close()
    before = path.read_bytes()
    store = Store(path)
    (r,) = store.results()
    assert (r.cell, r.wall_s, r.request_s) == (old, 2.0, None) and store.get(old).request_s is None
    assert path.read_bytes() == before  # reading does not change the file
    assert store.put(new, {"acc": 0.75}, [{"doc_id": 0}], wall_s=3.0, request_s=1.25)
    assert [(x.cell, x.request_s) for x in store.results()] == [(old, None), (new, 1.25)]
    store.check()
