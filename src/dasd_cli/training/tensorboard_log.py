"""``--tensorboard DIR``: the step metrics as TensorBoard scalars, written as the run goes.

Every number in a metrics record becomes a scalar of the same name at the record's
optimizer step: loss, lr, grad_norm, tokens, target_tokens, tokens_per_s, epoch, and on
Mixture-of-Experts students aux_loss and aux_loss_coef. Only rank 0 writes.

A run opens its event file with a purge marker at its first step, so TensorBoard's
readers drop whatever DIR holds from that step on: ``--resume`` continues the curves, the
steps an interrupted run logged after its last checkpoint are replaced instead of drawn
twice, and a new run in the same DIR starts its curves afresh. Scalars are float32, as
TensorBoard stores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dasd_cli.errors import UsageError

INSTALL = "pip install 'dasd[tensorboard]'"


def check(folder: str) -> None:
    """Fail before any work: the package is missing, or DIR cannot be a folder."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--tensorboard {folder}: exists and is not a folder")


class ScalarLog:
    """One run's event file in ``folder``; ``start_step`` is the last step already done."""

    def __init__(self, folder: str, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder, purge_step=start_step + 1)

    def write(self, metrics: dict[str, Any]) -> None:
        """Each numeric field at ``metrics["step"]``; flushed, so a live view sees the step."""
        step = int(metrics["step"])
        for name, value in metrics.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # tokens_per_s is None when a step took no measurable time
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
