"""``dasd train``: supervised fine-tuning on packed sequences (METHOD.md "Training recipe").

Reads packed records (DESIGN.md "Packed sequence") from files or stdin, converted once
into a token store (training/data.py) that later runs and every rank reuse, trains with
sample isolation and a token-weighted chunked loss (dasd_cli.training), writes one
metrics record per optimizer step to stdout, checkpoints under OUT and the final model
(transformers format, tokenizer included) at the top of OUT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dasd_cli.commands import common
from dasd_cli.core.train import loss as loss_core
from dasd_cli.core.train import objective as objectives
from dasd_cli.errors import UsageError

ATTN_CHOICES = ("auto", "segmented", "sdpa", "eager", "flash_attention_2")
DTYPE_CHOICES = ("auto", "bf16", "fp32")


@common.shared_options(seed=True)
def train_command(
    shared: common.Common,
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", metavar="PATH", show_default=False,
        help="Packed records to train on (repeatable; same as FILE arguments, read first).")] = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", metavar="DIR", show_default=False,
        help="Folder for checkpoints (DIR/checkpoint-STEP) and the final model (DIR itself).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="PATH", show_default=False,
        help="Model to fine-tune: a transformers folder or .gguf file (default: the embedded "
        "default model).")] = None,
    init_from: Annotated[Optional[str], typer.Option(
        "--init-from", metavar="CKPT", show_default=False,
        help="Start from these weights (a previous stage's DIR or checkpoint) with a fresh "
        "optimizer and schedule; replaces --model.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the data.")] = 6,
    global_batch_size: Annotated[int, typer.Option(
        "--global-batch-size", min=1,
        help="Packed sequences per optimizer step, all ranks together (one sequence per "
        "micro-batch; the rest is gradient accumulation).")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-5,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Learning rate at the last step.")] = 1e-5,
    warmup_ratio: Annotated[float, typer.Option(
        "--warmup-ratio", help="Fraction of all steps spent in linear warmup.")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.1,
    adam_beta1: Annotated[float, typer.Option("--adam-beta1", help="AdamW beta1.")] = 0.9,
    adam_beta2: Annotated[float, typer.Option("--adam-beta2", help="AdamW beta2.")] = 0.95,
    adam_eps: Annotated[float, typer.Option("--adam-eps", help="AdamW epsilon.")] = 1e-8,
    grad_clip: Annotated[float, typer.Option(
        "--grad-clip", help="Clip the global gradient norm to this (0: no clipping).")] = 1.0,
    dtype: Annotated[common.choice(*DTYPE_CHOICES), typer.Option(
        "--dtype", metavar="|".join(DTYPE_CHOICES),
        help="Compute dtype: auto is bf16 where the hardware runs it fast, else fp32.")] = "auto",
    attn: Annotated[common.choice(*ATTN_CHOICES), typer.Option(
        "--attn", metavar="|".join(ATTN_CHOICES),
        help="Attention backend; auto is flash_attention_2 on a GPU that has it, else segmented "
        "(causal sdpa per packed sample). sdpa and eager use a block-diagonal mask. Packed "
        "samples are isolated on every one.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option(
        "--gradient-checkpointing", help="Recompute activations in backward to save memory.")] = False,
    liger: Annotated[bool, typer.Option(
        "--liger", help="Liger kernels: fused linear cross-entropy, RMSNorm, RoPE, SwiGLU (CUDA only).")] = False,
    deepspeed: Annotated[Optional[str], typer.Option(
        "--deepspeed", metavar="CONFIG", show_default=False,
        help="DeepSpeed JSON config (e.g. configs/zero3.json); run under the deepspeed or "
        "torchrun launcher.")] = None,
    save_every: Annotated[int, typer.Option(
        "--save-every", min=0, metavar="STEPS",
        help="Also checkpoint every STEPS optimizer steps (0: only at epoch ends).")] = 0,
    keep_checkpoints: Annotated[int, typer.Option(
        "--keep-checkpoints", min=0, metavar="N",
        help="Keep only the N most recent checkpoints in --out (0: keep all). A checkpoint holds "
        "the optimizer state, about 3x the model's size in fp32.")] = 0,
    delete_checkpoints: Annotated[bool, typer.Option(
        "--delete-checkpoints", help="Once the final model is written, delete every checkpoint in "
        "--out (they serve only --resume of an unfinished run).")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue exactly from the latest checkpoint in --out.")] = False,
    stop_after: Annotated[Optional[int], typer.Option(
        "--stop-after", min=1, metavar="STEPS", show_default=False,
        help="Stop after STEPS optimizer steps in total, with a checkpoint (the schedule still "
        "spans the whole run; continue with --resume).")] = None,
    shuffle: Annotated[bool, typer.Option(
        "--shuffle/--no-shuffle", help="Reshuffle packed sequences each epoch (from --seed).")] = True,
    loss_chunk_size: Annotated[int, typer.Option(
        "--loss-chunk-size", min=1, metavar="TOKENS",
        help="Tokens projected to the vocabulary at once in the loss (peak extra memory: TOKENS x "
        "vocabulary fp32 logits).")] = loss_core.DEFAULT_CHUNK_SIZE,
    objective: Annotated[common.choice(*objectives.OBJECTIVES), typer.Option(
        "--objective", metavar="|".join(objectives.OBJECTIVES),
        help="Per-token loss. sft: cross-entropy on the response tokens. reverse-kl: on-policy "
        "distillation on samples of the student scored by the teacher (packed records with "
        "sampler_logprobs and teacher_logprobs): -sum_t A_t r_t over the sampled tokens, with "
        "advantage A_t = log pi_teacher - log pi_sampler held constant and importance ratio "
        "r_t = pi_theta / pi_sampler clipped PPO-style to [1 - clip-low, 1 + clip-high]; "
        "metrics add advantage, reverse_kl and clip_fraction. With --liger, Liger's kernels run "
        "the model and dasd's chunked loss computes reverse-kl.")] = "sft",
    clip_low: Annotated[float, typer.Option(
        "--clip-low", min=0.0, metavar="EPS",
        help="reverse-kl: the importance ratio's floor is 1 - EPS (a token whose ratio fell "
        "below it while its advantage is negative gives no gradient).")] = objectives.DEFAULT_CLIP_LOW,
    clip_high: Annotated[float, typer.Option(
        "--clip-high", min=0.0, metavar="EPS",
        help="reverse-kl: the importance ratio's ceiling is 1 + EPS (a token whose ratio rose "
        "above it while its advantage is positive gives no gradient).")] = objectives.DEFAULT_CLIP_HIGH,
    router_aux_loss_coef: Annotated[Optional[float], typer.Option(
        "--router-aux-loss-coef", metavar="X", show_default=False,
        help="Mixture-of-Experts students: weight of the router load-balancing loss added to the "
        "LM loss (default: the model config's router_aux_loss_coef, e.g. 0.001 for Qwen3-MoE; 0 "
        "logs it without training on it).")] = None,
    token_store: Annotated[Optional[str], typer.Option(
        "--token-store", metavar="DIR", show_default=False,
        help="Where packed files are converted once into a memory-mappable token store, "
        "reused by later runs, --resume and every rank (default: $DASD_TOKEN_STORE, else "
        "$DASD_CACHE/tokens; put it on shared storage for several nodes). Stdin is converted "
        "into a temporary store.")] = None,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", metavar="PATH", show_default=False,
        help="Write a plot of loss and learning rate against step (e.g. loss.png).")] = None,
    tensorboard: Annotated[Optional[str], typer.Option(
        "--tensorboard", metavar="DIR", show_default=False,
        help="Also write each step's metrics to DIR as TensorBoard scalars, under the metrics "
        "records' names, as the run goes (needs pip install 'dasd[tensorboard]'). --resume "
        "continues the curves in DIR; a new run in DIR starts them afresh.")] = None,
    local_rank: Annotated[Optional[int], typer.Option(
        "--local_rank", "--local-rank", hidden=True,
        help="Set by the deepspeed launcher (LOCAL_RANK is read from the environment).")] = None,
) -> None:
    """Fine-tune a causal LM on packed sequences; write metrics records per step.

    Each packed sample attends only to itself; the loss is the mean over all target
    tokens of a global batch. Checkpoints go to OUT/checkpoint-STEP, the final model
    (with its tokenizer) to OUT. The metrics are plain JSONL, also on a pipe; compressed
    only with -o FILE.zst/.gz or --compress zstd/gzip.
    """
    from dasd_cli.training import distributed as dist_util

    ranks = dist_util.ranks_from_env()
    files = (data or []) + (shared.inputs or [])
    shared.inputs = files or None
    if not ranks.is_main:  # rank 0 alone writes metrics, stats and the summary
        shared.output, shared.stats, shared.quiet = None, None, True
    if shared.compress == "auto" and shared.output in (None, "-"):
        shared.compress = "none"  # a small log for people and plotting tools, not a data stream
    dist_util.claim_stdout(ranks)

    def body(session: common.Session) -> None:
        with dist_util.library_prints(shared.debug):
            _body(session)

    def _body(session: common.Session) -> None:
        session.kept_word = "trained on"
        if out is None:
            raise UsageError("--out DIR is required", hint="where checkpoints and the final model go")
        if tensorboard is not None:
            from dasd_cli.training.tensorboard_log import check

            check(tensorboard)
        if ranks.world_size > 1 and not files:
            raise UsageError("a distributed run reads its data from files, not stdin",
                             hint="pass --data PATH (every rank reads it)")
        if init_from and resume:
            raise UsageError("--init-from starts a new stage; --resume continues one: pick one")
        from dasd_cli.training.data import default_root
        from dasd_cli.training.recipe import TrainConfig
        from dasd_cli.training.run import run_training

        config = session.settings = TrainConfig(
            out=Path(out), model=model, init_from=init_from, epochs=epochs,
            global_batch_size=global_batch_size, lr=lr, min_lr=min_lr, warmup_ratio=warmup_ratio,
            weight_decay=weight_decay, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
            adam_eps=adam_eps, grad_clip=grad_clip, dtype=dtype, attn=attn,
            gradient_checkpointing=gradient_checkpointing, liger=liger, deepspeed=deepspeed,
            save_every=save_every, keep_checkpoints=keep_checkpoints,
            delete_checkpoints=delete_checkpoints, resume=resume, stop_after=stop_after,
            seed=shared.seed, shuffle=shuffle, loss_chunk_size=loss_chunk_size,
            router_aux_loss_coef=router_aux_loss_coef, objective=objective, clip_low=clip_low,
            clip_high=clip_high, debug=shared.debug, data=files or None,
            token_store=token_store, plot=plot, tensorboard=tensorboard)
        run_training(session, config, ranks, config.data,
                     Path(config.token_store) if config.token_store else default_root(), config.plot,
                     config.tensorboard)

    common.run_command("train", shared, body)
