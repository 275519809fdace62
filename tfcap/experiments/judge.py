"""An independent judge of human-likeness: a discriminator trained after the fact.

None of the generators it judges was trained against it. It learns, on the
train split, to tell an image's human captions (real) from the captions each
judged model writes for that image (fake) and from another image's human
captions (wrong); it then scores the models' test captions. `d_human` is its
mean p(human) of a model's test captions; its accuracies on the test split's
real, fake and wrong pairs show how well it tells them apart.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfcap.data import pipeline
from tfcap.model.discriminator import Discriminator
from tfcap.training import discriminator_step as dstep


def _fakes(image_ids, captions: dict[str, dict[int, np.ndarray]], length: int) -> tf.Tensor:
    """int32 `[batch * models, length]`: each model's caption of each image, image-major."""
    rows = [captions[m][int(i)][:length] for i in image_ids for m in sorted(captions)]
    out = np.zeros([len(rows), length], np.int32)
    for r, ids in enumerate(rows):
        out[r, : len(ids)] = ids
    return tf.constant(out)


def train_judge(
    data_dir: str,
    train_captions: dict[str, dict[int, np.ndarray]],
    steps: int = 800,
    batch_size: int = 20,
    seed: int = 0,
    hidden: int = 256,
) -> Discriminator:
    """A discriminator trained on train images' human captions against `train_captions`
    (model name -> image id -> token ids of its caption) and wrong-image pairs."""
    meta = pipeline.load_metadata(data_dir)
    k = len(train_captions)
    keras.utils.set_random_seed(seed)
    d = Discriminator(meta["vocab_size"], embed_dim=hidden, hidden=hidden, max_len=17)
    d.build((None, None, meta["feature_dim"]))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(d.trainable_variables)
    update = dstep.make_d_step(tf.distribute.get_strategy(), d, optimizer, seq_per_img=k)
    ds = pipeline.make_dataset(
        data_dir,
        "train",
        batch_size,
        seq_per_img=k,
        shuffle=True,
        repeat=True,
        seed=seed,
        drop_remainder=True,
    )
    length = meta["max_caption_len"] + 1
    for batch, _ in zip(ds, range(steps), strict=False):
        update(batch, _fakes(batch["image_id"].numpy(), train_captions, length))
    return d


def judge(
    d: Discriminator,
    data_dir: str,
    split: str,
    captions: dict[str, dict[int, np.ndarray]],
    keep: set[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Per model, mean p(human) of its captions of `split` (`d_human`); for "human" the
    same of the human captions; for "judge" its accuracy on the human (real), model
    (fake) and wrong-image pairs of `split`. `keep`: only these image ids."""
    meta = pipeline.load_metadata(data_dir)
    length = meta["max_caption_len"] + 1
    names, k = sorted(captions), len(captions)
    probs = {m: [] for m in [*names, "human"]}
    correct, count = np.zeros(3), np.zeros(3)
    for batch in pipeline.make_dataset(data_dir, split, 50, seq_per_img=k):
        if keep is not None:
            rows = np.isin(batch["image_id"].numpy(), list(keep))
            if not rows.any():
                continue
            batch = {key: tf.boolean_mask(value, rows) for key, value in batch.items()}
        pairs = dstep.make_pairs(batch, _fakes(batch["image_id"].numpy(), captions, length), k)
        logits = d.score(batch["features"], batch["region_mask"], pairs.ids)
        _, sums = dstep.d_loss(logits, pairs)
        correct, count = correct + sums["correct"].numpy(), count + sums["count"].numpy()
        p = tf.sigmoid(logits).numpy().reshape(-1, 3, k)  # [batch, kind, k]
        for j, m in enumerate(names):
            probs[m].append(p[:, dstep.FAKE, j])
        probs["human"].append(p[:, dstep.REAL].ravel())
    out = {m: {"d_human": float(np.mean(np.concatenate(v)))} for m, v in probs.items()}
    acc = correct / np.maximum(count, 1)
    out["judge"] = {f"acc_{kind}": float(a) for kind, a in zip(dstep.KINDS, acc, strict=True)}
    return out
