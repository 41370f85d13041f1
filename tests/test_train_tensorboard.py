"""`dasd train --tensorboard DIR`: the metrics records as TensorBoard scalars, read back
with TensorBoard's own reader; a resumed run continues the curves without doubled steps."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_samples, make_tiny_model, packed_records, parse_records, run_dasd, write_file
from moe_models import save_with_tokenizer, tiny_model

pytest.importorskip("tensorboard")


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``folder`` as TensorBoard shows it: (step, value) in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    reader.Reload()
    return {tag: [(event.step, event.value) for event in reader.Scalars(tag)]
            for tag in reader.Tags()["scalars"]}


def expected(metrics: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The metrics records' numbers per name, as float32 (TensorBoard's scalar precision)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in metrics:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                series.setdefault(name, []).append((record["step"], float(np.float32(value))))
    return series


def test_scalars_equal_the_metrics_records_with_the_moe_aux_loss(tmp_path):
    model = save_with_tokenizer(tiny_model("qwen3_moe"), tmp_path / "moe")
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(6), 2))
    result = run_dasd(["train", "--model", str(model), "--out", str(tmp_path / "o"), "--epochs", "2",
                       "--global-batch-size", "1", "--dtype", "fp32", "--compress", "none",
                       "--router-aux-loss-coef", "0.01", "--tensorboard", str(tmp_path / "tb"), str(data)])
    assert result.returncode == 0, result.stderr.decode()
    metrics = parse_records(result.stdout)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    scalars = read_scalars(tmp_path / "tb")
    assert {"loss", "lr", "grad_norm", "aux_loss", "tokens_per_s", "target_tokens"} <= set(scalars)
    assert scalars == expected(metrics)


def test_resume_continues_the_curves_and_replaces_steps_logged_after_the_checkpoint(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(8, seed=3), 2))
    args = ["train", "--model", str(model), "--out", str(tmp_path / "o"), "--epochs", "2",
            "--global-batch-size", "2", "--dtype", "fp32", "--compress", "none",
            "--tensorboard", str(tmp_path / "tb"), str(data)]
    first = run_dasd(args + ["--stop-after", "3"])  # checkpoints at steps 2 (epoch end) and 3
    assert first.returncode == 0, first.stderr.decode()
    # as if the run had died after logging step 3 but before its checkpoint was written
    shutil.rmtree(tmp_path / "o" / "checkpoint-3")
    second = run_dasd(args + ["--resume"])
    assert second.returncode == 0, second.stderr.decode()
    before, after = parse_records(first.stdout), parse_records(second.stdout)
    assert [m["step"] for m in before] == [1, 2, 3] and [m["step"] for m in after] == [3, 4]
    scalars = read_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4]
    # steps 1-2 from the first run, 3-4 from the resumed one (tokens/s tells the runs apart)
    assert scalars == expected(before[:2] + after)
    assert len(list((tmp_path / "tb").iterdir())) == 2  # one event file per run, nothing else


def test_without_the_package_the_flag_is_a_usage_error_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(2), 1))
    code, out, err = cli(["train", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"),
                          "--tensorboard", str(tmp_path / "tb"), str(data)])
    assert code == 2 and out == b""
    assert err.strip() == ("dasd train: error: --tensorboard needs the tensorboard package: "
                           "pip install 'dasd[tensorboard]'")
    assert not (tmp_path / "tb").exists() and not (tmp_path / "o").exists()


def test_a_file_in_the_way_is_a_usage_error(cli, tmp_path):
    data = write_file(tmp_path / "p.jsonl", packed_records(make_samples(2), 1))
    (tmp_path / "tb").write_text("")
    code, _, err = cli(["train", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"),
                        "--tensorboard", str(tmp_path / "tb"), str(data)])
    assert code == 2 and f"--tensorboard {tmp_path / 'tb'}: exists and is not a folder" in err
