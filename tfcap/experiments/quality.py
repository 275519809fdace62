r"""Caption quality over seeds: train xe -> scst -> gan per seed, score every phase, one table.

  python -m tfcap.experiments.quality --work_dir=runs/quality --name=baseline \
      [--seeds=0,7,42] [--train_flags=--text_attention=true,...] [--train_phases=xe,scst,gan]
  python -m tfcap.experiments.quality --work_dir=runs/quality --table   # every variant so far

Data: the demo's synthetic set (`configs/demo_data.flags`) with a test split of
`--test_images` scenes (default 1,000) instead of 250; its train and val
splits, and so its vocabulary and every training run, are the demo's, and its
first 250 test scenes are the demo's test split. Each variant `--name` trains
with `configs/demo.flags` plus `--train_flags` for each seed (`WORK_DIR/NAME/
seed_S/model`, resumable: run the same command again), then decodes every
phase's model greedily and scores it with pycocoevalcap on `test` (the 250
demo scenes) and `test1000`:

- CIDEr, Bleu_4, METEOR, ROUGE_L; `swapped_CIDEr`: the same captions against
  other scenes' references (how much they depend on the image);
- `d_human`: human-likeness by an independent judge (`tfcap.experiments.judge`),
  a discriminator trained afterwards on train images against every phase's
  captions, that no generator was trained against; `human` rows: its p(human)
  of human captions;
- distinct_1, distinct_2, vocabulary, unique_captions, `novel` (share of
  captions not in the train split), `bad_endings` (share ending on a function
  word such as "a", "of", "next to");
- gan rows: `D_acc_real`, `D_acc_wrong`, the gan phase's own discriminator on
  val at its last validation (human captions judged human; another image's
  human captions judged not human).

Each seed's figures go to `WORK_DIR/NAME/seed_S/result.json`; the table gives
mean and standard deviation over the seeds of each variant and phase, and
`WORK_DIR/table.json` the same numbers.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

from tfcap import cli, errors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where data, runs and tables go.")
_NAME = flags.DEFINE_string("name", "baseline", "The variant (a row group of the table).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "7", "42"], "Training seeds (at least 3 for a claim).")
_TRAIN_FLAGS = flags.DEFINE_list(
    "train_flags", [], "Extra tfcap.train flags of this variant, e.g. --text_attention=true."
)
# train_ prefixes: tfcap.train's own --phases, --scst_steps, --gan_steps share the process
# whenever both are imported (the test suite).
_PHASES = flags.DEFINE_list("train_phases", ["xe", "scst", "gan"], "Phases to train and score.")
_XE_STEPS = flags.DEFINE_integer("train_xe_steps", 1251, "XE steps.", lower_bound=1)
_SCST_STEPS = flags.DEFINE_integer("train_scst_steps", 300, "SCST steps.", lower_bound=0)
_GAN_STEPS = flags.DEFINE_integer("train_gan_steps", 300, "GAN generator steps.", lower_bound=0)
_TEST_IMAGES = flags.DEFINE_integer("test_images", 1000, "Test scenes.", lower_bound=250)
_JUDGE_STEPS = flags.DEFINE_integer("judge_steps", 800, "Judge training steps.", lower_bound=0)
_TABLE = flags.DEFINE_bool("table", False, "Only print the table of what is in --work_dir.")
_FORK = flags.DEFINE_string(
    "fork",
    None,
    "VARIANT or VARIANT:PHASE (default xe): start each seed from that variant's model at "
    "the end of PHASE (its checkpoint there), e.g. to compare scst settings on the same "
    "xe models.",
)

KEYS = (
    "CIDEr",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "swapped_CIDEr",
    "d_human",
    "distinct_1",
    "distinct_2",
    "vocabulary",
    "unique_captions",
    "novel",
    "bad_endings",
)
# gan rows: the trained D on val, human captions judged human / other images' judged not.
D_KEYS = ("D_acc_real", "D_acc_wrong")
SPLITS = ("test", "test1000")
DEMO_TEST = 250


def _run(argv: list[str], log: str) -> None:
    with open(log, "a", encoding="utf-8") as out:
        proc = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        with open(log, encoding="utf-8") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}); {log}:\n{tail}")


def prepare_data(work_dir: str, test_images: int) -> str:
    """The demo data with `test_images` test scenes, prepared once in WORK_DIR/data."""
    data_dir = os.path.join(work_dir, f"data_test{test_images}")
    meta_path = os.path.join(data_dir, "dataset.json")
    current = False
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            current = "cider_df_eos" in json.load(f)  # written by this tfcap's prepare
    if not current:
        logging.info("preparing %s", data_dir)
        _run(
            [
                sys.executable,
                "-m",
                "tfcap.data.prepare",
                "--flagfile=configs/demo_data.flags",
                f"--shapes_sizes=train=4000,val=250,test={test_images}",
                f"--output_dir={data_dir}",
                "--overwrite",
            ],
            os.path.join(work_dir, "prepare.log"),
        )
    return data_dir


def fork(source: str, model_dir: str, phase: str = "xe") -> None:
    """Copies the model dir `source` as it was at the end of its `phase`."""
    import shutil

    import tensorflow as tf

    end = tf.train.latest_checkpoint(os.path.join(source, f"phase_{phase}"))
    if end is None:
        raise errors.MissingInput(f"{source}/phase_{phase}: no snapshot to fork from")
    step = int(end.rsplit("-", 1)[1])
    shutil.copytree(source, model_dir)
    ckpt_dir = os.path.join(model_dir, "ckpt")
    state = tf.train.get_checkpoint_state(ckpt_dir)
    paths = list(state.all_model_checkpoint_paths)
    keep = [p for p in paths if int(p.rsplit("-", 1)[1]) <= step]
    if not keep or int(keep[-1].rsplit("-", 1)[1]) != step:
        shutil.rmtree(model_dir)
        raise errors.BadInput(f"{source}/ckpt no longer holds ckpt-{step}, the end of {phase}")
    for p in paths:
        if p not in keep:
            for f in tf.io.gfile.glob(p + ".*"):
                os.remove(f)
    names = [os.path.basename(p) for p in keep]  # relative: the copy stays movable
    tf.compat.v1.train.update_checkpoint_state(ckpt_dir, names[-1], names)
    later = {"xe": ("scst", "gan"), "scst": ("gan",), "gan": ()}[phase]
    names = [f"phase_{p}" for p in later] + [f"scores_{p}_val.json" for p in later]
    for name in names + (["discriminator.json"] if "gan" in later else []):
        path = os.path.join(model_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    best = os.path.join(model_dir, "best.json")
    if os.path.exists(best):
        with open(best, encoding="utf-8") as f:
            if json.load(f)["step"] > step:
                os.remove(best)
                shutil.rmtree(os.path.join(model_dir, "best"), ignore_errors=True)


def train(data_dir: str, run_dir: str, seed: int) -> dict[str, float]:
    """Trains (or resumes) one seed; returns each phase's seconds from the log."""
    model_dir, log = os.path.join(run_dir, "model"), os.path.join(run_dir, "train.log")
    os.makedirs(run_dir, exist_ok=True)
    if _FORK.value and not os.path.exists(model_dir):
        variant, _, phase = _FORK.value.partition(":")
        source = os.path.join(os.path.dirname(os.path.dirname(run_dir)), variant)
        fork(os.path.join(source, os.path.basename(run_dir), "model"), model_dir, phase or "xe")
    argv = [
        sys.executable,
        "-m",
        "tfcap.train",
        "--flagfile=configs/demo.flags",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        f"--seed={seed}",
        f"--phases={','.join(_PHASES.value)}",
        f"--train_steps={_XE_STEPS.value}",
        f"--scst_steps={_SCST_STEPS.value}",
        f"--gan_steps={_GAN_STEPS.value}",
        "--final_metrics=false",
        *_TRAIN_FLAGS.value,
    ]
    start = time.time()
    _run(argv, log)
    logging.info("trained %s in %.0f s", model_dir, time.time() - start)
    return phase_seconds(log)


_STAMP = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*?\] (\w+): steps \d+\.\.\d+$")
_END = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*?\] (\w+) ended: kept ")


def phase_seconds(log: str) -> dict[str, float]:
    """Seconds from each phase's first step line to its end, summed over the log's runs
    (a resumed run counts its parts; D pre-training counts in gan)."""

    def when(day, clock):
        return datetime.datetime.strptime(f"2000{day} {clock}", "%Y%m%d %H:%M:%S.%f")

    seconds, started = {}, {}
    with open(log, encoding="utf-8") as f:
        for line in f:
            if m := _STAMP.match(line.strip()):
                name = "gan" if m[3] == "gan_d_pretrain" else m[3]
                started.setdefault(name, when(m[1], m[2]))
            elif (m := _END.match(line.strip())) and m[3] in started:
                span = when(m[1], m[2]) - started.pop(m[3])
                seconds[m[3]] = seconds.get(m[3], 0.0) + span.total_seconds()
    return seconds


def discriminator_val(log: str) -> dict[str, float]:
    """The gan discriminator's last val figures in the training log (`gan val: ...`)."""
    found = {}
    with open(log, encoding="utf-8") as f:
        for line in f:
            if "] gan val: " in line:
                parts = line.split("] gan val: ", 1)[1].split()
                found = {k: float(v) for k, v in zip(parts[::2], parts[1::2], strict=True)}
    return found


def score_phase(model_dir: str, data_dir: str, phase: str, train_texts: set[str]):
    """Scores of one phase's model on each split, and its greedy ids of test and train."""
    from tfcap import checkpoints, diversity, inference, metrics

    model, words, _ = checkpoints.load_model(model_dir, phase)
    refs = inference.references(data_dir, "test")
    decoded = inference.decode_split(model, words, data_dir, "test", batch_size=100)
    order = np.argsort(decoded.image_ids)
    ids = [int(decoded.image_ids[i]) for i in order]
    caps = [decoded.captions[i] for i in order]
    out = {}
    for split, n in (("test", DEMO_TEST), ("test1000", len(ids))):
        chosen, texts = ids[:n], caps[:n]
        cands = dict(zip(chosen, texts, strict=True))
        swapped = dict(zip(chosen, texts[1:] + texts[:1], strict=True))
        split_refs = {i: refs[i] for i in chosen}
        scores = metrics.score_captions(split_refs, cands)
        scores["swapped_CIDEr"] = metrics.score_captions(split_refs, swapped, ["cider"])["CIDEr"]
        scores.update(diversity.diversity(texts))
        scores["novel"] = diversity.novelty(texts, train_texts)
        scores["bad_endings"] = diversity.bad_endings(texts)
        out[split] = {k: v for k, v in scores.items() if k != "notes"}
    test_ids = dict(zip(decoded.image_ids.tolist(), decoded.ids, strict=True))
    train = inference.decode_split(model, words, data_dir, "train", batch_size=100)
    train_ids = dict(zip(train.image_ids.tolist(), train.ids, strict=True))
    return out, test_ids, train_ids


def run_seed(data_dir: str, run_dir: str, seed: int) -> dict:
    """Trains and scores one seed (skipped when its result.json exists)."""
    from tfcap.data import vocab
    from tfcap.experiments import judge

    path = os.path.join(run_dir, "result.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    seconds = train(data_dir, run_dir, seed)
    model_dir = os.path.join(run_dir, "model")
    from tfcap import inference

    train_refs = inference.references(data_dir, "train")
    train_texts = {" ".join(t) for c in train_refs.values() for t in vocab.tokenize_py(c)}
    result = {"seed": seed, "train_flags": _TRAIN_FLAGS.value, "seconds": seconds, "phases": {}}
    if "gan" in _PHASES.value:
        result["gan_discriminator_val"] = discriminator_val(os.path.join(run_dir, "train.log"))
    test_ids, train_ids = {}, {}
    for phase in _PHASES.value:
        logging.info("scoring %s %s", model_dir, phase)
        scores, test_ids[phase], train_ids[phase] = score_phase(
            model_dir, data_dir, phase, train_texts
        )
        result["phases"][phase] = scores
    if _JUDGE_STEPS.value:
        logging.info("training the independent judge (%d steps)", _JUDGE_STEPS.value)
        d = judge.train_judge(data_dir, train_ids, steps=_JUDGE_STEPS.value, seed=seed)
        for split, n in (("test", DEMO_TEST), ("test1000", None)):
            keep = sorted(test_ids[_PHASES.value[0]])[:n]
            subset = {p: {i: test_ids[p][i] for i in keep} for p in test_ids}
            verdict = _judge_subset(d, data_dir, subset)
            for phase in _PHASES.value:
                result["phases"][phase][split]["d_human"] = verdict[phase]["d_human"]
            result.setdefault("human", {})[split] = verdict["human"]
            result.setdefault("judge", {})[split] = verdict["judge"]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def _judge_subset(d, data_dir, captions):
    """The judge on the test images of `captions` only (a filtered copy of the split)."""
    from tfcap.experiments import judge

    keep = set(next(iter(captions.values())))
    full = {p: dict(c) for p, c in captions.items()}
    return judge.judge(d, data_dir, "test", full, keep=keep)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def table(work_dir: str, split: str = "test") -> tuple[list[str], dict]:
    """Markdown lines (mean ± sd per variant and phase on `split`) and the numbers."""
    rows, numbers = [], {}
    for name in sorted(os.listdir(work_dir)):
        seeds = []
        directory = os.path.join(work_dir, name)
        if not os.path.isdir(directory) or name.startswith("data"):
            continue
        for sub in sorted(os.listdir(directory)):
            path = os.path.join(directory, sub, "result.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    seeds.append(json.load(f))
        if not seeds:
            continue
        for phase in seeds[0]["phases"]:
            cells = {}
            for key in KEYS:
                values = [s["phases"][phase][split].get(key) for s in seeds]
                if all(v is not None for v in values):
                    cells[key] = _mean_sd(values)
            if phase == "gan":  # the training discriminator's own val figures (grounding)
                for key in D_KEYS:
                    values = [s.get("gan_discriminator_val", {}).get(key[2:]) for s in seeds]
                    if all(v is not None for v in values):
                        cells[key] = _mean_sd(values)
            secs = [s["seconds"].get(phase) for s in seeds]
            if all(x is not None for x in secs):
                cells["seconds"] = _mean_sd(secs)
            numbers[f"{name}/{phase}"] = {"seeds": [s["seed"] for s in seeds], **cells}
            rows.append((name, phase, len(seeds), cells))
    keys = [*KEYS, *D_KEYS, "seconds"]
    lines = [
        "| variant | phase | seeds | " + " | ".join(keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for name, phase, n, cells in rows:
        shown = [_cell(cells.get(k), k) for k in keys]
        lines.append(f"| {name} | {phase} | {n} | " + " | ".join(shown) + " |")
    return lines, numbers


def _cell(value, key) -> str:
    if value is None:
        return ""
    mean, sd = value
    if key in ("vocabulary", "seconds"):
        return f"{mean:.0f} ± {sd:.0f}"
    return f"{mean:.3f} ± {sd:.3f}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORK_DIR.value:
        raise app.UsageError("--work_dir is required")
    work_dir = os.path.abspath(_WORK_DIR.value)
    if not _TABLE.value:
        if not re.fullmatch(r"[\w.-]+", _NAME.value):
            raise app.UsageError(f"--name={_NAME.value!r}: letters, digits, _ . - only")
        os.makedirs(work_dir, exist_ok=True)
        data_dir = prepare_data(work_dir, _TEST_IMAGES.value)
        for seed in map(int, _SEEDS.value):
            run_dir = os.path.join(work_dir, _NAME.value, f"seed_{seed}")
            run_seed(data_dir, run_dir, seed)
    elif not os.path.isdir(work_dir):
        raise errors.MissingInput(f"--work_dir={work_dir}: no such directory")
    out = {}
    for split in SPLITS:
        lines, numbers = table(work_dir, split)
        print(f"\n{split} (greedy; mean ± sd over seeds)\n")
        print("\n".join(lines))
        out[split] = numbers
    with open(os.path.join(work_dir, "table.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    cli.run(main)
