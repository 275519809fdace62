"""The built-in synthetic `shapes` dataset: the default for the demo and for tests.

A scene is a 640x480 "image" holding 2-6 objects, each with a colour, a shape, a
size (small/large) and a cell of a 3x3 grid, plus 1-3 distractor regions
(background clutter that captions never mention). Attributes are sampled
independently and uniformly, so a split's common phrases cannot predict a
scene's captions: a captioner has to attend to the right regions.

Region features are a fixed random projection (shared by every split and seed)
of a one-hot attribute vector (colour, shape, size, is-distractor), a random
texture vector (distractors only) and the box geometry (x1, y1, x2, y2, w, h,
area), plus Gaussian noise, through a scaled ReLU: non-negative, mean square
about 1. Every scene has 5 reference captions drawn from a varied grammar:
attributes, counts, positions and spatial relations, several phrasings each.

Everything is deterministic: scene `i` of `split` depends only on
(`seed`, split, `i`) (and `max_regions`); features also on `feature_dim`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from tfcap.data.records import ImageRecord

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_SIZES = {"train": 4000, "val": 250, "test": 250}
WIDTH, HEIGHT = 640, 480
CAPTIONS_PER_SCENE = 5
MAX_CAPTION_WORDS = 16

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
SIZES = ("small", "large")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")

_PROJECTION_SEED = 1729  # fixed: every split, seed and run shares the projection
_TEXTURE_DIM = 8
_GEOMETRY_DIM = 7
_DISTRACTOR = len(COLOURS) + len(SHAPES) + len(SIZES)
_TEXTURE = slice(_DISTRACTOR + 1, _DISTRACTOR + 1 + _TEXTURE_DIM)
_INPUT_DIM = _TEXTURE.stop + _GEOMETRY_DIM
_GEOMETRY_MEAN = np.array([0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.1], np.float32)
_NOISE_STD = 0.2
_SALIENCE_LARGE = 3.0


@dataclasses.dataclass(frozen=True)
class Region:
    """One region: an object, or a distractor when `colour` is None.

    Attributes:
        box: (x1, y1, x2, y2) normalised to [0, 1].
        colour, shape, size: attribute words (None for distractors).
        row, col: grid cell, 0..2 from top / from left (-1 for distractors).
        salience: how likely captions are to mention it (0 for distractors).
    """

    box: tuple[float, float, float, float]
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    row: int = -1
    col: int = -1
    salience: float = 0.0

    @property
    def is_distractor(self) -> bool:
        return self.colour is None


@dataclasses.dataclass
class Scene:
    """One generated scene: regions in random order, captions, and a noise seed."""

    image_id: int
    regions: list[Region]
    captions: list[str]
    noise_seed: int

    @property
    def objects(self) -> list[Region]:
        return [r for r in self.regions if not r.is_distractor]


def _check_args(split: str, num_scenes: int, seed: int, max_regions: int) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= num_scenes < 1_000_000:
        raise ValueError(f"num_scenes must be in [0, 1e6), got {num_scenes}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if max_regions < 3:
        raise ValueError(
            f"max_regions must be at least 3 (2 objects + 1 distractor), got {max_regions}"
        )
    return SPLITS.index(split)


def _sample_regions(rng: np.random.Generator, max_regions: int) -> list[Region]:
    """2-6 objects in distinct grid cells and 1-3 distractors, in random order."""
    num_objects = int(rng.integers(2, min(6, max_regions - 1) + 1))
    num_distractors = int(rng.integers(1, min(3, max_regions - num_objects) + 1))
    regions = []
    for cell in rng.choice(9, size=num_objects, replace=False):
        row, col = divmod(int(cell), 3)
        size = SIZES[rng.integers(len(SIZES))]
        half = rng.uniform(0.04, 0.065) if size == "small" else rng.uniform(0.11, 0.15)
        cx, cy = (np.array([col, row]) + 0.5) / 3 + rng.uniform(-0.05, 0.05, 2)
        box = np.clip([cx - half, cy - half, cx + half, cy + half], 0.0, 1.0)
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        salience = float(rng.uniform(0.1, 1.0) ** 2 * (_SALIENCE_LARGE if size == "large" else 1.0))
        box = tuple(float(v) for v in box)
        regions.append(Region(box, colour, shape, size, row, col, salience))
    for _ in range(num_distractors):
        w, h = rng.uniform(0.2, 0.7, 2)
        x1, y1 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        regions.append(Region((float(x1), float(y1), float(x1 + w), float(y1 + h))))
    return [regions[i] for i in rng.permutation(len(regions))]


# ----------------------------------------------------------------------------- captions


def _salient(objs: Sequence[Region], k: int, rng: np.random.Generator) -> list[Region]:
    """`k` distinct objects, chosen with probability proportional to salience."""
    weights = np.array([o.salience for o in objs])
    picks = rng.choice(len(objs), size=min(k, len(objs)), replace=False, p=weights / weights.sum())
    return [objs[i] for i in picks]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(obj: Region, rng: np.random.Generator, det: str = "a") -> str:
    """Noun phrase: "a (large) red circle" or "the (large) red circle"."""
    words = f"{obj.colour} {obj.shape}"
    if rng.random() < 0.5:
        words = f"{obj.size} {words}"
    return _a(words) if det == "a" else f"{det} {words}"


def _where(obj: Region, rng: np.random.Generator) -> str:
    """A true position phrase: "on the left", "at the top", "in the top left corner"..."""
    row, col = ROWS[obj.row], COLUMNS[obj.col]
    options = []
    if obj.col != 1:
        options += [f"on the {col}", f"on the {col} side"]
    if obj.row != 1:
        options += [f"at the {row}", f"near the {row}"]
    if obj.row != 1 and obj.col != 1:
        options += [f"in the {row} {col} corner", f"at the {row} {col}"]
    if obj.row == 1 and obj.col == 1:
        options += ["in the center", "in the middle"]
    return options[rng.integers(len(options))]


def _relation(a: Region, b: Region, rng: np.random.Generator) -> str:
    """A true relation of `a` to `b` (objects sit in distinct cells)."""
    dr, dc = b.row - a.row, b.col - a.col
    options = []
    if dc:
        side = "left" if dc > 0 else "right"
        options += [f"to the {side} of", f"{side} of"]
    if dr:
        options += ["above"] if dr > 0 else ["below", "under"]
    if max(abs(dr), abs(dc)) == 1:
        options.append("next to")
    return options[rng.integers(len(options))]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


_PREFIXES = ("", "", "there is ", "a picture of ", "an image of ")
_NOUNS = ("shapes", "objects")


def _t_where(objs, rng):  # "a large red circle in the top left corner"
    (a,) = _salient(objs, 1, rng)
    return f"{_pick(rng, _PREFIXES)}{_np(a, rng)} {_where(a, rng)}"


def _t_and(objs, rng):  # "there is a red circle and a small blue square"
    return _pick(rng, _PREFIXES) + _join([_np(o, rng) for o in _salient(objs, 2, rng)])


def _t_relation(objs, rng):  # "a large yellow star above a purple circle"
    a, b = _salient(objs, 2, rng)
    return f"{_pick(rng, _PREFIXES)}{_np(a, rng)} {_relation(a, b, rng)} {_np(b, rng)}"


def _t_the_relation(objs, rng):  # "the red circle is to the left of the small blue square"
    a, b = _salient(objs, 2, rng)
    return f"{_np(a, rng, 'the')} is {_relation(a, b, rng)} {_np(b, rng, 'the')}"


def _t_listing(objs, rng):  # "three shapes: a red circle, a blue square and a green star"
    n, noun = len(objs), _pick(rng, _NOUNS)
    chosen = _salient(objs, int(rng.integers(1, 4)), rng)
    link = ":" if len(chosen) == n else _pick(rng, (", including", " with"))
    return f"{COUNT_WORDS[n]} {noun}{link} {_join([_np(o, rng) for o in chosen])}"


def _t_where_pair(objs, rng):  # "a red circle on the left and a blue square at the top"
    return _join([f"{_np(o, rng)} {_where(o, rng)}" for o in _salient(objs, 2, rng)])


def _t_scene_count(objs, rng):  # "five objects with a red circle in the center"
    (a,) = _salient(objs, 1, rng)
    return f"{COUNT_WORDS[len(objs)]} {_pick(rng, _NOUNS)} with {_np(a, rng)} {_where(a, rng)}"


def _t_shape_count(objs, rng):  # "there are two circles: a red one and a small blue one"
    (a,) = _salient(objs, 1, rng)
    same = [o for o in objs if o.shape == a.shape]
    if len(same) == 1:
        return f"there is only one {a.shape} and it is {a.colour}"
    ones = [
        _a(f"{o.colour} one" if rng.random() < 0.6 else f"{o.size} {o.colour} one") for o in same
    ]
    return f"there are {COUNT_WORDS[len(same)]} {a.shape}s: {_join(ones)}"


def _t_colour_count(objs, rng):  # "two red shapes and a large blue star"
    (a,) = _salient(objs, 1, rng)
    same = [o for o in objs if o.colour == a.colour]
    if len(same) == 1:
        return f"the only {a.colour} shape is {_a(f'{a.size} {a.shape}')}"
    others = [o for o in objs if o.colour != a.colour]
    head = f"{COUNT_WORDS[len(same)]} {a.colour} {_pick(rng, _NOUNS)}"
    return f"{head} and {_np(_salient(others, 1, rng)[0], rng)}" if others else head


def _t_relation_and(objs, rng):  # "a green star, and a red circle above a blue square"
    if len(objs) < 3:
        return None
    a, b, c = _salient(objs, 3, rng)
    return f"{_np(c, rng)}, and {_np(a, rng)} {_relation(a, b, rng)} {_np(b, rng)}"


_Template = Callable[[Sequence[Region], np.random.Generator], "str | None"]
TEMPLATES: tuple[_Template, ...] = (
    _t_where,
    _t_and,
    _t_relation,
    _t_the_relation,
    _t_listing,
    _t_where_pair,
    _t_scene_count,
    _t_shape_count,
    _t_colour_count,
    _t_relation_and,
)


def _captions(objs: Sequence[Region], rng: np.random.Generator) -> list[str]:
    """5 distinct captions of at most MAX_CAPTION_WORDS words, from different templates first."""
    captions: list[str] = []
    order = list(rng.permutation(len(TEMPLATES))) * 4
    for t in order:
        caption = TEMPLATES[t](objs, rng)
        if caption and len(caption.split()) <= MAX_CAPTION_WORDS and caption not in captions:
            captions.append(caption)
        if len(captions) == CAPTIONS_PER_SCENE:
            return captions
    return (captions * CAPTIONS_PER_SCENE)[:CAPTIONS_PER_SCENE]  # practically unreachable


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=8)
def projection(feature_dim: int) -> np.ndarray:
    """The fixed float32 `[inputs, feature_dim]` projection shared by all splits and seeds."""
    rng = np.random.default_rng([_PROJECTION_SEED, feature_dim])
    matrix = rng.standard_normal((_INPUT_DIM, feature_dim), dtype=np.float32)
    matrix /= np.float32(np.sqrt(5.0))
    matrix.setflags(write=False)
    return matrix


def region_features(regions: Sequence[Region], feature_dim: int, noise_seed: int) -> np.ndarray:
    """Features of `regions`: float32 `[regions, feature_dim]`, non-negative.

    relu(inputs @ projection + noise) * sqrt(2), where inputs are the one-hot
    attributes (colour, shape, size, is-distractor), the distractor texture and
    the centred box geometry (x1, y1, x2, y2, w, h, area) times 2.
    """
    rng = np.random.default_rng(noise_seed)
    inputs = np.zeros((len(regions), _INPUT_DIM), np.float32)
    for i, r in enumerate(regions):
        if r.is_distractor:
            inputs[i, _DISTRACTOR] = 1.0
            inputs[i, _TEXTURE] = rng.standard_normal(_TEXTURE_DIM) * 0.6
        else:
            inputs[i, COLOURS.index(r.colour)] = 1.0
            inputs[i, len(COLOURS) + SHAPES.index(r.shape)] = 1.0
            inputs[i, len(COLOURS) + len(SHAPES) + SIZES.index(r.size)] = 1.0
        x1, y1, x2, y2 = r.box
        geometry = (x1, y1, x2, y2, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1))
        inputs[i, _TEXTURE.stop :] = 2.0 * (np.asarray(geometry, np.float32) - _GEOMETRY_MEAN)
    noise = rng.standard_normal((len(regions), feature_dim), dtype=np.float32) * _NOISE_STD
    return np.maximum(inputs @ projection(feature_dim) + noise, 0.0) * np.float32(np.sqrt(2.0))


# ----------------------------------------------------------------------------- entry points


def generate_scenes(
    split: str, num_scenes: int, seed: int = 0, max_regions: int = 10
) -> Iterator[Scene]:
    """Lazily yields the first `num_scenes` scenes of `split` (no features).

    Image ids are `(split index + 1) * 1_000_000 + index`, unique across splits.
    """
    split_index = _check_args(split, num_scenes, seed, max_regions)
    for index in range(num_scenes):
        rng = np.random.default_rng([seed, split_index, index])
        regions = _sample_regions(rng, max_regions)
        captions = _captions([r for r in regions if not r.is_distractor], rng)
        noise_seed = int(rng.integers(2**63))
        image_id = (split_index + 1) * 1_000_000 + index
        yield Scene(image_id, regions, captions, noise_seed)


def scene_to_record(scene: Scene, feature_dim: int = 2048) -> ImageRecord:
    """The ImageRecord of `scene`: boxes float32 `[regions, 4]`, features `[regions, dim]`."""
    return ImageRecord(
        image_id=scene.image_id,
        width=WIDTH,
        height=HEIGHT,
        boxes=np.array([r.box for r in scene.regions], np.float32),
        features=region_features(scene.regions, feature_dim, scene.noise_seed),
        captions=list(scene.captions),
    )


def generate(
    split: str, num_scenes: int, feature_dim: int = 2048, seed: int = 0, max_regions: int = 10
) -> Iterator[ImageRecord]:
    """Lazily yields `num_scenes` ImageRecords of `split`, deterministic in the arguments.

    Args:
        split: one of SPLITS; different splits hold different scenes.
        num_scenes: how many scenes (the first n of the split's endless sequence).
        feature_dim: D, the region feature width (2048 like real features).
        seed: non-negative int; the dataset's seed.
        max_regions: upper bound on regions per image (objects + distractors), >= 3.

    Yields:
        ImageRecord with boxes float32 `[regions, 4]`, features float32
        `[regions, feature_dim]` and exactly 5 captions.

    >>> record = next(generate("val", 1, feature_dim=16))
    >>> record.features.shape[1], record.features.dtype, len(record.captions)
    (16, dtype('float32'), 5)
    """
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be positive, got {feature_dim}")
    for scene in generate_scenes(split, num_scenes, seed, max_regions):
        yield scene_to_record(scene, feature_dim)
