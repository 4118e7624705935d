"""Run generated code against hidden unit tests: a subprocess per program, a timeout, limits.

Follows the shape of openai/human-eval's `execution.py` (program = prompt + completion + test +
`check(entry_point)`, pass iff it exits cleanly), with these differences: the program runs in a
fresh interpreter (`sys.executable -I -B -S`: isolated, no bytecode written, no site-packages,
so programs see the standard library only, which starts 3x faster) rather than a forked worker, its cwd and HOME/TMPDIR
are a fresh temporary directory removed afterwards, POSIX resource limits cap memory, CPU
time, file size and core dumps, the process group is killed at the timeout, and a Python audit
hook (PEP 578) installed before the program runs refuses every file write, rename or deletion
outside that directory, every subprocess and every socket connection. This guards against
accidents of generated code, not against an adversary (ctypes is refused too, but a determined
attacker with native code could still escape; run untrusted code in a container).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 1024
MAX_FILE_BYTES = 1 << 20

# Runs first, in the child: installs the audit hook, then executes the program file in a
# fresh __main__ namespace (a separate file, so `from __future__` imports in prompts still work).
_GUARD = r'''
import os, sys
try:
    import resource
except ImportError:   # not POSIX: no resource limits, the timeout and audit hook still apply
    resource = None
if resource is not None:
    _cpu, _fsize, _mem = (int(a) for a in sys.argv[1:4])
    resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                "os.utime", "os.link", "os.symlink", "os.rename", "shutil.rmtree",
                "shutil.copyfile", "shutil.copytree", "shutil.move"}
_BANNED = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "socket.connect", "socket.bind",
           "socket.sendto", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.startfile"}

def _inside(path):
    if isinstance(path, int):
        return True
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == _ROOT or real.startswith(_ROOT + os.sep)

def _hook(event, args):
    if event in _BANNED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the work dir")
    elif event in _PATH_EVENTS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the work dir")

with open("program.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
sys.addaudithook(_hook)
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class ExecResult:
    """`passed` iff the program exited with status 0 within the timeout; `reason` says why not
    ("passed", "timed out after 5.0 s", or the last line of the traceback)."""

    passed: bool
    reason: str


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's layout: the prompt, the model's completion, the tests, `check(entry_point)`."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def _failure_reason(returncode: int, stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1][:300]
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def build_mbpp_program(completion: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """MBPP's layout (google-research/mbpp): setup code, the model's code, then the asserts."""
    return f"{test_setup_code}\n{completion}\n\n" + "\n".join(test_list) + "\n"


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    """Run one program in a fresh interpreter inside a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="dllmq-exec-") as work:
        Path(work, "program.py").write_text(program, encoding="utf-8")
        Path(work, "guard.py").write_text(_GUARD, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
               "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        limits = [str(int(timeout_s) + 1), str(MAX_FILE_BYTES), str(max(memory_mb, 0) << 20)]
        # the limits are set by guard.py itself, not by a preexec_fn (unsafe beside threads)
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-S", "guard.py", *limits], cwd=work,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return ExecResult(False, f"timed out after {timeout_s} s")
        if proc.returncode == 0:
            return ExecResult(True, "passed")
        return ExecResult(False, _failure_reason(proc.returncode, err.decode("utf-8", "replace")))


def check_completion(problem: Mapping, completion: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                     memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    """Score one completion of a HumanEval-layout problem (keys prompt, test, entry_point)."""
    program = build_program(problem["prompt"], completion, problem["test"], problem["entry_point"])
    return run_program(program, timeout_s, memory_mb)


def run_programs(programs: Sequence[str], workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB) -> list[ExecResult]:
    """Run many programs, `workers` subprocesses at a time; results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s, memory_mb), programs))


def check_completions(problems: Sequence[Mapping], completions: Sequence[str], workers: int = 2,
                      timeout_s: float = DEFAULT_TIMEOUT_S,
                      memory_mb: int = DEFAULT_MEMORY_MB) -> list[ExecResult]:
    """`check_completion` over paired problems and completions, batched over `workers`."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    programs = [build_program(p["prompt"], c, p["test"], p["entry_point"])
                for p, c in zip(problems, completions, strict=True)]
    return run_programs(programs, workers, timeout_s, memory_mb)
