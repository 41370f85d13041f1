"""The code sandbox: every escape attempt ends as a failed verdict, never as harm or a crash."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dasd_cli import sandbox
from dasd_cli.sandbox import Limits, run_python

FAST = Limits(wall_seconds=8.0, cpu_seconds=3, memory_bytes=512 << 20, processes=16)
ISO = sandbox.isolation()


def run(code: str, limits: Limits = FAST) -> sandbox.RunResult:
    return run_python(textwrap.dedent(code), limits)


def test_plain_program_runs_and_reports_output():
    result = run("print('hello', 6 * 7)")
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout == "hello 42\n"


def test_exception_is_a_failed_verdict_with_its_last_line():
    result = run("raise ValueError('nope')")
    assert result.status == "failed"
    assert result.last_error_line() == "ValueError: nope"


def test_isolation_is_reported_in_one_line():
    text = ISO.describe()
    assert text.startswith("sandbox: ")
    assert ("no network" in text) == ISO.network


@pytest.mark.skipif(not ISO.network, reason="this kernel allows no network namespace")
def test_cannot_connect_to_a_listener_on_loopback():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        for _ in range(30):  # ~6 s: as long as the sandboxed attempt may take
            try:
                accepted.append(listener.accept())
                return
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    result = run(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        s.sendall(b"stolen")
        print("connected")
    """)
    thread.join()
    listener.close()
    assert result.status == "failed"
    assert "connected" not in result.stdout
    assert accepted == []
    assert "OSError" in result.stderr or "unreachable" in result.stderr.lower()


def test_cannot_write_outside_its_folder(tmp_path):
    os.chmod(tmp_path, 0o755)  # readable by everyone, writable only by its owner (root)
    targets = [str(tmp_path / "pwned.txt"),  # under /tmp: hidden by the private /tmp, or denied
               os.path.join(os.path.dirname(sys.executable), "pwned"),  # our venv's bin/
               f"/dasd-sandbox-escape-{os.getpid()}"]  # the root folder
    shared_tmp = f"/tmp/dasd-sandbox-escape-{os.getpid()}.txt"
    result = run(f"""
        import sys
        open({shared_tmp!r}, "w").write("in the private /tmp, if any")
        failures = 0
        for path in {targets!r}:
            try:
                open(path, "w").write("escaped")
            except OSError as exc:
                failures += 1
                print(type(exc).__name__)
        sys.exit(1 if failures else 0)
    """)
    assert result.status == "failed"
    assert not any(os.path.exists(path) for path in targets)
    if ISO.private_tmp:
        assert not os.path.exists(shared_tmp)
    elif os.path.exists(shared_tmp):  # pragma: no cover - no mount namespace here
        os.unlink(shared_tmp)
    # every write failed: denied, or (for paths under the private /tmp, wherever the
    # checkout lives) its folder does not even exist in there
    assert len(result.stdout.split()) == len(targets)
    if ISO.separate_user:
        assert result.stdout.count("PermissionError") >= 1  # "/" is never under /tmp


def test_can_write_inside_its_folder_but_not_a_huge_file():
    result = run("""
        open("small.txt", "w").write("x" * 1000)
        print(len(open("small.txt").read()))
        with open("huge.bin", "wb") as fh:
            for _ in range(100):
                fh.write(b"x" * (1 << 20))  # 100 MiB > the 16 MiB file size limit
        print("wrote huge")
    """)
    assert result.stdout.startswith("1000\n")
    assert "wrote huge" not in result.stdout
    assert result.status == "failed"


def test_cannot_read_the_parents_secrets(monkeypatch):
    secret = "sk-dasd-test-secret-0123456789"
    monkeypatch.setenv("DASD_TEST_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    result = run("""
        import os
        print(dict(os.environ))
        for pid in (os.getppid(), 1):
            try:
                print(open(f"/proc/{pid}/environ", "rb").read())
            except OSError as exc:
                print("denied", type(exc).__name__)
    """)
    assert result.status == "ok"
    assert secret not in result.stdout and secret not in result.stderr
    assert "DASD_TEST_API_KEY" not in result.stdout


def test_fork_bomb_is_contained_and_cleaned_up():
    result = run("""
        import os
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    os.setsid()  # try to leave the process group, too
                    while True:
                        try:
                            os.fork()
                        except OSError:
                            pass
                children += 1
        except OSError as exc:
            print("fork refused after", children, type(exc).__name__)
            raise SystemExit(3)
    """, Limits(wall_seconds=4.0, cpu_seconds=3, memory_bytes=512 << 20, processes=16))
    assert result.status in ("failed", "timeout")
    if ISO.separate_user:
        assert "fork refused" in result.stdout
        assert _live_sandbox_processes(deadline_s=3.0) == []


def _live_sandbox_processes(deadline_s: float) -> list[str]:
    """Processes of a sandbox uid still alive (not zombies) once SIGKILL has had time to land."""
    end = time.monotonic() + deadline_s
    while True:
        rows = subprocess.run(["ps", "-eo", "uid=,stat=,pid="], capture_output=True,
                              text=True).stdout.splitlines()
        live = [row for row in rows if int(row.split()[0]) >= sandbox.SANDBOX_UID_BASE
                and not row.split()[1].startswith("Z")]
        if not live or time.monotonic() > end:
            return live
        time.sleep(0.1)


def test_unbounded_allocation_fails():
    result = run("""
        blocks = []
        while True:
            blocks.append(bytearray(64 << 20))
    """)
    assert result.status == "failed"
    assert "MemoryError" in result.stderr


def test_infinite_loop_times_out_on_cpu():
    result = run("while True: pass", Limits(wall_seconds=8.0, cpu_seconds=1))
    assert result.status == "timeout"
    assert result.wall_seconds < 6


def test_sleeping_forever_times_out_on_wall_clock():
    result = run("import time; time.sleep(60)", Limits(wall_seconds=1.0, cpu_seconds=5))
    assert result.status == "timeout" and result.returncode is None
    assert result.wall_seconds < 4


def test_flood_of_output_is_bounded():
    result = run("import sys\nwhile True: sys.stdout.write('spam' * 1000)",
                 Limits(wall_seconds=3.0, cpu_seconds=2, output_bytes=1000))
    assert result.status in ("failed", "timeout")
    assert len(result.stdout) <= 1000
