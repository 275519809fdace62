"""The model directory: what training writes and what evaluation, captioning and
export read back.

    MODEL_DIR/
      flags.txt      the training flags (replay with --flagfile=MODEL_DIR/flags.txt)
      model.json     the Captioner config and the dataset facts it was trained on
      vocab.txt      the vocabulary (a copy, so the directory stands alone)
      ckpt/          latest training state: model, optimizers, step, epoch, phase
      best/          the model with the best validation CIDEr (model only)
      best.json      that checkpoint's step and scores
      phase_NAME/    the model at the end of phase NAME (xe, scst, gan)
      train/, val/   TensorBoard event files
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import tensorflow as tf

from tfcap import errors
from tfcap.data import pipeline, vocab
from tfcap.model.captioner import Captioner

MODEL_JSON = "model.json"
VOCAB_FILE = "vocab.txt"
LATEST, BEST = "ckpt", "best"


def write_model_files(model_dir: str, model: Captioner, data_dir: str) -> None:
    """Writes model.json and vocab.txt for a new training run."""
    meta = pipeline.load_metadata(data_dir)
    info = {
        "captioner": model.get_config(),
        "data": {
            "data_dir": os.path.abspath(data_dir),
            "feature_dim": meta["feature_dim"],
            "max_regions": meta["max_regions"],
            "max_caption_len": meta["max_caption_len"],
            "vocab_size": meta["vocab_size"],
        },
    }
    os.makedirs(model_dir, exist_ok=True)
    shutil.copyfile(os.path.join(data_dir, meta["vocab_file"]), os.path.join(model_dir, VOCAB_FILE))
    tmp = os.path.join(model_dir, MODEL_JSON + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(model_dir, MODEL_JSON))


def read_model_json(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, MODEL_JSON)
    if not os.path.exists(path):
        raise errors.MissingInput(f"{path} not found: is {model_dir!r} a tfcap.train model dir?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_model(config: dict[str, Any], feature_dim: int) -> Captioner:
    """A float32 Captioner from its config, with its weights created.

    A model trained with `--mixed_precision` has float32 weights too; inference
    and export compute in float32 whatever the training precision.
    """
    model = Captioner.from_config({k: v for k, v in config.items() if k != "dtype"})
    model.build((None, None, feature_dim))
    return model


CHOICES = ("best", "latest", "xe", "scst", "gan")


def checkpoint_path(model_dir: str, which: str = "best") -> str:
    """The newest checkpoint of `which`: "best" (falls back to latest), "latest", or a
    phase name (the model at the end of that phase)."""
    if which not in CHOICES:
        raise ValueError(f"which must be one of {CHOICES}, got {which!r}")
    order = {"best": [BEST, LATEST], "latest": [LATEST]}.get(which, [f"phase_{which}"])
    for sub in order:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
        if path:
            return path
    raise errors.MissingInput(f"no checkpoint in {model_dir}/{{{','.join(order)}}}")


def load_model(model_dir: str, which: str = "best") -> tuple[Captioner, vocab.Vocab, dict]:
    """The trained model, its vocabulary and model.json."""
    info = read_model_json(model_dir)
    model = _restored(info, checkpoint_path(model_dir, which))
    return model, vocab.Vocab.load(os.path.join(model_dir, VOCAB_FILE)), info


def model_at(path: str) -> Captioner:
    """The model of one checkpoint `path` (`MODEL_DIR/SUB/ckpt-N`), e.g. an older one."""
    return _restored(read_model_json(os.path.dirname(os.path.dirname(path))), path)


def _restored(info: dict[str, Any], path: str) -> Captioner:
    model = build_model(info["captioner"], info["data"]["feature_dim"])
    tf.train.Checkpoint(model=model).restore(
        path
    ).expect_partial().assert_existing_objects_matched()
    return model
