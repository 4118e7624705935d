"""The code scorer: passes right programs, fails wrong ones, stops infinite loops, contains what
the program does (one test per escape of issue 16 from the old audit-hook guard), refuses to run
without isolation unless told to, and scores real HumanEval canonical solutions at pass@1 = 1."""

import gzip
import json
import logging
import os
import signal
import socket
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from dllmq.tasks import execution
from dllmq.tasks.execution import (
    build_mbpp_program,
    build_program,
    check_completions,
    run_program,
    run_programs,
)

REPO = Path(__file__).resolve().parents[1]

# A program-side helper: start argv with _posixsubprocess.fork_exec (Python 3.11's signature),
# the call that subprocess makes, which the old audit hook did not see. Returns the child's pid.
FORK_EXEC = """
import _posixsubprocess, os, sys
def spawn(argv, setsid=False):
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [os.fsencode(a) for a in argv], [os.fsencode(argv[0])], True, (w,), None, None,
        -1, -1, -1, -1, -1, -1, r, w, True, setsid, -1, None, None, None, -1, None, True)
    os.close(w)
    os.read(r, 100)
    os.close(r)
    return pid
"""


def test_pass_fail_and_reason():
    ok, bad, err = run_programs(["assert 1 + 1 == 2\n", "assert 1 + 1 == 3\n", "1 / 0\n"])
    assert ok.passed and ok.reason == "passed"
    assert not bad.passed and bad.reason == "AssertionError"
    assert not err.passed and "ZeroDivisionError" in err.reason


def test_infinite_loop_times_out():
    res = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert not res.passed and "timed out" in res.reason


def test_cannot_write_outside_work_dir(tmp_path):
    target = REPO / "SANDBOX_ESCAPE.txt"
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    programs = [f"open({str(target)!r}, 'w').write('x')\n",
                f"import os\nos.remove({str(victim)!r})\n",
                f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
                "open('/usr/escape.txt', 'w')\n",
                f"import subprocess\nsubprocess.run(['touch', {str(target)!r}], check=True)\n",
                "open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n"]
    results = run_programs(programs)
    assert [r.passed for r in results] == [False] * 6 + [True], results
    assert not target.exists() and victim.read_text() == "keep"


def test_process_limit_binds_children_started_with_fork_exec():
    program = FORK_EXEC + "for _ in range(100):\n    spawn(['/bin/sleep', '5'])\n"
    start = time.monotonic()
    res = run_program(program)
    assert not res.passed and "Resource temporarily unavailable" in res.reason, res.reason
    assert time.monotonic() - start < 4.0   # and the sleepers died with the program
    hog = FORK_EXEC + ("pid = spawn([sys.executable, '-c', 'bytearray(3 << 30)'])\n"
                       "assert os.waitpid(pid, 0)[1] == 0, 'the child could not allocate'\n")
    res = run_program(hog, memory_mb=512)
    assert not res.passed and "could not allocate" in res.reason


def test_memory_limit():
    res = run_program("x = bytearray(3 << 30)\n", memory_mb=512)
    assert not res.passed and "MemoryError" in res.reason


# ------------------------------------------------ the escapes of issue 16, one test each


def test_escape_switching_off_the_guard_from_python(tmp_path):
    target = tmp_path / "escaped.txt"
    program = ("import sys\nm = sys.modules['__main__']\n"
               "getattr(m, '_BANNED', set()).clear()\nm._ROOT = ''\n"   # '' + os.sep: all inside
               f"open({str(target)!r}, 'w').write('x')\n")
    assert not run_program(program).passed
    assert not target.exists()


def test_escape_fork_exec_starts_a_program_outside(tmp_path):
    target = tmp_path / "escaped.txt"
    program = FORK_EXEC + (f"pid = spawn(['/bin/sh', '-c', 'echo x > {target}'])\n"
                           "os.waitpid(pid, 0)\n"
                           f"assert os.path.exists({str(target)!r})\n")
    res = run_program(program)
    assert not res.passed and "AssertionError" in res.reason   # it ran, and it was contained
    assert not target.exists()


def test_escape_sqlite_writes_a_database_outside(tmp_path):
    target = tmp_path / "escaped.db"
    program = (f"import sqlite3\ncon = sqlite3.connect({str(target)!r})\n"
               "con.execute('create table t (x)')\ncon.commit()\n")
    assert not run_program(program).passed
    assert not target.exists()


def test_escape_udp_sendmsg_to_loopback():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(0.3)
        port = server.getsockname()[1]
        program = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   f"s.sendmsg([b'escaped'], [], 0, ('127.0.0.1', {port}))\n")
        res = run_program(program)
        assert not res.passed and "OSError" in res.reason   # Network is unreachable
        with pytest.raises(TimeoutError):
            server.recv(64)


def test_escape_tcp_connect_to_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        res = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 2)\n")
        assert not res.passed


def test_escape_signal_to_the_evaluator():
    received = []
    old = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        program = (f"import os, signal\nfd = os.pidfd_open({os.getpid()})\n"
                   "signal.pidfd_send_signal(fd, signal.SIGUSR1)\n")
        kill = f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)\n"
        results = [run_program(program), run_program(kill)]
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert not any(r.passed for r in results) and received == []


def _own_env_entry() -> bytes:
    """One entry of this process's initial environment that the sandbox does not set."""
    with open("/proc/self/environ", "rb") as f:
        entries = [e for e in f.read().split(b"\0") if b"=" in e]
    kept = {b"PATH", b"HOME", b"TMPDIR", b"LANG", b"PYTHONHASHSEED"}
    return next(e for e in entries if e.split(b"=")[0] not in kept and len(e) > 4)


def test_escape_reading_the_evaluators_environ():
    marker = _own_env_entry()
    program = (f"import os\nmarker = {marker!r}\nfound = []\n"
               f"for pid in {{os.getppid(), {os.getpid()}, *(p for p in os.listdir('/proc') "
               "if p.isdigit())}:\n"
               "    try:\n        found.append(marker in open(f'/proc/{pid}/environ', 'rb').read())\n"
               "    except OSError:\n        pass\n"
               "assert any(found)\n")
    res = run_program(program)
    assert not res.passed and "AssertionError" in res.reason


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("DLLMQ_TEST_SECRET", "s3cr3t")
    program = ("import os, sys\nassert 'DLLMQ_TEST_SECRET' not in os.environ\n"
               "assert sys.flags.hash_randomization == 0\n"   # PYTHONHASHSEED=0: repeatable
               "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'PYTHONHASHSEED', "
               "'LC_CTYPE'}, sorted(os.environ)\n")
    assert run_program(program).passed


def test_escape_detached_child_holding_stderr_cannot_stretch_the_timeout():
    sleeper = FORK_EXEC + "spawn([sys.executable, '-c', 'import time; time.sleep(15)'], True)\n"
    start = time.monotonic()
    exits, loops = run_programs([sleeper, sleeper + "while True:\n    pass\n"], timeout_s=2.0)
    elapsed = time.monotonic() - start
    assert exits.passed and not loops.passed and "timed out" in loops.reason
    assert elapsed < 3.0, f"a 2 s timeout took {elapsed:.1f} s"


def test_escape_huge_stderr_does_not_grow_the_evaluator():
    program = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(300):\n    sys.stderr.write(chunk)\n"
    tracemalloc.start()
    try:
        res = run_program(program, timeout_s=20.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.passed
    assert peak < 8 << 20, f"evaluator peaked at {peak / 2**20:.0f} MiB for 300 MiB of stderr"


# ------------------------------------------------------------ what the sandbox looks like


def test_sandbox_view_pid_namespace_no_capabilities_readonly_root():
    program = ("import os\nassert os.getpid() == 2, os.getpid()\n"
               "assert sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1', '2']\n"
               f"assert not os.path.exists({str(REPO)!r})\n"
               "status = open('/proc/self/status').read()\n"
               "assert 'CapEff:\\t0000000000000000' in status, status\n"
               "for path in ('/usr/x', '/x', '/dev/x', '/proc/sysrq-trigger', "
               "'/proc/sys/kernel/core_pattern'):\n"
               "    try:\n        open(path, 'w')\n    except OSError:\n        pass\n"
               "    else:\n        raise SystemExit(f'wrote {path}')\n"
               "open('/tmp/ok', 'w').write('ok')\nopen('/dev/null', 'w').write('ok')\n")
    res = run_program(program)
    assert res.passed, res.reason


def test_seccomp_refuses_new_namespaces_and_mounts():
    if execution.seccomp_filter() is None:
        pytest.skip("libseccomp / pyseccomp not available: the seccomp layer is off")
    program = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == errno.EPERM\n"
               "assert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == -1\n"
               "assert ctypes.get_errno() == errno.EPERM\n"
               "import subprocess, sys\n"   # ordinary children still start (clone3 -> clone)
               "subprocess.run([sys.executable, '-c', 'pass'], check=True)\n")
    res = run_program(program)
    assert res.passed, res.reason


def test_without_pyseccomp_the_filter_is_skipped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pyseccomp", None)   # import raises ImportError
    with caplog.at_level(logging.WARNING, logger=execution.__name__):
        assert execution.seccomp_filter.__wrapped__() is None
    assert any("seccomp filter not applied" in r.getMessage() for r in caplog.records)


def test_per_program_overhead_is_small():
    run_program("pass\n")   # the probe runs once, outside the measurement
    start = time.perf_counter()
    results = [run_program("pass\n") for _ in range(5)]
    per_run = (time.perf_counter() - start) / 5
    assert all(r.passed for r in results)
    assert per_run < 0.5, f"{per_run * 1000:.0f} ms per program"


NONROOT_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("ex", sys.argv[1])
ex = importlib.util.module_from_spec(spec)
sys.modules["ex"] = ex
spec.loader.exec_module(ex)
assert ex.isolation().available, ex.isolation()
view = ("import os\\nassert os.getuid() == 0 and os.getpid() == 2\\n"
        "assert open('/proc/self/uid_map').read().split() == ['0', '65534', '1']\\n"
        "assert 'CapEff:\\\\t0000000000000000' in open('/proc/self/status').read()\\n"
        "assert os.listdir('/tmp') == ['program.py']\\n")
print(ex.run_program(view).reason, ex.run_program("open('/usr/x', 'w')").passed)
"""


def test_works_as_a_user_other_than_root():
    """Started by an unprivileged user (nobody, through setpriv): a user namespace of its own."""
    import shutil
    import subprocess
    system_python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not system_python.exists():
        pytest.skip("needs root, util-linux setpriv and /usr/bin/python3 to become another user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(system_python)]
    sources = [execution.__file__, str(execution.CHILD)]
    usable = subprocess.run([*as_nobody, "-c", "import sys; assert sys.version_info >= (3, 11)\n"
                             "[open(p) for p in sys.argv[1:]]", *sources], capture_output=True, cwd="/")
    if usable.returncode != 0:
        pytest.skip("/usr/bin/python3 is older than 3.11, or nobody cannot read the checkout")
    out = subprocess.run([*as_nobody, "-c", NONROOT_SCRIPT, execution.__file__],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["passed", "False"], out.stdout + out.stderr


# ------------------------------------------------------------ no isolation: refuse or opt out


def _unavailable(monkeypatch):
    monkeypatch.setattr(execution, "isolation",
                        lambda: execution.Isolation(False, "simulated: no user namespaces"))


def test_refuses_without_isolation(monkeypatch, tmp_path):
    _unavailable(monkeypatch)
    monkeypatch.delenv(execution.UNSAFE_ENV, raising=False)
    target = tmp_path / "ran.txt"
    with pytest.raises(execution.SandboxUnavailable) as info:
        run_programs([f"open({str(target)!r}, 'w')\n"])
    message = str(info.value)
    assert "\n" not in message and "DLLMQ_UNSAFE_EXEC=1" in message and "simulated" in message
    assert not target.exists()
    with pytest.raises(execution.SandboxUnavailable):
        run_program("pass\n")


def test_opt_out_runs_unsandboxed_with_a_warning(monkeypatch, caplog):
    _unavailable(monkeypatch)
    monkeypatch.setenv(execution.UNSAFE_ENV, "1")
    execution._warn_unsafe.cache_clear()
    with caplog.at_level(logging.WARNING, logger=execution.__name__):
        seen = run_program(f"import os\nassert os.path.exists({str(REPO)!r})\n")
        wrong = run_program("assert 1 + 1 == 3\n")
        loop = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert seen.passed and not wrong.passed and "timed out" in loop.reason
    warnings = [r for r in caplog.records if "WITHOUT isolation" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# ------------------------------------------------------------ layouts and real benchmarks


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
