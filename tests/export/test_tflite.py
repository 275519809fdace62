"""export.tflite: static-shape encoder/step models, host loops equal to the TF decoders,
and the report (sizes, latency, parity, GPU-delegate analysis, op lists)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter

from export import tflite, tflite_models, tflite_report
from tfcap import checkpoints
from tfcap.model.captioner import Captioner

pytest_plugins = ["export_fixtures"]
REGIONS = 36


@pytest.fixture(scope="module")
def report_dir(model_dir, shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    tflite.export_tflite(
        str(model_dir), str(out), data_dir=str(shapes_dir), max_images=10, regions=REGIONS
    )
    return out


def test_report_parity_sizes_latency_and_files(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert list(report["variants"]) == ["fp32", "fp16", "int8"]
    fp32 = report["variants"]["fp32"]
    for method in ("greedy", "beam"):  # fp32: the TF model's captions, every one
        assert fp32["parity"][method]["identical"] == fp32["parity"][method]["images"] == 10
        assert fp32["parity"][method]["token_agreement"] == 1.0
    assert report["variants"]["fp16"]["parity"]["greedy"]["token_agreement"] >= 0.9
    assert report["variants"]["int8"]["parity"]["greedy"]["token_agreement"] >= 0.6
    sizes = {v: report["variants"][v]["models"]["step"]["bytes"] for v in report["variants"]}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    for name, variant in report["variants"].items():
        assert (
            variant["latency_ms"]["step"]["calls"] >= 10
            and variant["latency_ms"]["step"]["median"] > 0
        )
        for model, info in variant["models"].items():
            assert (report_dir / info["file"]).stat().st_size == info["bytes"]
            analysis = (report_dir / "analysis" / f"{model}_{name}.txt").read_text()
            assert "GPU delegate" in analysis and "Op#0" in analysis
            gpu = info["gpu"]
            assert gpu["lacking_ops"] == [] and gpu["dynamic_tensors"] == []
            assert "FULLY_CONNECTED" in gpu["ops"]
    markdown = (report_dir / "report.md").read_text()
    assert "| fp32 |" in markdown and "### step (int8)" in markdown
    assert "GATHER" in markdown and "ops on int32/bool tensors" in markdown


def test_models_have_static_shapes_and_the_explicit_state(report_dir, model_dir):
    model, _, _ = checkpoints.load_model(str(model_dir))
    rnn, hidden, max_len = model.core.rnn_size, model.core.att_hidden, model.max_len
    step = Interpreter(model_path=str(report_dir / "step_fp32.tflite")).get_signature_runner()
    inputs = {n: list(d["shape"]) for n, d in step.get_input_details().items()}
    assert inputs == {
        "word": [1], "h_att": [1, rnn], "c_att": [1, rnn], "h_lang": [1, rnn],
        "c_lang": [1, rnn], "history": [1, max_len, rnn], "history_keys": [1, max_len, hidden],
        "step": [1], "features": [1, REGIONS, 16], "keys": [1, REGIONS, hidden],
        "mean": [1, 16], "region_mask": [1, REGIONS],
    }  # fmt: skip
    static = ("word", "features", "keys", "mean", "region_mask")
    state = {f"new_{n}" for n in inputs if n not in static}
    assert set(step.get_output_details()) == {"logits", "attention"} | state
    encoder = Interpreter(model_path=str(report_dir / "encoder_fp32.tflite"))
    assert set(encoder.get_signature_runner().get_output_details()) == {"keys", "mean"}
    ops = tflite_report.gpu_findings(
        (report_dir / "step_fp32.tflite").read_bytes(),
        (report_dir / "analysis" / "step_fp32.txt").read_text(),
    )["ops"]
    assert not {"WHILE", "IF", "UNIDIRECTIONAL_SEQUENCE_LSTM"} & set(ops)


@pytest.mark.parametrize("text_attention", [False, True])
def test_host_loops_equal_tf_greedy_and_beam_on_long_captions(text_attention):
    """A random tiny model on random features: long captions exercise every state entry."""
    tf.keras.utils.set_random_seed(3)
    model = Captioner(vocab_size=13, rnn_size=8, embed_dim=6, att_hidden=5, dropout=0.0,
                      text_attention=text_attention, max_len=7)  # fmt: skip
    model.build((None, None, 4))
    fns = tflite_models.step_functions(model, feature_dim=4, regions=6)
    decoder = tflite_models.LiteDecoder(
        tflite_models.convert(fns["encoder"], "fp32"), tflite_models.convert(fns["step"], "fp32"), 7
    )
    rng = np.random.default_rng(0)
    features = rng.normal(size=[5, 6, 4]).astype(np.float32) * 3
    masks = np.arange(6)[None, :] < np.array([6, 3, 1, 5, 6])[:, None]
    features *= masks[..., None]
    for method, k in (("greedy", 1), ("beam", 3)):
        ids, score, attention = model.generate(
            tf.constant(features), tf.constant(masks), method=method, beam_size=k, alpha=0.6
        )
        for i in range(5):
            if method == "greedy":
                got = decoder.greedy(features[i], masks[i])
            else:
                got = decoder.beam(features[i], masks[i], k, alpha=0.6)
            np.testing.assert_array_equal(got[0], ids[i].numpy())
            np.testing.assert_allclose(got[1], score[i].numpy(), rtol=1e-5)
            np.testing.assert_allclose(got[2], attention[i].numpy(), atol=1e-5)
    lengths = [tflite_report.caption_length(row) for row in ids.numpy()]
    assert max(lengths) >= 5  # the state really is carried over several steps


def test_padding_and_parity_helpers():
    features, mask = tflite_models.pad_regions(np.ones([40, 2]), np.ones([40], bool), 36)
    assert features.shape == (36, 2) and mask.all()
    features, mask = tflite_models.pad_regions(np.ones([3, 2]), np.array([1, 1, 0], bool), 5)
    assert mask.tolist() == [True, True, False, False, False] and features[2:].sum() == 0
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(
        tflite_models.log_softmax(logits), tf.nn.log_softmax(logits).numpy(), rtol=1e-6
    )
    with pytest.raises(ValueError, match="variant"):
        tflite_models.convert(None, "int4")


def test_command_line(model_dir, shapes_dir, tmp_path, capsys):
    with flagsaver.flagsaver(
        model_dir=str(model_dir), output_dir=str(tmp_path), data_dir=str(shapes_dir),
        tflite_images=2, tflite_variants=["fp32"], beam_size=2,
    ):  # fmt: skip
        tflite.main(["tflite"])
    assert "| fp32 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert (
        report["setup"]["beam_size"] == 2
        and report["variants"]["fp32"]["parity"]["beam"]["identical"] == 2
    )
