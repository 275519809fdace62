"""TFLite encoder and decoder-step models, and host-side greedy and beam search.

The GPU delegate runs no WHILE/IF, no dynamic shapes and no
UNIDIRECTIONAL_SEQUENCE_LSTM, so the exported graphs hold one step each with
static shapes (batch 1, `regions` regions) and the loops run on the host:

- encoder: `features` float32 `[1, regions, dim]`, `region_mask` float32
  `[1, regions]` (1 on real regions, 0 on padding) -> `keys` float32
  `[1, regions, att_hidden]` (the projected regions), `mean` float32 `[1, dim]`.
- step: `word` int32 `[1]` (the previous word, `<bos>` first); the state
  `h_att`, `c_att`, `h_lang`, `c_lang` float32 `[1, rnn]`, and with text
  attention `history` float32 `[1, max_len, rnn]`, `history_keys` float32
  `[1, max_len, att_hidden]`, `step` int32 `[1]`; the image's `features`,
  `keys`, `mean`, `region_mask` (as above) -> `logits` float32 `[1, vocab]`,
  `attention` float32 `[1, regions]` and `new_<name>` for every state entry.

`LiteDecoder` runs both with `ai_edge_litert` and decodes exactly as
`tfcap.decoding.greedy` / `tfcap.decoding.beam` do (float32 scores, the same
tie-breaking), so an fp32 model gives the TF model's captions.
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
_STEP_STATIC = ("features", "keys", "mean", "region_mask")


def step_functions(model, feature_dim: int, regions: int) -> dict:
    """Concrete functions `{"encoder": ..., "step": ...}` of a built `Captioner`."""
    core = model.core
    rnn, hidden, max_len = core.rnn_size, core.att_hidden, core.max_len
    f32 = tf.float32
    image_specs = [
        tf.TensorSpec([1, regions, feature_dim], f32, "features"),
        tf.TensorSpec([1, regions], f32, "region_mask"),
    ]

    @tf.function(input_signature=image_specs)
    def encoder(features, region_mask):
        static = core.precompute(features, region_mask > 0.5)
        return {"keys": static["keys"], "mean": static["mean"]}

    state_specs = {n: tf.TensorSpec([1, rnn], f32, n) for n in _LSTM_STATE}
    if core.text_attention:
        state_specs["history"] = tf.TensorSpec([1, max_len, rnn], f32, "history")
        state_specs["history_keys"] = tf.TensorSpec([1, max_len, hidden], f32, "history_keys")
        state_specs["step"] = tf.TensorSpec([1], tf.int32, "step")
    static_specs = {
        "features": image_specs[0],
        "keys": tf.TensorSpec([1, regions, hidden], f32, "keys"),
        "mean": tf.TensorSpec([1, feature_dim], f32, "mean"),
        "region_mask": image_specs[1],
    }
    names = ["word", *state_specs, *static_specs]
    specs = [tf.TensorSpec([1], tf.int32, "word"), *state_specs.values(), *static_specs.values()]

    def step_fn(*args):
        values = dict(zip(names, args, strict=True))
        state = {n: values[n] for n in state_specs}
        static = {k: values[k] for k in ("features", "keys", "mean")}
        static["mask"] = values["region_mask"] > 0.5
        logits, new_state, weights = core.step(values["word"], state, static)
        out = {"logits": logits, "attention": tf.cast(weights, f32)}
        out.update({f"new_{k}": v for k, v in new_state.items()})
        return out

    step = tf.function(step_fn, input_signature=specs)
    return {"encoder": encoder.get_concrete_function(), "step": step.get_concrete_function()}


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
    """Host-side decoding over an encoder and a step flatbuffer (batch 1).

    Args:
        encoder, step: TFLite flatbuffers from `convert`.
        max_len: int, tokens produced at most (incl. `<eos>`).
        num_threads: int, interpreter threads.

    Attributes:
        step_seconds, encode_seconds: wall time of every `step` / `encode` call.
    """

    def __init__(self, encoder: bytes, step: bytes, max_len: int, num_threads: int = 1):
        self.max_len = max_len
        self._encoder = _runner(encoder, num_threads)
        self._step = _runner(step, num_threads)
        details = self._step.get_input_details()
        self.state_names = [n for n in details if n not in _STEP_STATIC + ("word",)]
        self._zeros = {n: np.zeros(d["shape"], d["dtype"]) for n, d in details.items()}
        self.step_seconds: list[float] = []
        self.encode_seconds: list[float] = []

    def encode(self, features: np.ndarray, mask: np.ndarray) -> dict:
        """Static inputs for `step` from `features` `[regions, dim]`, bool `mask` `[regions]`."""
        inputs = {
            "features": features[None].astype(np.float32),
            "region_mask": mask[None].astype(np.float32),
        }
        start = time.perf_counter()
        out = self._encoder(**inputs)
        self.encode_seconds.append(time.perf_counter() - start)
        return {**inputs, "keys": out["keys"], "mean": out["mean"]}

    def initial_state(self) -> dict:
        return {n: self._zeros[n].copy() for n in self.state_names}

    def step(self, word: int, state: dict, static: dict):
        """Returns logits float32 `[vocab]`, the new state, attention `[regions]`."""
        start = time.perf_counter()
        out = self._step(word=np.array([word], np.int32), **state, **static)
        self.step_seconds.append(time.perf_counter() - start)
        new_state = {n: out[f"new_{n}"] for n in self.state_names}
        return out["logits"][0], new_state, out["attention"][0]

    def greedy(self, features: np.ndarray, mask: np.ndarray):
        """As `tfcap.decoding.greedy.greedy`: ids int32 `[max_len]`, log-prob, attention."""
        static, state = self.encode(features, mask), self.initial_state()
        ids = np.zeros([self.max_len], np.int32)
        attention = np.zeros([self.max_len, len(mask)], np.float32)
        running, word = np.float32(0.0), BOS_ID
        for t in range(self.max_len):
            logits, state, weights = self.step(word, state, static)
            log_probs = log_softmax(logits)
            word = int(np.argmax(running + log_probs))
            ids[t], attention[t] = word, weights
            running = np.float32(running + log_probs[word])
            if word == EOS_ID:
                break
        return ids, running, attention

    def beam(self, features: np.ndarray, mask: np.ndarray, beam_size: int, alpha: float = 0.0):
        """As `tfcap.decoding.beam.beam_search` for one image: ids, score, attention."""
        k, static = beam_size, self.encode(features, mask)
        states = [self.initial_state()] * k
        prev = np.full([k], BOS_ID, np.int32)
        log_prob = np.array([0.0] + [_NEG] * (k - 1), np.float32)
        length, done = np.zeros([k], np.int32), np.zeros([k], bool)
        ids = np.zeros([k, self.max_len], np.int32)
        attention = np.zeros([k, self.max_len, len(mask)], np.float32)
        for t in range(self.max_len):
            if done.all():
                break
            log_probs, new_states, weights = self._expand(t, prev, states, static, done)
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
            states, prev = [new_states[p] for p in parent], token
        final = log_prob / _length_norm(alpha, length)
        top = int(np.argmax(final))
        return ids[top], final[top], attention[top]

    def _expand(self, t, prev, states, static, done):
        """Log-probs `[k, vocab]`, new states and attention `[k, regions]` of every beam."""
        k = len(prev)
        log_probs, new_states, weights = [], [], []
        for b in range(k):
            if done[b]:  # frozen: filled in below
                log_probs.append(None)
                new_states.append(states[b])
                weights.append(None)
            elif t == 0 and b > 0:  # every beam starts as the same <bos> hypothesis
                log_probs.append(log_probs[0])
                new_states.append(new_states[0])
                weights.append(weights[0])
            else:
                logits, state, w = self.step(int(prev[b]), states[b], static)
                log_probs.append(log_softmax(logits))
                new_states.append(state)
                weights.append(w)
        vocab = next(lp.shape[0] for lp in log_probs if lp is not None)
        regions = static["region_mask"].shape[1]
        frozen = np.full([vocab], _NEG, np.float32)
        frozen[0] = 0.0  # a finished beam extends by <pad> at no cost
        log_probs = np.stack([frozen if lp is None else lp for lp in log_probs])
        weights = np.stack([np.zeros([regions], np.float32) if w is None else w for w in weights])
        return log_probs, new_states, weights


def _length_norm(alpha: float, length: np.ndarray) -> np.ndarray:
    return np.power((np.float32(5.0) + length.astype(np.float32)) / np.float32(6.0), alpha).astype(
        np.float32
    )


def _runner(flatbuffer: bytes, num_threads: int):
    interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
    return interpreter.get_signature_runner()
