"""The non-model workloads of `tfcap.bench`: matmul peak, CIDEr-D, the input pipeline and a
whole demo XE phase in a fresh process; and the model FLOPs of an XE step."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time

from tfcap import errors
from tfcap.perf.timing import matmul_peak, median_time


def bench_dataset_dir(tmp: str, images: int = 1000, shards: int = 4) -> str:
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


_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # tfcap/perf/..
_DEMO_FLAGS = os.path.join(_REPO, "configs", "demo.flags")
_STEADY = re.compile(r"xe step (\d+)/\d+ .*\| ([\d.]+) img/s")


def demo_batch_images() -> int:
    """Images per step of the demo's training (configs/demo.flags' --batch_size)."""
    if not os.path.exists(_DEMO_FLAGS):
        raise errors.MissingInput(f"{_DEMO_FLAGS}: the phase benchmark needs the source tree")
    with open(_DEMO_FLAGS, encoding="utf-8") as f:
        return int(re.search(r"--batch_size=(\d+)", f.read())[1])


def bench_phase(data_dir: str | None, steps: int, work: str, train_flags=()) -> dict:
    """A whole demo XE phase (`tfcap.train`, fresh process): images/s incl. everything.

    `train_flags`: more `tfcap.train` flags after the demo's (tests use a smaller split).
    """
    flagfile, batch = _DEMO_FLAGS, demo_batch_images()
    env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not data_dir:
        data_dir = os.path.join(work, "data")
        data_flags = os.path.join(_REPO, "configs", "demo_data.flags")
        subprocess.run(
            [sys.executable, "-m", "tfcap.data.prepare", f"--flagfile={data_flags}",
             f"--output_dir={data_dir}"],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
    from tfcap.data import pipeline

    pipeline.load_metadata(data_dir)
    command = [
        sys.executable, "-m", "tfcap.train", f"--flagfile={flagfile}", "--phases=xe",
        f"--data_dir={data_dir}", f"--model_dir={os.path.join(work, 'model')}",
        f"--train_steps={steps}", *train_flags,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    steady = [float(m[2]) for m in _STEADY.finditer(proc.stderr) if int(m[1]) > 1]
    return {
        "steps": steps,
        "batch_images": batch,
        "seconds": seconds,
        "images_per_s": steps * batch / seconds,
        "steady_images_per_s": steady[-1] if steady else None,
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


def bench_peak(repeats: int) -> dict:
    return {
        "float32_gflops": matmul_peak("float32", repeats=repeats),
        "bfloat16_gflops": matmul_peak("bfloat16", repeats=repeats),
    }


def xe_flops(preset: str, batch_size: int) -> int:
    from tfcap.model.presets import PRESETS
    from tfcap.perf import flops, model_bench

    _, sizes = model_bench.random_batch(preset, 1)
    config = PRESETS[preset]
    return flops.xe_step_flops(
        images=batch_size,
        captions_per_image=5,
        steps=17,
        **sizes,
        rnn_size=config["rnn_size"],
        embed_dim=config["embed_dim"],
        att_hidden=config["att_hidden"],
        text_attention=config["text_attention"],
        max_len=config["max_len"],
        feature_embed=config.get("feature_embed", False),
    )
