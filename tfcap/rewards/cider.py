"""CIDEr-D, vectorized in NumPy, giving the numbers of pycocoevalcap's `Cider`.

The formula, detail for detail as pycocoevalcap/cider/cider_scorer.py (n=4, sigma=6):

- a sentence is its whitespace-split tokens; its n-grams have orders 1..n;
- df(g): the number of images whose references (the union over them) contain g;
  idf(g) = ref_len - log(max(1, df(g))), with ref_len = log(number of images);
- a sentence's vector of order k holds tf(g) * idf(g) for its k-grams;
- sim(c, r, k) = sum_g min(c_g, r_g) * r_g / (|c_k| |r_k|) (clipped numerator: the "-D";
  the division is skipped when a norm is 0), times exp(-(l_c - l_r)^2 / (2 sigma^2)),
  where a sentence's "length" is its number of bigrams, max(tokens - 1, 0), as in
  pycocoevalcap (it counts `length` at order index 1);
- score(c) = 10 * mean over k of (sum over c's references of sim) / number of references.

Where document frequencies come from:

- `CiderD()`: from the references of each `score` call, exactly as pycocoevalcap: every
  candidate's reference list is one document (a list shared by 5 candidates counts 5 times)
  and ref_len = log(number of candidates).
- `CiderD(refs)` / `CiderD.from_corpus(refs)`: once, from a corpus (one entry per image),
  ref_len = log(len(refs)). SCST's convention with the training references.
- `CiderD(document_frequency=..., ref_len=...)` / `CiderD.from_json(path)`: precomputed.

How: words get integer ids 1..B-1 and a k-gram is one uint64, sum_j id_j B^(k-1-j), with
B = 2^min(32, 64 // n) (2^16 for n=4: at most 65,535 distinct words); orders never collide
because leading digits are >= 1. Counting, weighting, clipping and the per (candidate,
reference) sums are sorts, searchsorted and bincounts over flat arrays.

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
import time
from collections.abc import Mapping, Sequence

import numpy as np

_CHUNK = 20_000  # sentences turned into n-gram codes at once (bounds [sentences, length] arrays)


@dataclasses.dataclass(frozen=True)
class _Ngrams:
    """N-gram counts of `sentences` sentences; entries sorted by (sentence, code)."""

    sentence: np.ndarray  # int64 [entries]
    code: np.ndarray  # uint64 [entries]
    count: np.ndarray  # float64 [entries], term frequency
    num_tokens: np.ndarray  # int64 [sentences]


@dataclasses.dataclass(frozen=True)
class References:
    """Reference n-grams of a set of images, from `CiderD.encode_references`.

    Counts only (no document frequencies), so one encoding serves every call of the
    scorer that made it. Memory: about 24 bytes per reference n-gram (~0.9 KB an image).
    """

    ngrams: _Ngrams  # sentence = global reference index
    ref_offsets: np.ndarray  # int64 [images + 1]: refs of image i are [ref_offsets[i], [i + 1])
    owner: object  # the word coder whose ids the codes use

    @property
    def num_images(self) -> int:
        return len(self.ref_offsets) - 1


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) over (starts, counts)."""
    counts = np.asarray(counts, np.int64)
    ends = np.cumsum(counts)
    return np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts) + np.arange(
        ends[-1:].sum()
    )


class _WordCoder:
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
        get = self.index.get
        out = [get(w, 0) for w in words]
        if 0 in out:
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

    def encode(self, flat: np.ndarray, lengths: np.ndarray) -> _Ngrams:
        """N-gram counts of sentences given as flat word ids and per-sentence lengths."""
        parts, offset = [], 0
        for start in range(0, max(len(lengths), 1), _CHUNK):
            chunk = lengths[start : start + _CHUNK]
            size = int(chunk.sum())
            part = self._encode_chunk(flat[offset : offset + size], chunk)
            parts.append(dataclasses.replace(part, sentence=part.sentence + start))
            offset += size
        return _Ngrams(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in
                         dataclasses.fields(_Ngrams)))  # fmt: skip

    def _encode_chunk(self, flat: np.ndarray, lengths: np.ndarray) -> _Ngrams:
        width = int(lengths.max(initial=0))
        mask = np.arange(width) < lengths[:, None]  # [sentences, width]
        tokens = np.zeros(mask.shape, np.uint64)
        tokens[mask] = flat
        code = np.zeros_like(tokens)
        sentences, codes = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
        for k in range(1, min(self.n, width) + 1):
            code = code[:, : width - k + 1] * np.uint64(self.base) + tokens[:, k - 1 :]
            valid = mask[:, k - 1 :]  # a k-gram starting at i needs token i + k - 1
            sentences.append(np.nonzero(valid)[0])
            codes.append(code[valid])
        sentence, code = np.concatenate(sentences), np.concatenate(codes)
        order = np.lexsort((code, sentence))
        sentence, code = sentence[order], code[order]
        new = np.ones(len(code), bool)
        new[1:] = (sentence[1:] != sentence[:-1]) | (code[1:] != code[:-1])
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, len(code))).astype(np.float64)
        return _Ngrams(sentence[starts].astype(np.int64), code[starts], counts, lengths)


def _doc_freq(code_index: np.ndarray, image: np.ndarray, weight: np.ndarray, size: int):
    """float64 [size]: sum of weight[image] over the distinct (image, code) pairs."""
    pairs = np.unique(image.astype(np.int64) * size + code_index)
    return np.bincount(pairs % size, weights=weight[pairs // size], minlength=size)


class CiderD:
    """CIDEr-D scorer; see the module docstring for the formula and the df conventions.

    Args:
        refs: optional corpus (per image, a list of tokenized reference strings) to take
            document frequencies from, once.
        document_frequency: optional precomputed df: n-gram (space-joined string or tuple
            of words) -> number of images. Needs `ref_len`.
        ref_len: log of the number of images `document_frequency` was counted over.
        n: largest n-gram order.
        sigma: width of the gaussian length penalty.
        vocabulary: for `score_ids`: the word of each token id. None: id i is the word
            `str(i)` (df counted over id strings).
        eos_id: for `score_ids`: a token sequence ends before its first `eos_id` (and
            always before its first 0, padding).
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
    ):
        if refs is not None and (document_frequency is not None or ref_len is not None):
            raise ValueError("give either refs or document_frequency + ref_len, not both")
        if (document_frequency is None) != (ref_len is None):
            raise ValueError("document_frequency and ref_len go together")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.sigma, self.eos_id = n, float(sigma), eos_id
        self._coder = _WordCoder(n)
        self._id_map = np.zeros(0, np.uint64)
        self._vocabulary = vocabulary is not None
        if vocabulary is not None:
            self._id_map = self._coder.ids(vocabulary)
        self._df_codes = self._df_values = None
        self.ref_len = None
        if refs is not None:
            self._set_df_from_corpus(refs)
        elif document_frequency is not None:
            self._set_df(document_frequency, ref_len)

    # ------------------------------------------------------------- document frequencies

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
        return cls(
            document_frequency=data["document_frequency"],
            ref_len=data["ref_len"],
            n=data.get("n", 4),
            **kwargs,
        )

    def to_json(self, path: str | None = None) -> str:
        """The df and ref_len as JSON text (n-grams as space-joined words); written to `path`."""
        if self._df_codes is None:
            raise ValueError("this scorer takes df from each call's references; nothing to save")
        text = json.dumps(
            {"n": self.n, "ref_len": self.ref_len, "document_frequency": self.document_frequency}
        )
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @property
    def document_frequency(self) -> dict[str, float] | None:
        """n-gram (space-joined words) -> df, or None when df comes from each call."""
        if self._df_codes is None:
            return None
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
        values = np.array(list(document_frequency.values()), np.float64)
        order = np.argsort(codes, kind="stable")
        self._df_codes, self._df_values = codes[order], values[order]
        if np.any(self._df_codes[1:] == self._df_codes[:-1]):
            raise ValueError("document_frequency names the same n-gram twice")
        self.ref_len = float(ref_len)

    def _set_df_from_corpus(self, refs: Sequence[Sequence[str]]) -> None:
        chunk_images = max(1, _CHUNK // 8)
        codes = []
        for start in range(0, len(refs), chunk_images):
            encoded = self.encode_references(refs[start : start + chunk_images])
            grams = encoded.ngrams
            unique, inverse = np.unique(grams.code, return_inverse=True)
            image = np.repeat(np.arange(encoded.num_images), np.diff(encoded.ref_offsets))
            pairs = np.unique(image[grams.sentence] * len(unique) + inverse)
            codes.append(unique[pairs % len(unique)])
        if not codes:
            raise ValueError("refs is empty: no images to count document frequencies over")
        self._df_codes, counts = np.unique(np.concatenate(codes), return_counts=True)
        self._df_values = counts.astype(np.float64)
        self.ref_len = float(np.log(float(len(refs))))

    # ------------------------------------------------------------------------ encoding

    def _map_ids(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> internal word ids (uint64)."""
        top = int(ids.max(initial=-1))
        if ids.size and int(ids.min()) < 0:
            raise ValueError(f"token ids must be >= 0, got {int(ids.min())}")
        if top >= len(self._id_map):
            if self._vocabulary:
                raise ValueError(f"token id {top} is outside the vocabulary ({len(self._id_map)})")
            extra = self._coder.ids(str(i) for i in range(len(self._id_map), top + 1))
            self._id_map = np.concatenate([self._id_map, extra])
        return self._id_map[ids]

    def _truncate(self, ids: np.ndarray) -> np.ndarray:
        """Lengths `[rows]` of `[rows, time]` ids: up to the first 0 or eos_id."""
        stop = ids == 0
        if self.eos_id is not None:
            stop |= ids == self.eos_id
        return np.where(stop.any(axis=1), stop.argmax(axis=1), ids.shape[1]).astype(np.int64)

    def _sentence_ids(self, sentence) -> np.ndarray:
        if isinstance(sentence, str):
            return self._coder.ids(sentence.split())
        ids = np.asarray(sentence, np.int64).reshape(1, -1)
        return self._map_ids(ids[0, : self._truncate(ids)[0]])

    def _encode_sentences(self, sentences: Sequence) -> _Ngrams:
        if all(isinstance(s, str) for s in sentences):  # fast path: one flat list of words
            split = [s.split() for s in sentences]
            lengths = np.fromiter(map(len, split), np.int64, count=len(split))
            return self._coder.encode(
                self._coder.ids(itertools.chain.from_iterable(split)), lengths
            )
        ids = [self._sentence_ids(s) for s in sentences]
        lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
        flat = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
        return self._coder.encode(flat.astype(np.uint64), lengths)

    def encode_references(self, refs: Sequence[Sequence]) -> References:
        """Encodes, once, the references of a set of images for `score_ids`.

        Args:
            refs: per image, a non-empty list of references, each a tokenized string or a
                sequence of token ids (see `vocabulary`, `eos_id`).
        """
        counts = np.fromiter(map(len, refs), np.int64, count=len(refs))
        if np.any(counts == 0):
            raise ValueError(f"image {int(np.argmin(counts))} has no references")
        ngrams = self._encode_sentences([r for image in refs for r in image])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return References(ngrams, offsets, self._coder)

    # ------------------------------------------------------------------------- scoring

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
        references = self.encode_references([list(r) for r in index])
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
        ids = np.asarray(candidate_ids)
        index = np.asarray(image_index)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"candidate_ids must be int [rows, time], got {ids.dtype} {ids.shape}")
        if index.shape != ids.shape[:1] or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"image_index must be int [{ids.shape[0]}], got {index.shape}")
        if references.owner is not self._coder:
            raise ValueError("references were encoded by another scorer")
        if index.size and not 0 <= index.min() <= index.max() < references.num_images:
            raise ValueError(f"image_index outside [0, {references.num_images})")
        lengths = self._truncate(ids)
        flat = self._map_ids(ids[np.arange(ids.shape[1]) < lengths[:, None]].astype(np.int64))
        return self._score(self._coder.encode(flat, lengths), index.astype(np.int64), references)

    def _idf(self, codes, code_index, image, multiplicity) -> np.ndarray:
        """float64 idf of each code; df from the batch when the scorer has none."""
        if self._df_codes is None:
            df = _doc_freq(code_index, image, multiplicity.astype(np.float64), len(codes))
            ref_len = np.log(float(multiplicity.sum()))
        elif len(self._df_codes):
            pos = np.minimum(np.searchsorted(self._df_codes, codes), len(self._df_codes) - 1)
            df = np.where(self._df_codes[pos] == codes, self._df_values[pos], 0.0)
            ref_len = self.ref_len
        else:
            df, ref_len = np.zeros(len(codes)), self.ref_len
        return ref_len - np.log(np.maximum(1.0, df))

    def _norms(self, grams: _Ngrams, weights, order) -> np.ndarray:
        rows = len(grams.num_tokens)
        sums = np.bincount(grams.sentence * self.n + order, weights**2, minlength=rows * self.n)
        return np.sqrt(sums).reshape(rows, self.n)

    def _score(self, cand: _Ngrams, image_index, refs: References) -> tuple[float, np.ndarray]:
        rows = len(cand.num_tokens)
        if rows == 0:
            raise ValueError("no candidates to score")
        images, local = np.unique(image_index, return_inverse=True)  # local: [rows]
        nref_image = refs.ref_offsets[images + 1] - refs.ref_offsets[images]
        ref_ids = _ranges(refs.ref_offsets[images], nref_image)  # [batch refs], global
        ref_image = np.repeat(np.arange(len(images)), nref_image)  # [batch refs], local
        first_ref = np.cumsum(nref_image) - nref_image  # [local images]
        g = refs.ngrams
        entry_offsets = np.searchsorted(g.sentence, np.stack([ref_ids, ref_ids + 1]))
        entries = _ranges(entry_offsets[0], entry_offsets[1] - entry_offsets[0])
        ref = _Ngrams(
            np.repeat(np.arange(len(ref_ids)), entry_offsets[1] - entry_offsets[0]),
            g.code[entries], g.count[entries], g.num_tokens[ref_ids],
        )  # fmt: skip
        codes, inverse = np.unique(np.concatenate([cand.code, ref.code]), return_inverse=True)
        inv_c, inv_r = inverse[: len(cand.code)], inverse[len(cand.code) :]
        multiplicity = np.bincount(local, minlength=len(images))
        idf = self._idf(codes, inv_r, ref_image[ref.sentence], multiplicity)
        order = self._coder.order(codes)
        w_c, w_r = cand.count * idf[inv_c], ref.count * idf[inv_r]
        norm_c, norm_r = self._norms(cand, w_c, order[inv_c]), self._norms(ref, w_r, order[inv_r])

        # Each candidate n-gram meets the same n-gram in each reference of its image.
        key_r = ref_image[ref.sentence] * len(codes) + inv_r
        sort_r = np.argsort(key_r, kind="stable")
        key_c = local[cand.sentence] * len(codes) + inv_c
        lo = np.searchsorted(key_r[sort_r], key_c, side="left")
        hits = np.searchsorted(key_r[sort_r], key_c, side="right") - lo
        e = np.repeat(np.arange(len(key_c)), hits)
        m = sort_r[_ranges(lo, hits)]
        clipped = np.minimum(w_c[e], w_r[m]) * w_r[m]

        nref = nref_image[local]  # [rows]
        pair_start = np.cumsum(nref) - nref
        row_e = cand.sentence[e]
        pair = pair_start[row_e] + ref.sentence[m] - first_ref[local[row_e]]
        num = np.bincount(pair * self.n + order[inv_c][e], clipped, minlength=nref.sum() * self.n)
        pair_row = np.repeat(np.arange(rows), nref)
        pair_ref = _ranges(first_ref[local], nref)
        nc, nr = norm_c[pair_row], norm_r[pair_ref]
        ok = (nc != 0) & (nr != 0)
        num = num.reshape(-1, self.n)
        val = np.where(ok, num / np.where(ok, nc * nr, 1.0), num)
        length_c, length_r = np.maximum(cand.num_tokens - 1, 0), np.maximum(ref.num_tokens - 1, 0)
        delta = (length_c[pair_row] - length_r[pair_ref]).astype(np.float64)
        val *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_order = np.stack(
            [np.bincount(pair_row, val[:, k], minlength=rows) for k in range(self.n)], axis=1
        )
        scores = per_order.mean(axis=1) / nref * 10.0
        return float(scores.mean()), scores


def benchmark(num_candidates: int = 50, refs_per_image: int = 5, repeats: int = 5) -> dict:
    """Seconds per call of pycocoevalcap's Cider and of this module, and the ratios.

    Synthetic Zipf-distributed captions of 8-16 words over 2,000 words. One candidate per
    image. pycocoevalcap computes df from the scored images (its only mode); `CiderD` uses
    df from 2,000 "training" images (SCST's convention): `score` on strings (references
    encoded in each call), `score_ids` on token ids with references encoded once.
    """
    from pycocoevalcap.cider.cider import Cider

    rng = np.random.default_rng(0)
    vocabulary = ["<pad>"] + [f"w{i}" for i in range(2000)]

    def sentence() -> np.ndarray:
        return np.minimum(rng.zipf(1.4, rng.integers(8, 17)), len(vocabulary) - 1)

    def text(ids) -> str:
        return " ".join(vocabulary[i] for i in ids)

    train = [[text(sentence()) for _ in range(refs_per_image)] for _ in range(2000)]
    ref_ids = [[sentence() for _ in range(refs_per_image)] for _ in range(num_candidates)]
    cand_ids = np.zeros((num_candidates, 16), np.int64)
    for i in range(num_candidates):
        ids = sentence()
        cand_ids[i, : len(ids)] = ids
    refs = [[text(r) for r in image] for image in ref_ids]
    cands = [text(row[row > 0]) for row in cand_ids]
    scorer = CiderD(train, vocabulary=vocabulary)
    encoded = scorer.encode_references(ref_ids)
    image_index = np.arange(num_candidates)
    gts = {i: refs[i] for i in range(num_candidates)}
    res = {i: [cands[i]] for i in range(num_candidates)}

    def seconds(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    coco = seconds(lambda: Cider().compute_score(gts, res))
    strings = seconds(lambda: scorer.score(cands, refs))
    ids = seconds(lambda: scorer.score_ids(cand_ids, image_index, encoded))
    same = np.allclose(
        scorer.score(cands, refs)[1], scorer.score_ids(cand_ids, image_index, encoded)[1]
    )
    return {
        "num_candidates": num_candidates,
        "refs_per_image": refs_per_image,
        "pycocoevalcap_s": coco,
        "tfcap_score_s": strings,
        "tfcap_score_ids_s": ids,
        "speedup_score": coco / strings,
        "speedup_score_ids": coco / ids,
        "same_scores": bool(same),
    }


__all__ = ["CiderD", "References", "benchmark"]
