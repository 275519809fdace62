r"""A tfcap dataset in the PyTorch Up-Down reference's input format, for timing it on our data.

  PYTHONPATH=. .venv/bin/python scripts/reference_demo_data.py \
      --data_dir=runs/demo/data --output_dir=runs/bench/reference_data [--splits=train]

Reads the TFRecords of a `tfcap.data.prepare` dataset (records.py schema,
dataset.json) and writes, in --output_dir, what the reference's
`captioning/data/dataloader.py` reads (../shared/reference/self-critical.pytorch):

- `data.json` (its `input_json`): `ix_to_word`, the 1-based vocabulary as
  {"1": word, ...}, and `images`, one {"split", "id", "width", "height"} per
  image, in the order of the label arrays.
- `data_label.h5` (`input_label_h5`): uint32 `labels [captions, max_caption_len]`
  (0 after the last word), and uint32 `label_start_ix`, `label_end_ix` `[images]`
  (1-based, inclusive) and `label_length` `[captions]`.
- `att/<id>.npz` (`input_att_dir`): `feat`, float32 `[regions, dim]`, the image's
  own regions (its loader pads and masks a batch itself).
- `fc/<id>.npy` (`input_fc_dir`): float32 `[dim]`, the mean region feature (as
  its bottom-up data has it).

Ids: tfcap's 0..3 are `<pad>`, `<bos>`, `<eos>`, `<unk>`, words from 4; the
reference has 0 for end and padding, words from 1 and its unknown word as the
word "UNK". tfcap id `t >= 3` becomes `t - 2`: `<unk>` is 1 ("UNK"), the first
word 2. Only the train split is needed to time XE training (the default).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import tensorflow as tf
from absl import flags

from tfcap import cli, errors
from tfcap.data import pipeline, records, vocab

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A dataset written by tfcap.data.prepare.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the reference's files go.")
_SPLITS = flags.DEFINE_list("splits", ["train"], "Splits to convert, in this order.")
flags.mark_flags_as_required(["data_dir", "output_dir"])

_ID_SHIFT = vocab.UNK_ID - 1  # tfcap id -> reference id


def reference_vocab(words: list[str]) -> dict[str, str]:
    """The reference's 1-based `ix_to_word` of tfcap's vocabulary (its words in order).

    >>> reference_vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "red"])
    {'1': 'UNK', '2': 'a', '3': 'red'}
    """
    out = {str(vocab.UNK_ID - _ID_SHIFT): "UNK"}
    for i, word in enumerate(words[vocab.UNK_ID + 1 :], start=vocab.UNK_ID + 1):
        out[str(i - _ID_SHIFT)] = word
    return out


def reference_labels(captions: list[np.ndarray], max_len: int) -> np.ndarray:
    """uint32 `[captions, max_len]` reference ids of tfcap caption ids (no <bos>/<eos>).

    >>> reference_labels([np.array([4, 3, 5])], 4)
    array([[2, 1, 3, 0]], dtype=uint32)
    """
    labels = np.zeros([len(captions), max_len], np.uint32)
    for row, ids in enumerate(captions):
        ids = np.asarray(ids[:max_len], np.int64)
        if ids.size and ids.min() < vocab.UNK_ID:
            raise errors.BadInput(f"caption ids {ids.tolist()} hold a special token below <unk>")
        labels[row, : ids.size] = ids - _ID_SHIFT
    return labels


def read_split(data_dir: str, meta: dict, split: str):
    """Yields (image_id, width, height, features `[regions, dim]`, caption id arrays)."""
    parse = pipeline.parser(meta, int(meta["max_regions"]))
    size_spec = {k: records.FEATURE_SPEC[k] for k in ("image/width", "image/height")}
    for path in pipeline.split_files(data_dir, split):
        ds = tf.data.TFRecordDataset(path).enumerate()
        for index, raw in ds:
            ex = parse(tf.constant(path), index, raw)
            size = tf.io.parse_single_example(raw, size_spec)  # not in the pipeline's dict
            n = int(tf.reduce_sum(tf.cast(ex["region_mask"], tf.int32)))
            yield (
                int(ex["image_id"]),
                int(size["image/width"]),
                int(size["image/height"]),
                ex["features"].numpy()[:n],
                [row.numpy() for row in ex["caption_ids"]],
            )


def convert(data_dir: str, output_dir: str, splits: list[str]) -> dict:
    """Writes the reference's files (module docstring); returns counts per split."""
    meta = pipeline.load_metadata(data_dir)
    words = pipeline.load_vocab(data_dir, meta).words
    max_len = int(meta["max_caption_len"])
    for split in splits:
        if split not in meta["splits"]:
            raise errors.BadInput(f"--splits: {data_dir} has no split {split!r}")
    att_dir, fc_dir = os.path.join(output_dir, "att"), os.path.join(output_dir, "fc")
    os.makedirs(att_dir, exist_ok=True)
    os.makedirs(fc_dir, exist_ok=True)
    images, captions, start, end, counts = [], [], [], [], {}
    for split in splits:
        counts[split] = 0
        for image_id, width, height, feats, ids in read_split(data_dir, meta, split):
            if not ids:
                raise errors.BadInput(f"{data_dir} ({split}): image {image_id} has no captions")
            images.append({"split": split, "id": image_id, "width": width, "height": height})
            start.append(len(captions) + 1)
            captions += ids
            end.append(len(captions))
            feats = feats.astype(np.float32)
            np.savez_compressed(os.path.join(att_dir, f"{image_id}.npz"), feat=feats)
            np.save(os.path.join(fc_dir, f"{image_id}.npy"), feats.mean(0))
            counts[split] += 1
    labels = reference_labels(captions, max_len)
    with h5py.File(os.path.join(output_dir, "data_label.h5"), "w") as f:
        f.create_dataset("labels", data=labels)
        f.create_dataset("label_start_ix", data=np.array(start, np.uint32))
        f.create_dataset("label_end_ix", data=np.array(end, np.uint32))
        f.create_dataset("label_length", data=(labels > 0).sum(1).astype(np.uint32))
    with open(os.path.join(output_dir, "data.json"), "w", encoding="utf-8") as f:
        json.dump({"ix_to_word": reference_vocab(words), "images": images}, f)
    return {"images": counts, "captions": len(captions), "feature_dim": meta["feature_dim"]}


def main(argv):
    del argv
    out = convert(_DATA_DIR.value, _OUTPUT_DIR.value, _SPLITS.value)
    print(json.dumps({"output_dir": _OUTPUT_DIR.value, **out}))


if __name__ == "__main__":
    cli.run(main)
