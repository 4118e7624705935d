"""The inside half of `dllmq.tasks.execution`: a script, standard library only, that
`execution.run_program` starts as `python -B -S -s -P sandbox_child.py`. It reads from stdin a
header (a dict; its length as 8 ASCII hex digits, then its `marshal` bytes: builtin, unlike
json, whose import costs more than the rest of this script) and then the program.

With `"isolate": true` it unshares mount, PID, network, IPC, UTS and cgroup namespaces (and a
user namespace when not started as root) and forks; the fork is process 1 of the new PID
namespace, and the launcher only relays its exit status. Before anything of the program runs,
process 1
  1. builds a new root on a tmpfs: the header's `binds` (the system directories and the Python
     installation) bind-mounted read-only, a minimal /dev (null, zero, full, random, urandom and a
     private /dev/shm), a read-only /proc of the new PID namespace, a private tmpfs /tmp as the
     working directory; `pivot_root` into it and detach the old root (nothing else of the host's
     file system stays reachable), then makes the new root read-only;
  2. leaves no capability: empties the bounding set, sets no_new_privs, then (as root) becomes a
     uid of this run's own or (in a user namespace) drops its capabilities, so the program can
     neither undo a mount nor regain privileges on exec;
then forks the program (process 2), which sets the resource limits and loads the header's
seccomp filter (BPF compiled by the parent with libseccomp) before it runs. Process 1 waits for
it and exits with its status; when process 1 exits the kernel kills every process left in the
namespace, so a detached child cannot outlive the program.
The mount steps follow bubblewrap's `setup_newroot` (containers/bubblewrap, bubblewrap.c) and
the namespace steps util-linux's `unshare --fork --kill-child` (sys-utils/unshare.c); done here
rather than through either tool because bubblewrap is rarely installed and `unshare` maps only
the caller's uid, which as root would be the host's root. Without `"isolate"` (the
DLLMQ_UNSAFE_EXEC opt-out) only the limits apply.
"""

import ctypes
import marshal
import os
import resource
import sys
import types

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
MNT_DETACH = 2
SIGKILL = 9   # on every Linux architecture; `signal` is not imported (enum costs milliseconds)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_SET_PDEATHSIG, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 22, 2
PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_DUMPABLE = 4, 4
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
# As root, the program runs under a uid and gid of its own, no host user's (0x10000000 + the pid
# of the launcher): RLIMIT_NPROC counts processes per uid, so concurrent runs must not share one.
SANDBOX_ID_BASE = 0x10000000
SECBITS_LOCKED_NOROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP and their locks; KEEP_CAPS_LOCKED
DEV_NODES = ("null", "zero", "full", "random", "urandom")
NEW_ROOT = "/tmp"    # where the tmpfs root is staged before pivot_root
OLD_ROOT = "/.oldroot"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _bind_ro(src: str, target: str) -> None:
    _mount(src, target, None, MS_BIND)
    # statvfs f_flag bits -> the mount flags a read-only remount must keep (locked by the kernel)
    kept = {os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME,
            os.ST_RELATIME: MS_RELATIME}
    keep = sum(ms for st, ms in kept.items() if os.statvfs(target).f_flag & st)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def _enter_namespaces() -> bool:
    """Become process 1 of new mount, PID, network, IPC, UTS and cgroup namespaces. As root they
    are created directly (the privileges go in `_drop_privileges`); as any other user inside a
    new user namespace, mapping that user to its root (which has no power outside it). Returns
    whether uid 0 is still the host's root."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(flags | (CLONE_NEWUSER if uid else 0)), "unshare")
    if uid:
        for name, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"),
                           ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    pid = os.fork()
    if pid:   # outside: relay the exit status of process 1
        _, status = os.waitpid(pid, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    _check(_libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "pdeathsig")
    return uid == 0


def _isolate(binds: list[str], host_root: bool, launcher: int) -> None:
    """Steps 1 and 2 of the module docstring; the working directory is /tmp afterwards."""
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(f"no pivot_root syscall number known for {os.uname().machine}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.mkdir(NEW_ROOT + OLD_ROOT)
    _check(_libc.syscall(nr, os.fsencode(NEW_ROOT), os.fsencode(NEW_ROOT + OLD_ROOT)), "pivot_root")
    os.chdir("/")
    for path in binds:
        src = OLD_ROOT + path
        if os.path.islink(src):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(os.readlink(src), path)
        elif os.path.isdir(src):
            os.makedirs(path)
            _bind_ro(src, path)
    os.mkdir("/dev")
    for name in DEV_NODES:
        open(f"/dev/{name}", "x").close()
        _mount(f"{OLD_ROOT}/dev/{name}", f"/dev/{name}", None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")
    os.mkdir("/dev/shm")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777")
    os.mkdir("/proc")   # procfs of the new PID namespace, read-only: no sysctl, no sysrq
    _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir("/tmp")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=0777")
    _check(_libc.umount2(os.fsencode(OLD_ROOT), MNT_DETACH), "umount old root")
    os.rmdir(OLD_ROOT)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/tmp")
    _drop_privileges(host_root, launcher)


def _drop_privileges(host_root: bool, launcher: int) -> None:
    """No capability left, none to regain: as root, become an unprivileged uid of this run's own
    (a uid change clears every capability, and puts RLIMIT_NPROC in force, which never binds
    uid 0); otherwise drop the capabilities the user namespace gave. Both: an empty bounding set
    and no_new_privs."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    if host_root:
        ident = SANDBOX_ID_BASE + launcher
        os.setgroups([])
        os.setresgid(ident, ident, ident)
        os.setresuid(ident, ident, ident)
    else:
        _check(_libc.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (ctypes.c_uint32 * 6)()                   # effective, permitted, inheritable: none
        _check(_libc.capset(header, data), "capset")
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16):
        raise OSError(f"capabilities still held after dropping them: {status['CapEff'].strip()}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _load_seccomp(bpf: bytes) -> None:
    prog = _SockFprog(len(bpf) // 8, bpf)   # struct sock_filter is 8 bytes
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _set_limits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def main() -> None:
    data = sys.stdin.buffer.read()
    size = int(data[:8], 16)
    cfg, program = marshal.loads(data[8:8 + size]), data[8 + size:]
    os.umask(0o022)
    if sys.platform.startswith("linux"):   # die with the evaluator
        _check(_libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "pdeathsig")
    try:
        if cfg["isolate"]:
            launcher = os.getpid()
            _isolate(cfg["binds"], _enter_namespaces(), launcher)
        with open("program.py", "wb") as f:
            f.write(program)
    except OSError as e:
        sys.stderr.write(f"dllmq sandbox setup failed: {e}\n")
        os._exit(125)
    pid = os.fork()
    if pid:   # process 1: wait, report, exit (taking every other process of the namespace along)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            import signal
            sys.stderr.write(f"\nkilled by signal {signal.Signals(os.WTERMSIG(status)).name}\n")
            sys.stderr.flush()
            os._exit(128 + os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))
    _set_limits(cfg["limits"])
    if cfg["bpf"]:
        _load_seccomp(cfg["bpf"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)   # the program's stdin (and its children's)
    sys.stdin = open(0, closefd=False)   # noqa: SIM115 (open for the program's whole run)
    main_module = types.ModuleType("__main__")
    main_module.__file__ = os.path.abspath("program.py")
    sys.modules["__main__"], sys.argv = main_module, ["program.py"]
    code = compile(program, "program.py", "exec")
    exec(code, main_module.__dict__)


if __name__ == "__main__":
    main()
