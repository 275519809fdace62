"""What a run tells its user: progress lines, TensorBoard scalars, validation samples.

TensorBoard logs go to `MODEL_DIR/train/` (per phase: loss, learning rate,
gradient norm, ..., `skipped_steps`, `examples_per_s`) and `MODEL_DIR/val/`
(CIDEr-D, a markdown table of sample captions, an attention picture).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfcap import inference, viz


class Logs:
    """TensorBoard writers and the progress clock of a run.

    Args:
        logdir: `dir(name)` -> the directory of TensorBoard run `name`
            (`tfcap.training.state.RunState.dir`).
        batch_size: images per global step (for images/s).
        steps_per_epoch: for the epoch shown in progress lines.
    """

    def __init__(self, logdir, batch_size: int, steps_per_epoch: int):
        self.logdir, self.batch_size, self.steps_per_epoch = logdir, batch_size, steps_per_epoch
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._clock = (time.time(), None)

    def writer(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(self.logdir(name))
        return self._writers[name]

    def scalars(self, name: str, scalars: dict[str, float], step: int) -> None:
        with self.writer(name).as_default(step=step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)

    def start(self, step: int) -> None:
        """Starts the images/s clock at a phase's `step`."""
        self._clock = (time.time(), step)

    def progress(
        self, phase: str, step: int, total: int, scalars: dict[str, float], global_step: int
    ) -> None:
        """A progress line and TensorBoard scalars (`PHASE/NAME`) at the phase's `step`."""
        now = time.time()
        then, then_step = self._clock
        self._clock = (now, step)
        rate = (step - then_step) / max(now - then, 1e-9) if then_step is not None else 0.0
        eta = (total - step) / rate if rate > 0 else float("nan")
        images = rate * self.batch_size
        self.scalars(
            "train",
            {f"{phase}/{k}": v for k, v in {**scalars, "examples_per_s": images}.items()},
            global_step,
        )
        parts = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        logging.info(
            "%s step %d/%d (epoch %.2f) %s | %.1f img/s | ETA %s",
            phase,
            step,
            total,
            step / self.steps_per_epoch,
            parts,
            images,
            format_seconds(eta),
        )

    def validation(
        self,
        phase: str,
        global_step: int,
        score: float,
        decoded: inference.Decoded,
        refs: dict[int, list[str]],
        count: int = 3,
    ) -> None:
        """Val CIDEr-D, `count` captions beside a reference, and the first one's attention."""
        self.scalars("val", {f"{phase}/CIDEr": score}, global_step)
        logging.info(
            "%s (global step %d): val CIDEr-D %.4f (%d images)",
            phase,
            global_step,
            score,
            len(decoded.captions),
        )
        rows = [
            f"| {i} | {c} | {refs[int(i)][0]} |"
            for i, c in zip(decoded.image_ids[:count], decoded.captions[:count], strict=True)
        ]
        table = "| image | generated | a reference |\n|---|---|---|\n" + "\n".join(rows)
        picture = viz.attention_grid(
            None,
            decoded.boxes[0],
            decoded.captions[0].split(),
            decoded.attention[0],
            region_mask=decoded.region_mask[0],
            title=decoded.captions[0],
        )
        with self.writer("val").as_default(step=global_step):
            tf.summary.text("samples", table)
            tf.summary.image("attention", picture[None], max_outputs=1)


def format_seconds(seconds: float) -> str:
    """`1h02m` or `3m07s`; `?` when unknown.

    >>> format_seconds(187), format_seconds(3725), format_seconds(float("nan"))
    ('3m07s', '1h02m', '?')
    """
    if not np.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
