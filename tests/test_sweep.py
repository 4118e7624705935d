"""Sweeps: grid validation (one line, nothing written), skipping finished cells, quantizing once
per model x recipe, and a sweep killed with SIGKILL then resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dllmq import harness
from dllmq.store import Store
from dllmq.sweep import GridError, load_grid, run_sweep, validate
from lm_eval.tasks import TaskManager

from evalkit import make_model_dir, write_tasks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    model = make_model_dir(root / "tiny-llada")
    tasks = write_tasks(root, n_docs=3)
    (tasks / "tiny_missing.yaml").write_text(
        "task: tiny_missing\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'nowhere.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")
    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    return {"root": root, "model": model, "tasks": tasks, "tm": tm}


def _grid(env, tmp_path, **over) -> Path:
    raw = {"store": "r.sqlite", "models": [str(env["model"])], "recipes": ["fp16"],
           "tasks": ["tiny_mc"], "seeds": [0], "settings": {"limit": 2, "mc_num": 4,
                                                             "batch_size": 4},
           "include_path": [str(env["tasks"])], "include_defaults": False, "device": "cpu"}
    raw.update(over)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BAD = [
    ({"recipes": ["w5a16-magic"]}, "recipe 'w5a16-magic'"),
    ({"tasks": ["tiny_nope"]}, "unknown task 'tiny_nope'"),
    ({"tasks": ["tiny_missing"]}, "nowhere.jsonl is missing"),
    ({"tasks": [{"task": "tiny_gen", "settings": {"gen_length": 512}}]},
     "generation of 512 tokens does not fit"),
    ({"tasks": ["tiny_gen"], "settings": {"gen_length": 8, "block_length": 3}},
     "not a multiple of block_length"),
    ({"settings": {"mc_nmu": 4}}, "unknown setting(s) mc_nmu"),
    ({"models": "", "recipes": ["fp16"]}, "`models` must be a non-empty list"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"axes": {"steps": 8}}, "axis steps must be a non-empty list"),
    ({"colour": "blue"}, "unknown key(s) colour"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_grid_is_one_line_and_writes_nothing(env, tmp_path, change, message):
    path = _grid(env, tmp_path, **change)
    with pytest.raises(GridError) as e:
        validate(load_grid(path), env["tm"])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r.sqlite").exists()


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("models: [a\nrecipes: fp16\n")
    with pytest.raises(GridError, match="not valid YAML at line"):
        load_grid(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(GridError, match="must be a YAML mapping"):
        load_grid(bad)
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "nope.yaml")


def test_cells_are_the_product_of_the_axes(env, tmp_path):
    grid = load_grid(_grid(env, tmp_path, recipes=["fp16", "w4a16g128-rtn"], seeds=[0, 1],
                           tasks=["tiny_mc", {"task": "tiny_gen", "settings": {"mc_num": 2}}],
                           axes={"steps": [4, 8]}))
    cells = grid.cells()
    assert len(cells) == len(set(cells)) == 2 * 2 * 2 * 2
    gen = [c for c in cells if c.task == "tiny_gen"]
    assert {(c.settings["mc_num"], c.settings["steps"], c.settings["limit"]) for c in gen} == \
        {(2, 4, 2), (2, 8, 2)}
    # grouped by model x recipe, in grid order: the sweep loads and quantizes each once
    assert [c.recipe for c in cells] == ["fp16"] * 8 + ["w4a16g128-rtn"] * 8


def test_sweep_runs_missing_cells_once_and_quantizes_once_per_recipe(env, tmp_path, monkeypatch):
    calls = []
    real = harness.quantize_model
    monkeypatch.setattr(harness, "quantize_model",
                        lambda model, tok, recipe, *a, **k: calls.append(recipe) or
                        real(model, tok, recipe, *a, **k))
    grid = load_grid(_grid(env, tmp_path, recipes=["fp16", "w4a16g128-rtn"], seeds=[0, 1]))
    report = run_sweep(grid, grid.store, progress=False, tm=env["tm"])
    store = Store(grid.store)
    assert (report.ran, report.skipped, len(report.done)) == (4, 0, 4)
    assert sorted(calls) == ["fp16", "w4a16g128-rtn"]
    cells = store.cells()
    assert len(cells) == len(set(cells)) == 4
    first = {c: store.get(c).created_at for c in cells}
    # the seeds are different Monte Carlo draws: per-sample likelihoods differ
    a, b = (store.samples(c)[0]["filtered_resps"] for c in cells if c.recipe == "fp16")
    assert a != b
    # a rerun skips everything; after deleting one cell only that one runs (and loads one model)
    calls.clear()
    assert run_sweep(grid, store, progress=False, tm=env["tm"]).ran == 0
    assert calls == []
    store.delete(cells[-1])
    report = run_sweep(grid, store, progress=False, tm=env["tm"])
    assert (report.ran, report.skipped) == (1, 3) and calls == [cells[-1].recipe]
    assert {c: store.get(c).created_at for c in cells[:-1]} == {c: first[c] for c in cells[:-1]}
    table = report.table()
    assert "fp16" in table and "w4a16g128-rtn" in table and "tiny_mc (acc)" in table
    assert len(table.splitlines()) == 2 + 2 + 1


def _env() -> dict:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO),
            "TOKENIZERS_PARALLELISM": "false"}


def test_cli_bad_grid_exits_with_one_line(env, tmp_path):
    path = _grid(env, tmp_path, tasks=["tiny_nope"])
    proc = subprocess.run([sys.executable, "-m", "dllmq", "sweep", str(path)], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("dllmq: error:")]
    assert len(err) == 1 and "unknown task 'tiny_nope'" in err[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.sqlite").exists()


def test_sigkill_mid_sweep_then_rerun_gives_every_cell_exactly_once(env, tmp_path):
    path = _grid(env, tmp_path, tasks=["tiny_mc", {"task": "tiny_gen",
                                                   "settings": {"gen_length": 4}}],
                 seeds=[0, 1, 2])
    store_path = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "dllmq", "sweep", str(path)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if store_path.exists() and len(Store(store_path).cells()) >= 2:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = {c: r.created_at for c in Store(store_path).cells()
              for r in [Store(store_path).get(c)]}
    assert 2 <= len(before) < 6
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{6 - len(before)} run now, {len(before)} already stored" in done.stdout
    store = Store(store_path)
    store.check()  # SQLite integrity + every result has all its samples
    cells = store.cells()
    assert len(cells) == len(set(cells)) == 6
    assert all(store.get(c).created_at == t for c, t in before.items())
    assert {(c.task, c.seed) for c in cells} == {(t, s) for t in ("tiny_mc", "tiny_gen")
                                                 for s in (0, 1, 2)}


def test_metrics_of_groups_and_single_task_wrappers():
    from dllmq.sweep import metrics_of

    wrapped = {"results": {"paper_arc_easy": {"alias": "paper_arc_easy"},
                           "arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 3}}}
    assert metrics_of(wrapped, "paper_arc_easy") == {"arc_easy/acc,none": (0.5, 0.1),
                                                     "acc,none": (0.5, 0.1)}
    group = {"results": {"g": {"acc,none": 0.3, "acc_stderr,none": 0.01},
                         "g_a": {"acc,none": 0.5, "acc_stderr,none": "N/A"}, "g_b": {"acc,none": 0.1}}}
    assert metrics_of(group, "g") == {"acc,none": (0.3, 0.01), "g_a/acc,none": (0.5, None),
                                      "g_b/acc,none": (0.1, None)}
    with pytest.raises(RuntimeError, match="no metrics"):
        metrics_of({"results": {"t": {"alias": "t"}, "a": {}, "b": {}}}, "t")
