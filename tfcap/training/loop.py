"""The training run: state, checkpoints, input per epoch, validation, logging.

One `Trainer` holds what every phase shares: the strategy, the model, the
step counter, checkpoint managers (latest and best-by-validation-CIDEr),
TensorBoard writers, and the validation routine. A phase (`tfcap.training.xe`,
later scst and gan) supplies its step function and its own optimizer.

Resume is exact: the latest checkpoint holds every variable and the global
step; the input of epoch `e` is shuffled with seed `seed + e` and resumes by
skipping the batches already consumed in that epoch. Every worker restores
from the chief's `MODEL_DIR/ckpt` (a shared directory) and the workers check
that they restored the same step. When the newest checkpoint cannot be read,
the one before it is used.

Numerical faults: a step whose loss or gradient is NaN or Inf makes no update
(`tfcap.training.xe.apply_if_finite`); `check_step` counts it (in the
checkpoint, TensorBoard and the progress line) and stops the run with
`NonFiniteError`, without saving, after `max_consecutive_nonfinite` in a row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfcap import checkpoints, distribute, inference, viz
from tfcap.data import pipeline, vocab
from tfcap.model.captioner import Captioner
from tfcap.rewards import cider


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run needs beyond the model (train.py builds it from flags)."""

    model_dir: str
    data_dir: str
    batch_size: int = 10
    seq_per_img: int = 5
    seed: int = 0
    deterministic: bool = False
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_images: int = 500
    val_batch_size: int = 50
    val_beam_size: int = 1
    skip_bad_records: bool = False
    max_consecutive_nonfinite: int = 10
    # Testing aid: global step number (1-based) -> loss multiplier (NaN or Inf).
    inject_nonfinite: dict[int, float] = dataclasses.field(default_factory=dict)


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a NaN or Inf loss or gradient."""


class Trainer:
    """Shared state and services of a training run (module docstring)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: Captioner, run: RunConfig):
        self.strategy, self.model, self.run = strategy, model, run
        self.meta = pipeline.load_metadata(run.data_dir)
        self.words = pipeline.load_vocab(run.data_dir, self.meta)
        self.chief = distribute.is_chief(strategy)
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self._phase_steps = {
                name: tf.Variable(0, dtype=tf.int64, trainable=False, name=f"{name}_step")
                for name in ("xe", "scst", "gan")
            }
            self.skipped_steps = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_steps"
            )
        # Not in the checkpoint; the steps multiply their loss by it (fault injection).
        self.loss_multiplier = tf.Variable(1.0, trainable=False, name="loss_multiplier")
        self._nonfinite_streak = 0
        self.trackables: dict[str, Any] = {"model": model, "step": self.step}
        self.trackables.update({f"{k}_step": v for k, v in self._phase_steps.items()})
        self.trackables["skipped_steps"] = self.skipped_steps
        self.best_score = -np.inf
        self.val_refs = inference.references(run.data_dir, "val")
        self._val_cider = None
        self._generate = None
        self._writers = {}
        self._last_log = (time.time(), None)
        self._train_cider = None

    # -- checkpoints ---------------------------------------------------------
    def _dir(self, sub: str) -> str:
        if self.chief:
            return os.path.join(self.run.model_dir, sub)
        worker = self.strategy.cluster_resolver.task_id
        return os.path.join(self.run.model_dir, f".worker{worker}", sub)

    def _manager(self, sub: str, keep: int, **objects) -> tf.train.CheckpointManager:
        ckpt = tf.train.Checkpoint(**objects)
        return tf.train.CheckpointManager(ckpt, self._dir(sub), max_to_keep=keep)

    def phase_step(self, phase: str) -> tf.Variable:
        """The step counter of `phase` (in the checkpoint)."""
        return self._phase_steps[phase]

    def restore(self, **extra) -> int:
        """Adds `extra` trackables (optimizers, discriminator) and restores the latest
        checkpoint; objects it does not hold yet (a later phase's) keep their values."""
        self.trackables.update(extra)
        self.latest = self._manager(
            checkpoints.LATEST, self.run.keep_checkpoints, **self.trackables
        )
        self.best = self._manager(checkpoints.BEST, 1, model=self.model, step=self.step)
        best_json = os.path.join(self.run.model_dir, "best.json")
        if os.path.exists(best_json):
            with open(best_json, encoding="utf-8") as f:
                self.best_score = json.load(f)["CIDEr"]
        self._restore_latest(self.latest.checkpoint)
        self._check_same_step()
        return int(self.step.numpy())

    def _restore_latest(self, ckpt: tf.train.Checkpoint) -> None:
        """Restores the chief's newest readable checkpoint (the one before a broken one)."""
        ckpt_dir = os.path.join(self.run.model_dir, checkpoints.LATEST)
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
            logging.info("resumed from %s at step %d", path, self.step.numpy())
            return
        raise RuntimeError(f"no checkpoint in {ckpt_dir} can be restored (listed: {paths})")

    def _check_same_step(self) -> None:
        """Raises unless every worker restored the same step (multi-worker runs)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type:
            return
        strategy, local = self.strategy, tf.cast(self.step.numpy(), tf.float64)

        @tf.function
        def moments():
            values = strategy.run(lambda: tf.stack([tf.ones([], tf.float64), local, local**2]))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

        n, total, squares = moments().numpy()
        if n * squares != total * total:
            raise RuntimeError(
                f"the workers restored different steps (this worker {int(local)}, mean "
                f"{total / n:g}): every worker must see the chief's "
                f"{self.run.model_dir}/{checkpoints.LATEST} (a shared filesystem)"
            )

    def save(self) -> None:
        path = self.latest.save(checkpoint_number=self.step)
        logging.info("saved %s", path)

    # -- numerical faults ----------------------------------------------------
    def inject_faults(self) -> None:
        """Sets the loss multiplier for the next step (`RunConfig.inject_nonfinite`)."""
        value = self.run.inject_nonfinite.get(int(self.step.numpy()) + 1, 1.0)
        if value != 1.0 or float(self.loss_multiplier.numpy()) != 1.0:
            self.loss_multiplier.assign(value)

    def check_step(self, phase: str, skipped: float) -> None:
        """Counts a step whose update was skipped (non-finite); raises `NonFiniteError`
        after `max_consecutive_nonfinite` in a row. Call before advancing the step."""
        if not skipped:
            self._nonfinite_streak = 0
            return
        self._nonfinite_streak += 1
        self.skipped_steps.assign_add(1)
        step, streak = int(self.step.numpy()) + 1, self._nonfinite_streak
        total = int(self.skipped_steps.numpy())
        self.log_scalars("train", {f"{phase}/skipped_steps": total}, step)
        logging.warning(
            "%s global step %d: non-finite loss or gradient, update skipped "
            "(%d in a row, %d in total)",
            phase,
            step,
            streak,
            total,
        )
        if streak >= self.run.max_consecutive_nonfinite:
            last = tf.train.latest_checkpoint(os.path.join(self.run.model_dir, checkpoints.LATEST))
            raise NonFiniteError(
                f"{phase}: {streak} steps in a row (global steps {step - streak + 1}..{step}) "
                "had a NaN or Inf loss or gradient; none was applied. Stopped without "
                f"saving: the last good checkpoint is {last}. "
                "Lower the learning rate, clip gradients (--grad_clip) or check the data, "
                "then run the same command to resume from it "
                f"(--max_consecutive_nonfinite={self.run.max_consecutive_nonfinite})."
            )

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
            shutil.rmtree(os.path.join(self.run.model_dir, f".worker{worker}"), ignore_errors=True)

    def save_phase(self, phase: str) -> None:
        """Keeps the model as it is at the end of `phase` (MODEL_DIR/phase_NAME)."""
        manager = self._manager(f"phase_{phase}", 1, model=self.model, step=self.step)
        manager.save(checkpoint_number=self.step)

    # -- input ---------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        images = self.meta["splits"]["train"]["images"]
        steps = images // self.run.batch_size
        if steps < 1:
            raise ValueError(
                f"--batch_size={self.run.batch_size} exceeds the {images} train images"
            )
        return steps

    def epoch_iterator(self, epoch: int, skip: int, seed_offset: int = 0):
        """The distributed input of `epoch` (shuffled with seed `seed + seed_offset +
        epoch`), after `skip` batches."""
        run = self.run

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            ds = pipeline.make_dataset(
                run.data_dir,
                "train",
                run.batch_size,
                seq_per_img=run.seq_per_img,
                shuffle=True,
                seed=run.seed + seed_offset + epoch,
                deterministic=run.deterministic,
                drop_remainder=True,
                input_context=ctx,
                skip_bad_records=run.skip_bad_records,
            )
            return ds.skip(skip)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def next_batch(self, iterator):
        """The next batch; a corrupt shard is named (tf.data's DataLossError does not)."""
        try:
            return next(iterator)
        except tf.errors.DataLossError as e:
            raise pipeline.explain_data_loss(self.run.data_dir, "train", e) from None

    # -- logging -------------------------------------------------------------
    def writer(self, name: str):
        if name not in self._writers:
            logdir = self._dir(name)
            self._writers[name] = tf.summary.create_file_writer(logdir)
        return self._writers[name]

    def log_scalars(self, name: str, scalars: dict[str, float], step: int | None = None) -> None:
        step = int(self.step.numpy()) if step is None else step
        with self.writer(name).as_default(step=step):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)

    def reset_progress(self, step: int) -> None:
        """Starts the examples/s clock of a phase at its `step`."""
        self._last_log = (time.time(), step)

    def progress(self, phase: str, step: int, total: int, scalars: dict[str, float]) -> None:
        """Logs a progress line and TensorBoard scalars for `phase` at its `step`."""
        now = time.time()
        then, then_step = self._last_log
        self._last_log = (now, step)
        rate = (step - then_step) / max(now - then, 1e-9) if then_step is not None else 0.0
        images = rate * self.run.batch_size
        eta = (total - step) / rate if rate > 0 else float("nan")
        scalars = {**scalars, "skipped_steps": int(self.skipped_steps.numpy())}
        scalars["examples_per_s"] = images
        self.log_scalars("train", {f"{phase}/{k}": v for k, v in scalars.items()})
        parts = " ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k != "examples_per_s")
        logging.info(
            "%s step %d/%d (epoch %.2f) %s | %.1f img/s | ETA %s",
            phase,
            step,
            total,
            step / self.steps_per_epoch(),
            parts,
            images,
            _fmt_seconds(eta),
        )

    # -- validation ----------------------------------------------------------
    def decode_val(self, max_images: int | None) -> inference.Decoded:
        if self._generate is None:
            method = "beam" if self.run.val_beam_size > 1 else "greedy"
            self._generate = inference.make_generate_fn(
                self.model, method, self.run.val_beam_size, 0.0, self.model.max_len
            )
        return inference.decode_split(
            self.model,
            self.words,
            self.run.data_dir,
            "val",
            batch_size=self.run.val_batch_size,
            max_images=max_images,
            generate_fn=self._generate,
        )

    def validate(self, phase: str) -> float:
        """Fast in-process CIDEr-D on val; keeps the best checkpoint. Returns CIDEr."""
        decoded = self.decode_val(self.run.val_images or None)
        if self._val_cider is None:
            refs = [self._tokenized(self.val_refs[int(i)]) for i in decoded.image_ids]
            self._val_cider = (cider.CiderD(refs), refs)
        scorer, refs = self._val_cider
        score = float(scorer.score([self._tokenized([c])[0] for c in decoded.captions], refs)[0])
        step = int(self.step.numpy())
        self.log_scalars("val", {f"{phase}/CIDEr": score})
        self._log_examples(decoded, step)
        logging.info(
            "%s (global step %d): val CIDEr-D %.4f (%d images)", phase, step, score, len(refs)
        )
        if score > self.best_score:
            self.best_score = score
            self.best.save(checkpoint_number=self.step)
            if self.chief:
                _write_json(
                    os.path.join(self.run.model_dir, "best.json"),
                    {"step": step, "phase": phase, "CIDEr": score, "val_images": len(refs)},
                )
        return score

    def train_cider(self) -> cider.CiderD:
        """CIDEr-D with the train references' document frequencies (dataset's file)."""
        if self._train_cider is None:
            name = self.meta.get("cider_df")
            if not name:
                raise ValueError(
                    f"{self.run.data_dir}/dataset.json names no cider_df: prepare the "
                    "dataset again with this tfcap to train with a CIDEr-D reward"
                )
            path = os.path.join(self.run.data_dir, name)
            self._train_cider = cider.CiderD.from_json(
                path, vocabulary=self.words.words, eos_id=vocab.EOS_ID
            )
        return self._train_cider

    @staticmethod
    def _tokenized(texts: list[str]) -> list[str]:
        return [" ".join(t) for t in vocab.tokenize_py(texts)]

    def _log_examples(self, decoded: inference.Decoded, step: int, count: int = 3) -> None:
        rows = []
        for i in range(min(count, len(decoded.captions))):
            refs = self.val_refs[int(decoded.image_ids[i])]
            rows.append(f"| {decoded.image_ids[i]} | {decoded.captions[i]} | {refs[0]} |")
        table = "| image | generated | a reference |\n|---|---|---|\n" + "\n".join(rows)
        words = decoded.captions[0].split()
        picture = viz.attention_grid(
            None,
            decoded.boxes[0],
            words,
            decoded.attention[0],
            region_mask=decoded.region_mask[0],
            title=decoded.captions[0],
        )
        with self.writer("val").as_default(step=step):
            tf.summary.text("samples", table)
            tf.summary.image("attention", picture[None], max_outputs=1)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
