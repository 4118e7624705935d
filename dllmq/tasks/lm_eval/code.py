"""Offline pass@1 for the code tasks (HumanEval, MBPP, the embedded code suite).

lm-eval's humaneval/mbpp metrics load `evaluate`'s `code_eval`, which downloads a metric script and
needs HF_ALLOW_CODE_EVAL. Here the program a metric builds is the same as code_eval's
(`candidate + "\n" + test`, OpenAI human-eval `execution.py` / HF `code_eval`, with code_eval's
3 s timeout), and it runs through dllmq's sandboxed subprocess executor
(`dllmq.tasks.execution`: Linux namespaces with a read-only minimal root, no capabilities,
seccomp and resource limits; it refuses to run without isolation unless DLLMQ_UNSAFE_EXEC=1).
"""

from __future__ import annotations

import os

from dllmq.tasks.execution import run_program, run_programs

DEFAULT_TIMEOUT = 3.0  # seconds per program, code_eval's default


def run_tests(program: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether `program` (solution + tests) exits 0 within `timeout` seconds in the sandbox."""
    return run_program(program, timeout_s=timeout).passed


def run_many(programs: list[str], timeout: float = DEFAULT_TIMEOUT,
             workers: int | None = None) -> list[bool]:
    """`run_tests` on each program, `workers` subprocesses at a time (default: CPU count)."""
    results = run_programs(programs, workers=workers or os.cpu_count() or 1, timeout_s=timeout)
    return [r.passed for r in results]


def _pass_fraction(references: list[str], predictions: list[list[str]],
                   timeout: float = DEFAULT_TIMEOUT) -> float:
    """Mean over problems of the fraction of candidates passing (pass@1 estimate)."""
    per_problem = []
    for test, candidates in zip(references, predictions, strict=True):
        passed = run_many([f"{c}\n{test}" for c in candidates], timeout)
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


MBPP_FEWSHOT_IDS = (2, 3, 4)  # lm-eval's mbpp shots (its utils.list_fewshot_samples)


def mbpp_fewshot_docs(dataset):
    """MBPP's three shots from the dataset's `prompt` split, marked `is_fewshot` as lm-eval's are."""
    shots = dataset.filter(lambda d: d["task_id"] in MBPP_FEWSHOT_IDS)
    shots = sorted(shots, key=lambda d: MBPP_FEWSHOT_IDS.index(d["task_id"]))
    keys = ("task_id", "text", "code", "test_list")
    return [{**{k: d[k] for k in keys}, "is_fewshot": True} for d in shots]
