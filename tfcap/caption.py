r"""Captions for your own images: `python -m tfcap.caption`.

  python -m tfcap.caption --model_dir=RUN --images='photos/*.jpg' \
      --detector_handle=DETECTOR --backbone_app=ResNet101 --backbone_weights=W.weights.h5 \
      [--attention_png=DIR] [--json]
  python -m tfcap.caption --model_dir=RUN --features_dir=FEATS    # tfcap.features.extract output
  python -m tfcap.caption --saved_model=EXPORT_BASE/3 --images=...  # an export.saved_model version

Prints one line per image, `FILE<TAB>caption<TAB>score` (the beam score), or with `--json`
one JSON object per line: `image`, `image_id`, `width`, `height`, `caption`, `score`,
`boxes` (x1, y1, x2, y2 normalised), `words` and `attention` (per word, one weight per box).
`--attention_png=DIR` writes DIR/NAME.png per image: the image, then one panel per word with
the regions it attended lit (`tfcap.viz.attention_grid`). Images are read as the extractor
reads them (EXIF orientation applied). Files that fail are listed on stderr at the end and
the exit status is 1; the others are captioned.

With `--saved_model`, regions come from `--detector_handle` when given, otherwise from the
export's own `serving_default` signature (images sent EXIF-rotated, as PNG).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator

import numpy as np
from absl import app, flags

from tfcap import checkpoints, cli, cli_flags, errors
from tfcap.features import source

_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None, "An export.saved_model version directory, instead of --model_dir."
)
_FEATURES_DIR = flags.DEFINE_string(
    "features_dir", None, "Caption a tfcap.features.extract output instead of --images."
)
_ATTENTION_PNG = flags.DEFINE_string(
    "attention_png", None, "Write an attention picture per image into this directory."
)
_JSON = flags.DEFINE_bool("json", False, "One JSON object per image: boxes and word attention.")
flags.adopt_module_key_flags(source)  # --images, --detector_handle, --backbone_*, ...


for _name in ("model_dir", "batch_size", "beam_size", "length_penalty", "checkpoint"):
    flags.declare_key_flag(_name)


@dataclasses.dataclass
class Item:
    """One image to caption: `boxes` float32 `[regions, 4]`, `features` `[regions, dim]`
    (None when a SavedModel finds the regions itself)."""

    file: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray | None = None
    features: np.ndarray | None = None


@dataclasses.dataclass
class Caption:
    """A decoded caption: `attention` float32 `[words, regions]`, `boxes` `[regions, 4]`."""

    text: str
    score: float
    words: list[str]
    attention: np.ndarray
    boxes: np.ndarray


def words_and_rows(ids: np.ndarray, words: list[str]) -> tuple[list[str], list[int]]:
    """The words of token ids `[time]` before `<eos>` and the decoding steps that made them.

    >>> words_and_rows(np.array([4, 1, 5, 2, 4]), ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"])
    (['a', 'b'], [0, 2])
    """
    out, rows = [], []
    for step, i in enumerate(np.asarray(ids).tolist()):
        if i == 2:  # <eos>
            break
        if i > 1:  # not <pad>, <bos>
            out.append(words[i])
            rows.append(step)
    return out, rows


def _decode(ids, scores, attention, boxes, words: list[str]) -> list[Caption]:
    """Captions of a batch: ids `[batch, time]`, scores `[batch]`, attention `[batch, time,
    regions]`, boxes per image `[regions_i, 4]`."""
    out = []
    for b, image_boxes in enumerate(boxes):
        ws, rows = words_and_rows(ids[b], words)
        att = np.asarray(attention[b], np.float32)[rows][:, : len(image_boxes)]
        out.append(Caption(" ".join(ws), float(scores[b]), ws, att, np.asarray(image_boxes)))
    return out


def _pad(items: list[Item]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """features float32 `[batch, regions, dim]`, boxes `[batch, regions, 4]`, counts `[batch]`."""
    counts = np.array([len(it.boxes) for it in items], np.int32)
    dim = items[0].features.shape[1]
    feats = np.zeros([len(items), counts.max(), dim], np.float32)
    boxes = np.zeros([len(items), counts.max(), 4], np.float32)
    for b, it in enumerate(items):
        feats[b, : counts[b]], boxes[b, : counts[b]] = it.features, it.boxes
    return feats, boxes, counts


class ModelDirCaptioner:
    """Beam search with a training run's checkpoint (`tfcap.checkpoints.load_model`)."""

    def __init__(self, model_dir: str, which: str, beam_size: int, alpha: float):
        from tfcap import inference

        self.model, vocab, info = checkpoints.load_model(model_dir, which)
        self.words, self.feature_dim = vocab.words, info["data"]["feature_dim"]
        method = "beam" if beam_size > 1 else "greedy"
        self._generate = inference.make_generate_fn(
            self.model, method, beam_size, alpha, self.model.max_len
        )

    def __call__(self, items: list[Item]) -> list[Caption]:
        import tensorflow as tf

        for it in items:
            if it.features.shape[1] != self.feature_dim:
                raise errors.BadInput(
                    f"{it.file}: features have dim {it.features.shape[1]}, the model was trained "
                    f"on {self.feature_dim}-d features (use the same backbone as its data)"
                )
        feats, boxes, counts = _pad(items)
        mask = tf.sequence_mask(counts, feats.shape[1])
        ids, scores, att = self._generate(tf.constant(feats), mask)
        att = tf.cast(att, tf.float32).numpy()
        return _decode(ids.numpy(), scores.numpy(), att, [it.boxes for it in items], self.words)


class SavedModelCaptioner:
    """An `export.saved_model` version: its `caption_features` / `serving_default` signatures."""

    def __init__(self, path: str):
        import tensorflow as tf

        from tfcap.data import vocab

        try:
            self.module = tf.saved_model.load(path)
        except OSError as err:  # e.g. a corrupt saved_model.pb
            raise errors.BadInput(f"{path}: cannot be loaded as a SavedModel: {err}") from err
        self.signatures = self.module.signatures
        if "caption_features" not in self.signatures:
            raise errors.BadInput(
                f"{path}: no caption_features signature: not an export.saved_model?"
            )
        self.words = vocab.Vocab.load(os.path.join(path, "assets", "vocab.txt")).words
        spec = self.signatures["caption_features"].structured_input_signature[1]["features"]
        self.feature_dim = spec.shape[-1]

    def __call__(self, items: list[Item]) -> list[Caption]:
        import tensorflow as tf

        if items[0].features is None:
            return self._from_images(items)
        feats, boxes, counts = _pad(items)
        out = self.signatures["caption_features"](
            features=tf.constant(feats), boxes=tf.constant(boxes), num_regions=tf.constant(counts)
        )
        own = [it.boxes for it in items]
        return _decode(
            out["tokens"].numpy(), out["score"].numpy(), out["attention"].numpy(), own, self.words
        )

    def _from_images(self, items: list[Item]) -> list[Caption]:
        import tensorflow as tf

        from tfcap.features import images as images_lib

        if "serving_default" not in self.signatures:
            raise errors.BadInput(
                "this export has no serving_default (images) signature: pass --detector_handle"
            )
        data = [tf.io.encode_png(images_lib.load_image(it.file)).numpy() for it in items]
        out = self.signatures["serving_default"](image_bytes=tf.constant(data))
        boxes = out["boxes"].numpy()  # padded with zero boxes after each image's regions
        own = [b[: max(1, int(np.sum(np.any(b != 0, axis=1))))] for b in boxes]
        return _decode(
            out["tokens"].numpy(), out["score"].numpy(), out["attention"].numpy(), own, self.words
        )


def image_items(paths: list[str], extractor) -> Iterator[Item | tuple[str, str]]:
    """Items of image files (regions from `extractor`, or none for a SavedModel's own), or
    `(file, error)` for files that cannot be used."""
    from tfcap.features import images as images_lib

    ids = images_lib.image_ids(paths)
    if extractor is None:
        for path, image_id in zip(paths, ids, strict=True):
            try:
                height, width = images_lib.load_image(path).shape[:2]
                yield Item(path, image_id, width, height)
            except images_lib.ImageError as err:
                yield path, str(err)
        return
    for path, rec in extractor.records(paths, ids):
        if isinstance(rec, images_lib.ImageError):
            yield path, str(rec)
        else:
            yield Item(path, rec.image_id, rec.width, rec.height, rec.boxes, rec.features)


def feature_items(features_dir: str) -> Iterator[Item]:
    """Items of a `tfcap.features.extract` output (file names from its images.json).

    Records are parsed with `tfcap.data.pipeline.parser` (the training input's checks).
    """
    import tensorflow as tf

    from tfcap.data import pipeline
    from tfcap.features import extract

    meta = pipeline.load_metadata(features_dir)
    listing = os.path.join(features_dir, extract.IMAGES_JSON)
    if not os.path.exists(listing):
        raise errors.BadInput(
            f"{features_dir}: not a tfcap.features.extract output (no {extract.IMAGES_JSON}); "
            "a prepared dataset is captioned with tfcap.evaluate"
        )
    with open(listing, encoding="utf-8") as f:
        known = {im["id"]: im for im in json.load(f)["images"]}
    parse = pipeline.parser(meta, int(meta["max_regions"]))
    for path in pipeline.split_files(features_dir, extract.SPLIT):
        for index, raw in enumerate(tf.data.TFRecordDataset(path)):
            ex = parse(tf.constant(path), tf.constant(index, tf.int64), raw)
            image_id, n = (
                int(ex["image_id"]),
                int(tf.reduce_sum(tf.cast(ex["region_mask"], tf.int32))),
            )
            im = known.get(image_id, {"file": f"image {image_id}", "width": 0, "height": 0})
            boxes, feats = ex["boxes"][:n].numpy(), ex["features"][:n].numpy()
            yield Item(im["file"], image_id, im["width"], im["height"], boxes, feats)


def picture(item: Item, caption: Caption) -> np.ndarray:
    """The attention grid of one image (`tfcap.viz.attention_grid`), on the real image when
    its file is readable, else on a grey canvas of its size."""
    from tfcap import viz
    from tfcap.features import images as images_lib

    try:
        image = images_lib.load_image(item.file)
    except images_lib.ImageError:
        image = None
    size = (max(item.width, 1), max(item.height, 1))
    return viz.attention_grid(
        image, caption.boxes, caption.words, caption.attention, size=size, title=caption.text
    )


def as_json(item: Item, caption: Caption) -> str:
    return json.dumps(
        {
            "image": item.file,
            "image_id": item.image_id,
            "width": item.width,
            "height": item.height,
            "caption": caption.text,
            "score": round(caption.score, 5),
            "boxes": np.round(caption.boxes.astype(np.float64), 5).tolist(),
            "words": caption.words,
            "attention": np.round(caption.attention.astype(np.float64), 5).tolist(),
        },
        ensure_ascii=False,
    )


def _png_path(directory: str, item: Item, used: set[str]) -> str:
    name = os.path.splitext(os.path.basename(item.file))[0] or f"image_{item.image_id}"
    if name in used:
        name = f"{name}-{item.image_id}"
    used.add(name)
    return os.path.join(directory, f"{name}.png")


def _captioner():
    if bool(cli_flags.MODEL_DIR.value) == bool(_SAVED_MODEL.value):
        raise app.UsageError("give one of --model_dir and --saved_model")
    if bool(source.IMAGES.value) == bool(_FEATURES_DIR.value):
        raise app.UsageError("give one of --images and --features_dir")
    if _SAVED_MODEL.value:
        if not os.path.exists(os.path.join(_SAVED_MODEL.value, "saved_model.pb")):
            raise app.UsageError(
                f"--saved_model={_SAVED_MODEL.value}: no saved_model.pb there "
                "(give a version directory, EXPORT_BASE/N)"
            )
        return SavedModelCaptioner(_SAVED_MODEL.value)
    f = flags.FLAGS
    return ModelDirCaptioner(cli_flags.MODEL_DIR.value, f.checkpoint, f.beam_size, f.length_penalty)


def _items(captioner) -> Iterator[Item | tuple[str, str]]:
    if _FEATURES_DIR.value:
        return feature_items(_FEATURES_DIR.value)
    from tfcap.features import images as images_lib

    try:
        paths = images_lib.list_images(source.IMAGES.value)
    except FileNotFoundError as err:
        raise app.UsageError(str(err)) from None
    extractor = None
    if source.DETECTOR_HANDLE.value or not isinstance(captioner, SavedModelCaptioner):
        try:
            config = source.config_from_flags()
        except ValueError as err:
            raise app.UsageError(str(err)) from None
        extractor = source.Extractor(
            config, cli_flags.BATCH_SIZE.value, source.DECODE_THREADS.value
        )
    return image_items(paths, extractor)


def main(argv) -> int:
    from tfcap import viz

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    captioner = _captioner()
    png_dir, used, failures = _ATTENTION_PNG.value, set(), []
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)

    def flush(batch: list[Item]) -> None:
        for item, caption in zip(batch, captioner(batch) if batch else [], strict=True):
            print(
                as_json(item, caption)
                if _JSON.value
                else f"{item.file}\t{caption.text}\t{caption.score:.4f}"
            )
            if png_dir:
                viz.save_png(_png_path(png_dir, item, used), picture(item, caption))
        sys.stdout.flush()

    batch: list[Item] = []
    for item in _items(captioner):
        if isinstance(item, tuple):
            failures.append(item)
            continue
        batch.append(item)
        if len(batch) == cli_flags.BATCH_SIZE.value:
            flush(batch)
            batch = []
    flush(batch)
    for path, error in failures:
        print(f"FAILED {path}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    cli.run(main)
