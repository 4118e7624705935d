"""dllmq's lm-eval task files: the paper's ten tasks and the embedded suite.

    from dllmq.tasks.lm_eval import task_manager, paper_task_settings
    tm = task_manager(data_dir="/data/benchmarks")                # or $DLLMQ_DATA_DIR, or the Hub
    lm_eval.simple_evaluate(model=lm, tasks=["paper_arc_easy"], task_manager=tm)
    paper_task_settings("arc_easy").mc_num                         # 128 (Appendix A)

On the command line the same directory is an `--include_path`:

    lm_eval --model dllmq --include_path "$(python -m dllmq.tasks.lm_eval)" \
        --tasks paper_gsm8k --metadata '{"dllmq_data_dir": "/data/benchmarks"}'

See README.md in this folder for the task names, the data-directory layout and the settings file.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .local_data import DATA_DIR_ENV, DATA_DIR_KEY, LocalDataError, local_dataset, resolve_data_dir
from .settings import (
    TaskSettings,
    UnknownTaskError,
    all_paper_settings,
    dream_generation_settings,
    paper_task_names,
    paper_task_settings,
)

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

TASK_DIR = Path(__file__).parent  # holds paper/*.yaml and embedded/*.yaml
# lm-eval's own task folders the paper tasks build on (indexed alone when include_defaults=False)
LM_EVAL_TASK_DIRS = ("arc", "piqa", "hellaswag", "winogrande", "mmlu/default", "gsm8k",
                     "minerva_math")


def task_dir() -> Path:
    """The folder to pass to lm-eval as `include_path` (`--include_path` on the CLI)."""
    return TASK_DIR


def task_manager(data_dir: str | Path | None = None, metadata: dict | None = None,
                 include_defaults: bool = True,
                 include_path: Sequence[str | Path] = ()) -> TaskManager:
    """An lm-eval TaskManager that knows dllmq's tasks besides lm-eval's own.

    data_dir: local benchmark files for the paper tasks (else `$DLLMQ_DATA_DIR`, else the Hub);
    it is checked here, so a wrong path fails before any model is loaded.
    include_defaults: index all of lm-eval's tasks (about 20 s) so any of them can be mixed in;
    False indexes only the lm-eval folders the paper tasks build on (LM_EVAL_TASK_DIRS, 0.1 s).
    include_path: more task folders (a grid's `include_path`).
    """
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    meta = dict(metadata or {})
    if data_dir is not None:
        meta[DATA_DIR_KEY] = str(data_dir)
    resolve_data_dir(meta)  # raises one line for a missing directory
    paths = list(dict.fromkeys(str(Path(p).resolve()) for p in (TASK_DIR, *include_path)))
    if not include_defaults:
        lm_eval_dir = Path(lm_eval.tasks.__file__).parent
        paths = [str(lm_eval_dir / d) for d in LM_EVAL_TASK_DIRS] + paths
    return TaskManager(include_path=paths, include_defaults=include_defaults,
                       metadata=meta or None)


def check_task_names(names: list[str], manager: TaskManager) -> None:
    """Raise UnknownTaskError (one line, with the closest names) for names lm-eval cannot load."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownTaskError(f"unknown task {name!r}: not a dllmq or lm-eval task, group "
                                   f"or tag (paper tasks: {', '.join(paper_task_names())}){hint}")


def check_runnable(tasks: dict, confirm_run_unsafe_code: bool, num_fewshot: int | None = None,
                   unsafe_flag: str = "--confirm-run-unsafe-code") -> None:
    """Before any model loads, for lm-eval's built tasks (`TaskManager.load(...)["tasks"]`):
    a task that executes model-written programs needs the confirmation (`unsafe_flag` names
    how the caller gives it), and `num_fewshot` must not exceed a task's few-shot documents
    (lm-eval would fail, or a paper task ignore it). Raises ValueError with one line."""
    for name, task in tasks.items():
        if getattr(task, "UNSAFE_CODE", False) and not confirm_run_unsafe_code:
            raise ValueError(f"task {name} executes model-written programs; give {unsafe_flag} "
                             "to allow it")
        if num_fewshot:
            docs = task.fewshot_docs()
            n = len(docs) if docs is not None else 0
            if n < num_fewshot:
                raise ValueError(f"num_fewshot {num_fewshot}: task {name} has {n} few-shot "
                                 "documents; give at most that many")


def load_tasks(names: list[str], data_dir: str | Path | None = None,
               manager: TaskManager | None = None) -> dict:
    """Task objects for `names` (lm-eval's TaskManager.load result), names checked first."""
    manager = manager or task_manager(data_dir)
    check_task_names(names, manager)
    return manager.load(names)


__all__ = ["DATA_DIR_ENV", "DATA_DIR_KEY", "LM_EVAL_TASK_DIRS", "TASK_DIR", "LocalDataError", "TaskSettings",
           "UnknownTaskError", "all_paper_settings", "check_runnable", "check_task_names", "dream_generation_settings", "load_tasks",
           "local_dataset", "paper_task_names", "paper_task_settings", "resolve_data_dir",
           "task_dir", "task_manager"]
