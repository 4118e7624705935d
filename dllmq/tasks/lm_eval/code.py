"""Offline pass@1 for the code tasks (HumanEval, MBPP, the embedded code suite).

lm-eval's humaneval/mbpp metrics load `evaluate`'s `code_eval`, which downloads a metric script and
needs HF_ALLOW_CODE_EVAL. Here the program a metric builds is the same as code_eval's
(`candidate + "\n" + test`, OpenAI human-eval `execution.py` / HF `code_eval`, with code_eval's
3 s timeout), and it runs through dllmq's sandboxed subprocess executor
(`dllmq.tasks.execution`: Linux namespaces with a read-only minimal root, no capabilities,
seccomp and resource limits; it refuses to run without isolation unless DLLMQ_UNSAFE_EXEC=1).

**All programs of a task at once.** lm-eval calls a metric once per document, which would run the
programs one document after another. So the tasks' filter step, which sees every response and doc
of the task together, runs all of them through one worker pool (`DLLMQ_EXEC_WORKERS` processes at
a time, default `os.cpu_count()`) and returns each response unchanged in content, as a
`CheckedProgram`: a `str` (so lm-eval logs and stores exactly the text it logged before) that
also carries the test it ran with and whether it passed. The metric then only reads that outcome;
a plain string, or one checked against another test than the metric's reference, is run there.
Each program runs in its own sandbox either way, so a program's outcome does not depend on what
runs beside it (tests/test_code_exec.py pins serial == concurrent).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from dllmq.tasks.execution import run_program, run_programs

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0  # seconds per program, code_eval's default
WORKERS_ENV = "DLLMQ_EXEC_WORKERS"


def exec_workers() -> int:
    """How many programs run at a time: `DLLMQ_EXEC_WORKERS` if set, else `os.cpu_count()`."""
    value = os.environ.get(WORKERS_ENV)
    if value is None:
        return os.cpu_count() or 1
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{WORKERS_ENV}={value!r}: set it to a positive integer (programs run "
                         "at a time) or unset it for os.cpu_count()")
    return int(value)


class CheckedProgram(str):
    """A filtered response: the candidate program's text, unchanged, which also carries the test
    it was run with (`test`, None if it was not run) and the outcome (`passed`)."""

    def __new__(cls, text: str, test: str | None = None, passed: bool | None = None):
        self = super().__new__(cls, text)
        self.test, self.passed = test, passed
        return self


def run_tests(program: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether `program` (solution + tests) exits 0 within `timeout` seconds in the sandbox."""
    return run_program(program, timeout_s=timeout).passed


def run_many(programs: Sequence[str], timeout: float = DEFAULT_TIMEOUT,
             workers: int | None = None) -> list[bool]:
    """`run_tests` on each program, `workers` subprocesses at a time (default `exec_workers()`)."""
    if not programs:
        return []
    results = run_programs(list(programs), workers=workers or exec_workers(), timeout_s=timeout)
    return [r.passed for r in results]


def check_candidates(candidates: Sequence[Sequence[str]], tests: Sequence[str],
                     timeout: float = DEFAULT_TIMEOUT) -> list[list[CheckedProgram]]:
    """Run every candidate of every problem (`candidate + "\n" + test`) in one pool; returns the
    candidates as `CheckedProgram`s in the same nesting."""
    flat = [(i, c) for i, cands in enumerate(candidates) for c in cands]
    passed = iter(run_many([f"{c}\n{tests[i]}" for i, c in flat], timeout))
    return [[CheckedProgram(c, tests[i], next(passed)) for c in cands]
            for i, cands in enumerate(candidates)]


def _outcomes(candidates: Sequence[str], test: str, timeout: float) -> list[bool]:
    """Pass/fail of each candidate with `test`: read from a `CheckedProgram` checked with this
    test, else run (all such candidates of the problem at once)."""
    todo = [c for c in candidates if not (isinstance(c, CheckedProgram) and c.test == test)]
    for c in todo:
        if isinstance(c, CheckedProgram) and c.test is not None:
            log.warning("a program was checked with another test than the metric's reference; "
                        "running it again with the reference")
    ran = iter(run_many([f"{c}\n{test}" for c in todo], timeout))
    return [c.passed if isinstance(c, CheckedProgram) and c.test == test else next(ran)
            for c in candidates]


def _pass_fraction(references: list[str], predictions: list[list[str]],
                   timeout: float = DEFAULT_TIMEOUT) -> float:
    """Mean over problems of the fraction of candidates passing (pass@1 estimate)."""
    per_problem = []
    for test, candidates in zip(references, predictions, strict=True):
        passed = _outcomes(candidates, test, timeout)
        per_problem.append(sum(passed) / len(passed))
    return sum(per_problem) / len(per_problem)


# --------------------------------------------------------------- metric and filter functions
# Named and shaped as lm-eval's own (humaneval/utils.py, mbpp/utils.py) so results carry the
# same keys: humaneval reports "pass@1" under its "create_test" filter, mbpp "pass_at_1".

def pass_at_k(references: list[str], predictions: list[list[str]],
              k: list[int] | int | None = None) -> dict[str, float]:
    """HumanEval's metric: {"pass@1": ...}; only k=1 (greedy decoding gives one candidate)."""
    ks = [k] if isinstance(k, int) else list(k or [1])
    if ks != [1]:
        raise ValueError(f"pass_at_k: only k=[1] is supported offline, got {ks}")
    return {"pass@1": _pass_fraction(references, predictions)}


def pass_at_1(references: str | list[str], predictions: str | list[str] | list[list[str]]) -> float:
    """MBPP's metric: the fraction of (problem, candidate) programs that pass."""
    if isinstance(references, str):
        references = [references]
    if isinstance(predictions, str):
        predictions = [predictions]
    if isinstance(predictions[0], str):
        predictions = [[p] for p in predictions]
    return _pass_fraction(references, predictions)


def humaneval_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's `build_predictions` filter: the prompt (signature + docstring) + the completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs, strict=True)]


def humaneval_test(doc: dict) -> str:
    """The reference the metric gets: the task files' `doc_to_target`, `{{test}}\ncheck({{entry_point}})`."""
    return f"{doc['test']}\ncheck({doc['entry_point']})"


def humaneval_checked(resps: list[list[str]], docs: list[dict]) -> list[list[CheckedProgram]]:
    """`humaneval_programs`, then every program of the task run at once (`check_candidates`)."""
    return check_candidates(humaneval_programs(resps, docs), [humaneval_test(d) for d in docs])


def mbpp_test(doc: dict) -> str:
    """paper_mbpp's `doc_to_target` for an evaluated (not few-shot) doc: its first three asserts."""
    return "\n".join([*doc["test_list"], "", "", ""][:3])   # as Jinja renders a missing one


def mbpp_checked(resps: list[str], docs: list[dict]) -> list[CheckedProgram]:
    """After lm-eval's `take_first` (one response per doc): every program run at once."""
    return [c for [c] in check_candidates([[r] for r in resps], [mbpp_test(d) for d in docs])]


MBPP_FEWSHOT_IDS = (2, 3, 4)  # lm-eval's mbpp shots (its utils.list_fewshot_samples)


def mbpp_fewshot_docs(dataset):
    """MBPP's three shots from the dataset's `prompt` split, marked `is_fewshot` as lm-eval's are."""
    shots = dataset.filter(lambda d: d["task_id"] in MBPP_FEWSHOT_IDS)
    shots = sorted(shots, key=lambda d: MBPP_FEWSHOT_IDS.index(d["task_id"]))
    keys = ("task_id", "text", "code", "test_list")
    return [{**{k: d[k] for k in keys}, "is_fewshot": True} for d in shots]
