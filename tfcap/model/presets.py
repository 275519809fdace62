"""Named model sizes: `Captioner(vocab_size=V, **PRESETS[name])`.

- `updown`: the standard Up-Down configuration (Anderson et al. 2018).
- `multiatt`: `updown` plus the seed paper's textual attention.
- `demo`: small, for the synthetic data set on a CPU.

All embed the region features and their mean into the rnn width before the
LSTMs (`feature_embed`): on the demo data it raised test CIDEr from 1.484 ± 0.047
to 1.587 ± 0.073 (250 scenes; 1.572 -> 1.709 on 1,000), 3 seeds, 1,251 XE steps
(`python -m tfcap.experiments.quality`, README "Caption quality").

All draw their first weights as PyTorch does for the same layers (`weight_init=
"torch"`: word embeddings N(0, 1), kernels and biases uniform in +-1/sqrt(fan_in)),
as the reference implementation starts: on the same runs it raised test CIDEr
further to 1.832 ± 0.141 (1.910 ± 0.096 on 1,000), same seeds and steps.

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
    feature_embed=True,
    weight_init="torch",
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
        feature_embed=True,
        weight_init="torch",
    ),
}
