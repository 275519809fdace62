"""Caption tokenization and the vocabulary.

Tokenization (the same everywhere: vocab counting, records, CIDEr, results):
case-fold, delete punctuation and symbols (so "man's" becomes "mans", as in the
Karpathy preprocessing), split on whitespace with tensorflow_text.

The vocabulary file `vocab.txt` holds one token a line; the line number is the
id. Ids 0..3 are `<pad>`, `<bos>`, `<eos>`, `<unk>`; the words follow by
descending count, ties alphabetical. A word enters when it is seen more than
`min_count` times.

Turning ids back into text uses core TensorFlow ops only (`decode_ids`), so a
serving graph needs no tensorflow_text kernels.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from tfcap import errors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

_PUNCT = r"[\p{P}\p{S}]"


def tokenize(texts: tf.Tensor) -> tf.RaggedTensor:
    """Splits captions into normalised tokens.

    Args:
        texts: string `[captions]` (or a scalar).

    Returns:
        string RaggedTensor `[captions, (tokens)]` (or `[(tokens)]`).

    >>> tokenize(tf.constant(["A Man's hat, red!"])).to_list()
    [[b'a', b'mans', b'hat', b'red']]
    """
    import tensorflow_text as tf_text  # data-pipeline only; serving never imports it

    texts = tf_text.case_fold_utf8(tf.convert_to_tensor(texts, tf.string))
    texts = tf.strings.regex_replace(texts, _PUNCT, "")
    return tf_text.WhitespaceTokenizer().tokenize(texts)


def tokenize_py(texts: Sequence[str], batch_size: int = 4096) -> list[list[str]]:
    """`tokenize` for Python strings, batched; returns lists of str tokens."""
    out: list[list[str]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        if not chunk:
            continue
        for row in tokenize(tf.constant(chunk)).to_list():
            out.append([t.decode("utf-8") for t in row])
    return out


class Vocab:
    """Token <-> id mapping with the four special tokens first.

    >>> v = Vocab.build([["a", "cat"], ["a", "dog"], ["a", "cat"]], min_count=1)
    >>> v.words
    ['<pad>', '<bos>', '<eos>', '<unk>', 'a', 'cat']
    >>> v.encode(["a", "dog", "cat"])
    [4, 3, 5]
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}, got {words[:4]}")
        if len(set(words)) != len(words):
            dupes = [w for w, c in collections.Counter(words).items() if c > 1]
            raise ValueError(f"vocabulary has duplicate tokens: {dupes[:5]}")
        self.words = words
        self._index = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
        """Keeps the words seen more than `min_count` times."""
        counts = collections.Counter(t for tokens in token_lists for t in tokens)
        kept = sorted(
            (w for w, c in counts.items() if c > min_count and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        return cls(list(SPECIALS) + kept)

    @classmethod
    def load(cls, path: str) -> Vocab:
        """The vocabulary in `path`; `tfcap.errors.MissingInput` or `BadInput` naming it."""
        with errors.open_input(path, encoding="utf-8") as f:
            words = [line.rstrip("\n") for line in f]
        if words and words[-1] == "":
            words.pop()
        try:
            return cls(words)
        except ValueError as e:
            raise errors.BadInput(f"{path}: {e}") from None

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(w + "\n" for w in self.words))
        os.replace(tmp, path)

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """Token ids, unknown words as `<unk>`, cut at `max_len` tokens."""
        ids = [self._index.get(t, UNK_ID) for t in tokens]
        return ids if max_len is None else ids[:max_len]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids up to the first `<eos>`, skipping `<pad>` and `<bos>`."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.words[i])
        return " ".join(words)

    def lookup_table(self) -> tf.lookup.StaticHashTable:
        """A core-op table from token to id (`<unk>` for unknown words)."""
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.words), tf.range(len(self.words), dtype=tf.int64)
        )
        return tf.lookup.StaticHashTable(init, default_value=UNK_ID)


def encode_texts(texts: tf.Tensor, table: tf.lookup.StaticHashTable, max_len: int):
    """Tokenizes and looks up captions in-graph.

    Args:
        texts: string `[captions]`.
        table: from `Vocab.lookup_table()`.
        max_len: captions are cut at this many tokens.

    Returns:
        int64 RaggedTensor `[captions, (tokens)]`, at most `max_len` tokens each.
    """
    tokens = tokenize(texts)[:, :max_len]
    return tf.ragged.map_flat_values(table.lookup, tokens)


def decode_ids(ids: tf.Tensor, words: tf.Tensor) -> tf.Tensor:
    """Joins token ids into text in-graph with core ops only.

    Tokens after the first `<eos>` are dropped, and so are `<pad>` and `<bos>`.

    Args:
        ids: int `[batch, time]`.
        words: string `[vocab]`, the vocabulary.

    Returns:
        string `[batch]`.

    >>> words = tf.constant(["<pad>", "<bos>", "<eos>", "<unk>", "a", "cat"])
    >>> decode_ids(tf.constant([[1, 4, 5, 2, 4], [4, 0, 0, 0, 0]]), words).numpy().tolist()
    [b'a cat', b'a']
    """
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank != 2:
        raise ValueError(f"decode_ids expects ids of rank 2 [batch, time], got shape {ids.shape}")
    ids = tf.cast(ids, tf.int32)
    before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, EOS_ID), tf.int32), axis=1), 0)
    keep = before_eos & (ids > BOS_ID) & (ids != EOS_ID)
    tokens = tf.ragged.boolean_mask(tf.gather(words, ids), keep)
    return tf.strings.reduce_join(tokens, axis=-1, separator=" ")


def decode_ids_np(ids: np.ndarray, vocab: Vocab) -> list[str]:
    """`decode_ids` in NumPy/Python, for logs and results files."""
    return [vocab.decode(row) for row in np.asarray(ids)]
