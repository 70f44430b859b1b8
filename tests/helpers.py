"""Small models, episodes and finite differences shared by the exactness tests; copies of runs."""

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from tfmeta import models
from tfmeta.tasks.episode import Episode


def tiny_mlp(seed: int = 0, hidden=(8, 8), activation: str = "tanh") -> models.MetaModel:
    """A smooth float64 MLP, so that central differences are accurate to ~1e-9."""
    tf.keras.utils.set_random_seed(seed)
    return models.mlp(hidden, activation=activation, dtype="float64")


def sine_episode(seed: int = 0, shots: int = 10, queries: int = 10) -> Episode:
    rng = np.random.default_rng(seed)
    amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
    x = rng.uniform(-5, 5, (shots + queries, 1))
    y = amplitude * np.sin(x + phase)
    t = lambda a: tf.constant(a, tf.float64)  # noqa: E731
    return Episode(t(x[:shots]), t(y[:shots]), t(x[shots:]), t(y[shots:]))


def image_episode(seed: int = 0, ways: int = 5, shots: int = 1, queries: int = 3,
                  size: int = 16, channels: int = 1) -> Episode:
    rng = np.random.default_rng(seed)
    t = lambda a: tf.constant(a, tf.float64)  # noqa: E731
    labels = lambda k: tf.constant(np.repeat(np.arange(ways), k), tf.int32)  # noqa: E731
    return Episode(t(rng.random((ways * shots, size, size, channels))), labels(shots),
                   t(rng.random((ways * queries, size, size, channels))), labels(queries))


def params_of(model) -> list:
    return [tf.convert_to_tensor(v) for v in model.trainable_variables]


def directional_fd(f, params, direction, eps: float) -> float:
    """(f(p + eps v) - f(p - eps v)) / (2 eps): the derivative of f along v."""
    plus = [p + eps * v for p, v in zip(params, direction)]
    minus = [p - eps * v for p, v in zip(params, direction)]
    return float((f(plus) - f(minus)) / (2 * eps))


def random_direction(params, seed: int) -> list:
    rng = np.random.default_rng(seed)
    v = [tf.constant(rng.standard_normal(p.shape), p.dtype) for p in params]
    norm = np.sqrt(sum(float(tf.reduce_sum(x * x)) for x in v))
    return [x / norm for x in v]


def dot(a, b) -> float:
    return float(sum(tf.reduce_sum(x * y) for x, y in zip(a, b)))


def train_tiny(run_dir, preset: str, *overrides):
    """A one-epoch, ten-iteration run of `preset` in `run_dir`, without landscape metrics."""
    from tfmeta import config as config_lib, training
    config = config_lib.load(preset, [f"run_dir={run_dir}", "train.epochs=1",
                                      "train.iterations=10", "train.eval_tasks=10",
                                      "landscape.every=0", *overrides])
    return training.train(config, progress=False, log=lambda _: None)


class SessionModel:
    """A SavedModel in TensorFlow's session-based loader, the mechanism of tensorflow_model_server
    and saved_model_cli: variables restored by the SavedModel's saver, signatures run by tensor
    names in a TF1 Session."""

    def __init__(self, version_dir):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"],
                                                                   str(version_dir))

    def run(self, signature: str, inputs: dict) -> dict:
        signature_def = self.meta_graph.signature_def[signature]
        fetches = {k: v.name for k, v in signature_def.outputs.items()}
        feed = {signature_def.inputs[k].name: v for k, v in inputs.items()}
        return self.session.run(fetches, feed)

    def close(self):
        self.session.close()


def session_run(version_dir, signature: str, inputs: dict) -> dict:
    """One signature call through `SessionModel`."""
    model = SessionModel(version_dir)
    try:
        return model.run(signature, inputs)
    finally:
        model.close()


def copy_run(run: Path, where: Path) -> Path:
    """A copy of `run` whose config points at the copy."""
    copy = where / "copy"
    shutil.copytree(run, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["run_dir"] = str(copy)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return copy


def graph_sentence(error) -> str:
    """The sentence of an in-graph refusal (`tfmeta.refusals`): what "assertion failed: [...]"
    holds in a TensorFlow error's message, which must hold no tensor name ("name:0") and no
    "Condition x ... did not hold element-wise" fragment."""
    import re
    text = getattr(error, "message", None) or str(error)
    assert "Condition x" not in text and not re.search(r"\w:0\b", text), text
    found = re.findall(r"assertion failed: \[(.*)\]", text)
    assert len(found) == 1 and "] [" not in found[0], text
    return found[0]
