"""The training loop: one phase, from the step its counter holds to its last step.

    for step in range(start, phase.total_steps):
        metrics = phase.step_fn(next(batches), step)  # one update (tf.function inside)
        guard.check(...)                               # NaN/Inf: skipped, counted
        run.advance(phase.counter)                     # counters in the checkpoint
        progress line / validation / checkpoint when due

The loop knows nothing of xe, scst or gan: they differ only in their
`Phase` (`tfcap.training.phases` builds them). The caller writes what a
phase leaves when it ends (`phases.end_phase`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from absl import logging

from tfcap.training import guard, input, logs, validation
from tfcap.training.state import RunState

# (distributed batch, phase step number) -> float metrics, with "skipped" > 0 when
# an update of the step was not applied (not finite).
StepFn = Callable[[object, int], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of steps with its own counter.

    Attributes:
        name: the prefix of its progress lines and TensorBoard scalars.
        counter: its counter in `RunState.counters`.
        total_steps: it ends when its counter reaches this.
        step_fn: one step (`StepFn`).
        input_seed_offset: its input order (`tfcap.training.input`).
        global_steps: whether its steps advance the global step (the
            discriminator's pre-training does not).
        validate: whether it validates every `eval_every` steps and at its end.
        checkpoint_every: steps between checkpoints (0: only at its end).
        extra_validation: more val figures when it validates (`() -> dict`), e.g.
            the discriminator's accuracies; logged as `val/NAME/KEY`.
    """

    name: str
    counter: str
    total_steps: int
    step_fn: StepFn
    input_seed_offset: int = 0
    global_steps: bool = True
    validate: bool = True
    checkpoint_every: int = 0
    extra_validation: Callable[[], dict[str, float]] | None = None


@dataclasses.dataclass
class Hooks:
    """What the loop calls besides the step: logs, validation, the fault guard."""

    logs: logs.Logs
    validator: validation.Validator
    guard: guard.NonFiniteGuard
    faults: guard.FaultInjector
    inputs: input.InputConfig
    log_every: int = 50
    eval_every: int = 500


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def run_phase(run: RunState, phase: Phase, hooks: Hooks) -> bool:
    """Trains `phase` from its counter to `phase.total_steps`.

    Returns True when it ran steps (and so ended in this call), False when its
    counter was already at the end.
    """
    start = run.counter(phase.counter)
    if start >= phase.total_steps:
        logging.info("%s: done (%d/%d steps)", phase.name, start, phase.total_steps)
        return False
    logging.info("%s: steps %d..%d", phase.name, start, phase.total_steps)
    batches = input.phase_batches(run.strategy, hooks.inputs, start, phase.input_seed_offset)
    hooks.logs.start(start)
    for step in range(start, phase.total_steps):
        if phase.global_steps:
            hooks.faults.before(run.global_step + 1)
        metrics = phase.step_fn(next(batches), step)
        skipped = metrics.pop("skipped")
        if hooks.guard.check(phase.name, skipped, run.global_step + 1, run.last_checkpoint):
            hooks.logs.scalars(
                "train", {f"{phase.name}/skipped_steps": run.skipped}, run.global_step + 1
            )
        run.advance(phase.counter, global_step=phase.global_steps)
        done = step + 1
        if _due(done, hooks.log_every, phase.total_steps):
            metrics["skipped_steps"] = run.skipped
            hooks.logs.progress(phase.name, done, phase.total_steps, metrics, run.global_step)
        if phase.validate and _due(done, hooks.eval_every, phase.total_steps):
            score, decoded = hooks.validator.cider()
            hooks.logs.validation(phase.name, run.global_step, score, decoded, hooks.validator.refs)
            run.keep_if_best(score, phase.name, len(decoded.captions))
            if phase.extra_validation is not None:
                extra = phase.extra_validation()
                hooks.logs.scalars(
                    "val", {f"{phase.name}/{k}": v for k, v in extra.items()}, run.global_step
                )
                logging.info(
                    "%s val: %s", phase.name, " ".join(f"{k} {v:.3f}" for k, v in extra.items())
                )
        if _due(done, phase.checkpoint_every, phase.total_steps):
            run.save()
    return True
