"""Ratios between the figures of one `tfcap.bench` run, its targets, and its markdown tables."""

from __future__ import annotations

from tfcap.perf.reference import DEMO_KEY

# Speed targets as ratios of the same run, tfcap's speed over the reference's: reference s /
# tfcap s per step or image; the demo phase tfcap images/s / reference images/s. input:
# records/s over consumption.
TARGETS = {
    "xe_vs_reference": 2.5,
    "scst_vs_reference": 2.5,
    "greedy_vs_reference": 2.0,
    "beam5_vs_reference": 3.0,
    "demo_phase_vs_reference": 1.5,
    "bfloat16_vs_float32_xe": 2.0,
    "input_ratio": 10.0,
}


def _best(rows: list[dict], key: str = "seconds") -> dict:
    return min(rows, key=lambda r: r[key])


def derive(out: dict) -> None:
    """Ratios between figures of this run (and against the reference)."""
    res, ref = out["results"], out.get("reference") or {}
    for name in ("xe", "scst"):
        rows = res.get(name, {}).get("variants", [])
        for row in rows:
            row["speedup_vs_first"] = rows[0]["seconds"] / row["seconds"]
            if f"{name}_step_s" in ref:
                row["speedup_vs_reference"] = ref[f"{name}_step_s"] / row["seconds"]
    for row in res.get("xe", {}).get("variants", []):
        row["achieved_gflops"] = res["xe"]["flops_per_step"] / row["seconds"] / 1e9
        if "peak" in res:
            peak = res["peak"][
                "bfloat16_gflops" if "bfloat16" in row["dtype"] else "float32_gflops"
            ]
            row["fraction_of_peak"] = row["achieved_gflops"] / peak
    for row in res.get("decode", {}).get("variants", []):
        for method in ("greedy", "beam3", "beam5"):
            if f"{method}_ms" in ref:
                row[f"{method}_speedup_vs_reference"] = (
                    ref[f"{method}_ms"] / row[f"{method}_ms_per_image"]
                )
    from tfcap.perf import model_bench as mb

    xe = {r["variant"]: r["seconds"] for r in res.get("xe", {}).get("variants", [])}
    bf16 = mb.DEFAULTS["xe"][1].name
    if mb.DEFAULT.name in xe and bf16 in xe:  # the float32 default and its bfloat16 twin
        res["xe"]["bfloat16_speedup_vs_float32"] = xe[mb.DEFAULT.name] / xe[bf16]
    if "phase" in res and DEMO_KEY in ref:  # throughputs: tfcap / reference
        res["phase"]["reference_images_per_s"] = ref[DEMO_KEY]
        res["phase"]["speedup_vs_reference"] = res["phase"]["images_per_s"] / ref[DEMO_KEY]
    if "input" in res and "xe" in res:
        consumed = out["batch_images"] / _best(res["xe"]["variants"])["seconds"]
        res["input"]["xe_consumes_records_per_s"] = consumed
        res["input"]["ratio_to_consumption"] = res["input"]["records_per_s"] / consumed


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(out: dict) -> str:
    """The results as markdown tables."""
    res, m = out["results"], out["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['memory_gib']} GiB, "
        f"TensorFlow {m['tensorflow']}; preset `{out['preset']}`, batch "
        f"{out['batch_images']} images x 5 captions.",
        "",
    ]
    if "peak" in res:
        p = res["peak"]
        lines += [
            f"Matmul peak: float32 {p['float32_gflops']:.0f} GFLOP/s, "
            f"bfloat16 {p['bfloat16_gflops']:.0f} GFLOP/s.",
            "",
        ]
    ref = out.get("reference") or {}
    if ref:
        lines += [
            f"Reference (PyTorch Up-Down, torch {ref.get('torch')}, {ref.get('threads')} threads, "
            "measured in this run): "
            + ", ".join(
                f"{k} {v:.3g}" for k, v in ref.items() if k.endswith(("_s", "_ms", "_per_s"))
            )
            + ".",
            "",
        ]
    for name, ref_key in (("xe", "xe_step_s"), ("scst", "scst_step_s")):
        if name not in res:
            continue
        shown = f"{ref[ref_key]:.2f} s" if ref_key in ref else "not given"
        lines += [
            f"| {name.upper()} step | s/step | vs first row | reference / tfcap "
            f"(reference {shown}) | GFLOP/s (of peak) | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in res[name]["variants"]:
            flops = (
                f"{r['achieved_gflops']:.0f} ({r.get('fraction_of_peak', float('nan')):.0%})"
                if "achieved_gflops" in r
                else ""
            )
            lines.append(
                f"| {r['variant']} | {r['seconds']:.2f} | {r['speedup_vs_first']:.2f}x | "
                f"{_ratio(r.get('speedup_vs_reference'))} | {flops} | "
                f"{r['peak_rss_mb']} |"
            )
        if name == "xe":
            lines.append(f"\nModel FLOPs per XE step: {res['xe']['flops_per_step'] / 1e9:.0f} G.")
            if "bfloat16_speedup_vs_float32" in res["xe"]:
                lines.append(
                    "bfloat16 default vs float32 default: "
                    f"{res['xe']['bfloat16_speedup_vs_float32']:.2f}x."
                )
        lines.append("")
    if "decode" in res:
        lines += [
            "| Decoding, ms/image | greedy | beam-3 | beam-5 | reference / tfcap: greedy, "
            "beam-3, beam-5 | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        if ref:
            lines.append(
                "| reference | "
                + " | ".join(f"{ref.get(m + '_ms', float('nan')):.1f}" for m in _METHODS)
                + " | | |"
            )
        for r in res["decode"]["variants"]:
            ratios = ", ".join(_ratio(r.get(f"{m}_speedup_vs_reference")) for m in _METHODS)
            lines.append(
                f"| {r['variant']} | {r['greedy_ms_per_image']:.1f} | "
                f"{r['beam3_ms_per_image']:.1f} | {r['beam5_ms_per_image']:.1f} | "
                f"{ratios} | {r['peak_rss_mb']} |"
            )
        lines.append("")
    if "cider" in res:
        c = res["cider"]
        lines += [
            f"CIDEr-D, 50 captions x 5 references: pycocoevalcap {1000 * c['pycocoevalcap_s']:.1f}"
            f" ms; tfcap strings {c['speedup_score']:.0f}x, token ids {c['speedup_score_ids']:.0f}x"
            f" faster; SCST reward (references new each call) {1000 * c['scst_reward_s']:.2f} ms"
            f" vs {1000 * c['scst_pycocoevalcap_s']:.1f} ms = {c['speedup_scst_reward']:.0f}x.",
            "",
        ]
    if "input" in res:
        i = res["input"]
        ratio = (
            f", {i['ratio_to_consumption']:.0f}x the {i['xe_consumes_records_per_s']:.1f} "
            "records/s the fastest XE step consumes"
            if "ratio_to_consumption" in i
            else ""
        )
        lines += [
            f"Input: {i['records_per_s']:.0f} records/s ({i['regions']} x {i['feature_dim']} "
            f"{i['features_dtype']}){ratio}; peak RSS {i['peak_rss_mb']} MB.",
            "",
        ]
    if "phase" in res:
        p = res["phase"]
        steady = p["steady_images_per_s"]
        lines += [
            f"Whole demo XE phase: {p['steps']} steps of {p['batch_images']} images in "
            f"{p['seconds']:.0f} s = {p['images_per_s']:.1f} images/s (startup, input, logging, "
            f"validation, checkpoints included); steady {steady or float('nan'):.1f} img/s"
            + (
                f"; reference {p['reference_images_per_s']:.1f} images/s in the same run, "
                f"tfcap / reference {_ratio(p['speedup_vs_reference'])} (target "
                f"{_ratio(TARGETS['demo_phase_vs_reference'])})"
                if "speedup_vs_reference" in p
                else ""
            )
            + ".",
            "",
        ]
    return "\n".join(lines)


_METHODS = ("greedy", "beam3", "beam5")
