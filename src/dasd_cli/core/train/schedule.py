"""Learning-rate schedule: linear warmup, then cosine decay to a floor (the paper's).

Steps count optimizer updates from 1 to ``total_steps``. With W warmup steps:
- step s <= W:  lr = peak * s / W           (step 1 already learns; no wasted step at 0)
- step s >  W:  lr = min + (peak - min) * (1 + cos(pi * (s - W) / (total - W))) / 2
so the last step runs at exactly ``min_lr``. The total is known before step 1 (it comes
from the data size, epochs and global batch), so the curve always ends where it should.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A warmup + cosine-to-min schedule over a known number of optimizer steps."""

    total_steps: int  # optimizer updates in the whole run (all epochs)
    peak_lr: float = 5e-5  # reached at the end of warmup
    min_lr: float = 1e-5  # reached at the last step
    warmup_ratio: float = 0.1  # fraction of total_steps spent warming up

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError("total_steps must be at least 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.min_lr > self.peak_lr:
            raise ValueError("min_lr must not exceed the peak lr")

    @property
    def warmup_steps(self) -> int:
        """Warmup length in steps, rounded up (at least 1 when the ratio is positive)."""
        return math.ceil(self.warmup_ratio * self.total_steps)

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1-based)."""
        if not 1 <= step <= self.total_steps:
            raise ValueError(f"step {step} outside 1..{self.total_steps}")
        warmup = self.warmup_steps
        if step <= warmup:
            return self.peak_lr * step / warmup
        decay_steps = self.total_steps - warmup
        progress = (step - warmup) / decay_steps
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def curve(self) -> list[float]:
        """The learning rate at every step, 1..total_steps."""
        return [self.lr(step) for step in range(1, self.total_steps + 1)]
