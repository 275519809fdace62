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


# Words a finished English caption does not end on (articles, prepositions, conjunctions).
FUNCTION_WORDS = frozenset(
    "a an the of with and on in to at by for from near under above below behind "
    "next beside over or its their his her is are".split()
)


def bad_endings(captions: Sequence[str]) -> float:
    """Share of captions whose last word is a function word ("... next to a").

    >>> bad_endings(["a red circle", "a red circle next to a", "a square and"])
    0.6667
    """
    ends = [c.split()[-1] if c.split() else "" for c in captions]
    return round(sum(e in FUNCTION_WORDS or not e for e in ends) / max(len(ends), 1), 4)


def novelty(captions: Sequence[str], train_captions: set[str]) -> float:
    """Share of captions that are not, word for word, a caption of the train split.

    >>> novelty(["a red circle", "a blue square"], {"a red circle"})
    0.5
    """
    return round(sum(c not in train_captions for c in captions) / max(len(captions), 1), 4)
