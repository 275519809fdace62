"""Additive (Bahdanau) attention over a set of vectors: image regions or past states.

Einsum legend: `b` batch, `r` regions (or past steps), `d` region dim.
"""

import functools

import keras
import tensorflow as tf

# Logit given to padded regions: finite in float16 (max 65504), and exp() of it
# underflows to exactly 0 after the softmax's max-subtraction.
_MASK_LOGIT = -1e4


@keras.saving.register_keras_serializable(package="tfcap")
class RegionAttention(keras.layers.Layer):
    """Additive attention over image regions.

    `score_r = w · tanh(W_k region_r + W_q query)`, softmax over regions.
    Padded regions get exactly zero weight. The key projection `W_k region` does
    not depend on the query: compute it once with `project(regions)` and pass it
    as `keys` to every decoding step.

    Args:
        hidden_dim: int. Width of the scoring MLP.

    Call arguments:
        query: float `[batch, query_dim]`, the decoder state.
        regions: float `[batch, regions, dim]`.
        region_mask: optional bool `[batch, regions]`, False on padding. If a row
            is all False its weights (and context) are all zero.
        keys: optional float `[batch, regions, hidden_dim]`, the result of
            `project(regions)`; computed here when omitted.

    Returns:
        float `[batch, dim]` context and float `[batch, regions]` weights, both in
        the layer's compute dtype (the softmax itself runs in float32).

    >>> layer = RegionAttention(hidden_dim=8)
    >>> context, weights = layer(tf.zeros([2, 4]), tf.zeros([2, 5, 6]))
    >>> context.shape, weights.shape
    (TensorShape([2, 6]), TensorShape([2, 5]))
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        dense = functools.partial(keras.layers.Dense, dtype=self.dtype_policy)
        self.query_proj = dense(hidden_dim, name="query_proj")
        self.region_proj = dense(hidden_dim, name="region_proj")
        # A bias before a softmax is a no-op (and would get a zero gradient).
        self.score = dense(1, use_bias=False, name="score")

    def build(self, query_shape, regions_shape):
        self.query_proj.build(query_shape)
        self.region_proj.build(regions_shape)
        self.score.build(tuple(regions_shape[:-1]) + (self.hidden_dim,))

    def project(self, regions):
        """Keys `[batch, regions, hidden_dim]` of `regions` `[batch, regions, dim]`."""
        return self.region_proj(regions)

    def call(self, query, regions, region_mask=None, keys=None, tap=None):
        if keys is None:
            keys = self.region_proj(regions)  # [batch, regions, hidden]
        # `tap` (tfcap.model.grad_taps): the query kernel's gradient after the loop.
        query = self.query_proj(query) if tap is None else tap.dense(self.query_proj, query)
        query = query[:, None, :]  # [batch, 1, hidden]
        # squeeze, not [..., 0]: TFLite turns the index into a STRIDED_SLICE with
        # shrink_axis_mask, which the GPU delegate rejects; squeeze is a RESHAPE.
        logits = tf.squeeze(self.score(tf.tanh(keys + query)), axis=-1)  # [batch, regions]
        logits = tf.cast(logits, tf.float32)
        if region_mask is not None:
            logits = tf.where(region_mask, logits, _MASK_LOGIT)
        weights = tf.nn.softmax(logits, axis=-1)
        if region_mask is not None:
            # Exact zeros even for an all-padding row or extreme logits.
            weights = tf.where(region_mask, weights, 0.0)
        weights = tf.cast(weights, self.compute_dtype)
        return tf.einsum("br,brd->bd", weights, regions), weights

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}
