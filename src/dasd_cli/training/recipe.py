"""The `dasd train` recipe: setup, train loop, save_checkpoint, resume. Read top to bottom.

Defaults are the paper's (METHOD.md "Training recipe"): AdamW (0.9, 0.95, eps 1e-8,
weight decay 0.1), lr 5e-5, 10% warmup, cosine to 1e-5, grad clip 1.0, bf16 where
supported, 6 epochs, seed 42, global batch 64 packed sequences.

The loss of a step is the mean over every target token of the global batch: each
micro-batch contributes its loss SUM divided by the step's total target count (known
up front from the data), so packed and unpacked training on the same samples agree.
The per-token loss is the objective's (core/train/objective.py): cross-entropy (SFT),
or on-policy reverse KL on data that carries the sampler's and the teacher's log-probs.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dasd_cli.core.train import loss as loss_core
from dasd_cli.core.train import objective as objectives
from dasd_cli.core.train.batching import MicroBatch, SequenceList, StepPlan
from dasd_cli.core.train.schedule import Schedule
from dasd_cli.errors import DasdError, UsageError
from dasd_cli.model import packed
from dasd_cli.training import checkpoint as ckpt
from dasd_cli.training import distributed as dist_util
from dasd_cli.training import forward


@dataclass
class TrainConfig:
    """Every knob of a run (the command's flags)."""

    out: Path  # final model folder; checkpoints in OUT/checkpoint-<step>
    model: str | None = None  # base model spec (None: the embedded default)
    init_from: str | None = None  # start from these weights (a previous stage); fresh optimizer
    epochs: int = 6  # passes over the packed data
    global_batch_size: int = 64  # packed sequences per optimizer step, all ranks together
    lr: float = 5e-5  # peak learning rate
    min_lr: float = 1e-5  # learning rate at the last step
    warmup_ratio: float = 0.1  # fraction of all steps spent in linear warmup
    weight_decay: float = 0.1  # AdamW decoupled decay (matrices and embeddings, not norms/biases)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient L2 norm (0: no clipping)
    dtype: str = "auto"  # compute dtype: auto (bf16 where fast) | bf16 | fp32
    attn: str = "auto"  # attention backend: auto | segmented | sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory)
    liger: bool = False  # Liger kernels (CUDA only)
    deepspeed: str | None = None  # DeepSpeed JSON config (ZeRO-3: configs/zero3.json)
    save_every: int = 0  # also checkpoint every N optimizer steps (0: only at epoch ends)
    keep_checkpoints: int = 0  # keep only the N most recent checkpoints (0: all)
    delete_checkpoints: bool = False  # delete every checkpoint once the final model is written
    resume: bool = False  # continue from the latest checkpoint in OUT
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in total
    seed: int = 42
    shuffle: bool = True  # reshuffle packed sequences every epoch (from seed and epoch)
    loss_chunk_size: int = loss_core.DEFAULT_CHUNK_SIZE  # rows projected to the vocabulary at once
    router_aux_loss_coef: float | None = None  # MoE load-balancing loss weight (None: the model config's)
    objective: str = "sft"  # per-token loss: sft (cross-entropy) | reverse-kl (on-policy distillation)
    clip_low: float = objectives.DEFAULT_CLIP_LOW  # reverse-kl: importance ratio floor is 1 - clip_low
    clip_high: float = objectives.DEFAULT_CLIP_HIGH  # reverse-kl: importance ratio ceiling is 1 + clip_high
    debug: bool = False  # say which MoE blocks became ZeRO-3 leaf modules, and why
    data: list[str] | None = None  # the packed files trained on (None: stdin)
    token_store: str | None = None  # where packed files are converted (None: the default root)
    plot: str | None = None  # a plot of loss and learning rate against step, written at the end
    tensorboard: str | None = None  # a folder of TensorBoard scalars, written as the run goes

    def validate(self) -> None:
        checks = [(self.epochs >= 1, "--epochs must be at least 1"),
                  (self.global_batch_size >= 1, "--global-batch-size must be at least 1"),
                  (0 < self.lr, "--lr must be positive"),
                  (0 <= self.min_lr <= self.lr, "--min-lr must be between 0 and --lr"),
                  (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
                  (self.save_every >= 0, "--save-every must be >= 0"),
                  (self.keep_checkpoints >= 0, "--keep-checkpoints must be >= 0"),
                  (self.stop_after is None or self.stop_after >= 1, "--stop-after must be >= 1"),
                  (self.router_aux_loss_coef is None or self.router_aux_loss_coef >= 0,
                   "--router-aux-loss-coef must be >= 0"),
                  (self.objective in objectives.OBJECTIVES,
                   f"--objective must be one of {', '.join(objectives.OBJECTIVES)}"),
                  (0 <= self.clip_low < 1, "--clip-low must be in [0, 1)"),
                  (self.clip_high >= 0, "--clip-high must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.liger:
            import torch

            if not torch.cuda.is_available():
                raise UsageError("--liger needs a CUDA GPU: Liger kernels are Triton kernels, "
                                 "and Triton has no CPU backend here",
                                 hint="drop --liger on CPU (dasd's chunked loss already avoids "
                                 "materializing the logits)")

    def fingerprint(self, num_sequences: int, world_size: int) -> dict[str, Any]:
        """What a resume must match to continue exactly."""
        found = {"num_sequences": num_sequences, "global_batch_size": self.global_batch_size,
                 "epochs": self.epochs, "seed": self.seed, "shuffle": self.shuffle,
                 "world_size": world_size}
        if self.objective != "sft":  # SFT checkpoints keep the fingerprint they always had
            found.update(objective=self.objective, clip=[self.clip_low, self.clip_high])
        return found


class Trainer:
    """One training run: ``setup_model`` → ``setup_data`` → iterate ``train()``."""

    def __init__(self, config: TrainConfig, ranks: dist_util.Ranks | None = None) -> None:
        config.validate()
        self.config = config
        self.ranks = ranks or dist_util.ranks_from_env()
        self.sequences: Any = SequenceList([])  # len, [i] and target_count(i)
        self.start_step = 0
        self.resume_from: Path | None = None
        self.engine: Any = None  # the DeepSpeed engine, when --deepspeed

    # ------------------------------------------------------------------ setup
    def setup_model(self) -> None:
        """Seed, pick dtype/device/attention, load weights and tokenizer."""
        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from dasd_cli.model import load as models

        hf_logging.disable_progress_bar()  # dasd shows its own progress on stderr

        cfg = self.config
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        dist_util.init_process_group(self.ranks)
        self.device = torch.device(f"cuda:{self.ranks.local_rank}" if torch.cuda.is_available() else "cpu")
        self.compute_dtype = models.pick_dtype(cfg.dtype)
        if self.compute_dtype == torch.float16:
            raise UsageError("--dtype fp16 is not supported for training", hint="use bf16 or fp32")
        if cfg.resume:
            self.resume_from = ckpt.latest_checkpoint(cfg.out)
            if self.resume_from is None and self.ranks.is_main:
                from dasd_cli import io

                io.say(f"dasd train: no checkpoint in {cfg.out} to resume; starting at step 1")
        source = self.resume_from or (models.resolve_model(cfg.init_from) if cfg.init_from
                                      else models.resolve_model(cfg.model))
        self.attn = self._pick_attention()
        # Weights stay fp32 (the master copy); bf16 runs under autocast, or as DeepSpeed's
        # bf16 mode (which keeps its own fp32 master copy in the optimizer).
        self.model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32,
                                                          attn_implementation=self.attn)
        self.model.config.use_cache = False
        self._exact_attention()
        self.tokenizer = AutoTokenizer.from_pretrained(str(source))
        self.source = str(source)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.objective = objectives.make_objective(cfg.objective, cfg.clip_low, cfg.clip_high)
        loss_impl = "fused"
        if cfg.liger:
            self._apply_liger()
        if cfg.liger and self.objective is objectives.SFT:
            loss_impl = "liger"  # Liger's loss is cross-entropy; other objectives keep dasd's
        elif cfg.deepspeed:
            loss_impl = "checkpointed"  # module calls, so ZeRO-3 gathers the head weight
        self.loss_fn = forward.make_loss_fn(self.model, loss_impl, cfg.loss_chunk_size, self.objective)
        self._setup_moe()
        if not cfg.deepspeed:
            self.model.to(self.device)
        self.model.train()

    def _setup_moe(self) -> None:
        """Find the sparse blocks; the aux-loss weight is the flag's, else the config's, else 0."""
        from dasd_cli.model import moe

        cfg = self.config
        self.moe_blocks = moe.find_blocks(self.model)
        self.experts_implementation = moe.use_fastest_experts(self.model, self.device.type, self.moe_blocks)
        if not self.moe_blocks:
            if cfg.router_aux_loss_coef:
                raise UsageError("--router-aux-loss-coef: this model has no routed experts")
            self.aux_coef = 0.0
            return
        own = moe.config_aux_coef(self.model)
        self.aux_coef = cfg.router_aux_loss_coef if cfg.router_aux_loss_coef is not None else (own or 0.0)
        if cfg.debug and self.ranks.is_main:
            from dasd_cli import io

            source = "--router-aux-loss-coef" if cfg.router_aux_loss_coef is not None else \
                ("the model config" if own is not None else "no config value")
            io.say(f"dasd train: {len(self.moe_blocks)} sparse blocks of {self.moe_blocks[0].num_experts} "
                   f"experts, top-{moe.top_k(self.model, self.moe_blocks)}; router aux loss coefficient "
                   f"{self.aux_coef} ({source}); experts kernel {self.experts_implementation or 'of the block'}")

    def _register_leaf_modules(self) -> None:
        """ZeRO-3: sparse blocks whose experts are separate modules become leaf modules."""
        from dasd_cli import io
        from dasd_cli.model import moe

        classes, reasons = moe.leaf_classes(self.moe_blocks)
        if classes:
            dist_util.set_leaf_modules(self.model, classes)
        if self.config.debug and self.ranks.is_main:
            for line in reasons:
                io.say(f"dasd train: {line}")

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    def _pick_attention(self) -> str:
        import importlib.util

        import torch

        from dasd_cli.model import attention

        choice = self.config.attn
        if choice == "auto":
            if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
                return "flash_attention_2"
            choice = "segmented"
        if choice == "segmented":
            return attention.register()
        if choice not in packed.MASKED_BACKENDS + packed.VARLEN_BACKENDS:
            raise UsageError(f"--attn must be auto, segmented, sdpa, eager or flash_attention_2, not {choice!r}")
        return choice

    def _exact_attention(self) -> None:
        """--attn auto: a model whose attention the segmented kernel would change (logit
        soft-capping, gpt-oss's attention sinks) runs eager attention with the block mask."""
        from dasd_cli.model import attention

        problem = attention.unsupported(self.model.config, self.model)
        if self.config.attn == "auto" and self.attn == attention.NAME and problem and "sliding" not in problem:
            self.model.set_attn_implementation("eager")
            self.attn = "eager"

    def _apply_liger(self) -> None:
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance
        except ImportError:
            raise UsageError("--liger needs the liger-kernel package", hint="pip install liger-kernel") from None
        _apply_liger_kernel_to_instance(model=self.model, rope=True, rms_norm=True, swiglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False)

    def setup_data(self, sequences: Any) -> None:
        """Plan the steps, build optimizer and schedule, restore a checkpoint if resuming.

        ``sequences``: a list of ``PackedSequence``, or anything with ``len``,
        ``[i]``, ``target_count(i)`` and ``has_streams`` (the token store of training/data.py).
        """
        import torch

        cfg = self.config
        if isinstance(sequences, list):
            sequences = SequenceList(sequences)
        if not len(sequences):
            raise DasdError("no packed records to train on", hint="check the input of dasd train")
        if self.objective.streams and not getattr(sequences, "has_streams", False):
            raise DasdError(f"--objective {cfg.objective} needs on-policy data: packed records with "
                            "sampler_logprobs and teacher_logprobs",
                            hint="sample with the student, score with `dasd score --role teacher`, then "
                            "dasd pack (METHOD.md section 5)")
        self.sequences = sequences
        self.plan = StepPlan(len(sequences), cfg.global_batch_size, self.ranks.world_size, self.ranks.rank)
        self.total_steps = self.plan.total_steps(cfg.epochs)
        self.schedule = Schedule(self.total_steps, cfg.lr, cfg.min_lr, cfg.warmup_ratio)
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        # the fused kernel (CPU and CUDA): one pass per tensor, no per-op temporaries
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, fused=self.device.type in ("cpu", "cuda"))
        # LambdaLR's factor i is the lr of step i + 1; clamp past the end (never used).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: self.schedule.lr(min(i + 1, self.total_steps)) / cfg.lr)
        self.fingerprint = cfg.fingerprint(len(sequences), self.ranks.world_size)
        if cfg.deepspeed:
            bf16 = self.compute_dtype == torch.bfloat16
            ds_config = dist_util.load_deepspeed_config(
                cfg.deepspeed, micro_batch=1, accumulation=self.plan.accumulation_steps,
                world_size=self.ranks.world_size, bf16=bf16, grad_clip=cfg.grad_clip)
            if self.moe_blocks:
                self._register_leaf_modules()
            self.engine = dist_util.deepspeed_engine(self.model, self.optimizer, self.scheduler, ds_config)
            self.model = self.engine.module
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, folder: Path) -> None:
        import torch

        state = ckpt.read_state(folder)
        ckpt.check_fingerprint(state.get("fingerprint", {}), self.fingerprint, folder)
        if self.engine is not None:
            self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state")
        else:
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
            self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        ckpt.restore_rng(torch.load(folder / f"rng-{self.ranks.rank}.pt", weights_only=False))
        self.start_step = int(state["step"])

    # ------------------------------------------------------------------ train loop
    def train(self) -> Iterator[dict[str, Any]]:
        """Run the remaining steps; yield one metrics record per optimizer step."""
        cfg = self.config
        steps = self.plan.iter_steps(cfg.epochs, cfg.seed, self.start_step, cfg.shuffle)
        per_epoch = self.plan.steps_per_epoch
        for step, _epoch, step_sequences, micro_batches in steps:
            metrics = self._step(step, step_sequences, micro_batches)
            yield metrics
            epoch_end = step % per_epoch == 0
            stopping = cfg.stop_after is not None and step >= cfg.stop_after
            if epoch_end or stopping or (cfg.save_every and step % cfg.save_every == 0):
                self.save_checkpoint(step)
            if stopping and step < self.total_steps:
                return
        self.save_final()
        if cfg.delete_checkpoints and self.ranks.is_main:
            ckpt.remove_all(cfg.out)

    def _step(self, step: int, step_sequences: list[int], micro_batches: list[MicroBatch]) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"] if self.engine is None else self.schedule.lr(step)
        # the whole global batch's target count, the same on every rank
        targets = sum(self.sequences.target_count(i) for i in step_sequences)
        scale = self.ranks.world_size / max(targets, 1)  # ranks' gradients are averaged
        loss_sum, tokens, aux_sum = 0.0, 0, 0.0
        stats: dict[str, float] = {}
        streams = self.objective.streams
        for n, micro in enumerate(micro_batches):
            seq = self.sequences[micro.index]
            tensors = [torch.as_tensor(a, dtype=torch.long, device=self.device)[None]
                       for a in (seq.input_ids, seq.labels, seq.position_ids)]
            logprobs = [torch.as_tensor(a, dtype=torch.float32, device=self.device)[None] if streams else None
                        for a in (seq.sampler_logprobs, seq.teacher_logprobs)]
            if self.engine is not None:
                dist_util.begin_micro_batch(self.engine)
            with self._autocast():
                summed, _, aux, terms = forward.packed_losses(self.model, *tensors, self.loss_fn,
                                                              self.moe_blocks, *logprobs)
            loss = summed * (scale * micro.weight)
            if aux is not None:
                # a batch statistic per micro-batch, weighted by its share of the step's targets
                share = self.sequences.target_count(micro.index) * micro.weight / max(targets, 1)
                loss = loss + aux * (self.aux_coef * share * self.ranks.world_size)
                aux_sum += float(aux.detach()) * share
            if self.engine is not None:
                self.engine.set_gradient_accumulation_boundary(n == len(micro_batches) - 1)
                self.engine.backward(loss, scale_wrt_gas=False)
                self.engine.step()
            else:
                loss.backward()
            loss_sum += float(summed.detach()) * micro.weight
            objectives.add_stats(stats, terms, micro.weight)
            tokens += len(seq) if micro.weight else 0
        grad_norm = self._optimizer_step()
        names = list(self.objective.stat_names)
        totals = dist_util.all_reduce_sum([loss_sum, float(tokens), aux_sum]
                                          + [stats.get(k, 0.0) for k in names], self.ranks)
        loss_sum, tokens, aux_sum = totals[:3]
        elapsed = time.perf_counter() - started
        metrics = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4),
                   "loss": loss_sum / max(targets, 1), "lr": lr, "grad_norm": grad_norm,
                   "tokens": int(tokens), "target_tokens": targets,
                   "tokens_per_s": round(tokens / elapsed, 2) if elapsed > 0 else None}
        if names:
            summed_stats = dict(zip(names, totals[3:]))
            metrics.update(objectives.step_metrics(summed_stats, targets))
        if self.moe_blocks:
            metrics["aux_loss"] = aux_sum
            metrics["aux_loss_coef"] = self.aux_coef
        return metrics

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.engine is None and self.compute_dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _optimizer_step(self) -> float:
        import torch

        if self.engine is not None:
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.ranks.world_size > 1:
            import torch.distributed as dist

            for p in params:  # plain torchrun data parallel: average gradients
                dist.all_reduce(p.grad)
                p.grad /= self.ranks.world_size
        clip = self.config.grad_clip
        if clip > 0 and self.optimizer.defaults.get("fused"):
            # clip_grad_norm_'s scaling folded into the fused AdamW kernel, which divides each
            # gradient by grad_scale as it reads it: one pass over the gradients fewer
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
            self.optimizer.grad_scale = coef.reciprocal()
            self.optimizer.step()
            self.optimizer.grad_scale = None
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> Path:
        """Weights + tokenizer + optimizer + scheduler + RNG + data position, atomically."""
        import torch

        final = ckpt.checkpoint_dir(self.config.out, step)
        tmp = ckpt.staging_path(final)
        if self.ranks.is_main:
            ckpt.staging_dir(final)
        self._barrier()
        self._save_weights(tmp)
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")
        elif self.ranks.is_main:
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(ckpt.rng_state(), tmp / f"rng-{self.ranks.rank}.pt")
        self._barrier()
        if self.ranks.is_main:
            ckpt.write_state(tmp, {"step": step, "total_steps": self.total_steps,
                                   "epoch": step / self.plan.steps_per_epoch,
                                   "fingerprint": self.fingerprint, "source": self.source,
                                   "config": _jsonable(asdict(self.config))})
            ckpt.publish(tmp, final)
            ckpt.prune(self.config.out, self.config.keep_checkpoints)
        self._barrier()
        return final

    def save_final(self) -> None:
        """The trained model and tokenizer at the top of OUT (usable as --model)."""
        out = self.config.out
        tmp = ckpt.staging_path(out / "final")
        if self.ranks.is_main:
            ckpt.staging_dir(out / "final")
        self._barrier()
        self._save_weights(tmp)
        if self.ranks.is_main:
            for item in tmp.iterdir():
                target = out / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
            tmp.rmdir()
        self._barrier()

    def _save_weights(self, folder: Path) -> None:
        if self.engine is not None and self.engine.zero_optimization_stage() == 3:
            import deepspeed

            params = list(self.model.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if self.ranks.is_main:
                    state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            if self.ranks.is_main:
                self.model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        elif self.ranks.is_main:
            self.model.save_pretrained(folder, safe_serialization=True)
        if self.ranks.is_main:
            self.tokenizer.save_pretrained(folder)

    def _barrier(self) -> None:
        if self.ranks.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.ranks.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
