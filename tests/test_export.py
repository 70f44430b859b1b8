"""The exported SavedModel against in-process adaptation, in a fresh process; its request checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import train_tiny
from tfmeta import config as config_lib, export, training
from tfmeta.adaptation import adapt
from tfmeta.errors import ConfigError
from tfmeta.models import apply



@pytest.fixture(scope="module")
def omniglot_run(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("omniglot") / "run", "omniglot_5w1s-cpu",
                      f"data.omniglot.data_dir={omniglot_dir}", "model.filters=8",
                      "train.meta_batch=2")


@pytest.fixture(scope="module")
def omniglot_export(omniglot_run, tmp_path_factory):
    return tf.saved_model.load(str(export.export_run(omniglot_run,
                                                     tmp_path_factory.mktemp("models") / "o")))


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("sine") / "run", "sine")


def episode_of(run_dir: Path):
    run = training.Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    run.restore()
    episode = next(iter(run.source.episodes("test", 7, 1).unbatch()))
    return run, episode


def in_process(run, episode, steps):
    config = run.config.adapt
    adapted, _ = adapt(run.eval_model, [tf.convert_to_tensor(v) for v in
                                        run.eval_model.trainable_variables],
                       episode.support, config, steps=steps)
    return apply(run.eval_model, adapted, episode.query_x).numpy()


FRESH = """
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
adapt = model.signatures["adapt_predict"]
out = {k: v.numpy() for k, v in adapt(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
default = model.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
out.update({"default_" + k: v.numpy() for k, v in default.items()})
out.update({"plain_" + k: v.numpy() for k, v in
            model.signatures["predict"](x=tf.constant(inputs["query_x"])).items()})
np.savez(sys.argv[3], **out)
"""


def run_fresh(version_dir: Path, inputs: dict, tmp_path: Path) -> dict:
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run([sys.executable, "-c", FRESH, str(version_dir), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "outputs.npz")], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return dict(np.load(tmp_path / "outputs.npz"))


def inputs_of(episode) -> dict:
    return {"support_x": episode.support_x.numpy(), "support_y": episode.support_y.numpy(),
            "query_x": episode.query_x.numpy()}


def test_omniglot_export_matches_in_process_adaptation_in_a_fresh_process(omniglot_run,
                                                                          tmp_path):
    version = export.export_run(omniglot_run, tmp_path / "models" / "omniglot", steps=4)
    assert version == tmp_path / "models" / "omniglot" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    metadata = export.read_metadata(version)
    assert (metadata["ways"], metadata["example_shape"], metadata["steps"]) == (5, [28, 28, 1], 4)
    run, episode = episode_of(omniglot_run)
    out = run_fresh(version, inputs_of(episode), tmp_path)
    expected = in_process(run, episode, 4)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(expected).numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["default_logits"], out["logits"])
    np.testing.assert_allclose(out["plain_logits"], in_process(run, episode, 0), atol=1e-5)
    # Real gradients inside the graph: relabelling the support set changes the answer.
    relabelled = inputs_of(episode)
    relabelled["support_y"] = (relabelled["support_y"] + 1) % 5
    again = run_fresh(version, relabelled, tmp_path)
    assert np.abs(again["logits"] - out["logits"]).max() > 1e-3
    np.testing.assert_array_equal(again["plain_logits"], out["plain_logits"])


def test_sine_export_any_sizes_and_next_version(sine_run, tmp_path):
    models = tmp_path / "models" / "sine"
    first = export.export_run(sine_run, models)
    second = export.export_run(sine_run, models, steps=2)
    assert (first.name, second.name) == ("1", "2")
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    with pytest.raises(ConfigError, match="exists"):
        export.export_run(sine_run, models, version=2)
    run, episode = episode_of(sine_run)
    loaded = tf.saved_model.load(str(second))
    for k, q in ((3, 7), (10, 1), (25, 40)):
        x = tf.random.stateless_uniform([k, 1], [k, q], -5, 5)
        y = tf.sin(x)
        query = tf.random.stateless_uniform([q, 1], [q, k], -5, 5)
        got = loaded.signatures["adapt_predict"](support_x=x, support_y=y, query_x=query)
        support = type(episode)(x, y, query, tf.sin(query))
        np.testing.assert_allclose(got["predictions"].numpy(), in_process(run, support, 2),
                                   atol=1e-5)
    assert json.loads(loaded.metadata_json.numpy())["task"] == "regression"


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(support_y=np.array([0, 1, 2, 3, 5], np.int32)), "outside \\[0, 5\\)"),
    (lambda r: r.update(support_y=np.array([0, 1, 2, 3, -1], np.int32)), "outside \\[0, 5\\)"),
    (lambda r: r.update(support_y=np.array([0, 1, 2, 3, 3], np.int32)), "needs a support example"),
    (lambda r: r["query_x"].__setitem__((0, 0, 0, 0), np.nan), "query_x contains NaN or Inf"),
    (lambda r: r["support_x"].__setitem__((1, 3, 3, 0), np.inf), "support_x contains NaN or Inf"),
    (lambda r: r.update(support_x=r["support_x"][:0], support_y=r["support_y"][:0]),
     "support_x is empty"),
    (lambda r: r.update(support_y=r["support_y"][:4]), "different numbers of examples"),
])
def test_bad_requests_fail_in_the_graph_with_a_named_input(omniglot_run, omniglot_export, change,
                                                          message):
    loaded = omniglot_export
    _, episode = episode_of(omniglot_run)
    request = inputs_of(episode)
    change(request)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["adapt_predict"](**{k: tf.constant(v) for k, v in request.items()})
