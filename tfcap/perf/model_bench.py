"""Timing the captioner: XE and SCST training steps and decoding, with speed switches.

Each variant builds its own model on random data of the preset's sizes (the
`updown` preset: 36 regions x 2048, vocabulary 9,487, 16-word captions) so the
switches can be compared in one run:

- `before`: the step as first written: the scheduled-sampling ops always in
  the loop, the mean feature's gate term recomputed at every step, the
  vocabulary projection inside the loop.
- `+ plain loop at sample_prob 0`, `+ mean gate term once per caption`,
  `+ vocabulary projection after the loop`, `+ recurrent weight gradients
  batched over steps` (`tfcap.model.grad_taps`): each adds one change (the
  last is the default float32 path).
- `+ mixed precision (bfloat16)`: the default with the `mixed_bfloat16` policy
  (float32 variables, bfloat16 products).
- `XLA (jit_compile)`: the default path compiled by XLA.

SCST adds one switch: `before` scores the samples again by teacher forcing
(a second forward pass); the default differentiates the sampler's own
log-probabilities (`tfcap.training.scst`).
"""

from __future__ import annotations

import dataclasses

from tfcap.perf.timing import PeakRSS, median_time

_SIZES = {"demo": (10, 256, 66), "updown": (36, 2048, 9487), "multiatt": (36, 2048, 9487)}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running the model."""

    name: str
    dtype: str = "float32"
    hoist_mean_gates: bool = True
    logits_after_loop: bool = True
    sampling_ops: bool = False  # run the scheduled-sampling loop (at a negligible rate)
    jit_compile: bool = False
    rescore: bool = False  # SCST: score the samples again by teacher forcing
    batched_weight_grads: bool = True  # recurrent kernels' gradients after the loop
    baseline: str = "greedy"  # SCST: the reference's self-critical (greedy) baseline


BEFORE = Variant("before", hoist_mean_gates=False, logits_after_loop=False, sampling_ops=True)
XE_VARIANTS = (
    BEFORE,
    Variant("+ plain loop at sample_prob 0", hoist_mean_gates=False, logits_after_loop=False),
    Variant("+ mean gate term once per caption", logits_after_loop=False),
    Variant("+ vocabulary projection after the loop", batched_weight_grads=False),
    Variant("+ recurrent weight gradients batched over steps (float32 default)"),
    Variant("+ mixed precision (bfloat16)", dtype="mixed_bfloat16"),
    Variant("XLA (jit_compile), float32", jit_compile=True),
)
SCST_VARIANTS = (
    Variant(
        "before",
        hoist_mean_gates=False,
        logits_after_loop=False,
        rescore=True,
        batched_weight_grads=False,
    ),
    Variant(
        "+ mean gate term once, vocabulary projection after the loop",
        rescore=True,
        batched_weight_grads=False,
    ),
    Variant("+ recurrent weight gradients batched over steps", rescore=True),
    Variant("gradient through the sampling loop instead (float32 default)"),
    Variant("+ mixed precision (bfloat16)", dtype="mixed_bfloat16"),
    Variant("+ mean-of-samples baseline (no greedy pass; tfcap.train's default)", baseline="mean"),
)
DECODE_VARIANTS = (
    Variant("float32 default"),
    Variant("+ mixed precision (bfloat16)", dtype="mixed_bfloat16"),
    Variant("XLA (jit_compile), float32", jit_compile=True),
)
DEFAULT = XE_VARIANTS[4]


def random_batch(preset: str, batch_size: int, seq_per_img: int = 5, length: int = 16):
    """A batch dict of random features and captions at the preset's sizes; and its sizes."""
    import tensorflow as tf

    regions, dim, vocab_size = _SIZES[preset]
    g = tf.random.Generator.from_seed(0)
    words = g.uniform([batch_size, seq_per_img, length], 4, vocab_size, tf.int32)
    bos = tf.ones([batch_size, seq_per_img, 1], tf.int32)
    captions = tf.concat([bos, words, bos * 2], -1)  # <bos> w1..w16 <eos>
    batch = {
        "features": tf.nn.relu(g.normal([batch_size, regions, dim])),
        "region_mask": tf.ones([batch_size, regions], tf.bool),
        "captions": captions,
    }
    return batch, dict(regions=regions, feature_dim=dim, vocab_size=vocab_size)


def _model(preset: str, variant: Variant, vocab_size: int, dim: int):
    import keras

    from tfcap.model.captioner import Captioner

    model = Captioner.from_preset(preset, vocab_size, dtype=variant.dtype)
    model.build((None, None, dim))
    model.hoist_mean_gates = variant.hoist_mean_gates
    model.logits_after_loop = variant.logits_after_loop
    model.batched_weight_grads = variant.batched_weight_grads
    optimizer = keras.optimizers.Adam(5e-4)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _timed(variant: Variant, fn, repeats: int) -> dict:
    """A result row: `variant`'s name and dtype, median seconds of `fn()`, peak RSS."""
    with PeakRSS() as memory:
        seconds = median_time(fn, repeats, warmup=2)
    return {
        "variant": variant.name,
        "dtype": variant.dtype,
        "seconds": seconds,
        "peak_rss_mb": round(memory.peak_mb),
    }


def bench_xe(preset: str, batch_size: int, repeats: int, variant: Variant) -> dict:
    """Seconds per XE step (forward, backward, Adam)."""
    import tensorflow as tf

    from tfcap.training import xe

    batch, sizes = random_batch(preset, batch_size)
    model, optimizer = _model(preset, variant, sizes["vocab_size"], sizes["feature_dim"])
    strategy = tf.distribute.get_strategy()
    step = xe.make_xe_step(
        strategy, model, optimizer, xe.XEConfig(), jit_compile=variant.jit_compile
    )
    prob, seed = (1e-9 if variant.sampling_ops else 0.0), tf.constant([0, 0], tf.int64)
    return _timed(variant, lambda: step(batch, prob, seed)[0].numpy(), repeats)


def bench_scst(preset: str, batch_size: int, repeats: int, variant: Variant) -> dict:
    """Seconds per SCST step (5 samples/image, the variant's baseline, CIDEr-D, update)."""
    import tensorflow as tf

    from tfcap.rewards import cider
    from tfcap.training import scst

    batch, sizes = random_batch(preset, batch_size)
    refs = batch["captions"][:, :, 1:].numpy()
    words = [str(i) for i in range(sizes["vocab_size"])]
    scorer = cider.CiderD(
        [[" ".join(map(str, r)) for r in image] for image in refs], vocabulary=words, eos_id=2
    )
    reward = scst.evaluator_reward(scst.cider_reward(scorer))
    model, optimizer = _model(preset, variant, sizes["vocab_size"], sizes["feature_dim"])
    config = scst.SCSTConfig(baseline=variant.baseline, rescore=variant.rescore)
    step = scst.make_policy_step(tf.distribute.get_strategy(), model, optimizer, reward, config)
    seed = tf.constant([0, 0], tf.int64)
    return _timed(variant, lambda: step(batch, seed)["loss"].numpy(), repeats)


def bench_decode(preset: str, batch_size: int, repeats: int, variant: Variant) -> dict:
    """Milliseconds per image of greedy, beam-3 and beam-5 decoding (batch `batch_size`)."""
    import tensorflow as tf

    batch, sizes = random_batch(preset, batch_size)
    features, mask = batch["features"], batch["region_mask"]
    model, _ = _model(preset, variant, sizes["vocab_size"], sizes["feature_dim"])
    row = {"variant": variant.name, "dtype": variant.dtype, "peak_rss_mb": 0}
    for name, kwargs in (
        ("greedy", dict(method="greedy")),
        ("beam3", dict(method="beam", beam_size=3)),
        ("beam5", dict(method="beam", beam_size=5)),
    ):
        run = tf.function(
            lambda f, m, kwargs=kwargs: model.generate(f, m, **kwargs)[0],
            jit_compile=variant.jit_compile,
        )
        timed = _timed(variant, lambda run=run: run(features, mask).numpy(), repeats)
        row[f"{name}_ms_per_image"] = 1000 * timed["seconds"] / batch_size
        row["peak_rss_mb"] = max(row["peak_rss_mb"], timed["peak_rss_mb"])
    return row


BENCHES = {"xe": bench_xe, "scst": bench_scst, "decode": bench_decode}
VARIANTS = {"xe": XE_VARIANTS, "scst": SCST_VARIANTS, "decode": DECODE_VARIANTS}
# With --novariants: the float32 and bfloat16 defaults only.
DEFAULTS = {
    "xe": (DEFAULT, XE_VARIANTS[5]),
    "scst": SCST_VARIANTS[3:5],
    "decode": DECODE_VARIANTS[:2],
}


def on_device(kind: str, preset: str, batch_size: int, repeats: int, variant, device: str = ""):
    """`bench_<kind>` with its model, data and steps placed on `device` ("" : TensorFlow's
    default placement, a GPU when there is one; or e.g. "/CPU:0", "/GPU:0")."""
    import contextlib

    import tensorflow as tf

    with tf.device(device) if device else contextlib.nullcontext():
        row = BENCHES[kind](preset, batch_size, repeats, variant)
    return {**row, "device": device or "default"}


def in_process(
    kind: str, preset: str, batch_size: int, repeats: int, variants, device: str = ""
) -> list[dict]:
    """`bench_<kind>` of each variant in this process (faster to start; for tests)."""
    return [on_device(kind, preset, batch_size, repeats, v, device) for v in variants]


def isolated(
    kind: str, preset: str, batch_size: int, repeats: int, variants, device: str = ""
) -> list[dict]:
    """`bench_<kind>` with each variant in a fresh process, one after another.

    Each figure then has the machine to itself, and a row's `peak_rss_mb` is the
    peak memory of that variant's process (model, optimizer, step, data).
    """
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    rows = []
    for variant in variants:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            args = (kind, preset, batch_size, repeats, variant, device)
            rows.append(pool.submit(on_device, *args).result())
    return rows
