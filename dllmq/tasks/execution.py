"""Run generated code against hidden unit tests: one sandboxed process per program.

Follows the shape of openai/human-eval's `execution.py` (program = prompt + completion + test +
`check(entry_point)`, pass iff it exits cleanly). Each program runs in a fresh interpreter
(`python -B -S -s -P`: no bytecode written, no site-packages, so programs see the standard
library only) isolated by the operating system, not by Python hooks:

- **Namespaces**: new mount, PID (the program cannot see or signal any process of the host;
  `/proc` is the new namespace's own), network (only a loopback that is down: no connection,
  not even to the host's loopback), IPC, UTS and cgroup namespaces; started as another user,
  inside a new user namespace too. `sandbox_child.py` creates them (`unshare(2)`, as
  util-linux's `unshare --fork --kill-child` does, and as process 1) and builds the file
  system view: the system directories and the Python installation read-only, a minimal /dev, a
  private tmpfs /tmp as working directory and HOME, nothing else of the host (no home
  directory, no repository, no secrets on disk). Then no capability is left: started as root,
  the program runs as a uid of its own that no host user has (so RLIMIT_NPROC binds; it never
  binds uid 0); otherwise as root of its user namespace, with every capability dropped.
- **seccomp** (libseccomp through `pyseccomp`, which this module uses to compile the filter in
  the evaluator): the syscalls a contained program has no use for and that widen the kernel's
  attack surface fail with EPERM: ptrace, process_vm_*, mount and the new mount API, pivot_root,
  chroot, unshare, setns and namespace flags of clone (clone3 answers ENOSYS, so libc falls back
  to clone), bpf, perf_event_open, userfaultfd, io_uring, keyctl, kexec, module loading, reboot,
  swap, clock setting. Where libseccomp or `pyseccomp` is missing this layer is skipped with a
  warning; the namespaces and limits still hold.
- **Resource limits** set in the program's process and inherited by anything it starts: address
  space (`memory_mb`), CPU time (the timeout + 1 s), file size 1 MiB, 64 processes, 256 files,
  no core dumps; the tmpfs working directory holds 64 MiB, /dev/shm 16 MiB.
- **Timeout**: the whole process tree dies with it. The program is process 2 under an init
  (process 1) whose exit makes the kernel kill every process left in the namespace, so a
  detached child holding stderr neither outlives the program nor stretches the timeout.
- **Output**: stdout is discarded and only the last `OUTPUT_TAIL_BYTES` of stderr are kept (for
  the failure reason); the rest is read and dropped, so the evaluator's memory stays bounded.
- **Environment**: only PATH, HOME, TMPDIR, LANG and PYTHONHASHSEED=0 reach the program.

Availability is probed once per process (`isolation()`: a trivial program in the sandbox). Where
no isolation is available (not Linux; user namespaces disabled for a non-root user; a container
that forbids unshare or mounts) `run_program` and `run_programs` refuse with `SandboxUnavailable`, a one-line message naming the opt-out: setting the
environment variable `DLLMQ_UNSAFE_EXEC=1` runs programs without isolation (limits, timeout and
output cap only) after a loud warning. The opt-out has no effect where the sandbox works.
"""

from __future__ import annotations

import functools
import logging
import marshal
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 1024
MAX_FILE_BYTES = 1 << 20
OUTPUT_TAIL_BYTES = 1 << 16
UNSAFE_ENV = "DLLMQ_UNSAFE_EXEC"
CHILD = Path(__file__).with_name("sandbox_child.py")
# top-level system directories the sandbox shows read-only (those that exist; symlinks kept)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SECCOMP_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "name_to_handle_at", "open_by_handle_at", "settimeofday",
    "clock_settime", "clock_adjtime", "syslog", "lookup_dcookie", "iopl", "ioperm", "kcmp")
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
CLONE_NEW_FLAGS = (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)


class SandboxUnavailable(RuntimeError):
    """No OS-level isolation on this system and no opt-out given (the message says how)."""


@dataclass(frozen=True)
class ExecResult:
    """`passed` iff the program exited with status 0 within the timeout; `reason` says why not
    ("passed", "timed out after 5.0 s", or the last line of the traceback)."""

    passed: bool
    reason: str


@dataclass(frozen=True)
class Isolation:
    """What `isolation()` found: whether programs can be isolated here, and how or why not."""

    available: bool
    reason: str


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's layout: the prompt, the model's completion, the tests, `check(entry_point)`."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def build_mbpp_program(completion: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """MBPP's layout (google-research/mbpp): setup code, the model's code, then the asserts."""
    return f"{test_setup_code}\n{completion}\n\n" + "\n".join(test_list) + "\n"


def _failure_reason(returncode: int, stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1][:300]
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def _python() -> str:
    """The base interpreter (a venv's python is a symlink into it; the sandbox shows only it)."""
    return os.path.realpath(sys.executable)


def _binds() -> list[str]:
    """Directories the sandbox shows read-only: the system's and the Python installation's."""
    paths = [p for p in SYSTEM_DIRS if os.path.lexists(p)]
    base = os.path.realpath(sys.base_prefix)
    # a venv whose python is a copy, not a link, needs its pyvenv.cfg: show the venv too
    venv = [] if _python().startswith(base + "/") else [os.path.realpath(sys.prefix)]
    for extra in (base, *venv, os.path.dirname(_python())):
        if not any(extra == p or extra.startswith(p + "/") for p in paths):
            paths.append(extra)
    return paths


@functools.cache
def seccomp_filter() -> bytes | None:
    """The BPF program of the deny list above, compiled once with libseccomp (None if absent)."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as e:   # RuntimeError: pyseccomp found no libseccomp
        log.warning("seccomp filter not applied (%s): install libseccomp2 and pyseccomp; "
                    "namespaces and limits still isolate programs", e)
        return None
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in SECCOMP_DENY:
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if nr >= 0:   # negative: not a syscall of this architecture
            filt.add_rule(pyseccomp.ERRNO(1), nr)   # EPERM
    filt.add_rule(pyseccomp.ERRNO(38), "clone3")    # ENOSYS: libc falls back to clone
    for flag in CLONE_NEW_FLAGS:   # clone creating any namespace: EPERM (rules for one call OR)
        filt.add_rule(pyseccomp.ERRNO(1), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    with tempfile.TemporaryFile() as f:
        filt.export_bpf(f)
        f.seek(0)
        return f.read()


def _env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def _limits(timeout_s: float, memory_mb: int) -> dict[str, int]:
    limits = {"RLIMIT_CPU": int(timeout_s) + 1, "RLIMIT_FSIZE": MAX_FILE_BYTES,
              "RLIMIT_NPROC": 64, "RLIMIT_NOFILE": 256, "RLIMIT_CORE": 0}
    if memory_mb > 0:
        limits["RLIMIT_AS"] = memory_mb << 20
    return limits


def _spawn(argv: Sequence[str], header: dict, program: str, cwd: str, env: Mapping[str, str],
           timeout_s: float) -> tuple[int | None, str]:
    """Start `argv`, feed it header + program on stdin, read the tail of its stderr until it
    exits or `timeout_s` passes (then kill its process group). Returns (returncode or None if
    timed out, stderr tail)."""
    blob = marshal.dumps(header)
    payload = b"%08x" % len(blob) + blob + program.encode("utf-8", "surrogatepass")
    deadline = time.monotonic() + timeout_s
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    tail = bytearray()
    try:
        try:   # the child reads all of stdin before running anything, so this cannot block long
            proc.stdin.write(payload)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stderr.fileno(), 1 << 16)
                if not chunk:
                    break
                tail += chunk
                del tail[:-OUTPUT_TAIL_BYTES]
        left = deadline - time.monotonic()
        if left > 0:
            try:
                return proc.wait(timeout=left), tail.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                pass
        return None, tail.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@functools.cache
def isolation() -> Isolation:
    """Probe once per process whether programs can be isolated here, and how."""
    if not sys.platform.startswith("linux"):
        return Isolation(False, f"Linux namespaces are not available on {sys.platform}")
    hidden = [p for p in _binds() if p == "/tmp" or p.startswith("/tmp/")]
    if hidden:
        return Isolation(False, f"Python lives under /tmp ({hidden[0]}), which the sandbox "
                                "replaces with its working directory; use one installed elsewhere")
    probe = "import os\nassert os.getpid() == 2 and os.listdir('/proc/self/fd')\n"
    rc, err = _spawn(_child_argv(), _header(True, 10.0, DEFAULT_MEMORY_MB), probe, "/",
                     _env("/tmp"), 10.0)
    if rc != 0:
        why = _failure_reason(rc or 0, err) if rc is not None else "probe timed out"
        return Isolation(False, f"a probe program could not be isolated: {why}")
    return Isolation(True, "mount, PID, network, IPC, UTS and cgroup namespaces"
                           + ("" if os.geteuid() == 0 else " in a user namespace"))


def _child_argv() -> list[str]:
    return [_python(), "-B", "-S", "-s", "-P", str(CHILD)]


def _header(isolate: bool, timeout_s: float, memory_mb: int) -> dict:
    bpf = seccomp_filter() if isolate else None
    return {"isolate": isolate, "binds": _binds() if isolate else [],
            "limits": _limits(timeout_s, memory_mb), "bpf": bpf}


@functools.cache
def _warn_unsafe(reason: str) -> None:
    log.warning("%s=1: running model-written code WITHOUT isolation (%s); it can read your "
                "files and secrets, write anywhere you can, and reach the network", UNSAFE_ENV,
                reason)


def check_sandbox() -> Isolation:
    """The isolation programs will get; raises `SandboxUnavailable` (one line) where there is
    none and the opt-out is not set. Call it before long work that ends in running code."""
    iso = isolation()
    if not iso.available and os.environ.get(UNSAFE_ENV) != "1":
        raise SandboxUnavailable(
            f"refusing to run model-written code: no OS-level isolation ({iso.reason}); enable "
            f"unprivileged user namespaces, or set {UNSAFE_ENV}=1 to run "
            "it unsandboxed at your own risk")
    return iso


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    """Run one program in the sandbox (module docstring); `passed` iff it exits 0 in time."""
    iso = check_sandbox()
    if iso.available:
        rc, err = _spawn(_child_argv(), _header(True, timeout_s, memory_mb), program, "/",
                         _env("/tmp"), timeout_s)
    else:
        _warn_unsafe(iso.reason)
        with tempfile.TemporaryDirectory(prefix="dllmq-exec-") as work:
            rc, err = _spawn(_child_argv(), _header(False, timeout_s, memory_mb), program, work,
                             _env(work), timeout_s)
    if rc is None:
        return ExecResult(False, f"timed out after {timeout_s} s")
    if rc == 0:
        return ExecResult(True, "passed")
    return ExecResult(False, _failure_reason(rc, err))


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
    check_sandbox()   # refuse (or warn) once, before any program runs
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
