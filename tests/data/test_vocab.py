"""Tokenization and vocabulary rules, and in-graph decoding with core ops."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfcap.data import vocab

bad_input = pytest.mark.bad_input("data prep")


def test_tokenize_lowercases_and_strips_punctuation():
    got = vocab.tokenize_py(["A Man's RED hat, on a T-shirt!", "  two   dogs.  ", "Café au lait?"])
    assert got == [["a", "mans", "red", "hat", "on", "a", "tshirt"], ["two", "dogs"],
                   ["café", "au", "lait"]]  # fmt: skip


def test_tokenize_in_tf_data_equals_eager():
    texts = ["A dog, running.", "Two CATS on a mat!"]
    eager = vocab.tokenize(tf.constant(texts)).to_list()
    ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.tokenize)
    assert [t.numpy().tolist() for t in ds] == eager


def test_min_count_is_strictly_greater():
    tokens = [["a"]] * 6 + [["b"]] * 5 + [["c"]] * 7
    v = vocab.Vocab.build(tokens, min_count=5)
    assert v.words == list(vocab.SPECIALS) + ["c", "a"]  # by count, b (5 times) is out
    assert v.encode(["b", "a", "c"]) == [vocab.UNK_ID, 5, 4]


def test_order_ties_alphabetical_and_specials_first():
    v = vocab.Vocab.build([["zebra", "apple", "mango"], ["mango"]], min_count=0)
    assert v.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (vocab.PAD_ID, vocab.BOS_ID, vocab.EOS_ID, vocab.UNK_ID) == (0, 1, 2, 3)
    assert v.words[4:] == ["mango", "apple", "zebra"]


def test_encode_cuts_at_max_len():
    v = vocab.Vocab.build([["w"]], min_count=0)
    assert v.encode(["w"] * 20, max_len=16) == [4] * 16


def test_save_load_round_trip(tmp_path):
    v = vocab.Vocab.build([["a", "b", "b"]], min_count=0)
    path = str(tmp_path / "vocab.txt")
    v.save(path)
    assert open(path).read().splitlines() == v.words
    assert vocab.Vocab.load(path).words == v.words


@bad_input
def test_load_rejects_a_file_without_specials(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match=str(path)):
        vocab.Vocab.load(str(path))


def test_encode_texts_in_graph_matches_python():
    v = vocab.Vocab.build([["a", "red", "circle"], ["a", "blue", "square"]], min_count=0)
    texts = ["A red circle.", "a Green square", "a a a a"]
    got = vocab.encode_texts(tf.constant(texts), v.lookup_table(), max_len=3).to_list()
    want = [v.encode(t, 3) for t in vocab.tokenize_py(texts)]
    assert got == want
    assert got[1] == [v.encode(["a"])[0], vocab.UNK_ID, v.encode(["square"])[0]]


def test_decode_ids_matches_python_decode():
    v = vocab.Vocab.build([["a", "red", "circle", "and", "square"]], min_count=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(v), size=(50, 12))
    ids[:, 0] = vocab.BOS_ID
    got = [s.decode() for s in vocab.decode_ids(tf.constant(ids), tf.constant(v.words)).numpy()]
    assert got == vocab.decode_ids_np(ids, v)
    assert any(vocab.EOS_ID in row for row in ids)  # the cut at <eos> was exercised


def test_decode_ids_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"rank 2"):
        vocab.decode_ids(tf.constant([1, 2, 3]), tf.constant(list(vocab.SPECIALS)))


def test_decode_ids_needs_no_tensorflow_text():
    """Serving graphs decode with core ops: run decode_ids with tensorflow_text blocked."""
    code = (
        "import sys; sys.modules['tensorflow_text'] = None\n"
        "import tensorflow as tf\n"
        "from tfcap.data import vocab\n"
        "f = tf.function(vocab.decode_ids).get_concrete_function(\n"
        "    tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.string))\n"
        "words = tf.constant(['<pad>', '<bos>', '<eos>', '<unk>', 'hi'])\n"
        "print(f(tf.constant([[1, 4, 4, 2, 4]]), words).numpy()[0].decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hi hi"
