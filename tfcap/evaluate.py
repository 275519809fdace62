r"""Decodes a split with a trained model, writes COCO-format results, prints scores.

  python -m tfcap.evaluate --model_dir=RUN --split=test --beam_size=3 \
      --results_json=RUN/results_test.json

Prints one JSON line: pycocoevalcap's scores (Bleu_1..4, METEOR, ROUGE_L, CIDEr)
plus the split, image count and decoding settings. With --swap_control the
same captions are also scored as if each image had had another image's
features (`swapped_CIDEr`): a model that looks at the image scores far lower
there. --examples=N logs N captions beside a reference.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from tfcap import cli, cli_flags, errors

_SPLIT = flags.DEFINE_string("split", "test", "Split to decode.")
_RESULTS_JSON = flags.DEFINE_string("results_json", None, "Write COCO-format results here.")
_DISCRIMINATOR_DIR = flags.DEFINE_string(
    "discriminator_dir",
    None,
    "A model dir with a gan phase: its discriminator judges the captions (d_human: mean "
    "p(human) of the generated captions; d_human_refs: of a human reference).",
)
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 0, "Decode only this many (0: all).", lower_bound=0
)
_EVAL_SCORERS = flags.DEFINE_list(
    "eval_scorers", ["bleu", "meteor", "rouge", "cider"], "pycocoevalcap scorers to run."
)
_SWAP_CONTROL = flags.DEFINE_bool(
    "swap_control", False, "Also score captions against the wrong images' references."
)
_EXAMPLES = flags.DEFINE_integer(
    "examples", 0, "Print a score table and this many captions beside a reference to stderr."
)

for _name in ("model_dir", "data_dir", "beam_size", "length_penalty", "checkpoint"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort


def evaluate(
    model_dir: str,
    data_dir: str | None,
    split: str,
    beam_size: int = 3,
    alpha: float = 0.0,
    checkpoint: str = "best",
    max_images: int = 0,
    scorers=("bleu", "meteor", "rouge", "cider"),
    swap_control: bool = False,
    results_json: str | None = None,
    discriminator_dir: str | None = None,
):
    """Decodes and scores a split; returns (scores dict, Decoded, references)."""
    from tfcap import checkpoints, inference, metrics
    from tfcap.diversity import diversity

    metrics.check_options(scorers)  # refuse before decoding, not after
    if results_json:
        _check_writable(results_json)
    model, words, info = checkpoints.load_model(model_dir, checkpoint)
    data_dir = data_dir or info["data"]["data_dir"]
    decoded = inference.decode_split(
        model,
        words,
        data_dir,
        split,
        beam_size=beam_size,
        alpha=alpha,
        max_images=max_images or None,
    )
    refs_all = inference.references(data_dir, split)
    refs = {int(i): refs_all[int(i)] for i in decoded.image_ids}
    results = decoded.results()
    if results_json:
        tmp = results_json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f)
        os.replace(tmp, results_json)
    scores = metrics.score_captions(refs, {r["image_id"]: r["caption"] for r in results}, scorers)
    if swap_control:
        swapped = {r["image_id"]: r["caption"] for r in decoded.swapped()}
        scores["swapped_CIDEr"] = metrics.score_captions(refs, swapped, ["cider"])["CIDEr"]
    scores.update(diversity(decoded.captions))
    if discriminator_dir:
        scores.update(judge(discriminator_dir, data_dir, split, decoded))
    scores.update(split=split, images=len(results), beam_size=beam_size, checkpoint=checkpoint)
    return scores, decoded, refs


def _check_writable(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise errors.MissingInput(f"results json {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise errors.NotAFile(f"results json {path}: is a directory")


def judge(discriminator_dir: str, data_dir: str, split: str, decoded) -> dict[str, float]:
    """Mean p(human) by a gan run's discriminator, of the captions and of references."""
    import numpy as np

    from tfcap.data import pipeline
    from tfcap.training import discriminator_step as dstep
    from tfcap.training.gan import load_discriminator

    d = load_discriminator(discriminator_dir)
    ds = pipeline.make_dataset(data_dir, split, 50, seq_per_img=1, deterministic=True)
    gen, ref, row = [], [], 0
    for batch in ds:
        n = int(batch["image_id"].shape[0])
        if not np.array_equal(batch["image_id"].numpy(), decoded.image_ids[row : row + n]):
            raise ValueError(f"{split}: images came in another order than when decoding")
        ids = decoded.ids[row : row + n]
        human = dstep.human_ids(batch["captions"][:, 0], ids.shape[1])
        feats, mask = batch["features"], batch["region_mask"]
        gen.append(dstep.human_probability(d, feats, mask, ids, 1).numpy())
        ref.append(dstep.human_probability(d, feats, mask, human, 1).numpy())
        row += n
    return {
        "d_human": float(np.mean(np.concatenate(gen))),
        "d_human_refs": float(np.mean(np.concatenate(ref))),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not cli_flags.MODEL_DIR.value:
        raise app.UsageError("--model_dir is required")
    scores, decoded, refs = evaluate(
        cli_flags.MODEL_DIR.value,
        cli_flags.DATA_DIR.value,
        _SPLIT.value,
        cli_flags.BEAM_SIZE.value,
        cli_flags.LENGTH_PENALTY.value,
        cli_flags.CHECKPOINT.value,
        _MAX_IMAGES.value,
        _EVAL_SCORERS.value,
        _SWAP_CONTROL.value,
        _RESULTS_JSON.value,
        _DISCRIMINATOR_DIR.value,
    )
    if _EXAMPLES.value:
        print(report(scores, decoded, refs, _EXAMPLES.value), file=sys.stderr)
    print(json.dumps(scores))


TABLE_KEYS = (
    "Bleu_1",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "CIDEr",
    "swapped_CIDEr",
    "d_human",
    "distinct_1",
    "distinct_2",
    "unique_captions",
    "vocabulary",
    "mean_length",
)


def score_table(rows: dict[str, dict]) -> list[str]:
    """Markdown lines: one row per label, the `TABLE_KEYS` that every row has.

    >>> score_table({"xe": {"CIDEr": 1.2345, "vocabulary": 30}})
    ['| model | CIDEr | vocabulary |', '|---|---|---|', '| xe | 1.234 | 30 |']
    """
    keys = [k for k in TABLE_KEYS if all(k in scores for scores in rows.values())]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, scores in rows.items():
        cells = [
            f"{scores[k]:.3f}" if isinstance(scores[k], float) else str(scores[k]) for k in keys
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def report(scores: dict, decoded, refs: dict, examples: int) -> str:
    """A readable score table and a few captions beside a reference (markdown)."""
    lines = score_table({scores.get("checkpoint", "model"): scores})
    lines += ["", "| image | generated | a reference |", "|---|---|---|"]
    for i in range(min(examples, len(decoded.captions))):
        image_id = int(decoded.image_ids[i])
        lines.append(f"| {image_id} | {decoded.captions[i]} | {refs[image_id][0]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
