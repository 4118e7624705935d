"""Executors: run one grid with many workers on existing engines, all through the store.

Every worker is a plain `run_sweep` on the same grid and store. The store's claims (`dllmq.store`)
split the cells between workers, whoever started them: no scheduler of our own, no message
passing, and a worker can die at any time (its cells are taken over by another worker or a
later run). What runs the workers:

- `local`: N worker processes on this machine (`python -m dllmq.executors worker SPEC`), one GPU
  each (`CUDA_VISIBLE_DEVICES`) when there are GPUs, else CPU threads shared out between them.
- `submitit`: submitit's executors (https://github.com/facebookincubator/submitit): its
  `LocalExecutor` on one machine, or Slurm job arrays (`AutoExecutor` with partition, time and
  GPUs per worker). Each array task is one worker.

While workers run, the launching process shows progress over the whole grid from the store:
units of work (cells, or the shards of a sharded cell) done / running (claimed by a live
worker) / left, and the time left at the rate of the
cells finished so far (`progress_line`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Cell, Store

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "local", "submitit-local", "slurm")


@dataclass
class Progress:
    done: int
    running: int
    left: int
    eta_s: float | None

    def line(self) -> str:
        eta = "?" if self.eta_s is None else _duration(self.eta_s)
        return f"{self.done} done, {self.running} running, {self.left} left; ETA {eta}"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_of(store: Store, cells: list[Cell], started: float, done_at_start: int,
                workers: int = 1) -> Progress:
    """Progress of a grid from its store: done, running (a live claim), left, and the ETA
    from this run's rate (cells finished since `started`, a time.time())."""
    ids = {c.cell_id for c in cells}
    done = len(ids & store.stored_ids())
    running = sum(1 for c in store.claims() if c.cell_id in ids and not c.stale())
    left = len(ids) - done - running
    new = done - done_at_start
    eta = None
    if new > 0:
        per_cell = (time.time() - started) / new
        eta = per_cell * (left + running / 2)
    return Progress(done, running, left, eta)


def worker_spec(grid, store_path: Path, start: int, lease_s: float,
                threads: int | None = None) -> dict[str, Any]:
    from .sweep import grid_to_raw

    return {"grid": grid_to_raw(grid), "store": str(Path(store_path).resolve()), "start": start,
            "lease_s": lease_s, "threads": threads}


def run_worker(spec: dict[str, Any]) -> int:
    """One worker: `run_sweep` on the spec's grid and store; returns cells it computed."""
    import torch

    from .sweep import parse_grid, run_sweep

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    grid = parse_grid(spec["grid"], "worker grid")
    report = run_sweep(grid, spec["store"], progress=False, lease_s=spec["lease_s"],
                       start=spec["start"], cache_models=True, request_progress=False)
    return report.ran


def _open(grid, store_path: str | Path, tm=None) -> tuple[Store, list[Cell]]:
    """Validate once in the launcher, then open (create) the store: bad input (the grid, a
    split that cannot be, a store that cannot be written) fails here in one line (GridError)
    before any worker starts and before any file is written. Returns the store and the units
    of work whose progress is shown: cells, and the shards of sharded cells."""
    from .store import StoreError, check_writable
    from .sweep import GridError, keyed_cells, shards_of, task_manager, validate

    try:
        check_writable(store_path)
        tm = tm or task_manager(grid)
        checked = validate(grid, tm)
        shards_of(grid, checked, grid.cells())  # refuses a split that cannot be
        store = Store(store_path)
    except StoreError as e:
        raise GridError(str(e)) from None
    cells = keyed_cells(grid, checked, cache=store)
    sharded = shards_of(grid, checked, cells)
    return store, [u for c in cells for u in sharded.get(c, [c])]


def _watch(store: Store, cells: list[Cell], alive, workers: int, progress: bool,
           poll_s: float = 2.0) -> None:
    """Show grid progress until `alive()` is False."""
    from tqdm.auto import tqdm

    started, at_start = time.time(), len({c.cell_id for c in cells} & store.stored_ids())
    bar = tqdm(total=len(cells), initial=at_start, desc="grid", disable=not progress)
    while True:
        running = alive()
        p = progress_of(store, cells, started, at_start, workers)
        bar.update(p.done - bar.n)
        bar.set_postfix_str(p.line())
        log.debug("grid: %s", p.line())
        if not running:
            break
        time.sleep(poll_s)
    bar.close()


def run_local(grid, store_path: str | Path, workers: int, progress: bool = True,
              lease_s: float | None = None, devices: list[str] | None = None,
              threads: int | None = None, tm=None) -> int:
    """N worker processes on this machine (none when the store holds every cell); returns the
    number of workers that failed.
    GPUs: worker i sees only device i (`CUDA_VISIBLE_DEVICES`, `devices` to choose them);
    CPU: each worker gets `threads` torch threads (default cpu_count // N). On CPU, quantized
    models' per-sample scores can differ in the last bits between thread counts: to compare
    runs bit for bit, give them the same `threads`."""
    import torch

    from .sweep import LEASE_S

    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1")
    if devices is None and grid.device != "cpu" and torch.cuda.is_available():
        devices = [str(i) for i in range(torch.cuda.device_count())]
    if devices and workers > len(devices):
        raise ValueError(f"--workers {workers} but only {len(devices)} GPU(s): one worker per GPU")
    store, cells = _open(grid, store_path, tm)
    if not {c.cell_id for c in cells} - store.stored_ids():
        log.info("every cell of the grid is stored: no worker started")
        return 0
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    procs = []
    with tempfile.TemporaryDirectory(prefix="dllmq-workers-") as tmp:
        for i in range(workers):
            spec = Path(tmp) / f"worker{i}.json"
            spec.write_text(json.dumps(worker_spec(grid, store.path, i, lease_s or LEASE_S,
                                                   None if devices else threads)))
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = devices[i]
            else:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dllmq.executors", "worker", str(spec)], env=env))
        log.info("%d local workers started (pids %s)", workers, ", ".join(str(p.pid) for p in procs))
        _watch(store, cells, lambda: any(p.poll() is None for p in procs), workers, progress)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, code in failed:
        log.error("worker %d exited with %s; its unfinished cells go to the next run (rerun the "
                  "sweep)", i, f"signal {-code}" if code < 0 else f"code {code}")
    return len(failed)


def run_submitit(grid, store_path: str | Path, workers: int, progress: bool = True,
                 lease_s: float | None = None, slurm: dict[str, Any] | None = None,
                 folder: str | Path | None = None, threads: int | None = None, tm=None) -> int:
    """`workers` submitit jobs (a Slurm job array with `slurm`, else submitit's LocalExecutor);
    returns the number that failed. `slurm`: partition, time (minutes), gpus (per worker),
    cpus (per worker), mem_gb, and any other `slurm_*` parameter of submitit without the prefix.
    Job logs go to `folder` (default: `<store>.submitit/`). `threads`: torch threads per job
    (default: submitit's LocalExecutor shares none out; Slurm: the job's cpus)."""
    import submitit

    from .sweep import LEASE_S

    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1")
    store, cells = _open(grid, store_path, tm)
    folder = Path(folder or store.path.with_name(store.path.name + ".submitit"))
    if slurm is None:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=60 * 24)
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(slurm)
        mapping = {"partition": "slurm_partition", "time": "timeout_min",
                   "gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb"}
        ex.update_parameters(**{mapping.get(k, f"slurm_{k}"): v for k, v in params.items()
                                if v is not None}, tasks_per_node=1, nodes=1)
    specs = [worker_spec(grid, store.path, i, lease_s or LEASE_S, threads) for i in range(workers)]
    jobs = ex.map_array(run_worker, specs)
    log.info("%d submitit jobs submitted (%s), logs in %s", len(jobs),
             ", ".join(j.job_id for j in jobs), folder)
    _watch(store, cells, lambda: not all(j.done() for j in jobs), workers, progress)
    failed = 0
    for j in jobs:
        try:
            j.result()
        except Exception as e:  # a failed job: its message, then the next one
            failed += 1
            log.error("job %s failed: %s", j.job_id, str(e).strip().splitlines()[-1] if str(e)
                      else type(e).__name__)
    return failed


def main(argv: list[str]) -> int:
    """`python -m dllmq.executors worker SPEC.json`: one local worker (started by run_local)."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m dllmq.executors worker SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s "
                        "%(message)s")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    spec = json.loads(Path(argv[1]).read_text())
    run_worker(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
