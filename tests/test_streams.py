"""The stream contract every streaming command must keep (DESIGN.md "Streams", "Errors and exit codes").

A command joins by adding one StreamCase to STREAMING_COMMANDS: its extra flags and a
function making the i-th valid input record (one the command keeps).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from dasd_cli.errors import UsageError
from helpers import (dasd_bin, decode, parse_records, run_dasd, scored_record, teacher_scored_record, to_jsonl,
                     write_file, zstd_bytes)


def response_record(i: int) -> dict[str, Any]:
    """A well-formed teacher response that the default filters keep."""
    return {"id": f"p{i}@0.6#0", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"Question {i}?"}],
            "response": f"<think>\nStep one for {i}. Then step two.\n</think>\n\nThe answer is {i}.",
            "finish_reason": "stop", "domain": "math"}


def released_row(i: int) -> dict[str, Any]:
    """A row of the paper's released data (Superior-Reasoning-SFT-gpt-oss-120b), for `dasd import`."""
    return {"uuid": f"00000000-0000-4000-8000-{i:012d}", "input": f"Question {i}?",
            "output": f"<think>\nStep one for {i}.\n</think>\n\nThe answer is {i}.",
            "domain": "math", "meta": "{}"}


def evaluable_record(i: int) -> dict[str, Any]:
    """A response with a math reference, for `dasd eval`."""
    return {**response_record(i), "reference": {"answer": str(i)}}


@dataclass
class StreamCase:
    command: str
    make_record: Callable[[int], dict[str, Any]]
    args: list[str] = field(default_factory=list)
    # What identifies an input record in the output, and whether input order is kept.
    output_ids: Callable[[list[dict[str, Any]]], list[str]] = lambda recs: [r["id"] for r in recs]
    ordered: bool = True
    big_records: int = 20000  # enough output that `| head -n1` closes the pipe early
    marks: list[Any] = field(default_factory=list)
    # What identifies the i-th input record (its id, or what the command derives the id from).
    input_id: Callable[[dict[str, Any]], str] = lambda rec: rec["id"]
    # Whether each input record ends kept, dropped or skipped (read = kept + dropped + skipped);
    # sample writes several records per prompt.
    one_outcome_per_record: bool = True
    name: str = ""  # the test id, when one command has several cases (default: the command)

    def __str__(self) -> str:
        return self.name or self.command


STREAMING_COMMANDS: list[StreamCase] = [
    StreamCase("eval", evaluable_record, big_records=3000),
    StreamCase("filter", response_record),
    StreamCase("import", released_row, input_id=lambda rec: rec["uuid"]),
    StreamCase("mix", response_record, ordered=False),
    StreamCase("pack", response_record, ["--cutoff-len", "256"], lambda recs: [i for r in recs for i in r["ids"]], ordered=False, big_records=3000, marks=[pytest.mark.slow]),
    StreamCase("sample", lambda i: {"id": f"p{i}", "prompt": f"Say {i}."}, ["--max-tokens", "1"],
               lambda recs: [r["prompt_id"] for r in recs], big_records=600, marks=[pytest.mark.slow],
               one_outcome_per_record=False),
    StreamCase("score", scored_record),  # pre-scored: the stream contract without a model
    # on-policy scores held already: the teacher's record loop without a model
    StreamCase("score", teacher_scored_record, ["--role", "teacher"], name="score-teacher"),
]

CASES = [pytest.param(case, id=str(case), marks=case.marks) for case in STREAMING_COMMANDS]


def wait_for_signal_handlers(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until dasd has installed its SIGINT/SIGTERM handlers (SigCgt in /proc), so a
    signal sent next tests dasd's handling, not the interpreter's start-up on a slow machine."""
    bit = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
        if caught & bit:
            return
        time.sleep(0.05)
    raise AssertionError("dasd did not install its signal handlers in time")


def wait_for_input_read(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until dasd has read everything written to its stdin so far (FIONREAD on the
    pipe: nothing left unread), so its command is past start-up and in its record loop."""
    assert proc.stdin is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        unread = struct.unpack("i", fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if unread == 0:
            return
        time.sleep(0.05)
    raise AssertionError("dasd did not read its input in time")


def signal_midrun(args: list[str], records: list[dict[str, Any]],
                  sig: signal.Signals) -> tuple[int, bytes, str]:
    """Start dasd on ``records`` with stdin left open, signal it once it has read them
    and had 2 s for them, and return (exit status, stdout, stderr)."""
    proc = subprocess.Popen(dasd_bin() + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(to_jsonl(records))
    proc.stdin.flush()
    wait_for_signal_handlers(proc)
    wait_for_input_read(proc)
    time.sleep(2.0)  # mid-run, or done with the input and waiting for more: same exit either way
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err.decode()


def ids_of(case: StreamCase, records: list[dict[str, Any]]) -> list[str]:
    ids = case.output_ids(records)
    return ids if case.ordered else sorted(ids)


def expected(case: StreamCase, indices: range | list[int]) -> list[str]:
    ids = [case.input_id(case.make_record(i)) for i in indices]
    return ids if case.ordered else sorted(ids)


@pytest.mark.parametrize("case", CASES)
def test_empty_input(cli, case: StreamCase) -> None:
    code, out, err = cli([case.command, *case.args, "-"], stdin=b"")
    assert code == 0, err
    assert parse_records(out) == []
    assert f"dasd {case.command}: read 0" in err


@pytest.mark.parametrize("case", CASES)
def test_dash_reads_stdin(cli, case: StreamCase) -> None:
    records = [case.make_record(i) for i in range(5)]
    code, out, err = cli([case.command, *case.args, "-"], stdin=to_jsonl(records))
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, range(5))


@pytest.mark.parametrize("kind", ["plain", "zstd", "gzip"])
@pytest.mark.parametrize("case", CASES)
def test_compressed_inputs_sniffed(cli, tmp_path: Path, case: StreamCase, kind: str) -> None:
    path = write_file(tmp_path / "in.data", [case.make_record(i) for i in range(4)], kind)
    code, out, err = cli([case.command, *case.args, str(path)])
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, range(4))
    # the same bytes on stdin are sniffed too
    code, out, err = cli([case.command, *case.args], stdin=path.read_bytes())
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, range(4))


@pytest.mark.parametrize("case", CASES)
def test_concatenated_zstd_frames(cli, case: StreamCase) -> None:
    a = zstd_bytes(to_jsonl([case.make_record(i) for i in range(3)]))
    b = zstd_bytes(to_jsonl([case.make_record(i) for i in range(3, 7)]))
    code, out, err = cli([case.command, *case.args], stdin=a + b)  # `cat a.zst b.zst |`
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, range(7))


@pytest.mark.parametrize("case", CASES)
def test_truncated_zstd_is_an_error(cli, tmp_path: Path, case: StreamCase) -> None:
    data = zstd_bytes(to_jsonl([case.make_record(i) for i in range(50)]))
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    code, _out, err = cli([case.command, *case.args, str(path)])
    assert code == 1
    assert "truncated zstd" in err and str(path) in err


@pytest.mark.parametrize("case", CASES)
def test_several_files_in_order(cli, tmp_path: Path, case: StreamCase) -> None:
    first = write_file(tmp_path / "a.jsonl.zst", [case.make_record(i) for i in range(2)], "zstd")
    second = write_file(tmp_path / "b.jsonl", [case.make_record(i) for i in range(2, 5)])
    third = write_file(tmp_path / "c.jsonl.gz", [case.make_record(i) for i in range(5, 6)], "gzip")
    code, out, err = cli([case.command, *case.args, str(first), str(second), str(third)])
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, range(6))


@pytest.mark.parametrize("case", CASES)
def test_malformed_json_names_file_and_line(cli, tmp_path: Path, case: StreamCase) -> None:
    good = to_jsonl([case.make_record(i) for i in range(3)]).splitlines(keepends=True)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good[0] + good[1] + b'{"id": "broken", \n' + good[2])
    code, out, err = cli([case.command, *case.args, str(path)])
    assert code == 1
    assert f"({path}:3)" in err and "malformed JSON" in err
    assert "Traceback" not in err
    # --on-error skip: counted, skipped, and routed to --rejects
    rejects = tmp_path / "rejects.jsonl"
    code, out, err = cli([case.command, *case.args, "--on-error", "skip", "--rejects", str(rejects), str(path)])
    assert code == 0, err
    assert ids_of(case, parse_records(out)) == expected(case, [0, 1, 2])
    assert "skipped 1 (malformed_json 1)" in err
    rejected = parse_records(rejects.read_bytes())
    assert [r["rejected"]["reason"] for r in rejected] == ["malformed_json"]


@pytest.mark.parametrize("case", CASES)
def test_output_file_is_atomic(tmp_path: Path, case: StreamCase) -> None:
    """-o killed mid-write leaves no file under the final name."""
    final = tmp_path / "out.jsonl.zst"
    proc = subprocess.Popen(dasd_bin() + [case.command, *case.args, "-o", str(final), "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(to_jsonl([case.make_record(i) for i in range(200)]))
    proc.stdin.flush()
    time.sleep(1.5)  # the command is now mid-stream, waiting for more input
    proc.kill()
    proc.wait(timeout=30)
    assert not final.exists()
    # SIGKILL leaves its temp file, and its lock file, which the next writer takes over and removes
    leftovers = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    # and a finished run does produce it, leaving no temp file of its own
    done = run_dasd([case.command, *case.args, "-o", str(final), "-"],
                    stdin=to_jsonl([case.make_record(i) for i in range(3)]))
    assert done.returncode == 0, done.stderr
    assert ids_of(case, parse_records(final.read_bytes())) == expected(case, range(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(leftovers + [final.name])


@pytest.mark.parametrize("case", CASES)
def test_head_closes_pipe_quietly(tmp_path: Path, case: StreamCase) -> None:
    """`dasd CMD big.zst | head -n1` exits 0 with nothing on stderr."""
    big = write_file(tmp_path / "big.jsonl.zst", [case.make_record(i) for i in range(case.big_records)], "zstd")
    script = (f"{' '.join(dasd_bin())} {case.command} {' '.join(case.args)} --compress none {big} "
              f"| head -n1; echo \"status=${{PIPESTATUS[0]}}\" >&2")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=300)
    assert proc.stderr.decode().strip() == "status=0"
    assert len(proc.stdout.splitlines()) == 1


@pytest.mark.parametrize("case", CASES)
def test_sigint_exits_130_with_valid_output(tmp_path: Path, case: StreamCase) -> None:
    """Ctrl-C: exit 130, and what reached stdout is complete JSONL (zstd frame closed).
    The records read but not yet decided (read ahead, or held for a final pass) do not
    count as read: read = kept + dropped + skipped in --stats as in every summary."""
    stats = tmp_path / "stats.json"
    code, out, err = signal_midrun([case.command, *case.args, "--stats", str(stats), "-"],
                                   [case.make_record(i) for i in range(50)], signal.SIGINT)
    assert code == 130, err
    records = parse_records(out)
    assert "Traceback" not in err
    if case.ordered:
        got = ids_of(case, records)
        assert got == expected(case, range(len(got)))
    counts = orjson.loads(stats.read_bytes())
    assert counts["interrupted"] is True
    if case.one_outcome_per_record:
        assert counts["read"] == counts["kept"] + counts["dropped"] + counts["skipped"], counts


def test_sigint_eval_with_worker_threads_counts_only_decided_records(tmp_path: Path) -> None:
    """`eval --workers 2` stopped by Ctrl-C while records wait in the threads' window: exit
    130, the records written so far are whole and in input order, and the summary counts as
    read only the records it wrote (every input record is kept), none of those read ahead."""
    stats = tmp_path / "stats.json"
    records = [evaluable_record(i) for i in range(50)]
    proc = subprocess.Popen(dasd_bin() + ["eval", "--workers", "2", "--report", "none", "--compress",
                                          "none", "--stats", str(stats), "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(to_jsonl(records))
    proc.stdin.flush()  # and left open: the input goes on, as far as eval knows
    wait_for_signal_handlers(proc)
    # The first record written reaches the pipe at once (the writer flushes a record that
    # comes over half a second after the last flush). With the verifiers warm, the other
    # records follow within the next second, up to the ones waiting in the threads' window.
    first = proc.stdout.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, err_bytes = proc.communicate(timeout=60)
    code, out, err = proc.returncode, first + rest, err_bytes.decode()
    assert code == 130, err
    assert "Traceback" not in err
    written = parse_records(out)
    assert written, err  # some records were decided and written before the interrupt
    assert [r["id"] for r in written] == [r["id"] for r in records[:len(written)]]
    assert all(r["eval"]["correct"] for r in written)
    counts = orjson.loads(stats.read_bytes())
    assert counts["interrupted"] is True
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["skipped"], counts
    assert counts["kept"] == len(written) and counts["verified"] == len(written)
    summary = next(line for line in err.splitlines() if line.startswith("dasd eval: read"))
    assert summary.startswith(f"dasd eval: read {len(written)}, kept {len(written)}, dropped 0"), summary


def test_sigterm_exits_143_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """A scheduler's stop (SIGTERM) ends a run like Ctrl-C: exit 128+15, the -o temp file
    removed, the final name never half-written; stdout output stays valid JSONL."""
    records = [response_record(i) for i in range(50)]
    code, _out, err = signal_midrun(["filter", "-o", str(tmp_path / "out.jsonl.zst"), "-"],
                                    records, signal.SIGTERM)
    assert code == 143, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    code, stdout, err = signal_midrun(["filter", "-"], records, signal.SIGTERM)
    assert code == 143, err
    got = [r["id"] for r in parse_records(stdout)]  # all 50, or fewer on a slow start
    assert got == [r["id"] for r in records[:len(got)]]


def test_interrupt_that_a_library_rewraps_still_exits_130(tmp_path: Path) -> None:
    """A Ctrl-C landing inside a lazy import comes back as another exception
    (transformers raises ModuleNotFoundError); the command still exits 130, not 1."""
    import typer

    from dasd_cli import interrupts
    from dasd_cli.commands.common import Common, run_command

    def body(session: Any) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler run_command installed raises here
            time.sleep(1.0)
        except KeyboardInterrupt:
            raise ModuleNotFoundError("Could not import module 'AutoModelForCausalLM'") from None

    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(typer.Exit) as exit_info:
            run_command("filter", Common(output=str(tmp_path / "out.jsonl"), quiet=True), body)
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts._interrupt_signal = None
    assert exit_info.value.exit_code == 130
    assert not (tmp_path / "out.jsonl").exists()  # -o is atomic: nothing half-written


def test_gzip_output_and_plain_output(tmp_path: Path) -> None:
    records = [response_record(i) for i in range(3)]
    for name, magic in (("o.jsonl.gz", b"\x1f\x8b"), ("o.jsonl", b"{"), ("o.jsonl.zst", b"\x28\xb5\x2f\xfd")):
        proc = run_dasd(["filter", "-o", str(tmp_path / name), "-"], stdin=to_jsonl(records))
        assert proc.returncode == 0
        data = (tmp_path / name).read_bytes()
        assert data.startswith(magic)
        assert len(parse_records(data)) == 3
    proc = run_dasd(["filter", "--compress", "gzip", "-"], stdin=to_jsonl(records))
    assert proc.stdout.startswith(b"\x1f\x8b") and len(parse_records(proc.stdout)) == 3
    assert decode(proc.stdout).count(b"\n") == 3


def test_bad_flag_is_usage_error(cli) -> None:
    code, _out, _err = cli(["filter", "--compress", "lz4", "-"], stdin=b"")
    assert code == 2
    code, _out, _err = cli(["filter", "--no-such-flag"], stdin=b"")
    assert code == 2


def test_stats_json_balances(cli, tmp_path: Path) -> None:
    import orjson

    records = [response_record(i) for i in range(4)] + [{**response_record(9), "finish_reason": "length"}]
    stats = tmp_path / "s.json"
    code, _out, err = cli(["filter", "--stats", str(stats), "-"], stdin=to_jsonl(records))
    assert code == 0, err
    data = orjson.loads(stats.read_bytes())
    assert data["read"] == 5 and data["kept"] == 4 and data["dropped_by_reason"] == {"truncated": 1}
    assert data["read"] == data["kept"] + data["dropped"] + data["skipped"]
    assert "dasd filter: read 5, kept 4, dropped 1 (truncated 1)" in err


def test_terminal_stdin_is_usage_error() -> None:
    """No FILE and stdin a terminal: a usage error, never a silent hang."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(dasd_bin() + ["filter"], stdin=follower, capture_output=True, timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 2
    assert b"stdin is a terminal" in proc.stderr


def test_shard_splits_records_between_machines(tmp_path: Path) -> None:
    """--shard K/N (sample, score): every record lands in exactly one shard."""
    from dasd_cli.commands import common

    records = [response_record(i) for i in range(7)]
    inputs = [str(write_file(tmp_path / "in.jsonl", records))]
    seen = []
    for k in range(3):
        session = common.Session("t", common.Common(inputs=inputs), writes_records=False)
        got = [line.record["id"] for line in session.records(shard=(k, 3))]
        assert session.tally.read == len(got)
        assert session.tally.extra.get("other_shards", 0) == 7 - len(got)
        seen += got
    assert sorted(seen) == sorted(r["id"] for r in records)
    assert common.parse_shard("2/3") == (2, 3)
    for bad, message in (("3/3", "--shard 3/3: need 0 <= K < N"), ("x", "--shard must look like K/N"),
                         ("1/0", "--shard 1/0: need 0 <= K < N")):
        with pytest.raises(UsageError, match=re.escape(message)):
            common.parse_shard(bad)


def test_stdout_carries_records_only_whatever_libraries_print() -> None:
    """Library prints and C-level writes to fd 1 land on stderr once stdout is claimed."""
    import sys

    code = ("from dasd_cli import io; io.claim_stdout(); print('python noise'); import os; "
            "os.write(1, b'c noise\\n'); w = io.RecordWriter(None, 'none'); w.write({'a': 1}); "
            "w.close(True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b'{"a":1}\n'
    assert b"python noise" in proc.stderr and b"c noise" in proc.stderr


def test_output_to_a_fifo_or_device_is_written_in_place(tmp_path):
    """`-o /dev/null` (or a FIFO) is written, never replaced by a renamed temp file."""
    import stat
    import threading

    data = write_file(tmp_path / "in.jsonl", [{"id": f"r{i}", "response": f"x{i}"} for i in range(5)])
    fifos = {name: tmp_path / name for name in ("out.fifo", "stats.fifo")}
    received: dict[str, bytes] = {}
    readers = []
    for name, path in fifos.items():
        os.mkfifo(path)
        reader = threading.Thread(target=lambda n=name, p=path: received.__setitem__(n, p.read_bytes()),
                                  daemon=True)
        reader.start()
        readers.append(reader)
    result = run_dasd(["mix", "--keep-order", "--compress", "none", "-o", str(fifos["out.fifo"]),
                       "--stats", str(fifos["stats.fifo"]), str(data)])
    for reader in readers:
        reader.join(timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert [r["id"] for r in parse_records(received["out.fifo"])] == [f"r{i}" for i in range(5)]
    assert orjson.loads(received["stats.fifo"])["kept"] == 5
    assert all(stat.S_ISFIFO(os.stat(p).st_mode) for p in fifos.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.fifo", "stats.fifo"]


# --------------------------------------------------------------------------- one writer per output


def wait_for_temp_file(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until the -o writer of ``proc`` has made its temp file (it holds the lock by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.endswith(".tmp") for p in folder.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError("the first writer did not open its output in time")


def test_a_second_writer_of_the_same_output_fails_fast(tmp_path: Path) -> None:
    """Two processes writing one -o: the second stops at once with one line naming the
    path; once the first has finished, a new writer works and no lock file stays."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    final = out_dir / "out.jsonl"
    data = write_file(tmp_path / "in.jsonl", [response_record(i) for i in range(3)])
    first = subprocess.Popen(dasd_bin() + ["filter", "-o", str(final), "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.stdin is not None
        first.stdin.write(to_jsonl([response_record(i) for i in range(5)]))
        first.stdin.flush()  # stdin stays open: the first writer waits for more
        wait_for_temp_file(out_dir, first)
        for command in (["filter"], ["mix", "--keep-order"]):
            started = time.monotonic()
            second = run_dasd([*command, "-o", str(final), str(data)], timeout=60)
            assert second.returncode == 1, second.stderr
            message = second.stderr.decode().strip()
            assert message == (f"dasd {command[0]}: error: another dasd process is writing {final}; "
                               "wait for it to finish or write to another path")
            assert time.monotonic() - started < 30  # refused, not queued behind the first
        assert first.poll() is None and not final.exists()
        first.stdin.close()
        assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""  # type: ignore[union-attr]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert [r["id"] for r in parse_records(final.read_bytes())] == [f"p{i}@0.6#0" for i in range(5)]
    again = run_dasd(["filter", "-o", str(final), str(data)], timeout=60)
    assert again.returncode == 0, again.stderr
    assert [r["id"] for r in parse_records(final.read_bytes())] == [f"p{i}@0.6#0" for i in range(3)]
    assert [p.name for p in out_dir.iterdir()] == ["out.jsonl"]


def test_output_lock_is_exclusive_and_leaves_no_file(cli, tmp_path: Path) -> None:
    from dasd_cli.errors import DasdError
    from dasd_cli.io.write import OutputLock

    path = str(tmp_path / "out.jsonl")
    held = OutputLock(path)
    with pytest.raises(DasdError, match="given twice as an output of this command"):
        OutputLock(path)
    script = f"from dasd_cli.io.write import OutputLock; OutputLock({path!r})"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert other.returncode == 1 and b"another dasd process is writing" in other.stderr
    held.release()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".out.jsonl.lock").write_bytes(b"")  # what a SIGKILLed holder leaves
    taken = OutputLock(path)
    taken.release()
    assert list(tmp_path.iterdir()) == []
    code, _out, err = cli(["filter", "-o", path, "--rejects", path, "-"], stdin=to_jsonl([response_record(0)]))
    assert code == 2 and "given twice as an output" in err
    assert list(tmp_path.iterdir()) == []
