"""The MAML-family algorithms against finite differences and naive weightings (float64)."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import directional_fd, dot, params_of, random_direction, sine_episode, tiny_mlp
from tfmeta import tree
from tfmeta.adaptation import adapt
from tfmeta.algorithms import gradient_agreement, maml, maml_reg, nal
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import task_loss

CONFIG = AdaptConfig(steps=2, lr=0.05)


def batch_of(seeds):
    return tf.nest.map_structure(lambda *t: tf.stack(t), *[sine_episode(s) for s in seeds])


def tasks(batch):
    n = batch.support_x.shape[0]
    return [tf.nest.map_structure(lambda t: t[i], batch) for i in range(n)]


def test_omega_gradient_matches_finite_differences():
    model = tiny_mlp()
    params = params_of(model)
    adapted, _ = adapt(model, params, sine_episode().support, CONFIG)
    mean = random_direction(params, 7)
    gamma = 1.0
    analytic = tree.sub(adapted, maml_reg.corrected(params, adapted, mean, gamma))  # = grad Omega
    omega = lambda a: -tree.dot(tree.sub(a, params), mean) / tree.norm(tree.sub(a, params))  # noqa
    for seed in range(3):
        v = random_direction(params, seed)
        assert dot(analytic, v) == pytest.approx(directional_fd(omega, adapted, v, 1e-6), rel=1e-6)


def reg_objective(model, batch, gamma, frozen_mean=None):
    """F(theta) = (1/n) sum_i L(D'_i; theta^_i), written out task by task."""
    def f(params):
        solutions, directions = [], []
        for task in tasks(batch):
            a, _ = adapt(model, params, task.support, CONFIG)
            solutions.append(a)
            step = tree.sub(a, params)
            directions.append([s / tree.norm(step) for s in step])
        mean = frozen_mean or [tf.add_n(list(d)) / len(directions) for d in zip(*directions)]
        losses = [task_loss(model, maml_reg.corrected(params, a, mean, gamma), *t.query)
                  for a, t in zip(solutions, tasks(batch))]
        return tf.add_n(losses) / len(losses)
    return f


@pytest.mark.parametrize("constant_mean", [True, False])
def test_maml_reg_meta_gradient_matches_finite_differences(constant_mean):
    model, batch = tiny_mlp(), batch_of(range(3))
    params = params_of(model)
    grads, _ = maml_reg.meta_gradient(model, params, batch, CONFIG, 3, gamma=0.5,
                                      constant_mean=constant_mean)
    frozen = None
    if constant_mean:
        directions = []
        for task in tasks(batch):
            a, _ = adapt(model, params, task.support, CONFIG)
            step = tree.sub(a, params)
            directions.append([s / tree.norm(step) for s in step])
        frozen = [tf.add_n(list(d)) / 3 for d in zip(*directions)]
    f = reg_objective(model, batch, 0.5, frozen)
    for seed in range(2):
        v = random_direction(params, seed)
        assert dot(grads, v) == pytest.approx(directional_fd(f, params, v, 1e-6), rel=1e-5)


def test_maml_reg_with_zero_gamma_is_maml():
    model, batch = tiny_mlp(), batch_of(range(3))
    params = params_of(model)
    reg, _ = maml_reg.meta_gradient(model, params, batch, CONFIG, 3, gamma=0.0)
    plain, _ = maml.meta_gradient(model, params, batch, CONFIG, 3)
    for a, b in zip(reg, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-14)


def test_gradient_agreement_weights_and_gradient_match_a_naive_loop():
    model, batch = tiny_mlp(), batch_of(range(4))
    params = params_of(model)
    grads, metrics = gradient_agreement.meta_gradient(model, params, batch, CONFIG, 4)
    steps, task_grads = [], []
    for task in tasks(batch):
        a, _ = adapt(model, params, task.support, CONFIG)
        steps.append(np.concatenate([(p - q).numpy().ravel() for p, q in zip(params, a)]))
        task_grads.append(maml.task_gradient(model, params, task, CONFIG)[0])
    agreement = np.array([sum(steps[i] @ steps[j] for j in range(4)) for i in range(4)])
    weights = agreement / np.abs(agreement).sum()
    np.testing.assert_allclose(metrics["task_weights"].numpy(), weights, rtol=1e-10)
    for k, g in enumerate(grads):
        expected = sum(w * t[k].numpy() for w, t in zip(weights, task_grads))
        np.testing.assert_allclose(g.numpy(), expected, rtol=1e-9, atol=1e-14)


def test_nal_is_the_gradient_of_the_multitask_loss_without_adaptation():
    model, batch = tiny_mlp(), batch_of(range(3))
    params = params_of(model)
    grads, _ = nal.meta_gradient(model, params, batch, CONFIG, 3)

    def f(p):
        return tf.add_n([task_loss(model, p, tf.concat([t.support_x, t.query_x], 0),
                                   tf.concat([t.support_y, t.query_y], 0))
                         for t in tasks(batch)]) / 3
    v = random_direction(params, 0)
    assert dot(grads, v) == pytest.approx(directional_fd(f, params, v, 1e-6), rel=1e-6)


@pytest.mark.parametrize("algorithm", ["maml-reg", "gradient-agreement", "wormhole", "nal"])
@pytest.mark.trains
def test_each_algorithm_meta_trains_sine(tmp_path, algorithm):
    import json

    from tensorboard.backend.event_processing import event_accumulator

    from tfmeta import config as config_lib, training
    config = config_lib.load("sine", [
        f"run_dir={tmp_path}", f"algorithm={algorithm}", "train.epochs=2", "train.iterations=150",
        "train.eval_tasks=100", "landscape.every=0",
        # The correction's size is gamma / ||theta~ - theta||; sine's steps are short (~0.5), so
        # the paper's gamma = 0.5 (set for Omniglot) would outweigh the adaptation itself.
        "algorithms.maml_reg.gamma=0.05"])
    run_dir = training.train(config, progress=False, log=lambda _: None)
    records = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert records[-1]["meta_test/mse"] < records[0]["meta_test/mse"]
    if algorithm == "gradient-agreement":
        events = event_accumulator.EventAccumulator(str(run_dir / "logs"),
                                                    size_guidance={"tensors": 0})
        events.Reload()
        assert "meta_train/task_weights" in events.Tags()["tensors"]


def test_wormhole_gains_start_neutral_adapt_and_have_exact_meta_gradients():
    from tfmeta import models
    tf.keras.utils.set_random_seed(0)
    gained = models.mlp((8,), activation="tanh", dtype="float64", gains=True)
    plain = models.mlp((8,), activation="tanh", dtype="float64")
    for a, b in zip(plain.trainable_variables, gained.trainable_variables):
        a.assign(b)
    episode = sine_episode()
    params = params_of(gained)
    assert len(params) == len(plain.trainable_variables) + 1
    np.testing.assert_allclose(models.apply(gained, params, episode.query_x).numpy(),
                               models.apply(plain, params_of(plain), episode.query_x).numpy())
    adapted, _ = adapt(gained, params, episode.support, CONFIG)
    assert np.all(np.abs(adapted[gained.num_gated].numpy() - 1.0) > 1e-6)
    batch = batch_of(range(2))
    grads, _ = maml.meta_gradient(gained, params, batch, CONFIG, 2)

    def f(p):
        return tf.add_n([maml.task_objective(gained, p, t, CONFIG)[0] for t in tasks(batch)]) / 2
    for seed in range(2):
        v = random_direction(params, seed)
        assert dot(grads, v) == pytest.approx(directional_fd(f, params, v, 1e-6), rel=1e-6)


def test_finetune_transfers_features_with_a_fresh_xavier_head():
    from tfmeta import models
    from tfmeta.algorithms import finetune
    trained = models.conv4(40, (16, 16, 1), filters=4)
    target = models.conv4(5, (16, 16, 1), filters=4)
    params = finetune.transfer(trained, target, seed=3)
    assert [tuple(p.shape) for p in params] == [tuple(v.shape) for v in target.trainable_variables]
    for p, v in zip(params, trained.trainable_variables[:trained.num_feature_params]):
        np.testing.assert_array_equal(p.numpy(), v.numpy())
    kernel, bias = params[-2:]
    limit = np.sqrt(6 / sum(kernel.shape))
    assert np.abs(kernel.numpy()).max() <= limit and np.abs(kernel.numpy()).max() > 0.5 * limit
    assert not bias.numpy().any()
    np.testing.assert_array_equal(finetune.transfer(trained, target, seed=3)[-2].numpy(),
                                  kernel.numpy())


def test_finetune_per_task_heads_differ_between_tasks_and_repeat_for_a_task():
    from tfmeta import models
    from tfmeta.algorithms import finetune
    trained = models.conv4(40, (16, 16, 1), filters=4)
    target = models.conv4(5, (16, 16, 1), filters=4)
    params = finetune.transfer(trained, target, seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 16, 16, 1)).astype(np.float32)
    y = np.arange(5)
    heads = {}
    for name, support in {"a": (x, y), "again": (x.copy(), y.copy()), "labels": (x, y[::-1]),
                          "pixel": (np.where(np.arange(x.size).reshape(x.shape) == 7, 0.5, x), y)
                          }.items():
        out = finetune.task_head(target, params, support, seed=3)
        for p, q in zip(out[:-2], params[:-2]):
            np.testing.assert_array_equal(p.numpy(), q.numpy())      # features kept
        kernel, bias = out[-2].numpy(), out[-1].numpy()
        limit = np.sqrt(6 / sum(kernel.shape))
        assert np.abs(kernel).max() <= limit and not bias.any()
        heads[name] = kernel
    np.testing.assert_array_equal(heads["a"], heads["again"])
    assert not np.allclose(heads["a"], heads["labels"]) and not np.allclose(heads["a"], heads["pixel"])
    other_seed = finetune.task_head(target, params, (x, y), seed=4)[-2]
    assert not np.allclose(heads["a"], other_seed.numpy())


@pytest.mark.trains
def test_finetune_evaluation_adapts_each_task_from_its_own_head(tmp_path, omniglot_copy):
    """The evaluator's per-task heads against a loop that builds each head and adapts by hand."""
    from tfmeta import config as config_lib, training
    from tfmeta.adaptation import adapt
    from tfmeta.algorithms import finetune
    from tfmeta.losses import query_metrics
    from tfmeta.run import Run
    config = config_lib.load("omniglot_5w1s_finetune-cpu", [
        f"run_dir={tmp_path}", f"data.omniglot.data_dir={omniglot_copy}", "model.filters=8",
        "train.epochs=1", "train.iterations=5", "train.eval_tasks=6", "train.eval_batch=3",
        "adapt.test_steps=2", "landscape.every=0"])
    run_dir = training.train(config, progress=False, log=lambda _: None)
    run = Run.open(run_dir)
    run.restore()
    results = run.evaluator(2, 6)()
    shared = Run.open(run_dir, ["algorithms.finetune.head=shared"])
    shared.restore()
    base = run.origin.params()
    episodes = [tf.nest.map_structure(lambda t: t[i], batch)
                for batch in run.source.episodes(run.source.eval_split, config.train.seed, 3,
                                                 count=6) for i in range(3)]
    for i, episode in enumerate(episodes):
        start = finetune.task_head(run.eval_model, base, episode.support, 0)
        adapted, _ = adapt(run.eval_model, start, episode.support, run.config.adapt, steps=2)
        expected = query_metrics(run.eval_model, adapted, episode)["loss"].numpy()
        assert results["loss"][i, 2] == pytest.approx(float(expected), rel=1e-5)
    assert not np.allclose(shared.evaluator(2, 6)()["loss"], results["loss"])


@pytest.mark.trains
def test_finetune_trains_omniglot_supervised_and_adapts_a_new_head(tmp_path, omniglot_copy):
    import json

    from tfmeta import config as config_lib, training
    from tfmeta.run import Run
    config = config_lib.load("omniglot_5w1s-cpu", [
        f"run_dir={tmp_path}", f"data.omniglot.data_dir={omniglot_copy}", "algorithm=finetune",
        "train.epochs=2", "train.iterations=25", "train.eval_tasks=50", "landscape.every=0"])
    run_dir = training.train(config, progress=False, log=lambda _: None)
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    assert run.model.head.units == run.source.classes["train"] > 100
    assert run.eval_model.head.units == 5
    records = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert records[-1]["meta_test/accuracy"] > 0.3  # chance is 0.2
