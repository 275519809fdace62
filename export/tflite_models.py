"""TFLite encoder and decoder-step models, and host-side greedy and beam search.

The GPU delegate runs no WHILE/IF, no dynamic shapes and no
UNIDIRECTIONAL_SEQUENCE_LSTM, so the exported graphs hold one step each with
static shapes (`batch` rows, `regions` regions) and the loops run on the host.
Every op of both graphs is within the delegate's documented rules
(`export.tflite_gpu`; the tests check the op list against them):

- encoder: `features` float32 `[batch, regions, dim]`, `region_mask` float32
  `[batch, regions]` (1 on real regions, 0 on padding) -> `regions` float32
  `[batch, regions, value_dim]` (what attention reads: the features, embedded
  when the model embeds them), `keys` float32 `[batch, regions, att_hidden]`
  (the projected regions), `mean_gates` float32 `[batch, 4 * rnn]` (the
  attention LSTM's gate term of the mean feature, once per image).
- step: `word` int32 `[batch]` (the previous word, `<bos>` first); the state
  `h_att`, `c_att`, `h_lang`, `c_lang` float32 `[batch, rnn]`, and with text
  attention `history` float32 `[batch, max_len, rnn]`, `history_keys` float32
  `[batch, max_len, att_hidden]` and `step` int32 `[batch]` (the step index:
  the host counts it, the graph does no int32 arithmetic); the encoder's
  `regions`, `keys`, `mean_gates` and `region_mask` -> `logits` float32
  `[batch, vocab]`, `attention` float32 `[batch, regions]` and `new_<name>`
  for every float state entry.

One step call advances all `batch` rows: beam search keeps its `batch` beams in
the rows (one call per step), greedy decodes up to `batch` images at once.
`LiteDecoder` runs both with `ai_edge_litert` and decodes exactly as
`tfcap.decoding.greedy` / `tfcap.decoding.beam` do (float32 scores, the same
tie-breaking, frozen finished beams), so an fp32 model gives the TF model's
captions.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfcap.data.vocab import BOS_ID, EOS_ID

VARIANTS = ("fp32", "fp16", "int8")
_NEG = np.float32(-1e9)  # as tfcap.decoding.beam
_LSTM_STATE = ("h_att", "c_att", "h_lang", "c_lang")
_STEP_STATIC = ("regions", "keys", "mean_gates", "region_mask")


def step_functions(model, feature_dim: int, regions: int, batch: int = 1) -> dict:
    """Concrete functions `{"encoder": ..., "step": ...}` of a built `Captioner`,
    with `batch` rows (shapes: module docstring)."""
    core = model.core
    rnn, hidden, max_len = core.rnn_size, core.att_hidden, core.max_len
    f32 = tf.float32
    image_specs = [
        tf.TensorSpec([batch, regions, feature_dim], f32, "features"),
        tf.TensorSpec([batch, regions], f32, "region_mask"),
    ]

    @tf.function(input_signature=image_specs)
    def encoder(features, region_mask):
        static = core.precompute(features, region_mask > 0.5)
        return {k: tf.cast(static[n], f32) for k, n in _ENCODER_OUTPUTS.items()}

    probe = encoder.get_concrete_function().structured_outputs
    state_specs = {n: tf.TensorSpec([batch, rnn], f32, n) for n in _LSTM_STATE}
    if core.text_attention:
        state_specs["history"] = tf.TensorSpec([batch, max_len, rnn], f32, "history")
        state_specs["history_keys"] = tf.TensorSpec([batch, max_len, hidden], f32, "history_keys")
        state_specs["step"] = tf.TensorSpec([batch], tf.int32, "step")
    static_specs = {n: tf.TensorSpec(probe[n].shape, f32, n) for n in _STEP_STATIC[:3]}
    static_specs["region_mask"] = image_specs[1]
    names = ["word", *state_specs, *static_specs]
    specs = [
        tf.TensorSpec([batch], tf.int32, "word"),
        *state_specs.values(),
        *static_specs.values(),
    ]

    def step_fn(*args):
        values = dict(zip(names, args, strict=True))
        state = {n: values[n] for n in state_specs}
        static = {_ENCODER_OUTPUTS[k]: values[k] for k in _STEP_STATIC[:3]}
        static["mask"] = values["region_mask"] > 0.5
        # tf.gather, not the Embedding layer: its negative-index fix is int32
        # LESS/ADD/SELECT, which the GPU delegate does not run.
        words = tf.gather(core.embedding.embeddings, values["word"])
        new_state, weights = core.advance(None, state, static, word_vectors=words)
        out = {
            "logits": core.output_logits(new_state["h_lang"]),
            "attention": tf.cast(weights, f32),
        }
        out.update({f"new_{k}": v for k, v in new_state.items() if k != "step"})
        return out

    step = tf.function(step_fn, input_signature=specs)
    return {"encoder": encoder.get_concrete_function(), "step": step.get_concrete_function()}


# encoder output -> the `UpDownCore.precompute` entry it is.
_ENCODER_OUTPUTS = {"regions": "features", "keys": "keys", "mean_gates": "mean_gates"}


def convert(concrete_fn, variant: str) -> bytes:
    """A TFLite flatbuffer of `concrete_fn`: "fp32", "fp16" (float16 weights) or
    "int8" (dynamic-range: int8 weights, float activations)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    # Variables become constants first; an empty tf.Module then lets the
    # converter save the function as `serving_default`, which gives the
    # flatbuffer a signature (named inputs and outputs).
    frozen = convert_variables_to_constants_v2(concrete_fn)  # flat outputs
    specs = concrete_fn.structured_input_signature[0]

    @tf.function(input_signature=specs)
    def named(*args):
        return tf.nest.pack_sequence_as(concrete_fn.structured_outputs, frozen(*args))

    fn = named.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], tf.Module())
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def pad_regions(features: np.ndarray, mask: np.ndarray, regions: int):
    """Pads (or cuts) `features` `[n, dim]` and bool `mask` `[n]` to `regions` rows."""
    dim = features.shape[-1]
    out_f = np.zeros([regions, dim], np.float32)
    out_m = np.zeros([regions], bool)
    n = min(regions, len(features))
    out_f[:n], out_m[:n] = features[:n], mask[:n]
    return out_f * out_m[:, None], out_m


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax along the last axis, computed as TF does."""
    logits = logits.astype(np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float32))


class LiteDecoder:
    """Host-side decoding over an encoder and a step flatbuffer of `batch` rows.

    Args:
        encoder, step: TFLite flatbuffers from `convert` (of `step_functions`).
        max_len: int, tokens produced at most (incl. `<eos>`).
        num_threads: int, interpreter threads.

    Attributes:
        batch: rows of every call (the beam size of `beam`).
        step_seconds, encode_seconds: wall time of every `step` / `encode` call.
    """

    def __init__(self, encoder: bytes, step: bytes, max_len: int, num_threads: int = 1):
        self.max_len = max_len
        self._encoder = _runner(encoder, num_threads)
        self._step = _runner(step, num_threads)
        details = self._step.get_input_details()
        self.batch = int(details["word"]["shape"][0])
        self.state_names = [n for n in details if n not in _STEP_STATIC + ("word", "step")]
        self.counts_steps = "step" in details
        self._zeros = {n: np.zeros(d["shape"], d["dtype"]) for n, d in details.items()}
        self.step_seconds: list[float] = []
        self.encode_seconds: list[float] = []

    def encode(self, features: np.ndarray, mask: np.ndarray) -> dict:
        """Static inputs for `step` from `features` `[batch, regions, dim]`, bool `mask`
        `[batch, regions]`."""
        start = time.perf_counter()
        out = self._encoder(
            features=features.astype(np.float32), region_mask=mask.astype(np.float32)
        )
        self.encode_seconds.append(time.perf_counter() - start)
        return {**{n: out[n] for n in _STEP_STATIC[:3]}, "region_mask": mask.astype(np.float32)}

    def initial_state(self) -> dict:
        return {n: self._zeros[n].copy() for n in self.state_names}

    def step(self, words: np.ndarray, state: dict, static: dict, t: int):
        """One call for all rows: logits float32 `[batch, vocab]`, the new state,
        attention `[batch, regions]`; `t` is the step index (text attention's `step`)."""
        extra = {"step": np.full([self.batch], t, np.int32)} if self.counts_steps else {}
        start = time.perf_counter()
        out = self._step(word=words.astype(np.int32), **state, **static, **extra)
        self.step_seconds.append(time.perf_counter() - start)
        return out["logits"], {n: out[f"new_{n}"] for n in self.state_names}, out["attention"]

    def greedy(self, features: np.ndarray, masks: np.ndarray):
        """As `tfcap.decoding.greedy.greedy` for `[images, regions, dim]` features and bool
        `[images, regions]` masks, `batch` images per call: ids int32 `[images, max_len]`,
        log-probs float32 `[images]`, attention float32 `[images, max_len, regions]`."""
        out = [
            self._greedy_rows(*self._rows(features, masks, i))
            for i in range(0, len(features), self.batch)
        ]
        return tuple(np.concatenate(x)[: len(features)] for x in zip(*out, strict=True))

    def _rows(self, features, masks, start):
        """Images `start:start + batch`, zero-padded (no regions) to `batch` rows."""
        f = np.zeros((self.batch,) + features.shape[1:], np.float32)
        m = np.zeros((self.batch,) + masks.shape[1:], bool)
        n = min(self.batch, len(features) - start)
        f[:n], m[:n] = features[start : start + n], masks[start : start + n]
        return f, m, n

    def _greedy_rows(self, features, masks, real):
        static, state = self.encode(features, masks), self.initial_state()
        b, regions = masks.shape
        ids = np.zeros([b, self.max_len], np.int32)
        attention = np.zeros([b, self.max_len, regions], np.float32)
        running, finished = np.zeros([b], np.float32), np.zeros([b], bool)
        words = np.full([b], BOS_ID, np.int32)
        for t in range(self.max_len):
            if finished[:real].all():
                break
            logits, state, weights = self.step(words, state, static, t)
            log_probs = log_softmax(logits)
            words = np.argmax(running[:, None] + log_probs, axis=-1).astype(np.int32)
            words = np.where(finished, 0, words)
            chosen = np.where(finished, 0.0, log_probs[np.arange(b), words]).astype(np.float32)
            ids[:, t] = words
            attention[:, t] = np.where(finished[:, None], 0.0, weights)
            running = (running + chosen).astype(np.float32)
            finished |= words == EOS_ID
        return ids[:real], running[:real], attention[:real]

    def beam(self, features: np.ndarray, mask: np.ndarray, alpha: float = 0.0):
        """As `tfcap.decoding.beam.beam_search` for one image with `batch` beams, one step
        call per step: ids int32 `[max_len]`, score, attention `[max_len, regions]`."""
        k = self.batch
        static = self.encode(np.repeat(features[None], k, 0), np.repeat(mask[None], k, 0))
        state, prev = self.initial_state(), np.full([k], BOS_ID, np.int32)
        log_prob = np.array([0.0] + [_NEG] * (k - 1), np.float32)
        length, done = np.zeros([k], np.int32), np.zeros([k], bool)
        ids = np.zeros([k, self.max_len], np.int32)
        attention = np.zeros([k, self.max_len, len(mask)], np.float32)
        for t in range(self.max_len):
            if done.all():
                break
            logits, new_state, weights = self.step(prev, state, static, t)
            log_probs = log_softmax(logits)
            frozen = np.full(log_probs.shape[1], _NEG, np.float32)
            frozen[0] = 0.0  # a finished beam extends by <pad> at no cost
            log_probs = np.where(done[:, None], frozen, log_probs)
            totals = log_prob[:, None] + log_probs  # [k, vocab]
            lengths = np.where(done, length, t + 1)
            scores = totals / _length_norm(alpha, lengths)[:, None]
            best = np.argsort(-scores.reshape(-1), kind="stable")[:k]  # ties: lower index
            parent, token = best // scores.shape[1], (best % scores.shape[1]).astype(np.int32)
            was_done = done[parent]
            log_prob, length = totals.reshape(-1)[best], lengths[parent]
            done = was_done | (token == EOS_ID)
            ids, attention = ids[parent], attention[parent]
            ids[:, t] = token
            attention[:, t] = np.where(was_done[:, None], 0.0, weights[parent])
            state, prev = {n: v[parent] for n, v in new_state.items()}, token
        final = log_prob / _length_norm(alpha, length)
        top = int(np.argmax(final))
        return ids[top], final[top], attention[top]


def _length_norm(alpha: float, length: np.ndarray) -> np.ndarray:
    return np.power((np.float32(5.0) + length.astype(np.float32)) / np.float32(6.0), alpha).astype(
        np.float32
    )


def _runner(flatbuffer: bytes, num_threads: int):
    interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    return interpreter.get_signature_runner()
