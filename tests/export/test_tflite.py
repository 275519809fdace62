"""export.tflite: static-shape encoder/step models within the GPU delegate's rules, host
loops equal to the TF decoders (one batched step call per beam step), and the report
(sizes, latency, parity, GPU-delegate analysis, op lists)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter

from export import tflite, tflite_gpu, tflite_models, tflite_report
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
        # greedy decodes 3 images (the step's static batch) per call: 10 images, >= 4 calls
        assert (
            variant["latency_ms"]["step"]["calls"] >= 4
            and variant["latency_ms"]["step"]["median"] > 0
        )
        for model, info in variant["models"].items():
            assert (report_dir / info["file"]).stat().st_size == info["bytes"]
            analysis = (report_dir / "analysis" / f"{model}_{name}.txt").read_text()
            assert "GPU delegate" in analysis and "Op#0" in analysis
            gpu = info["gpu"]
            assert gpu["lacking_ops"] == [] and gpu["dynamic_tensors"] == []
            assert "FULLY_CONNECTED" in gpu["ops"]
            if name != "int8":  # fp32 and fp16: every op within the delegate's rules
                assert gpu["rule_violations"] == [], (name, model, gpu["rule_violations"])
    int8 = report["variants"]["int8"]["models"]["step"]["gpu"]["rule_violations"]
    # dynamic-range int8 (LiteRT documents it as CPU-only): int8 weights and tensors
    assert any("FULLY_CONNECTED" in v and "INT8" in v for v in int8)
    assert all("INT8" in v or "quantized ops" in v for v in int8), int8
    markdown = (report_dir / "report.md").read_text()
    assert "| fp32 |" in markdown and "### step (int8)" in markdown
    assert "GATHER" in markdown and "every op within them" in markdown


def test_models_have_static_shapes_and_the_explicit_state(report_dir, model_dir):
    model, _, _ = checkpoints.load_model(str(model_dir))
    rnn, hidden, max_len = model.core.rnn_size, model.core.att_hidden, model.max_len
    width = rnn if model.core.feature_embed else 16  # the encoder hands over embedded regions
    step = Interpreter(model_path=str(report_dir / "step_fp32.tflite")).get_signature_runner()
    inputs = {n: list(d["shape"]) for n, d in step.get_input_details().items()}
    k = 3  # the beam size: one row per beam
    assert inputs == {
        "word": [k], "h_att": [k, rnn], "c_att": [k, rnn], "h_lang": [k, rnn],
        "c_lang": [k, rnn], "history": [k, max_len, rnn], "history_keys": [k, max_len, hidden],
        "step": [k], "regions": [k, REGIONS, width], "keys": [k, REGIONS, hidden],
        "mean_gates": [k, 4 * rnn], "region_mask": [k, REGIONS],
    }  # fmt: skip
    static = ("word", "step", "regions", "keys", "mean_gates", "region_mask")
    state = {f"new_{n}" for n in inputs if n not in static}  # the host counts `step`
    assert set(step.get_output_details()) == {"logits", "attention"} | state
    encoder = Interpreter(model_path=str(report_dir / "encoder_fp32.tflite"))
    outputs = encoder.get_signature_runner().get_output_details()
    assert set(outputs) == {"regions", "keys", "mean_gates"}  # mean_gates: once per image
    assert list(outputs["mean_gates"]["shape"]) == [k, 4 * rnn]
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
    fns = tflite_models.step_functions(model, feature_dim=4, regions=6, batch=3)
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
        decoder.step_seconds.clear()
        if method == "greedy":  # 5 images, 3 rows a call: 2 batches
            got = decoder.greedy(features, masks)
            steps = [tflite_report.caption_length(r) for r in ids.numpy()]
            assert len(decoder.step_seconds) == max(steps[:3]) + max(steps[3:])
        else:
            got = [
                np.stack(x)
                for x in zip(
                    *(decoder.beam(f, m, 0.6) for f, m in zip(features, masks, strict=True)),
                    strict=True,
                )
            ]
            assert len(decoder.step_seconds) <= 5 * 7  # one call per step for all 3 beams
        np.testing.assert_array_equal(got[0], ids.numpy())
        np.testing.assert_allclose(got[1], score.numpy(), rtol=1e-5)
        np.testing.assert_allclose(got[2], attention.numpy(), atol=1e-5)
    lengths = [tflite_report.caption_length(row) for row in ids.numpy()]
    assert max(lengths) >= 5  # the state really is carried over several steps
    for name in ("encoder", "step"):  # tiny weights: every variant's ops within the rules
        for variant in tflite_models.VARIANTS:
            assert tflite_gpu.violations(tflite_models.convert(fns[name], variant)) == []


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


def _flatbuffer(fn, *specs, variant="fp32"):
    concrete = tf.function(fn, input_signature=list(specs)).get_concrete_function()
    return tflite_models.convert(concrete, variant)


def test_gpu_rules_flag_what_the_delegate_rejects():
    """Each construct the delegate's sources reject is named; its rewrite passes."""
    f, i32 = tf.float32, tf.int32
    spec = tf.TensorSpec
    cases = {  # name -> (rejected graph, accepted rewrite, words of the verdict)
        "shrink_axis": (
            (lambda x: x[..., 0] * 2.0, spec([1, 3, 1], f)),
            (lambda x: tf.squeeze(x, -1) * 2.0, spec([1, 3, 1], f)),
            "shrinkAxisMask",
        ),
        "bool_one_hot": (
            (lambda i: tf.where(tf.one_hot(i, 4, on_value=True, off_value=False), 1.0, 0.0),
             spec([1], i32)),
            (lambda i: tf.one_hot(i, 4, on_value=1.0, off_value=0.0), spec([1], i32)),
            "ONE_HOT",
        ),
        "broadcast_select": (
            (lambda c, a, b: tf.where(c[:, :, None] > 0, a[:, None, :], b),
             spec([1, 4], f), spec([1, 5], f), spec([1, 4, 5], f)),
            (lambda c, a, b: b * (1.0 - c[:, :, None]) + tf.matmul(c[:, :, None], a[:, None, :]),
             spec([1, 4], f), spec([1, 5], f), spec([1, 4, 5], f)),
            "SELECT_V2",
        ),
        "int32_arithmetic": (
            (lambda i: tf.cast(i + 1, f), spec([1], i32)),
            (lambda i: tf.cast(i, f) + 1.0, spec([1], i32)),
            "INT32",
        ),
        "while": (
            (lambda x: tf.while_loop(lambda y: tf.reduce_sum(y) < 10.0, lambda y: y * 2.0, [x])[0],
             spec([1, 3], f)),
            (lambda x: x * 2.0, spec([1, 3], f)),
            "WHILE",
        ),
    }  # fmt: skip
    for name, (bad, good, words) in cases.items():
        found = tflite_gpu.violations(_flatbuffer(*bad))
        assert found and any(words in v for v in found), (name, found)
        assert tflite_gpu.violations(_flatbuffer(*good)) == [], name
    dense = tf.constant(np.random.default_rng(0).normal(size=[64, 64]), tf.float32)
    matmul = (lambda x: tf.matmul(x, dense), spec([1, 64], f))
    assert tflite_gpu.violations(_flatbuffer(*matmul, variant="fp16")) == []
    int8 = tflite_gpu.violations(_flatbuffer(*matmul, variant="int8"))  # dynamic range
    assert int8 and "INT8" in int8[0] and "float32/float16" in int8[0]
