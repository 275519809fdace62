"""tfcap.bench: every benchmark runs at the demo preset, ratios follow from the figures."""

import json
import subprocess
import sys

import pytest

from tfcap import bench
from tfcap.perf import flops, model_bench


def test_run_all_benchmarks_demo(shapes_dir):
    out = bench.run(
        list(bench.BENCHMARKS), "demo", 2, repeats=1, variants=True, data_dir=str(shapes_dir)
    )
    res = out["results"]
    assert set(res) == set(bench.BENCHMARKS)
    xe = res["xe"]["variants"]
    assert [r["variant"] for r in xe] == [v.name for v in model_bench.XE_VARIANTS]
    for r in xe:
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["speedup_vs_first"] == pytest.approx(xe[0]["seconds"] / r["seconds"])
        assert r["achieved_gflops"] == pytest.approx(
            res["xe"]["flops_per_step"] / r["seconds"] / 1e9
        )
        assert 0 < r["fraction_of_peak"] < 10
        assert "speedup_vs_reference" not in r  # the reference is for the updown preset only
    assert [r["variant"] for r in res["scst"]["variants"]] == [
        v.name for v in model_bench.SCST_VARIANTS
    ]
    for r in res["decode"]["variants"]:
        assert all(r[f"{m}_ms_per_image"] > 0 for m in ("greedy", "beam3", "beam5"))
    fastest = min(r["seconds"] for r in xe)
    assert res["input"]["xe_consumes_records_per_s"] == pytest.approx(2 / fastest)
    c = res["cider"]
    assert c["speedup_scst_reward"] == pytest.approx(c["scst_pycocoevalcap_s"] / c["scst_reward_s"])
    assert res["peak"]["float32_gflops"] > 0
    text = bench.table(out)
    for row in xe:
        assert row["variant"] in text
    assert "records/s" in text and "pycocoevalcap" in text


def test_cli_writes_json_and_table(tmp_path):
    path = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfcap.bench",
            "--preset=demo",
            "--only=xe",
            "--novariants",
            "--repeats=1",
            "--batch_size=2",
            f"--json_out={path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(path.read_text())
    assert out["preset"] == "demo" and set(out["results"]) == {"xe"}
    names = [r["variant"] for r in out["results"]["xe"]["variants"]]
    assert names == [model_bench.DEFAULT.name, "+ mixed precision (bfloat16)"]
    assert "| XE step |" in proc.stdout
    # Each variant ran in its own process: its peak memory is its own, not cumulative.
    assert all(r["peak_rss_mb"] > 100 for r in out["results"]["xe"]["variants"])


def test_unknown_benchmark_is_a_usage_error():
    with pytest.raises(Exception, match="unknown benchmarks.*nope"):
        bench.run(["nope"], "demo", 2, repeats=1, variants=False)


def test_flops_grow_with_every_size():
    base = dict(
        images=2,
        captions_per_image=5,
        steps=17,
        regions=36,
        feature_dim=2048,
        vocab_size=9487,
        rnn_size=1000,
        embed_dim=1000,
        att_hidden=512,
    )
    f = flops.xe_step_flops(**base)
    assert f == 3 * flops.forward_flops(**base)
    for key in base:
        assert flops.xe_step_flops(**{**base, key: base[key] * 2}) > f, key
    assert flops.xe_step_flops(**base, text_attention=True) > f
