"""Numerical faults: skipped updates counted, a run stopped after K in a row, and injected faults.

A step whose loss or gradient is NaN or Inf makes no update
(`tfcap.training.updates.apply_if_finite`) and reports `skipped`. The guard
counts it (in the checkpoint's `skipped_steps`, TensorBoard and the progress
line) and raises `NonFiniteError`, without saving, after
`max_consecutive` skipped steps in a row; the same command then resumes from
the last good checkpoint.

`FaultInjector` is the testing aid behind `--inject_nonfinite_steps`: the
steps multiply their loss by `multiplier`, which it sets to NaN or Inf for the
chosen global steps, so the real guard sees the fault.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a NaN or Inf loss or gradient."""


class NonFiniteGuard:
    """Counts skipped updates into `skipped_steps` (a checkpointed variable)."""

    def __init__(self, skipped_steps: tf.Variable, max_consecutive: int):
        self.skipped_steps, self.max_consecutive = skipped_steps, max_consecutive
        self.streak = 0

    def check(self, phase: str, skipped: float, global_step: int, last_checkpoint) -> bool:
        """Counts the step numbered `global_step` (1-based) when it was `skipped`;
        raises `NonFiniteError` after `max_consecutive` in a row. Returns whether
        it was skipped. `last_checkpoint()` names the checkpoint to resume from."""
        if not skipped:
            self.streak = 0
            return False
        self.streak += 1
        self.skipped_steps.assign_add(1)
        total = int(self.skipped_steps.numpy())
        logging.warning(
            "%s global step %d: non-finite loss or gradient, update skipped "
            "(%d in a row, %d in total)",
            phase,
            global_step,
            self.streak,
            total,
        )
        if self.streak >= self.max_consecutive:
            first = global_step - self.streak + 1
            raise NonFiniteError(
                f"{phase}: {self.streak} steps in a row (global steps {first}..{global_step}) "
                "had a NaN or Inf loss or gradient; none was applied. Stopped without "
                f"saving: the last good checkpoint is {last_checkpoint()}. "
                "Lower the learning rate, clip gradients (--grad_clip) or check the data, "
                "then run the same command to resume from it "
                f"(--max_consecutive_nonfinite={self.max_consecutive})."
            )
        return True


class FaultInjector:
    """The steps' loss multiplier (not checkpointed): 1, or NaN/Inf at chosen global steps."""

    def __init__(self, faults: dict[int, float]):
        self.faults = dict(faults)
        self.multiplier = tf.Variable(1.0, trainable=False, name="loss_multiplier")

    def before(self, global_step: int) -> None:
        """Sets the multiplier for the step that will be global step `global_step` (1-based)."""
        value = self.faults.get(global_step, 1.0)
        if value != 1.0 or float(self.multiplier.numpy()) != 1.0:
            self.multiplier.assign(value)
