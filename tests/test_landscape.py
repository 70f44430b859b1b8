"""Landscape metrics against naive O(n^2) loops and exact Hessians of a tiny model."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib, landscape as landscape_lib, losses, tasks, training
from tfmeta.adaptation import adapt
from tfmeta.models import params_of, query_features
from tfmeta.run import build_model


def test_pairwise_mean_matches_a_double_loop():
    rng = np.random.default_rng(0)
    xs = [[rng.standard_normal((3, 2)), rng.standard_normal(4)] for _ in range(9)]
    flat = [np.concatenate([a.ravel() for a in x]) for x in xs]
    naive = np.mean([flat[i] @ flat[j] for i in range(9) for j in range(9) if i != j])
    total = [tf.constant(sum(x[k] for x in xs)) for k in range(2)]
    sum_sq = sum(float(f @ f) for f in flat)
    assert float(landscape_lib.pairwise_mean(total, sum_sq, 9)) == pytest.approx(naive, rel=1e-12)


def flat(params):
    return np.concatenate([np.asarray(p).ravel() for p in params])


def exact_spectral_norm(model, params, support):
    params = [tf.constant(p) for p in params]
    with tf.GradientTape() as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(params)
            loss = losses.task_loss(model, params, *support)
        gradient = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, params)], 0)
    rows = outer.jacobian(gradient, params)
    hessian = np.concatenate([tf.reshape(r, [gradient.shape[0], -1]).numpy() for r in rows], 1)
    return np.abs(np.linalg.eigvalsh((hessian + hessian.T) / 2)).max()


def naive_pairwise(vectors):
    n = len(vectors)
    return np.mean([vectors[i] @ vectors[j] for i in range(n) for j in range(n) if i != j])


@pytest.fixture(scope="module")
def measured():
    config = config_lib.load("sine", [
        "model.hidden=[6]", "model.dtype=float64", "adapt.steps=2", "adapt.test_steps=3",
        "adapt.lr=0.05", "landscape.flatness_tasks=4", "landscape.coherence_tasks=7",
        "landscape.batch=3", "landscape.tol=1e-10", "landscape.max_iters=200",
        "landscape.trace_probes=2", "landscape.top_k=2", "landscape.layer_norms=true"])
    source = tasks.build(config.data, "float64")
    model = build_model(config, source)
    land = landscape_lib.Landscape(model, source, config.adapt, config.landscape)
    return config, source, model, land, land.measure(progress=False)


def test_landscape_metrics_match_naive_computation(measured):
    config, source, model, land, values = measured
    episodes = [e for batch in source.episodes("test", config.landscape.seed, 3, count=7)
                for e in [tf.nest.map_structure(lambda t: t[i], batch)
                          for i in range(batch.support_x.shape[0])]]
    theta = params_of(model)
    directions, gradients, norms, support_losses, flatness = [], [], [], [], []
    for k, episode in enumerate(episodes):
        adapted, _ = adapt(model, theta, episode.support, config.adapt, steps=3)
        step = flat(adapted) - flat(theta)
        norms.append(np.linalg.norm(step))
        directions.append(step / np.linalg.norm(step))
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = losses.task_loss(model, theta, *episode.support)
        gradients.append(-flat(tape.gradient(loss, theta)))
        support_losses.append(float(losses.task_loss(model, adapted, *episode.support)))
        if k < 4:
            flatness.append(exact_spectral_norm(model, adapted, episode.support))
    assert values["trajectory_coherence"] == pytest.approx(naive_pairwise(directions), rel=1e-9)
    assert values["gradient_coherence"] == pytest.approx(naive_pairwise(gradients), rel=1e-9)
    assert values["trajectory_norm"] == pytest.approx(np.mean(norms), rel=1e-9)
    assert values["support_loss"] == pytest.approx(np.mean(support_losses), rel=1e-9)
    assert values["flatness"] == pytest.approx(np.mean(flatness), rel=1e-6)
    everything = [(g_i, g_j) for g_i in gradients for g_j in gradients]  # self-pairs included
    assert values["gradient_coherence_self"] == pytest.approx(
        np.mean([a @ b for a, b in everything]), rel=1e-9)
    h = np.concatenate([query_features(model, theta, e.support_x, e.query_x).numpy()
                        for e in episodes])
    assert len(h) == 7 * 10
    assert values["representation_coherence"] == pytest.approx(naive_pairwise(list(h)), rel=1e-9)
    centered = h - h.mean(0)
    assert values["representation_spread"] == pytest.approx(
        np.mean(np.sum(centered ** 2, 1)), rel=1e-9)
    # The centered variant is minus the spread over N - 1, whatever the embeddings.
    assert naive_pairwise(list(centered)) == pytest.approx(
        -values["representation_spread"] / (len(h) - 1), rel=1e-9)


@pytest.mark.parametrize("norm", ["transductive", "support"])
def test_representation_coherence_is_each_tasks_meta_test_pass_whatever_the_batching(
        omniglot_dir, norm):
    """With batch norm, each task's query embeddings come from the pass meta-testing makes (its
    own query statistics, or its support's), so the value is the same for any number of tasks per
    compiled call; checked against a naive loop over the tasks."""
    config = config_lib.load("omniglot_5w1s-cpu", [
        f"data.omniglot.data_dir={omniglot_dir}", "model.filters=4", "model.dtype=float64",
        f"model.norm={norm}", "landscape.flatness_tasks=0", "landscape.coherence_tasks=6"])
    source = tasks.build(config.data, "float64")
    model = build_model(config, source)
    values = []
    for batch in (1, 4, 6):
        land_config = config_lib.load("omniglot_5w1s-cpu", [
            f"data.omniglot.data_dir={omniglot_dir}", f"landscape.batch={batch}",
            "landscape.flatness_tasks=0", "landscape.coherence_tasks=6"]).landscape
        land = landscape_lib.Landscape(model, source, config.adapt, land_config)
        values.append(land.measure(progress=False)["representation_coherence"])
    episodes = [tf.nest.map_structure(lambda t: t[0], b) for b in
                source.episodes(source.eval_split, config.landscape.seed, 1, count=6)]
    theta = params_of(model)
    h = np.concatenate([query_features(model, theta, e.support_x, e.query_x).numpy()
                        for e in episodes])
    np.testing.assert_allclose(values, naive_pairwise(list(h)), rtol=1e-9)


@pytest.mark.parametrize("norm", ["transductive", "support"])
def test_normalized_representation_coherence_ignores_the_last_norms_gamma_and_beta(
        omniglot_dir, norm):
    """The variant takes the last batch norm's x^ of each task's query rows (checked against a
    naive loop); scaling that layer's gamma by 1.2 and shifting its beta by 0.1 moves the paper's
    representation coherence and leaves the variant as it was."""
    from tfmeta import batch_norm
    config = config_lib.load("omniglot_5w1s-cpu", [
        f"data.omniglot.data_dir={omniglot_dir}", "model.filters=4", "model.dtype=float64",
        f"model.norm={norm}", "landscape.flatness_tasks=0", "landscape.coherence_tasks=6"])
    source = tasks.build(config.data, "float64")
    model = build_model(config, source)
    land = landscape_lib.Landscape(model, source, config.adapt, config.landscape)
    before = land.measure(progress=False)
    episodes = [tf.nest.map_structure(lambda t: t[0], b) for b in
                source.episodes(source.eval_split, config.landscape.seed, 1, count=6)]
    z = []
    for e in episodes:
        with batch_norm.capture() as normalized:
            query_features(model, params_of(model), e.support_x, e.query_x)
        last = normalized[-1].numpy().reshape(len(normalized[-1]), -1)
        z.append(last[len(last) - len(e.query_x):])
    assert before["representation_coherence_normalized"] == pytest.approx(
        naive_pairwise(list(np.concatenate(z))), rel=1e-9)
    last_norm = model.features.get_layer("norm4")
    last_norm.gamma.assign(last_norm.gamma * 1.2)
    last_norm.beta.assign(last_norm.beta + 0.1)
    after = landscape_lib.Landscape(model, source, config.adapt, config.landscape).measure(
        progress=False)
    assert abs(after["representation_coherence"] / before["representation_coherence"] - 1) > 0.1
    assert after["representation_coherence_normalized"] == pytest.approx(
        before["representation_coherence_normalized"], rel=1e-9)


def test_opt_in_hessian_metrics_are_reported(measured):
    _, _, model, _, values = measured
    assert {"hessian_trace", "top_eigenvalue_1", "top_eigenvalue_2"} <= set(values)
    assert values["top_eigenvalue_1"] >= values["top_eigenvalue_2"]
    layers = [k for k in values if k.startswith("layer_flatness/")]
    assert len(layers) == 2 and values["hvps"] > 0 and values["seconds_per_hvp"] > 0


@pytest.mark.trains
def test_a_run_writes_one_hparams_session_also_when_resumed_and_analyzed(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import metadata
    from tfmeta import analysis

    overrides = [f"run_dir={tmp_path / 'run'}", "train.iterations=5", "train.eval_tasks=5",
                 "train.keep_checkpoints=0", "landscape.flatness_tasks=1",
                 "landscape.coherence_tasks=4", "train.seed=7", "algorithm=maml-reg"]
    run_dir = training.train(config_lib.load("sine", [*overrides, "train.epochs=1"]),
                             progress=False, log=lambda _: None)
    training.train(config_lib.load("sine", [*overrides, "train.epochs=2"]), resume=True,
                   progress=False, log=lambda _: None)
    analysis.analyze(run_dir, progress=False, log=lambda _: None)
    sessions = []
    for events_dir in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}):
        events = event_accumulator.EventAccumulator(str(events_dir), size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            if tag == metadata.SESSION_START_INFO_TAG:
                for event in events.Tensors(tag):
                    content = events.SummaryMetadata(tag).plugin_data.content
                    sessions.append((events_dir, metadata.parse_session_start_info_plugin_data(
                        content)))
    assert len(sessions) == 1 and sessions[0][0] == run_dir / "logs"
    values = {k: v for k, v in sessions[0][1].hparams.items()}
    assert values["algorithm"].string_value == "maml-reg"
    assert values["seed"].number_value == 7 and values["inner_lr"].number_value == 0.01
    assert values["steps"].number_value == 1 and values["first_order"].bool_value is False
    assert values["maml_reg.gamma"].number_value == 0.5 and values["dataset"].string_value == "sine"
    assert {"ways", "shots", "queries", "test_steps", "meta_batch", "meta_lr", "model",
            "norm"} <= set(values)


@pytest.mark.trains
def test_training_logs_the_landscape_every_epoch_and_analyze_recomputes_it(tmp_path):
    from tfmeta import analysis
    from tensorboard.backend.event_processing import event_accumulator

    config = config_lib.load("sine", [
        f"run_dir={tmp_path / 'run'}", "train.epochs=2", "train.iterations=50",
        "train.eval_tasks=20", "train.keep_checkpoints=0", "landscape.flatness_tasks=2",
        "landscape.coherence_tasks=10", "landscape.batch=5"])
    run_dir = training.train(config, progress=False, log=lambda _: None)
    records = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all(f"landscape/{m}" in r for r in records for m in landscape_lib.METRICS)
    # the loss before adaptation is named so, apart from the adapted landscape/support_loss
    assert all(r["meta_train/support_loss_before_adaptation"] > r["landscape/support_loss"]
               for r in records)
    events = event_accumulator.EventAccumulator(str(run_dir / "logs"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    assert "landscape/flatness" in events.Tags()["tensors"]
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(
        events.Tensors("custom_scalars__config__")[0].tensor_proto).item())
    assert len(layout.category) == len(landscape_lib.METRICS)
    for category, metric in zip(layout.category, landscape_lib.METRICS):
        # two charts, so that each curve has its own y-axis
        assert [list(c.multiline.tag) for c in category.chart] == [
            [f"^landscape/{metric}$"], ["^meta_test/mse$"]]

    out = analysis.analyze(run_dir, progress=False, log=lambda _: None)
    rows = list(csv.DictReader(out.open()))
    assert [int(r["iteration"]) for r in rows] == [50, 100]
    for row, record in zip(rows, records):
        for metric in ("flatness", "trajectory_coherence", "gradient_coherence"):
            assert float(row[f"landscape/{metric}"]) == pytest.approx(
                record[f"landscape/{metric}"], rel=1e-4)
        assert float(row["meta_test/mse"]) == pytest.approx(record["meta_test/mse"], rel=1e-5)

    from click.testing import CliRunner
    from tfmeta_cli.main import cli
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    assert "flatness" in result.output
    assert (run_dir / "report" / "flatness.png").stat().st_size > 1000
    assert (run_dir / "report" / "correlations.csv").is_file()
