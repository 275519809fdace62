"""Named model sizes: `Captioner(vocab_size=V, **PRESETS[name])`.

- `updown`: the standard Up-Down configuration (Anderson et al. 2018).
- `multiatt`: `updown` plus the seed paper's textual attention.
- `demo`: small, for the synthetic data set on a CPU.

>>> sorted(PRESETS)
['demo', 'multiatt', 'updown']
"""

_UPDOWN = dict(
    rnn_size=1000,
    embed_dim=1000,
    att_hidden=512,
    dropout=0.5,
    text_attention=False,
    max_len=16,
)

PRESETS = {
    "updown": _UPDOWN,
    "multiatt": {**_UPDOWN, "text_attention": True},
    "demo": dict(
        rnn_size=256,
        embed_dim=256,
        att_hidden=128,
        dropout=0.3,
        text_attention=False,
        max_len=16,
    ),
}
