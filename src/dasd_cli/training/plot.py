"""``--plot PATH``: loss and learning rate against the optimizer step."""

from __future__ import annotations

import io as _bytes_io
from typing import Any

from dasd_cli import io


def plot_metrics(path: str, metrics: list[dict[str, Any]], title: str = "dasd train") -> None:
    """Write a PNG (or any matplotlib format, by extension) with loss and lr per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    loss_axis.plot(steps, [m["loss"] for m in metrics], color="tab:blue", label="loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss (nats per target token)", color="tab:blue")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(steps, [m["lr"] for m in metrics], color="tab:orange", label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    loss_axis.set_title(title)
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else "png"
    fig.savefig(buffer, format=fmt)
    plt.close(fig)
    io.write_text_atomic(path, buffer.getvalue())
