"""Training throughput and memory of `dasd train` against TRL's SFTTrainer and a plain
Hugging Face transformers Trainer loop, on CPU.

Same model (the embedded default, SmolLM2-135M-Instruct, fp32 weights), same samples
(synthetic chat Q&A, responses 60 to 400 tokens, system prompt in every sample), same
hyperparameters (AdamW 0.9/0.95, eps 1e-8, weight decay 0.1, lr 5e-5, 10% warmup, cosine
to 1e-5, clip 1.0, 1 epoch, seed 42, loss on response tokens only), same threads.
- dasd: samples packed first-fit into 1,024-token sequences (about the padded size of
  one baseline micro-batch), one sequence per micro-batch, 2 per step (about 9 samples),
  every sample isolated (segmented attention), chunked loss;
- TRL: SFTTrainer without packing (its packing resets position_ids only, which leaks
  across samples on sdpa/eager), batches of 4 padded to the longest, 2 accumulation
  steps (8 samples per step);
- HF Trainer: transformers' Trainer as a user would write it without TRL: prompt and
  prompt + completion rendered with the chat template, labels -100 on the prompt,
  DataCollatorForSeq2Seq padding to the longest, batches of 4, 2 accumulation steps.
Metric: useful tokens per second (tokens of the samples, padding not counted) over the
training loop only (model loading and saving excluded for all), and peak RSS of the
whole process (its own, through a small launcher: not the bench process's, which other
benches may have grown). Each round runs dasd, TRL, HF Trainer in turn; ratios use the
medians of the rates and the largest peak RSS of each side. With ``DASD_BENCH_BEFORE=SRC``
(a ``src`` folder of an earlier checkout) the same dasd command also runs on that source,
right after dasd in each round: the speed-up of a change, measured in one run.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SEQUENCE_TOKENS = 1024  # dasd packing capacity: about TRL's padded tokens per micro-batch
THREADS = "2"  # torch threads, both sides

TRL_DRIVER = textwrap.dedent('''
    import json, sys, time
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_path, data_path, out = sys.argv[1:4]
    rows = [json.loads(line) for line in open(data_path)]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    config = SFTConfig(output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                       learning_rate=5e-5, lr_scheduler_type="cosine_with_min_lr",
                       lr_scheduler_kwargs={"min_lr": 1e-5}, warmup_steps=0.1, weight_decay=0.1,
                       adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
                       num_train_epochs=1, seed=42, packing=False, max_length=4096, bf16=False,
                       fp16=False, use_cpu=True, save_strategy="no", report_to=[], logging_steps=1,
                       dataloader_num_workers=0, disable_tqdm=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=dataset, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"seconds": seconds, "steps": trainer.state.global_step, "first_loss": losses[0]}))
''')

HF_DRIVER = textwrap.dedent('''
    import json, sys, time
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    model_path, data_path, out = sys.argv[1:4]
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(row):
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        input_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(prompt_ids) + input_ids[len(prompt_ids):]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    rows = [json.loads(line) for line in open(data_path)]
    dataset = Dataset.from_list([encode(r) for r in rows])
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=5e-5, lr_scheduler_type="cosine_with_min_lr",
                             lr_scheduler_kwargs={"min_lr": 1e-5}, warmup_steps=0.1, weight_decay=0.1,
                             adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
                             num_train_epochs=1, seed=42, bf16=False, fp16=False, use_cpu=True,
                             save_strategy="no", report_to=[], logging_steps=1,
                             dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"seconds": seconds, "steps": trainer.state.global_step, "first_loss": losses[0]}))
''')


def make_samples(tokenizer, n: int, seed: int = 0) -> list[dict]:
    """Chat samples: encoded the dasd way (template prompt + raw response + end of turn)."""
    from dasd_cli.core.chat import encode_example

    rng = random.Random(seed)
    words = ("the sum of two numbers is found by adding them and we check the result again "
             "carefully so that each step follows from the one before it").split()
    system = {"role": "system", "content": "You are a helpful assistant."}
    samples = []
    for i in range(n):
        question = f"Question {i}: what is {rng.randint(10, 999)} plus {rng.randint(10, 999)}?"
        n_words = rng.randint(45, 300)  # about 60 to 400 tokens
        answer = "<think>\n" + " ".join(rng.choice(words) for _ in range(n_words)) + "\n</think>\n\nDone."
        messages = [system, {"role": "user", "content": question}]
        encoded = encode_example(tokenizer, messages, answer)
        samples.append({"messages": messages, "answer": answer, "input_ids": encoded.input_ids,
                        "prompt_len": encoded.prompt_len})
    return samples


def pack_first_fit(samples: list[dict]) -> list[dict]:
    """Packed records (DESIGN.md "Packed sequence"), samples in order, first fit into SEQUENCE_TOKENS."""
    bins: list[dict] = []
    for s in samples:
        ids = s["input_ids"]
        target = next((b for b in bins if len(b["input_ids"]) + len(ids) <= SEQUENCE_TOKENS), None)
        if target is None:
            target = {"input_ids": [], "labels": [], "position_ids": [], "ids": []}
            bins.append(target)
        target["input_ids"] += ids
        target["labels"] += [-100] * s["prompt_len"] + ids[s["prompt_len"]:]
        target["position_ids"] += list(range(len(ids)))
        target["ids"].append(str(len(target["ids"])))
    return bins


# Runs the command and writes its peak RSS (ru_maxrss, KiB) to the file argv[1]. On Linux a
# child's ru_maxrss starts at the resident set of the process it was forked from (exec
# keeps the larger value), so a child forked from this process, once a bench has grown
# it, reports this process's peak. The launcher is a fresh small interpreter: the command
# it forks starts from the launcher's few MiB, so the figure is the command's own.
LAUNCHER = textwrap.dedent('''
    import os, subprocess, sys
    proc = subprocess.Popen(sys.argv[2:])
    _, status, usage = os.wait4(proc.pid, 0)
    with open(sys.argv[1], "w") as out:
        out.write(str(usage.ru_maxrss))
    sys.exit(os.waitstatus_to_exitcode(status))
''')


def _rss_run(cmd: list[str], env: dict) -> tuple[str, float]:
    """Run a process to completion; stdout and its own peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, str(rss_file), *cmd],
                              capture_output=True, env=env)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {proc.stderr.decode()[-2000:]}")
        return proc.stdout.decode(), int(rss_file.read_text()) / 1024.0  # ru_maxrss is KiB on Linux


def run(quick: bool) -> list[dict]:
    """Rows: tokens/s and peak-RSS ratios of dasd train vs TRL SFTTrainer and vs HF Trainer."""
    from dasd_cli.model.load import load_tokenizer, resolve_model

    model = str(resolve_model(None))
    tokenizer = load_tokenizer(model)
    n = 24 if quick else 48
    rounds = 1 if quick else 2
    samples = make_samples(tokenizer, n)
    useful_tokens = sum(len(s["input_ids"]) for s in samples)
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS,
           "TOKENIZERS_PARALLELISM": "false"}
    before = os.environ.get("DASD_BENCH_BEFORE")
    dasd_sides = {"dasd": env}
    if before:  # the same command on the earlier source: its package first on the path
        dasd_sides["before"] = {**env, "PYTHONPATH": str(Path(before).resolve())}
    rates: dict[str, list[float]] = {side: [] for side in (*dasd_sides, "TRL", "HF")}
    rss: dict[str, list[float]] = {side: [] for side in rates}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        packed = tmp_path / "packed.jsonl"
        packed.write_text("".join(json.dumps(r) + "\n" for r in pack_first_fit(samples)))
        chat_data = tmp_path / "chat.jsonl"
        chat_data.write_text("".join(json.dumps({"prompt": s["messages"],
                                                 "completion": [{"role": "assistant", "content": s["answer"]}]})
                                     + "\n" for s in samples))
        (tmp_path / "trl_driver.py").write_text(TRL_DRIVER)
        (tmp_path / "hf_driver.py").write_text(HF_DRIVER)
        dasd_cmd = [sys.executable, "-m", "dasd_cli.cli", "train", "--model", model, "--epochs", "1",
                    "--global-batch-size", "2", "--dtype", "fp32", "--compress", "none", "--quiet",
                    "--out", str(tmp_path / "dasd-out"), str(packed)]
        baselines = {side: [sys.executable, str(tmp_path / f"{side.lower()}_driver.py"), model,
                            str(chat_data), str(tmp_path / f"{side.lower()}-out")] for side in ("TRL", "HF")}
        for _ in range(rounds):
            for side, side_env in dasd_sides.items():
                out, peak = _rss_run(dasd_cmd, side_env)
                steps = [json.loads(line) for line in out.splitlines() if line.strip()]
                seconds = sum(s["tokens"] / s["tokens_per_s"] for s in steps)
                rates[side].append(sum(s["tokens"] for s in steps) / seconds)
                rss[side].append(peak)
            for side, cmd in baselines.items():
                out, peak = _rss_run(cmd, env)
                rates[side].append(useful_tokens / json.loads(out.strip().splitlines()[-1])["seconds"])
                rss[side].append(peak)
    rate = {side: statistics.median(r) for side, r in rates.items()}
    runs = ", ".join(f"{side} {[round(r) for r in rates[side]]}" for side in rates)
    rss_runs = ", ".join(f"{side} {[round(r) for r in rss[side]]}" for side in rss)
    note = (f"SmolLM2-135M fp32 CPU, {THREADS} threads, {n} samples ({useful_tokens} tokens), "
            f"{rounds} alternated round(s); runs: {runs}")
    names = {"TRL": "TRL SFTTrainer (no packing)", "HF": "HF Trainer loop (padding collator)",
             "before": "dasd train of DASD_BENCH_BEFORE"}
    goals = {"TRL": "ratio >= 2.0", "HF": "ratio >= 1.3", "before": ""}
    compared = [side for side in ("TRL", "HF", "before") if side in rates]
    rows = [{"metric": "training tokens/s", "value": rate["dasd"], "unit": "tokens/s", "baseline": names[side],
             "baseline_value": rate[side], "ratio": rate["dasd"] / rate[side], "goal": goals[side], "note": note}
            for side in compared]
    rows += [{"metric": "peak RSS", "value": max(rss["dasd"]), "unit": "MiB", "baseline": names[side],
              "baseline_value": max(rss[side]), "ratio": max(rss["dasd"]) / max(rss[side]),
              "goal": "ratio <= 1.0" if goals[side] else "", "note": f"whole process incl. model load; runs: {rss_runs}"}
             for side in compared]
    return rows
