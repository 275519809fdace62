r"""Region features for your own images: `python -m tfcap.features.extract`.

  python -m tfcap.features.extract --images='photos/*.jpg' --output_dir=feats \
      --detector_handle=https://tfhub.dev/tensorflow/faster_rcnn/resnet101_v1_1024x1024/1 \
      --backbone_app=ResNet101 --backbone_weights=resnet101_notop.weights.h5

Writes OUTPUT_DIR/ as a dataset `tfcap.data.pipeline` reads, split "images" (no captions):

  images-0000K-of-0000N.tfrecord   the records (tfcap/data/records.py schema)
  dataset.json                     schema version, feature dim and dtype, region counts, ...
  vocab.txt                        the four special tokens only (there are no captions)
  images.json                      image id -> file, width, height, regions; the failures
  extract_progress.json            finished shards (resume) and the settings they were made with

Files that cannot be read (corrupt, empty, not JPEG/PNG) are reported one by one and listed
at the end; the rest are written, and the exit status is 1 if any failed. Interrupted runs
resume: the same command skips the shards already finished. `--output_dir`,
`--overwrite` (start again), `--num_shards` and `--features_dtype` are tfcap.data.prepare's
flags; the extractor's (`--detector_handle`, `--backbone_*`, `--region_policy`, ...) are
in tfcap/features/source.py. `--batch_size` images are ROI-pooled together.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from absl import app, flags, logging

from tfcap import cli, cli_flags
from tfcap.data import (
    pipeline,
    prepare,  # noqa: F401  (defines --output_dir, --overwrite, --num_shards, ...)
    records,
    vocab,
    writer,
)
from tfcap.errors import BadInput, OutputExists
from tfcap.features import images as images_lib
from tfcap.features import source

SPLIT = "images"
MANIFEST = "extract_progress.json"
IMAGES_JSON = "images.json"
MAX_CAPTION_LEN = 16  # what dataset.json records for caption-free data
FLAGS = flags.FLAGS

flags.adopt_module_key_flags(source)  # the extractor's flags: --images, --detector_handle, ...
for _name in ("output_dir", "overwrite", "num_shards", "features_dtype", "batch_size"):
    flags.declare_key_flag(_name)


def plan_shards(count: int, num_shards: int) -> list[range]:
    """Contiguous runs of image indices, one per shard (at most `count` shards).

    >>> plan_shards(5, 2)
    [range(0, 2), range(2, 5)]
    """
    n = max(1, min(num_shards, count))
    bounds = [round(i * count / n) for i in range(n + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(n)]


def _settings(paths: Sequence[str], config: source.ExtractorConfig, shards: int, dtype: str):
    files = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()
    return {
        "files": files,
        "count": len(paths),
        "shards": shards,
        "features_dtype": dtype,
        "extractor": config.to_json(),
    }


def _open_manifest(output_dir: str, settings: dict, overwrite: bool) -> dict:
    """The progress of an earlier run with the same settings, or a fresh one."""
    path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExists(f"{output_dir} exists and is not a directory")
    os.makedirs(output_dir, exist_ok=True)
    if overwrite:
        for name in os.listdir(output_dir):
            if (
                name.startswith(f"{SPLIT}-")
                or name.startswith(f".{SPLIT}-")
                or name in (MANIFEST, IMAGES_JSON, pipeline.METADATA_FILE, "vocab.txt")
            ):
                os.remove(os.path.join(output_dir, name))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                manifest = json.load(f)
            except json.JSONDecodeError as err:
                raise BadInput(f"{path}: not valid JSON ({err}); pass --overwrite") from None
        if not isinstance(manifest, dict) or manifest.get("settings") != settings:
            raise OutputExists(
                f"{output_dir} holds an extraction with other settings (images, models, "
                "policy, shards or dtype); pass --overwrite to start again"
            )
        return manifest
    if os.listdir(output_dir):
        raise OutputExists(f"{output_dir} is not empty; pass --overwrite to replace it")
    return {"settings": settings, "shards": {}}


def _write_shard(extractor, paths, ids, output_dir: str, name: str, dtype: str) -> dict:
    """Writes one shard under a temporary name and renames it; returns its manifest entry."""
    tmp = os.path.join(output_dir, f".{name}.tmp")
    entry: dict[str, Any] = {"images": [], "failures": []}
    with tf.io.TFRecordWriter(tmp) as out:
        for path, rec in extractor.records(paths, ids):
            if isinstance(rec, images_lib.ImageError):
                logging.warning("Skipping %s: %s", path, rec)
                entry["failures"].append({"file": path, "error": str(rec)})
                continue
            out.write(records.to_example(rec, [], dtype).SerializeToString())
            entry["images"].append(
                {
                    "id": rec.image_id,
                    "file": path,
                    "width": rec.width,
                    "height": rec.height,
                    "regions": len(rec.boxes),
                    "feature_dim": int(rec.features.shape[1]),
                }
            )
    os.replace(tmp, os.path.join(output_dir, name))
    return entry


def extract_images(
    paths: Sequence[str],
    output_dir: str,
    config: source.ExtractorConfig,
    *,
    num_shards: int = 8,
    features_dtype: str = "float16",
    overwrite: bool = False,
    batch_size: int = 4,
    threads: int = 4,
    on_shard_done: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Extracts region features of `paths` into `output_dir` (module docstring), resumably.

    Returns:
        `{"written": [shard names], "skipped": [finished earlier], "images": written count,
        "failures": [{"file", "error"}], "meta": dataset.json}` (meta None when no image
        could be used).
    """
    paths = list(paths)
    ids = images_lib.image_ids(paths)
    plan = plan_shards(len(paths), num_shards)
    names = [writer.shard_name(SPLIT, i, len(plan)) for i in range(len(plan))]
    settings = _settings(paths, config, len(plan), features_dtype)
    manifest = _open_manifest(output_dir, settings, overwrite)
    done = {n for n in manifest["shards"] if os.path.exists(os.path.join(output_dir, n))}
    todo = [i for i, n in enumerate(names) if n not in done]
    extractor = source.Extractor(config, batch_size, threads) if todo else None
    start, finished = time.time(), 0
    for i in todo:
        shard = plan[i]
        entry = _write_shard(
            extractor,
            [paths[j] for j in shard],
            [ids[j] for j in shard],
            output_dir,
            names[i],
            features_dtype,
        )
        manifest["shards"][names[i]] = entry
        writer.write_json(os.path.join(output_dir, MANIFEST), manifest)
        finished += len(shard)
        remaining = sum(len(plan[j]) for j in todo) - finished
        rate = finished / max(time.time() - start, 1e-6)
        logging.info(
            "%s done: %d images this run (%.1f/s), %d to go (ETA %.0f s)",
            names[i],
            finished,
            rate,
            remaining,
            remaining / rate,
        )
        if on_shard_done:
            on_shard_done(names[i])
    entries = [manifest["shards"][n] for n in names]
    meta = _finish(output_dir, entries, config, features_dtype, len(plan))
    return {
        "written": [names[i] for i in todo],
        "skipped": [n for n in names if n in done],
        "images": sum(len(e["images"]) for e in entries),
        "failures": [f for e in entries for f in e["failures"]],
        "meta": meta,
    }


def _finish(output_dir, entries, config, dtype, num_shards) -> dict | None:
    """Writes vocab.txt, images.json and (last) dataset.json; returns dataset.json."""
    written = [im for e in entries for im in e["images"]]
    failures = [f for e in entries for f in e["failures"]]
    writer.write_json(
        os.path.join(output_dir, IMAGES_JSON), {"images": written, "failures": failures}
    )
    if not written:
        return None
    dims = {im["feature_dim"] for im in written}
    if len(dims) != 1:
        raise ValueError(f"{output_dir}: shards disagree on the feature dim: {sorted(dims)}")
    vocab.Vocab(vocab.SPECIALS).save(os.path.join(output_dir, "vocab.txt"))
    counts = [im["regions"] for im in written]
    meta = {
        "schema_version": records.SCHEMA_VERSION,
        "source": "images",
        "vocab_file": "vocab.txt",
        "vocab_size": len(vocab.SPECIALS),
        "max_caption_len": MAX_CAPTION_LEN,
        "feature_dim": dims.pop(),
        "features_dtype": dtype,
        "max_regions": max(counts),
        "min_regions": min(counts),
        "region_policy": config.policy.describe(),
        "extractor": config.to_json(),
        "images_file": IMAGES_JSON,
        "splits": {SPLIT: {"images": len(written), "captions": 0, "shards": num_shards}},
        "bad_records_skipped": len(failures),
    }
    writer.write_json(os.path.join(output_dir, pipeline.METADATA_FILE), meta)
    return meta


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not source.IMAGES.value:
        raise app.UsageError("--images is required (files, globs or directories)")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    try:
        config = source.config_from_flags()
        paths = images_lib.list_images(source.IMAGES.value)
    except (ValueError, FileNotFoundError) as err:
        raise app.UsageError(str(err)) from None
    result = extract_images(
        paths,
        FLAGS.output_dir,
        config,
        num_shards=FLAGS.num_shards,
        features_dtype=FLAGS.features_dtype,
        overwrite=FLAGS.overwrite,
        batch_size=cli_flags.BATCH_SIZE.value,
        threads=source.DECODE_THREADS.value,
    )
    for failure in result["failures"]:
        print(f"FAILED {failure['file']}: {failure['error']}", file=sys.stderr)
    meta = result["meta"] or {}
    print(
        f"wrote {FLAGS.output_dir}: {result['images']} images "
        f"({len(result['written'])} shards written, {len(result['skipped'])} already done), "
        f"{len(result['failures'])} failed; feature dim {meta.get('feature_dim')}, regions "
        f"{meta.get('min_regions')}-{meta.get('max_regions')}"
    )
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    cli.run(main)
