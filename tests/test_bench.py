"""tfcap.bench: every benchmark runs at the demo preset, ratios follow from the figures."""

import json
import subprocess
import sys

import pytest

from tfcap import bench, errors
from tfcap.perf import flops, model_bench, reference, report, timing, workloads


def test_run_all_benchmarks_demo(shapes_dir):
    out = bench.run(
        list(bench.DEFAULT_BENCHMARKS),
        "demo",
        2,
        repeats=1,
        variants=True,
        data_dir=str(shapes_dir),
        isolate=False,  # one process (faster); test_cli_writes_json_and_table isolates
    )
    res = out["results"]
    assert set(res) == set(bench.DEFAULT_BENCHMARKS)
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
    text = report.table(out)
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


def test_phase_benchmark_times_a_whole_training_run(shapes_dir, tmp_path):
    flags = ["--val_images=10", "--log_every=3", "--eval_every=6", "--checkpoint_every=6"]
    p = workloads.bench_phase(str(shapes_dir), 6, str(tmp_path), train_flags=flags)
    assert p["steps"] == 6 and p["batch_images"] == 20
    assert p["images_per_s"] == pytest.approx(6 * 20 / p["seconds"])
    # The steady rate leaves startup and the first step out: above the whole-run rate.
    assert p["steady_images_per_s"] > p["images_per_s"]
    assert (tmp_path / "model").is_dir()
    with pytest.raises(Exception, match="--preset=demo"):
        bench.run(["phase"], "updown", 10, repeats=1, variants=False)


def _reference_header(name: str) -> dict:
    """The keys both reference scripts start their line with, on this machine."""
    return {"bench": name, "torch": "2.13.0+cpu", "threads": 2, "cpu": timing.machine()["cpu"]}


def _reference_line(**overrides) -> str:
    """A line in the format of ../shared/reference/bench_updown_torch.py's output."""
    line = {
        **_reference_header("self-critical.pytorch UpDown (CPU, random weights)"),
        "images": 10,
        "ms": {"xe_train_step": 1898.0, "scst_step_ciderd_reward": 2257.0},
        "ms_per_image": {"greedy_decode": 19.7, "beam3_decode": 40.0, "beam5_decode": 64.7},
    }
    return json.dumps({**line, **overrides})


def test_reference_json_gives_same_run_ratios(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text("timing xe ...\n" + _reference_line() + "\n")
    ref = reference.load_reference(str(path), "updown", 10, timing.machine()["cpu"])
    assert ref["xe_step_s"] == pytest.approx(1.898) and ref["beam5_ms"] == 64.7
    xe = {"variant": "a", "dtype": "float32", "seconds": 0.5, "peak_rss_mb": 1}
    decode = {"variant": "a", "peak_rss_mb": 1, "greedy_ms_per_image": 10.0}
    decode.update(beam3_ms_per_image=20.0, beam5_ms_per_image=32.35)
    out = {
        "preset": "updown",
        "batch_images": 10,
        "reference": ref,
        "results": {
            "xe": {"flops_per_step": 10**9, "variants": [xe]},
            "decode": {"variants": [decode]},
        },
    }
    report.derive(out)
    assert out["results"]["xe"]["variants"][0]["speedup_vs_reference"] == pytest.approx(3.796)
    row = out["results"]["decode"]["variants"][0]
    assert row["greedy_speedup_vs_reference"] == pytest.approx(1.97)
    assert row["beam5_speedup_vs_reference"] == pytest.approx(2.0)
    assert "3.80x" in report.table({**out, "machine": {**timing.machine(), "tensorflow": "x"}})


@pytest.mark.bad_input("benchmarks")
@pytest.mark.parametrize(
    "text, preset, batch, match",
    [
        ("not json", "updown", 10, "not the reference's JSON line"),
        (_reference_line(images=20), "updown", 10, "measured at 20 images.*--batch_size=20"),
        (_reference_line(cpu="Some Other CPU"), "updown", 10, "measured on 'Some Other CPU'"),
        (_reference_line(), "demo", 10, "reference runs the updown sizes"),
        (_reference_line(ms={}, ms_per_image={}), "updown", 10, "none of"),
    ],
)
def test_reference_json_mistakes_are_named(tmp_path, text, preset, batch, match):
    path = tmp_path / "ref.json"
    path.write_text(text)
    with pytest.raises(errors.BadInput, match=match) as err:
        reference.load_reference(str(path), preset, batch, timing.machine()["cpu"])
    assert str(path) in str(err.value)
    with pytest.raises(errors.MissingInput, match="--reference_json.*no such file"):
        reference.load_reference(str(tmp_path / "absent.json"), "updown", 10, "cpu")


def _demo_reference_line(drop=(), **overrides) -> str:
    """A line in the format of scripts/reference_demo_phase.py's output, without `drop`."""
    line = {
        **_reference_header("self-critical.pytorch UpDown, demo XE phase (CPU)"),
        "steps": 1251,
        "batch_images": 20,
        "seconds": 625.5,
        "loop_seconds": 600.0,
        "demo_xe_phase_images_per_s": 40.0,
        "loop_images_per_s": 41.7,
    }
    return json.dumps({k: v for k, v in {**line, **overrides}.items() if k not in drop})


def test_demo_reference_json_gives_the_phase_ratio(tmp_path):
    path = tmp_path / "reference_demo.json"
    path.write_text("iter 100 (epoch 0) ...\n" + _demo_reference_line() + "\n")
    ref = reference.load_reference(str(path), "demo", 10, timing.machine()["cpu"], phase_steps=1251)
    assert ref["demo_xe_phase_images_per_s"] == 40.0 and ref["demo_xe_loop_images_per_s"] == 41.7
    phase = {"steps": 1251, "batch_images": 20, "seconds": 417.0, "steady_images_per_s": 70.0}
    phase["images_per_s"] = 1251 * 20 / phase["seconds"]  # 60 images/s
    out = {"preset": "demo", "batch_images": 10, "reference": ref, "results": {"phase": phase}}
    report.derive(out)
    assert phase["speedup_vs_reference"] == pytest.approx(1.5)  # tfcap / reference images/s
    assert phase["reference_images_per_s"] == 40.0
    text = report.table({**out, "machine": {**timing.machine(), "tensorflow": "x"}})
    assert "tfcap / reference 1.50x (target 1.50x)" in text
    assert "demo_xe_phase_images_per_s 40" in text


@pytest.mark.bad_input("benchmarks")
@pytest.mark.parametrize(
    "text, preset, match",
    [
        (_reference_line(), "demo", "no 'demo_xe_phase_images_per_s'"),
        (_demo_reference_line(drop=["demo_xe_phase_images_per_s"]), "demo", "no 'demo_xe_phase"),
        (_demo_reference_line(cpu="Some Other CPU"), "demo", "measured on 'Some Other CPU'"),
        (_demo_reference_line(batch_images=10), "demo", "10 images per step.* demo's is 20"),
        (_demo_reference_line(steps=20), "demo", "20 steps; run with --phase_steps=20"),
        (_demo_reference_line(), "updown", "demo XE phase.*--preset=demo --only=phase"),
    ],
)
def test_demo_reference_json_mistakes_are_named(tmp_path, text, preset, match):
    path = tmp_path / "reference_demo.json"
    path.write_text(text)
    with pytest.raises(errors.BadInput, match=match) as err:
        reference.load_reference(str(path), preset, 10, timing.machine()["cpu"], phase_steps=1251)
    assert str(path) in str(err.value)
