"""Run untrusted Python (model-written code) with limits, for ``dasd filter --verify``.

Each run gets a fresh temporary folder and a child process that, before it executes
anything, (in the child, between fork and exec):

- starts its own session, so the whole process group can be killed;
- leaves the network: a new network namespace holds only a downed loopback, so even
  127.0.0.1 is unreachable (``unshare(CLONE_NEWNET)``; as non-root inside a new user
  namespace, where the kernel allows that);
- gets a private, size-limited tmpfs over /tmp, /var/tmp and /dev/shm (a new mount
  namespace), so the world-writable folders of the host are out of reach;
- sets resource limits: CPU seconds, address space, file size, open files, processes;
- when dasd runs as root (where RLIMIT_NPROC does not bind): switches to a fresh,
  otherwise unused uid/gid, so the process limit applies, files of every other user are
  as closed to it as to any stranger, and every process it leaves behind can be found
  and killed by that uid.

The environment is replaced by a minimal one (PATH, HOME and TMPDIR in the sandbox
folder, LANG): no API keys or tokens of the parent are passed on. What the kernel does not
allow is skipped and reported by :func:`isolation` (e.g. no network isolation without
namespaces), never silently assumed.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

CLONE_NEWNS = 0x00020000  # <linux/sched.h>
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000  # <linux/mount.h>
MS_PRIVATE = 1 << 18
MS_NOSUID = 0x2
MS_NODEV = 0x4
PRIVATE_TMP_DIRS = (b"/tmp", b"/var/tmp", b"/dev/shm")
SANDBOX_UID_BASE = 1_000_000  # fresh uids come from [BASE, BASE + SPAN): far above real users
SANDBOX_UID_SPAN = 1_000_000
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# The program is opened relative to the cwd: its folder's absolute path may lie under the
# covered /tmp, where only the already-entered cwd still reaches it.
_BOOTSTRAP = ("import sys; sys.argv = ['main.py']; "
              "exec(compile(open('main.py', encoding='utf-8').read(), 'main.py', 'exec'), "
              "{'__name__': '__main__', '__builtins__': __builtins__})")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_seconds: float = 10.0  # killed after this much real time
    cpu_seconds: int = 10  # RLIMIT_CPU: SIGXCPU, then SIGKILL one second later
    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space of each process (bytes)
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file it may write (bytes)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC: processes of the sandbox uid (a fork bomb stops here)
    output_bytes: int = 64 << 10  # stdout/stderr kept for the verdict (bytes each)


@dataclass(frozen=True)
class Isolation:
    """Which protections this kernel and user allow (probed once per process)."""

    network: bool  # own network namespace: no route anywhere, loopback included
    private_tmp: bool  # own tmpfs over /tmp, /var/tmp, /dev/shm
    separate_user: bool  # runs as a fresh unprivileged uid (dasd is root)
    notes: tuple[str, ...] = ()  # one line per protection that is missing, and why

    def describe(self) -> str:
        """One line for logs: what is on and what is off."""
        on = [name for name, ok in (("no network", self.network), ("private /tmp", self.private_tmp),
                                    ("separate uid", self.separate_user)) if ok]
        text = "sandbox: " + (", ".join(on) if on else "limits only")
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed program ended."""

    status: str  # "ok" (exit 0), "failed" (nonzero exit or signal), "timeout", "error" (setup)
    returncode: int | None
    stdout: str
    stderr: str
    wall_seconds: float
    isolation: Isolation = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def last_error_line(self) -> str:
        """The last non-empty stderr line (the exception, usually), for a Drop detail."""
        for line in reversed(self.stderr.splitlines()):
            if line.strip():
                return line.strip()[:200]
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {signal.Signals(-self.returncode).name}" \
                if -self.returncode in signal.Signals._value2member_map_ else f"signal {-self.returncode}"
        return f"exit status {self.returncode}"


# --------------------------------------------------------------------------- probing

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int,
           data: bytes | None) -> None:
    if _libc().mount(source, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


def _private_tmp(size_bytes: int) -> None:
    """In a fresh mount namespace, cover the world-writable folders with a small tmpfs."""
    _unshare(CLONE_NEWNS)
    _mount(None, b"/", None, MS_REC | MS_PRIVATE, None)  # our mounts stay ours
    opts = f"size={size_bytes},mode=1777".encode()
    for target in PRIVATE_TMP_DIRS:
        if os.path.isdir(target):
            _mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, opts)


def _try_child(preexec) -> bool:  # type: ignore[no-untyped-def]
    try:
        return subprocess.run(["/bin/true"], preexec_fn=preexec, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=10).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe (once) which protections work here; each runs in a throwaway child."""
    root = os.geteuid() == 0
    notes: list[str] = []
    net_flags = CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET
    network = _try_child(lambda: _unshare(net_flags))
    if not network:
        notes.append("network NOT isolated (no network namespaces here: unshare refused)")
    private_tmp = root and _try_child(lambda: _private_tmp(1 << 20))
    if not private_tmp:
        notes.append("/tmp shared with the host (needs root for a mount namespace)")
    separate_user = root and _try_child(lambda: (os.setgroups([]), os.setgid(65534), os.setuid(65534)))
    if not root:
        notes.append("runs as the calling user (process limit applies to that user)")
    elif not separate_user:
        notes.append("could not switch to an unprivileged uid: the process limit does not bind root")
    return Isolation(network=network, private_tmp=private_tmp, separate_user=separate_user,
                     notes=tuple(notes))


@lru_cache(maxsize=1)
def sandbox_python() -> str:
    """A Python interpreter a fresh uid may execute: ours if its path is world-traversable."""
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  shutil.which("python3", path=SAFE_PATH) or ""]
    if os.geteuid() != 0 or not isolation().separate_user:
        return sys.executable
    for candidate in candidates:
        if candidate and _world_executable(os.path.realpath(candidate)):
            return candidate
    return sys.executable  # the run will fail loudly with a permission error


def _world_executable(path: str) -> bool:
    try:
        if not os.stat(path).st_mode & 0o001:
            return False
        folder = os.path.dirname(path)
        while True:
            if not os.stat(folder).st_mode & 0o001:
                return False
            parent = os.path.dirname(folder)
            if parent == folder:
                return True
            folder = parent
    except OSError:
        return False


# --------------------------------------------------------------------------- running

def run_python(source: str, limits: Limits = Limits(), *, python: str | None = None) -> RunResult:
    """Run ``source`` as a Python program in the sandbox and return how it ended.

    Never raises for anything the program does (crash, hang, fork bomb, memory blow-up):
    those are verdicts. Raises OSError only if no temporary folder can be made.
    """
    iso = isolation()
    root = os.geteuid() == 0
    outer = tempfile.mkdtemp(prefix="dasd-sandbox-")  # 0700, ours: holds the captured output
    work = os.path.join(outer, "work")  # the program's folder, owned by its uid
    os.mkdir(work, 0o700)
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if iso.separate_user else None
    with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as fh:
        fh.write(source)
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(os.path.join(work, "main.py"), uid, uid)
        os.chmod(outer, 0o711)  # the uid may pass through to work/, not list or read outer
    env = {"PATH": SAFE_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    net_flags = CLONE_NEWNET if root else CLONE_NEWUSER | CLONE_NEWNET

    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        if iso.network:
            _unshare(net_flags)
        os.chdir(work)  # before /tmp is covered: the cwd keeps pointing at the real folder
        if iso.private_tmp:
            _private_tmp(limits.file_size_bytes)
        import resource

        for which, value in ((resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
                             (resource.RLIMIT_AS, (limits.memory_bytes,) * 2),
                             (resource.RLIMIT_FSIZE, (limits.file_size_bytes,) * 2),
                             (resource.RLIMIT_NOFILE, (limits.open_files,) * 2),
                             (resource.RLIMIT_CORE, (0, 0)),
                             (resource.RLIMIT_NPROC, (limits.processes,) * 2)):
            resource.setrlimit(which, value)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
    started = time.monotonic()
    proc = None
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [python or sandbox_python(), "-I", "-B", "-c", _BOOTSTRAP], cwd=work, env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=preexec,
                    close_fds=True)
            except (subprocess.SubprocessError, OSError) as exc:
                return RunResult("error", None, "", f"sandbox setup failed: {exc}",
                                 time.monotonic() - started, iso)
            try:
                code = proc.wait(timeout=limits.wall_seconds)
                status = "ok" if code == 0 else "failed"
                # SIGXCPU is the soft CPU limit; SIGKILL after that long is its hard limit.
                if code == -signal.SIGXCPU or (code == -signal.SIGKILL and
                                               time.monotonic() - started >= limits.cpu_seconds):
                    status = "timeout"
            except subprocess.TimeoutExpired:
                code, status = None, "timeout"
        return RunResult(status, code, _read(out_path, limits.output_bytes),
                         _read(err_path, limits.output_bytes), time.monotonic() - started, iso)
    finally:
        if proc is not None:
            _kill_all(proc, uid)
        shutil.rmtree(outer, ignore_errors=True)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the program and everything it started, even what left its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        # kill(-1) from a process of that uid reaches every process of that uid, and only
        # those: the one reliable way to end a fork bomb whose children called setsid().
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as fh:
        data = fh.read(limit)
    return data.decode("utf-8", "replace")
