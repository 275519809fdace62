r"""Speed figures as JSON: medians over repeated runs after warm-up.

  python -m tfcap.bench [--only=input,...] [--data_dir=DIR] [--json_out=PATH]

Benchmarks:
  input   tf.data records/s of the training input (parse, decode, pad, shuffle,
          batch), on --data_dir or on random records it writes itself at the
          updown preset's size (36 regions x 2048 float16, 5 x 16-token captions).
  cider   CIDEr-D of 50 captions x 5 references: pycocoevalcap's scorer against
          tfcap's (strings; token ids with references encoded once; and the SCST
          reward path, which encodes the batch's references every call).
  xe      one XE training step (forward, backward, Adam) at --preset, batch
          --batch_size images x 5 captions of 16 tokens, random data.
  scst    one SCST step (5 samples per image, greedy baseline, CIDEr-D reward,
          update) at --preset, same batch.

Every figure is measured in this run; ratios compare figures of the same run.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

from absl import app, flags, logging

from tfcap import cli_flags

BENCHMARKS = ("input", "cider", "xe", "scst")
_ONLY = flags.DEFINE_list("only", list(BENCHMARKS), f"Benchmarks to run, of {BENCHMARKS}.")
_PRESET = flags.DEFINE_enum(
    "bench_preset", "updown", ["updown", "multiatt", "demo"], "Model size of the xe/scst figures."
)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the results JSON here.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.", lower_bound=1)

for _name in ("data_dir", "batch_size"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort


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
            "schema_version": records.SCHEMA_VERSION,
            "source": "bench",
            "vocab_file": "vocab.txt",
            "vocab_size": len(words),
            "max_caption_len": 16,
            "feature_dim": dim,
            "features_dtype": "float16",
            "max_regions": regions,
            "min_regions": regions,
            "splits": {"train": {"images": images, "captions": 5 * images, "shards": shards}},
        },
    )
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


def bench_cider(repeats: int, calls: int = 20) -> dict:
    """tfcap's CIDEr-D against pycocoevalcap's, incl. the SCST reward as called in training.

    The SCST figure scores one step's 50 samples (10 images x 5 samples, 5
    references per image, Zipf-distributed words over 2,000, EOS-terminated
    ids) with the reward function training uses: the batch's references are
    new at every call, so their encoding is part of the time. pycocoevalcap
    scores the same 50 captions against the same references. Each timed run
    is `calls` calls on a cycle of 4 batches.
    """
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from tfcap.rewards import cider
    from tfcap.training import scst

    out = cider.benchmark(num_candidates=50, refs_per_image=5, repeats=repeats)
    rng = np.random.default_rng(1)
    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(2000)]

    def ids(shape, length):  # Zipf word ids, 8..length tokens, then <eos> and padding
        out = np.zeros(shape + (length,), np.int64)
        for row in np.ndindex(*shape):
            n = int(rng.integers(8, length))
            out[row][:n] = 3 + np.minimum(rng.zipf(1.4, n), len(words) - 4)
            out[row][n] = 2
        return out

    def text(row) -> str:
        return " ".join(words[i] for i in row[: list(row).index(2)])

    train = [[text(r) for r in image] for image in ids((2000, 5), 17)]
    reward = scst.cider_reward(cider.CiderD(train, vocabulary=words, eos_id=2))
    index = np.repeat(np.arange(10), 5)
    batches = [(ids((50,), 16), ids((10, 5), 17)) for _ in range(4)]
    as_coco = [
        (
            {i: [text(r) for r in refs[i // 5]] for i in range(50)},
            {i: [text(samples[i])] for i in range(50)},
        )
        for samples, refs in batches
    ]

    def timed(fn) -> float:
        fn()  # warm-up
        cycle = itertools.cycle(range(len(batches)))
        return median_time(lambda: [fn(next(cycle)) for _ in range(calls)], repeats) / calls

    out["scst_reward_s"] = timed(lambda b=0: reward(batches[b][0], index, batches[b][1]))
    out["scst_pycocoevalcap_s"] = timed(lambda b=0: Cider().compute_score(*as_coco[b]))
    out["speedup_scst_reward"] = out["scst_pycocoevalcap_s"] / out["scst_reward_s"]
    return out


def _random_batch(preset: str, batch_size: int, seq_per_img: int = 5):
    import tensorflow as tf

    regions, dim, vocab_size = (10, 256, 66) if preset == "demo" else (36, 2048, 9487)
    g = tf.random.Generator.from_seed(0)
    captions = g.uniform([batch_size, seq_per_img, 18], 4, vocab_size, tf.int32)
    captions = tf.concat(
        [
            tf.ones_like(captions[..., :1]),
            captions[..., 1:17],
            tf.fill(tf.shape(captions[..., :1]), 2),
        ],
        -1,
    )
    batch = {
        "features": tf.nn.relu(g.normal([batch_size, regions, dim])),
        "region_mask": tf.ones([batch_size, regions], tf.bool),
        "captions": captions,
    }
    return batch, vocab_size, dim


def bench_steps(preset: str, batch_size: int, repeats: int, which: list[str]) -> dict:
    """Seconds per XE and SCST step at `preset` (random data, default strategy)."""
    import keras
    import tensorflow as tf

    from tfcap.model.captioner import Captioner
    from tfcap.rewards import cider
    from tfcap.training import scst, xe

    batch, vocab_size, dim = _random_batch(preset, batch_size)
    model = Captioner.from_preset(preset, vocab_size)
    model.build((None, None, dim))
    optimizer = keras.optimizers.Adam(5e-4)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    out = {
        "preset": preset,
        "batch_images": batch_size,
        "captions_per_image": 5,
        "parameters": model.count_params(),
    }
    seed = tf.constant([0, 0], tf.int64)
    if "xe" in which:
        step = xe.make_xe_step(strategy, model, optimizer, xe.XEConfig())
        out["xe_step_s"] = median_time(
            lambda: step(batch, tf.constant(0.0), seed)[0].numpy(), repeats, warmup=2
        )
    if "scst" in which:
        words = [str(i) for i in range(vocab_size)]
        refs = batch["captions"][:, :, 1:].numpy()
        scorer = cider.CiderD(
            [[" ".join(map(str, r)) for r in image] for image in refs], vocabulary=words, eos_id=2
        )
        reward = scst.evaluator_reward(scst.cider_reward(scorer))
        step = scst.make_policy_step(strategy, model, optimizer, reward, scst.SCSTConfig())
        out["scst_step_s"] = median_time(
            lambda: step(batch, seed)["loss"].numpy(), repeats, warmup=2
        )
    return out


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
            elif name == "cider":
                results["results"]["cider"] = bench_cider(_REPEATS.value)
            elif name in ("xe", "scst"):
                if "steps" not in results["results"]:
                    which = [n for n in _ONLY.value if n in ("xe", "scst")]
                    results["results"]["steps"] = bench_steps(
                        _PRESET.value, cli_flags.BATCH_SIZE.value, _REPEATS.value, which
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
