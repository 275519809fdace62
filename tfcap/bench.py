r"""Speed figures: medians over repeated runs after warm-up; a table and JSON.

  python -m tfcap.bench [--preset=updown|demo] [--only=...] [--json_out=PATH]
                        [--reference_json=PATH] [--device=/CPU:0|/GPU:0]

Benchmarks (`--only`, default all, in this order):
  peak    float32 and bfloat16 2048^3 matrix-product GFLOP/s of this machine.
  cider   CIDEr-D of 50 captions x 5 references: pycocoevalcap's scorer against
          tfcap's (strings; token ids with references encoded once; and the SCST
          reward as training calls it, references new at every call).
  xe      one XE training step (forward, backward, Adam) at --preset, batch
          --batch_size images x 5 captions of 16 words, random data, per
          speed variant (tfcap.perf.model_bench); model FLOPs per step and
          the fraction of the measured matmul peak they reach.
  scst    one SCST step (5 samples per image, CIDEr-D reward, update), same
          batch, per variant: greedy baseline (the reference's), and a last
          row with the mean-of-samples baseline (tfcap.train's default).
  decode  greedy, beam-3 and beam-5 decoding, ms per image at batch --batch_size.
  input   tf.data records/s of the training input (parse, decode, pad, shuffle,
          batch), on --data_dir or on random records it writes itself at the
          updown preset's size (36 regions x 2048 float16, 5 x 16-word captions),
          against the records/s the fastest XE step consumes.
  phase   (--preset=demo only, not in the default list) a whole XE phase of
          `python -m tfcap.train --flagfile=configs/demo.flags --phases=xe`
          (--phase_steps, default the demo's 1,251 steps of 20 images) in a
          fresh process on the demo data (--data_dir, or prepared here):
          images/s over the wall time incl. startup, input, logging,
          validation and checkpoints, and the steady img/s of its log.

Every figure is measured in this run; ratios compare figures of the same run.
Each model variant runs in a fresh process, one at a time; its peak RSS is the
peak memory of that process (model, optimizer, compiled step and data).

Reference: `--reference_json` takes the JSON line of the PyTorch Up-Down
reference, measured on this machine just before (see scripts/bench_vs_reference.sh):
with --preset=updown, its benchmark's (../shared/reference/bench_updown_torch.py,
updown sizes, 10 images x 5 captions); with --preset=demo --only=phase, its whole
demo XE phase on the same data (scripts/reference_demo_phase.py, key
`demo_xe_phase_images_per_s`). The tables then show its figures beside
tfcap's and their ratios; no figure measured elsewhere is used.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from tfcap import cli, cli_flags, errors
from tfcap.perf.timing import PeakRSS, matmul_peak, median_time

BENCHMARKS = ("peak", "cider", "xe", "scst", "decode", "input", "phase")
DEFAULT_BENCHMARKS = BENCHMARKS[:-1]  # phase takes minutes: on request
_ONLY = flags.DEFINE_list("only", list(DEFAULT_BENCHMARKS), f"Benchmarks to run, of {BENCHMARKS}.")
_REFERENCE_JSON = flags.DEFINE_string(
    "reference_json",
    None,
    "The reference's JSON line, measured on this machine: of ../shared/reference/"
    "bench_updown_torch.py (--preset=updown, batch 10), or of scripts/reference_demo_phase.py "
    "(--preset=demo --only=phase). Its figures and the ratios go beside tfcap's.",
)
_DEVICE = flags.DEFINE_string(
    "device", "", "Device of the model benchmarks, e.g. /CPU:0 or /GPU:0 (default: TF's choice)."
)
_PHASE_STEPS = flags.DEFINE_integer(
    "phase_steps", 1251, "XE steps of the phase benchmark (the demo's 5 epochs).", lower_bound=1
)
_JSON_OUT = flags.DEFINE_string(
    "json_out", None, "Write the results JSON here (else print it after the tables)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per figure.", lower_bound=1)
_VARIANTS = flags.DEFINE_bool(
    "variants", True, "Time every speed variant (else only the float32 and bfloat16 defaults)."
)

for _name in ("data_dir", "batch_size", "preset"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort

# Speed targets as ratios of the same run, tfcap's speed over the reference's: reference s /
# tfcap s per step or image; the demo phase tfcap images/s / reference images/s. input:
# records/s over consumption.
TARGETS = {
    "xe_vs_reference": 2.5,
    "scst_vs_reference": 2.5,
    "greedy_vs_reference": 2.0,
    "beam5_vs_reference": 3.0,
    "demo_phase_vs_reference": 1.5,
    "bfloat16_vs_float32_xe": 2.0,
    "input_ratio": 10.0,
}
# The reference benchmark's JSON keys -> the figures compared ("ms" or "ms_per_image").
_REFERENCE_KEYS = {
    "xe_step_s": ("ms", "xe_train_step", 1e-3),
    "scst_step_s": ("ms", "scst_step_ciderd_reward", 1e-3),
    "greedy_ms": ("ms_per_image", "greedy_decode", 1.0),
    "beam3_ms": ("ms_per_image", "beam3_decode", 1.0),
    "beam5_ms": ("ms_per_image", "beam5_decode", 1.0),
}


_DEMO_KEY = "demo_xe_phase_images_per_s"  # scripts/reference_demo_phase.py's figure


def load_reference(
    path: str, preset: str, batch_size: int, cpu: str, phase_steps: int | None = None
) -> dict:
    """The reference's figures from its benchmark JSON at `path`, checked comparable.

    With --preset=updown the line of bench_updown_torch.py (XE and SCST step, decoding);
    with --preset=demo that of scripts/reference_demo_phase.py (`demo_xe_phase_images_per_s`,
    a whole demo XE phase of `phase_steps` steps, when given, at the demo's batch).

    Raises `errors.BadInput` naming the file when it is not that JSON, lacks the
    figures of `preset`, was measured on another CPU or at another batch or length.
    """
    try:
        with errors.open_input(path, encoding="utf-8") as f:
            text = f.read()
    except errors.UserError as e:
        raise type(e)(f"--reference_json: {e}") from None
    lines = [line for line in text.splitlines() if line.strip().startswith("{")]
    try:
        raw = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise errors.BadInput(
            f"--reference_json={path}: not the reference's JSON line ({e})"
        ) from None
    if raw.get("cpu") and raw["cpu"] != cpu:
        raise errors.BadInput(
            f"--reference_json={path}: measured on {raw['cpu']!r}, this is {cpu!r}; "
            "ratios need both on one machine in one run"
        )
    ref = {"cpu": raw.get("cpu"), "torch": raw.get("torch"), "threads": raw.get("threads")}
    if preset == "demo":
        return {**ref, **_demo_reference(path, raw, phase_steps)}
    if preset != "updown":
        raise errors.BadInput(
            f"--reference_json={path}: the reference runs the updown sizes; --preset={preset}"
        )
    if _DEMO_KEY in raw:
        raise errors.BadInput(
            f"--reference_json={path}: the reference's demo XE phase "
            "(scripts/reference_demo_phase.py); compare it with --preset=demo --only=phase"
        )
    if raw.get("images") != batch_size:
        raise errors.BadInput(
            f"--reference_json={path}: measured at {raw.get('images')} images per batch; "
            f"run with --batch_size={raw.get('images')}"
        )
    for key, (group, name, scale) in _REFERENCE_KEYS.items():
        value = raw.get(group, {}).get(name)
        if value is not None:
            ref[key] = value * scale
    if len(ref) == 3:
        raise errors.BadInput(
            f"--reference_json={path}: none of {sorted(n for _, n, _ in _REFERENCE_KEYS.values())}"
        )
    return ref


def _demo_reference(path: str, raw: dict, phase_steps: int | None) -> dict:
    """The demo-phase figures of the reference's JSON line `raw` (`load_reference`)."""
    if _DEMO_KEY not in raw:
        raise errors.BadInput(
            f"--reference_json={path}: no {_DEMO_KEY!r}, the figure --preset=demo compares "
            "(scripts/reference_demo_phase.py's line); bench_updown_torch.py's has none: "
            "that reference runs the updown sizes"
        )
    batch = demo_batch_images()
    if raw.get("batch_images") != batch:
        raise errors.BadInput(
            f"--reference_json={path}: a phase of {raw.get('batch_images')} images per step; "
            f"the demo's is {batch} (configs/demo.flags)"
        )
    if phase_steps is not None and raw.get("steps") != phase_steps:
        raise errors.BadInput(
            f"--reference_json={path}: a phase of {raw.get('steps')} steps; "
            f"run with --phase_steps={raw.get('steps')}"
        )
    out = {_DEMO_KEY: raw[_DEMO_KEY], "demo_xe_phase_steps": raw.get("steps")}
    if raw.get("loop_images_per_s") is not None:
        out["demo_xe_loop_images_per_s"] = raw["loop_images_per_s"]
    return out


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


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    reference: dict | None = None,
    device: str = "",
    phase_steps: int = 1251,
) -> dict:
    """All requested benchmarks; the results dict of the JSON output.

    `data_dir`: the dataset of the input and phase benchmarks (default: random
    records; the demo data for phase). `isolate`: each model variant in a fresh
    process (else all in this one). `reference`: `load_reference(...)`, measured
    in this run. `device`: of the model benchmarks ("" TensorFlow's choice).
    """
    import tensorflow as tf

    from tfcap.data import pipeline
    from tfcap.perf import model_bench as mb

    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise app.UsageError(f"--only: unknown benchmarks {unknown}, choose from {BENCHMARKS}")
    if "phase" in only and preset != "demo":
        raise app.UsageError("--only=phase: the whole-phase benchmark is of --preset=demo")
    if data_dir and "input" in only:  # a missing or foreign dir fails now, not after the rest
        pipeline.load_metadata(data_dir)
        pipeline.split_files(data_dir, "train")
    out = {
        "machine": {**machine(), "tensorflow": tf.__version__},
        "preset": preset,
        "batch_images": batch_size,
        "device": device or "default",
        "devices": [d.name for d in tf.config.list_physical_devices()],
        "reference": reference,
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
                rows = models(name, preset, batch_size, repeats, chosen, device)
                res[name] = {"variants": rows}
                if name == "xe":
                    res["xe"]["flops_per_step"] = xe_flops(preset, batch_size)
            elif name == "input":
                with tempfile.TemporaryDirectory() as tmp:
                    source = data_dir or _bench_dataset_dir(tmp)
                    res["input"] = bench_input(source, batch_size, repeats)
            elif name == "phase":
                with tempfile.TemporaryDirectory() as tmp:
                    res["phase"] = bench_phase(data_dir, phase_steps, tmp)
        if name in ("cider", "input"):  # model variants report their own process's peak
            res[name]["peak_rss_mb"] = round(memory.peak_mb)
    _derive(out)
    return out


def _best(rows: list[dict], key: str = "seconds") -> dict:
    return min(rows, key=lambda r: r[key])


def _derive(out: dict) -> None:
    """Ratios between figures of this run (and against the reference)."""
    res, ref = out["results"], out.get("reference") or {}
    for name in ("xe", "scst"):
        rows = res.get(name, {}).get("variants", [])
        for row in rows:
            row["speedup_vs_first"] = rows[0]["seconds"] / row["seconds"]
            if f"{name}_step_s" in ref:
                row["speedup_vs_reference"] = ref[f"{name}_step_s"] / row["seconds"]
    for row in res.get("xe", {}).get("variants", []):
        row["achieved_gflops"] = res["xe"]["flops_per_step"] / row["seconds"] / 1e9
        if "peak" in res:
            peak = res["peak"][
                "bfloat16_gflops" if "bfloat16" in row["dtype"] else "float32_gflops"
            ]
            row["fraction_of_peak"] = row["achieved_gflops"] / peak
    for row in res.get("decode", {}).get("variants", []):
        for method in ("greedy", "beam3", "beam5"):
            if f"{method}_ms" in ref:
                row[f"{method}_speedup_vs_reference"] = (
                    ref[f"{method}_ms"] / row[f"{method}_ms_per_image"]
                )
    from tfcap.perf import model_bench as mb

    xe = {r["variant"]: r["seconds"] for r in res.get("xe", {}).get("variants", [])}
    bf16 = mb.DEFAULTS["xe"][1].name
    if mb.DEFAULT.name in xe and bf16 in xe:  # the float32 default and its bfloat16 twin
        res["xe"]["bfloat16_speedup_vs_float32"] = xe[mb.DEFAULT.name] / xe[bf16]
    if "phase" in res and _DEMO_KEY in ref:  # throughputs: tfcap / reference
        res["phase"]["reference_images_per_s"] = ref[_DEMO_KEY]
        res["phase"]["speedup_vs_reference"] = res["phase"]["images_per_s"] / ref[_DEMO_KEY]
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
    ref = out.get("reference") or {}
    if ref:
        lines += [
            f"Reference (PyTorch Up-Down, torch {ref.get('torch')}, {ref.get('threads')} threads, "
            "measured in this run): "
            + ", ".join(
                f"{k} {v:.3g}" for k, v in ref.items() if k.endswith(("_s", "_ms", "_per_s"))
            )
            + ".",
            "",
        ]
    for name, ref_key in (("xe", "xe_step_s"), ("scst", "scst_step_s")):
        if name not in res:
            continue
        shown = f"{ref[ref_key]:.2f} s" if ref_key in ref else "not given"
        lines += [
            f"| {name.upper()} step | s/step | vs first row | reference / tfcap "
            f"(reference {shown}) | GFLOP/s (of peak) | peak RSS MB |",
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
            if "bfloat16_speedup_vs_float32" in res["xe"]:
                lines.append(
                    "bfloat16 default vs float32 default: "
                    f"{res['xe']['bfloat16_speedup_vs_float32']:.2f}x."
                )
        lines.append("")
    if "decode" in res:
        lines += [
            "| Decoding, ms/image | greedy | beam-3 | beam-5 | reference / tfcap: greedy, "
            "beam-3, beam-5 | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        if ref:
            lines.append(
                "| reference | "
                + " | ".join(f"{ref.get(m + '_ms', float('nan')):.1f}" for m in _METHODS)
                + " | | |"
            )
        for r in res["decode"]["variants"]:
            ratios = ", ".join(_ratio(r.get(f"{m}_speedup_vs_reference")) for m in _METHODS)
            lines.append(
                f"| {r['variant']} | {r['greedy_ms_per_image']:.1f} | "
                f"{r['beam3_ms_per_image']:.1f} | {r['beam5_ms_per_image']:.1f} | "
                f"{ratios} | {r['peak_rss_mb']} |"
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
    if "phase" in res:
        p = res["phase"]
        steady = p["steady_images_per_s"]
        lines += [
            f"Whole demo XE phase: {p['steps']} steps of {p['batch_images']} images in "
            f"{p['seconds']:.0f} s = {p['images_per_s']:.1f} images/s (startup, input, logging, "
            f"validation, checkpoints included); steady {steady or float('nan'):.1f} img/s"
            + (
                f"; reference {p['reference_images_per_s']:.1f} images/s in the same run, "
                f"tfcap / reference {_ratio(p['speedup_vs_reference'])} (target "
                f"{_ratio(TARGETS['demo_phase_vs_reference'])})"
                if "speedup_vs_reference" in p
                else ""
            )
            + ".",
            "",
        ]
    return "\n".join(lines)


_METHODS = ("greedy", "beam3", "beam5")


def main(argv):
    del argv
    json_dir = os.path.dirname(os.path.abspath(_JSON_OUT.value or "."))
    if _JSON_OUT.value and not os.path.isdir(json_dir):
        raise errors.MissingInput(f"--json_out={_JSON_OUT.value}: no directory {json_dir}")
    preset = cli_flags.PRESET.value if flags.FLAGS["preset"].present else "updown"
    reference = None
    if _REFERENCE_JSON.value:
        cpu = machine()["cpu"]
        steps = _PHASE_STEPS.value if "phase" in _ONLY.value else None
        reference = load_reference(
            _REFERENCE_JSON.value, preset, cli_flags.BATCH_SIZE.value, cpu, phase_steps=steps
        )
    out = run(
        _ONLY.value,
        preset,
        cli_flags.BATCH_SIZE.value,
        _REPEATS.value,
        _VARIANTS.value,
        cli_flags.DATA_DIR.value,
        reference=reference,
        device=_DEVICE.value,
        phase_steps=_PHASE_STEPS.value,
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
