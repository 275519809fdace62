"""The input of a phase: its distributed batches from any step on, epoch after epoch.

Epoch `e` of a phase reads the train split shuffled with seed
`seed + seed_offset + e` (each phase has its own offset), so a resumed run
reads what an uninterrupted one would: it starts the epoch of its step and
skips the batches already consumed. Under a strategy each input pipeline
(one per worker) reads its part of the split (`tfcap.data.pipeline.plan_shards`)
and gives each of its replicas a batch per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow as tf

from tfcap import errors
from tfcap.data import pipeline


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The training input: where it is, the global batch, captions per image, order."""

    data_dir: str
    batch_size: int = 10
    seq_per_img: int = 5
    seed: int = 0
    deterministic: bool = False
    skip_bad_records: bool = False
    all_references: int = 0  # batches also hold every reference of an image (`references`)


def steps_per_epoch(config: InputConfig) -> int:
    """Global steps per epoch of the train split (full global batches)."""
    meta = pipeline.load_metadata(config.data_dir)
    return pipeline.steps_per_epoch(meta, "train", config.batch_size)


def epoch_batches(strategy, config: InputConfig, epoch: int, skip: int, seed_offset: int):
    """An iterator over the distributed batches of `epoch`, after the first `skip` steps."""

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = pipeline.make_dataset(
            config.data_dir,
            "train",
            config.batch_size,
            seq_per_img=config.seq_per_img,
            shuffle=True,
            seed=config.seed + seed_offset + epoch,
            deterministic=config.deterministic,
            drop_remainder=True,
            input_context=ctx,
            skip_bad_records=config.skip_bad_records,
            all_references=config.all_references,
        )
        # A step takes one batch per replica of this pipeline (several with
        # MirroredStrategy on one machine).
        per_step = max(1, ctx.num_replicas_in_sync // ctx.num_input_pipelines)
        return ds.skip(skip * per_step)

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def phase_batches(strategy, config: InputConfig, start: int, seed_offset: int) -> Iterator:
    """The distributed batches of a phase's steps `start`, `start + 1`, ... (module docstring).

    Endless; the loop takes as many as it has steps. A corrupt shard or a record
    that disagrees with dataset.json is named in a `tfcap.errors.BadInput`.
    """
    spe = steps_per_epoch(config)
    step = start
    while True:
        epoch, offset = divmod(step, spe)
        batches = epoch_batches(strategy, config, epoch, offset, seed_offset)
        for _ in range(spe - offset):
            yield _next(batches, config.data_dir)
            step += 1


def _next(batches, data_dir: str):
    try:
        return next(batches)
    except tf.errors.DataLossError as e:
        raise pipeline.explain_data_loss(data_dir, "train", e) from None
    except tf.errors.InvalidArgumentError as e:
        if ": record " not in e.message:  # not one of the parser's named checks: a bug
            raise
        first = e.message.strip().splitlines()[0]
        raise errors.BadInput(f"{first} (pass --skip_bad_records to skip bad records)") from None
