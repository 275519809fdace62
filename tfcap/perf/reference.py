"""The PyTorch reference's speed figures (`tfcap.bench --reference_json`), checked comparable.

Only figures measured on this machine in the same run are accepted: the JSON line of
../shared/reference/bench_updown_torch.py (updown sizes) or of scripts/reference_demo_phase.py
(the demo XE phase).
"""

from __future__ import annotations

import json

from tfcap import errors
from tfcap.perf.workloads import demo_batch_images

# The reference benchmark's JSON keys -> the figures compared ("ms" or "ms_per_image").
_REFERENCE_KEYS = {
    "xe_step_s": ("ms", "xe_train_step", 1e-3),
    "scst_step_s": ("ms", "scst_step_ciderd_reward", 1e-3),
    "greedy_ms": ("ms_per_image", "greedy_decode", 1.0),
    "beam3_ms": ("ms_per_image", "beam3_decode", 1.0),
    "beam5_ms": ("ms_per_image", "beam5_decode", 1.0),
}


DEMO_KEY = "demo_xe_phase_images_per_s"  # scripts/reference_demo_phase.py's figure


def load_reference(
    path: str, preset: str, batch_size: int, cpu: str, phase_steps: int | None = None
) -> dict:
    """The reference's figures from its benchmark JSON at `path`, checked comparable.

    With --preset=updown the line of bench_updown_torch.py (XE and SCST step, decoding);
    with --preset=demo that of scripts/reference_demo_phase.py (`demo_xe_phase_images_per_s`,
    a whole demo XE phase of `phase_steps` steps, when given, at the demo's batch).

    Raises `errors.BadInput` naming the file when it is not that JSON, lacks the
    figures of `preset`, was measured on another CPU or at another batch or length.
    """
    try:
        with errors.open_input(path, encoding="utf-8") as f:
            text = f.read()
    except errors.UserError as e:
        raise type(e)(f"--reference_json: {e}") from None
    lines = [line for line in text.splitlines() if line.strip().startswith("{")]
    try:
        raw = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise errors.BadInput(
            f"--reference_json={path}: not the reference's JSON line ({e})"
        ) from None
    if raw.get("cpu") and raw["cpu"] != cpu:
        raise errors.BadInput(
            f"--reference_json={path}: measured on {raw['cpu']!r}, this is {cpu!r}; "
            "ratios need both on one machine in one run"
        )
    ref = {"cpu": raw.get("cpu"), "torch": raw.get("torch"), "threads": raw.get("threads")}
    if preset == "demo":
        return {**ref, **_demo_reference(path, raw, phase_steps)}
    if preset != "updown":
        raise errors.BadInput(
            f"--reference_json={path}: the reference runs the updown sizes; --preset={preset}"
        )
    if DEMO_KEY in raw:
        raise errors.BadInput(
            f"--reference_json={path}: the reference's demo XE phase "
            "(scripts/reference_demo_phase.py); compare it with --preset=demo --only=phase"
        )
    if raw.get("images") != batch_size:
        raise errors.BadInput(
            f"--reference_json={path}: measured at {raw.get('images')} images per batch; "
            f"run with --batch_size={raw.get('images')}"
        )
    for key, (group, name, scale) in _REFERENCE_KEYS.items():
        value = raw.get(group, {}).get(name)
        if value is not None:
            ref[key] = value * scale
    if len(ref) == 3:
        raise errors.BadInput(
            f"--reference_json={path}: none of {sorted(n for _, n, _ in _REFERENCE_KEYS.values())}"
        )
    return ref


def _demo_reference(path: str, raw: dict, phase_steps: int | None) -> dict:
    """The demo-phase figures of the reference's JSON line `raw` (`load_reference`)."""
    if DEMO_KEY not in raw:
        raise errors.BadInput(
            f"--reference_json={path}: no {DEMO_KEY!r}, the figure --preset=demo compares "
            "(scripts/reference_demo_phase.py's line); bench_updown_torch.py's has none: "
            "that reference runs the updown sizes"
        )
    batch = demo_batch_images()
    if raw.get("batch_images") != batch:
        raise errors.BadInput(
            f"--reference_json={path}: a phase of {raw.get('batch_images')} images per step; "
            f"the demo's is {batch} (configs/demo.flags)"
        )
    if phase_steps is not None and raw.get("steps") != phase_steps:
        raise errors.BadInput(
            f"--reference_json={path}: a phase of {raw.get('steps')} steps; "
            f"run with --phase_steps={raw.get('steps')}"
        )
    out = {DEMO_KEY: raw[DEMO_KEY], "demo_xe_phase_steps": raw.get("steps")}
    if raw.get("loop_images_per_s") is not None:
        out["demo_xe_loop_images_per_s"] = raw["loop_images_per_s"]
    return out
