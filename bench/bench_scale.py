"""Memory scaling of `dasd mix`, `dasd pack` and `dasd train`: this tree against a baseline.

What it measures. Each command runs on synthetic `dasd score` output (bench/scale_data.py:
long ``<think>`` responses with per-token teacher log-probs and offsets, four candidates
per prompt) at two input sizes, 5M and 20M tokens (``--quick``: 0.5M and 2M), once with
the code of this working tree ("new") and once with a baseline commit ("old", the
in-memory data plane; ``$DASD_BENCH_BASELINE`` picks another ref). Input tokens are
``sum(len(sampler.logprobs))``; for `dasd train` they are the packed tokens it reads.

- ``mix-all``: ``dasd mix --seed 1`` (keep everything, shuffled);
- ``mix-das``: ``dasd mix --select das --per-prompt 1``;
- ``filter``: ``dasd filter`` with its default checks (a streaming command: its memory
  should not grow at all);
- ``pack``: ``dasd pack --cutoff-len 32768`` (embedded default tokenizer), also tokens/s;
- ``train``: ``dasd train ... --stop-after 1`` with a tiny random Llama (embedded
  tokenizer, 2 layers of width 64) on synthetic packed records of the same number of
  tokens, 2,048 tokens each (scale_data.write_packed), so that the one step costs the same
  at both sizes and the memory difference is the data's: load, convert, one step. Run a
  second time on the same data into a fresh OUT (``train-restart``): the new code keeps
  a converted token store under ``$DASD_CACHE/tokens``, keyed by content, so its second
  start skips the conversion; the old code has no cache and does the same work twice.
  ``$DASD_CACHE`` is a temp folder (its ``models`` links to the real cache, so the
  embedded model is not converted again), so the first run is a real conversion.

Rows, per command: peak RSS at each size (MiB), the RSS slope between the sizes
(bytes per input token; goal <= 1, i.e. memory that does not grow with the data) and the
peak RSS extrapolated to 5.8e9 tokens (GiB) = RSS(small) + slope * (5.8e9 - tokens(small));
pack tokens/s; train seconds of the first and the second start, with and without the
step. Outputs are checked too:
mix outputs must be equal byte for byte after decompression, pack outputs equal record by
record after dropping the top-level ``tokenizer`` field the new pack adds. A command that
fails leaves its stderr tail in the note of its rows instead of stopping the bench.

Why the launcher. Peak RSS is read by GNU time (``/usr/bin/time -f %M``) wrapped around
each command, not from this process's ``wait4``/``ru_maxrss``: Linux carries the RSS a
child had at fork (a copy of this, possibly large, Python process) into its ``maxrss``,
so the parent's own numbers would count the bench and not the command. GNU time is a
small C program, so what it reports is the command's own peak. %M is the peak of the
largest single process, though, and the new pack tokenizes in worker processes; so each
command's process tree is also sampled for its summed PSS (TreeSampler), given in the
notes as "tree PSS" with the slope and extrapolation it implies.

Old and new alternate (old first at the small size, new first at the large one) because
this class of machine has slow phases; the ratios (new / old) are the result. Same
interpreter for both sides (``sys.executable``), ``PYTHONPATH`` pointing at
``<baseline worktree>/src`` or at this tree's ``src``. The baseline is a
``git worktree add --detach`` in a temp folder, removed at the end with the data.

Environment overrides:
  DASD_BENCH_BASELINE=<ref>    the "old" side (default 8065234, the in-memory data plane)
  DASD_BENCH_NEW_SRC=<path>    the "new" side's src folder (default: this tree's src), e.g.
                               a baseline checkout to test the harness with old == new

Run time: about 2 minutes with --quick on a 2-core machine, about 4 minutes at full size.
The train rows also give the wall time without the step (its seconds come from its
metrics record) and, for the new code, the seconds it spent hashing, converting or opening
the data (`data seconds` of its summary line).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import zip_longest
from pathlib import Path

import orjson

from scale_data import read_lines, write_packed, write_scored

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE_REF = "8065234"  # the in-memory data plane
FULL_SIZES = (5_000_000, 20_000_000)  # input tokens, small and large
QUICK_SIZES = (500_000, 2_000_000)  # input tokens with --quick
EXTRAPOLATE_TO = 5.8e9  # tokens: a full-size DASD training set
CUTOFF_LEN = 32768  # tokens per packed sequence
TRAIN_SEQ_LEN = 2048  # tokens per synthetic packed sequence of the train runs
WARMUP_TOKENS = 20_000  # tokens of the warm-up input (imports, bytecode, page cache)
GNU_TIME = "/usr/bin/time"  # %M: peak RSS in KiB of the command it runs
COMMAND_TIMEOUT = 3600  # seconds before a command is killed and reported as failed
SAMPLE_INTERVAL = 0.2  # seconds between samples of a command's process tree
TAIL_CHARS = 500  # characters of a failing command's stderr kept in a row's note
MIB = 1 << 20  # bytes
GIB = 1 << 30  # bytes
SIDES = ("old", "new")
STEPS = ("mix-all", "mix-das", "filter", "pack", "train")  # the commands whose memory is reported

MAKE_MODEL = """
import sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from dasd_cli.model.load import load_tokenizer

folder = sys.argv[1]
tok = load_tokenizer(None)
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=32768)
LlamaForCausalLM(config).save_pretrained(folder)
tok.save_pretrained(folder)
"""


class Run:
    """One command: peak RSS of its process (MiB) and wall seconds, or why it failed.

    (Plain classes, not dataclasses: bench/run.py loads this file without registering it
    in sys.modules, which dataclasses need to resolve postponed annotations.)
    """

    def __init__(self, rss_mib: float | None = None, seconds: float | None = None,
                 error: str | None = None):
        self.rss_mib = rss_mib
        self.seconds = seconds
        self.error = error
        self.remark: str | None = None  # context for the rows' note that is not a failure
        self.tree_mib: float | None = None  # peak summed PSS of the process tree, sampled
        self.processes = 0  # most processes seen at once in the tree (GNU time excluded)
        self.step_seconds: float | None = None  # `dasd train`: its first step's seconds
        self.data_seconds: float | None = None  # new `dasd train`: seconds to open/convert data

    @property
    def ok(self) -> bool:
        return self.error is None and self.rss_mib is not None


class Side:
    """A version of dasd: the src folder put on PYTHONPATH."""

    def __init__(self, name: str, src: Path):
        self.name = name  # "old" or "new"
        self.src = src


class TreeSampler(threading.Thread):
    """Polls the summed PSS of a process and all its descendants; keeps the peak.

    GNU time's %M is the largest RSS of any one process, so a command that spreads its
    work over worker processes would look smaller than it is; the tree's PSS sum (shared
    pages divided among their users) is what the command holds in all. Sampled every
    SAMPLE_INTERVAL, so a peak shorter than that can be missed.
    """

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak_mib: float | None = None
        self.processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            pss_kib, count = tree_pss_kib(self.root)
            if count:
                self.peak_mib = max(self.peak_mib or 0.0, pss_kib / 1024.0)
                self.processes = max(self.processes, count - 1)  # minus GNU time itself
            if self._stop_event.wait(SAMPLE_INTERVAL):
                return

    def finish(self) -> None:
        self._stop_event.set()
        self.join()


def tree_pss_kib(root: int) -> tuple[int, int]:
    """Summed PSS (KiB) of ``root`` and its descendants, and how many processes that is."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: ppid
    total = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        count += 1
                        break
        except OSError:  # gone meanwhile
            continue
    return total, count


def first_step_seconds(stdout: Path) -> float | None:
    """Seconds of `dasd train`'s first step: tokens / tokens_per_s of its first record."""
    try:
        with open(stdout, "rb") as fh:
            first = fh.readline()
        metrics = orjson.loads(first)
        return metrics["tokens"] / metrics["tokens_per_s"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def tail(text: str, chars: int = TAIL_CHARS) -> str:
    text = " ".join(text.split())  # one line, for the table
    return text if len(text) <= chars else "..." + text[-chars:]


class Bench:
    """Runs commands of both sides in one temp folder and keeps what they measured."""

    def __init__(self, tmp: Path, sides: dict[str, Side]):
        self.tmp = tmp
        self.sides = sides
        self.cache = tmp / "cache"  # $DASD_CACHE of every command
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.runs: dict[tuple[str, int, str], Run] = {}  # (step, size index, side) -> Run

    def env(self, side: Side) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(side.src), "DASD_CACHE": str(self.cache)}
        env.pop("PYTHONSTARTUP", None)
        return env

    def python(self, side: Side, args: list[str]) -> subprocess.CompletedProcess:
        """A plain (unmeasured) interpreter run on one side's code."""
        return subprocess.run([sys.executable, *args], env=self.env(side), capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT)

    def dasd(self, side: Side, args: list[str]) -> Run:
        """``python -m dasd_cli.cli ARGS`` under GNU time: its own peak RSS and wall time.

        Also samples the summed PSS of the whole process tree (workers included), and for
        `dasd train` reads the step's seconds from its first metrics record on stdout.
        """
        stem = self.logs / f"{side.name}-{args[0]}-{uuid.uuid4().hex[:8]}"
        rss_file, out_file, err_file = (stem.with_suffix(s) for s in (".rss", ".out", ".err"))
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_file), sys.executable, "-m", "dasd_cli.cli", *args]
        with open(out_file, "wb") as out, open(err_file, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env(side),
                                    start_new_session=True)  # its own group: killable as one
            sampler = TreeSampler(proc.pid)
            sampler.start()
            try:
                code = proc.wait(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
            finally:
                seconds = time.perf_counter() - start
                sampler.finish()
        stderr = err_file.read_text(errors="replace")
        try:  # GNU time writes "Command exited with non-zero status N" before %M on failure
            rss_mib = int(rss_file.read_text().split()[-1]) / 1024.0
        except (OSError, ValueError, IndexError):
            rss_mib = None
        run = Run(rss_mib, seconds, None)
        run.tree_mib, run.processes = sampler.peak_mib, sampler.processes
        run.step_seconds = first_step_seconds(out_file)
        found = re.search(r"data seconds ([0-9.]+)", stderr)  # new `dasd train`: open/convert
        run.data_seconds = float(found.group(1)) if found else None
        if code != 0:
            why = f"timed out after {COMMAND_TIMEOUT} s" if code is None else f"exit {code}"
            run.error = f"{side.name} `dasd {args[0]}` {why}: {tail(stderr)}"
        return run

    def alternate(self, step: str, index: int, order: tuple[str, str], args_of) -> None:
        """Run one measurement on both sides in ``order``; ``args_of(side)`` gives argv."""
        for name in order:
            side = self.sides[name]
            args = args_of(side)
            if args is None:
                self.runs[(step, index, name)] = Run(
                    error=f"{name} `{step}` not run: its input is missing (an earlier step failed)")
                continue
            self.runs[(step, index, name)] = run = self.dasd(side, args)
            state = f"{run.rss_mib or 0:.0f} MiB, {run.seconds:.1f} s" if run.ok else run.error
            print(f"   {step} {name}: {state}", file=sys.stderr)


# --- setup: baseline worktree, cache, tiny model ----------------------------------------


def add_worktree(ref: str, path: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
                   check=True, capture_output=True, text=True)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                   capture_output=True, text=True)


def real_cache_dir() -> Path:
    """dasd's cache as the user has it (models.cache_dir, read without importing dasd)."""
    if os.environ.get("DASD_CACHE"):
        return Path(os.environ["DASD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dasd"


def link_models(cache: Path) -> None:
    """A fresh cache whose converted models are the real cache's (converted once, ever)."""
    models = real_cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(models, target_is_directory=True)


def check_import(bench: Bench, side: Side) -> str | None:
    """None when ``import dasd_cli`` on this side loads its own src, else why not."""
    try:
        proc = bench.python(side, ["-c", "import dasd_cli; print(dasd_cli.__file__)"])
    except subprocess.TimeoutExpired:
        return f"{side.name}: import dasd_cli timed out"
    if proc.returncode != 0:
        return f"{side.name}: import dasd_cli failed: {tail(proc.stderr)}"
    loaded = Path(proc.stdout.strip()).resolve()
    if side.src.resolve() not in loaded.parents:
        return f"{side.name}: dasd_cli loads from {loaded}, not from {side.src}"
    return None


def make_model(bench: Bench, side: Side, folder: Path) -> str | None:
    """The tiny random Llama of the train runs; None on success, else the error."""
    try:
        proc = bench.python(side, ["-c", MAKE_MODEL, str(folder)])
    except subprocess.TimeoutExpired:
        return "making the tiny model timed out"
    return None if proc.returncode == 0 else f"making the tiny model failed: {tail(proc.stderr)}"


FINGERPRINT = """
import sys
from dasd_cli.model.load import load_tokenizer
from dasd_cli.core.chat import tokenizer_fingerprint
print(tokenizer_fingerprint(load_tokenizer(sys.argv[1])))
"""


def model_fingerprint(bench: Bench, model: Path) -> tuple[str | None, int]:
    """The tokenizer fingerprint (new code) and vocabulary size of the tiny model."""
    proc = bench.python(bench.sides["new"], ["-c", FINGERPRINT, str(model)])
    config = orjson.loads((model / "config.json").read_bytes())
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None, int(config["vocab_size"])


def train_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "1",
            "--global-batch-size", "1", "--stop-after", "1", "--dtype", "fp32", "--compress", "none"]
    # no --quiet: the summary line on stderr carries the new code's `data seconds`


# --- output checks ----------------------------------------------------------------------


def decompressed_digest(path: Path) -> tuple[str, int]:
    """sha256 and length of a file's content after zstd decompression (if zstd)."""
    import zstandard

    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as raw:
        zstd = raw.read(4) == b"\x28\xb5\x2f\xfd"
        raw.seek(0)
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if zstd else raw
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def same_mix(old: Path, new: Path) -> tuple[bool, str]:
    a, b = decompressed_digest(old), decompressed_digest(new)
    return a == b, f"{a[1]} vs {b[1]} bytes decompressed"


def packed_tokens(path: Path) -> int:
    return sum(len(orjson.loads(line)["input_ids"]) for line in read_lines(path))


def same_pack(old: Path, new: Path) -> tuple[bool, str]:
    """Packed records equal once the new top-level 'tokenizer' field is dropped."""
    count = 0
    for count, (a, b) in enumerate(zip_longest(read_lines(old), read_lines(new)), start=1):
        if a is None or b is None:
            return False, f"{'old' if a is None else 'new'} output ends at record {count}"
        ra, rb = orjson.loads(a), orjson.loads(b)
        ra.pop("tokenizer", None)
        rb.pop("tokenizer", None)
        if ra != rb:
            keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
            return False, f"record {count} differs in {keys}"
    return True, f"{count} packed records"


# --- rows -------------------------------------------------------------------------------


def millions(tokens: float) -> str:
    return f"{tokens / 1e6:.3g}M"


def ratio(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None or old == 0 else new / old


def notes(*parts: str | None) -> str:
    """The non-empty parts, each once, in order, as one note."""
    return "; ".join(dict.fromkeys(p for p in parts if p))


def errors(*runs: Run | None) -> str:
    """The failures and remarks of some runs, for a row's note."""
    return notes(*(part for r in runs if r is not None for part in (r.error, r.remark)))


def tree_note(old: Run, new: Run) -> str:
    def one(run: Run) -> str:
        return "n/a" if run.tree_mib is None else f"{run.tree_mib:.0f} MiB ({run.processes} proc)"
    return f"tree PSS new {one(new)}, old {one(old)}"


def slope_and_extrapolation(small: float | None, large: float | None,
                            tokens: list[int | None]) -> tuple[float | None, float | None]:
    """Bytes per token between the sizes, and GiB at EXTRAPOLATE_TO tokens (from MiB)."""
    if small is None or large is None or not tokens[0] or not tokens[1] or tokens[0] == tokens[1]:
        return None, None
    slope = (large - small) * MIB / (tokens[1] - tokens[0])
    return slope, (small * MIB + slope * (EXTRAPOLATE_TO - tokens[0])) / GIB


def memory_rows(bench: Bench, step: str, tokens: list[int | None], labels: list[str],
                baseline: str, token_note: str) -> list[dict]:
    """Peak RSS per size, RSS slope per token, and the extrapolation, new against old."""
    rows = []
    for i, label in enumerate(labels):
        old, new = bench.runs[(step, i, "old")], bench.runs[(step, i, "new")]
        rows.append({
            "metric": f"{step}: peak RSS @ {label}", "unit": "MiB",
            "value": new.rss_mib if new.ok else None, "baseline": baseline,
            "baseline_value": old.rss_mib if old.ok else None,
            "ratio": ratio(new.rss_mib if new.ok else None, old.rss_mib if old.ok else None),
            "goal": "",
            "note": notes(f"wall s new {new.seconds or 0:.1f}, old {old.seconds or 0:.1f}",
                          tree_note(old, new), errors(old, new))})
    slopes, extrapolated, tree_slopes = {}, {}, {}
    for name in SIDES:
        small, large = bench.runs[(step, 0, name)], bench.runs[(step, 1, name)]
        both = small.ok and large.ok
        slopes[name], extrapolated[name] = slope_and_extrapolation(
            small.rss_mib if both else None, large.rss_mib if both else None, tokens)
        tree_slopes[name] = slope_and_extrapolation(
            small.tree_mib if both else None, large.tree_mib if both else None, tokens)
    failed = errors(*(bench.runs[(step, i, n)] for i in range(2) for n in SIDES))

    def fmt(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    tree_slope = f"tree PSS slope new {fmt(tree_slopes['new'][0])}, old {fmt(tree_slopes['old'][0])}"
    tree_gib = f"from tree PSS new {fmt(tree_slopes['new'][1])}, old {fmt(tree_slopes['old'][1])} GiB"
    rows.append({"metric": f"{step}: RSS slope per input token", "unit": "bytes/token",
                 "value": slopes["new"], "baseline": baseline, "baseline_value": slopes["old"],
                 "ratio": ratio(slopes["new"], slopes["old"]), "goal": "<= 1 byte/token",
                 "note": notes(f"between {labels[0]} and {labels[1]}, {token_note}", tree_slope,
                               failed)})
    rows.append({"metric": f"{step}: peak RSS extrapolated to {EXTRAPOLATE_TO:.2g} tokens",
                 "unit": "GiB", "value": extrapolated["new"], "baseline": baseline,
                 "baseline_value": extrapolated["old"],
                 "ratio": ratio(extrapolated["new"], extrapolated["old"]), "goal": "",
                 "note": notes(f"RSS({labels[0]}) + slope * ({EXTRAPOLATE_TO:.2g} - tokens)",
                               tree_gib, failed)})
    return rows


def seconds_rows(bench: Bench, step: str, what: str, labels: list[str], baseline: str,
                 goals: list[str], note: str, without_step: bool = False) -> list[dict]:
    """Wall seconds of a train run per size (``without_step``: minus its first step)."""
    def seconds(run: Run) -> float | None:
        if not run.ok:
            return None
        if without_step:
            return None if run.step_seconds is None else run.seconds - run.step_seconds
        return run.seconds

    rows = []
    for i, label in enumerate(labels):
        old, new = bench.runs[(step, i, "old")], bench.runs[(step, i, "new")]
        value, base = seconds(new), seconds(old)
        steps = ", ".join(f"{n} {r.step_seconds:.1f}" for n, r in (("new", new), ("old", old))
                          if r.step_seconds is not None)
        rows.append({"metric": f"{what} @ {label}", "unit": "s", "value": value,
                     "baseline": baseline, "baseline_value": base, "ratio": ratio(value, base),
                     "goal": goals[i], "note": notes(note, steps and f"step s {steps}",
                                                     errors(old, new))})
    return rows


def pack_speed_rows(bench: Bench, tokens: list[int], labels: list[str], baseline: str) -> list[dict]:
    rows = []
    for i, label in enumerate(labels):
        old, new = bench.runs[("pack", i, "old")], bench.runs[("pack", i, "new")]
        value = tokens[i] / new.seconds if new.ok else None
        base = tokens[i] / old.seconds if old.ok else None
        rows.append({"metric": f"pack: tokens/s @ {label}", "unit": "tokens/s", "value": value,
                     "baseline": baseline, "baseline_value": base, "ratio": ratio(value, base),
                     "goal": "ratio >= 2", "note": notes(
                         "input tokens / wall seconds, process start and tokenizer load included",
                         errors(old, new))})
    return rows


def check_row(metric: str, results: list[tuple[bool, str] | None], labels: list[str],
              baseline: str) -> dict:
    """1 when every size's outputs agree, 0 when one differs, empty when one is missing."""
    parts, value = [], 1
    for label, result in zip(labels, results):
        if result is None:
            parts.append(f"{label}: not compared (a side failed)")
            value = None if value == 1 else value
        else:
            parts.append(f"{label}: {'identical' if result[0] else 'DIFFERENT'} ({result[1]})")
            value = 0 if not result[0] else value
    return {"metric": metric, "unit": "1 = yes", "value": value, "baseline": baseline,
            "baseline_value": None, "ratio": None, "goal": "1", "note": "; ".join(parts)}


def error_row(metric: str, note: str) -> dict:
    return {"metric": metric, "unit": "", "value": None, "baseline": "", "baseline_value": None,
            "ratio": None, "goal": "", "note": note}


# --- the benchmark ----------------------------------------------------------------------


def measure(tmp: Path, sides: dict[str, Side], sizes: tuple[int, int], baseline: str) -> list[dict]:
    bench = Bench(tmp, sides)
    rows: list[dict] = []
    for side in sides.values():
        problem = check_import(bench, side)
        if problem:
            return [error_row("setup", problem)]
    link_models(bench.cache)

    # The tiny model, made with the baseline's code (a fixed commit, so it works while
    # the tree is being edited); this also converts the embedded model once if needed.
    model = tmp / "tiny-llama"
    model_error = make_model(bench, sides["old"], model)
    if model_error:
        rows.append(error_row("train: tiny model", model_error))

    # Warm-up, not measured: bytecode, page cache and any model conversion happen here.
    warm = write_scored(tmp / "warm.jsonl.zst", WARMUP_TOKENS, seed=99)
    fingerprint, vocab = model_fingerprint(bench, model) if not model_error else (None, 0)
    warm_packed = tmp / "warm.packed.jsonl.zst"
    if not model_error:
        write_packed(warm_packed, WARMUP_TOKENS, TRAIN_SEQ_LEN, vocab, fingerprint, seed=99)
    for side in sides.values():
        packed = tmp / f"warm-{side.name}.packed.jsonl.zst"
        runs = [bench.dasd(side, ["mix", "--seed", "1", "-o", str(tmp / f"warm-{side.name}.mix.jsonl.zst"),
                                  str(warm.path)]),
                bench.dasd(side, ["filter", "-o", str(tmp / f"warm-{side.name}.filter.jsonl.zst"),
                                  str(warm.path)]),
                bench.dasd(side, ["pack", "--cutoff-len", str(CUTOFF_LEN), "-o", str(packed),
                                  str(warm.path)])]
        if not model_error:
            runs.append(bench.dasd(side, train_args(model, warm_packed, tmp / f"warm-{side.name}-train")))
        if any(not r.ok for r in runs):
            rows.append(error_row(f"warm-up ({side.name})", errors(*runs)))

    labels = [f"{millions(s)} tokens" for s in sizes]
    input_tokens: list[int] = []
    train_tokens: list[int | None] = []
    mix_checks: dict[str, list] = {"mix-all": [], "mix-das": []}
    pack_checks: list = []
    for index, size in enumerate(sizes):
        order = ("old", "new") if index % 2 == 0 else ("new", "old")
        print(f"== scale: {labels[index]} (order {order[0]}, {order[1]})", file=sys.stderr)
        work = tmp / f"size{index}"
        work.mkdir()
        start = time.perf_counter()
        data = write_scored(work / "in.jsonl.zst", size, seed=index)
        made = time.perf_counter() - start
        input_tokens.append(data.tokens)
        rows.append({"metric": f"input @ {labels[index]}", "unit": "tokens", "value": data.tokens,
                     "baseline": "", "baseline_value": None, "ratio": None, "goal": "",
                     "note": f"{data.records} records, {data.prompts} prompts, "
                             f"{data.compressed_bytes / MIB:.0f} MiB zstd, generated in {made:.1f} s"})

        def out(side: Side, step: str, work: Path = work) -> Path:
            return work / f"{step}-{side.name}.jsonl.zst"

        # alternate() calls each argv builder at once; the defaults bind this size's data.
        bench.alternate("mix-all", index, order, lambda s, data=data: [
            "mix", "--seed", "1", "-o", str(out(s, "mix-all")), str(data.path)])
        bench.alternate("mix-das", index, order, lambda s, data=data: [
            "mix", "--select", "das", "--per-prompt", "1", "-o", str(out(s, "mix-das")), str(data.path)])
        bench.alternate("filter", index, order, lambda s, data=data: [
            "filter", "-o", str(out(s, "filter")), str(data.path)])
        bench.alternate("pack", index, order, lambda s, data=data: [
            "pack", "--cutoff-len", str(CUTOFF_LEN), "-o", str(out(s, "pack")), str(data.path)])

        for step in ("mix-all", "mix-das"):
            both = all(bench.runs[(step, index, n)].ok for n in SIDES)
            mix_checks[step].append(same_mix(out(sides["old"], step), out(sides["new"], step))
                                    if both else None)
        packed_ok = {n: bench.runs[("pack", index, n)].ok for n in SIDES}
        pack_checks.append(same_pack(out(sides["old"], "pack"), out(sides["new"], "pack"))
                           if all(packed_ok.values()) else None)

        packed_data = work / "train.packed.jsonl.zst"
        if not model_error:
            train_tokens.append(write_packed(packed_data, size, TRAIN_SEQ_LEN, vocab, fingerprint,
                                             seed=index))
        for step in ("train", "train-restart"):
            def args(side: Side, step: str = step, data: Path = packed_data, work: Path = work) -> list[str] | None:
                if model_error:
                    return None
                return train_args(model, data, work / f"{step}-{side.name}-out")
            bench.alternate(step, index, order, args)
        for path in work.glob("train*-out"):  # checkpoints: not needed any more
            shutil.rmtree(path, ignore_errors=True)

    for step in STEPS:
        if step == "train":
            rows += memory_rows(bench, step, train_tokens, labels, baseline,
                                f"per packed token read by train (RSS of the first start; "
                                f"synthetic sequences of {TRAIN_SEQ_LEN} tokens)")
        else:
            rows += memory_rows(bench, step, input_tokens, labels, baseline,
                                "per input token (sum of len(sampler.logprobs))")
        if step == "pack":
            rows += pack_speed_rows(bench, input_tokens, labels, baseline)
        if step == "train":
            rows += seconds_rows(bench, "train", "train: first start (load, convert, 1 step)",
                                 labels, baseline, ["", ""], "wall seconds, fresh $DASD_CACHE/tokens")
            rows += seconds_rows(bench, "train-restart", "train: second start (converted store, 1 step)",
                                 labels, baseline, ["", "< 5 s for 20M tokens"],
                                 "wall seconds, same data, fresh --out")
            for i, label in enumerate(labels):
                for step_name, what in (("train", "convert"), ("train-restart", "open the converted store")):
                    run = bench.runs[(step_name, i, "new")]
                    rows.append({"metric": f"train: seconds to {what} (new) @ {label}", "unit": "s",
                                 "value": run.data_seconds, "baseline": "", "baseline_value": None,
                                 "ratio": None,
                                 "goal": "< 5 s for 20M tokens" if step_name == "train-restart" else "",
                                 "note": "`data seconds` of the summary: hashing or remembering the "
                                         "input's key, converting or opening the token store"})
            rows += seconds_rows(bench, "train-restart", "train: second start without its step",
                                 labels, baseline, ["", "< 5 s for 20M tokens"],
                                 "wall seconds minus the step's (tokens / tokens_per_s of its "
                                 "metrics record): start-up, data, saving", without_step=True)
    rows.append(check_row("mix-all: outputs identical", mix_checks["mix-all"], labels, baseline))
    rows.append(check_row("mix-das: outputs identical", mix_checks["mix-das"], labels, baseline))
    rows.append(check_row("pack: outputs identical (without 'tokenizer')", pack_checks, labels, baseline))
    return rows


def run(quick: bool) -> list[dict]:
    """The benchmark rows (``quick``: 0.5M and 2M tokens instead of 5M and 20M)."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    ref = os.environ.get("DASD_BENCH_BASELINE", BASELINE_REF)
    new_src = Path(os.environ.get("DASD_BENCH_NEW_SRC") or REPO / "src").resolve()
    baseline = f"old ({ref})"
    if not Path(GNU_TIME).is_file():
        return [error_row("setup", f"{GNU_TIME} (GNU time) is needed to read each command's peak RSS")]
    with tempfile.TemporaryDirectory(prefix="dasd-bench-scale-") as name:
        tmp = Path(name)
        try:
            worktree = add_worktree(ref, tmp / "baseline")
        except subprocess.CalledProcessError as err:
            return [error_row("setup", f"git worktree add {ref} failed: {tail(err.stderr or '')}")]
        try:
            sides = {"old": Side("old", worktree / "src"), "new": Side("new", new_src)}
            rows = measure(tmp, sides, sizes, baseline)
        finally:
            remove_worktree(worktree)
    if os.environ.get("DASD_BENCH_NEW_SRC"):
        rows.insert(0, error_row("new side", f"DASD_BENCH_NEW_SRC: new = {new_src}"))
    return rows
