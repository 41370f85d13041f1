"""The parts of bench/gpu_check.py: isolation, Liger parity, ZeRO-3 on one rank, speed.

Each part takes the run's :class:`Setup` and returns rows ``{"part", "check", "status",
"values", "reason"}``; status is pass, fail, measured or skipped (with the reason). On a
CPU (the dry run) every part runs what needs no CUDA on tiny shapes and marks the rest
skipped, so the code cannot rot between lent GPUs.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA GPU here (dry run on CPU)"


@dataclass
class Setup:
    """What every part shares: where it runs, the models' folders, the deadline."""

    dry: bool
    device: str  # "cuda" or "cpu"
    work: Path
    tokenizer: Path  # Qwen3's tokenizer folder (examples/paper_tokenizers.py)
    deadline: float  # time.monotonic() past which a part is skipped
    models: dict[str, Path] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def row(part: str, check: str, status: str, values: dict | None = None, reason: str = "") -> dict:
    return {"part": part, "check": check, "status": status, "values": values or {}, "reason": reason}


# -- models ------------------------------------------------------------------------------

QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
                  rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True)
# Liger and ZeRO-3 parity: small, with peaked logits (a wide init), so a loss that read the
# wrong targets or a wrong gradient would show.
PARITY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False,
              initializer_range=0.2)
TINY_PARITY = {**TINY, "hidden_size": 32, "intermediate_size": 64, "head_dim": 8, "initializer_range": 0.2}
VOCAB = 151936  # Qwen3's embedding rows


def model_folder(setup: Setup, name: str, shape: dict) -> Path:
    """A random-init Qwen3 of ``shape`` saved (fp32) with Qwen3's tokenizer; built once."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    if name not in setup.models:
        folder = setup.work / "models" / name
        torch.manual_seed(0)
        config = Qwen3Config(vocab_size=VOCAB, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, **shape)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        shutil.copytree(setup.tokenizer, folder, dirs_exist_ok=True)
        setup.models[name] = folder
    return setup.models[name]


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


# -- 1. isolation --------------------------------------------------------------------------

def isolation(setup: Setup) -> list[dict]:
    """Packed equals alone: each sample's last hidden states inside a packed row against the
    sample run alone (and after another neighbour); a control row without the restart must
    differ by far more than the tolerance, so the check can see a leak."""
    import torch
    from transformers import AutoModelForCausalLM

    from dasd_cli.model import attention

    attention.register()
    cuda = setup.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    tolerance = 0.05 if cuda else 1e-4  # relative L2 error: bf16 rounding vs fp32 summation order
    folder = model_folder(setup, "qwen3-0.6b" if cuda else "tiny", QWEN3_0_6B if cuda else TINY)
    lengths = (300, 700, 200) if cuda else (37, 64, 23)
    rows = []
    for impl in ("dasd_segmented", "sdpa", "flash_attention_2"):
        if impl == "flash_attention_2" and (not cuda or find_spec("flash_attn") is None):
            rows.append(row("isolation", impl, "skipped", reason=NO_CUDA if not cuda else
                            "flash_attn is not installed (it is not in the GPU image and has no wheel here)"))
            continue
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=impl)
        model = model.to(setup.device).eval()
        values = isolation_errors(model, lengths, setup.device)
        del model
        release()
        ok = values["packed_vs_alone"] <= tolerance and values["control_leak"] > 4 * tolerance
        rows.append(row("isolation", impl, "pass" if ok else "fail",
                        {**values, "tolerance": tolerance, "dtype": str(dtype).removeprefix("torch.")}))
    return rows


def isolation_errors(model: Any, lengths: tuple[int, ...], device: str) -> dict[str, float]:
    import torch

    from dasd_cli.model import packed

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = [torch.randint(3, vocab, (n,), generator=gen).to(device) for n in lengths]
    neighbour = torch.randint(3, vocab, (50,), generator=gen).to(device)
    body = model.get_decoder()

    def in_row(parts: list) -> list:
        ids = torch.cat(parts)[None]
        positions = torch.cat([torch.arange(len(p), device=device) for p in parts])[None]
        hidden = packed.hidden_states(model, ids, positions)[0]
        return list(hidden.split([len(p) for p in parts]))

    def relative(a: Any, b: Any) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm())

    with torch.no_grad():
        inside = in_row(samples)
        alone = [body(input_ids=s[None]).last_hidden_state[0] for s in samples]
        after_other = in_row([neighbour, samples[1]])[1]
        leaky = body(input_ids=torch.cat(samples[:2])[None]).last_hidden_state[0, lengths[0]:]
    errors = [relative(p, a) for p, a in zip(inside, alone)] + [relative(after_other, inside[1])]
    return {"packed_vs_alone": max(errors), "control_leak": relative(leaky, alone[1])}


# -- packed data and dasd runs ---------------------------------------------------------------

def packed_records(lengths: list[int], capacity: int, seed: int = 0) -> list[dict]:
    """Random-token samples (first quarter masked as the prompt) packed best-fit into rows."""
    import numpy as np

    from dasd_cli.core.pack import plan_sequences

    rng = random.Random(seed)
    samples = [[rng.randrange(3, 151000) for _ in range(n)] for n in lengths]
    members, _ = plan_sequences(np.asarray(lengths), capacity)
    records = []
    for r, indices in enumerate(members):
        ids, labels, positions = [], [], []
        for i in indices:
            tokens = samples[int(i)]
            prompt = max(1, len(tokens) // 4)
            ids += tokens
            labels += [-100] * prompt + tokens[prompt:]
            positions += list(range(len(tokens)))
        records.append({"input_ids": ids, "labels": labels, "position_ids": positions,
                        "ids": [f"s{int(i)}" for i in indices], "row": r})
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def dasd(args: list[str], timeout: float, env: dict | None = None, launcher: list[str] | None = None
         ) -> subprocess.CompletedProcess | None:
    """Run ``dasd ARGS`` (under ``launcher`` when given); None when it ran past ``timeout``."""
    module = ["--module"] if launcher and launcher[0].startswith("deepspeed") else ["-m"]
    command = [sys.executable, *(["-m", *launcher] if launcher else []), *module, "dasd_cli.cli", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant: launchers start their ranks in sessions of
    their own, where a process-group kill does not reach (a rank left running keeps the
    output pipe open)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def metrics(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith(b'{"step"')]


def close(want: list[dict], got: list[dict], loss_rel: float, norm_rel: float) -> dict:
    """Largest relative differences of loss and grad norm, step by step."""
    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), 1e-12)
    if [m["step"] for m in want] != [m["step"] for m in got] or not want:
        return {"ok": False, "steps": [len(want), len(got)]}
    loss = max(rel(a["loss"], b["loss"]) for a, b in zip(want, got))
    norm = max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(want, got))
    return {"ok": loss <= loss_rel and norm <= norm_rel, "steps": len(want), "loss_rel_diff": loss,
            "grad_norm_rel_diff": norm, "loss": [m["loss"] for m in want]}


def train_args(setup: Setup, data: Path, out: str) -> list[str]:
    model = model_folder(setup, "parity", PARITY if setup.device == "cuda" else TINY_PARITY)
    return ["train", "--model", str(model), "--data", str(data), "--epochs", "1",
            "--global-batch-size", "2", "--no-shuffle", "--dtype", "fp32", "--attn", "sdpa", "--compress", "none",
            "--out", str(setup.work / out)]


def parity_data(setup: Setup) -> Path:
    path = setup.work / "parity.jsonl"
    if not path.exists():
        lengths = [random.Random(i).randint(200, 900) for i in range(12)] if setup.device == "cuda" else \
            [random.Random(i).randint(20, 60) for i in range(8)]
        write_jsonl(path, packed_records(lengths, 2048 if setup.device == "cuda" else 128))
    return path


# -- 2. --liger ------------------------------------------------------------------------------

def liger(setup: Setup) -> list[dict]:
    """`dasd train --liger` against dasd's own chunked loss: same data, seed, fp32."""
    data = parity_data(setup)
    limit = 300 if setup.device == "cuda" else 600  # seconds per run
    plain = dasd(train_args(setup, data, "liger-off"), timeout=min(limit, setup.left()))
    if plain is None or plain.returncode != 0:
        return [row("liger", "dasd train (chunked loss)", "fail", reason=_tail(plain))]
    base = metrics(plain.stdout)
    if setup.device != "cuda" or find_spec("liger_kernel") is None:
        return [row("liger", "dasd train (chunked loss)", "measured",
                    {"steps": len(base), "first_loss": base[0]["loss"], "last_loss": base[-1]["loss"]}),
                row("liger", "--liger parity", "skipped",
                    reason=NO_CUDA + ": Liger's kernels are Triton kernels" if setup.device != "cuda"
                    else "liger_kernel is not importable (make gpu-wheels carries it)")]
    run = dasd(train_args(setup, data, "liger-on") + ["--liger"], timeout=min(300, setup.left()))
    if run is None or run.returncode != 0:
        return [row("liger", "--liger parity", "fail", reason=_tail(run))]
    result = close(base, metrics(run.stdout), loss_rel=1e-4, norm_rel=1e-3)
    return [row("liger", "--liger parity (loss rel 1e-4, grad norm rel 1e-3)", "pass" if result.pop("ok") else "fail",
                result)]


# -- 3. ZeRO-3 on one rank -----------------------------------------------------------------

def zero3(setup: Setup) -> list[dict]:
    """ZeRO-3 (configs/zero3.json, every parameter partitioned) on one rank against the
    plain run: NCCL under the deepspeed launcher on a GPU, gloo under torchrun on a CPU.
    Two step shapes: one packed sequence per step, and two (gradient accumulation over
    micro-batches); the dry run keeps to the first."""
    if find_spec("deepspeed") is None:
        return [row("zero3", "one rank equals the plain run", "skipped",
                    reason="deepspeed is not importable (make gpu-wheels carries it)")]
    data = parity_data(setup)
    config = json.loads((ROOT / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    config_path = setup.work / "zero3.json"
    config_path.write_text(json.dumps(config))
    cuda = setup.device == "cuda"
    backend = "NCCL, deepspeed launcher" if cuda else "gloo on CPU, torchrun"
    port = str(free_port())
    launcher = (["deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", port, "--no_local_rank"] if cuda
                else ["torch.distributed.run", "--nproc-per-node", "1", "--master-port", port])
    env = {"OMP_NUM_THREADS": "1"} if cuda else {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    rows = []
    for per_step in (1, 2):
        check = f"one rank ({backend}) equals the plain run, {per_step} sequence{'s' * (per_step > 1)} per step"
        if per_step > 1 and not cuda:
            rows.append(row("zero3", check, "skipped", reason="the dry run keeps to one step shape (CI time)"))
            continue
        if setup.left() < 60:
            rows.append(row("zero3", check, "skipped", reason="past the time budget"))
            continue
        args = train_args(setup, data, f"zero3-{per_step}")
        args[args.index("--global-batch-size") + 1] = str(per_step)
        limit = 300 if cuda else 600  # seconds per run: 2 CPU cores start DeepSpeed and gloo slowly
        plain = dasd(args, timeout=min(limit, setup.left()))
        if plain is None or plain.returncode != 0:
            rows.append(row("zero3", check, "fail", reason="plain run: " + _tail(plain)))
            continue
        args[args.index("--out") + 1] += "-zero3"
        run = dasd(args + ["--deepspeed", str(config_path)], timeout=min(limit, setup.left()), env=env,
                   launcher=launcher)
        if run is None or run.returncode != 0:
            rows.append(row("zero3", check, "fail", reason=_tail(run)))
            continue
        result = close(metrics(plain.stdout), metrics(run.stdout), loss_rel=1e-4 if cuda else 1e-5,
                       norm_rel=1e-3 if cuda else 1e-4)
        rows.append(row("zero3", check, "pass" if result.pop("ok") else "fail", result))
    return rows


def free_port() -> int:
    """A TCP port nothing listens on now (the launcher's rendezvous)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(proc: subprocess.CompletedProcess | None) -> str:
    if proc is None:
        return "timed out"
    return proc.stderr.decode(errors="replace").strip().splitlines()[-1][-300:] if proc.stderr.strip() else \
        f"exit {proc.returncode}"


# -- 4. speed and memory ---------------------------------------------------------------------

def speed(setup: Setup) -> list[dict]:
    """dasd train (8K and 32K packed tokens, with and without Liger) and dasd score, each
    beside a naive transformers loop on the same samples, on a random-init model of
    Qwen3-0.6B's shape in bf16. The dry run measures the same code on a tiny model."""
    cuda = setup.device == "cuda"
    folder = model_folder(setup, "qwen3-0.6b" if cuda else "tiny", QWEN3_0_6B if cuda else TINY)
    rng = random.Random(1)
    lengths = [rng.randint(256, 4096) for _ in range(48)] if cuda else [rng.randint(16, 96) for _ in range(24)]
    rows = []
    capacities = (8192, 32768) if cuda else (256, 512)
    packed = {capacity: packed_records(lengths, capacity) for capacity in capacities}
    for capacity in capacities:
        rows.append(_guarded("speed", f"dasd train, {capacity} packed tokens", setup,
                             lambda capacity=capacity: train_rate(setup, folder, packed[capacity], False, capacity)))
        rows.append(_guarded("speed", f"naive transformers train, {capacity} tokens per batch", setup,
                             lambda capacity=capacity: naive_train_rate(setup, folder, lengths, capacity)))
    rows += _guarded_many("speed", "score", setup, lambda: score_rates(setup, folder, cuda))
    # Liger patches transformers' functions for the whole process: its runs come last
    for capacity in capacities:
        name = f"dasd train, {capacity} packed tokens, --liger"
        if not cuda or find_spec("liger_kernel") is None:
            rows.append(row("speed", name, "skipped", reason=NO_CUDA if not cuda else "liger_kernel is not importable"))
            continue
        rows.append(_guarded("speed", name, setup, lambda capacity=capacity: train_rate(setup, folder, packed[capacity], True, capacity)))
    return rows


def _guarded(part: str, name: str, setup: Setup, measure: Any) -> dict:
    if setup.left() < 20:
        return row(part, name, "skipped", reason="past the time budget")
    try:
        values = measure()
    except Exception as exc:  # noqa: BLE001 - an out-of-memory baseline is a result, not a crash
        release()
        out_of_memory = "out of memory" in str(exc).lower()
        return row(part, name, "measured" if out_of_memory else "fail",
                   {"error": "out of memory"} if out_of_memory else {}, reason=f"{type(exc).__name__}: {exc}"[:300])
    release()
    return row(part, name, "measured", values)


def _guarded_many(part: str, name: str, setup: Setup, measure: Any) -> list[dict]:
    result = _guarded(part, name, setup, measure)
    return result["values"].pop("rows") if result["status"] == "measured" else [result]


def train_rate(setup: Setup, folder: Path, records: list[dict], use_liger: bool, capacity: int,
               steps: int = 5) -> dict:
    """In-process `dasd train` (the recipe the command runs): one packed row per step;
    tokens/s is the median over the steps after the first; nothing is saved."""
    from dasd_cli.core.train.batching import packed_from_record
    from dasd_cli.training import recipe
    from dasd_cli.training.distributed import Ranks

    release()
    config = recipe.TrainConfig(out=setup.work / "speed-out", model=str(folder), dtype="bf16",
                                liger=use_liger, epochs=1, global_batch_size=1, shuffle=False)
    trainer = recipe.Trainer(config, Ranks())
    trainer.setup_model()
    trainer.setup_data([packed_from_record(r, trainer.vocab_size) for r in records[:steps]])
    rates = []
    for metric in trainer.train():
        rates.append(metric["tokens_per_s"])
        if len(rates) == min(steps, len(records)):
            break  # leave before the final save
    attn = trainer.model.config._attn_implementation
    trainer.close()
    del trainer
    return {"tokens_per_s": statistics.median(rates[1:] or rates), "peak_gib": peak_gib(), "attention": attn,
            "steps": len(rates), "capacity": capacity}


def naive_train_rate(setup: Setup, folder: Path, lengths: list[int], budget: int, steps: int = 5) -> dict:
    """A plain transformers loop: samples in input order, padded batches of at most ``budget``
    padded tokens, fp32 weights under bf16 autocast (as Trainer's bf16=True), the model's
    own loss on full logits, AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    release()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    model.to(setup.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.95), weight_decay=0.1)
    rng = random.Random(0)
    batches, batch = [], []
    for n in lengths:
        if batch and max(batch + [n]) * (len(batch) + 1) > budget:
            batches.append(batch)
            batch = []
        batch.append(n)
    batches.append(batch)
    rates = []
    try:
        for sizes in batches[:steps]:
            width = max(sizes)
            ids = torch.zeros((len(sizes), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for b, n in enumerate(sizes):
                ids[b, :n] = torch.tensor([rng.randrange(3, 151000) for _ in range(n)])
                mask[b, :n] = 1
                labels[b, max(1, n // 4):n] = ids[b, max(1, n // 4):n]
            ids, mask, labels = ids.to(setup.device), mask.to(setup.device), labels.to(setup.device)
            _sync(setup)
            started = time.perf_counter()
            with torch.autocast(setup.device, dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(setup)
            rates.append(sum(sizes) / (time.perf_counter() - started))
        return {"tokens_per_s": round(statistics.median(rates[1:] or rates), 2), "peak_gib": peak_gib(),
                "steps": len(rates), "capacity": budget, "padded_share": round(1 - sum(map(sum, batches)) /
                                                           sum(max(b) * len(b) for b in batches), 3)}
    finally:
        del model, optimizer


def _sync(setup: Setup) -> None:
    import torch

    if setup.device == "cuda":
        torch.cuda.synchronize()


def score_rates(setup: Setup, folder: Path, cuda: bool) -> dict:
    """`dasd score`'s hf path (packed rows, chunked log-softmax) and the naive baseline of
    bench/bench_score.py (input order, padded batches of 8, full log-softmax), bf16."""
    import bench_score
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dasd_cli.model.load import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rng = random.Random(2)
    lengths = [rng.randint(512, 4096) if cuda else rng.randint(16, 64) for _ in range(32 if cuda else 8)]
    requests = bench_score.make_requests(tokenizer, lengths)
    dtype = "bf16" if cuda else "fp32"
    out = []
    for name in ("dasd score (hf)", "naive transformers score"):
        release()
        if name.startswith("dasd"):
            model = load_causal_lm(str(folder), dtype=dtype, device=setup.device)
            bench_score.score_ours(model, tokenizer, requests[:2])  # warm-up
            score = bench_score.score_ours
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32,
                                                         attn_implementation="sdpa").to(setup.device).eval()
            score = bench_score.score_naive
        _sync(setup)
        started = time.perf_counter()
        try:
            tokens = score(model, tokenizer, requests)
            _sync(setup)
            out.append(row("speed", name, "measured", {
                "tokens_per_s": round(tokens / (time.perf_counter() - started), 2), "peak_gib": peak_gib(),
                "tokens": tokens, "dtype": dtype}))
        except torch.OutOfMemoryError as exc:
            out.append(row("speed", name, "measured", {"error": "out of memory"}, reason=str(exc)[:300]))
        del model
    release()
    return {"rows": out}
