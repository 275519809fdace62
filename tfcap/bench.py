r"""Speed figures: medians over repeated runs after warm-up; a table and JSON.

  python -m tfcap.bench [--preset=updown|demo] [--only=...] [--json_out=PATH]

Benchmarks (`--only`, default all, in this order):
  peak    float32 and bfloat16 2048^3 matrix-product GFLOP/s of this machine.
  cider   CIDEr-D of 50 captions x 5 references: pycocoevalcap's scorer against
          tfcap's (strings; token ids with references encoded once; and the SCST
          reward as training calls it, references new at every call).
  xe      one XE training step (forward, backward, Adam) at --preset, batch
          --batch_size images x 5 captions of 16 words, random data, per
          speed variant (tfcap.perf.model_bench); model FLOPs per step and
          the fraction of the measured matmul peak they reach.
  scst    one SCST step (5 samples per image, greedy baseline, CIDEr-D reward,
          update), same batch, per variant.
  decode  greedy, beam-3 and beam-5 decoding, ms per image at batch --batch_size.
  input   tf.data records/s of the training input (parse, decode, pad, shuffle,
          batch), on --data_dir or on random records it writes itself at the
          updown preset's size (36 regions x 2048 float16, 5 x 16-word captions),
          against the records/s the fastest XE step consumes.

Every figure is measured in this run; ratios compare figures of the same run.
Each model variant runs in a fresh process, one at a time; its peak RSS is the
peak memory of that process (model, optimizer, compiled step and data).
The reference column holds a widely used PyTorch implementation of the same
model measured on these 2-core machines (its own figures, not run here).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile

from absl import app, flags, logging

from tfcap import cli, cli_flags, errors
from tfcap.perf.timing import PeakRSS, matmul_peak, median_time

BENCHMARKS = ("peak", "cider", "xe", "scst", "decode", "input")
_ONLY = flags.DEFINE_list("only", list(BENCHMARKS), f"Benchmarks to run, of {BENCHMARKS}.")
_JSON_OUT = flags.DEFINE_string(
    "json_out", None, "Write the results JSON here (else print it after the tables)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.", lower_bound=1)
_VARIANTS = flags.DEFINE_bool(
    "variants", True, "Time every speed variant (else only the float32 and bfloat16 defaults)."
)

for _name in ("data_dir", "batch_size", "preset"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort

# A PyTorch Up-Down implementation on these machines (updown preset, batch 10 x 5).
REFERENCE = {"xe_step_s": 3.1, "scst_step_s": 3.8, "greedy_ms": 45.0, "beam5_ms": 115.0}
TARGETS = {"step_speedup": 2.0, "beam5_speedup": 2.0, "cider_speedup": 20.0, "input_ratio": 10.0}


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
    )


def machine() -> dict:
    import psutil

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def run(
    only: list[str],
    preset: str,
    batch_size: int,
    repeats: int,
    variants: bool,
    data_dir: str | None = None,
    isolate: bool = True,
) -> dict:
    """All requested benchmarks; the results dict of the JSON output.

    `data_dir`: the dataset of the input benchmark (default: random records).
    `isolate`: each model variant in a fresh process (else all in this one).
    """
    import tensorflow as tf

    from tfcap.data import pipeline
    from tfcap.perf import model_bench as mb

    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise app.UsageError(f"--only: unknown benchmarks {unknown}, choose from {BENCHMARKS}")
    if data_dir and "input" in only:  # a missing or foreign dir fails now, not after the rest
        pipeline.load_metadata(data_dir)
        pipeline.split_files(data_dir, "train")
    out = {
        "machine": {**machine(), "tensorflow": tf.__version__},
        "preset": preset,
        "batch_images": batch_size,
        "reference": REFERENCE,
        "targets": TARGETS,
        "results": {},
    }
    res = out["results"]
    models = mb.isolated if isolate else mb.in_process
    for name in [n for n in BENCHMARKS if n in only]:
        logging.info("benchmark %s", name)
        with PeakRSS() as memory:
            if name == "peak":
                res["peak"] = bench_peak(repeats)
            elif name == "cider":
                res["cider"] = bench_cider(repeats)
            elif name in mb.BENCHES:
                chosen = (mb.VARIANTS if variants else mb.DEFAULTS)[name]
                res[name] = {"variants": models(name, preset, batch_size, repeats, chosen)}
                if name == "xe":
                    res["xe"]["flops_per_step"] = xe_flops(preset, batch_size)
            elif name == "input":
                with tempfile.TemporaryDirectory() as tmp:
                    source = data_dir or _bench_dataset_dir(tmp)
                    res["input"] = bench_input(source, batch_size, repeats)
        if name in ("cider", "input"):  # model variants report their own process's peak
            res[name]["peak_rss_mb"] = round(memory.peak_mb)
    _derive(out)
    return out


def _best(rows: list[dict], key: str = "seconds") -> dict:
    return min(rows, key=lambda r: r[key])


def _derive(out: dict) -> None:
    """Ratios between figures of this run (and against the reference)."""
    res, ref = out["results"], out["reference"]
    for name in ("xe", "scst"):
        rows = res.get(name, {}).get("variants", [])
        for row in rows:
            row["speedup_vs_first"] = rows[0]["seconds"] / row["seconds"]
            if out["preset"] == "updown":
                row["speedup_vs_reference"] = ref[f"{name}_step_s"] / row["seconds"]
    for row in res.get("xe", {}).get("variants", []):
        row["achieved_gflops"] = res["xe"]["flops_per_step"] / row["seconds"] / 1e9
        if "peak" in res:
            peak = res["peak"][
                "bfloat16_gflops" if "bfloat16" in row["dtype"] else "float32_gflops"
            ]
            row["fraction_of_peak"] = row["achieved_gflops"] / peak
    if "decode" in res and out["preset"] == "updown":
        for row in res["decode"]["variants"]:
            row["greedy_speedup_vs_reference"] = ref["greedy_ms"] / row["greedy_ms_per_image"]
            row["beam5_speedup_vs_reference"] = ref["beam5_ms"] / row["beam5_ms_per_image"]
    if "input" in res and "xe" in res:
        consumed = out["batch_images"] / _best(res["xe"]["variants"])["seconds"]
        res["input"]["xe_consumes_records_per_s"] = consumed
        res["input"]["ratio_to_consumption"] = res["input"]["records_per_s"] / consumed


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(out: dict) -> str:
    """The results as markdown tables."""
    res, m = out["results"], out["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['memory_gib']} GiB, "
        f"TensorFlow {m['tensorflow']}; preset `{out['preset']}`, batch "
        f"{out['batch_images']} images x 5 captions.",
        "",
    ]
    if "peak" in res:
        p = res["peak"]
        lines += [
            f"Matmul peak: float32 {p['float32_gflops']:.0f} GFLOP/s, "
            f"bfloat16 {p['bfloat16_gflops']:.0f} GFLOP/s.",
            "",
        ]
    for name, ref_key in (("xe", "xe_step_s"), ("scst", "scst_step_s")):
        if name not in res:
            continue
        lines += [
            f"| {name.upper()} step | s/step | vs first row | vs PyTorch ref "
            f"({out['reference'][ref_key]} s) | GFLOP/s (of peak) | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in res[name]["variants"]:
            flops = (
                f"{r['achieved_gflops']:.0f} ({r.get('fraction_of_peak', float('nan')):.0%})"
                if "achieved_gflops" in r
                else ""
            )
            lines.append(
                f"| {r['variant']} | {r['seconds']:.2f} | {r['speedup_vs_first']:.2f}x | "
                f"{_ratio(r.get('speedup_vs_reference'))} | {flops} | "
                f"{r['peak_rss_mb']} |"
            )
        if name == "xe":
            lines.append(f"\nModel FLOPs per XE step: {res['xe']['flops_per_step'] / 1e9:.0f} G.")
        lines.append("")
    if "decode" in res:
        lines += [
            "| Decoding, ms/image | greedy | beam-3 | beam-5 | beam-5 vs PyTorch ref "
            f"({out['reference']['beam5_ms']:.0f} ms) | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["decode"]["variants"]:
            lines.append(
                f"| {r['variant']} | {r['greedy_ms_per_image']:.1f} | "
                f"{r['beam3_ms_per_image']:.1f} | {r['beam5_ms_per_image']:.1f} | "
                f"{_ratio(r.get('beam5_speedup_vs_reference'))} | {r['peak_rss_mb']} |"
            )
        lines.append("")
    if "cider" in res:
        c = res["cider"]
        lines += [
            f"CIDEr-D, 50 captions x 5 references: pycocoevalcap {1000 * c['pycocoevalcap_s']:.1f}"
            f" ms; tfcap strings {c['speedup_score']:.0f}x, token ids {c['speedup_score_ids']:.0f}x"
            f" faster; SCST reward (references new each call) {1000 * c['scst_reward_s']:.2f} ms"
            f" vs {1000 * c['scst_pycocoevalcap_s']:.1f} ms = {c['speedup_scst_reward']:.0f}x.",
            "",
        ]
    if "input" in res:
        i = res["input"]
        ratio = (
            f", {i['ratio_to_consumption']:.0f}x the {i['xe_consumes_records_per_s']:.1f} "
            "records/s the fastest XE step consumes"
            if "ratio_to_consumption" in i
            else ""
        )
        lines += [
            f"Input: {i['records_per_s']:.0f} records/s ({i['regions']} x {i['feature_dim']} "
            f"{i['features_dtype']}){ratio}; peak RSS {i['peak_rss_mb']} MB.",
            "",
        ]
    return "\n".join(lines)


def main(argv):
    del argv
    json_dir = os.path.dirname(os.path.abspath(_JSON_OUT.value or "."))
    if _JSON_OUT.value and not os.path.isdir(json_dir):
        raise errors.MissingInput(f"--json_out={_JSON_OUT.value}: no directory {json_dir}")
    preset = cli_flags.PRESET.value if flags.FLAGS["preset"].present else "updown"
    out = run(
        _ONLY.value,
        preset,
        cli_flags.BATCH_SIZE.value,
        _REPEATS.value,
        _VARIANTS.value,
        cli_flags.DATA_DIR.value,
    )
    print(table(out))
    text = json.dumps(out, indent=1)
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"JSON written to {_JSON_OUT.value}")
    else:
        print(text)


if __name__ == "__main__":
    cli.run(main)
