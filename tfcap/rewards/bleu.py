"""Sentence-level BLEU-4 on token ids, as an alternative evaluator reward.

BLEU-n of one candidate against its references (Papineni et al. 2002): the
geometric mean of the clipped n-gram precisions of orders 1..n, times the
brevity penalty exp(1 - r/c) when the candidate (length c) is shorter than the
closest reference length r. A sentence often lacks any 4-gram match, so the
precisions are smoothed: p_k = (matches_k + 1) / (total_k + 1) for k > 1
(Lin and Och 2004, "smoothing 2"); an empty candidate scores 0.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import numpy as np


def _tokens(ids: Sequence[int], eos_id: int) -> tuple[int, ...]:
    out = []
    for i in ids:
        i = int(i)
        if i == 0 or i == eos_id:
            break
        out.append(i)
    return tuple(out)


def _ngrams(tokens: tuple[int, ...], k: int) -> collections.Counter:
    return collections.Counter(tokens[i : i + k] for i in range(len(tokens) - k + 1))


def sentence_bleu(candidate: tuple, references: Sequence[tuple], n: int = 4) -> float:
    """BLEU-n of one token sequence against references (module docstring).

    >>> round(sentence_bleu((1, 2, 3, 4), [(1, 2, 3, 4)]), 6)
    1.0
    >>> round(sentence_bleu((1, 2), [(1, 2, 3, 4)]), 4)  # brevity penalty exp(1 - 4/2)
    0.3679
    """
    if not candidate:
        return 0.0
    log_sum = 0.0
    for k in range(1, n + 1):
        cand = _ngrams(candidate, k)
        best: collections.Counter = collections.Counter()
        for ref in references:
            for gram, count in _ngrams(ref, k).items():
                best[gram] = max(best[gram], count)
        matches = sum(min(c, best[g]) for g, c in cand.items())
        total = max(len(candidate) - k + 1, 0)
        if k == 1:
            if matches == 0:
                return 0.0
            log_sum += math.log(matches / total)
        else:
            log_sum += math.log((matches + 1) / (total + 1))
    c = len(candidate)
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    brevity = 1.0 if c >= r else math.exp(1 - r / c)
    return brevity * math.exp(log_sum / n)


def bleu_ids(
    candidate_ids: np.ndarray, image_index: np.ndarray, reference_ids: np.ndarray, eos_id: int = 2
) -> np.ndarray:
    """BLEU-4 of each candidate row against its image's references.

    Args:
        candidate_ids: int `[rows, time]`, ending at the first 0 or `eos_id`.
        image_index: int `[rows]`, each row's image.
        reference_ids: int `[images, refs, time]`, same convention (no `<bos>`).

    Returns:
        float32 `[rows]`.
    """
    refs = [[_tokens(r, eos_id) for r in image] for image in np.asarray(reference_ids)]
    refs = [[r for r in image if r] or [()] for image in refs]
    out = [
        sentence_bleu(_tokens(row, eos_id), refs[int(i)])
        for row, i in zip(np.asarray(candidate_ids), np.asarray(image_index), strict=True)
    ]
    return np.asarray(out, np.float32)
