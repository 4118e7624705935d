"""The code scorer: passes right programs, fails wrong ones, stops infinite loops, refuses writes
outside its temporary directory, and scores real HumanEval canonical solutions at pass@1 = 1."""

import gzip
import json
import os
from pathlib import Path

import pytest
from dllmq.tasks.execution import (
    build_mbpp_program,
    build_program,
    check_completions,
    run_program,
    run_programs,
)

REPO = Path(__file__).resolve().parents[1]


def test_pass_fail_and_reason():
    ok, bad, err = run_programs(["assert 1 + 1 == 2\n", "assert 1 + 1 == 3\n", "1 / 0\n"])
    assert ok.passed and ok.reason == "passed"
    assert not bad.passed and bad.reason == "AssertionError"
    assert not err.passed and "ZeroDivisionError" in err.reason


def test_infinite_loop_times_out():
    res = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert not res.passed and "timed out" in res.reason


def test_cannot_write_outside_temp_dir(tmp_path):
    target = REPO / "SANDBOX_ESCAPE.txt"
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    programs = [f"open({str(target)!r}, 'w').write('x')\n",
                f"import os\nos.remove({str(victim)!r})\n",
                f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
                "import subprocess\nsubprocess.run(['touch', '/tmp/x'])\n",
                "open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n"]
    results = run_programs(programs)
    assert [r.passed for r in results] == [False] * 5 + [True]
    assert all("sandbox" in r.reason for r in results[:5])
    assert not target.exists() and victim.read_text() == "keep"


def test_memory_limit():
    res = run_program("x = bytearray(3 << 30)\n", memory_mb=512)
    assert not res.passed and "MemoryError" in res.reason


def test_humaneval_layout():
    problem = {"prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
               "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
    assert "check(add)" in build_program(problem["prompt"], "    return a + b\n", problem["test"], "add")
    good, wrong = check_completions([problem, problem], ["    return a + b\n", "    return a - b\n"])
    assert good.passed and not wrong.passed


def _data_dir() -> Path | None:
    env = os.environ.get("DLLMQ_DATA_DIR")
    if env:
        return Path(env)
    sibling = REPO.parent / "shared" / "data" / "benchmarks"
    return sibling if sibling.is_dir() else None


def test_humaneval_canonical_solutions_all_pass():
    data = _data_dir()
    path = data / "HumanEval.jsonl.gz" if data else None
    if path is None or not path.is_file():
        pytest.skip("HumanEval.jsonl.gz not found: set DLLMQ_DATA_DIR to the benchmarks directory")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    assert len(problems) == 164
    results = check_completions(problems, [p["canonical_solution"] for p in problems], workers=2,
                                timeout_s=10.0)
    failed = {p["task_id"]: r.reason for p, r in zip(problems, results, strict=True) if not r.passed}
    assert not failed


def test_mbpp_reference_code_passes_and_swapped_code_fails():
    data = _data_dir()
    path = data / "mbpp.jsonl" if data else None
    if path is None or not path.is_file():
        pytest.skip("mbpp.jsonl not found: set DLLMQ_DATA_DIR to the benchmarks directory")
    rows = [json.loads(line) for line in path.open(encoding="utf-8")][:60]
    good = run_programs([build_mbpp_program(r["code"], r["test_list"], r["test_setup_code"])
                         for r in rows], timeout_s=10.0)
    assert [r["task_id"] for r, g in zip(rows, good, strict=True) if not g.passed] == []
    swapped = run_programs([build_mbpp_program(rows[i - 1]["code"], r["test_list"])
                            for i, r in enumerate(rows)], timeout_s=10.0)
    assert not any(s.passed for s in swapped)
