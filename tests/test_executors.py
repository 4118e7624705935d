"""Executors: bad input fails in one line before any worker starts and before the store (or
anything else) is written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dllmq import executors
from dllmq.sweep import GridError, load_grid

from evalkit import grid_env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return grid_env(tmp_path_factory.mktemp("executors"), n_docs=3)


def _grid_file(env, tmp_path, **over) -> Path:
    raw = {"store": "r.sqlite", "models": [str(env["model"])], "recipes": ["fp16"],
           "tasks": ["tiny_mc"], "seeds": [0], "settings": {"limit": 2, "mc_num": 4},
           "include_path": [str(env["tasks"])], "include_defaults": False, "device": "cpu"}
    raw.update(over)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BAD = [({"tasks": ["tiny_nope"]}, "unknown task 'tiny_nope'"),
       ({"tasks": ["tiny_ppl"], "shard_size": 1}, "cannot be split into shards")]


def _no_workers(monkeypatch):
    def popen(*a, **k):
        raise AssertionError("a worker was started for a grid that cannot run")
    monkeypatch.setattr(executors.subprocess, "Popen", popen)


@pytest.mark.parametrize(("change", "message"), BAD)
def test_run_local_bad_grid_one_line_and_no_store_file(env, tmp_path, monkeypatch, change,
                                                       message):
    grid = load_grid(_grid_file(env, tmp_path, **change))
    _no_workers(monkeypatch)
    with pytest.raises(GridError) as e:
        executors.run_local(grid, grid.store, 2, progress=False, tm=env["tm"])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no store, no -wal


def test_run_submitit_bad_grid_one_line_and_no_store_file(env, tmp_path):
    pytest.importorskip("submitit")
    grid = load_grid(_grid_file(env, tmp_path, tasks=["tiny_nope"]))
    with pytest.raises(GridError) as e:
        executors.run_submitit(grid, grid.store, 2, progress=False, tm=env["tm"])
    assert "unknown task 'tiny_nope'" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no store, no job folder


def test_run_local_unwritable_store_is_one_line(env, tmp_path, monkeypatch):
    grid = load_grid(_grid_file(env, tmp_path))
    (tmp_path / "r.sqlite").mkdir()  # a directory where the store file should be
    _no_workers(monkeypatch)
    with pytest.raises(GridError, match="is a directory; pass a file path"):
        executors.run_local(grid, grid.store, 2, progress=False, tm=env["tm"])


def test_cli_local_executor_bad_grid_is_one_line_and_writes_nothing(env, tmp_path):
    path = _grid_file(env, tmp_path, tasks=["tiny_nope"])
    proc = subprocess.run([sys.executable, "-m", "dllmq", "sweep", str(path), "--executor",
                           "local", "--workers", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1"})
    err = [line for line in proc.stderr.splitlines() if line.startswith("dllmq: error:")]
    assert proc.returncode != 0 and len(err) == 1 and "unknown task 'tiny_nope'" in err[0], \
        proc.stderr[-1500:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]
