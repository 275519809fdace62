"""The tf.data input: TFRecord shards of a prepared dataset -> batch dicts.

Every batch is one dict, used by these names everywhere after:

- `image_id`: int64 `[batch]`.
- `features`: float32 `[batch, regions, dim]`, zero on padded regions.
- `boxes`: float32 `[batch, regions, 4]`, (x1, y1, x2, y2) in [0, 1], zero on padding.
- `region_mask`: bool `[batch, regions]`, False on padded regions.
- `captions`: int32 `[batch, seq_per_img, max_caption_len + 2]`: `<bos>`, the
  tokens, `<eos>`, then `<pad>` (0). An image with fewer than `seq_per_img`
  references repeats them in turn; one with more uses `seq_per_img` of them
  (a random choice when shuffling, the first ones otherwise). An image without
  references (features-only data) has all-`<pad>` rows.
- `references` (only with `all_references=R`): int32 `[batch, R, max_caption_len + 1]`,
  every reference of the image (the first R), without `<bos>`: the tokens, `<eos>`,
  then `<pad>`; rows past the image's count are all `<pad>`. Rewards score against these.

`regions` is static: the dataset's largest region count (dataset.json) unless
`max_regions` is given, so shapes suit XLA and TFLite. `batch` is static when
`drop_remainder` is set.

Several input pipelines (one per worker of a multi-worker job) partition the
split: every record goes to exactly one worker in an epoch, and every worker
holds at least `steps_per_epoch x per-worker batch` records, so all run the
same number of steps (`plan_shards`). tf.data's autotuner is off: its model
thread made the deletion of a finished iterator wait up to half a minute
(at every epoch boundary and after each validation) on a busy 2-core machine.

Errors name their place: a record whose stored sizes disagree with
dataset.json fails with the shard path and record index, and a corrupt or
truncated shard is found and named by `check_shards`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import tensorflow as tf

from tfcap import errors
from tfcap.data import records, vocab

METADATA_FILE = "dataset.json"


def load_metadata(data_dir: str) -> dict[str, Any]:
    """Reads and checks `dataset.json` of a prepared dataset."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise errors.MissingInput(
            f"{path} not found: is {data_dir!r} a dataset written by tfcap.data.prepare?"
        )
    with open(path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise errors.BadInput(f"{path}: not valid JSON ({e})") from None
    if meta.get("schema_version") != records.SCHEMA_VERSION:
        raise errors.BadInput(
            f"{path}: schema_version {meta.get('schema_version')!r}, this tfcap reads "
            f"{records.SCHEMA_VERSION}; prepare the dataset again"
        )
    for key in ("feature_dim", "features_dtype", "max_regions", "splits", "vocab_file"):
        if key not in meta:
            raise errors.BadInput(f"{path}: missing key {key!r}")
    return meta


def steps_per_epoch(meta: dict[str, Any], split: str, batch_size: int) -> int:
    """Full global batches of `split` per epoch (every worker runs this many steps)."""
    images = int(meta["splits"][split]["images"])
    if batch_size > images:
        raise errors.BadInput(f"--batch_size={batch_size} exceeds the {images} {split} images")
    return images // batch_size


def plan_shards(
    files: list[str], counts: list[int] | None, pipes: int, pid: int, need: int
) -> tuple[list[str], bool]:
    """The files input pipeline `pid` of `pipes` reads, and whether it keeps every
    `pipes`-th record of them (True) or all of their records (False).

    Whole files per pipeline (each worker reads only its own) when the record
    counts per file are known and every pipeline gets at least `need` records;
    otherwise every pipeline reads every file and keeps the records whose index
    in one fixed interleaved order is `pid` modulo `pipes` (each worker holds
    floor or ceil of records / pipes).

    >>> plan_shards(["a", "b", "c", "d"], [5, 5, 5, 5], 2, 1, 10)
    (['b', 'd'], False)
    >>> plan_shards(["a", "b", "c"], [5, 5, 5], 2, 1, 7)  # 10 / 5 records: too unequal
    (['a', 'b', 'c'], True)
    """
    if counts is not None and len(counts) == len(files) and len(files) >= pipes:
        per_pipe = [sum(counts[p::pipes]) for p in range(pipes)]
        if min(per_pipe) >= need:
            return files[pid::pipes], False
    return files, True


def load_vocab(data_dir: str, meta: dict[str, Any] | None = None) -> vocab.Vocab:
    meta = meta or load_metadata(data_dir)
    return vocab.Vocab.load(os.path.join(data_dir, meta["vocab_file"]))


def split_files(data_dir: str, split: str) -> list[str]:
    """The shard paths of `split`, sorted; raises when there are none."""
    files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
    if not files:
        raise errors.MissingInput(
            f"no shards for split {split!r} in {data_dir} ({split}-*.tfrecord)"
        )
    return files


def check_shards(files: list[str]) -> int:
    """Reads every record of every file; raises ValueError naming a corrupt one.

    Returns:
        the number of records read.
    """
    total = 0
    for path in files:
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
            raise errors.BadInput(
                f"{path}: corrupt or truncated after record {count} ({e.message.strip()})"
            ) from None
        total += count
    return total


def explain_data_loss(data_dir: str, split: str, error: Exception) -> ValueError:
    """A `BadInput` naming the corrupt shard behind a DataLossError from `make_dataset`."""
    try:
        check_shards(split_files(data_dir, split))
    except ValueError as named:
        return errors.BadInput(f"{named} (pass --skip_bad_records to skip bad records)")
    return errors.BadInput(f"{data_dir} ({split}): {error}")


def parser(meta: dict[str, Any], max_regions: int):
    """The parse function `(path, index, serialized) -> example dict` of the pipeline.

    Usable eagerly too. The example dict has the batch keys without the batch
    dimension, except that captions are `caption_ids`, int64 ragged
    `[captions, (tokens)]`, before selection and padding.
    """
    dim, dtype = int(meta["feature_dim"]), meta["features_dtype"]

    def parse(path: tf.Tensor, index: tf.Tensor, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        where = tf.strings.join([path, ": record ", tf.strings.as_string(index)])
        parsed = tf.io.parse_single_example(serialized, records.FEATURE_SPEC)
        count = parsed["regions/count"]
        boxes = tf.sparse.to_dense(parsed["regions/boxes"])
        feats = tf.io.decode_raw(parsed["regions/features"], tf.dtypes.as_dtype(dtype))
        n_feats = tf.size(feats, out_type=tf.int64)
        image = parsed["image/id"]
        checks = [
            tf.debugging.Assert(
                tf.equal(n_feats, count * dim),
                [
                    where,
                    "image",
                    image,
                    f"regions/features has the wrong size for "
                    f"regions/count x feature_dim {dim} ({dtype}, per dataset.json): elements",
                    n_feats,
                    "regions",
                    count,
                ],
            ),
            tf.debugging.Assert(
                tf.equal(tf.size(boxes, out_type=tf.int64), count * 4),
                [where, "image", image, "regions/boxes size is not regions/count x 4"],
            ),
            tf.debugging.Assert(
                count <= max_regions,
                [where, "image", image, f"has more regions than max_regions={max_regions}:", count],
            ),
        ]
        with tf.control_dependencies(checks):
            feats = tf.reshape(tf.cast(feats, tf.float32), [-1, dim])
            boxes = tf.reshape(boxes, [-1, 4])
        n = tf.shape(feats)[0]
        pad = [[0, max_regions - n], [0, 0]]
        ids = tf.RaggedTensor.from_row_lengths(
            tf.sparse.to_dense(parsed["caption/ids"]),
            tf.sparse.to_dense(parsed["caption/lengths"]),
        )
        return {
            "image_id": parsed["image/id"],
            "features": tf.ensure_shape(tf.pad(feats, pad), [max_regions, dim]),
            "boxes": tf.ensure_shape(tf.pad(boxes, pad), [max_regions, 4]),
            "region_mask": tf.sequence_mask(n, max_regions),
            "caption_ids": ids,
        }

    return parse


def _select_captions(ids: tf.RaggedTensor, seq_per_img: int, max_len: int, shuffle: bool, seed):
    """int32 `[seq_per_img, max_len + 2]` from ragged `[captions, (tokens)]`."""
    k = ids.nrows(out_type=tf.int32)
    empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], ids.dtype), tf.zeros([1], tf.int64))
    ids = tf.concat([ids, empty], axis=0)  # row k: empty, picked for images without captions
    order = tf.random.shuffle(tf.range(k), seed=seed) if shuffle else tf.range(k)
    order = tf.concat([order, [k]], axis=0)
    picks = tf.gather(order, tf.range(seq_per_img) % tf.maximum(k, 1))
    chosen = tf.gather(ids, picks)[:, :max_len]
    n = chosen.nrows()
    bos = tf.fill([n, 1], tf.constant(vocab.BOS_ID, tf.int64))
    eos = tf.fill([n, 1], tf.constant(vocab.EOS_ID, tf.int64))
    full = tf.concat([bos, chosen, eos], axis=1).to_tensor(
        default_value=vocab.PAD_ID, shape=[seq_per_img, max_len + 2]
    )
    return tf.cast(full, tf.int32) * tf.cast(k > 0, tf.int32)


def _all_references(ids: tf.RaggedTensor, count: int, max_len: int) -> tf.Tensor:
    """int32 `[count, max_len + 1]`: the first `count` references, `<eos>`-ended, padded."""
    chosen = ids[:count, :max_len]
    eos = tf.fill([chosen.nrows(), 1], tf.constant(vocab.EOS_ID, tf.int64))
    full = tf.concat([chosen, eos], axis=1).to_tensor(
        default_value=vocab.PAD_ID, shape=[count, max_len + 1]
    )
    return tf.cast(full, tf.int32)


def max_references(meta: dict[str, Any], split: str) -> int:
    """The most references an image of `split` has (dataset.json; 5 when not recorded)."""
    return int(meta["splits"][split].get("max_captions_per_image", 5))


def make_dataset(
    data_dir: str,
    split: str,
    batch_size: int,
    *,
    seq_per_img: int = 5,
    max_caption_len: int | None = None,
    max_regions: int | None = None,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    drop_remainder: bool = False,
    skip_bad_records: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = 2048,
    all_references: int = 0,
) -> tf.data.Dataset:
    """The batched dataset of one split.

    Args:
        data_dir: a directory written by `tfcap.data.prepare`.
        split: "train", "val" or "test" (any split with shards).
        batch_size: images per batch; with `input_context`, the global batch,
            divided per replica.
        seq_per_img: reference captions per image in `captions`.
        max_caption_len: tokens kept per caption (default: dataset.json's).
        max_regions: padded region count (default: dataset.json's).
        shuffle, repeat, seed: training order; `seed` fixes the order.
        deterministic: keep element order fixed (slower) so runs repeat exactly.
        drop_remainder: static batch dimension.
        skip_bad_records: log and skip records that fail to parse.
        input_context: from `strategy.distribute_datasets_from_function`: the
            split is partitioned among the input pipelines (`plan_shards`).
        all_references: also give `references` with this many rows (0: not).
    """
    meta = load_metadata(data_dir)
    max_regions = int(max_regions or meta["max_regions"])
    max_len = int(max_caption_len or meta["max_caption_len"])
    files = split_files(data_dir, split)
    by_record = False
    if input_context:  # a batch per replica; each step takes one for every replica
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if input_context and input_context.num_input_pipelines > 1:
        pipes, pid = input_context.num_input_pipelines, input_context.input_pipeline_id
        if shuffle and seed is None:
            raise ValueError("shuffled input over several workers needs a seed (same order on all)")
        per_worker = batch_size * input_context.num_replicas_in_sync // pipes
        need = steps_per_epoch(meta, split, per_worker * pipes) * per_worker
        counts = meta["splits"][split].get("shard_images")
        files, by_record = plan_shards(files, counts, pipes, pid, need)

    def read(path):
        ds = tf.data.TFRecordDataset(path).enumerate()
        return ds.map(lambda i, r: (path, i, r))

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # By record: one interleaved order on every worker (same file order, deterministic
    # interleave), of which each keeps every `pipes`-th record.
    ds = ds.interleave(
        read,
        cycle_length=min(len(files), 4),
        num_parallel_calls=min(len(files), 4),
        deterministic=True if by_record else None,
    )
    if by_record:
        ds = ds.shard(pipes, pid)
    ds = ds.map(parser(meta, max_regions), num_parallel_calls=tf.data.AUTOTUNE)
    if skip_bad_records:
        ds = ds.ignore_errors(log_warning=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def finish(ex):
        ids = ex.pop("caption_ids")
        out = {**ex, "captions": _select_captions(ids, seq_per_img, max_len, shuffle, seed)}
        if all_references:
            out["references"] = _all_references(ids, all_references, max_len)
        return out

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False  # module docstring; AUTOTUNE takes tf.data's fixed defaults
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
