"""The tf.data input: batch dict contract, padding, captions, determinism, sharding, errors."""

import json
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfcap.data import pipeline, vocab

bad_input = pytest.mark.bad_input("training input")


def _all(ds):
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def test_batch_dict_keys_shapes_dtypes(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    b = next(iter(pipeline.make_dataset(str(shapes_dir), "train", 4, drop_remainder=True)))
    regions, dim, t = meta["max_regions"], meta["feature_dim"], meta["max_caption_len"] + 2
    assert set(b) == {"image_id", "features", "boxes", "region_mask", "captions"}
    assert b["image_id"].dtype == tf.int64 and b["image_id"].shape == [4]
    assert b["features"].dtype == tf.float32 and b["features"].shape == [4, regions, dim]
    assert b["boxes"].shape == [4, regions, 4] and b["region_mask"].dtype == tf.bool
    assert b["captions"].dtype == tf.int32 and b["captions"].shape == [4, 5, t]


def test_padding_and_mask_agree(shapes_dir):
    for b in _all(pipeline.make_dataset(str(shapes_dir), "val", 5, max_regions=12)):
        mask = b["region_mask"]
        assert mask.shape[1] == 12
        assert np.all(b["features"][~mask] == 0) and np.all(b["boxes"][~mask] == 0)
        assert np.all(np.abs(b["features"][mask]).sum(-1) > 0)
        # the mask is a prefix: real regions first
        assert np.all(np.diff(mask.astype(int), axis=1) <= 0)
        assert np.all((b["boxes"] >= 0) & (b["boxes"] <= 1))


def test_captions_are_bos_tokens_eos_pad(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    v = pipeline.load_vocab(str(shapes_dir))
    refs = json.load(open(shapes_dir / "annotations_val.json"))
    by_image = {}
    for a in refs["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    for b in _all(pipeline.make_dataset(str(shapes_dir), "val", 5)):
        for image_id, caps in zip(b["image_id"], b["captions"], strict=True):
            assert np.all(caps[:, 0] == vocab.BOS_ID)
            for row in caps:
                n = int(np.argmax(row == vocab.EOS_ID))
                assert n > 1 and np.all(row[n + 1 :] == vocab.PAD_ID)
                assert np.all(row[1:n] > vocab.EOS_ID)  # words or <unk>
            want = [
                v.encode(t, meta["max_caption_len"])
                for t in vocab.tokenize_py(by_image[int(image_id)])
            ]
            got = [[int(i) for i in row[1 : int(np.argmax(row == vocab.EOS_ID))]] for row in caps]
            assert got == want  # 5 references, in order, without shuffling


def test_seq_per_img_cycles_when_fewer_references(shapes_dir):
    b = next(iter(pipeline.make_dataset(str(shapes_dir), "val", 2, seq_per_img=7)))
    caps = b["captions"].numpy()
    assert caps.shape[1] == 7
    np.testing.assert_array_equal(caps[:, 5], caps[:, 0])
    np.testing.assert_array_equal(caps[:, 6], caps[:, 1])


def test_deterministic_mode_repeats_order(shapes_dir):
    def run():
        ds = pipeline.make_dataset(
            str(shapes_dir), "train", 4, shuffle=True, seed=7, deterministic=True
        )
        return np.concatenate([b["image_id"] for b in _all(ds)])

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert sorted(first) != list(first)  # it was shuffled
    assert len(set(first)) == 40


def test_per_worker_sharding_is_disjoint_and_complete(shapes_dir):
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2
        )
        ds = pipeline.make_dataset(str(shapes_dir), "train", 8, input_context=ctx)
        batches = _all(ds)
        assert max(len(b["image_id"]) for b in batches) == 4  # per-replica batch
        seen.append({int(i) for b in batches for i in b["image_id"]})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 40


def test_parser_runs_eagerly_and_in_tf_data(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    path = pipeline.split_files(str(shapes_dir), "test")[0]
    parse = pipeline.parser(meta, meta["max_regions"])
    raw = next(iter(tf.data.TFRecordDataset(path)))
    eager = parse(tf.constant(path), tf.constant(0, tf.int64), raw)
    graph = next(
        iter(tf.data.TFRecordDataset(path).enumerate().map(lambda i, r: parse(path, i, r)))
    )
    for key in ("image_id", "features", "boxes", "region_mask"):
        np.testing.assert_array_equal(eager[key].numpy(), graph[key].numpy())
    assert eager["caption_ids"].to_list() == graph["caption_ids"].to_list()


def _copy(shapes_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shapes_dir, out)
    return out


@bad_input
def test_feature_dim_disagreeing_with_metadata_names_file_and_record(shapes_dir, tmp_path):
    data = _copy(shapes_dir, tmp_path)
    meta = json.load(open(data / "dataset.json"))
    meta["feature_dim"] = 32
    json.dump(meta, open(data / "dataset.json", "w"))
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        _all(pipeline.make_dataset(str(data), "test", 4))
    # Every record is bad and the map is parallel: whichever fails first is named.
    assert re.search(r"test-00000-of-00001\.tfrecord: record \d+\]", e.value.message)
    assert "feature_dim 32" in e.value.message


@bad_input
def test_corrupt_shard_is_named_and_skippable(shapes_dir, tmp_path):
    data = _copy(shapes_dir, tmp_path)
    shard = data / "train-00001-of-00002.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte inside a record's payload
    shard.write_bytes(bytes(raw))
    with pytest.raises(tf.errors.DataLossError):
        _all(pipeline.make_dataset(str(data), "train", 4))
    with pytest.raises(
        ValueError, match=r"train-00001-of-00002\.tfrecord: corrupt .* after record \d+"
    ):
        pipeline.check_shards(pipeline.split_files(str(data), "train"))
    try:
        _all(pipeline.make_dataset(str(data), "train", 4))
    except tf.errors.DataLossError as e:  # what a training loop turns into a named error
        named = pipeline.explain_data_loss(str(data), "train", e)
    assert "train-00001-of-00002.tfrecord: corrupt" in str(named)
    assert "--skip_bad_records" in str(named)
    kept = _all(pipeline.make_dataset(str(data), "train", 4, skip_bad_records=True))
    n = sum(len(b["image_id"]) for b in kept)
    assert 20 <= n < 40  # the intact shard whole, the corrupt one up to the bad record


@bad_input
def test_truncated_shard_is_named(shapes_dir, tmp_path):
    data = _copy(shapes_dir, tmp_path)
    shard = data / "val-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(
        ValueError, match=r"val-00000-of-00001\.tfrecord: corrupt or truncated after record 9"
    ):
        pipeline.check_shards(pipeline.split_files(str(data), "val"))


@bad_input
def test_missing_split_and_metadata_errors(shapes_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards for split 'dev'"):
        pipeline.split_files(str(shapes_dir), "dev")
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        pipeline.load_metadata(str(tmp_path))
    (tmp_path / "dataset.json").write_text('{"schema_version": 99}')
    with pytest.raises(ValueError, match="schema_version 99"):
        pipeline.load_metadata(str(tmp_path))


@bad_input
def test_records_without_captions_give_all_pad_rows(shapes_dir, tmp_path):
    from tfcap.data import records

    data = _copy(shapes_dir, tmp_path)
    rng = np.random.default_rng(0)
    rec = records.ImageRecord(
        7, 64, 48, np.array([[0, 0, 0.5, 0.5]], np.float32), rng.random((1, 16), np.float32), []
    )
    with tf.io.TFRecordWriter(str(data / "extra-00000-of-00001.tfrecord")) as w:
        w.write(records.to_example(rec, [], "float32").SerializeToString())
    b = next(iter(pipeline.make_dataset(str(data), "extra", 2, shuffle=True, seed=1)))
    assert b["image_id"].numpy().tolist() == [7]
    assert not np.any(b["captions"].numpy())
    assert b["region_mask"].numpy().sum() == 1
