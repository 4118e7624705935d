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
    row = con.execute("SELECT model, recipe, task, settings_hash, seed, version, settings, "
                      "metrics, n_samples, wall_s, created_at FROM results").fetchone()
    with pytest.raises(sqlite3.IntegrityError):  # the constraint, not only our INSERT OR IGNORE
        con.execute("INSERT INTO results (model, recipe, task, settings_hash, seed, version, "
                    "settings, metrics, n_samples, wall_s, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)


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
