"""Launch-time concerns: ranks, process groups, DeepSpeed config and engine, stdout.

`dasd train` runs unchanged as one process or under ``torchrun``/``deepspeed``
(which set RANK, WORLD_SIZE, LOCAL_RANK). DeepSpeed logs to stdout by default; stdout
carries metrics records only, so library output is pointed at stderr before DeepSpeed
is imported, and only rank 0 writes records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from dasd_cli.errors import UsageError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """The rank layout a launcher set (one process when none did)."""
    env = os.environ
    return Ranks(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def claim_stdout(ranks: Ranks) -> None:
    """Keep stdout for records: library prints land on stderr (see io.claim_stdout).

    Rank 0 writes the metrics; other ranks discard theirs, so a launcher's shared stdout
    holds one copy. Does nothing where stdout is not a real file descriptor (test runners)
    except discarding the other ranks' records.
    """
    from dasd_cli import io

    if ranks.is_main:
        io.claim_stdout()
    else:
        io.discard_records()


@contextlib.contextmanager
def library_prints(debug: bool) -> Iterator[None]:
    """After the record writer holds its stream: ``print`` from libraries (DeepSpeed's
    "... built successfully" on every rank) goes to stderr with ``--debug``, else nowhere."""
    saved = sys.stdout
    with contextlib.ExitStack() as stack:
        sys.stdout = sys.stderr if debug else stack.enter_context(open(os.devnull, "w"))
        try:
            yield
        finally:
            sys.stdout = saved


def route_deepspeed_logging() -> None:
    """DeepSpeed's logger ("DeepSpeed") writes to sys.stdout; point it at stderr."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _cuda() else "cpu")
    for name in ("DeepSpeed", "deepspeed"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.stderr:
                handler.setStream(sys.stderr)
        logger.setLevel(logging.WARNING)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def init_process_group(ranks: Ranks) -> None:
    """NCCL on GPUs, gloo on CPU; a no-op for one process."""
    if ranks.world_size == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend=backend)


def all_reduce_sum(values: list[float], ranks: Ranks) -> list[float]:
    """Sum floats over ranks (metrics only; cheap)."""
    if ranks.world_size == 1:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device="cuda" if _cuda() else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def load_deepspeed_config(path: str, *, micro_batch: int, accumulation: int, world_size: int,
                          bf16: bool, grad_clip: float) -> dict[str, Any]:
    """Read a DeepSpeed JSON config and fill its ``"auto"`` values from the flags."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--deepspeed {path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--deepspeed {path}: not valid JSON: {exc}") from None
    fill = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        "gradient_clipping": grad_clip,
    }
    for key, value in fill.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif key != "gradient_clipping" and config[key] != value:
            raise UsageError(f"--deepspeed {path}: {key} is {config[key]} but the flags need {value}",
                             hint='set it to "auto" and use --global-batch-size')
    for section, enabled in (("bf16", bf16), ("fp16", False)):
        block = config.setdefault(section, {})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = enabled
    # dasd passes its own AdamW and schedule, so no "optimizer"/"scheduler" sections
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UsageError(f"--deepspeed {path}: remove the {section!r} section",
                             hint="dasd sets AdamW and the warmup+cosine schedule from its flags")
    config["zero_allow_untested_optimizer"] = True  # torch AdamW, as the client optimizer
    return config


def deepspeed_engine(model: Any, optimizer: Any, scheduler: Any, config: dict[str, Any]) -> Any:
    """Wrap model, optimizer and scheduler in a DeepSpeed engine."""
    route_deepspeed_logging()
    try:
        import deepspeed
    except ImportError:
        raise UsageError("--deepspeed needs the deepspeed package",
                         hint="DS_BUILD_OPS=0 pip install deepspeed") from None
    route_deepspeed_logging()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config)
    return engine


def begin_micro_batch(engine: Any) -> None:
    """What ``engine.forward`` does before a forward pass, for a forward that calls the
    wrapped module directly (dasd runs the decoder body and the chunked loss itself).

    ZeRO's optimizer counts micro-batches at this point: the first micro-batch of a step
    overwrites the gradient partitions, later ones add to them. Without it every
    micro-batch would count as the first, and a step would keep only the last one's
    gradients.
    """
    clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
    if clear is not None:
        clear()


def set_leaf_modules(model: Any, classes: list[type]) -> list[Any]:
    """Mark modules of these classes as ZeRO-3 leaves (gathered whole when entered).

    Must run before ``deepspeed.initialize``, which installs the parameter hooks.
    """
    route_deepspeed_logging()
    from deepspeed.utils import set_z3_leaf_modules

    return set_z3_leaf_modules(model, classes)
