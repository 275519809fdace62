r"""The PyTorch Up-Down reference's whole demo XE phase, timed: its figure for tfcap.bench.

  PEER_SCT=../shared/reference/self-critical.pytorch /tmp/ref-venv/bin/python \
      scripts/reference_demo_phase.py --data_dir=runs/bench/reference_data [--steps=1251]

Runs in the reference's venv (../shared/reference/setup.sh), not tfcap's. It
imports and drives the reference's own `captioning` package (PEER_SCT: its
checkout): options parsed by its `parse_opt` from `configs/updown/updown.yml`
with the demo's sizes and schedule on the command line (rnn and word
embedding 256, attention hidden 128, dropout 0.3, 256-d features, batch 20
images x 5 captions, Adam lr 1e-3 x0.8 every 2 epochs, gradient values
clipped at 0.1, no scheduled sampling, no SCST); its `DataLoader` on
--data_dir (written from tfcap's demo data by scripts/reference_demo_data.py);
`models.setup` (UpDown) and `LossWrapper` (`LanguageModelCriterion`). The loop
is its `tools/train.py`'s for XE, step by step: the learning rate set at
each epoch start, `get_batch("train")`, `zero_grad`, loss, `backward`,
`clip_grad_value_`, `step`, `loss.item()`, an epoch counted when the loader
wraps. Left out: `DataParallel` (a pass-through without GPUs), CUDA
synchronisation, its TensorBoard scalars, validation and checkpoints (tfcap's
phase figure includes its own validations and checkpoints, so the ratio
leans the reference's way).

One JSON line on stdout, as ../shared/reference/bench_updown_torch.py writes:
`seconds` from process start (interpreter and imports included, as tfcap's
phase figure includes its startup) to the end of the last step,
`loop_seconds` of the loop alone, `demo_xe_phase_images_per_s` =
steps x 20 / seconds and `loop_images_per_s`. Progress goes to stderr.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time

DEMO = {  # the demo's sizes and XE schedule (configs/demo.flags, tfcap.model.presets "demo")
    "rnn_size": 256,
    "input_encoding_size": 256,
    "att_hid_size": 128,
    "drop_prob_lm": 0.3,
    "batch_size": 20,
    "seq_per_img": 5,
    "learning_rate": 1e-3,
    "learning_rate_decay_start": 0,
    "learning_rate_decay_every": 2,
    "learning_rate_decay_rate": 0.8,
    "grad_clip_mode": "value",
    "grad_clip_value": 0.1,
    "scheduled_sampling_start": -1,
    "self_critical_after": -1,
    "max_epochs": -1,
}


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


_PROCESS_START = time.perf_counter() - _process_age()  # interpreter start included


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model_name() -> str:
    """The CPU's model name as tfcap.perf.timing.machine() reads it (/proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", required=True, help="scripts/reference_demo_data.py's output")
    ap.add_argument("--steps", type=int, default=1251, help="XE steps (the demo's 1,251)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--feature_dim", type=int, default=256, help="fc and att feature width")
    ap.add_argument("--log_every", type=int, default=100, help="progress line every N steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    for name in ("data.json", "data_label.h5", "att", "fc"):
        if not os.path.exists(os.path.join(args.data_dir, name)):
            ap.error(f"--data_dir={args.data_dir}: no {name} (scripts/reference_demo_data.py)")
    return args


def reference_options(peer: str, opts, args: argparse.Namespace, checkpoint_dir: str):
    """The reference's option namespace: its parser, updown.yml, the demo's values."""
    overrides = {
        **DEMO,
        "caption_model": "updown",
        "input_json": os.path.join(args.data_dir, "data.json"),
        "input_label_h5": os.path.join(args.data_dir, "data_label.h5"),
        "input_att_dir": os.path.join(args.data_dir, "att"),
        "input_fc_dir": os.path.join(args.data_dir, "fc"),
        "fc_feat_size": args.feature_dim,
        "att_feat_size": args.feature_dim,
        "checkpoint_path": checkpoint_dir,
    }
    argv = ["train.py", "--cfg", os.path.join(peer, "configs", "updown", "updown.yml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    saved, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return opts.parse_opt()
    finally:
        sys.argv = saved


def build(peer: str, args: argparse.Namespace, checkpoint_dir: str):
    """The reference's options, DataLoader, UpDown model, LossWrapper and Adam, as
    tools/train.py builds them (on the CPU)."""
    with contextlib.redirect_stdout(sys.stderr):  # its optional-dependency notices
        from captioning import models
        from captioning.data.dataloader import DataLoader
        from captioning.modules.loss_wrapper import LossWrapper
        from captioning.utils import misc, opts

        opt = reference_options(peer, opts, args, checkpoint_dir)
        loader = DataLoader(opt)
        opt.vocab_size, opt.seq_length = loader.vocab_size, loader.seq_length
        opt.vocab = loader.get_vocab()
        model = models.setup(opt)
        del opt.vocab
    lw_model = LossWrapper(model, opt)
    optimizer = misc.build_optimizer(model.parameters(), opt)
    return opt, loader, model, lw_model, optimizer


def train_xe(opt, loader, model, lw_model, optimizer, steps: int, log_every: int):
    """tools/train.py's XE loop for `steps` steps; returns (epochs ended, last loss)."""
    import torch
    from captioning.utils import misc

    lw_model.train()
    start = time.perf_counter()
    iteration, epoch, epoch_done = 0, 0, True
    while iteration < steps:
        if epoch_done:  # its learning-rate schedule, set at each epoch start
            decay_start = opt.learning_rate_decay_start
            if epoch > decay_start >= 0:
                frac = (epoch - decay_start) // opt.learning_rate_decay_every
                opt.current_lr = opt.learning_rate * opt.learning_rate_decay_rate**frac
            else:
                opt.current_lr = opt.learning_rate
            misc.set_lr(optimizer, opt.current_lr)
            epoch_done = False
        data = loader.get_batch("train")
        optimizer.zero_grad()
        gts = data["gts"]
        feats = data["fc_feats"], data["att_feats"], data["labels"], data["masks"]
        out = lw_model(
            *feats, data["att_masks"], gts, torch.arange(0, len(gts)), False, False, False
        )
        loss = out["loss"].mean()
        loss.backward()
        if opt.grad_clip_value != 0:
            torch.nn.utils.clip_grad_value_(model.parameters(), opt.grad_clip_value)
        optimizer.step()
        train_loss = loss.item()
        iteration += 1
        if data["bounds"]["wrapped"]:
            epoch += 1
            epoch_done = True
        if iteration % log_every == 0 or iteration == steps:
            rate = iteration * opt.batch_size / (time.perf_counter() - start)
            note(
                f"iter {iteration} (epoch {epoch}) loss {train_loss:.3f} "
                f"lr {opt.current_lr:.2e} | {rate:.1f} img/s"
            )
    return epoch, train_loss


def main() -> None:
    args = parse_args()
    peer = os.environ.get("PEER_SCT")
    if not peer or not os.path.isdir(os.path.join(peer, "captioning")):
        sys.exit("set PEER_SCT to the reference's self-critical.pytorch checkout")
    peer = os.path.abspath(peer)
    sys.path.insert(0, peer)

    import random
    import tempfile

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as checkpoint_dir:  # parse_opt names one; none written
        opt, loader, model, lw_model, optimizer = build(peer, args, checkpoint_dir)
        train_images = len(loader.dataset.split_ix["train"])
        note(
            f"reference UpDown, {sum(p.numel() for p in model.parameters())} parameters, "
            f"vocabulary {opt.vocab_size}, {train_images} train images; "
            f"{args.steps} steps of {opt.batch_size} images"
        )
        load_before = os.getloadavg()[0]
        loop_start = time.perf_counter()
        epochs, loss = train_xe(opt, loader, model, lw_model, optimizer, args.steps, args.log_every)
        end = time.perf_counter()

    seconds, loop_seconds = end - _PROCESS_START, end - loop_start
    images = args.steps * opt.batch_size
    result = {
        "bench": "self-critical.pytorch UpDown, demo XE phase (CPU)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model_name(),
        "steps": args.steps,
        "batch_images": opt.batch_size,
        "seq_per_img": opt.seq_per_img,
        "train_images": train_images,
        "feature_dim": args.feature_dim,
        "vocab_size": opt.vocab_size,
        "epochs": epochs,
        "final_loss": round(loss, 4),
        "startup_seconds": round(loop_start - _PROCESS_START, 3),
        "seconds": round(seconds, 3),
        "loop_seconds": round(loop_seconds, 3),
        "demo_xe_phase_images_per_s": round(images / seconds, 3),
        "loop_images_per_s": round(images / loop_seconds, 3),
        # A busy machine slows 2 OpenMP threads far more than it slows 1 (their spin-waits):
        # the load average beside the figure tells a quiet run from a crowded one.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
