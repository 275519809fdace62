"""Tests of the synthetic `shapes` dataset (tfcap/data/shapes.py)."""

import collections
import re

import numpy as np
import pytest

from tfcap.data import shapes
from tfcap.data.records import ImageRecord

_COLOUR = "|".join(shapes.COLOURS)
_SHAPE = "|".join(shapes.SHAPES)
_NP = rf"(?:(small|large) )?({_COLOUR}) ({_SHAPE})\b"
_RELATIONS = {
    "to the left of": lambda a, b: a.col < b.col,
    "left of": lambda a, b: a.col < b.col,
    "to the right of": lambda a, b: a.col > b.col,
    "right of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
    "under": lambda a, b: a.row > b.row,
    "next to": lambda a, b: max(abs(a.row - b.row), abs(a.col - b.col)) == 1,
}
_REL = "|".join(sorted(_RELATIONS, key=len, reverse=True))
_PLACES = {
    "on the left": lambda o: o.col == 0,
    "on the right": lambda o: o.col == 2,
    "at the top": lambda o: o.row == 0,
    "near the top": lambda o: o.row == 0,
    "at the bottom": lambda o: o.row == 2,
    "near the bottom": lambda o: o.row == 2,
    "in the center": lambda o: (o.row, o.col) == (1, 1),
    "in the middle": lambda o: (o.row, o.col) == (1, 1),
    **{
        f"in the {shapes.ROWS[r]} {shapes.COLUMNS[c]} corner": (
            lambda o, r=r, c=c: (o.row, o.col) == (r, c)
        )
        for r in (0, 2)
        for c in (0, 2)
    },
}
_ATTRIBUTE_WORDS = {
    **{w: "<colour>" for w in shapes.COLOURS},
    **{w: "<shape>" for w in shapes.SHAPES},
    **{w + "s": "<shapes>" for w in shapes.SHAPES},
    **{w: "<size>" for w in shapes.SIZES},
    **{w: "<count>" for w in shapes.COUNT_WORDS[2:]},
    **{w: "<row>" for w in ("top", "bottom")},
    **{w: "<col>" for w in ("left", "right")},
}


def _words(caption: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", caption).split()


def _scenes(n: int, split: str = "train", seed: int = 0) -> list[shapes.Scene]:
    return list(shapes.generate_scenes(split, n, seed=seed))


def _is(obj: shapes.Region, size: str | None, colour: str, shape: str) -> bool:
    return (obj.colour, obj.shape) == (colour, shape) and size in (None, obj.size)


def _f1(candidate: list[str], reference: list[str]) -> float:
    common = sum((collections.Counter(candidate) & collections.Counter(reference)).values())
    return 0.0 if common == 0 else 2 * common / (len(candidate) + len(reference))


def test_deterministic_and_seeded():
    first = list(shapes.generate("val", 6, feature_dim=32, seed=3))
    again = list(shapes.generate("val", 8, feature_dim=32, seed=3))[:6]
    for a, b in zip(first, again, strict=True):
        assert a.image_id == b.image_id and a.captions == b.captions
        assert a.boxes.tobytes() == b.boxes.tobytes()
        assert a.features.tobytes() == b.features.tobytes()
    other_seed = list(shapes.generate("val", 6, feature_dim=32, seed=4))
    other_split = list(shapes.generate("test", 6, feature_dim=32, seed=3))
    for others in (other_seed, other_split):
        assert [r.captions for r in others] != [r.captions for r in first]
        assert not any(np.array_equal(a.boxes, b.boxes) for a, b in zip(first, others, strict=True))


def test_record_shapes_dtypes_and_ranges():
    ids = set()
    for split in shapes.SPLITS:
        for record in shapes.generate(split, 30, feature_dim=48):
            assert isinstance(record, ImageRecord)
            record.validate()
            n = record.boxes.shape[0]
            assert 3 <= n <= 10
            assert record.boxes.dtype == np.float32 and record.features.dtype == np.float32
            assert record.features.shape == (n, 48)
            assert np.all(record.features >= 0)
            assert np.all((record.boxes >= 0) & (record.boxes <= 1))
            assert np.all(record.boxes[:, 2:] > record.boxes[:, :2])
            assert (record.width, record.height) == (shapes.WIDTH, shapes.HEIGHT)
            ids.add(record.image_id)
    assert len(ids) == 90
    counts = {r.boxes.shape[0] for r in shapes.generate("train", 100, feature_dim=8)}
    assert len(counts) >= 4  # the region count varies, so padding and masks matter


def test_max_regions_and_bad_arguments():
    for record in shapes.generate("train", 50, feature_dim=8, max_regions=4):
        assert 3 <= record.boxes.shape[0] <= 4
    for kwargs in ({"split": "dev"}, {"max_regions": 2}, {"seed": -1}, {"feature_dim": 0}):
        with pytest.raises(ValueError):
            next(shapes.generate(**{"split": "train", "num_scenes": 1, **kwargs}))


def test_captions_count_length_and_grammar_coverage():
    scenes = _scenes(500)
    words, skeletons = set(), set()
    for scene in scenes:
        assert len(scene.captions) == shapes.CAPTIONS_PER_SCENE
        assert len(set(scene.captions)) == shapes.CAPTIONS_PER_SCENE
        for caption in scene.captions:
            tokens = _words(caption)
            assert 1 <= len(tokens) <= shapes.MAX_CAPTION_WORDS, caption
            assert caption == caption.lower()
            words.update(tokens)
            skeletons.add(" ".join(_ATTRIBUTE_WORDS.get(w, w) for w in tokens))
    expected = set(shapes.COLOURS) | set(shapes.SHAPES) | set(shapes.SIZES)
    expected |= set(shapes.COUNT_WORDS[1:]) | {s + "s" for s in shapes.SHAPES}
    expected |= {"left", "right", "top", "bottom", "center", "above", "below", "next"}
    assert expected <= words, sorted(expected - words)
    assert len(skeletons) >= 200, len(skeletons)


def test_captions_agree_with_scene():
    for scene in _scenes(300):
        objs = scene.objects
        for caption in scene.captions:
            for w in _words(caption):
                if w in shapes.COLOURS:
                    assert any(o.colour == w for o in objs), (caption, objs)
            for size, colour, shape in re.findall(_NP, caption):
                assert any(_is(o, size or None, colour, shape) for o in objs), caption
            for m in re.finditer(rf"{_NP} (?:is )?({_REL}) (?:a|an|the) {_NP}", caption):
                a, b, rel = m.groups()[:3], m.groups()[4:], m.group(4)
                pairs = [(x, y) for x in objs for y in objs if x is not y]
                assert any(
                    _is(x, a[0] or None, *a[1:])
                    and _is(y, b[0] or None, *b[1:])
                    and _RELATIONS[rel](x, y)
                    for x, y in pairs
                ), caption
            for m in re.finditer(rf"{_NP} ({'|'.join(_PLACES)})\b", caption):
                size, colour, shape, place = m.groups()
                assert any(_is(o, size or None, colour, shape) and _PLACES[place](o) for o in objs)
            if m := re.match(r"(\w+) (shapes|objects)\b", caption):
                assert shapes.COUNT_WORDS.index(m.group(1)) == len(objs), caption
            if m := re.match(rf"(\w+) ({_COLOUR}) (shapes|objects)", caption):
                n = sum(o.colour == m.group(2) for o in objs)
                assert shapes.COUNT_WORDS.index(m.group(1)) == n, caption
            if m := re.match(rf"there are (\w+) ({_SHAPE})s", caption):
                n = sum(o.shape == m.group(2) for o in objs)
                assert shapes.COUNT_WORDS.index(m.group(1)) == n, caption
            if m := re.match(rf"there is only one ({_SHAPE}) and it is (\w+)", caption):
                (only,) = [o for o in objs if o.shape == m.group(1)]
                assert only.colour == m.group(2), caption


def test_distractors_present_and_not_mentioned():
    scenes = _scenes(200)
    for scene in scenes:
        distractors = [r for r in scene.regions if r.is_distractor]
        assert 1 <= len(distractors) <= 3 and 2 <= len(scene.objects) <= 6
        # regions are shuffled: the distractors do not always sit at the end
    positions = [i for s in scenes for i, r in enumerate(s.regions) if r.is_distractor]
    assert min(positions) == 0
    vocab = {w for s in scenes for c in s.captions for w in _words(c)}
    assert not vocab & {"distractor", "texture", "background", "clutter"}


def test_features_carry_attributes_linear_probe():
    feats, colours, shapes_, distractor = [], [], [], []
    for scene in _scenes(150):
        record = shapes.scene_to_record(scene, feature_dim=64)
        for region, f in zip(scene.regions, record.features, strict=True):
            feats.append(f)
            distractor.append(region.is_distractor)
            colours.append(-1 if region.is_distractor else shapes.COLOURS.index(region.colour))
            shapes_.append(-1 if region.is_distractor else shapes.SHAPES.index(region.shape))
    x = np.concatenate([np.asarray(feats), np.ones([len(feats), 1])], axis=1)
    is_obj = ~np.asarray(distractor)
    x_obj, split = x[is_obj], 350
    for labels, classes in ((colours, 8), (shapes_, 6)):
        y = np.asarray(labels)[is_obj]
        w, *_ = np.linalg.lstsq(x_obj[:split], np.eye(classes)[y[:split]], rcond=None)
        accuracy = np.mean(np.argmax(x_obj[split:] @ w, axis=1) == y[split:])
        assert accuracy > 0.9, accuracy
    w, *_ = np.linalg.lstsq(x[:split], np.asarray(distractor[:split], float), rcond=None)
    assert np.mean((x[split:] @ w > 0.5) == np.asarray(distractor[split:])) > 0.95


def test_captions_not_guessable_from_common_phrases():
    """A scene's held-out reference overlaps its other references far more than a
    reference of another scene, or the split's most frequent caption, does."""
    train_captions = collections.Counter(c for s in _scenes(1000) for c in s.captions)
    constant, frequency = train_captions.most_common(1)[0]
    assert frequency < 0.01 * 5000  # no caption is common
    scenes = _scenes(200, split="val")
    content = set(_ATTRIBUTE_WORDS) | {"one", "center", "middle"}

    def score(candidate: str, scene: shapes.Scene, vocab: set | None) -> float:
        """Best unigram F1 against references 1..4, counting only `vocab` words if given."""

        def keep(caption: str) -> list[str]:
            return [w for w in _words(caption) if vocab is None or w in vocab]

        return max(_f1(keep(candidate), keep(ref)) for ref in scene.captions[1:])

    shifted = scenes[1:] + scenes[:1]
    for vocab, margin in ((None, 0.08), (content, 0.25)):
        same = np.mean([score(s.captions[0], s, vocab) for s in scenes])
        pairs = zip(scenes, shifted, strict=True)
        other = np.mean([score(o.captions[0], s, vocab) for s, o in pairs])
        best_constant = np.mean([score(constant, s, vocab) for s in scenes])
        assert same > other + margin, (same, other)
        assert same > best_constant + margin, (same, best_constant)
