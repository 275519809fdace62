"""The run's state: its directories, checkpoints and step counters.

    MODEL_DIR/ckpt/         latest: every trackable (model, optimizers, discriminator,
                            counters), numbered by the global step
    MODEL_DIR/best/         the model at the best validation CIDEr-D (+ best.json)
    MODEL_DIR/phase_NAME/   the model at the end of phase NAME, written when it ends

Counters (all in the checkpoint): the global step (the sum of the xe, scst
and gan steps; TensorBoard and checkpoint numbers), one step counter per
phase (`COUNTERS`; the discriminator's pre-training has its own and does not
advance the global step), and the skipped-update count.

Resume is exact: the latest checkpoint holds every variable and counter, and
the input resumes at the counter (`tfcap.training.input`). When the newest
checkpoint cannot be read the one before it is used. In a multi-worker job
worker 0 (the chief) writes; the others write to `MODEL_DIR/.workerN/`,
restore from the chief's `MODEL_DIR/ckpt` (one directory every worker sees)
and check that they restored the same step.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import tensorflow as tf
from absl import logging

from tfcap import checkpoints, distribute

PHASES = ("xe", "scst", "gan")
# counter name -> its name in the checkpoint (kept from the first checkpoints written)
COUNTERS = {"xe": "xe_step", "scst": "scst_step", "gan": "gan_step", "gan_d": "d_pretrain"}


class RunState:
    """Directories, checkpoint managers and counters of one run (module docstring).

    Args:
        strategy: the run's tf.distribute strategy (variables are made in its scope).
        model: the captioner being trained.
        model_dir: MODEL_DIR.
        keep_checkpoints: latest checkpoints kept.
    """

    def __init__(self, strategy, model, model_dir: str, keep_checkpoints: int = 3):
        self.strategy, self.model, self.model_dir = strategy, model, model_dir
        self.keep_checkpoints = keep_checkpoints
        self.chief = distribute.is_chief(strategy)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.counters = {
                name: tf.Variable(0, dtype=tf.int64, trainable=False, name=key)
                for name, key in COUNTERS.items()
            }
            self.skipped_steps = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_steps"
            )
        self.trackables: dict[str, Any] = {"model": model, "step": self.step}
        self.trackables.update({COUNTERS[k]: v for k, v in self.counters.items()})
        self.trackables["skipped_steps"] = self.skipped_steps
        self.latest = self.best = None
        self._best_score = float("-inf")

    # -- directories ---------------------------------------------------------
    def dir(self, sub: str) -> str:
        """MODEL_DIR/sub on the chief, MODEL_DIR/.workerN/sub on the other workers."""
        if self.chief:
            return os.path.join(self.model_dir, sub)
        worker = self.strategy.cluster_resolver.task_id
        return os.path.join(self.model_dir, f".worker{worker}", sub)

    def _manager(self, sub: str, keep: int, **objects) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(tf.train.Checkpoint(**objects), self.dir(sub), keep)

    # -- counters ------------------------------------------------------------
    @property
    def global_step(self) -> int:
        return int(self.step.numpy())

    @property
    def skipped(self) -> int:
        """Updates skipped so far as not finite (`tfcap.training.guard`)."""
        return int(self.skipped_steps.numpy())

    def counter(self, name: str) -> int:
        """The steps done by counter `name` (`COUNTERS`)."""
        return int(self.counters[name].numpy())

    def advance(self, name: str, global_step: bool = True) -> None:
        """One step of counter `name`, and of the global step unless `global_step` is False."""
        self.counters[name].assign_add(1)
        if global_step:
            self.step.assign_add(1)

    def later_phases_started(self, phase: str) -> list[str]:
        """The phases after `phase` (in `PHASES` order) that have made a generator step."""
        return [p for p in PHASES[PHASES.index(phase) + 1 :] if self.counter(p) > 0]

    def phase_end_step(self, phase: str) -> int:
        """The global step at which `phase` ended (or will end), given the counters."""
        return sum(self.counter(p) for p in PHASES[: PHASES.index(phase) + 1])

    # -- checkpoints ---------------------------------------------------------
    def restore(self, **extra) -> int:
        """Adds `extra` trackables (optimizers, discriminator) and restores the latest
        checkpoint; objects it does not hold yet (a later phase's) keep their values.
        Returns the global step."""
        self.trackables.update(extra)
        self.latest = self._manager(checkpoints.LATEST, self.keep_checkpoints, **self.trackables)
        self.best = self._manager(checkpoints.BEST, 1, model=self.model, step=self.step)
        self._best_score = _read_best_score(self.model_dir)
        self._restore_newest_readable(self.latest.checkpoint)
        self._check_same_step()
        return self.global_step

    def _restore_newest_readable(self, ckpt: tf.train.Checkpoint) -> None:
        """Restores the chief's newest readable checkpoint (the one before a broken one)."""
        ckpt_dir = os.path.join(self.model_dir, checkpoints.LATEST)
        state = tf.train.get_checkpoint_state(ckpt_dir)
        if state is None or not state.model_checkpoint_path:
            return
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if paths[-1] != state.model_checkpoint_path:
            paths.append(state.model_checkpoint_path)
        for path in reversed(paths):
            try:
                ckpt.restore(path).expect_partial().assert_nontrivial_match()
            except Exception as e:  # a damaged checkpoint fails in many ways
                logging.warning("cannot restore %s (%s: %s)", path, type(e).__name__, e)
                continue
            logging.info("resumed from %s at step %d", path, self.global_step)
            return
        raise RuntimeError(f"no checkpoint in {ckpt_dir} can be restored (listed: {paths})")

    def _check_same_step(self) -> None:
        """Raises unless every worker restored the same step (multi-worker runs)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type:
            return
        strategy, local = self.strategy, tf.cast(self.global_step, tf.float64)

        @tf.function
        def moments():
            values = strategy.run(lambda: tf.stack([tf.ones([], tf.float64), local, local**2]))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

        n, total, squares = moments().numpy()
        if n * squares != total * total:
            raise RuntimeError(
                f"the workers restored different steps (this worker {int(local)}, mean "
                f"{total / n:g}): every worker must see the chief's "
                f"{self.model_dir}/{checkpoints.LATEST} (a shared filesystem)"
            )

    def save(self) -> None:
        """Writes the latest checkpoint, numbered by the global step."""
        logging.info("saved %s", self.latest.save(checkpoint_number=self.step))

    def last_checkpoint(self) -> str | None:
        return tf.train.latest_checkpoint(os.path.join(self.model_dir, checkpoints.LATEST))

    def keep_if_best(self, score: float, phase: str, images: int) -> bool:
        """Saves the model to best/ (and best.json) when `score` beats the best so far.

        Every worker decides on its own copy of the score (the same on all, as they
        decode the same val images with the same weights) and saves, as checkpoint
        writes must be called on every worker."""
        if score <= self._best_score:
            return False
        self._best_score = score
        self.best.save(checkpoint_number=self.step)
        if self.chief:
            record = {"step": self.global_step, "phase": phase, "CIDEr": score}
            write_json(os.path.join(self.model_dir, "best.json"), {**record, "val_images": images})
        return True

    # -- phase snapshots -----------------------------------------------------
    def snapshot_step(self, phase: str) -> int | None:
        """The global step of MODEL_DIR/phase_NAME/, or None when there is none."""
        path = tf.train.latest_checkpoint(os.path.join(self.model_dir, f"phase_{phase}"))
        return int(path.rsplit("-", 1)[1]) if path else None

    def save_snapshot(self, phase: str) -> None:
        """Keeps the model as it is now, the end of `phase`, in MODEL_DIR/phase_NAME/."""
        manager = self._manager(f"phase_{phase}", 1, model=self.model, step=self.step)
        logging.info("%s ended: kept %s", phase, manager.save(checkpoint_number=self.step))

    def finish(self) -> None:
        """Waits for every worker, then drops a non-chief worker's scratch directory."""
        if self.strategy.num_replicas_in_sync > 1:
            strategy = self.strategy

            @tf.function
            def barrier():
                ones = strategy.run(lambda: tf.constant(1.0))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

            barrier()
        if not self.chief:
            worker = self.strategy.cluster_resolver.task_id
            shutil.rmtree(os.path.join(self.model_dir, f".worker{worker}"), ignore_errors=True)


def _read_best_score(model_dir: str) -> float:
    path = os.path.join(model_dir, "best.json")
    if not os.path.exists(path):
        return float("-inf")
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["CIDEr"])


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` to `path` atomically (a temporary file renamed into place)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
