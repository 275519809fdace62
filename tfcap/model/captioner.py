"""The captioning model: an Up-Down core with teacher forcing and decoding.

Rows. Training batches carry `seq_per_img` captions per image; the model tiles
the per-image static parts (projected regions, mean feature, mask), never the
raw batch, to `rows = batch * seq_per_img` image-major rows (row
`i * seq_per_img + j` is caption `j` of image `i`).

Decoding cache (`initial_cache`, `decode_step`), the step-function contract of
`tfcap.decoding`:

- `state`: the `UpDownCore` step state (`h_att`, `c_att`, `h_lang`, `c_lang`,
  and with text attention `history`, `history_keys`, `step`).
- `static`: the `UpDownCore.precompute` dict (`features`, `keys`, `mean`, `mask`).
- `attention`: float `[batch, regions]`, region weights of the last step.
"""

import keras
import tensorflow as tf

from tfcap.data.vocab import BOS_ID, EOS_ID
from tfcap.decoding.beam import beam_search
from tfcap.decoding.greedy import greedy
from tfcap.decoding.sampling import as_seed, sample
from tfcap.model.grad_taps import StepTap
from tfcap.model.presets import PRESETS
from tfcap.model.updown import UpDownCore


@keras.saving.register_keras_serializable(package="tfcap")
class Captioner(keras.Model):
    """Up-Down captioner (optionally with the seed paper's textual attention).

    Args:
        vocab_size, rnn_size, embed_dim, att_hidden, dropout, text_attention,
        max_len, feature_embed, word_relu, weight_init: as in `tfcap.model.updown.UpDownCore`.

    Call arguments:
        inputs: dict with `features` float `[batch, regions, dim]`, optional
            `region_mask` bool `[batch, regions]`, and `captions` int
            `[batch, seq_per_img, length]` or `[rows, length]`
            (`<bos> w1 .. wn <eos> 0 ..`). Other keys are ignored.
        training: bool, enables dropout.

    Returns:
        `teacher_forcing(...)` on `captions[..., :-1]`: logits float32
        `[rows, length - 1, vocab]` and region attention `[rows, length - 1, regions]`.

    >>> model = Captioner(vocab_size=9, rnn_size=4, embed_dim=4, att_hidden=2, max_len=3)
    >>> batch = {"features": tf.ones([2, 5, 6]), "captions": tf.ones([2, 3, 5], tf.int32)}
    >>> logits, attention = model(batch)
    >>> logits.shape, attention.shape
    (TensorShape([6, 4, 9]), TensorShape([6, 4, 5]))
    >>> ids, log_probs, attention = model.generate(batch["features"], method="beam")
    >>> ids.shape, log_probs.shape, attention.shape
    (TensorShape([2, 3]), TensorShape([2]), TensorShape([2, 3, 5]))
    """

    def __init__(
        self,
        vocab_size,
        rnn_size=1000,
        embed_dim=1000,
        att_hidden=512,
        dropout=0.5,
        text_attention=False,
        max_len=16,
        feature_embed=False,
        word_relu=False,
        weight_init="keras",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.max_len = max_len
        # Speed switches, on by default; off only to measure them (tfcap.bench).
        # They change the order of float operations, never the model.
        self.hoist_mean_gates = True  # the mean feature's gate term once per caption
        self.logits_after_loop = True  # teacher forcing: one vocabulary product after the loop
        # XE: the recurrent kernels' gradients as one product over all steps (grad_taps)
        self.batched_weight_grads = True
        self.core = UpDownCore(
            vocab_size,
            rnn_size=rnn_size,
            embed_dim=embed_dim,
            att_hidden=att_hidden,
            dropout=dropout,
            text_attention=text_attention,
            max_len=max_len,
            feature_embed=feature_embed,
            word_relu=word_relu,
            weight_init=weight_init,
            dtype=self.dtype_policy,
            name="core",
        )

    @property
    def takes_grad_taps(self) -> bool:
        """Teacher forcing (at sample_prob 0) can batch the recurrent kernels' gradients."""
        return self.batched_weight_grads and self.logits_after_loop

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides) -> "Captioner":
        """`Captioner` with the sizes of `PRESETS[name]`, updated by `overrides`."""
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def build(self, input_shape):
        """`input_shape`: the batch dict's shapes, or the features shape."""
        if isinstance(input_shape, dict):
            input_shape = input_shape["features"]
        self.core.build(tuple(input_shape))

    def _ensure_built(self, features):
        if not self.built:
            self.build(tuple(features.shape))

    def call(self, inputs, training=False):
        return self.teacher_forcing(
            inputs["features"], inputs.get("region_mask"), inputs["captions"], training=training
        )

    def teacher_forcing(
        self, features, region_mask, captions, training=False, sample_prob=0.0, seed=None, taps=None
    ):
        """Runs the core over `captions[..., :-1]`, optionally with scheduled sampling.

        Args:
            features: float `[batch, regions, dim]`.
            region_mask: bool `[batch, regions]` or None (no padding).
            captions: int `[batch, seq_per_img, length]` or `[rows, length]`,
                rows image-major, `rows` a multiple of `batch`.
            training: bool, enables dropout.
            sample_prob: float or float32 scalar tensor. At every step after
                the first, each row independently feeds, with this probability,
                a word sampled from its own previous output distribution
                instead of the reference word (gradients do not flow through
                the choice). 0.0 (Python) skips the sampling ops entirely.
            seed: int, int `[2]` tensor (stateless RNG) or None (drawn from
                the global RNG) for the scheduled sampling.
            taps: optional `tfcap.model.grad_taps.GradTaps`: the recurrent
                kernels' gradients as one product after the loop (its
                `gradients`). Only without scheduled sampling and with the
                vocabulary projection after the loop.

        Returns:
            logits float32 `[rows, length - 1, vocab]`, attention
            `[rows, length - 1, regions]` (layer compute dtype).
        """
        captions = tf.convert_to_tensor(captions)
        if captions.shape.rank not in (2, 3):
            raise ValueError(f"captions must be rank 2 or 3, got {captions.shape}")
        length = captions.shape[-1] if captions.shape[-1] is not None else tf.shape(captions)[-1]
        captions = tf.reshape(captions, [-1, length])  # [rows, length]
        self._check_history(captions.shape[1], extra=1)
        self._ensure_built(features)
        static = self._precompute(features, region_mask, training)
        static = self._tile(static, features, captions)
        scheduled = not (isinstance(sample_prob, float | int) and sample_prob == 0)
        seed = as_seed(seed) if scheduled else None
        inputs = tf.cast(captions[:, :-1], tf.int32)  # [rows, time]
        if taps is not None and (scheduled or not self.logits_after_loop):
            raise ValueError("taps need sample_prob 0 and logits_after_loop")
        return self._unroll(
            static, inputs, training, sample_prob if scheduled else None, seed, taps
        )

    def _precompute(self, features, region_mask, training=False):
        static = self.core.precompute(features, region_mask, training=training)
        if not self.hoist_mean_gates:
            del static["mean_gates"]  # the core then projects the mean at every step
        return static

    def _tile(self, static, features, captions):
        """Repeats the per-image static parts to the captions' rows."""
        batch, rows = features.shape[0], captions.shape[0]
        if batch is None or rows is None:
            batch, rows = tf.shape(features)[0], tf.shape(captions)[0]
        repeats = rows // batch
        if isinstance(repeats, int) and repeats == 1:
            return static
        return tf.nest.map_structure(lambda x: tf.repeat(x, repeats, axis=0), static)

    def _unroll(self, static, inputs, training, sample_prob, seed, taps=None):
        """Teacher-forced loop; returns batch-major logits and attention.

        Without scheduled sampling the loop keeps only the language-LSTM outputs
        and the vocabulary projection runs once on all steps after it.
        """
        rows = inputs.shape[0] if inputs.shape[0] is not None else tf.shape(inputs)[0]
        steps = inputs.shape[1] if inputs.shape[1] is not None else tf.shape(inputs)[1]
        scheduled = sample_prob is not None
        in_loop = scheduled or not self.logits_after_loop
        out_ta = tf.TensorArray(
            tf.float32 if in_loop else self.compute_dtype,
            size=steps,
            element_shape=[None, self.vocab_size if in_loop else self.core.rnn_size],
        )
        attention_ta = tf.TensorArray(self.compute_dtype, size=steps)
        readers, inputs_tas = {}, {}
        if taps is not None:
            readers = taps.begin(self.core.tapped_layers(), steps, rows, self.compute_dtype)
            inputs_tas = {n: tf.TensorArray(self.compute_dtype, size=steps) for n in readers}

        def body(t, state, prev_logits, out_ta, attention_ta, inputs_tas):
            words = inputs[:, t]  # [rows]
            if scheduled:
                words = _scheduled_sample(words, prev_logits, t, sample_prob, seed)
            if in_loop:
                logits, state, weights = self.core.step(words, state, static, training=training)
                out = logits
                prev_logits = logits if scheduled else prev_logits
            else:
                step_taps = {n: StepTap(r.read(t)) for n, r in readers.items()}
                state, weights = self.core.advance(
                    words, state, static, training=training, taps=step_taps
                )
                out = state["h_lang"]
                inputs_tas = {n: ta.write(t, step_taps[n].x) for n, ta in inputs_tas.items()}
            out_ta, attention_ta = out_ta.write(t, out), attention_ta.write(t, weights)
            return t + 1, state, prev_logits, out_ta, attention_ta, inputs_tas

        loop_vars = (
            tf.constant(0),
            self.core.initial_state(rows),
            tf.zeros([rows, self.vocab_size] if scheduled else [0, 0]),
            out_ta,
            attention_ta,
            inputs_tas,
        )
        # maximum_iterations: XLA needs it to size the gradient's accumulators.
        *_, out_ta, attention_ta, inputs_tas = tf.while_loop(
            lambda t, *_: t < steps, body, loop_vars, maximum_iterations=steps
        )
        if taps is not None:
            taps.finish({n: ta.stack() for n, ta in inputs_tas.items()})
        out = tf.transpose(out_ta.stack(), [1, 0, 2])  # [rows, time, vocab or rnn_size]
        logits = out if in_loop else self.core.output_logits(out, training=training)
        return logits, tf.transpose(attention_ta.stack(), [1, 0, 2])

    def sequence_log_probs(
        self, features, region_mask, ids, training=False, bos_id=BOS_ID, eos_id=EOS_ID
    ):
        """Log-probabilities of given captions (e.g. samples, for SCST), differentiable.

        Args:
            features: float `[batch, regions, dim]`; region_mask as in `call`.
            ids: int `[rows, max_len]` without `<bos>`, 0 after `eos_id`; rows
                image-major, a multiple of `batch` (e.g. `sample(...).ids`).
            training: bool, enables dropout.

        Returns:
            token log-probs float32 `[rows, max_len]` (0 where masked) and mask
            bool `[rows, max_len]`, True up to and incl. the first `eos_id`.
        """
        ids = tf.cast(ids, tf.int32)
        bos = tf.fill([tf.shape(ids)[0], 1], tf.constant(bos_id, tf.int32))
        captions = tf.concat([bos, ids], axis=1)  # [rows, max_len + 1]
        logits, _ = self.teacher_forcing(features, region_mask, captions, training=training)
        log_probs = tf.gather(tf.nn.log_softmax(logits), ids, batch_dims=2)  # [rows, max_len]
        ended = tf.cumsum(tf.cast(tf.equal(ids, eos_id), tf.int32), axis=1, exclusive=True)
        mask = tf.equal(ended, 0)
        return tf.where(mask, log_probs, 0.0), mask

    def initial_cache(self, static, batch_size):
        """Decoding cache for `batch_size` rows of `static` (module docstring)."""
        return {
            "state": self.core.initial_state(batch_size),
            "static": static,
            "attention": tf.zeros_like(static["mask"], self.compute_dtype),
        }

    def decode_step(self, ids, step, cache):
        """The `tfcap.decoding` step function (inference mode): `(ids, step, cache)`."""
        del step  # the core keeps its own step counter
        logits, state, weights = self.core.step(ids, cache["state"], cache["static"])
        return logits, {"state": state, "static": cache["static"], "attention": weights}

    def generate(
        self,
        features,
        region_mask=None,
        method="greedy",
        max_len=None,
        beam_size=3,
        alpha=0.0,
        num_samples=1,
        temperature=1.0,
        seed=None,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
    ):
        """Captions for `features` `[batch, regions, dim]`, in-graph.

        Args:
            features, region_mask: as in `call`.
            method: "greedy", "beam" or "sample".
            max_len: int, tokens to produce at most incl. `<eos>` (default:
                the model's `max_len`).
            beam_size, alpha: for "beam" (`tfcap.decoding.beam.beam_search`).
            num_samples, temperature, seed: for "sample" (`tfcap.decoding.sampling`).

        Returns:
            "greedy": ids int32 `[batch, max_len]`, log_probs float32 `[batch]`,
            attention float32 `[batch, max_len, regions]`; "beam": the same with
            the length-normalised score; "sample": a `Samples` tuple with
            `batch * num_samples` image-major rows.
        """
        max_len = max_len or self.max_len
        self._check_history(max_len)
        self._ensure_built(features)
        batch = features.shape[0] if features.shape[0] is not None else tf.shape(features)[0]
        cache = self.initial_cache(self._precompute(features, region_mask), batch)
        step_fn, ends = self.decode_step, dict(bos_id=bos_id, eos_id=eos_id)
        if method == "greedy":
            return greedy(step_fn, cache, batch, max_len, **ends)
        if method == "beam":
            return beam_search(
                step_fn, cache, batch, beam_size, max_len, self.vocab_size, alpha, **ends
            )
        if method == "sample":
            return sample(step_fn, cache, batch, max_len, num_samples, temperature, seed, **ends)
        raise ValueError(f"method must be greedy, beam or sample, got {method!r}")

    def _check_history(self, steps, extra=0):
        """Text attention records at most `max_len` past steps: refuse longer runs."""
        if self.core.text_attention and steps is not None and steps - extra > self.max_len + 1:
            raise ValueError(
                f"{steps - extra} decoding steps exceed the text-attention history "
                f"(max_len={self.max_len} allows {self.max_len + 1})"
            )

    def get_config(self):
        core = self.core
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "rnn_size": core.rnn_size,
            "embed_dim": core.embed_dim,
            "att_hidden": core.att_hidden,
            "dropout": core.dropout,
            "text_attention": core.text_attention,
            "max_len": self.max_len,
            "feature_embed": core.feature_embed,
            "word_relu": core.word_relu,
            "weight_init": core.weight_init,
        }


def _scheduled_sample(words, prev_logits, step, sample_prob, seed):
    """Per row, with probability `sample_prob` (never at step 0), a word drawn
    from `prev_logits` `[rows, vocab]` replaces `words` `[rows]`."""
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, step), 2
    )
    coin = tf.random.stateless_uniform(tf.shape(words), seeds[0])
    use = (coin < tf.cast(sample_prob, tf.float32)) & (step > 0)
    drawn = tf.random.stateless_categorical(
        tf.stop_gradient(prev_logits), 1, seeds[1], dtype=tf.int32
    )[:, 0]
    return tf.where(use, drawn, words)
