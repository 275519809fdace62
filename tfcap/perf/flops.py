"""Model FLOPs of the Up-Down captioner, counted from its matrix products.

Counts multiply-adds of every matrix product (2 FLOPs each) and nothing else
(activations, softmax and the optimizer are a few percent at the `updown`
sizes). A training step is counted as 3x the forward pass (the backward pass
computes two products per forward product), the usual convention.
"""

from __future__ import annotations


def forward_flops(
    *,
    images: int,
    captions_per_image: int,
    steps: int,
    regions: int,
    feature_dim: int,
    vocab_size: int,
    rnn_size: int,
    embed_dim: int,
    att_hidden: int,
    text_attention: bool = False,
    max_len: int = 16,
    feature_embed: bool = False,
) -> int:
    """FLOPs of one teacher-forced forward pass.

    The `updown` preset on a bench batch (10 images x 5 captions, 17 steps):

    >>> f = forward_flops(images=10, captions_per_image=5, steps=17, regions=36,
    ...     feature_dim=2048, vocab_size=9487, rnn_size=1000, embed_dim=1000, att_hidden=512)
    >>> round(f / 1e9, 1)
    66.0
    >>> g = forward_flops(images=10, captions_per_image=5, steps=17, regions=36, feature_dim=2048,
    ...     vocab_size=9487, rnn_size=1000, embed_dim=1000, att_hidden=512, feature_embed=True)
    >>> round(g / 1e9, 1)
    59.9
    """
    rows = images * captions_per_image
    per_image = 0
    if feature_embed:  # regions and their mean into the rnn width; the rest sees that width
        per_image = (regions + 1) * feature_dim * rnn_size
        feature_dim = rnn_size
    per_image += regions * feature_dim * att_hidden + feature_dim * 4 * rnn_size  # keys, mean gates
    per_step = (
        (rnn_size + embed_dim + rnn_size) * 4 * rnn_size  # attention LSTM (without the mean)
        + rnn_size * att_hidden  # attention query
        + regions * att_hidden  # attention scores
        + regions * feature_dim  # attended context
        + (feature_dim + 2 * rnn_size) * 4 * rnn_size  # language LSTM
        + rnn_size * vocab_size  # vocabulary logits
    )
    if text_attention:
        per_step += (
            rnn_size * att_hidden  # history query
            + max_len * att_hidden  # history scores
            + max_len * rnn_size  # history context
            + rnn_size * 4 * rnn_size  # its input to the language LSTM
            + rnn_size * att_hidden  # the new history key
        )
    return 2 * (images * per_image + rows * steps * per_step)


def xe_step_flops(**sizes) -> int:
    """FLOPs of one XE training step: forward, backward (2x) and no more."""
    return 3 * forward_flops(**sizes)
