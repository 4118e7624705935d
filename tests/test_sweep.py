"""Sweeps: grid validation (one line, nothing written), skipping finished cells, quantizing once
per model x recipe, and a sweep killed with SIGKILL then resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from dllmq import sweep
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
    real = sweep.build_model
    monkeypatch.setattr(sweep, "build_model",
                        lambda grid, cell, *a: calls.append(cell.recipe) or real(grid, cell, *a))
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


def _run(grid_path, tm):
    grid = load_grid(grid_path)
    return run_sweep(grid, grid.store, progress=False, tm=tm)


def test_calibration_change_runs_the_cell_again(env, tmp_path, monkeypatch):
    """Issue 16: a GPTQ grid rerun with calib samples 32 instead of 2 answered "0 run now"."""
    built = []
    real = sweep.build_model
    monkeypatch.setattr(sweep, "build_model",
                        lambda grid, cell, *a: built.append(cell.key["calib"]) or real(grid, cell, *a))
    calib = {"source": "embedded", "samples": 2, "seqlen": 32}
    first = _run(_grid(env, tmp_path, recipes=["w4a16g128-gptq"], calib=calib), env["tm"])
    assert first.ran == 1
    assert built == [{"source": "embedded", "nsamples": 2, "seqlen": 32, "seed": 0}]
    assert _run(_grid(env, tmp_path, recipes=["w4a16g128-gptq"], calib=calib), env["tm"]).ran == 0
    again = _run(_grid(env, tmp_path, recipes=["w4a16g128-gptq"], calib={**calib, "samples": 32}),
                 env["tm"])
    assert (again.ran, again.skipped) == (1, 0)
    # the model was quantized with exactly the calibration in the cell's key
    assert built[-1] == {"source": "embedded", "nsamples": 32, "seqlen": 32, "seed": 0}
    assert again.done[0].cell.key["calib"] == built[-1]
    assert len(Store(tmp_path / "r.sqlite").results()) == 2


def test_changed_weights_at_the_same_path_never_serve_the_old_result(env, tmp_path):
    """Issue 16: eval on corrupted weights, then on good weights restored at the same path,
    served the corrupted result. The checkpoint is keyed by content, not path."""
    model = make_model_dir(tmp_path / "ckpt")
    good = _run(_grid(env, tmp_path, models=[str(model)]), env["tm"])
    make_model_dir(model, seed=7)  # "corrupted": other weights, same path
    bad = _run(_grid(env, tmp_path, models=[str(model)]), env["tm"])
    assert bad.ran == 1
    assert bad.done[0].cell.key["checkpoint"] != good.done[0].cell.key["checkpoint"]
    make_model_dir(model, seed=0)  # restored
    back = _run(_grid(env, tmp_path, models=[str(model)]), env["tm"])
    assert (back.ran, back.skipped) == (0, 1)
    assert back.done[0].metrics == good.done[0].metrics
    assert back.done[0].created_at == good.done[0].created_at


def test_unwritable_store_fails_before_any_work(env, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "validate", lambda *a: pytest.fail("validated before the check"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(GridError, match="not a writable directory"):
        run_sweep(load_grid(_grid(env, tmp_path)), tmp_path / "f" / "r.sqlite", tm=env["tm"])


def _metrics_and_outputs(store: Store) -> dict:
    """{(recipe, task, seed): (metrics, per-sample outputs)} of every result in a store."""
    return {(r.cell.recipe, r.cell.task, r.cell.seed):
            (r.metrics, [s.get("filtered_resps") for s in store.samples(r.cell)])
            for r in store.results()}


SCALE_GRID = {"recipes": ["fp16", "w4a16g128-rtn"],
              "tasks": ["tiny_mc", {"task": "tiny_gen", "settings": {"gen_length": 4}}],
              "seeds": [0, 1, 2]}


def _kill_one_worker(cmd: list[str], store_path) -> str:
    """Run the 3-worker sweep `cmd`, SIGKILL one worker holding a live claim once the store has
    a first result (a cell or a shard), let the rest finish; returns the launcher's stderr after
    asserting it reported the one failed worker."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    deadline = time.time() + 400
    try:
        while time.time() < deadline and killed is None:
            assert proc.poll() is None, "the sweep ended before a worker could be killed"
            if store_path.exists():
                store = Store(store_path)
                live = [c for c in store.claims() if not c.stale()]
                if store.results(shards=True) and live:
                    killed = live[0]
                    os.kill(killed.pid, signal.SIGKILL)
            time.sleep(0.2)
        _out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None
    assert proc.returncode != 0 and "1 of 3 workers failed" in err, err[-2000:]
    return err


@pytest.mark.slow
def test_kill_one_of_three_local_workers_then_rerun(env, tmp_path):
    """Issue 13's kill test: 3 local workers, one SIGKILLed mid-run, the grid rerun: every cell
    stored exactly once, metrics and outputs bit-identical to one worker's run."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = load_grid(_grid(env, ref_dir, **SCALE_GRID))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the 3 workers gets on 2 cores
    try:
        run_sweep(ref, ref.store, progress=False, tm=env["tm"])
    finally:
        torch.set_num_threads(threads)
    path = _grid(env, run_dir, **SCALE_GRID)
    store_path = run_dir / "r.sqlite"
    cmd = [sys.executable, "-m", "dllmq", "sweep", str(path), "--executor", "local",
           "--workers", "3", "--threads", "1"]
    err = _kill_one_worker(cmd, store_path)
    assert "Traceback" not in err
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = Store(store_path)
    store.check()
    results = store.results()
    assert len(results) == len({r.cell.cell_id for r in results}) == 12  # exactly once
    assert not store.claims()
    assert len({r.cell.cell_id for r in results} & {c.cell_id for c in Store(ref.store).cells()}) == 12
    assert _metrics_and_outputs(store) == _metrics_and_outputs(Store(ref.store))
    assert len({r.worker for r in results}) >= 2  # split between the workers


@pytest.mark.slow
def test_two_sweeps_at_once_compute_each_cell_once(env, tmp_path):
    path = _grid(env, tmp_path, **SCALE_GRID)
    cmd = [sys.executable, "-m", "dllmq", "sweep", str(path)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for _, e in outs]
    import re

    ran = [int(re.search(r"(\d+) run now", o).group(1)) for o, _ in outs]
    assert sum(ran) == 12 and min(ran) > 0, ran  # split, and nothing computed twice
    store = Store(tmp_path / "r.sqlite")
    store.check()
    assert len(store.results()) == 12 and not store.claims()
    assert len({r.worker for r in store.results()}) == 2


@pytest.mark.slow
def test_submitit_local_executor_gives_the_same_results(env, tmp_path):
    """Issue 13: the grid through submitit's LocalExecutor (2 jobs) equals one worker's run."""
    pytest.importorskip("submitit")
    from dllmq.executors import run_submitit

    grid = {**SCALE_GRID, "seeds": [0]}
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = load_grid(_grid(env, ref_dir, **grid))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(ref, ref.store, progress=False, tm=env["tm"])
    finally:
        torch.set_num_threads(threads)
    run = load_grid(_grid(env, run_dir, **grid))
    assert run_submitit(run, run.store, 2, progress=False, threads=1, tm=env["tm"]) == 0
    store = Store(run.store)
    store.check()
    assert len(store.results()) == 4 and not store.claims()
    assert _metrics_and_outputs(store) == _metrics_and_outputs(Store(ref.store))


def test_cli_executor_options_are_checked_before_any_work(env, tmp_path):
    path = _grid(env, tmp_path)
    for extra, msg in ((["--workers", "2"], "--workers needs --executor local"),
                       (["--executor", "local", "--workers", "0"], "give at least 1")):
        proc = subprocess.run([sys.executable, "-m", "dllmq", "sweep", str(path), *extra],
                              capture_output=True, text=True, env=_env(), timeout=300)
        err = [line for line in proc.stderr.splitlines() if line.startswith("dllmq: error:")]
        assert proc.returncode != 0 and len(err) == 1 and msg in err[0], proc.stderr[-1500:]
        assert not (tmp_path / "r.sqlite").exists()


def test_a_worker_waits_while_another_quantizes_the_same_model(env, tmp_path, monkeypatch):
    """Workers claim a model x recipe's quantization: while another live worker holds it, this
    one does other cells (fp16 here) and builds the quantized model only after the release."""
    import threading

    from dllmq.store import Cell, new_owner

    grid = load_grid(_grid(env, tmp_path, recipes=["w4a16g128-rtn", "fp16"]))
    store = Store(grid.store)
    tm = env["tm"]
    cells = sweep.keyed_cells(grid, sweep.validate(grid, tm), cache=store)
    rtn = next(c for c in cells if c.recipe == "w4a16g128-rtn")
    other = new_owner().rsplit(":", 1)[0] + ":other"  # a live owner (this pid), not us
    build = Cell(rtn.model, rtn.recipe, "quantize", key={"model_key": sweep.model_key(rtn)})
    assert store.claim(build, other, lease_s=60) == "mine"
    released, order = threading.Event(), []
    real = sweep.build_model

    def record(grid, cell, *a):
        order.append((cell.recipe, released.is_set()))
        if cell.recipe == "fp16":  # the other worker finishes quantizing meanwhile
            threading.Timer(1.0, lambda: (store.release(other, build), released.set())).start()
        return real(grid, cell, *a)

    monkeypatch.setattr(sweep, "build_model", record)
    report = run_sweep(grid, store, progress=False, tm=tm, cache_models=True)
    assert report.ran == 2
    assert order == [("fp16", False), ("w4a16g128-rtn", True)]


# ---- shards ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shard_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    tasks = write_tasks(root, n_docs=6)
    return {"llada": make_model_dir(root / "tiny-llada"),
            "dream": make_model_dir(root / "tiny-dream", model_type="Dream"), "tasks": tasks,
            "tm": TaskManager(include_path=str(tasks), include_defaults=False)}


def _shard_grid(env, tmp_path, model, **over):
    """A QA cell (multiple choice by likelihood) and a sampled generation cell (temperature >
    0: every block's generator matters) of 6 documents, in blocks of 2."""
    raw = {"store": "r.sqlite", "models": [str(env[model])], "recipes": ["fp16"],
           "tasks": ["tiny_mc", {"task": "tiny_gen", "settings": {"gen_length": 8,
                                                                  "temperature": 0.7}}],
           "seeds": [0], "settings": {"limit": 6, "mc_num": 4, "batch_size": 3, "doc_block": 2},
           "include_path": [str(env["tasks"])], "include_defaults": False, "device": "cpu"}
    raw.update(over)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(raw))
    return load_grid(tmp_path / "grid.yaml")


@pytest.mark.parametrize("model", ["llada", "dream"])
def test_sharded_cells_are_bit_identical_to_unsharded(shard_env, tmp_path, model):
    whole = _shard_grid(shard_env, tmp_path / "whole", model)
    split = _shard_grid(shard_env, tmp_path / "split", model, shard_size=4)  # [0, 4) + [4, 6)
    run_sweep(whole, whole.store, progress=False, tm=shard_env["tm"])
    report = run_sweep(split, split.store, progress=False, tm=shard_env["tm"])
    a, b = Store(whole.store), Store(split.store)
    assert report.ran == 4 and len(report.done) == 2
    assert {c.cell_id for c in a.cells()} == {c.cell_id for c in b.cells()}  # same cells
    for cell in a.cells():
        assert b.get(cell).metrics == a.get(cell).metrics  # bit for bit, stderr included
        assert b.samples(cell) == a.samples(cell)  # every item: scores, responses, hashes
        assert [s["doc_id"] for s in b.samples(cell)] == list(range(6))
    shards = [r.cell for r in b.results(shards=True) if r.cell.shard is not None]
    assert sorted(c.shard for c in shards) == [(0, 4), (0, 4), (4, 6), (4, 6)]
    assert len(a.results(shards=True)) == 2  # the unsharded store holds cells only
    # the sampled generations are not all alike: the blocks' generators are in play
    gen = next(c for c in a.cells() if c.task == "tiny_gen")
    assert len({str(s["filtered_resps"]) for s in a.samples(gen)}) > 1
    # without a store the sharded cells assemble in memory to the same numbers
    mem = run_sweep(split, None, progress=False, tm=shard_env["tm"])
    assert {r.cell.cell_id: r.metrics for r in mem.done} == \
        {c.cell_id: a.get(c).metrics for c in a.cells()}


def test_a_killed_shard_run_resumes_with_stored_shards_kept(shard_env, tmp_path, interrupt_at_call):
    grid = _shard_grid(shard_env, tmp_path, "llada", tasks=["tiny_mc"], shard_size=2)
    calls = interrupt_at_call(3)  # Ctrl-C on the third shard
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, grid.store, progress=False, tm=shard_env["tm"])
    store = Store(grid.store)
    assert store.cells() == [] and len(store.results(shards=True)) == 2 and not store.claims()
    calls.clear()
    report = run_sweep(grid, store, progress=False, tm=shard_env["tm"])
    assert calls == [(4, 6)] and report.ran == 1  # only the missing shard
    (cell,) = store.cells()
    assert [s["doc_id"] for s in store.samples(cell)] == list(range(6))


@pytest.mark.parametrize(("change", "message"), [
    ({"tasks": ["tiny_ppl"], "settings": {"limit": 3, "mc_num": 2}, "shard_size": 2},
     "metric word_perplexity aggregates by weighted_perplexity"),
    ({"shard_size": 3}, "shard_size 3 is not a multiple of doc_block 2"),
    ({"shard_size": 0}, "`shard_size` must be a positive number"),
])
def test_shards_refused_in_one_line_before_work(shard_env, tmp_path, change, message):
    with pytest.raises(GridError) as e:
        grid = _shard_grid(shard_env, tmp_path, "llada", **change)
        run_sweep(grid, grid.store, progress=False, tm=shard_env["tm"])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.slow
def test_kill_one_of_three_local_workers_with_shards_then_rerun(shard_env, tmp_path):
    """Issue 13's kill test with shards: 3 local workers on a sharded grid, one SIGKILLed once
    a shard is stored, the grid rerun: every shard and cell stored exactly once, metrics and
    per-item samples bit-identical to one worker's unsharded run."""
    over = {"seeds": [0, 1], "shard_size": 2}
    ref = _shard_grid(shard_env, tmp_path / "ref", "llada", seeds=[0, 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the 3 workers gets
    try:
        run_sweep(ref, ref.store, progress=False, tm=shard_env["tm"])
    finally:
        torch.set_num_threads(threads)
    grid = _shard_grid(shard_env, tmp_path / "run", "llada", **over)
    cmd = [sys.executable, "-m", "dllmq", "sweep", str(tmp_path / "run" / "grid.yaml"),
           "--executor", "local", "--workers", "3", "--threads", "1"]
    _kill_one_worker(cmd, grid.store)
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store, want = Store(grid.store), Store(ref.store)
    store.check()
    rows = store.results(shards=True)
    assert len(rows) == len({r.cell.cell_id for r in rows}) == 4 + 4 * 3  # cells + shards, once
    assert not store.claims()
    assert {c.cell_id for c in store.cells()} == {c.cell_id for c in want.cells()}
    for cell in want.cells():
        assert store.get(cell).metrics == want.get(cell).metrics
        assert store.samples(cell) == want.samples(cell)
    assert len({r.worker for r in rows if r.cell.shard is not None}) >= 2


def test_local_executor_starts_no_worker_when_every_cell_is_stored(env, tmp_path, monkeypatch):
    from dllmq import executors

    class Started(Exception):
        pass

    def popen(*a, **k):
        raise Started

    grid = load_grid(_grid(env, tmp_path))
    run_sweep(grid, grid.store, progress=False, tm=env["tm"])
    monkeypatch.setattr(executors.subprocess, "Popen", popen)  # (after lm-eval's own git call)
    assert executors.run_local(grid, grid.store, 2, progress=False, tm=env["tm"]) == 0
    store = Store(grid.store)
    assert store.delete(store.cells()[0])
    with pytest.raises(Started):  # a missing cell: workers are started
        executors.run_local(grid, grid.store, 2, progress=False, tm=env["tm"])
