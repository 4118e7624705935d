"""All programs of a code task run at once: the same outcome per program as one at a time, runs that
cannot see each other, and tasks whose metric only reads what the filter step ran (the stored
filtered responses unchanged in content)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dllmq.tasks.execution import isolation, run_programs
from dllmq.tasks.lm_eval import code, task_manager
from dllmq.tasks.lm_eval.code import (
    CheckedProgram,
    check_candidates,
    exec_workers,
    humaneval_checked,
    humaneval_programs,
    humaneval_test,
    mbpp_checked,
    mbpp_test,
    pass_at_1,
    pass_at_k,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DLLMQ_DATA_DIR") or REPO.parent / "shared/data/benchmarks")

# passing, failing, timing out, crashing (signal, exception, exit status, memory), output-heavy
PROGRAMS = [
    "assert sum(range(10)) == 45\n",
    "assert sorted([3, 1, 2]) == [1, 2, 3]\nimport json\njson.dumps({'a': 1})\n",
    "assert 1 + 1 == 3, 'wrong sum'\n",
    "def f(x):\n    return x[5]\nf([1])\n",
    "while True:\n    pass\n",
    "import time\ntime.sleep(30)\n",
    "import os\nos.abort()\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    "raise SystemExit(7)\n",
    "x = bytearray(4 << 30)\n",
    "import sys\nfor i in range(20000):\n    print('noise', i, file=sys.stderr)\n",
    "def rec(n):\n    return rec(n + 1)\nrec(0)\n",
]


def test_serial_and_concurrent_runs_agree_on_every_program():
    serial = run_programs(PROGRAMS, workers=1, timeout_s=1.0)
    concurrent = run_programs(PROGRAMS, workers=len(PROGRAMS), timeout_s=1.0)
    assert concurrent == serial
    assert [r.passed for r in serial] == [True, True] + [False] * 8 + [True, False]
    assert serial[4].reason == serial[5].reason == "timed out after 1.0 s"


def test_concurrent_runs_cannot_see_each_other():
    """16 programs at once each write their own token into the same /tmp path, wait for the
    others to do the same, and must read back their own token in a /tmp holding nothing else."""
    n = 16
    program = (
        "import os, time\n"
        "open('/tmp/shared.txt', 'w').write('{token}')\n"
        "time.sleep(0.5)\n"
        "assert sorted(os.listdir('/tmp')) == ['program.py', 'shared.txt'], os.listdir('/tmp')\n"
        "assert open('/tmp/shared.txt').read() == '{token}'\n"
        "raise SystemExit(f'token={token} uid={{os.getuid()}}')\n")
    iso = isolation()
    if not iso.available:
        pytest.skip(f"no sandbox here: {iso.reason}")
    results = run_programs([program.format(token=i) for i in range(n)], workers=n, timeout_s=10.0)
    reasons = [r.reason for r in results]
    assert [r.split()[0] for r in reasons] == [f"token={i}" for i in range(n)], reasons
    if os.geteuid() == 0:   # as root each run has a uid of its own (RLIMIT_NPROC is per uid)
        assert len({r.split()[1] for r in reasons}) == n, reasons


def test_workers_setting(monkeypatch):
    monkeypatch.delenv(code.WORKERS_ENV, raising=False)
    assert exec_workers() == (os.cpu_count() or 1)
    monkeypatch.setenv(code.WORKERS_ENV, "3")
    assert exec_workers() == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv(code.WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=code.WORKERS_ENV):
            exec_workers()


DOCS = [{"prompt": f"def f{i}(x):\n", "entry_point": f"f{i}",
         "test": f"def check(candidate):\n    assert candidate({i}) == {2 * i}\n"} for i in range(6)]


def _responses():
    """Per doc two candidates: right for even docs, wrong otherwise; a hang for the last doc."""
    out = []
    for i in range(len(DOCS)):
        right = "    return 2 * x\n" if i % 2 == 0 else "    return x\n"
        out.append([right, "    while True:\n        pass\n" if i == 5 else "    return -1\n"])
    return out


def test_filter_runs_everything_once_and_the_metric_only_reads(monkeypatch):
    calls = []
    real = code.run_programs

    def counting(programs, **kw):
        calls.append(len(programs))
        return real(programs, **kw)

    monkeypatch.setattr(code, "run_programs", counting)
    resps = _responses()
    checked = humaneval_checked(resps, DOCS)
    assert calls == [12]
    plain = humaneval_programs(resps, DOCS)
    # what lm-eval logs and the store keeps: the same text, the same JSON
    assert checked == plain and json.dumps(checked) == json.dumps(plain)
    refs = [humaneval_test(d) for d in DOCS]
    read = [pass_at_k([r], [c], k=[1]) for r, c in zip(refs, checked, strict=True)]
    assert calls == [12]   # nothing ran again
    ran = [pass_at_k([r], [p], k=[1]) for r, p in zip(refs, plain, strict=True)]
    assert len(calls) == 1 + len(DOCS)
    assert read == ran == [{"pass@1": 0.5}, {"pass@1": 0.0}] * 3


def test_a_program_checked_with_another_test_runs_again(caplog):
    [[c]] = check_candidates([["def f(x):\n    return 2 * x\n"]], ["assert f(1) == 3"])
    assert c.passed is False
    assert pass_at_1(["assert f(1) == 2"], [c]) == 1.0
    assert "another test" in caplog.text


def test_mbpp_filter_shape():
    docs = [{"test_list": ["assert g(1) == 1", "assert g(2) == 2", "assert g(3) == 3"]},
            {"test_list": ["assert g(1) == 0", "assert g(2) == 0"]}]
    assert mbpp_test(docs[1]) == "assert g(1) == 0\nassert g(2) == 0\n"
    checked = mbpp_checked(["def g(x):\n    return x", "def g(x):\n    return 0"], docs)
    assert [type(c) for c in checked] == [CheckedProgram] * 2
    assert [c.passed for c in checked] == [True, True]


@pytest.mark.skipif(not (DATA_DIR / "HumanEval.jsonl.gz").is_file(),
                    reason=f"real benchmark files not found in {DATA_DIR} (set DLLMQ_DATA_DIR)")
@pytest.mark.parametrize("name", ["paper_humaneval", "paper_mbpp"])
def test_paper_tasks_score_the_same_as_running_per_document(name, monkeypatch):
    """Through lm-eval's own steps: apply_filters, then process_results per doc, as the evaluator
    calls them; equal to scoring plain responses (which run in the metric)."""
    (task,) = task_manager(data_dir=DATA_DIR, include_defaults=False).load([name])["tasks"].values()
    task.build_all_requests(limit=4, rank=0, world_size=1)
    for inst in task.instances:
        doc = inst.doc
        right = doc["canonical_solution"] if name == "paper_humaneval" else doc["code"]
        inst.resps = [right if inst.doc_id % 2 == 0 else "    return None\n"]
    # the references the filter assumes are the task's own doc_to_target
    test_of = humaneval_test if name == "paper_humaneval" else mbpp_test
    assert all(task.doc_to_target(i.doc) == test_of(i.doc) for i in task.instances)
    task.apply_filters()
    (key,) = task.instances[0].filtered_resps
    assert key == ("create_test" if name == "paper_humaneval" else "none")
    monkeypatch.setattr(code, "run_programs", None)   # the metric must not run anything
    read = [task.process_results(i.doc, [i.filtered_resps[key]]) for i in task.instances]
    monkeypatch.undo()
    ran = []
    for i in task.instances:
        resp = i.resps[0]
        filtered = humaneval_programs([[resp]], [i.doc])[0] if name == "paper_humaneval" else resp
        assert i.filtered_resps[key] == filtered
        ran.append(task.process_results(i.doc, [filtered]))
    assert read == ran
    assert [next(iter(r.values())) for r in read] == [1.0, 0.0, 1.0, 0.0]
