"""Histograms of response-level probabilities (how a user picks sampling temperatures).

METHOD.md section 1: the teacher's geometric-mean token probability per response is
sharper at T=0.6 than at T=1.0. ``--plot FILE.png`` draws p_teacher per teacher
temperature, and p_student, side by side.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable


def plot_histograms(points: Iterable[tuple[float | None, float | None, float | None]], path: str) -> None:
    """Write a PNG of p_teacher histograms per temperature and of p_student.

    ``points`` are (temperature or None, p_teacher, p_student) per response. The file is
    written atomically (temp file in the same folder, then renamed).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    by_temperature: dict[str, list[float]] = defaultdict(list)
    student: list[float] = []
    for temperature, p_teacher, p_student in points:
        label = "T=?" if temperature is None else f"T={temperature:g}"
        if p_teacher is not None:
            by_temperature[label].append(p_teacher)
        if p_student is not None:
            student.append(p_student)
    bins = [i / 40 for i in range(41)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for label in sorted(by_temperature):
        values = by_temperature[label]
        left.hist(values, bins=bins, alpha=0.55, label=f"{label} (n={len(values)})")
    left.set(title="teacher: response p_teacher", xlabel="geometric-mean token probability",
             ylabel="responses", xlim=(0, 1))
    if by_temperature:
        left.legend()
    right.hist(student, bins=bins, color="tab:gray")
    right.set(title=f"student: response p_student (n={len(student)})",
              xlabel="geometric-mean token probability", xlim=(0, 1))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plot-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
