"""export.saved_model: layout, versions, atomic write, warmup records, core ops only,
and a fresh process (tensorflow_text blocked; TF2 and TF Serving's session loader) whose
outputs equal the checkpoint's decode."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import shared_data_dir
from export_fixtures import SERVING_REGIONS, checkpoint_decode, sample_images
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from export import saved_model

pytest_plugins = ["export_fixtures"]

CONTRACT = {  # output -> (dtype, rank)
    "caption": (tf.string, 1),
    "score": (tf.float32, 1),
    "tokens": (tf.int32, 2),
    "attention": (tf.float32, 3),
    "boxes": (tf.float32, 3),
}
TEXT_OP_PREFIXES = ("Whitespace", "CaseFold", "Normalize", "RegexSplit", "Sentencepiece",
                    "Wordpiece", "UnicodeScript", "SplitMerge", "TFText")  # fmt: skip


def test_layout_is_a_complete_version_and_nothing_else(export_base):
    assert sorted(os.listdir(export_base)) == ["1"]  # no temporary directory left
    version = export_base / "1"
    assert sorted(os.listdir(version)) == sorted(
        ["saved_model.pb", "variables", "assets", "assets.extra", "fingerprint.pb"]
    )
    assert (version / "assets" / "vocab.txt").read_text().startswith("<pad>\n<bos>\n")
    assert (version / "assets.extra" / saved_model.WARMUP_FILE).stat().st_size > 0


def _graph_ops(path) -> set[str]:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for fn in graph.library.function:
        ops |= {node.op for node in fn.node_def}
    return ops


def test_graph_holds_core_tensorflow_ops_only(export_base):
    ops = _graph_ops(export_base / "1")
    assert {"While", "LookupTableFindV2", "DecodeImage", "CropAndResize"} <= ops
    assert sorted(op for op in ops if op not in dir(tf.raw_ops)) == []
    assert [op for op in ops if op.startswith(TEXT_OP_PREFIXES)] == []


_FRESH = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow_text"] = None  # any import of it now fails
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    inputs = json.loads(open(sys.argv[2]).read())
    out = {}
    f_inputs = ("features", "boxes", "num_regions")
    f = loaded.signatures["caption_features"](
        features=tf.constant(inputs["features"], tf.float32),
        boxes=tf.constant(inputs["boxes"], tf.float32),
        num_regions=tf.constant(inputs["num_regions"], tf.int32))
    images = [bytes.fromhex(h) for h in inputs["images"]]
    i = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    for name, result in (("caption_features", f), ("serving_default", i)):
        out[name] = {k: {"dtype": v.dtype.name, "shape": v.shape.as_list(),
                         "value": [s.decode() for s in v.numpy()] if v.dtype == tf.string
                         else v.numpy().tolist()} for k, v in result.items()}
    # TF Serving's loader: a TF1 session restoring the variables by name.
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], sys.argv[1])
        for name, feed in (("caption_features", {k: inputs[k] for k in f_inputs}),
                           ("serving_default", {"image_bytes": images})):
            sig = meta.signature_def[name]
            fetched = sess.run({k: v.name for k, v in sig.outputs.items()},
                               {sig.inputs[k].name: v for k, v in feed.items()})
            out["session_" + name] = fetched["tokens"].tolist()
    out["tensorflow_text_loaded"] = sys.modules.get("tensorflow_text") is not None
    print(json.dumps(out))
    """
)


def test_fresh_process_without_tensorflow_text_gives_the_checkpoint_decode(
    export_base, model_dir, detector_handle, test_batch, tmp_path
):
    images = sample_images(shared_data_dir())
    request = {k: v.tolist() for k, v in test_batch.items()}
    request["images"] = [data.hex() for data in images]
    (tmp_path / "inputs.json").write_text(json.dumps(request))
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(script), str(export_base / "1"), str(tmp_path / "inputs.json")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tensorflow_text_loaded"] is False
    for name in ("caption_features", "serving_default"):  # TF Serving's loader agrees
        assert out["session_" + name] == out[name]["tokens"]["value"]

    for name, batch in (("caption_features", 4), ("serving_default", len(images))):
        regions = test_batch["features"].shape[1] if name == "caption_features" else 36
        max_len = out[name]["tokens"]["shape"][1]
        expected_shapes = {
            "caption": [batch], "score": [batch], "tokens": [batch, max_len],
            "attention": [batch, max_len, regions], "boxes": [batch, regions, 4],
        }  # fmt: skip
        for key, (dtype, _) in CONTRACT.items():
            assert out[name][key]["dtype"] == dtype.name, (name, key)
            assert out[name][key]["shape"] == expected_shapes[key], (name, key)

    want = checkpoint_decode(model_dir, test_batch["features"], test_batch["num_regions"])
    got = out["caption_features"]
    np.testing.assert_array_equal(got["tokens"]["value"], want["tokens"])
    assert got["caption"]["value"] == want["caption"]
    np.testing.assert_allclose(got["score"]["value"], want["score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["boxes"]["value"], test_batch["boxes"])

    # serving_default = the detector's regions through the same decode.
    from tfcap.features import detector
    from tfcap.features import images as images_lib

    extractor = detector.region_extractor(detector_handle, SERVING_REGIONS)
    decoded = [images_lib.decode_in_graph(tf.constant(d)) for d in images]
    regions = [extractor(image) for image in decoded]
    feats = np.stack([r["features"].numpy() for r in regions])
    counts = np.array([int(r["num_regions"]) for r in regions], np.int32)
    want = checkpoint_decode(model_dir, feats, counts)
    got = out["serving_default"]
    np.testing.assert_array_equal(got["tokens"]["value"], want["tokens"])
    assert got["caption"]["value"] == want["caption"]
    np.testing.assert_allclose(got["boxes"]["value"], np.stack([r["boxes"] for r in regions]))
    attention = np.asarray(got["attention"]["value"])  # padding regions get no weight
    for row, n in enumerate(counts):
        assert np.all(attention[row, :, n:] == 0)


def test_warmup_records_parse_as_prediction_logs_and_replay(export_base):
    path = str(export_base / "1" / "assets.extra" / saved_model.WARMUP_FILE)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    requests = {log.predict_log.request.model_spec.signature_name: log for log in logs}
    assert sorted(requests) == ["caption_features", "serving_default"]
    loaded = tf.saved_model.load(str(export_base / "1"))
    for name, log in requests.items():
        inputs = {k: tf.make_ndarray(v) for k, v in log.predict_log.request.inputs.items()}
        out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert sorted(out) == sorted(CONTRACT) and out["caption"].shape == [1]


def test_next_version_and_existing_versions_are_kept(model_dir, tmp_path):
    base = tmp_path / "base"
    assert saved_model.next_version(str(base)) == 1
    for name in ("3", "10", "notes", ".tmp-11-1"):
        (base / name).mkdir(parents=True)
    assert saved_model.next_version(str(base)) == 11
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model.export(str(model_dir), str(base), version=3)
    assert os.listdir(base / "3") == []


def test_a_failed_save_leaves_no_version_and_no_temporary(model_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        saved_model.export(str(model_dir), str(tmp_path / "base"))
    assert os.listdir(tmp_path / "base") == []


def test_command_line_writes_the_next_version_with_caption_features(model_dir, tmp_path, capsys):
    base = tmp_path / "base"
    (base / "4").mkdir(parents=True)
    with flagsaver.flagsaver(model_dir=str(model_dir), export_base=str(base), beam_size=2):
        saved_model.main(["saved_model"])
    assert capsys.readouterr().out.strip() == str(base / "5")
    loaded = tf.saved_model.load(str(base / "5"))
    assert sorted(loaded.signatures) == ["caption_features"]
