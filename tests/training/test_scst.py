"""SCST and GAN: reward masking and shapes, baselines, the policy gradient's sign,
rewards equal to the scorers, and resume across the xe -> scst -> gan boundaries."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_train

from tfcap import checkpoints, errors
from tfcap.data import vocab
from tfcap.model.captioner import Captioner
from tfcap.rewards import bleu, cider
from tfcap.training import scst


def test_generated_mask_covers_tokens_up_to_eos():
    ids = tf.constant([[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9]])
    mask = scst.generated_mask(ids).numpy()
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]


def test_baselines():
    r = tf.constant([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(scst.baseline_of(r, 2, "mean").numpy(), [2, 1, 4, 3])
    greedy = tf.constant([0.5, 1.5])
    np.testing.assert_allclose(
        scst.baseline_of(r, 2, "greedy", greedy).numpy(), [0.5, 0.5, 1.5, 1.5]
    )
    with pytest.raises(ValueError, match="num_samples >= 2"):
        scst.baseline_of(r, 1, "mean")


def _tiny_model(vocab_size=12, regions=3, dim=4):
    tf.keras.utils.set_random_seed(0)
    model = Captioner(vocab_size, rnn_size=8, embed_dim=8, att_hidden=4, dropout=0.0, max_len=6)
    model.build((None, regions, dim))
    feats = tf.random.stateless_normal([2, regions, dim], [1, 1])
    return model, feats, tf.ones([2, regions], tf.bool)


def test_policy_loss_ignores_tokens_after_eos():
    model, feats, mask = _tiny_model()
    adv = tf.constant([1.0, -0.5])
    a = tf.constant([[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0]])
    b = tf.constant([[5, 6, 2, 9, 9, 9], [7, 2, 4, 4, 4, 4]])  # garbage after <eos>
    loss_a, _ = scst.policy_loss(model, feats, mask, a, adv, tf.constant(5.0))
    loss_b, _ = scst.policy_loss(model, feats, mask, b, adv, tf.constant(5.0))
    assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-6)
    # ...while a token before <eos> does count
    c = tf.constant([[5, 9, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0]])
    loss_c, _ = scst.policy_loss(model, feats, mask, c, adv, tf.constant(5.0))
    assert abs(float(loss_c) - float(loss_a)) > 1e-4


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_policy_gradient_sign(sign):
    """A step on a positive-advantage sample raises its log-probability (and lowers it
    for a negative advantage)."""
    model, feats, mask = _tiny_model()
    ids = model.generate(feats, mask, method="sample", num_samples=1, seed=3).ids

    def seq_log_prob():
        lp, m = model.sequence_log_probs(feats, mask, ids)
        return tf.reduce_sum(lp, axis=1).numpy()

    before = seq_log_prob()
    with tf.GradientTape() as tape:
        loss, _ = scst.policy_loss(model, feats, mask, ids, tf.constant([sign, sign]), 1.0)
    grads = tape.gradient(loss, model.trainable_variables)
    for g, v in zip(grads, model.trainable_variables, strict=True):
        v.assign_sub(0.05 * tf.convert_to_tensor(g))
    change = seq_log_prob() - before
    assert np.all(np.sign(change) == sign), change


def test_cider_reward_equals_scorer_on_strings():
    words = list(vocab.SPECIALS) + ["a", "red", "circle", "blue", "square"]
    refs_text = [["a red circle", "red circle"], ["a blue square", "blue square"]]
    scorer = cider.CiderD(refs_text, vocabulary=words, eos_id=vocab.EOS_ID)
    enc = {w: i for i, w in enumerate(words)}
    refs = np.zeros([2, 2, 5], np.int32)
    for i, image in enumerate(refs_text):
        for j, text in enumerate(image):
            toks = [enc[w] for w in text.split()] + [vocab.EOS_ID]
            refs[i, j, : len(toks)] = toks
    samples = np.array([[4, 5, 6, 2, 0], [5, 6, 2, 0, 0], [4, 7, 8, 2, 0], [4, 5, 6, 2, 0]])
    index = np.array([0, 0, 1, 1])
    got = scst.cider_reward(scorer)(samples, index, refs)
    texts = ["a red circle", "red circle", "a blue square", "a red circle"]
    _, want = scorer.score(texts, [refs_text[i] for i in index])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and got[0] > got[3]  # same caption, wrong image
    # The reward keeps the last references encoded; new references are not scored stale.
    reward = scst.cider_reward(scorer)
    np.testing.assert_array_equal(reward(samples, index, refs), got)
    swapped = reward(samples, index, refs[::-1].copy())
    _, want_swapped = scorer.score(texts, [refs_text[1 - i] for i in index])
    np.testing.assert_allclose(swapped, want_swapped, rtol=1e-6)
    np.testing.assert_array_equal(reward(samples, index, refs), got)


def test_bleu_reward():
    refs = np.array([[[4, 5, 6, 7, 2], [4, 5, 2, 0, 0]]])
    got = scst.bleu_reward()(np.array([[4, 5, 6, 7, 2], [8, 9, 2, 0, 0]]), np.array([0, 0]), refs)
    assert got[0] == pytest.approx(1.0) and got[1] == 0.0
    assert bleu.sentence_bleu((4, 5, 6), [(4, 5, 6, 7)]) < 1.0  # brevity penalty


def test_evaluator_reward_in_graph_shapes():
    words = list(vocab.SPECIALS) + ["a", "b"]
    scorer = cider.CiderD([["a b"], ["b b"]], vocabulary=words, eos_id=vocab.EOS_ID)
    reward = scst.evaluator_reward(scst.cider_reward(scorer))
    batch = {"captions": tf.constant([[[1, 4, 5, 2]]] * 2)}  # [batch 2, 1 ref, length 4]
    out = tf.function(reward, reduce_retracing=True)(batch, tf.constant([[4, 5, 2]] * 6), 3)
    assert out.shape == [6] and np.all(out.numpy() > 0)


def _weights(model_dir):
    model, _, _ = checkpoints.load_model(str(model_dir), "latest")
    return [v.numpy() for v in model.weights]


def test_resume_across_phase_boundaries(shapes_dir, tmp_path):
    budget = dict(
        train_steps=3,
        scst_steps=3,
        gan_steps=3,
        d_pretrain_steps=2,
        num_samples=2,
        eval_every=100,
        checkpoint_every=1,
    )
    run_train(shapes_dir, tmp_path / "whole", phases="xe,scst,gan", **budget)
    split = tmp_path / "split"
    run_train(shapes_dir, split, phases="xe", **budget)
    run_train(shapes_dir, split, phases="xe,scst", **{**budget, "scst_steps": 2})
    run_train(shapes_dir, split, phases="xe,scst,gan", **budget)
    for name in ("phase_xe", "phase_scst", "phase_gan"):
        assert tf.train.latest_checkpoint(str(split / name)), name
    for a, b in zip(_weights(tmp_path / "whole"), _weights(split), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_one_pass_step_equals_rescoring_step(baseline):
    """Differentiating the sampler's log-probabilities = re-scoring by teacher forcing."""
    import keras

    def reward_fn(batch, ids, per_image):  # a reward that differs between samples
        return tf.cast(tf.reduce_sum(tf.cast(ids % 5, tf.float32), 1), tf.float32) / 10.0

    results = []
    # the sampler's gradient; rescoring with the kernels' gradients after the loop; plain
    for rescore, batched in ((False, True), (True, True), (True, False)):
        model, feats, mask = _tiny_model()
        model.batched_weight_grads = batched
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(model.trainable_variables)
        config = scst.SCSTConfig(num_samples=3, baseline=baseline, rescore=rescore, grad_clip=0)
        step = scst.make_policy_step(
            tf.distribute.get_strategy(), model, optimizer, reward_fn, config
        )
        batch = {"features": feats, "region_mask": mask, "captions": tf.ones([2, 1, 4], tf.int32)}
        out = step(batch, tf.constant([3, 4], tf.int64))
        results.append((out, [v.numpy() for v in model.trainable_variables]))
    (fast, fast_w), *others = results
    assert float(fast["grad_norm"]) > 0
    for slow, slow_w in others:
        np.testing.assert_allclose(float(fast["loss"]), float(slow["loss"]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(fast["grad_norm"]), float(slow["grad_norm"]), rtol=1e-4)
        for a, b in zip(fast_w, slow_w, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _refs_of(words_per_image):
    refs = np.zeros([len(words_per_image), 1, 4], np.int32)
    for i, ids in enumerate(words_per_image):
        refs[i, 0, : len(ids) + 1] = [*ids, vocab.EOS_ID]
    return refs


def test_cider_reward_keeps_one_encoding_per_replica():
    """Two replicas alternating calls (as under MirroredStrategy) do not evict each
    other's encoded references: each encodes its own once."""
    words = list(vocab.SPECIALS) + ["a", "b", "c"]
    scorer = cider.CiderD([["a b"], ["b c"], ["c a"]], vocabulary=words, eos_id=vocab.EOS_ID)
    calls = []
    encode = scorer.encode_references
    scorer.encode_references = lambda refs: calls.append(1) or encode(refs)
    reward = scst.cider_reward(scorer)
    mine, theirs = _refs_of([[4, 5], [5, 6]]), _refs_of([[6, 4], [4, 5]])
    ids, index = np.array([[4, 5, 2], [5, 6, 2]]), np.array([0, 1])
    first = reward(ids, index, mine, 0)
    for _ in range(3):  # sample and greedy rewards of both replicas, interleaved
        other = reward(ids, index, theirs, 1)
        np.testing.assert_array_equal(reward(ids, index, mine, 0), first)
    assert len(calls) == 2
    assert not np.array_equal(first, other)


def test_cider_reward_is_right_under_concurrent_replicas():
    import concurrent.futures

    words = list(vocab.SPECIALS) + ["a", "b", "c"]
    scorer = cider.CiderD([["a b"], ["b c"], ["c a"]], vocabulary=words, eos_id=vocab.EOS_ID)
    reward = scst.cider_reward(scorer)
    refs = [_refs_of([[4, 5], [5, 6]]), _refs_of([[6, 4], [4, 5]]), _refs_of([[5, 5], [6, 6]])]
    ids, index = np.array([[4, 5, 2], [5, 6, 2]]), np.array([0, 1])
    want = [scst.cider_reward(scorer)(ids, index, r) for r in refs]

    def replica(r):
        return all(
            np.array_equal(reward(ids, index, refs[(r + i) % 3], r), want[(r + i) % 3])
            for i in range(300)
        )

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert all(pool.map(replica, range(3)))


def test_tempered_policy_gradient_is_on_policy():
    """At temperature T the loss differentiated is that of the sampling distribution
    softmax(logits / T), whichever path computes it."""
    import keras

    temperature = 0.5

    def reward_fn(batch, ids, per_image):
        return tf.cast(tf.reduce_sum(ids % 5, 1), tf.float32) / 10.0

    losses = []
    for rescore in (False, True):
        model, feats, mask = _tiny_model()
        optimizer = keras.optimizers.SGD(0.0)
        optimizer.build(model.trainable_variables)
        config = scst.SCSTConfig(
            num_samples=3, baseline="mean", temperature=temperature, rescore=rescore, grad_clip=0
        )
        step = scst.make_policy_step(
            tf.distribute.get_strategy(), model, optimizer, reward_fn, config
        )
        batch = {"features": feats, "region_mask": mask, "captions": tf.ones([2, 1, 4], tf.int32)}
        losses.append(float(step(batch, tf.constant([3, 4], tf.int64))["loss"]))
    # by hand: the same samples, their tempered log-probabilities by teacher forcing
    samples = model.generate(
        feats,
        mask,
        method="sample",
        num_samples=3,
        temperature=temperature,
        seed=tf.random.experimental.stateless_fold_in(tf.constant([3, 4], tf.int64), 0),
    )
    ids = samples.ids
    rewards = reward_fn(None, ids, 3)
    adv = rewards - scst.baseline_of(rewards, 3, "mean")
    bos = tf.fill([6, 1], vocab.BOS_ID)
    logits, _ = model.teacher_forcing(feats, mask, tf.concat([bos, ids], 1))
    token_lp = tf.gather(tf.nn.log_softmax(logits / temperature), ids, batch_dims=2)
    weights = tf.cast(scst.generated_mask(ids), tf.float32)
    want = -float(tf.reduce_sum(adv[:, None] * token_lp * weights) / tf.reduce_sum(weights))
    assert abs(want) > 1e-3
    np.testing.assert_allclose(losses, [want, want], rtol=1e-4)


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.slow
def test_resume_inside_gan_leaves_finished_phases_as_they_ended(shapes_dir, tmp_path):
    """phase_xe/, phase_scst/ and their val scores are written when the phase ends and
    never again: resuming inside gan leaves them byte for byte."""
    run = tmp_path / "run"
    budget = dict(
        train_steps=3,
        scst_steps=2,
        gan_steps=2,
        d_pretrain_steps=1,
        num_samples=2,
        eval_every=100,
        checkpoint_every=1,
        keep_checkpoints=20,
        final_metrics="true",
    )
    run_train(shapes_dir, run, phases="xe,scst,gan", **budget)
    ended = {p: _files(run / f"phase_{p}") for p in ("xe", "scst")}
    scores = {p: (run / f"scores_{p}_val.json").read_bytes() for p in ("xe", "scst")}
    run_train(shapes_dir, run, phases="xe,scst,gan", **{**budget, "gan_steps": 4})
    for p in ("xe", "scst"):
        assert _files(run / f"phase_{p}") == ended[p], p
        assert (run / f"scores_{p}_val.json").read_bytes() == scores[p], p
    # each snapshot is the model of the checkpoint at its phase's end (global steps 3, 5, 9)
    for phase, step in (("xe", 3), ("scst", 5), ("gan", 9)):
        model, _, _ = checkpoints.load_model(str(run), phase)
        at_end = checkpoints.model_at(str(run / "ckpt" / f"ckpt-{step}"))
        for a, b in zip(model.weights, at_end.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert '"step": 9' in (run / "scores_gan_val.json").read_text()


def test_a_phase_stopped_before_its_snapshot_gets_it_on_resume(shapes_dir, tmp_path):
    run = tmp_path / "run"
    budget = dict(train_steps=3, scst_steps=2, num_samples=2, eval_every=100, keep_checkpoints=20)
    run_train(shapes_dir, run, phases="xe,scst", **budget)
    for phase in ("xe", "scst"):
        shutil.rmtree(run / f"phase_{phase}")  # as if stopped after its last checkpoint
    run_train(shapes_dir, run, phases="xe,scst", **budget)
    # scst's end is still the latest state: written; xe's weights are gone: not faked
    assert tf.train.latest_checkpoint(str(run / "phase_scst")).endswith("ckpt-5")
    assert not (run / "phase_xe").exists()
    # and a finished phase cannot be extended once a later one has begun
    with pytest.raises(errors.BadInput, match="xe ended at 3 steps and scst has begun"):
        run_train(shapes_dir, run, phases="xe,scst", **{**budget, "train_steps": 4})


def test_reward_scores_against_every_reference_of_the_image(shapes_dir):
    """The batch holds 2 of each image's 5 captions; the reward uses all 5."""
    from tfcap.data import pipeline

    words = pipeline.load_vocab(str(shapes_dir)).words
    ds = pipeline.make_dataset(
        str(shapes_dir), "val", 4, seq_per_img=2, all_references=5, shuffle=True, seed=1
    )
    batch = next(iter(ds))
    assert batch["references"].shape == [4, 5, 17]
    texts = {}
    for image_id, rows in zip(batch["image_id"].numpy(), batch["references"].numpy(), strict=True):
        texts[int(image_id)] = [" ".join(words[i] for i in r if i > vocab.EOS_ID) for r in rows]
    refs = inference_refs(shapes_dir)
    for image_id, got in texts.items():
        known = set(words)
        want = [
            " ".join((w if w in known else "<unk>") for w in t[:16])
            for t in vocab.tokenize_py(refs[image_id])
        ]
        assert sorted(got) == sorted(want)
    scorer = cider.CiderD([["a b"]] * 2, vocabulary=words, eos_id=vocab.EOS_ID)
    samples = batch["captions"][:, 0, 1:]  # each image's first caption in the batch
    reward = scst.evaluator_reward(scst.cider_reward(scorer))
    got = reward(batch, samples, 1).numpy()
    cands = [" ".join(words[i] for i in r if i > vocab.EOS_ID) for r in samples.numpy()]
    ids = batch["image_id"].numpy()
    _, want = scorer.score(cands, [texts[int(i)] for i in ids])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    without = {k: v for k, v in batch.items() if k != "references"}
    assert not np.allclose(reward(without, samples, 1).numpy(), want)  # 2 of 5 refs: not it


def inference_refs(data_dir):
    from tfcap import inference

    return inference.references(str(data_dir), "val")
