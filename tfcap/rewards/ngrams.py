"""Integer codes of word n-grams, and their counts per sentence, vectorized in NumPy.

Words get integer ids 1..B-1 and a k-gram is one uint64, sum_j id_j B^(k-1-j), with
B = 2^min(32, 64 // n) (2^16 for n=4: at most 65,535 distinct words); orders never
collide because leading digits are >= 1. Used by `tfcap.rewards.cider`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

CHUNK = 8192  # sentences turned into n-gram codes at once, grouped by length


@dataclasses.dataclass(frozen=True)
class Ngrams:
    """Distinct (sentence, n-gram) entries of `sentences` sentences, in no set order."""

    sentence: np.ndarray  # int64 [entries]
    code: np.ndarray  # uint64 [entries]
    count: np.ndarray  # float64 [entries], term frequency
    num_tokens: np.ndarray  # int64 [sentences]


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) over (starts, counts)."""
    counts = np.asarray(counts, np.int64)
    ends = np.cumsum(counts)
    shift = np.asarray(starts, np.int64) - (ends - counts)
    return np.repeat(shift, counts) + np.arange(ends[-1:].sum())


def lookup(table: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of codes in a sorted table."""
    if not len(table):
        return np.zeros(len(codes), np.int64), np.zeros(len(codes), bool)
    pos = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    return pos, table[pos] == codes


class HashIndex:
    """Positions of uint64 codes in a fixed table, by vectorized open addressing.

    Same answers as `lookup`, for a large table queried many times (the
    document frequencies of a training set, once per reward call): a binary
    search makes ~18 random reads per code there, a hash probe ~1.5.

    >>> index = HashIndex(np.array([3, 10, 99], np.uint64))
    >>> pos, found = index.find(np.array([99, 4, 3], np.uint64))
    >>> pos.tolist(), found.tolist()
    ([2, 0, 0], [True, False, True])
    """

    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
    _PROBES = 3  # vectorized rounds before the rest falls back to a binary search

    def __init__(self, table: np.ndarray):
        self.table = np.asarray(table, np.uint64)
        bits = max(4, int(4 * len(self.table)).bit_length())  # load factor <= 1/4
        self._shift = np.uint64(64 - bits)
        self._mask = np.int64((1 << bits) - 1)
        self._slots = np.full(1 << bits, -1, np.int64)  # table position, -1 empty
        slot = self._hash(self.table)
        pending = np.arange(len(self.table))
        while pending.size:  # linear probing, one round per probe distance
            want = slot[pending]
            free = self._slots[want] == -1
            won, first = np.unique(want[free], return_index=True)
            self._slots[won] = pending[free][first]
            placed = np.zeros(len(self.table), bool)
            placed[pending[free][first]] = True
            pending = pending[~placed[pending]]
            slot[pending] = (slot[pending] + 1) & self._mask

    def _hash(self, codes: np.ndarray) -> np.ndarray:
        return ((codes * self._MULTIPLIER) >> self._shift).astype(np.int64)

    def find(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found) of `codes` in the table; position 0 where not found."""
        codes = np.asarray(codes, np.uint64)
        pos = np.zeros(len(codes), np.int64)
        found = np.zeros(len(codes), bool)
        if not len(self.table):
            return pos, found
        active, slot = np.arange(len(codes)), self._hash(codes)
        for _ in range(self._PROBES):
            at = self._slots[slot]
            filled = at >= 0
            hit = filled & (self.table[np.maximum(at, 0)] == codes[active])
            pos[active[hit]], found[active[hit]] = at[hit], True
            going = filled & ~hit
            active, slot = active[going], (slot[going] + 1) & self._mask
            if not active.size:
                return pos, found
        # The few codes in long probe chains: a binary search beats more rounds.
        pos[active], found[active] = lookup(self.table, codes[active])
        return pos, found


class WordCoder:
    """Word ids and uint64 n-gram codes (see the module docstring)."""

    def __init__(self, n: int):
        self.n = n
        self.base = 1 << min(32, 64 // n)
        self.index: dict[str, int] = {}
        self.words: list[str] = [""]
        self.thresholds = np.array([self.base**k for k in range(1, n)], np.uint64)

    def word_id(self, word: str) -> int:
        wid = self.index.get(word)
        if wid is None:
            if len(self.words) >= self.base:
                raise ValueError(f"CIDEr-D with n={self.n} codes at most {self.base - 1} words")
            wid = self.index[word] = len(self.words)
            self.words.append(word)
        return wid

    def ids(self, words) -> np.ndarray:
        words = list(words)
        out = list(map(self.index.get, words))
        if None in out:
            out = [self.word_id(w) for w in words]
        return np.array(out, np.uint64)

    def order(self, codes: np.ndarray) -> np.ndarray:
        """0-based n-gram order of each code."""
        return np.searchsorted(self.thresholds, codes, side="right")

    def code(self, words: Sequence[str]) -> int:
        code = 0
        for word in words:
            code = code * self.base + self.word_id(word)
        return code

    def decode(self, codes: np.ndarray) -> list[str]:
        out = []
        for code, order in zip(codes.tolist(), self.order(codes).tolist(), strict=True):
            digits = []
            for _ in range(order + 1):
                code, digit = divmod(code, self.base)
                digits.append(self.words[digit])
            out.append(" ".join(reversed(digits)))
        return out

    def encode(self, flat: np.ndarray, lengths: np.ndarray) -> Ngrams:
        """N-gram counts of sentences given as flat word ids and per-sentence lengths."""
        starts = np.cumsum(lengths) - lengths
        by_length = np.argsort(lengths, kind="stable")  # chunks of similar width: little padding
        parts = [(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0))]
        for begin in range(0, len(lengths), CHUNK):
            rows = by_length[begin : begin + CHUNK]
            tokens = flat[ranges(starts[rows], lengths[rows])]
            sentence, code, count = self._encode_chunk(tokens, lengths[rows])
            parts.append((rows[sentence], code, count))
        return Ngrams(*(np.concatenate(p) for p in zip(*parts, strict=True)), lengths)

    def _encode_chunk(self, flat: np.ndarray, lengths: np.ndarray):
        width = int(lengths.max(initial=0))
        mask = np.arange(width) < lengths[:, None]  # [sentences, width]
        tokens = np.zeros(mask.shape, np.uint64)
        tokens[mask] = flat
        code, grams = np.zeros_like(tokens), []
        for k in range(1, min(self.n, width) + 1):
            code = code[:, : width - k + 1] * np.uint64(self.base) + tokens[:, k - 1 :]
            grams.append(np.where(mask[:, k - 1 :], code, 0))  # 0: no k-gram starts here
        if not grams:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0)
        grams = np.sort(np.concatenate(grams, axis=1), axis=1)  # [sentences, grams]
        flat_grams = grams.ravel()
        run = np.ones(grams.shape, bool)  # a run starts at each row start and at each change
        run[:, 1:] = grams[:, 1:] != grams[:, :-1]
        starts = np.flatnonzero(run)
        counts = np.diff(np.append(starts, flat_grams.size)).astype(np.float64)
        keep = flat_grams[starts] != 0
        sentence = (starts // grams.shape[1]).astype(np.int64)
        return sentence[keep], flat_grams[starts][keep], counts[keep]
