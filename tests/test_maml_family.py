"""ANIL, Meta-SGD and MAML++'s options: meta-gradients against finite differences, against each
other where they must agree, MAML++'s schedules against its reference formulas, and a Meta-SGD
export served with its learned rates."""

import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from helpers import (directional_fd, dot, image_episode, params_of, random_direction, sine_episode,
                     train_tiny)
from tfmeta import meta_batch, models
from tfmeta.adaptation import adapt
from tfmeta.algorithms import maml
from tfmeta.config.adapt import AdaptConfig
from tfmeta.models import InnerLoop
from tfmeta.run import CosineEpochs

CONFIG = AdaptConfig(steps=2, lr=0.3)


def conv4(inner: InnerLoop) -> models.MetaModel:
    tf.keras.utils.set_random_seed(0)
    return models.conv4(5, (16, 16, 1), filters=4, dtype="float64", inner=inner)


def mlp(inner: InnerLoop) -> models.MetaModel:
    tf.keras.utils.set_random_seed(0)
    return models.mlp((8, 8), activation="tanh", dtype="float64", inner=inner)


def fd_errors(model, episode, config, directions, weights=None) -> list:
    """Relative errors of the meta-gradient along `directions` (callables params -> direction)
    against central differences of the objective itself."""
    params = params_of(model)
    f = lambda p: maml.task_objective(model, p, episode, config, weights)[0]  # noqa: E731
    grads = meta_batch.task_gradient(
        lambda p, e: maml.task_objective(model, p, e, config, weights), params, episode)[0]
    errors = []
    for direction in directions:
        v = direction(params)
        numeric = directional_fd(f, params, v, 1e-7)
        errors.append(abs(dot(grads, v) - numeric) / abs(numeric))
    return errors


def only(indices, seed):
    """A random direction that moves only the parameters at `indices`."""
    def direction(params):
        v = random_direction(params, seed)
        return [x if i in indices else tf.zeros_like(x) for i, x in enumerate(v)]
    return direction


def test_anil_adapts_the_head_only_and_its_meta_gradient_matches_finite_differences():
    model = conv4(InnerLoop(head_only=True))
    episode = image_episode()
    params = params_of(model)
    adapted, _ = adapt(model, params, episode.support, CONFIG)
    head = set(model.inner_indices)
    assert head == set(range(model.num_feature_params, len(params)))
    for i, (a, p) in enumerate(zip(adapted, params)):
        assert bool(tf.reduce_all(a == p)) == (i not in head)
    features = set(range(model.num_feature_params))
    errors = fd_errors(model, episode, CONFIG,
                       [only(features, 0), only(head, 1), only(set(range(len(params))), 2)])
    assert max(errors) < 1e-5


def test_anil_meta_gradient_is_maml_with_a_zero_feature_rate():
    """ANIL (head-only inner loop, the representation computed once) against a Meta-SGD model,
    which adapts every parameter, with the features' rates set to 0 and the head's to alpha."""
    anil, metasgd = conv4(InnerLoop(head_only=True)), conv4(InnerLoop(learned_lr="element"))
    for target, source in zip(metasgd.trainable_variables, anil.trainable_variables):
        target.assign(source)
    for k, rate in enumerate(metasgd.rates.values):
        value = 0.0 if k < anil.num_feature_params else CONFIG.lr
        rate.assign(tf.fill(rate.shape, tf.constant(value, tf.float64)))
    episode = image_episode(1)
    a, metrics_a = maml.task_gradient(anil, params_of(anil), episode, CONFIG)
    b, metrics_b = maml.task_gradient(metasgd, params_of(metasgd), episode, CONFIG)
    assert float(metrics_a["loss"]) == pytest.approx(float(metrics_b["loss"]), rel=1e-12)
    for x, y in zip(a, b[:len(a)]):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-9, atol=1e-12)
    # ...and it is not MAML's: the features' adaptation matters.
    plain = conv4(InnerLoop())
    c, _ = maml.task_gradient(plain, params_of(plain), episode, CONFIG)
    assert not np.allclose(a[0].numpy(), c[0].numpy(), rtol=1e-3)


def test_meta_sgd_meta_gradient_with_respect_to_the_rates_matches_finite_differences():
    model = mlp(InnerLoop(learned_lr="element", lr=0.05))
    params = params_of(model)
    rates = set(range(len(params) - model.num_rates, len(params)))
    assert [tuple(params[i].shape) for i in sorted(rates)] == [
        tuple(params[i].shape) for i in model.inner_indices]
    errors = fd_errors(model, sine_episode(), CONFIG, [only(rates, s) for s in range(3)])
    assert max(errors) < 1e-6


def test_lslr_and_per_step_batch_norm_meta_gradient_matches_finite_differences():
    """Per-step rates [T] and per-step gamma, beta [T, C] of conv4, with the multi-step loss."""
    model = conv4(InnerLoop(learned_lr="layer_step", lr=0.3, steps=2, step_norms=True))
    params = params_of(model)
    norms = [i for i, v in enumerate(model.trainable_variables) if "gamma" in v.path
             or "beta" in v.path]
    assert norms and all(params[i].shape[0] == 2 for i in norms)
    assert not set(norms) & set(model.inner_indices)          # meta-learned, not adapted
    rates = set(range(len(params) - model.num_rates, len(params)))
    weights = tf.constant([0.3, 0.7], tf.float64)
    everything = set(range(len(params)))
    errors = fd_errors(model, image_episode(2), CONFIG,
                       [only(rates, 0), only(set(norms), 1), only(everything, 2)], weights)
    assert max(errors) < 1e-5
    # Each step has its own batch-norm row: the multi-step loss reaches both rows of each gamma.
    grads = meta_batch.task_gradient(
        lambda p, e: maml.task_objective(model, p, e, CONFIG, weights), params,
        image_episode(2))[0]
    assert all(float(tf.reduce_min(tf.norm(grads[i], axis=1))) > 0 for i in norms)


def test_multi_step_loss_is_the_weighted_sum_of_each_steps_query_loss():
    model, episode = mlp(InnerLoop()), sine_episode(3)
    config = AdaptConfig(steps=3, lr=0.02)
    weights = tf.constant([0.2, 0.3, 0.5], tf.float64)
    objective, metrics = maml.task_objective(model, params_of(model), episode, config, weights)
    per_step = []
    for t in (1, 2, 3):
        adapted, _ = adapt(model, params_of(model), episode.support, AdaptConfig(steps=t, lr=0.02))
        per_step.append(float(tf.reduce_mean(tf.square(
            models.apply(model, adapted, episode.query_x) - episode.query_y))))
    assert float(objective) == pytest.approx(float(np.dot(weights.numpy(), per_step)), rel=1e-12)
    assert float(metrics["loss"]) == pytest.approx(per_step[-1], rel=1e-12)


def reference_weights(epoch: int, steps: int, epochs: int) -> np.ndarray:
    """MAML++'s importance vector, written as its reference implementation loops over it."""
    if epoch >= epochs:
        return np.eye(steps)[-1]
    weights = np.ones(steps) / steps
    decay, floor = 1.0 / steps / epochs, 0.03 / steps
    for i in range(steps - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@pytest.mark.parametrize("steps,epochs", [(5, 10), (3, 4), (1, 2)])
def test_multi_step_weights_follow_maml_plus_plus(steps, epochs):
    for epoch in range(epochs + 3):
        got = maml.multi_step_weights(tf.constant(epoch, tf.int64), steps, epochs, tf.float64)
        np.testing.assert_allclose(got.numpy(), reference_weights(epoch, steps, epochs),
                                   atol=1e-12)
        assert float(tf.reduce_sum(got)) == pytest.approx(1.0)


def test_cosine_meta_lr_is_constant_within_an_epoch_and_ends_near_the_floor():
    schedule = CosineEpochs(1e-3, 1e-5, iterations=10, epochs=4)
    values = [float(schedule(tf.constant(step, tf.int64))) for step in range(40)]
    for epoch in range(4):
        expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * epoch / 4))
        assert values[10 * epoch:10 * epoch + 10] == pytest.approx([expected] * 10, rel=1e-6)


def record_phases(monkeypatch) -> list:
    """Patches `training` so that each meta-step `run_steps` runs appends the phase of the
    compiled step that ran it: (first order, multi-step loss weights bound)."""
    from tfmeta import training
    phases, make, run = [], training.make_meta_step, training.run_steps
    phase_of = {}

    def recording_make(model, optimizer, meta_gradient, adapt_config, *args, **kwargs):
        step = make(model, optimizer, meta_gradient, adapt_config, *args, **kwargs)
        phase_of[id(step)] = (adapt_config.first_order,
                              meta_gradient.keywords["multi_step_epochs"] > 0)
        return step

    def recording_run(execute, batches, count, *args, **kwargs):
        phases.extend([phase_of[id(execute.step)]] * count)
        return run(execute, batches, count, *args, **kwargs)

    monkeypatch.setattr(training, "make_meta_step", recording_make)
    monkeypatch.setattr(training, "run_steps", recording_run)
    return phases


@pytest.mark.trains
def test_annealing_trains_first_order_then_second_and_drops_the_multi_step_loss_after_it(
        tmp_path, monkeypatch):
    """3 epochs of 2 meta-steps with first_order_epochs=2 and multi_step_epochs=1: each
    meta-step ran the compiled step of its epoch's phase, and once the multi-step loss's weights
    are those of the last step alone, the step no longer computes the other steps' losses."""
    phases = record_phases(monkeypatch)
    train_tiny(tmp_path / "run", "sine-cpu", "train.epochs=3", "train.iterations=2",
               "algorithms.maml.first_order_epochs=2", "algorithms.maml.multi_step_epochs=1")
    assert phases == [(True, True)] * 2 + [(True, False)] * 2 + [(False, False)] * 2


@pytest.mark.trains
def test_the_plain_step_after_the_multi_step_loss_gives_the_weighted_steps_update(
        tmp_path, monkeypatch):
    """Training on with the multi-step loss's final weights (0 for every step but the last)
    ends at the weights that the plain step after the annealing reaches."""
    from tfmeta import training
    from tfmeta.run import Run
    overrides = ("train.epochs=3", "train.iterations=3", "algorithms.maml.multi_step_epochs=1",
                 "model.dtype=float64")

    def trained(name):
        run = Run.open(train_tiny(tmp_path / name, "sine-cpu", *overrides))
        run.restore()
        return [v.numpy() for v in run.model.trainable_variables]

    plain = trained("plain")
    monkeypatch.setattr(training.MetaSteps, "phase", lambda self, epoch: (False, True))
    weighted = trained("weighted")
    for a, b in zip(plain, weighted):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.trains
def test_meta_sgd_trains_on_sine_and_its_export_adapts_with_the_learned_rates(tmp_path):
    from helpers import session_run
    from tfmeta import export
    from tfmeta.run import Run
    run_dir = train_tiny(tmp_path / "run", "sine-cpu", "algorithm=meta-sgd",
                         "train.iterations=30")
    run = Run.open(run_dir)
    run.restore()
    learned = [v.numpy() for v in run.model.rates.values]
    assert not all(np.allclose(r, run.config.adapt.lr) for r in learned)   # meta-learned
    version = export.export_run(run_dir, tmp_path / "models" / "sine")
    assert export.read_metadata(version)["learned_lr"] == "element"
    episode = sine_episode(4)
    cast = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    served = session_run(version, "adapt_predict", {
        "support_x": cast(episode.support_x), "support_y": cast(episode.support_y),
        "query_x": cast(episode.query_x)})["predictions"]
    support = tuple(tf.cast(t, tf.float32) for t in episode.support)
    query_x = tf.cast(episode.query_x, tf.float32)
    config = AdaptConfig(steps=run.config.adapt.eval_steps, lr=run.config.adapt.lr)
    adapted, _ = adapt(run.model, params_of(run.model), support, config)
    np.testing.assert_allclose(served, models.apply(run.model, adapted, query_x).numpy(),
                               rtol=1e-5, atol=1e-6)
    for rate in run.model.rates.values:
        rate.assign(tf.fill(rate.shape, run.config.adapt.lr))
    fixed, _ = adapt(run.model, params_of(run.model), support, config)
    assert not np.allclose(served, models.apply(run.model, fixed, query_x).numpy(), atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--algorithm", "nal", "--set", "adapt.per_step_lr=true"], "adapt.per_step_lr"),
    (["--algorithm", "finetune", "--set", "adapt.per_step_norm=true"], "adapt.per_step_norm"),
    (["--set", "algorithms.maml.multi_step_epochs=5", "--epochs", "2"], "at most train.epochs"),
    (["--set", "algorithms.maml.first_order_epochs=3", "--epochs", "2"], "at most train.epochs"),
    (["--algorithm", "anil", "--set", "model.hidden=[]"], "no feature parameters"),
    (["--algorithm", "meta-sgd", "--set", "adapt.per_step_lr=true"], "meta-sgd"),
])
def test_bad_maml_family_options_are_user_errors(tmp_path, args, message):
    from tfmeta_cli.main import cli
    result = CliRunner().invoke(cli, ["train", "--config", "sine-cpu", "--run-dir",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("preset", ["omniglot_5w1s_anil-cpu", "omniglot_5w1s_meta_sgd-cpu",
                                    "omniglot_5w1s_mamlpp-cpu", "omniglot_20w1s_mamlpp-cpu",
                                    "sine_meta_sgd-cpu", "omniglot_20w1s_mamlpp",
                                    "omniglot_5w1s_anil", "omniglot_5w1s_meta_sgd",
                                    "omniglot_5w1s_mamlpp"])
def test_presets_load(preset):
    from tfmeta import config as config_lib
    config = config_lib.load(preset)
    assert config.algorithm in ("anil", "meta-sgd", "maml")
    if "mamlpp" in preset:
        assert config.adapt.per_step_lr and config.adapt.per_step_norm and config.train.cosine_lr
        maml_options = config.algorithms.maml
        assert maml_options.multi_step_epochs > 0 and maml_options.first_order_epochs > 0
    json.dumps(config_lib.to_dict(config))


def test_per_step_norm_rows_are_clipped_to_the_learned_steps():
    layer = models.BatchNorm(steps=2, dtype="float64")
    layer.build((None, 3))
    layer.gamma.assign(tf.constant([[1.0] * 3, [2.0] * 3], tf.float64))
    x = tf.constant([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]], tf.float64)
    rows = {step: layer(x, step=step).numpy() for step in (-1, 0, 1, 5, None)}
    np.testing.assert_array_equal(rows[-1], rows[0])
    np.testing.assert_array_equal(rows[5], rows[1])
    np.testing.assert_array_equal(rows[None], rows[1])
    np.testing.assert_allclose(rows[1], 2 * rows[0])


@pytest.mark.parametrize("steps", [1, 3])
def test_per_step_norm_export_answers_as_evaluation_scores(tmp_path, steps):
    """The served query sees the row of the last step taken, as `tfmeta evaluate` scores it,
    also when the export adapts fewer steps than the rows learned."""
    from helpers import session_run
    from tfmeta import export
    from tfmeta.losses import query_metrics
    tf.keras.utils.set_random_seed(0)
    model = models.conv4(5, (16, 16, 1), filters=4,
                         inner=InnerLoop(learned_lr="layer_step", lr=0.3, steps=3,
                                         step_norms=True))
    for layer in model.features.layers:  # distinct rows, so that a wrong row shows
        if isinstance(layer, models.BatchNorm):
            layer.gamma.assign(tf.random.uniform(layer.gamma.shape, 0.5, 2.0))
    config = AdaptConfig(steps=3, lr=0.3)
    version = export.export(model, config, tmp_path / "m", steps, {"ways": 5})
    episode = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32)
                                    if t.dtype == tf.float64 else t, image_episode(5))
    served = session_run(version, "adapt_predict", {
        "support_x": episode.support_x.numpy(), "support_y": episode.support_y.numpy(),
        "query_x": episode.query_x.numpy()})["logits"]
    adapted, _ = adapt(model, params_of(model), episode.support, config, steps=steps)
    scored = query_metrics(model, adapted, episode, steps - 1)
    expected = models.query_outputs(model, adapted, episode.support_x, episode.query_x,
                                    steps - 1)
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-4, atol=1e-5)
    accuracy = np.mean(served.argmax(-1) == episode.query_y.numpy())
    assert accuracy == pytest.approx(float(scored["accuracy"]))


def test_every_algorithm_name_has_a_registry_entry():
    from tfmeta import algorithms
    from tfmeta.config.algorithms import MAML_FAMILY, NAMES
    assert sorted(algorithms.REGISTRY) == sorted(NAMES)
    # The MAML family shares MAML's meta-step and its MAML++ HParams.
    for name in MAML_FAMILY:
        assert algorithms.get(name).meta_gradient is algorithms.get("maml").meta_gradient


@pytest.mark.parametrize("gains, learned_lr", [(False, ""), (True, ""), (False, "element"),
                                               (True, "layer_step")])
def test_parts_name_each_role_of_the_parameter_list(gains, learned_lr):
    model = models.mlp((8, 8), inputs=1, outputs=1, gains=gains,
                       inner=InnerLoop(learned_lr=learned_lr, steps=2))
    variables = model.trainable_variables
    named = models.parts(model, variables)
    assert [v.name for v in named.features] == [v.name for v in model.features.trainable_variables]
    assert [v.name for v in named.head] == [v.name for v in model.head.trainable_variables]
    assert (named.gains is None) == (not gains)
    if gains:
        assert named.gains is model.gains.scales
    assert len(named.rates) == (len(model.inner_indices) if learned_lr else 0)
    # The roles, in order, are the whole list: features, head, gains, rates.
    joined = named.features + named.head + ([named.gains] if gains else []) + named.rates
    assert [id(v) for v in joined] == [id(v) for v in variables]
