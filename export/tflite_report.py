"""Measurements for the TFLite report: test images, TF reference captions,
parity, latency, and the GPU-delegate analysis of each flatbuffer.

GPU analysis. Every op is checked against the GPU delegate's own rules
(`export.tflite_gpu`: op list, tensor types, per-op parameters, from LiteRT's
sources) and each one outside them is listed. The Analyzer's verdict
(`tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)`, printed
to stdout, captured and kept whole) is recorded too, as weak evidence: it
passes a model with WHILE. Also listed: control-flow and sequence-LSTM ops,
and tensors of dynamic shape.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from export import tflite_gpu
from export.tflite_models import pad_regions
from tfcap import errors
from tfcap.data import pipeline
from tfcap.data.vocab import EOS_ID
from tfcap.inference import make_generate_fn

# Builtin ops the GPU delegate does not run (DESIGN.md, "Toolchain facts").
GPU_LACKS = ("WHILE", "IF", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM")


def test_images(data_dir: str, split: str, max_images: int, regions: int):
    """The first `max_images` images of `split`, padded or cut to `regions`.

    Returns:
        features float32 `[images, regions, dim]`, mask bool `[images, regions]`,
        and the number of images whose regions were cut.
    """
    ds = pipeline.make_dataset(data_dir, split, batch_size=50, deterministic=True)
    features, masks, cut = [], [], 0
    for batch in ds.unbatch().take(max_images):
        mask = batch["region_mask"].numpy()
        cut += int(mask.sum() > regions)
        f, m = pad_regions(batch["features"].numpy(), mask, regions)
        features.append(f)
        masks.append(m)
    if not features:
        raise errors.BadInput(f"no images in split {split!r} of {data_dir}")
    return np.stack(features), np.stack(masks), cut


def tf_reference(model, features, masks, beam_size: int, alpha: float) -> dict:
    """The TF model's greedy and beam token ids `[images, max_len]` on the same inputs."""
    out = {}
    for method, k in (("greedy", 1), ("beam", beam_size)):
        generate = make_generate_fn(model, method, k, alpha, model.max_len)
        ids = [
            generate(tf.constant(features[i : i + 50]), tf.constant(masks[i : i + 50]))[0]
            for i in range(0, len(features), 50)
        ]
        out[method] = np.concatenate([x.numpy() for x in ids])
    return out


def caption_length(ids: np.ndarray) -> int:
    """Tokens up to and incl. the first `<eos>` (all of them when there is none)."""
    ends = np.flatnonzero(ids == EOS_ID)
    return int(ends[0]) + 1 if len(ends) else len(ids)


def parity(reference: np.ndarray, lite: np.ndarray) -> dict:
    """Identical captions and token agreement of two `[images, max_len]` id arrays.

    Token agreement: per image, the share of positions up to the longer
    caption's `<eos>` where both have the same token; averaged over images.

    >>> parity(np.array([[4, 5, 2, 0], [4, 2, 0, 0]]), np.array([[4, 5, 2, 0], [4, 6, 2, 0]]))
    {'images': 2, 'identical': 1, 'token_agreement': 0.6667}
    """
    agreement, identical = [], 0
    for a, b in zip(reference, lite, strict=True):
        la, lb = caption_length(a), caption_length(b)
        n = max(la, lb)
        agreement.append(float(np.mean(a[:n] == b[:n])))
        identical += int(np.array_equal(a[:la], b[:lb]))
    return {
        "images": len(reference),
        "identical": identical,
        "token_agreement": round(float(np.mean(agreement)), 4),
    }


def latency_ms(seconds: list[float]) -> dict:
    """Median and 90th percentile in milliseconds, and the number of calls."""
    x = np.asarray(seconds) * 1e3
    return {
        "median": round(float(np.median(x)), 4),
        "p90": round(float(np.percentile(x, 90)), 4),
        "calls": len(x),
    }


def analyze(flatbuffer: bytes) -> str:
    """The Analyzer's full text with the GPU-delegate compatibility check."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer, gpu_compatibility=True)
    return out.getvalue()


def gpu_findings(flatbuffer: bytes, analysis: str) -> dict:
    """Op counts and the GPU-delegate findings of one model (module docstring)."""
    interpreter = Interpreter(model_content=flatbuffer)
    dynamic = sorted(
        d["name"] for d in interpreter.get_tensor_details() if -1 in list(d["shape_signature"])
    )
    ops = tflite_gpu.op_counts(flatbuffer)
    return {
        "ops": ops,
        "rule_violations": tflite_gpu.violations(flatbuffer),
        "analyzer_compatible": "looks compatible with GPU delegate" in analysis,
        "analyzer_warnings": [
            ln.strip() for ln in analysis.splitlines() if "GPU COMPATIBILITY WARNING" in ln
        ],
        "lacking_ops": sorted(op for op in ops if op in GPU_LACKS),
        "dynamic_tensors": dynamic,
    }


def markdown(report: dict) -> str:
    """The report as markdown: the table, then the GPU analysis per model."""
    meta = report["setup"]
    lines = [
        "# TFLite decoder-step report",
        "",
        f"Model `{meta['model_dir']}` ({meta['checkpoint']}), {meta['images']} `{meta['split']}` "
        f"images of `{meta['data_dir']}`, {meta['regions']} regions x {meta['feature_dim']}, "
        f"beam {meta['beam_size']}, {meta['num_threads']} interpreter thread(s); "
        f"TF {meta['tensorflow']}, ai-edge-litert {meta['ai_edge_litert']}.",
        "Parity: captions identical to the TF model's (same inputs) and mean token agreement.",
        "",
        "| variant | encoder KB | step KB | step ms (median / p90) | encoder ms | greedy "
        "identical | greedy tokens | beam identical | beam tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        g, b, lat = v["parity"]["greedy"], v["parity"]["beam"], v["latency_ms"]
        lines.append(
            f"| {name} | {v['models']['encoder']['bytes'] / 1024:.1f} | "
            f"{v['models']['step']['bytes'] / 1024:.1f} | {lat['step']['median']:.3f} / "
            f"{lat['step']['p90']:.3f} | {lat['encoder']['median']:.3f} | "
            f"{g['identical']}/{g['images']} | {g['token_agreement']:.4f} | "
            f"{b['identical']}/{b['images']} | {b['token_agreement']:.4f} |"
        )
    lines += ["", "## GPU delegate", ""]
    for name, v in report["variants"].items():
        for model_name, m in v["models"].items():
            gpu = m["gpu"]
            verdict = "compatible" if gpu["analyzer_compatible"] else "NOT compatible"
            broken = gpu["rule_violations"]
            lines += [
                f"### {model_name} ({name}): `{m['file']}`",
                "",
                "- the delegate's rules (`export.tflite_gpu`): "
                + (f"{len(broken)} op(s) outside them" if broken else "every op within them"),
                *(f"  - {why}" for why in broken[:20]),
                *([f"  - ... {len(broken) - 20} more"] if len(broken) > 20 else []),
                f"- Analyzer (`gpu_compatibility=True`, weak evidence): {verdict}; warnings: "
                + ("; ".join(gpu["analyzer_warnings"]) or "none"),
                "- dynamic-shape tensors: " + (", ".join(gpu["dynamic_tensors"]) or "none"),
                "- ops: " + ", ".join(f"{op} x{n}" for op, n in gpu["ops"].items()),
                "",
            ]
    return "\n".join(lines) + "\n"
