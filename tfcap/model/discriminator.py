"""The discriminator D of adversarial caption training: p(human-written | image, caption).

Caption convention: token ids `[rows, length]` as the generator emits them,
`w1 .. wn <eos> 0 ..` (no `<bos>`, `<eos>` = 2, then `<pad>` = 0). A leading
`<bos>` (= 1) is stripped per row, so pipeline captions (`<bos> w1 .. <eos> 0
..`) score the same. Tokens after the first `max_len` (after stripping) are
dropped; a caption cut there has no `<eos>`, like a generator sample that hit
its length cap. Padding never changes a score.

Rows: `rows = batch * m` captions, image-major (row `i * m + j` is caption `j`
of image `i`), as `tfcap.model.captioner` lays out `seq_per_img` captions. The
image side is pooled per image first, and the pooled vectors (never the raw
features) are repeated to the rows.

Einsum legend: `b` batch, `m` captions per image, `r` regions, `h` attention
width, `d` region dim.
"""

import functools

import keras
import tensorflow as tf

from tfcap.data.vocab import BOS_ID, PAD_ID

ENCODERS = ("lstm", "cnn")
# Finite in float16; exp() of it underflows to 0 after the softmax's max-subtraction.
_MASK_LOGIT = -1e4


@keras.saving.register_keras_serializable(package="tfcap")
class Discriminator(keras.Model):
    """Scores (image, caption) pairs: a logit that the caption is human AND fits the image.

    Caption: embedding, then an LSTM (`encoder="lstm"`: the last state, and the
    per-token states) or parallel Conv1D of widths `conv_widths` (`encoder="cnn"`,
    the text-CNN discriminator: masked max-over-time of the relu maps -> Dense,
    and the per-token maps). Image: masked mean of the regions -> Dense. With
    `attention`, each caption token queries its image's regions (scaled dot
    product); the attended regions, averaged over the tokens, join the image
    vector, and the tokens' mean expected query-key score ("agreement": do the
    regions hold what the words name?) joins the MLP input. Caption `t` and
    image `v` `[rows, hidden]` are joined as `[t * v, t, v (, agreement)]` ->
    Dense(tanh) -> Dense(1).

    Token-level grounding is what lets D generalise to unseen images: with a
    sentence vector only, a small D mostly memorises its training pairs.

    Args:
        vocab_size: int. Vocabulary incl. `<pad>`, `<bos>`, `<eos>`, `<unk>`.
        embed_dim: int. Word embedding width.
        hidden: int. Width of the caption and image encodings and of the MLP.
        encoder: "lstm" or "cnn".
        dropout: float. Rate on the word embeddings and before the MLP.
        max_len: int. Caption tokens read at most, incl. `<eos>`.
        attention: bool. Add the token-queried attention over regions.
        conv_widths: sequence of int. Filter widths of the "cnn" encoder.

    Call arguments:
        inputs: dict with `features` float `[batch, regions, dim]`, optional
            `region_mask` bool `[batch, regions]` (False on padding), and `ids`
            int `[rows, length]` (module docstring). Other keys are ignored.
        training: bool, enables dropout.

    Returns:
        float32 logits `[rows]`; `sigmoid` gives p(human).

    >>> d = Discriminator(vocab_size=9, embed_dim=4, hidden=6, encoder="cnn")
    >>> ids = tf.constant([[5, 6, 2, 0], [7, 2, 0, 0], [4, 4, 4, 2], [8, 2, 0, 0]])
    >>> d({"features": tf.ones([2, 3, 5]), "ids": ids}).shape
    TensorShape([4])
    """

    def __init__(
        self,
        vocab_size,
        embed_dim=256,
        hidden=512,
        encoder="lstm",
        dropout=0.2,
        max_len=17,
        attention=True,
        conv_widths=(2, 3, 4, 5),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.encoder = encoder
        self.dropout = dropout
        self.max_len = max_len
        self.attention = attention
        self.conv_widths = tuple(int(w) for w in conv_widths)
        dense = functools.partial(keras.layers.Dense, dtype=self.dtype_policy)
        self.embedding = keras.layers.Embedding(
            vocab_size, embed_dim, name="embedding", dtype=self.dtype_policy
        )
        self.embed_dropout = keras.layers.Dropout(
            dropout, name="embed_dropout", dtype=self.dtype_policy
        )
        if encoder == "lstm":
            self.lstm = keras.layers.LSTM(
                hidden,
                return_sequences=True,
                return_state=True,
                name="lstm",
                dtype=self.dtype_policy,
            )
        else:
            self.convs = [
                keras.layers.Conv1D(
                    hidden,
                    w,
                    padding="same",
                    activation="relu",
                    name=f"conv{w}",
                    dtype=self.dtype_policy,
                )
                for w in self.conv_widths
            ]
            self.text_proj = dense(hidden, activation="tanh", name="text_proj")
        self.image_proj = dense(hidden, activation="tanh", name="image_proj")
        if attention:
            self.query_proj = dense(hidden, name="query_proj")
            self.key_proj = dense(hidden, name="key_proj")
            self.context_proj = dense(hidden, use_bias=False, name="context_proj")
        self.mlp_dropout = keras.layers.Dropout(
            dropout, name="mlp_dropout", dtype=self.dtype_policy
        )
        # tanh, not relu: a dead relu MLP (seen at lr 1e-2) leaves D, and the reward, constant.
        self.mlp = dense(hidden, activation="tanh", name="mlp")
        self.out = dense(1, name="out")

    def build(self, input_shape):
        """Creates all weights; `input_shape`: the inputs dict's or `[batch, regions, dim]`."""
        if isinstance(input_shape, dict):
            input_shape = input_shape["features"]
        dim, hidden = input_shape[-1], self.hidden
        self.embedding.build((None, None))
        if self.encoder == "lstm":
            self.lstm.build((None, None, self.embed_dim))
        else:
            for conv in self.convs:
                conv.build((None, None, self.embed_dim))
            self.text_proj.build((None, hidden * len(self.convs)))
        self.image_proj.build((None, dim))
        if self.attention:
            token_dim = hidden if self.encoder == "lstm" else hidden * len(self.convs)
            self.query_proj.build((None, None, token_dim))
            self.key_proj.build((None, None, dim))
            self.context_proj.build((None, dim))
        self.mlp.build((None, 3 * hidden + int(self.attention)))
        self.out.build((None, hidden))

    def call(self, inputs, training=False):
        return self.score(
            inputs["features"], inputs.get("region_mask"), inputs["ids"], training=training
        )

    def score(self, features, region_mask, ids, training=False):
        """Logits float32 `[rows]` of captions `ids` `[rows, length]` (class docstring)."""
        if features.shape.rank != 3:
            raise ValueError(f"features must be [batch, regions, dim], got {features.shape}")
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank != 2:
            raise ValueError(f"ids must be [rows, length], got {ids.shape}")
        if not self.built:
            self.build(tuple(features.shape))
        features = tf.cast(features, self.compute_dtype)
        if region_mask is None:
            region_mask = tf.ones(tf.shape(features)[:2], tf.bool)
        region_mask = tf.cast(region_mask, tf.bool)
        ids = normalize_ids(ids, self.max_len)  # [rows, length]
        mask = tf.not_equal(ids, PAD_ID)  # [rows, length]
        text, tokens = self.encode_text(ids, mask, training)  # [rows, hidden], [rows, length, .]
        batch = tf.shape(features)[0]
        per_image = tf.shape(ids)[0] // batch
        tf.debugging.assert_equal(
            per_image * batch, tf.shape(ids)[0], "rows must be a multiple of the batch"
        )
        weights = tf.cast(region_mask, features.dtype)[..., None]  # [batch, regions, 1]
        mean = tf.reduce_sum(features * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
        image = tf.repeat(self.image_proj(mean), per_image, axis=0)  # [rows, hidden]
        joint = [text * image, text, image]
        if self.attention:
            context, agreement = self._attend(tokens, mask, features, region_mask, per_image)
            joint = [text * (image + context), text, image + context, agreement]
        joint = tf.concat(joint, axis=-1)  # [rows, 3 * hidden (+ 1)]
        joint = self.mlp(self.mlp_dropout(joint, training=training))
        return tf.cast(self.out(joint)[:, 0], tf.float32)

    def encode_text(self, ids, mask, training=False):
        """Encodings of normalised `ids` `[rows, length]` with `mask` (ids != 0).

        Returns:
            the caption `[rows, hidden]` and its tokens `[rows, length, token_dim]`
            (`hidden` for "lstm", `hidden * len(conv_widths)` for "cnn").
        """
        words = self.embed_dropout(self.embedding(ids), training=training)
        words *= tf.cast(mask, words.dtype)[..., None]  # zero pads: "same" convs see zeros
        if self.encoder == "lstm":
            tokens, last, _ = self.lstm(words, mask=mask, training=training)
            return last, tokens
        # Conv maps are >= 0 (relu): 0 on padding leaves the max over time unchanged.
        maps = [tf.where(mask[..., None], conv(words), 0.0) for conv in self.convs]
        tokens = tf.concat(maps, axis=-1)  # [rows, length, hidden * widths]
        return self.text_proj(tf.reduce_max(tokens, axis=1)), tokens

    def _attend(self, tokens, mask, features, region_mask, per_image):
        """Each caption token attends over its image's regions (never repeated per row).

        Returns:
            `[rows, hidden]`: the attended regions, averaged over the caption's
            tokens and projected; `[rows, 1]`: the tokens' mean expected
            query-key agreement, how well the image holds what the words name.
        """
        batch, length = tf.shape(features)[0], tf.shape(tokens)[1]
        query = self.query_proj(tokens)  # [rows, length, hidden]
        query = tf.reshape(query, [batch, per_image, length, self.hidden])
        keys = self.key_proj(features)  # [batch, regions, hidden]
        scores = tf.einsum("bmlh,brh->bmlr", query, keys) * (self.hidden**-0.5)
        scores = tf.cast(scores, tf.float32)
        logits = tf.where(region_mask[:, None, None, :], scores, _MASK_LOGIT)
        weights = tf.nn.softmax(logits, axis=-1)  # [batch, m, length, regions]
        agreement = tf.reduce_sum(
            weights * tf.where(region_mask[:, None, None, :], scores, 0.0), -1
        )
        token_mask = tf.cast(tf.reshape(mask, [batch, per_image, length]), tf.float32)
        count = tf.maximum(tf.reduce_sum(token_mask, -1), 1.0)  # [batch, m]
        pooled = tf.einsum("bmlr,bml->bmr", weights, token_mask) / count[..., None]
        context = tf.einsum("bmr,brd->bmd", tf.cast(pooled, features.dtype), features)
        agreement = tf.reduce_sum(agreement * token_mask, -1) / count  # [batch, m]
        context = self.context_proj(tf.reshape(context, [-1, features.shape[-1]]))
        return context, tf.cast(tf.reshape(agreement, [-1, 1]), context.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "hidden": self.hidden,
            "encoder": self.encoder,
            "dropout": self.dropout,
            "max_len": self.max_len,
            "attention": self.attention,
            "conv_widths": list(self.conv_widths),
        }


def normalize_ids(ids, max_len=None):
    """int32 ids, generator convention: a leading `<bos>` stripped per row, cut to `max_len`.

    >>> normalize_ids(tf.constant([[1, 5, 2, 0], [5, 6, 2, 0]])).numpy().tolist()
    [[5, 2, 0, 0], [5, 6, 2, 0]]
    """
    ids = tf.cast(ids, tf.int32)
    shifted = tf.pad(ids[:, 1:], [[0, 0], [0, 1]])  # [rows, length]
    ids = tf.where(tf.equal(ids[:, :1], BOS_ID), shifted, ids)
    return ids if max_len is None else ids[:, :max_len]
