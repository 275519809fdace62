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

import json
import os
import tempfile

from absl import app, flags, logging

from tfcap import cli, cli_flags, errors
from tfcap.perf import reference as reference_figures
from tfcap.perf import report, workloads
from tfcap.perf.timing import PeakRSS, machine

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
        "targets": report.TARGETS,
        "results": {},
    }
    res = out["results"]
    models = mb.isolated if isolate else mb.in_process
    for name in [n for n in BENCHMARKS if n in only]:
        logging.info("benchmark %s", name)
        with PeakRSS() as memory:
            if name == "peak":
                res["peak"] = workloads.bench_peak(repeats)
            elif name == "cider":
                res["cider"] = workloads.bench_cider(repeats)
            elif name in mb.BENCHES:
                chosen = (mb.VARIANTS if variants else mb.DEFAULTS)[name]
                rows = models(name, preset, batch_size, repeats, chosen, device)
                res[name] = {"variants": rows}
                if name == "xe":
                    res["xe"]["flops_per_step"] = workloads.xe_flops(preset, batch_size)
            elif name == "input":
                with tempfile.TemporaryDirectory() as tmp:
                    source = data_dir or workloads.bench_dataset_dir(tmp)
                    res["input"] = workloads.bench_input(source, batch_size, repeats)
            elif name == "phase":
                with tempfile.TemporaryDirectory() as tmp:
                    res["phase"] = workloads.bench_phase(data_dir, phase_steps, tmp)
        if name in ("cider", "input"):  # model variants report their own process's peak
            res[name]["peak_rss_mb"] = round(memory.peak_mb)
    report.derive(out)
    return out


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
        reference = reference_figures.load_reference(
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
    print(report.table(out))
    text = json.dumps(out, indent=1)
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"JSON written to {_JSON_OUT.value}")
    else:
        print(text)


if __name__ == "__main__":
    cli.run(main)
