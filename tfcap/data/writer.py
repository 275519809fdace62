"""Writes a prepared dataset: sharded TFRecords, vocab, references, dataset.json.

The whole dataset is built in a staging directory beside the output and moved
into place only when complete, so a crash or a bad record never leaves a
half-written dataset (or shard) under its final name, and an `--overwrite` run
keeps the old dataset until the new one is whole.

Shards are written in parallel by worker processes. Worker `w` of `W` writes
the shards whose index is `w` modulo `W` for every split, in one pass over the
source, so a source that must be streamed (tens of GB of TSV) is read `W` times
at most.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from absl import logging

from tfcap.data import errors, records
from tfcap.errors import BadInput, OutputExists

# A source is a picklable callable: (wanted image ids, where to count bad records)
# -> ImageRecords (in any order).
Source = Callable[[set[int], errors.BadRecords], Iterable[records.ImageRecord]]


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Where one image goes: its split, shard and caption token ids."""

    split: str
    shard: int
    captions: tuple[str, ...]
    caption_ids: tuple[tuple[int, ...], ...]


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


@dataclasses.dataclass
class _Task:
    worker: int
    source: Source
    assignments: dict[int, Assignment]
    num_shards: dict[str, int]
    staging: str
    features_dtype: str
    skip_bad: bool


_PROGRESS = None


def _init_worker(counter) -> None:
    global _PROGRESS
    _PROGRESS = counter


def _write_worker(task: _Task) -> dict[str, Any]:
    """Writes this worker's shards; returns per-shard stats and bad records."""
    import tensorflow as tf

    bad = errors.BadRecords(raise_errors=not task.skip_bad)
    writers: dict[tuple[str, int], Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    try:
        for record in task.source(set(task.assignments), bad):
            where = f"image {record.image_id}"
            a = task.assignments.get(record.image_id)
            if a is None or record.image_id in seen:
                continue
            record = dataclasses.replace(record, captions=list(a.captions))
            problem = record.problem()
            if problem:
                bad.add(where, problem)
                continue
            example = records.to_example(
                record, [list(i) for i in a.caption_ids], task.features_dtype
            )
            seen.add(record.image_id)
            key = (a.split, a.shard)
            if key not in writers:
                name = shard_name(a.split, a.shard, task.num_shards[a.split])
                writers[key] = tf.io.TFRecordWriter(os.path.join(task.staging, f".{name}.tmp"))
                stats[name] = {
                    "split": a.split,
                    "images": 0,
                    "captions": 0,
                    "max_regions": 0,
                    "min_regions": 1 << 30,
                    "feature_dim": None,
                }
            writers[key].write(example.SerializeToString())
            s = stats[shard_name(a.split, a.shard, task.num_shards[a.split])]
            n, dim = record.features.shape
            if s["feature_dim"] not in (None, dim):
                raise BadInput(
                    f"{where}: feature dim {dim}, earlier records have {s['feature_dim']}"
                )
            s["feature_dim"] = dim
            s["images"] += 1
            s["captions"] += len(a.caption_ids)
            s["max_regions"], s["min_regions"] = max(s["max_regions"], n), min(s["min_regions"], n)
            if _PROGRESS is not None:
                with _PROGRESS.get_lock():
                    _PROGRESS.value += 1
            elif len(seen) % 1000 == 0:  # in-process: no progress thread
                logging.info("writing shards: %d/%d images", len(seen), len(task.assignments))
    finally:
        for w in writers.values():
            w.close()
    for name in stats:
        os.replace(os.path.join(task.staging, f".{name}.tmp"), os.path.join(task.staging, name))
    missing = sorted(set(task.assignments) - seen)
    return {"stats": stats, "bad": bad, "missing": missing, "written": seen}


def _progress(counter, total: int, futures, label: str) -> None:
    start = last = time.time()
    while not all(f.done() for f in futures):
        time.sleep(0.5)
        if time.time() - last < 5.0:
            continue
        last = time.time()
        done = counter.value
        rate = done / max(time.time() - start, 1e-6)
        eta = (total - done) / rate if rate > 0 else float("inf")
        logging.info("%s: %d/%d images (%.0f/s, ETA %.0fs)", label, done, total, rate, eta)


def _run_pool(tasks: list[_Task], total: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("l", 0)
    with concurrent.futures.ProcessPoolExecutor(
        len(tasks), mp_context=ctx, initializer=_init_worker, initargs=(counter,)
    ) as pool:
        futures = [pool.submit(_write_worker, t) for t in tasks]
        _progress(counter, total, futures, "writing shards")
        return [f.result() for f in futures]


def write_shards(
    source: Source,
    assignments: dict[int, Assignment],
    num_shards: dict[str, int],
    staging: str,
    features_dtype: str,
    num_workers: int,
    skip_bad: bool,
) -> tuple[dict[str, dict[str, Any]], errors.BadRecords, set[int]]:
    """Writes every split's shards into `staging` with `num_workers` processes.

    Returns:
        per-shard stats keyed by file name, the bad records met (raises on the
        first one unless `skip_bad`), and the ids of the images written.
    """
    per_worker: list[dict[int, Assignment]] = [{} for _ in range(num_workers)]
    for image_id, a in assignments.items():
        per_worker[a.shard % num_workers][image_id] = a
    tasks = [
        _Task(w, source, per_worker[w], num_shards, staging, features_dtype, skip_bad)
        for w in range(num_workers)
        if per_worker[w]
    ]
    if len(tasks) == 1:  # in-process: no start-up cost, easier to debug
        outs = [_write_worker(tasks[0])]
    else:
        outs = _run_pool(tasks, len(assignments))
    bad = errors.BadRecords(raise_errors=not skip_bad)
    stats: dict[str, dict[str, Any]] = {}
    missing: list[int] = []
    written: set[int] = set()
    for out in outs:
        stats.update(out["stats"])
        missing += out["missing"]
        written |= out["written"]
        worker_bad = out["bad"]
        bad.count += worker_bad.count
        bad.by_reason.update(worker_bad.by_reason)
        bad.examples = (bad.examples + worker_bad.examples)[: bad.max_examples]
    if missing:
        for image_id in sorted(missing):
            a = assignments[image_id]
            bad.add(f"image {image_id} ({a.split})", "no features found in the source")
    return stats, bad, written


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Raises `tfcap.errors.OutputExists` (a FileExistsError) unless `output_dir` may
    become a new dataset: absent, empty, or non-empty with `overwrite`."""
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise OutputExists(f"{output_dir} is not empty; pass --overwrite to replace it")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExists(f"{output_dir} exists and is not a directory")


class StagingDir:
    """A directory beside `output_dir` that replaces it on `commit()`.

    Refuses a non-empty `output_dir` unless `overwrite` (`check_output_dir`); the
    old content is removed only after the new one is in place.
    """

    def __init__(self, output_dir: str, overwrite: bool):
        self.output_dir = os.path.abspath(output_dir)
        check_output_dir(output_dir, overwrite)
        parent = os.path.dirname(self.output_dir)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output_dir)}.", dir=parent)

    def commit(self) -> None:
        old = None
        if os.path.exists(self.output_dir):
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.output_dir)}.old.",
                dir=os.path.dirname(self.output_dir),
            )
            os.rmdir(old)
            os.replace(self.output_dir, old)
        os.chmod(self.path, 0o755)
        os.replace(self.path, self.output_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def iter_assigned(
    split_images: dict[str, list[int]], num_shards: dict[str, int]
) -> Iterator[tuple[int, str, int]]:
    """(image_id, split, shard): images of a split dealt round-robin to its shards."""
    for split, ids in split_images.items():
        for i, image_id in enumerate(ids):
            yield image_id, split, i % num_shards[split]
