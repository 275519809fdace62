"""The Up-Down decoder core (Anderson et al. 2018), one step at a time.

Two LSTMs per step: the attention LSTM reads [previous language-LSTM output,
mean region feature, word embedding] (the mean feature's gate term is computed
once per caption, not per step); its state queries additive attention over
the regions; the language LSTM reads [attended regions, (attended past
language-LSTM states,) attention-LSTM state] and its output is projected to
vocabulary logits. The optional textual attention is the seed paper's second
attention, `C_i = sum_j a_ij h_j` over the language LSTM's earlier outputs.

Step state (a dict; every entry is batch-major so decoders can tile and
reorder it per beam or sample):

- `h_att`, `c_att`: float `[batch, rnn_size]`, attention-LSTM state.
- `h_lang`, `c_lang`: float `[batch, rnn_size]`, language-LSTM state.
- with `text_attention` only:
  - `history`: float `[batch, max_len, rnn_size]`, `h_lang` of step `j` in row
    `j` (a bounded buffer: steps `>= max_len` are not recorded).
  - `history_keys`: float `[batch, max_len, att_hidden]`, their attention keys.
  - `step`: int32 `[batch]`, index of the step about to run (same in every row).

Static parts (the `precompute` dict, fixed for a whole caption):

- `features`: float `[batch, regions, dim]`.
- `keys`: float `[batch, regions, att_hidden]`, the projected regions.
- `mean`: float `[batch, dim]`, mean over unpadded regions.
- `mean_gates`: float `[batch, 4 * rnn_size]`, the attention LSTM's gate term
  of `mean` (optional: `step` computes it from `mean` when absent).
- `mask`: bool `[batch, regions]`, False on padding.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from tfcap.data.vocab import BOS_ID, PAD_ID
from tfcap.model.attention import RegionAttention

WEIGHT_INITS = ("keras", "torch")


@keras.saving.register_keras_serializable(package="tfcap")
class LSTMCell(keras.layers.Layer):
    """One LSTM step as fused math: one Dense on `[inputs, h]` gives the 4 gates.

    An input that stays fixed over a whole sequence (the Up-Down mean region
    feature) can have its own kernel (`static_input`): project it once with
    `project_static` and pass the result to every step as `static_gates`,
    instead of multiplying it again at each step.

    Args:
        units: int. State width.
        forget_bias: float. Added to the forget gate's pre-activation.
        static_input: bool. The cell has a fixed input (its width is given
            to `build_static`, or taken from the first `project_static`).

    Call arguments:
        inputs: float `[batch, input_dim]`, the inputs that change per step.
        h, c: float `[batch, units]`, the previous state.
        static_gates: float `[batch, 4 * units]`, `project_static(fixed input)`;
            required with `static_input`.

    Returns:
        the new `h`, `c`, float `[batch, units]`.

    >>> cell = LSTMCell(3)
    >>> h, c = cell(tf.ones([2, 5]), tf.zeros([2, 3]), tf.zeros([2, 3]))
    >>> h.shape, c.shape
    (TensorShape([2, 3]), TensorShape([2, 3]))
    """

    def __init__(self, units, forget_bias=1.0, static_input=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.forget_bias = forget_bias
        self.static_input = static_input
        self.gates = keras.layers.Dense(4 * units, name="gates", dtype=self.dtype_policy)
        if static_input:
            self.static_gates = keras.layers.Dense(
                4 * units, use_bias=False, name="static_gates", dtype=self.dtype_policy
            )

    def build(self, inputs_shape, h_shape=None, c_shape=None, static_gates_shape=None):
        self.gates.build((None, inputs_shape[-1] + self.units))

    def build_static(self, static_dim):
        """Creates the fixed input's kernel for width `static_dim`."""
        self.static_gates.build((None, static_dim))

    def project_static(self, static_input):
        """`[batch, 4 * units]` gate contribution of the fixed input `[batch, static_dim]`."""
        return self.static_gates(static_input)

    def call(self, inputs, h, c, static_gates=None, tap=None):
        x = tf.concat([inputs, h], axis=-1)  # [batch, input_dim + units]
        gates = self.gates(x) if tap is None else tap.dense(self.gates, x)  # [batch, 4 * units]
        if self.static_input:
            if static_gates is None:
                raise ValueError("this cell has a static input: pass static_gates")
            gates = gates + static_gates
        i, f, g, o = tf.split(gates, 4, axis=-1)  # [batch, units] each
        c = tf.sigmoid(f + self.forget_bias) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, c

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "forget_bias": self.forget_bias,
            "static_input": self.static_input,
        }


@keras.saving.register_keras_serializable(package="tfcap")
class UpDownCore(keras.layers.Layer):
    """Up-Down attention LSTM with optional textual attention; a step API.

    Use: `static = core.precompute(features, region_mask)` once per image batch
    (this also builds the layer), `state = core.initial_state(batch)`, then
    `logits, state, weights = core.step(word_ids, state, static)` per word.
    State and static keys: see the module docstring.

    Args:
        vocab_size: int. Output vocabulary, incl. `<pad>`, `<bos>`, `<eos>`, `<unk>`.
        rnn_size: int. Width of both LSTMs.
        embed_dim: int. Word embedding width.
        att_hidden: int. Width of the attention MLPs.
        dropout: float. Rate on the word embedding and on the language-LSTM
            output before the logits.
        text_attention: bool. Add attention over past language-LSTM outputs.
        max_len: int. Length of the text-attention history buffer; at least the
            number of decoding steps minus one (the longest caption, in words).
        suppressed_ids: sequence of int. Tokens never predicted: their logits
            are set to -1e9 (default `<pad>` and `<bos>`), in training and decoding
            alike, so sampled and re-scored log-probabilities agree.
        feature_embed: bool. Embed the regions and, separately, their mean into
            `rnn_size` (Dense + ReLU + dropout, once per image) before the LSTMs
            and the attention use them; False feeds the raw features.
        word_relu: bool. ReLU on the word embeddings before their dropout (as
            the reference implementation embeds words).
        weight_init: str. `keras`: Keras' defaults (Glorot-uniform kernels, zero
            biases, embeddings uniform in +-0.05). `torch`: PyTorch's defaults for
            the same layers, as the reference implementation initialises them:
            embeddings N(0, 1); LSTM kernels and biases uniform in +-1/sqrt(units);
            other kernels and biases uniform in +-1/sqrt(fan_in). Drawn once, when
            the layer is built (checkpoints then overwrite them).

    >>> core = UpDownCore(vocab_size=7, rnn_size=4, embed_dim=3, att_hidden=2)
    >>> static = core.precompute(tf.zeros([2, 5, 6]), tf.ones([2, 5], tf.bool))
    >>> state = core.initial_state(2)
    >>> logits, state, weights = core.step(tf.constant([1, 1]), state, static)
    >>> logits.shape, weights.shape, sorted(state)
    (TensorShape([2, 7]), TensorShape([2, 5]), ['c_att', 'c_lang', 'h_att', 'h_lang'])
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
        suppressed_ids=(PAD_ID, BOS_ID),
        feature_embed=False,
        word_relu=False,
        weight_init="keras",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        self.feature_embed = feature_embed
        self.word_relu = word_relu
        self.weight_init = weight_init
        self.vocab_size = vocab_size
        self.rnn_size = rnn_size
        self.embed_dim = embed_dim
        self.att_hidden = att_hidden
        self.dropout = dropout
        self.text_attention = text_attention
        self.max_len = max_len
        self.suppressed_ids = tuple(int(i) for i in suppressed_ids)
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(
            vocab_size, embed_dim, name="embedding", dtype=policy
        )
        self.att_lstm = LSTMCell(rnn_size, static_input=True, name="att_lstm", dtype=policy)
        self.region_attention = RegionAttention(att_hidden, name="region_attention", dtype=policy)
        if text_attention:
            self.history_attention = RegionAttention(
                att_hidden, name="history_attention", dtype=policy
            )
        self.lang_lstm = LSTMCell(rnn_size, name="lang_lstm", dtype=policy)
        self.embed_dropout = keras.layers.Dropout(dropout, name="embed_dropout", dtype=policy)
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout", dtype=policy)
        self.logits = keras.layers.Dense(vocab_size, name="logits", dtype=policy)
        if feature_embed:
            dense = functools.partial(keras.layers.Dense, rnn_size, activation="relu", dtype=policy)
            self.region_embed = dense(name="region_embed")
            self.mean_embed = dense(name="mean_embed")
            self.feature_dropout = keras.layers.Dropout(
                dropout, name="feature_dropout", dtype=policy
            )

    def build(self, features_shape):
        """Creates all weights; `features_shape` is `[batch, regions, dim]`."""
        dim, rnn = features_shape[-1], self.rnn_size
        if self.feature_embed:
            self.region_embed.build((None, None, dim))
            self.mean_embed.build((None, dim))
            dim = rnn  # what the LSTMs and the attention see
        self.embedding.build((None,))
        self.att_lstm.build((None, rnn + self.embed_dim))
        self.att_lstm.build_static(dim)
        self.region_attention.build((None, rnn), (None, None, dim))
        lang_inputs = dim + rnn
        if self.text_attention:
            self.history_attention.build((None, rnn), (None, None, rnn))
            lang_inputs += rnn
        self.lang_lstm.build((None, lang_inputs))
        self.logits.build((None, rnn))
        if self.weight_init == "torch":
            self._torch_init()

    def _torch_init(self):
        """Redraws every weight as PyTorch initialises the same layers (`weight_init`)."""
        emb = self.embedding.embeddings
        emb.assign(tf.random.normal(emb.shape, dtype=emb.dtype))
        lstm_denses = set()
        for cell in (self.att_lstm, self.lang_lstm):
            # torch.nn.LSTMCell: every weight and bias uniform in +-1/sqrt(hidden_size)
            denses = [cell.gates] + ([cell.static_gates] if cell.static_input else [])
            lstm_denses.update(id(d) for d in denses)
            for dense in denses:
                _uniform_init(dense, 1.0 / np.sqrt(cell.units))
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.Dense) and id(layer) not in lstm_denses:
                # torch.nn.Linear: kernel and bias uniform in +-1/sqrt(fan_in)
                _uniform_init(layer, 1.0 / np.sqrt(layer.kernel.shape[0]))

    def precompute(self, features, region_mask=None, training=False):
        """Static parts for `step`, from features `[batch, regions, dim]`.

        Args:
            features: float `[batch, regions, dim]`, zero-padded.
            region_mask: optional bool `[batch, regions]`, False on padding.
            training: bool, enables the feature embedding's dropout.

        Returns:
            dict with `features`, `keys`, `mean`, `mean_gates`, `mask` (module docstring).
        """
        if features.shape.rank != 3:
            raise ValueError(f"features must be [batch, regions, dim], got {features.shape}")
        if not self.built:
            self.build(features.shape)
        features = tf.cast(features, self.compute_dtype)
        if region_mask is None:
            region_mask = tf.ones(tf.shape(features)[:2], tf.bool)
        weights = tf.cast(region_mask, features.dtype)[..., None]  # [batch, regions, 1]
        count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)  # [batch, 1]
        mean = tf.reduce_sum(features * weights, axis=1) / count  # [batch, dim]
        if self.feature_embed:
            drop = functools.partial(self.feature_dropout, training=training)
            features = drop(self.region_embed(features)) * weights  # [batch, regions, rnn]
            mean = drop(self.mean_embed(mean))  # [batch, rnn]
        return {
            "features": features,
            "keys": self.region_attention.project(features),
            "mean": mean,
            "mean_gates": self.att_lstm.project_static(mean),
            "mask": tf.cast(region_mask, tf.bool),
        }

    def initial_state(self, batch_size):
        """Zero state for `batch_size` (int or scalar tensor) rows; keys: module docstring."""
        zeros = functools.partial(tf.zeros, dtype=self.compute_dtype)
        state = {name: zeros([batch_size, self.rnn_size]) for name in _LSTM_KEYS}
        if self.text_attention:
            state["history"] = zeros([batch_size, self.max_len, self.rnn_size])
            state["history_keys"] = zeros([batch_size, self.max_len, self.att_hidden])
            state["step"] = tf.zeros([batch_size], tf.int32)
        return state

    def step(self, word_ids, state, static, training=False):
        """One decoding step.

        Args:
            word_ids: int `[batch]`, the previous word (`<bos>` first).
            state: dict, the step state (module docstring).
            static: dict, the result of `precompute` for the same rows.
            training: bool, enables dropout.

        Returns:
            logits float32 `[batch, vocab]` (-1e9 at `suppressed_ids`), the new
            state dict, and the region attention weights float `[batch, regions]`.
        """
        state, weights = self.advance(word_ids, state, static, training=training)
        return self.output_logits(state["h_lang"], training=training), state, weights

    def advance(self, word_ids, state, static, training=False, word_vectors=None, taps=None):
        """`step` without the logits: the new state dict and the region weights.

        Teacher forcing runs this in its loop and `output_logits` once on all
        steps' `h_lang` afterwards (one large matrix product instead of one per step).
        `word_vectors` (float `[batch, embed_dim]`, optional) are the embedded
        `word_ids` when the caller looked them up itself (export/tflite_models.py
        gathers them without the Embedding layer's int32 negative-index fix).
        `taps` (optional, `tfcap.model.grad_taps.StepTaps`): the step's recurrent
        products leave their kernels' gradients to one product after the loop.
        """
        if word_vectors is None:
            word_vectors = self.embedding(word_ids)
        if self.word_relu:
            word_vectors = tf.nn.relu(word_vectors)
        words = self.embed_dropout(word_vectors, training=training)  # [batch, embed]
        mean_gates = static.get("mean_gates")
        if mean_gates is None:
            mean_gates = self.att_lstm.project_static(static["mean"])
        att_inputs = tf.concat([state["h_lang"], words], axis=-1)
        taps = taps or {}
        h_att, c_att = self.att_lstm(
            att_inputs, state["h_att"], state["c_att"], mean_gates, tap=taps.get("att_lstm")
        )
        context, weights = self.region_attention(
            h_att,
            static["features"],
            static["mask"],
            keys=static["keys"],
            tap=taps.get("region_query"),
        )
        new_state = {"h_att": h_att, "c_att": c_att}
        lang_inputs = [context, h_att]
        if self.text_attention:
            # Compared as float32 (exact for these small counts): TFLite's GPU
            # delegate computes no int32 comparisons.
            step = tf.cast(state["step"], tf.float32)
            past = tf.range(self.max_len, dtype=tf.float32)[None, :] < tf.expand_dims(step, 1)
            text_context, _ = self.history_attention(
                h_att, state["history"], past, keys=state["history_keys"]
            )
            lang_inputs.insert(1, text_context)
        lang_inputs = tf.concat(lang_inputs, axis=-1)
        h_lang, c_lang = self.lang_lstm(
            lang_inputs, state["h_lang"], state["c_lang"], tap=taps.get("lang_lstm")
        )
        new_state.update(h_lang=h_lang, c_lang=c_lang)
        if self.text_attention:
            new_state.update(self._record(state, h_lang))
        return new_state, weights

    def tapped_layers(self) -> dict:
        """The Dense layers `advance` can tap (`tfcap.model.grad_taps`), by tap name."""
        return {
            "att_lstm": self.att_lstm.gates,
            "region_query": self.region_attention.query_proj,
            "lang_lstm": self.lang_lstm.gates,
        }

    def output_logits(self, h_lang, training=False):
        """float32 logits `[..., vocab]` of language-LSTM outputs `[..., rnn_size]`."""
        logits = self.logits(self.output_dropout(h_lang, training=training))
        return self._suppress(tf.cast(logits, tf.float32))

    def _suppress(self, logits):
        if not self.suppressed_ids:
            return logits
        hit = np.isin(np.arange(self.vocab_size), self.suppressed_ids)  # [vocab]
        return tf.where(tf.constant(hit), _SUPPRESSED_LOGIT, logits)

    def _record(self, state, h_lang):
        """Writes `h_lang` and its keys into row `step` of the history buffers.

        As `where(row == step, new, old)`, with float arithmetic on a 0/1 row
        selector (the same values exactly) so that TFLite's GPU delegate can run
        it: it has no int32 or bool ONE_HOT, no fp16 on/off values, and no
        SELECT_V2 that broadcasts `new` over the rows.
        """
        rows = tf.range(self.max_len, dtype=h_lang.dtype)[None, :, None]  # [1, max_len, 1]
        step = tf.reshape(tf.cast(state["step"], h_lang.dtype), [-1, 1, 1])  # [batch, 1, 1]
        write = tf.nn.relu(1.0 - tf.abs(rows - step))  # 1 at row `step`, else 0 (integers)
        keep = 1.0 - write  # [batch, max_len, 1]
        keys = self.history_attention.project(h_lang[:, None, :])  # [batch, 1, att_hidden]
        return {
            "history": state["history"] * keep + tf.matmul(write, h_lang[:, None, :]),
            "history_keys": state["history_keys"] * keep + tf.matmul(write, keys),
            "step": state["step"] + 1,
        }

    def call(self, word_ids, state, static, training=False):
        """Same as `step`; build the layer first (`precompute` does)."""
        return self.step(word_ids, state, static, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "rnn_size": self.rnn_size,
            "embed_dim": self.embed_dim,
            "att_hidden": self.att_hidden,
            "dropout": self.dropout,
            "text_attention": self.text_attention,
            "max_len": self.max_len,
            "suppressed_ids": list(self.suppressed_ids),
            "feature_embed": self.feature_embed,
            "word_relu": self.word_relu,
            "weight_init": self.weight_init,
        }


def _uniform_init(dense, limit):
    for weight in (dense.kernel, dense.bias) if dense.use_bias else (dense.kernel,):
        weight.assign(tf.random.uniform(weight.shape, -limit, limit, dtype=weight.dtype))


_LSTM_KEYS = ("h_att", "c_att", "h_lang", "c_lang")
_SUPPRESSED_LOGIT = -1e9
