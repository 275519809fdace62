"""CIDEr-D: against pycocoevalcap's scorer on the real Karpathy val5k captions, and by hand."""

import json
import math
from collections import defaultdict

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from tfcap.rewards.cider import CiderD, benchmark

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def val5k(shared_data) -> list[list[str]]:
    """PTB-tokenized captions of the 5,000 val5k images (sorted by id), as pycocoevalcap does."""
    data = json.loads((shared_data / "karpathy" / "captions_val5k.json").read_text())
    captions = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append({"caption": ann["caption"]})
    tokenized = PTBTokenizer().tokenize(dict(captions))
    return [tokenized[i] for i in sorted(tokenized)]


def test_equals_pycocoevalcap_on_val5k(val5k):
    # All 5,000 images: candidate = first reference, references = the other 4-6.
    cands, refs = [caps[0] for caps in val5k], [caps[1:] for caps in val5k]
    res = {i: [c] for i, c in enumerate(cands)}
    want_mean, want = Cider().compute_score(dict(enumerate(refs)), res)
    mean, scores = CiderD(refs).score(cands, refs)
    assert len(scores) == 5000 and scores.dtype == np.float64
    assert np.max(np.abs(scores - want)) < 1e-6
    assert abs(mean - want_mean) < 1e-6
    assert 0.5 < mean < 1.5 and scores.std() > 0.3  # real spread, not a degenerate match


def test_train_df_equals_pycocoevalcap_with_the_same_df(val5k):
    # SCST convention: df and ref_len from "training" images (the first 2,500), scoring the
    # other 2,500. pycocoevalcap's own compute_cider with that df (and, as its ref_len is
    # log(number of scored images), equally many scored images) is the reference.
    train, held_out = val5k[:2500], val5k[2500:]
    cands, refs = [caps[0] for caps in held_out], [caps[1:] for caps in held_out]
    counter = CiderScorer()
    for image in train:
        counter.cook_append(None, image)
    counter.compute_doc_freq()
    train_df = dict(counter.document_frequency)  # compute_cider adds 0-entries as it looks up
    coco = CiderScorer()
    for cand, image_refs in zip(cands, refs, strict=True):
        coco += (cand, image_refs)
    coco.document_frequency = counter.document_frequency
    want = np.array(coco.compute_cider())

    scorer = CiderD.from_corpus(train)
    assert scorer.ref_len == pytest.approx(math.log(2500), abs=1e-15)
    assert scorer.document_frequency == {" ".join(k): v for k, v in train_df.items()}
    _, scores = scorer.score(cands, refs)
    assert np.max(np.abs(scores - want)) < 1e-6
    # The held-out set's own df gives different numbers: the df source matters.
    assert np.max(np.abs(CiderD(refs).score(cands, refs)[1] - scores)) > 1e-2


def test_precomputed_df_by_hand():
    # Training images "a cat", "a dog": df a=2, cat=dog=a cat=a dog=1, ref_len = ln 2, so
    # idf(a) = 0, idf(cat) = idf(dog) = idf(a cat) = idf(unseen) = ln 2.
    scorer = CiderD([["a cat"], ["a dog"]])
    assert scorer.ref_len == pytest.approx(LN2)
    assert scorer.document_frequency == {"a": 2, "cat": 1, "dog": 1, "a cat": 1, "a dog": 1}
    cands = ["a cat", "cat cat", "cat", "a dog"]
    refs = [["a cat"], ["a cat"], ["a cat"], ["a cat", "a dog"]]
    want = [
        # unigram cosine 1, bigram cosine 1, no 3/4-grams: 10 * (1 + 1 + 0 + 0) / 4
        5.0,
        # cat: tf 2 vs 1, clipped: min(2 ln2, ln2) * ln2 / (2 ln2 * ln2) = 0.5; "cat cat"
        # unseen by the reference: 10 * 0.5 / 4
        1.25,
        # unigram cosine 1; no bigram; lengths (bigram counts) 0 vs 1: exp(-1 / 72)
        2.5 * math.exp(-1.0 / 72.0),
        # "a cat" shares only "a" (weight 0): 0; "a dog": 1 + 1; mean over 2 refs
        10 * (2 / 4) / 2,
    ]
    mean, scores = scorer.score(cands, refs)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-12)
    assert mean == pytest.approx(np.mean(want))
    df = {"a": 2, ("cat",): 1, "dog": 1, ("a", "cat"): 1, "a dog": 1}
    given = CiderD(document_frequency=df, ref_len=LN2)
    np.testing.assert_allclose(given.score(cands, refs)[1], want, rtol=0, atol=1e-12)


def test_json_round_trip(tmp_path, val5k):
    scorer = CiderD(val5k[:300])
    path = tmp_path / "cider_df_train.json"
    text = scorer.to_json(str(path))
    assert json.loads(path.read_text()) == json.loads(text)
    assert json.loads(text)["document_frequency"]["a man"] >= 1
    loaded = CiderD.from_json(str(path))
    assert loaded.ref_len == scorer.ref_len
    assert loaded.document_frequency == scorer.document_frequency
    cands, refs = [c[0] for c in val5k[300:400]], [c[1:] for c in val5k[300:400]]
    np.testing.assert_array_equal(loaded.score(cands, refs)[1], scorer.score(cands, refs)[1])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        CiderD.from_json(str(tmp_path / "bad.json"))


def test_score_ids_equals_score_on_strings(val5k):
    rng = np.random.default_rng(0)
    images = val5k[:200]
    vocabulary = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocabulary += sorted({w for caps in images for c in caps for w in c.split()})
    word_id = {w: i for i, w in enumerate(vocabulary)}
    scorer = CiderD(val5k[1000:3000], vocabulary=vocabulary, eos_id=2)

    # SCST-like: 5 samples per image share its references; samples are shuffled or cut
    # references, ids end with eos (some rows fill the whole width, no eos), then 0s.
    rows, image_index, texts = [], [], []
    for i, caps in enumerate(images):
        for _ in range(5):
            words = caps[rng.integers(len(caps))].split()
            words = list(rng.permutation(words)) if rng.random() < 0.5 else words[:16]
            texts.append(" ".join(words))
            rows.append([word_id[w] for w in words[:16]] + [2, 7, 9])  # junk after eos
            image_index.append(i)
    width = 16
    ids = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
        ids[r, : min(len(row), width)] = row[:width]
    texts = [" ".join(t.split()[:16]) for t in texts]
    ref_ids = [[[word_id[w] for w in c.split()] + [2] for c in caps[1:]] for caps in images]
    refs = [caps[1:] for caps in images]

    encoded = scorer.encode_references(ref_ids)
    mean, by_ids = scorer.score_ids(ids, np.array(image_index), encoded)
    _, by_text = scorer.score(texts, [refs[i] for i in image_index])
    assert encoded.num_images == 200 and by_ids.shape == (1000,)
    np.testing.assert_allclose(by_ids, by_text, rtol=0, atol=1e-12)
    assert mean == pytest.approx(by_text.mean())
    # Reference strings and reference ids encode alike; references are reusable.
    again = scorer.score_ids(ids[:10], np.array(image_index[:10]), scorer.encode_references(refs))
    np.testing.assert_allclose(again[1], by_ids[:10], rtol=0, atol=1e-12)


def test_ids_without_vocabulary_are_words():
    # Without a vocabulary id i is the word "i": the hand example with a=5, cat=6, dog=7.
    scorer = CiderD([["5 6"], ["5 7"]])
    cands, index = np.array([[5, 6, 0], [6, 0, 0]]), np.array([0, 0])
    want = [5.0, 2.5 * math.exp(-1.0 / 72.0)]
    for refs in ([[[5, 6]]], [[np.array([5, 6, 0, 0])]], np.array([[[5, 6, 0]]])):
        np.testing.assert_allclose(
            scorer.score_ids(cands, index, scorer.encode_references(refs))[1], want, atol=1e-12
        )


def test_bad_input():
    with pytest.raises(ValueError, match="either refs"):
        CiderD()
    with pytest.raises(ValueError, match="either refs"):
        CiderD([["a"]], document_frequency={"a": 1}, ref_len=0.0)
    with pytest.raises(ValueError, match="1..4-gram"):
        CiderD(document_frequency={"a b c d e": 1}, ref_len=1.0)
    scorer = CiderD([["a b"], ["b c"]], vocabulary=["<pad>", "a", "b"])
    refs = scorer.encode_references([["a b"]])
    with pytest.raises(ValueError, match="has no references"):
        scorer.encode_references([["a b"], []])
    with pytest.raises(ValueError, match="not a mix"):
        scorer.encode_references([["a b", [1, 2]]])
    with pytest.raises(ValueError, match="candidates but"):
        scorer.score(["a"], [])
    with pytest.raises(ValueError, match=r"int \[rows, time\]"):
        scorer.score_ids(np.array([1, 2]), np.array([0]), refs)
    with pytest.raises(ValueError, match="outside"):
        scorer.score_ids(np.array([[1, 2]]), np.array([1]), refs)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        scorer.score_ids(np.array([[1, 3]]), np.array([0]), refs)
    other = CiderD([["a b"]], vocabulary=["<pad>", "a", "b"])
    with pytest.raises(ValueError, match="another scorer"):
        other.score_ids(np.array([[1, 2]]), np.array([0]), refs)


def test_benchmark_runs_and_agrees():
    result = benchmark(num_candidates=10, refs_per_image=3, repeats=1)
    assert result["score_equals_score_ids"]
    assert {"pycocoevalcap_s", "tfcap_score_s", "tfcap_score_ids_s", "speedup_score_ids"} <= set(
        result
    )


def _direct_cider_d(cand, refs, corpus, n=4, sigma=6.0):
    """CIDEr-D of one tokenized candidate, written out from the definition."""
    import collections
    import math

    def grams(words, k):
        return collections.Counter(tuple(words[i : i + k]) for i in range(len(words) - k + 1))

    df = collections.Counter()
    for image in corpus:
        seen = set()
        for r in image:
            for k in range(1, n + 1):
                seen |= set(grams(r.split(), k))
        df.update(seen)
    ref_len = math.log(len(corpus))

    def vec(words, k):
        return {g: c * (ref_len - math.log(max(1.0, df[g]))) for g, c in grams(words, k).items()}

    c = cand.split()
    total = 0.0
    for k in range(1, n + 1):
        vc = vec(c, k)
        for r in refs:
            vr = vec(r.split(), k)
            num = sum(min(vc[g], vr[g]) * vr[g] for g in vc if g in vr)
            norm = math.sqrt(sum(v * v for v in vc.values())) * math.sqrt(
                sum(v * v for v in vr.values())
            )
            val = num / norm if norm else num
            delta = max(len(c) - 1, 0) - max(len(r.split()) - 1, 0)
            total += val * math.exp(-(delta**2) / (2 * sigma**2))
    return 10.0 * total / n / len(refs)


def test_cider_d_counting_eos_equals_the_definition():
    """With count_eos, `<eos>` is a word of candidates and references and the df is
    counted over references that end with it: a caption cut short loses its end."""
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "circle", "next", "to", "square"]
    enc = {w: i for i, w in enumerate(words)}
    train = [
        ["a red circle next to a square", "a red circle"],
        ["a square", "a square next to a red circle"],
        ["a circle", "a red square"],
    ]
    corpus = [[f"{r} <eos>" for r in image] for image in train]
    scorer = CiderD(corpus, vocabulary=words, eos_id=2, count_eos=True)
    refs = ["a red circle next to a square", "a red circle"]
    ref_ids = np.zeros([1, 2, 9], np.int32)
    for j, r in enumerate(refs):
        toks = [enc[w] for w in r.split()] + [2]
        ref_ids[0, j, : len(toks)] = toks
    cands = ["a red circle next to a", "a red circle"]
    ids = np.zeros([4, 9], np.int32)
    ids[0, :6] = [enc[w] for w in cands[0].split()]  # cut off: no <eos>
    ids[1, :4] = [enc[w] for w in cands[1].split()] + [2]
    ids[2, :7] = [enc[w] for w in cands[0].split()] + [2]  # ends, badly
    ids[3, :3] = [enc[w] for w in cands[1].split()]  # the same words, cut off
    got = scorer.score_ids(ids, np.zeros(4, np.int64), scorer.encode_references(ref_ids))[1]
    want = [
        _direct_cider_d(cands[0], [f"{r} <eos>" for r in refs], corpus),
        _direct_cider_d(f"{cands[1]} <eos>", [f"{r} <eos>" for r in refs], corpus),
        _direct_cider_d(f"{cands[0]} <eos>", [f"{r} <eos>" for r in refs], corpus),
        _direct_cider_d(cands[1], [f"{r} <eos>" for r in refs], corpus),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert got[3] < got[1]  # the same words score less when the caption does not end
    # without count_eos the end token is not a word: the direct form without it
    plain = CiderD(train, vocabulary=words, eos_id=2)
    got = plain.score_ids(ids[1:2], np.zeros(1, np.int64), plain.encode_references(ref_ids))[1]
    np.testing.assert_allclose(got, [_direct_cider_d(cands[1], refs, train)], rtol=1e-9)
