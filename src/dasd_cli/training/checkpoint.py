"""Checkpoint folders of `dasd train`.

``OUT/checkpoint-<step>/`` holds everything to continue exactly:
- the weights in transformers format (``model.safetensors`` + ``config.json``) and the
  tokenizer, so any checkpoint is also a usable ``--model`` / ``--init-from``;
- ``optimizer.pt`` (AdamW moments), ``scheduler.pt`` (the LR scheduler's step);
- ``trainer_state.json``: the step done, the data position and a fingerprint of the run
  (data size, batch, epochs, seed) that a resume must match;
- ``rng.pt``: python, numpy and torch RNG states.
Under DeepSpeed, optimizer and scheduler live in ``deepspeed/`` (the engine's own
format, one shard per rank). A folder appears under its final name only when complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from dasd_cli.errors import DasdError, UsageError

STATE_FILE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(out: Path, step: int) -> Path:
    """Where the checkpoint after ``step`` optimizer steps lives."""
    return out / f"checkpoint-{step}"


def complete_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Every complete checkpoint in ``out`` as (step, folder), oldest first."""
    if not out.is_dir():
        return []
    return sorted((int(m.group(1)), child) for child in out.iterdir()
                  if (m := _CHECKPOINT_RE.match(child.name)) and (child / STATE_FILE).is_file())


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``out``, or None."""
    found = complete_checkpoints(out)
    return found[-1][1] if found else None


def prune(out: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recent complete checkpoints (keep 0: delete none)."""
    return _delete(complete_checkpoints(out)[:-keep] if keep > 0 else [])


def remove_all(out: Path) -> list[Path]:
    """Delete every complete checkpoint (once the final model is written they only serve --resume)."""
    return _delete(complete_checkpoints(out))


def _delete(found: list[tuple[int, Path]]) -> list[Path]:
    for _step, folder in found:
        shutil.rmtree(folder)
    return [folder for _step, folder in found]


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_path(final: Path) -> Path:
    """The temp folder beside ``final`` where it is written before :func:`publish`."""
    return final.parent / f".{final.name}.partial"


def staging_dir(final: Path) -> Path:
    """A fresh (empty) :func:`staging_path` folder."""
    tmp = staging_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path) -> None:
    """Give a completely written folder its final name (replacing an older one)."""
    if final.exists():
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DasdError(f"unreadable checkpoint state: {exc}", source=str(folder / STATE_FILE)) from None


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """A resume must see the same data and batch layout, or it would not continue exactly."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise UsageError(f"--resume: this run differs from the checkpoint ({'; '.join(diffs)})",
                         hint=f"resume with the same data and flags, or start a new --out (checkpoint {folder})")
