"""tfcap.experiments.quality: forking a model dir at a phase's end, and the mean ± sd table."""

import json
import os

import pytest
import tensorflow as tf
from conftest import run_train

from tfcap.experiments import quality


def test_fork_at_the_end_of_xe_drops_what_came_after(shapes_dir, tmp_path):
    source = tmp_path / "source"
    run_train(shapes_dir, source, phases="xe,scst", train_steps=4, scst_steps=4)
    xe_end = int(tf.train.latest_checkpoint(str(source / "phase_xe")).rsplit("-", 1)[1])
    assert (source / "phase_scst").is_dir()

    copy = tmp_path / "copy"
    quality.fork(str(source), str(copy), "xe")
    state = tf.train.get_checkpoint_state(str(copy / "ckpt"))
    steps = [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]
    assert max(steps) == xe_end and int(state.model_checkpoint_path.rsplit("-", 1)[1]) == xe_end
    assert not (copy / "phase_scst").exists() and not (copy / "scores_scst_val.json").exists()
    assert (copy / "phase_xe").is_dir() and (source / "phase_scst").is_dir()  # source untouched
    # Training the copy on runs scst again from the xe snapshot.
    run_train(shapes_dir, copy, phases="xe,scst", train_steps=4, scst_steps=4)
    assert (copy / "phase_scst").is_dir()
    with pytest.raises(quality.errors.MissingInput, match="phase_gan: no snapshot"):
        quality.fork(str(source), str(tmp_path / "other"), "gan")


def test_table_is_mean_and_sd_over_seeds(tmp_path):
    for seed, cider in ((0, 1.0), (7, 1.2), (42, 1.4)):
        run = tmp_path / "variant" / f"seed_{seed}"
        os.makedirs(run)
        scores = {"test": {"CIDEr": cider}, "test1000": {"CIDEr": cider / 2}}
        result = {"seed": seed, "seconds": {"xe": 10.0 * seed}, "phases": {"xe": scores}}
        (run / "result.json").write_text(json.dumps(result))
    (tmp_path / "data_test1000").mkdir()  # data dirs are not variants
    lines, numbers = quality.table(str(tmp_path), "test")
    mean, sd = numbers["variant/xe"]["CIDEr"]
    assert mean == pytest.approx(1.2) and sd == pytest.approx(0.2)  # sample sd (ddof 1)
    assert sorted(numbers["variant/xe"]["seeds"]) == [0, 7, 42]
    assert "| variant | xe | 3 | 1.200 ± 0.200 |" in "\n".join(lines)
    _, half = quality.table(str(tmp_path), "test1000")
    assert half["variant/xe"]["CIDEr"][0] == pytest.approx(0.6)


def test_table_shows_the_gan_discriminators_val_accuracies(tmp_path):
    for seed, wrong in ((0, 0.8), (1, 0.9), (2, 1.0)):
        run = tmp_path / "gan" / f"seed_{seed}"
        os.makedirs(run)
        scores = {"test": {"CIDEr": 1.0}, "test1000": {"CIDEr": 1.0}}
        result = {
            "seed": seed,
            "seconds": {},
            "phases": {"scst": scores, "gan": scores},
            "gan_discriminator_val": {"acc_real": 0.75, "acc_wrong": wrong, "acc_fake": 0.5},
        }
        (run / "result.json").write_text(json.dumps(result))
    lines, numbers = quality.table(str(tmp_path), "test")
    assert numbers["gan/gan"]["D_acc_wrong"][0] == pytest.approx(0.9)
    assert numbers["gan/gan"]["D_acc_real"] == pytest.approx((0.75, 0.0))
    assert "D_acc_wrong" not in numbers["gan/scst"]
    assert "| D_acc_real | D_acc_wrong |" in lines[0]
