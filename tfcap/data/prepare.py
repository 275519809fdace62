r"""Prepares a dataset: vocabulary and sharded TFRecords of region features + captions.

Sources:
  shapes    the built-in synthetic scenes (no files needed).
  karpathy  Karpathy's dataset_coco.json (train+restval/val/test) + bottom-up TSV features.
  coco      COCO caption annotation files, one per split (SPLIT=PATH) + bottom-up TSV features.
  images    image files (--images=DIR) + COCO (--coco_annotations) or Karpathy captions, regions
            from a detector (--detector_handle, --backbone_*: see tfcap/features/source.py).

Examples:
  python -m tfcap.data.prepare --source=shapes --output_dir=/tmp/shapes
  python -m tfcap.data.prepare --source=karpathy --karpathy_json=data/dataset_coco.json \
      --butd_tsv='data/trainval_36/*.tsv' --output_dir=data/coco36 --num_shards=64

Writes OUTPUT_DIR/{SPLIT-00000-of-000NN.tfrecord, vocab.txt, dataset.json,
annotations_SPLIT.json}; see tfcap/data/records.py for the record schema.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

from tfcap import cli, cli_flags
from tfcap.data import butd_tsv, coco, errors, pipeline, records, shapes, vocab, writer
from tfcap.errors import BadInput
from tfcap.features import source as images_source  # --images, --detector_handle, --backbone_*
from tfcap.rewards import cider

CIDER_DF_FILE = "cider_df_train.json"
CIDER_DF_EOS_FILE = "cider_df_train_eos.json"  # references ending with <eos> (count_eos)

_SOURCE = flags.DEFINE_enum(
    "source",
    "shapes",
    ["shapes", "karpathy", "coco", "images"],
    "Where images, captions and features come from.",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output_dir.")
_KARPATHY_JSON = flags.DEFINE_string(
    "karpathy_json", None, "Karpathy dataset_coco.json (--source=karpathy)."
)
_COCO_ANNOTATIONS = flags.DEFINE_list(
    "coco_annotations",
    [],
    "SPLIT=PATH pairs of COCO captions_*.json files (--source=coco), "
    "e.g. train=captions_train2014.json,val=captions_val2014.json.",
)
_BUTD_TSV = flags.DEFINE_list(
    "butd_tsv",
    [],
    "Bottom-up-attention TSV feature files (globs allowed), fixed-36 or adaptive 10-100.",
)
_FEATURE_DIM = flags.DEFINE_integer(
    "feature_dim",
    None,
    "Expected feature dimension; default: TSV's own (2048), --shapes_feature_dim for shapes.",
    lower_bound=1,
)
_FEATURES_DTYPE = flags.DEFINE_enum(
    "features_dtype", "float16", list(records.FEATURE_DTYPES), "Storage dtype of region features."
)
_VOCAB_MIN_COUNT = flags.DEFINE_integer(
    "vocab_min_count",
    5,
    "Words seen more than this many times in train enter the vocabulary.",
    lower_bound=0,
)
_MAX_CAPTION_LEN = flags.DEFINE_integer(
    "max_caption_len", 16, "Captions are cut at this many tokens.", lower_bound=1
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards",
    8,
    "Shards of the train split; smaller splits get proportionally fewer (at least 1).",
    lower_bound=1,
)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", min(2, os.cpu_count() or 1), "Worker processes writing shards.", lower_bound=1
)
_SHAPES_SIZES = flags.DEFINE_list(
    "shapes_sizes",
    [f"{k}={v}" for k, v in shapes.DEFAULT_SPLIT_SIZES.items()],
    "SPLIT=N scenes per split of the shapes source.",
)
_SHAPES_FEATURE_DIM = flags.DEFINE_integer(
    "shapes_feature_dim", 2048, "Region feature dim of the shapes source.", lower_bound=8
)
_SHAPES_MAX_REGIONS = flags.DEFINE_integer(
    "shapes_max_regions", 10, "Most regions per shapes scene.", lower_bound=4
)

for _name in ("output_dir", "seed", "skip_bad_records"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort


@dataclasses.dataclass(frozen=True)
class ShapesSource:
    sizes: dict[str, int]
    feature_dim: int
    seed: int
    max_regions: int

    def captions(self) -> dict[str, list[coco.CaptionedImage]]:
        out = {}
        for split, n in self.sizes.items():
            out[split] = [
                coco.CaptionedImage(r.image_id, "", tuple(r.captions))
                for r in shapes.generate(split, n, 8, self.seed, self.max_regions)
            ]
        return out

    def __call__(self, wanted: set[int], bad: errors.BadRecords):
        for split, n in self.sizes.items():
            for r in shapes.generate(split, n, self.feature_dim, self.seed, self.max_regions):
                if r.image_id in wanted:
                    yield r


@dataclasses.dataclass(frozen=True)
class TsvSource:
    paths: tuple[str, ...]
    feature_dim: int | None

    def __call__(self, wanted: set[int], bad: errors.BadRecords):
        yield from butd_tsv.read_tsv(
            list(self.paths), feature_dim=self.feature_dim, image_ids=wanted, skip_bad=bad
        )


def _parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise app.UsageError(f"--{flag}: expected SPLIT=VALUE, got {v!r}")
        out[key] = val
    return out


def _captions_and_source():
    """The split -> captioned images map and the feature source for the flags."""
    if _SOURCE.value == "shapes":
        sizes = {k: int(v) for k, v in _parse_pairs(_SHAPES_SIZES.value, "shapes_sizes").items()}
        dim = _FEATURE_DIM.value or _SHAPES_FEATURE_DIM.value
        src = ShapesSource(sizes, dim, cli_flags.SEED.value, _SHAPES_MAX_REGIONS.value)
        return src.captions(), src
    if _SOURCE.value == "images":
        return _images_captions_and_source()
    if not _BUTD_TSV.value:
        raise app.UsageError(f"--source={_SOURCE.value} needs --butd_tsv feature files")
    butd_tsv.expand_paths(_BUTD_TSV.value)  # a missing file fails now, not in a writer
    src = TsvSource(tuple(_BUTD_TSV.value), _FEATURE_DIM.value)
    if _SOURCE.value == "karpathy":
        if not _KARPATHY_JSON.value:
            raise app.UsageError("--source=karpathy needs --karpathy_json")
        return coco.read_karpathy(_KARPATHY_JSON.value), src
    pairs = _parse_pairs(_COCO_ANNOTATIONS.value, "coco_annotations")
    if not pairs:
        raise app.UsageError("--source=coco needs --coco_annotations=SPLIT=PATH[,...]")
    bad = errors.BadRecords(raise_errors=not cli_flags.SKIP_BAD_RECORDS.value)
    caps = {split: coco.read_coco_annotations(path, skip_bad=bad) for split, path in pairs.items()}
    errors.log_summary(bad, "caption annotations")
    return caps, src


def _images_captions_and_source():
    """--source=images: the captions json names files under --images=DIR; a detector finds
    their regions (tfcap.features.source.ImagesSource)."""
    dirs = images_source.IMAGES.value
    if len(dirs) != 1 or not os.path.isdir(dirs[0]):
        raise app.UsageError(
            "--source=images needs --images=DIR, where the caption files' images are"
        )
    if _KARPATHY_JSON.value:
        captions = _KARPATHY_JSON.value
    else:
        captions = _parse_pairs(_COCO_ANNOTATIONS.value, "coco_annotations")
        if not captions:
            raise app.UsageError(
                "--source=images needs --coco_annotations=SPLIT=PATH[,...] or --karpathy_json"
            )
    try:
        config = images_source.config_from_flags()
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    splits = images_source.captioned_images(captions, dirs[0])
    pairs = images_source.file_pairs(splits)
    src = images_source.ImagesSource(
        dirs[0], pairs, config, threads=images_source.DECODE_THREADS.value
    )
    return splits, src


def build_vocab(split_images, min_count: int, max_len: int):
    """Tokenizes every caption; returns the vocab and image id -> caption ids."""
    if not split_images.get("train"):
        raise BadInput("the train split is empty: the vocabulary is built from it")
    ids_by_image: dict[int, tuple[tuple[int, ...], ...]] = {}
    tokens_by_split = {}
    for split, images in split_images.items():
        if not images:
            raise BadInput(f"split {split!r} has no images")
        flat = [c for im in images for c in im.captions]
        tokens_by_split[split] = (images, vocab.tokenize_py(flat))
    v = vocab.Vocab.build(tokens_by_split["train"][1], min_count=min_count)
    for images, tokens in tokens_by_split.values():
        pos = 0
        for im in images:
            toks = tokens[pos : pos + len(im.captions)]
            pos += len(im.captions)
            ids_by_image[im.image_id] = tuple(tuple(v.encode(t, max_len)) for t in toks)
    return v, ids_by_image


def write_train_cider_df(path: str, train_ids, v: vocab.Vocab, eos: bool = False) -> None:
    """CIDEr-D document frequencies of the train references, as the SCST reward uses
    them: the stored (truncated, `<unk>`-mapped) captions, one corpus entry per image;
    with `eos`, each ending with the `<eos>` word (for `CiderD(count_eos=True)`)."""
    end = [v.words[vocab.EOS_ID]] if eos else []
    refs = [[" ".join([*(v.words[i] for i in ids), *end]) for ids in caps] for caps in train_ids]
    cider.CiderD.from_corpus(refs).to_json(path)


def _num_shards(split_images) -> dict[str, int]:
    train = max(len(split_images.get("train", ())), 1)
    return {
        split: max(1, min(len(ims), round(_NUM_SHARDS.value * len(ims) / train)))
        for split, ims in split_images.items()
    }


def prepare() -> dict:
    """Runs the whole preparation from the flags; returns dataset.json's content."""
    writer.check_output_dir(cli_flags.OUTPUT_DIR.value, _OVERWRITE.value)  # before any work
    split_images, source = _captions_and_source()
    for split, ims in split_images.items():
        logging.info(
            "split %s: %d images, %d captions", split, len(ims), sum(len(i.captions) for i in ims)
        )
    v, ids_by_image = build_vocab(split_images, _VOCAB_MIN_COUNT.value, _MAX_CAPTION_LEN.value)
    logging.info("vocabulary: %d tokens (min count > %d)", len(v), _VOCAB_MIN_COUNT.value)
    num_shards = _num_shards(split_images)
    assignments = {}
    order = {s: [im.image_id for im in ims] for s, ims in split_images.items()}
    captions_by_image = {im.image_id: im.captions for ims in split_images.values() for im in ims}
    for image_id, split, shard in writer.iter_assigned(order, num_shards):
        if image_id in assignments:
            raise BadInput(
                f"image {image_id} is in split {split} and {assignments[image_id].split}"
            )
        captions, ids = captions_by_image[image_id], ids_by_image[image_id]
        assignments[image_id] = writer.Assignment(split, shard, captions, ids)
    staging = writer.StagingDir(cli_flags.OUTPUT_DIR.value, _OVERWRITE.value)
    try:
        workers = min(_NUM_WORKERS.value, sum(num_shards.values()))
        stats, bad, written_ids = writer.write_shards(
            source,
            assignments,
            num_shards,
            staging.path,
            _FEATURES_DTYPE.value,
            workers,
            cli_flags.SKIP_BAD_RECORDS.value,
        )
        meta = _metadata(split_images, stats, bad, v, num_shards)
        v.save(os.path.join(staging.path, meta["vocab_file"]))
        train_ids = [
            ids_by_image[im.image_id] for im in split_images["train"] if im.image_id in written_ids
        ]
        write_train_cider_df(os.path.join(staging.path, meta["cider_df"]), train_ids, v)
        write_train_cider_df(
            os.path.join(staging.path, meta["cider_df_eos"]), train_ids, v, eos=True
        )
        for split, ims in split_images.items():
            kept = [im for im in ims if im.image_id in written_ids]
            if not kept:
                raise BadInput(f"split {split!r}: none of its {len(ims)} images has features")
            coco.write_coco_annotations(
                os.path.join(staging.path, f"annotations_{split}.json"), kept
            )
        writer.write_json(os.path.join(staging.path, pipeline.METADATA_FILE), meta)
    except BaseException:
        staging.abort()
        raise
    staging.commit()
    if bad.count:
        logging.warning("%s", bad.summary())
    return meta


def _metadata(split_images, stats, bad, v, num_shards) -> dict:
    dims = {s["feature_dim"] for s in stats.values()}
    if len(dims) != 1:
        raise BadInput(f"shards disagree on the feature dim: {sorted(dims)}")
    splits = {}
    for split in split_images:
        mine = [stats[name] for name in sorted(stats) if stats[name]["split"] == split]
        splits[split] = {
            "images": sum(s["images"] for s in mine),
            "captions": sum(s["captions"] for s in mine),
            "shards": num_shards[split],
            "shard_images": [s["images"] for s in mine],  # in file order (input sharding)
            "max_captions_per_image": max(len(im.captions) for im in split_images[split]),
        }
    return {
        "schema_version": records.SCHEMA_VERSION,
        "source": _SOURCE.value,
        "vocab_file": "vocab.txt",
        "vocab_size": len(v),
        "vocab_min_count": _VOCAB_MIN_COUNT.value,
        "max_caption_len": _MAX_CAPTION_LEN.value,
        "feature_dim": dims.pop(),
        "features_dtype": _FEATURES_DTYPE.value,
        "max_regions": max(s["max_regions"] for s in stats.values()),
        "min_regions": min(s["min_regions"] for s in stats.values()),
        "splits": splits,
        "bad_records_skipped": bad.count,
        "cider_df": CIDER_DF_FILE,
        "cider_df_eos": CIDER_DF_EOS_FILE,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    meta = prepare()
    for split, s in meta["splits"].items():
        logging.info(
            "%s: %d images, %d captions, %d shards", split, s["images"], s["captions"], s["shards"]
        )
    print(
        f"wrote {cli_flags.OUTPUT_DIR.value}: vocab {meta['vocab_size']}, "
        f"feature dim {meta['feature_dim']} "
        f"({meta['features_dtype']}), splits "
        + ", ".join(f"{k}={v['images']}" for k, v in meta["splits"].items())
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
