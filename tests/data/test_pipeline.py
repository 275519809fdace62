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


def _worker_epoch(data_dir, workers, pid, batch, drop_remainder, seed=3):
    ctx = tf.distribute.InputContext(
        num_input_pipelines=workers, input_pipeline_id=pid, num_replicas_in_sync=workers
    )
    ds = pipeline.make_dataset(
        str(data_dir),
        "train",
        batch,
        shuffle=True,
        seed=seed,
        drop_remainder=drop_remainder,
        input_context=ctx,
    )
    return [b["image_id"].tolist() for b in _all(ds)]


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    from conftest import prepare_shapes

    return prepare_shapes(tmp_path_factory.mktemp("eight") / "d", "train=40,val=2,test=2", 8)


@pytest.mark.parametrize(
    "workers, shards, batch",
    [(3, 8, 6), (4, 2, 8), (2, 2, 8), (2, 8, 4)],
    ids=["3_workers_8_shards", "4_workers_2_shards", "2_workers_2_shards", "2_workers_8_shards"],
)
def test_workers_partition_every_epoch_and_run_the_same_steps(
    shapes_dir, eight_shards, workers, shards, batch
):
    """Every record reaches exactly one worker per epoch, and every worker has the
    epoch's steps (the global steps_per_epoch of full batches)."""
    data_dir = eight_shards if shards == 8 else shapes_dir
    assert len(pipeline.split_files(str(data_dir), "train")) == shards
    meta = pipeline.load_metadata(str(data_dir))
    steps = pipeline.steps_per_epoch(meta, "train", batch)
    for seed in (3, 4):  # two epochs' orders
        seen = [
            [i for b in _worker_epoch(data_dir, workers, pid, batch, False, seed) for i in b]
            for pid in range(workers)
        ]
        everything = [i for worker in seen for i in worker]
        assert sorted(everything) == sorted(set(everything)), "a record reached two workers"
        assert len(everything) == 40, "records missing"
        for pid in range(workers):
            full = _worker_epoch(data_dir, workers, pid, batch, True, seed)
            assert len(full) >= steps, (pid, len(full), steps)
            assert all(len(b) == batch // workers for b in full)


def test_shard_plan_reads_whole_files_when_balanced(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    files = pipeline.split_files(str(shapes_dir), "train")
    assert meta["splits"]["train"]["shard_images"] == [20, 20]
    assert pipeline.plan_shards(files, [20, 20], 2, 1, 20) == (files[1:], False)
    assert pipeline.plan_shards(files, None, 2, 1, 20) == (files, True)  # counts unknown
    assert pipeline.plan_shards(files, [20, 20], 4, 1, 10) == (files, True)  # fewer files


def test_shuffled_multi_worker_input_needs_a_seed(shapes_dir):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0)
    with pytest.raises(ValueError, match="needs a seed"):
        pipeline.make_dataset(str(shapes_dir), "train", 8, shuffle=True, input_context=ctx)


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


def test_autotune_is_off(shapes_dir):
    """tf.data's autotuner runs a model thread that the deletion of a finished iterator
    waits for; on a busy 2-core machine that took 11-36 s at some epoch ends."""
    ds = pipeline.make_dataset(str(shapes_dir), "train", 4, shuffle=True, seed=0)
    assert ds.options().autotune.enabled is False
