"""How varied a set of captions is: distinct n-grams, unique captions, vocabulary.

>>> d = diversity(["a red circle", "a red circle", "a blue square"])
>>> d["distinct_1"], d["distinct_2"], d["unique_captions"], d["vocabulary"]
(0.5556, 0.6667, 0.6667, 5)
"""

from __future__ import annotations

from collections.abc import Sequence


def diversity(captions: Sequence[str]) -> dict[str, float]:
    """distinct-1/2 (distinct n-grams over all n-grams), the share of unique
    captions, the number of distinct words and the mean length in words."""
    tokens = [c.split() for c in captions]
    out: dict[str, float] = {}
    for n in (1, 2):
        grams = [tuple(t[i : i + n]) for t in tokens for i in range(len(t) - n + 1)]
        out[f"distinct_{n}"] = round(len(set(grams)) / max(len(grams), 1), 4)
    out["unique_captions"] = round(len(set(captions)) / max(len(captions), 1), 4)
    out["vocabulary"] = len({w for t in tokens for w in t})
    out["mean_length"] = round(sum(map(len, tokens)) / max(len(tokens), 1), 3)
    return out
