"""CIDEr-D, vectorized in NumPy, giving the numbers of pycocoevalcap's `Cider`.

The formula, detail for detail as pycocoevalcap/cider/cider_scorer.py (n=4, sigma=6):

- a sentence is its whitespace-split tokens; its n-grams have orders 1..n;
- df(g): the number of images whose references (the union over them) contain g;
  idf(g) = ref_len - log(max(1, df(g))), with ref_len = log(number of images);
- a sentence's vector of order k holds tf(g) * idf(g) for its k-grams;
- sim(c, r, k) = sum_g min(c_g, r_g) * r_g / (|c_k| |r_k|) (the clipped numerator is the
  "-D"; the division is skipped when a norm is 0), times exp(-(l_c - l_r)^2 / (2 sigma^2)),
  where a sentence's "length" is its number of bigrams, max(tokens - 1, 0), as in
  pycocoevalcap (it counts `length` at order index 1);
- score(c) = 10 * mean over k of (sum over c's references of sim) / number of references.

Document frequencies are fixed when the scorer is made:

- `CiderD(refs)` / `CiderD.from_corpus(refs)`: from a corpus (one entry per image),
  ref_len = log(len(refs)). pycocoevalcap's convention when `refs` are the references of
  the evaluated images (one candidate each); SCST's when they are the training references.
- `CiderD(document_frequency=..., ref_len=...)` / `CiderD.from_json(path)`: precomputed.

How: words get integer ids 1..B-1 and a k-gram is one uint64, sum_j id_j B^(k-1-j), with
B = 2^min(32, 64 // n) (2^16 for n=4: at most 65,535 distinct words); orders never collide
because leading digits are >= 1. Reference n-grams are keyed by (image, n-gram) once, in
`encode_references`; a call encodes only the candidates and meets them with searchsorted
and bincount.

>>> scorer = CiderD([["a cat"], ["a dog"]])  # df from two "training" images
>>> mean, scores = scorer.score(["a cat", "cat cat"], [["a cat"], ["a cat"]])
>>> [round(float(s), 6) for s in scores]
[5.0, 1.25]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
import timeit
from collections.abc import Mapping, Sequence

import numpy as np

from tfcap.rewards.ngrams import CHUNK, HashIndex, Ngrams, WordCoder, lookup, ranges


@dataclasses.dataclass(frozen=True)
class References:
    """Reference n-grams of a set of images, from `CiderD.encode_references`.

    Entries are sorted by `key` = image * len(table) + index of the n-gram in `table`;
    tf-idf weights and norms use the scorer's df. Memory: about 21 bytes per reference
    n-gram (~4 KB per COCO image; ~0.5 GB for the 113k Karpathy training images).
    """

    table: np.ndarray  # uint64 [codes], sorted distinct n-gram codes
    key: np.ndarray  # int64 [entries], sorted
    slot: np.ndarray  # int32 [entries], the reference's index within its image
    order: np.ndarray  # int8 [entries], 0-based n-gram order
    weight: np.ndarray  # float64 [entries], tf * idf
    ref_offsets: np.ndarray  # int64 [images + 1]: image i has refs [offsets[i], offsets[i+1])
    num_tokens: np.ndarray  # int64 [refs]
    norms: np.ndarray  # float64 [refs, n]
    owner: object  # the word coder the codes come from

    @property
    def num_images(self) -> int:
        return len(self.ref_offsets) - 1


class CiderD:
    """CIDEr-D scorer; see the module docstring for the formula and the df conventions.

    Args (either `refs`, or `document_frequency` and `ref_len`):
        refs: a corpus (per image, a list of tokenized reference strings) to take
            document frequencies from, once.
        document_frequency: precomputed df: n-gram (space-joined string or tuple
            of words) -> number of images. Needs `ref_len`.
        ref_len: log of the number of images `document_frequency` was counted over.
        n: largest n-gram order.
        sigma: width of the gaussian length penalty.
        vocabulary: for token ids: the word of each id. None: id i is the word `str(i)`.
        eos_id: for token ids: a sequence ends at its first `eos_id` (and always
            before its first 0, padding).
        count_eos: for token ids: the `eos_id` that ends a sequence is one of its
            words (so "... next to a" without the end lacks the n-grams "a <eos>"
            that finished references have). Its df must then be counted over
            references that end with it too (`from_corpus` of strings ending in
            the eos word, as `tfcap.data.prepare` writes `cider_df_train_eos.json`).
    """

    def __init__(
        self,
        refs: Sequence[Sequence[str]] | None = None,
        *,
        document_frequency: Mapping | None = None,
        ref_len: float | None = None,
        n: int = 4,
        sigma: float = 6.0,
        vocabulary: Sequence[str] | None = None,
        eos_id: int | None = None,
        count_eos: bool = False,
    ):
        given = (refs is not None, document_frequency is not None, ref_len is not None)
        if given not in ((True, False, False), (False, True, True)):
            raise ValueError("give either refs, or document_frequency and ref_len")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if count_eos and eos_id is None:
            raise ValueError("count_eos needs eos_id")
        self.n, self.sigma, self.eos_id, self.count_eos = n, float(sigma), eos_id, count_eos
        self._coder = WordCoder(n)
        self._has_vocabulary = vocabulary is not None
        self._id_map = self._coder.ids([] if vocabulary is None else vocabulary)
        if refs is not None:
            self._set_df_from_corpus(refs)
        else:
            self._set_df(document_frequency, ref_len)

    @classmethod
    def from_corpus(cls, refs: Sequence[Sequence[str]], **kwargs) -> CiderD:
        """Document frequencies from `refs` (one entry per image), computed once."""
        return cls(refs, **kwargs)

    @classmethod
    def from_json(cls, path: str, **kwargs) -> CiderD:
        """A scorer with the df and ref_len saved by `to_json` (kwargs: sigma, vocabulary...)."""
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "document_frequency" not in data or "ref_len" not in data:
            raise ValueError(f"{path}: not a CIDEr-D document-frequency file")
        df, ref_len, n = data["document_frequency"], data["ref_len"], data.get("n", 4)
        return cls(document_frequency=df, ref_len=ref_len, n=n, **kwargs)

    def to_json(self, path: str | None = None) -> str:
        """The df and ref_len as JSON text (n-grams as space-joined words); written to `path`."""
        data = {"n": self.n, "ref_len": self.ref_len, "document_frequency": self.document_frequency}
        text = json.dumps(data)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @property
    def document_frequency(self) -> dict[str, float]:
        """n-gram (space-joined words) -> df."""
        keys = self._coder.decode(self._df_codes)
        return dict(zip(keys, self._df_values.tolist(), strict=True))

    def _set_df(self, document_frequency: Mapping, ref_len: float) -> None:
        codes = []
        for key in document_frequency:
            words = key.split() if isinstance(key, str) else list(key)
            if not 1 <= len(words) <= self.n:
                raise ValueError(f"document_frequency key {key!r} is not a 1..{self.n}-gram")
            codes.append(self._coder.code(words))
        codes = np.array(codes, np.uint64)
        order = np.argsort(codes, kind="stable")
        self._df_codes = codes[order]
        self._df_values = np.array(list(document_frequency.values()), np.float64)[order]
        if np.any(self._df_codes[1:] == self._df_codes[:-1]):
            raise ValueError("document_frequency names the same n-gram twice")
        self._df_index = HashIndex(self._df_codes)
        self.ref_len = float(ref_len)

    def _set_df_from_corpus(self, refs: Sequence[Sequence[str]]) -> None:
        if not len(refs):
            raise ValueError("refs is empty: no images to count document frequencies over")
        codes, step = [], max(1, CHUNK // 8)
        for start in range(0, len(refs), step):
            _, _, table, _, key = self._reference_keys(refs[start : start + step])
            distinct = np.unique(key)  # (image, n-gram) pairs
            codes.append(table[distinct % max(len(table), 1)])
        self._df_codes, counts = np.unique(np.concatenate(codes), return_counts=True)
        self._df_values = counts.astype(np.float64)
        self._df_index = HashIndex(self._df_codes)
        self.ref_len = float(np.log(float(len(refs))))

    def _idf(self, codes: np.ndarray) -> np.ndarray:
        pos, found = self._df_index.find(codes)
        df = np.where(found, self._df_values[pos] if found.any() else 0.0, 0.0)
        return self.ref_len - np.log(np.maximum(1.0, df))

    def _map_ids(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> word ids of the coder (uint64)."""
        if ids.size and int(ids.min()) < 0:
            raise ValueError(f"token ids must be >= 0, got {int(ids.min())}")
        top = int(ids.max(initial=-1))
        if top >= len(self._id_map):
            if self._has_vocabulary:
                raise ValueError(f"token id {top} is outside the vocabulary ({len(self._id_map)})")
            extra = self._coder.ids(str(i) for i in range(len(self._id_map), top + 1))
            self._id_map = np.concatenate([self._id_map, extra])
        return self._id_map[ids]

    def _truncate(self, ids: np.ndarray) -> np.ndarray:
        """int64 `[rows]` lengths of `[rows, time]` ids: up to the first 0 or eos_id
        (including that eos_id with `count_eos`)."""
        stop = ids == 0
        if self.eos_id is not None:
            stop |= ids == self.eos_id
        first = stop.argmax(axis=1)
        lengths = np.where(stop.any(axis=1), first, ids.shape[1])
        if self.count_eos:
            ended = stop.any(axis=1) & (ids[np.arange(len(ids)), first] == self.eos_id)
            lengths = lengths + ended
        return lengths.astype(np.int64)

    def _encode_ids(self, ids: np.ndarray) -> Ngrams:
        """N-grams of int `[rows, time]` token ids, each row cut at its first 0 or eos_id."""
        lengths = self._truncate(ids)
        flat = self._map_ids(ids[np.arange(ids.shape[1]) < lengths[:, None]].astype(np.int64))
        return self._coder.encode(flat, lengths)

    def _encode_sentences(self, sentences: Sequence) -> Ngrams:
        """N-grams of tokenized strings, or of token-id sequences (not a mix)."""
        if all(isinstance(s, str) for s in sentences):
            split = [s.split() for s in sentences]
            flat = self._coder.ids(itertools.chain.from_iterable(split))
            return self._coder.encode(flat, np.fromiter(map(len, split), np.int64, len(split)))
        if any(isinstance(s, str) for s in sentences):
            raise ValueError("give sentences as strings or as token ids, not a mix")
        rows = [np.asarray(s, np.int64).ravel() for s in sentences]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        padded = np.zeros((len(rows), int(lengths.max(initial=0))), np.int64)
        padded[np.arange(padded.shape[1]) < lengths[:, None]] = np.concatenate(rows)
        return self._encode_ids(padded)

    def _reference_keys(self, refs: Sequence[Sequence] | np.ndarray):
        if isinstance(refs, np.ndarray) and refs.ndim == 3:  # [images, refs, time] token ids
            counts = np.full(len(refs), refs.shape[1], np.int64)
            grams = self._encode_ids(refs.reshape(-1, refs.shape[2]))
        else:
            counts = np.fromiter(map(len, refs), np.int64, count=len(refs))
            grams = self._encode_sentences([r for image in refs for r in image])
        if np.any(counts == 0):
            raise ValueError(f"image {int(np.argmin(counts))} has no references")
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        table, dense = np.unique(grams.code, return_inverse=True)
        image = np.repeat(np.arange(len(refs)), counts)[grams.sentence]
        return grams, offsets, table, dense.reshape(-1), image * len(table) + dense.reshape(-1)

    def encode_references(self, refs: Sequence[Sequence]) -> References:
        """Encodes the references of a set of images once, for any number of `score_ids` calls.

        Args:
            refs: per image, a non-empty list of references, each a tokenized string or a
                sequence of token ids (see `vocabulary`, `eos_id`); or int `[images, refs,
                time]` token ids, every row a reference.
        """
        grams, offsets, table, dense, key = self._reference_keys(refs)
        sort = np.argsort(key, kind="stable")
        slot = grams.sentence - offsets[key // max(len(table), 1)]
        order = self._coder.order(grams.code)
        weight = grams.count * self._idf(table)[dense]
        norms = self._norms(grams.sentence, weight, order, len(grams.num_tokens))
        fields = (key[sort], slot[sort].astype(np.int32), order[sort].astype(np.int8), weight[sort])
        return References(table, *fields, offsets, grams.num_tokens, norms, self._coder)

    def score(
        self, candidates: Sequence[str], refs: Sequence[Sequence[str]]
    ) -> tuple[float, np.ndarray]:
        """Scores candidates[i] against refs[i] (tokenized strings).

        Reference lists shared by several candidates (equal tuples) are encoded once.

        Returns:
            The mean and float64 `[candidates]` scores.
        """
        if len(candidates) != len(refs):
            raise ValueError(f"{len(candidates)} candidates but {len(refs)} reference lists")
        index: dict[tuple, int] = {}
        image_index = np.array([index.setdefault(tuple(r), len(index)) for r in refs], np.int64)
        references = self.encode_references(list(index))
        return self._score(self._encode_sentences(list(candidates)), image_index, references)

    def score_ids(
        self, candidate_ids: np.ndarray, image_index: np.ndarray, references: References
    ) -> tuple[float, np.ndarray]:
        """Scores token-id candidates against pre-encoded references.

        Args:
            candidate_ids: int `[rows, time]`; a row ends at its first 0 or `eos_id`.
            image_index: int `[rows]`, each row's image in `references` (rows may share one).
            references: from `encode_references` of this scorer.

        Returns:
            The mean and float64 `[rows]` scores.
        """
        ids, index = np.asarray(candidate_ids), np.asarray(image_index)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"candidate_ids must be int [rows, time], got {ids.dtype} {ids.shape}")
        if index.shape != ids.shape[:1] or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"image_index must be int [{ids.shape[0]}], got {index.shape}")
        if references.owner is not self._coder:
            raise ValueError("references were encoded by another scorer")
        if index.size and not 0 <= index.min() <= index.max() < references.num_images:
            raise ValueError(f"image_index outside [0, {references.num_images})")
        return self._score(self._encode_ids(ids), index.astype(np.int64), references)

    def _norms(self, sentence, weights, order, rows: int) -> np.ndarray:
        sums = np.bincount(sentence * self.n + order, weights**2, minlength=rows * self.n)
        return np.sqrt(sums).reshape(rows, self.n)

    def _score(self, cand: Ngrams, image_index, refs: References) -> tuple[float, np.ndarray]:
        rows = len(cand.num_tokens)
        if rows == 0:
            raise ValueError("no candidates to score")
        w_c, w_r = cand.count * self._idf(cand.code), refs.weight
        norm_c = self._norms(cand.sentence, w_c, self._coder.order(cand.code), rows)
        # Each candidate n-gram meets the same n-gram in each reference of its image.
        pos, found = lookup(refs.table, cand.code)
        key = np.where(found, image_index[cand.sentence] * len(refs.table) + pos, -1)
        lo = np.searchsorted(refs.key, key, side="left")
        hits = np.searchsorted(refs.key, key, side="right") - lo
        e, m = np.repeat(np.arange(len(key)), hits), ranges(lo, hits)
        clipped = np.minimum(w_c[e], w_r[m]) * w_r[m]

        first = refs.ref_offsets[image_index]  # [rows]
        nref = refs.ref_offsets[image_index + 1] - first
        pair_start = np.cumsum(nref) - nref  # (row, reference) pairs, row-major
        pair = pair_start[cand.sentence[e]] + refs.slot[m]
        num = np.bincount(pair * self.n + refs.order[m], clipped, minlength=nref.sum() * self.n)
        num = num.reshape(-1, self.n)
        pair_row, pair_ref = np.repeat(np.arange(rows), nref), ranges(first, nref)
        nc, nr = norm_c[pair_row], refs.norms[pair_ref]
        ok = (nc != 0) & (nr != 0)
        val = np.where(ok, num / np.where(ok, nc * nr, 1.0), num)
        length_c = np.maximum(cand.num_tokens - 1, 0)[pair_row]
        length_r = np.maximum(refs.num_tokens - 1, 0)[pair_ref]
        delta = (length_c - length_r).astype(np.float64)
        val *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_order = np.stack(
            [np.bincount(pair_row, val[:, k], minlength=rows) for k in range(self.n)], axis=1
        )
        scores = per_order.mean(axis=1) / nref * 10.0
        return float(scores.mean()), scores


def benchmark(num_candidates: int = 50, refs_per_image: int = 5, repeats: int = 5) -> dict:
    """Median seconds per call of pycocoevalcap's Cider and of `CiderD`, and the ratios.

    Synthetic Zipf-distributed captions of 8-16 words over 2,000 words, one candidate per
    image. pycocoevalcap takes df from the scored images (its only mode); `CiderD` uses df
    from 2,000 "training" images (SCST's convention): `score` on strings (references
    encoded in each call) and `score_ids` on token ids (references encoded once).
    """
    from pycocoevalcap.cider.cider import Cider

    rng = np.random.default_rng(0)
    vocabulary = ["<pad>"] + [f"w{i}" for i in range(2000)]

    def sentence() -> np.ndarray:  # 8..16 ids in 1..2000, padded to 16 with 0
        ids = np.minimum(rng.zipf(1.4, rng.integers(8, 17)), len(vocabulary) - 1)
        return np.pad(ids, (0, 16 - len(ids)))

    def text(ids) -> str:
        return " ".join(vocabulary[i] for i in ids if i)

    train = [[text(sentence()) for _ in range(refs_per_image)] for _ in range(2000)]
    ref_ids = [[sentence() for _ in range(refs_per_image)] for _ in range(num_candidates)]
    cand_ids = np.stack([sentence() for _ in range(num_candidates)])
    refs, cands = [[text(r) for r in image] for image in ref_ids], [text(c) for c in cand_ids]
    scorer = CiderD(train, vocabulary=vocabulary)
    encoded, image_index = scorer.encode_references(ref_ids), np.arange(num_candidates)
    gts, res = dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}
    calls = {
        "pycocoevalcap": lambda: Cider().compute_score(gts, res)[1],
        "tfcap_score": lambda: scorer.score(cands, refs)[1],
        "tfcap_score_ids": lambda: scorer.score_ids(cand_ids, image_index, encoded)[1],
    }
    out = {"num_candidates": num_candidates, "refs_per_image": refs_per_image}
    for name, fn in calls.items():
        fn()  # warm-up
        out[f"{name}_s"] = statistics.median(timeit.repeat(fn, number=1, repeat=repeats))
    for name in ("tfcap_score", "tfcap_score_ids"):
        out[f"speedup_{name[6:]}"] = out["pycocoevalcap_s"] / out[f"{name}_s"]
    same = np.allclose(calls["tfcap_score"](), calls["tfcap_score_ids"](), rtol=0, atol=1e-12)
    out["score_equals_score_ids"] = bool(same)
    return out
