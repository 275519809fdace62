r"""TFLite encoder + decoder-step models, with a parity, latency and GPU-delegate report.

  python -m export.tflite --model_dir=RUN --output_dir=RUN/tflite [--data_dir=DATA] \
      [--tflite_images=50] [--beam_size=3] [--tflite_variants=fp32,fp16,int8]

Writes to OUTPUT_DIR, per variant V (fp32; fp16 weights; dynamic-range int8,
which LiteRT documents as a CPU technique: the GPU delegate reads no int8 weights):
`encoder_V.tflite`, `step_V.tflite` (shapes: `export.tflite_models`; static batch
`--beam_size`: one step call advances every beam, or that many greedy images), the
Analyzer's full text `analysis/{encoder,step}_V.txt`, and `report.md` +
`report.json`: sizes, per-step CPU latency, parity with the TF model (greedy
and beam captions of the first `--tflite_images` images of `--tflite_split`,
decoded by the TF model and by the host loops over the interpreter, on the same
inputs padded or cut to `--tflite_regions`), and the GPU-delegate analysis and
op list of every model (`export.tflite_report`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from export import tflite_models, tflite_report
from tfcap import checkpoints, cli, cli_flags, errors

_SPLIT = flags.DEFINE_string("tflite_split", "test", "Split whose images the parity run decodes.")
_IMAGES = flags.DEFINE_integer("tflite_images", 50, "Images in the parity run.", lower_bound=1)
_REGIONS = flags.DEFINE_integer("tflite_regions", 36, "Static region count.", lower_bound=1)
_THREADS = flags.DEFINE_integer("tflite_threads", 1, "Interpreter threads.", lower_bound=1)
_VARIANTS = flags.DEFINE_multi_enum(
    "tflite_variants", list(tflite_models.VARIANTS), tflite_models.VARIANTS, "Variants to build."
)


def export_tflite(
    model_dir: str,
    output_dir: str,
    *,
    data_dir: str | None = None,
    split: str = "test",
    max_images: int = 50,
    regions: int = 36,
    beam_size: int = 3,
    alpha: float = 0.0,
    variants: tuple[str, ...] = tflite_models.VARIANTS,
    checkpoint: str = "best",
    num_threads: int = 1,
) -> dict:
    """Builds every variant, measures it and writes the report; returns report.json's dict.

    `data_dir` defaults to the training data recorded in model.json.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise errors.OutputExists(f"{output_dir} exists and is not a directory")
    model, _, info = checkpoints.load_model(model_dir, checkpoint)
    data_dir = data_dir or info["data"]["data_dir"]
    dim = info["data"]["feature_dim"]
    features, masks, cut = tflite_report.test_images(data_dir, split, max_images, regions)
    if cut:
        logging.warning("%d images had more than %d regions: cut for both models", cut, regions)
    reference = tflite_report.tf_reference(model, features, masks, beam_size, alpha)
    functions = tflite_models.step_functions(model, dim, regions, batch=beam_size)
    os.makedirs(os.path.join(output_dir, "analysis"), exist_ok=True)
    report = {
        "setup": {
            "model_dir": model_dir,
            "checkpoint": checkpoint,
            "data_dir": data_dir,
            "split": split,
            "images": len(features),
            "images_cut": cut,
            "regions": regions,
            "feature_dim": dim,
            "beam_size": beam_size,
            "length_penalty": alpha,
            "num_threads": num_threads,
            "tensorflow": tf.__version__,
            "ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
        },
        "variants": {},
    }
    run = _Run(features, masks, reference, model.max_len, beam_size, alpha, num_threads)
    for variant in variants:
        logging.info("variant %s", variant)
        report["variants"][variant] = _variant(variant, functions, run, output_dir)
    _write(output_dir, report)
    return report


@dataclasses.dataclass
class _Run:
    """The parity run's inputs: features `[images, regions, dim]`, masks
    `[images, regions]`, the TF model's `{"greedy", "beam"}` ids, decoding settings."""

    features: np.ndarray
    masks: np.ndarray
    reference: dict
    max_len: int
    beam_size: int
    alpha: float
    num_threads: int


def _variant(variant: str, functions: dict, run: _Run, output_dir: str) -> dict:
    """Converts, writes, decodes and analyses one variant."""
    blobs, models = {}, {}
    for name, fn in functions.items():
        blobs[name] = tflite_models.convert(fn, variant)
        file = f"{name}_{variant}.tflite"
        with open(os.path.join(output_dir, file), "wb") as f:
            f.write(blobs[name])
        analysis = tflite_report.analyze(blobs[name])
        with open(os.path.join(output_dir, "analysis", f"{name}_{variant}.txt"), "w") as f:
            f.write(analysis)
        models[name] = {
            "file": file,
            "bytes": len(blobs[name]),
            "gpu": tflite_report.gpu_findings(blobs[name], analysis),
        }
    decoder = tflite_models.LiteDecoder(
        blobs["encoder"], blobs["step"], run.max_len, run.num_threads
    )
    greedy = decoder.greedy(run.features, run.masks)[0]  # beam_size images per call
    latency = {
        "step": tflite_report.latency_ms(decoder.step_seconds),
        "encoder": tflite_report.latency_ms(decoder.encode_seconds),
    }
    images = list(zip(run.features, run.masks, strict=True))
    beam = np.stack([decoder.beam(f, m, run.alpha)[0] for f, m in images])  # one call a step
    return {
        "models": models,
        "latency_ms": latency,
        "parity": {
            "greedy": tflite_report.parity(run.reference["greedy"], greedy),
            "beam": tflite_report.parity(run.reference["beam"], beam),
        },
    }


def _write(output_dir: str, report: dict) -> None:
    for name, text in (
        ("report.json", json.dumps(report, indent=1)),
        ("report.md", tflite_report.markdown(report)),
    ):
        tmp = os.path.join(output_dir, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(output_dir, name))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report = export_tflite(
        cli_flags.MODEL_DIR.value,
        flags.FLAGS.output_dir,
        data_dir=cli_flags.DATA_DIR.value,
        split=_SPLIT.value,
        max_images=_IMAGES.value,
        regions=_REGIONS.value,
        beam_size=flags.FLAGS.beam_size,
        alpha=flags.FLAGS.length_penalty,
        variants=tuple(dict.fromkeys(_VARIANTS.value)),
        checkpoint=flags.FLAGS.checkpoint,
        num_threads=_THREADS.value,
    )
    print(tflite_report.markdown(report))


if __name__ == "__main__":
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    cli.run(main)
