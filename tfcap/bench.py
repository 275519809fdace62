r"""Speed figures as JSON: medians over repeated runs after warm-up.

  python -m tfcap.bench [--only=input,...] [--data_dir=DIR] [--json_out=PATH]

Benchmarks:
  input   tf.data records/s of the training input (parse, decode, pad, shuffle,
          batch), on --data_dir or on random records it writes itself at the
          updown preset's size (36 regions x 2048 float16, 5 x 16-token captions).

Every figure is measured in this run; ratios compare figures of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

from absl import app, flags, logging

from tfcap import cli_flags

_ONLY = flags.DEFINE_list("only", ["input"], "Benchmarks to run (comma list): input.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results JSON here.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.", lower_bound=1)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench_dataset_dir(tmp: str, images: int = 1000, shards: int = 4) -> str:
    """Writes random records shaped like COCO bottom-up features (36 x 2048, float16)."""
    import numpy as np
    import tensorflow as tf

    from tfcap.data import pipeline, records, vocab, writer

    out = os.path.join(tmp, "bench_data")
    os.makedirs(out)
    rng = np.random.default_rng(0)
    regions, dim = 36, 2048
    words = list(vocab.SPECIALS) + [f"w{i}" for i in range(9487 - len(vocab.SPECIALS))]
    vocab.Vocab(words).save(os.path.join(out, "vocab.txt"))
    for shard in range(shards):
        path = os.path.join(out, writer.shard_name("train", shard, shards))
        with tf.io.TFRecordWriter(path) as w:
            for i in range(shard, images, shards):
                boxes = np.sort(rng.random((regions, 4), np.float32), axis=1)
                rec = records.ImageRecord(
                    i, 640, 480, boxes, rng.random((regions, dim), np.float32), ["a caption"] * 5
                )
                ids = [list(rng.integers(4, len(words), 16)) for _ in range(5)]
                w.write(records.to_example(rec, ids, "float16").SerializeToString())
    writer.write_json(
        os.path.join(out, pipeline.METADATA_FILE),
        {
            "schema_version": records.SCHEMA_VERSION, "source": "bench", "vocab_file": "vocab.txt",
            "vocab_size": len(words), "max_caption_len": 16, "feature_dim": dim,
            "features_dtype": "float16", "max_regions": regions, "min_regions": regions,
            "splits": {"train": {"images": images, "captions": 5 * images, "shards": shards}},
        },
    )  # fmt: skip
    return out


def bench_input(data_dir: str, batch_size: int, repeats: int) -> dict:
    """Records (images) per second the training input delivers."""
    from tfcap.data import pipeline

    ds = pipeline.make_dataset(
        data_dir, "train", batch_size, shuffle=True, repeat=True, seed=0, drop_remainder=True
    )
    it = iter(ds)
    batches = 100

    def run():
        for _ in range(batches):
            next(it)

    seconds = median_time(run, repeats)
    meta = pipeline.load_metadata(data_dir)
    return {
        "records_per_s": batches * batch_size / seconds,
        "batch_size": batch_size,
        "regions": meta["max_regions"],
        "feature_dim": meta["feature_dim"],
        "features_dtype": meta["features_dtype"],
    }


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv):
    del argv
    import tensorflow as tf

    results = {"machine": {**machine(), "tensorflow": tf.__version__}, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in _ONLY.value:
            logging.info("benchmark %s", name)
            if name == "input":
                data_dir = cli_flags.DATA_DIR.value or _bench_dataset_dir(tmp)
                results["results"]["input"] = bench_input(
                    data_dir, cli_flags.BATCH_SIZE.value, _REPEATS.value
                )
            else:
                raise app.UsageError(f"--only: unknown benchmark {name!r}")
    text = json.dumps(results, indent=1)
    print(text)
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
