"""One `dasd train` run: open the packed data, check it fits the model, train, report.

The command checks its flags and builds the :class:`~dasd_cli.training.recipe.TrainConfig`;
this runs it through the command's session (its output writer gets one metrics record
per optimizer step; its tally gets the run's summary numbers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_training(session: Any, config: Any, ranks: Any, files: list[str] | None,
                 store_root: Path, plot: str | None, tensorboard: str | None = None) -> None:
    """Train ``config`` on ``files`` (None: stdin) through ``session``.

    ``plot``: a PNG of loss and lr at the end; ``tensorboard``: a folder that gets every
    step's metrics as TensorBoard scalars as they come (rank 0 writes both).
    """
    from dasd_cli import io
    from dasd_cli.core.chat import tokenizer_fingerprint
    from dasd_cli.training.data import open_sequences
    from dasd_cli.training.recipe import Trainer

    trainer = Trainer(config, ranks)
    sequences = board = None
    try:
        trainer.setup_model()
        started = time.perf_counter()
        sequences = open_sequences(session, files, store_root)
        session.tally.extra["data_seconds"] = round(time.perf_counter() - started, 3)
        sequences.check_model(trainer.vocab_size, tokenizer_fingerprint(trainer.tokenizer))
        if sequences.meta.get("unmarked") and ranks.is_main:
            io.say(f"dasd train: warning: {sequences.meta['unmarked']} packed records carry no "
                   "tokenizer fingerprint (packed by an older dasd); the tokenizer is not checked")
        if config.objective == "sft" and sequences.has_streams and ranks.is_main:
            io.say("dasd train: warning: the data carries on-policy log-probs (sampler_logprobs, "
                   "teacher_logprobs); --objective sft ignores them (--objective reverse-kl uses them)")
        if ranks.is_main:
            config.out.mkdir(parents=True, exist_ok=True)
        trainer.setup_data(sequences)
        if tensorboard and ranks.is_main:
            from dasd_cli.training.tensorboard_log import ScalarLog

            board = ScalarLog(tensorboard, trainer.start_step)
        history = _train(session, trainer, board)
        session.tally.extra.update({"steps": trainer.total_steps, "trained_steps": len(history),
                                    "final_loss": history[-1]["loss"] if history else None,
                                    "out": str(config.out)})
        if plot and ranks.is_main and history:
            from dasd_cli.training.plot import plot_metrics

            plot_metrics(plot, history, title=f"dasd train: {config.out}")
    finally:
        if board is not None:
            board.close()
        trainer.close()
        if sequences is not None:
            sequences.close()


def _train(session: Any, trainer: Any, board: Any) -> list[dict[str, Any]]:
    """Run the loop: one metrics record per step to the output (and ``board``), progress on stderr."""
    from dasd_cli import io

    history: list[dict[str, Any]] = []
    bar = io.progress(session.common.quiet)
    remaining = trainer.total_steps - trainer.start_step
    if bar is None:
        for metrics in trainer.train():
            _write(session, board, metrics)
            history.append(metrics)
        return history
    with bar:
        task = bar.add_task("train", total=remaining, rate="")
        for metrics in trainer.train():
            _write(session, board, metrics)
            history.append(metrics)
            bar.update(task, advance=1, rate=f"loss {metrics['loss']:.4f} {metrics['tokens_per_s']:.0f} tok/s")
    return history


def _write(session: Any, board: Any, metrics: dict[str, Any]) -> None:
    session.writer.write(metrics)
    session.writer.flush()  # a metrics line per step reaches the pipe promptly
    if board is not None:
        board.write(metrics)
