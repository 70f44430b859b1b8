"""Export: a SavedModel that adapts to each request's support set inside its own graph.

The default signature `adapt_predict` runs the same `adaptation.adapt` as training and evaluation
(T SGD steps on the support set, from the meta-trained weights), then applies the adapted weights
to the query:

    adapt_predict(support_x [K, *shape], support_y [K] int32 | [K, 1], query_x [Q, *shape])
        -> {"logits" [Q, N], "probabilities" [Q, N]}    for classification
        -> {"predictions" [Q, 1]}                        for regression

`predict(x [B, *shape])` applies the meta-trained weights without adaptation. K and Q may be any
size. Batch normalization uses the statistics of the batch it normalizes (the support set while
adapting, the query set for predictions), as in meta-training, so a query's prediction depends on
the other queries of its request, exactly as in `tfmeta evaluate`.

Bad requests fail inside the graph with an InvalidArgumentError whose message names the input, so
TensorFlow Serving and the embedded server reject them alike: an empty support or query set,
support sizes that disagree, NaN or Inf values, labels outside [0, N), or a class without a support
example. Cost of a request: T forward and backward passes on the support set and one forward pass
on the query set.

The export is written in TensorFlow Serving's layout, MODELS/NAME/<version>/{saved_model.pb,
variables/}, with the metadata (ways, example shape, steps, learning rate, source run) in
`assets.extra/tfmeta.json`. It is written beside the target and renamed into place, so a server
watching MODELS/NAME never sees half a version.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import tensorflow as tf

from tfmeta.adaptation import AdaptConfig, adapt
from tfmeta.errors import ConfigError
from tfmeta.models import MetaModel, apply

METADATA_FILE = "assets.extra/tfmeta.json"


class AdaptivePredictor(tf.Module):
    """The exported module: the meta-trained model and its two serving functions.

    Args:
        model: a MetaModel whose variables hold the meta-trained weights.
        config: the inner loop; `steps` replaces its step count.
        steps: adaptation steps per request.
        metadata: JSON-serializable facts about the export, kept as `metadata_json`.
    """

    def __init__(self, model: MetaModel, config: AdaptConfig, steps: int, metadata: dict):
        super().__init__(name="tfmeta")
        self.model = model
        # The backend tf.Variables, tracked directly (as keras.export.ExportArchive does). Through
        # the Keras model alone they reach the object graph, which tf.saved_model.load restores,
        # but not the SavedModel's saver, which the session-based loader of TensorFlow Serving
        # and saved_model_cli restores: those would fail with "Could not find variable ...".
        self.backend_variables = [v.value for v in model.variables]
        self.config = dataclasses.replace(config, steps=steps)
        self.metadata_json = tf.Variable(json.dumps(metadata), trainable=False)
        dtype = model.trainable_variables[0].dtype
        example = tf.TensorSpec([None, *model.example_shape], dtype)
        if model.loss_name == "cross_entropy":
            self.ways = model.head.units
            labels = tf.TensorSpec([None], tf.int32, name="support_y")
        else:
            self.ways = 0
            labels = tf.TensorSpec([None, model.head.units], dtype, name="support_y")
        self.adapt_predict = tf.function(self._adapt_predict, input_signature=[
            tf.TensorSpec(example.shape, dtype, name="support_x"), labels,
            tf.TensorSpec(example.shape, dtype, name="query_x")])
        self.predict = tf.function(self._predict, input_signature=[
            tf.TensorSpec(example.shape, dtype, name="x")])

    def _params(self) -> list:
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def _outputs(self, outputs: tf.Tensor) -> dict:
        if self.ways:
            return {"logits": outputs, "probabilities": tf.nn.softmax(outputs)}
        return {"predictions": outputs}

    def _adapt_predict(self, support_x, support_y, query_x):
        checks = check_request(support_x, support_y, query_x, self.ways)
        with tf.control_dependencies(checks):
            support_x = tf.identity(support_x)
        adapted, _ = adapt(self.model, self._params(), (support_x, support_y), self.config)
        return self._outputs(apply(self.model, adapted, query_x))

    def _predict(self, x):
        with tf.control_dependencies(_check_examples(x, "x")):
            x = tf.identity(x)
        return self._outputs(apply(self.model, self._params(), x))


def _check_examples(x: tf.Tensor, name: str) -> list:
    return [tf.debugging.assert_positive(tf.shape(x)[0], message=f"{name} is empty"),
            tf.debugging.assert_all_finite(x, f"{name} contains NaN or Inf")]


def check_request(support_x: tf.Tensor, support_y: tf.Tensor, query_x: tf.Tensor,
                  ways: int) -> list:
    """Graph assertions on one adapt_predict request; `ways` 0 means regression."""
    checks = _check_examples(support_x, "support_x") + _check_examples(query_x, "query_x")
    checks.append(tf.debugging.assert_equal(
        tf.shape(support_y)[0], tf.shape(support_x)[0],
        message="support_x and support_y hold different numbers of examples"))
    if not ways:
        checks.append(tf.debugging.assert_all_finite(support_y, "support_y contains NaN or Inf"))
        return checks
    in_range = [
        tf.debugging.assert_non_negative(
            support_y, message=f"support_y holds a label outside [0, {ways})"),
        tf.debugging.assert_less(
            support_y, ways, message=f"support_y holds a label outside [0, {ways})")]
    checks += in_range
    with tf.control_dependencies(in_range):  # bincount itself fails on a negative label
        counts = tf.math.bincount(support_y, minlength=ways, maxlength=ways)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(counts > 0),
        [f"every class in [0, {ways}) needs a support example; examples per class:", counts]))
    return checks


def next_version(model_dir: Path) -> int:
    """1 + the largest integer version under `model_dir` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def export(model: MetaModel, config: AdaptConfig, out: Path, steps: int, metadata: dict,
           version: Optional[int] = None) -> Path:
    """Writes `model` as MODELS/NAME/<version> (`out` is MODELS/NAME); returns the version path.

    Raises:
        ConfigError: the version exists or is not positive.
    """
    out = Path(out)
    version = next_version(out) if version is None else version
    if version < 1:
        raise ConfigError(f"--version must be a positive integer, got {version}")
    target = out / str(version)
    if target.exists():
        raise ConfigError(f"{target} exists; choose another --version (next free: "
                          f"{next_version(out)})")
    out.mkdir(parents=True, exist_ok=True)
    module = AdaptivePredictor(model, config, steps, {**metadata, "version": version})
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=out))
    try:
        tf.saved_model.save(module, str(staging), signatures={
            "serving_default": module.adapt_predict.get_concrete_function(),
            "adapt_predict": module.adapt_predict.get_concrete_function(),
            "predict": module.predict.get_concrete_function()})
        (staging / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
        (staging / METADATA_FILE).write_text(json.dumps({**metadata, "version": version},
                                                        indent=2))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_metadata(version_dir: Path) -> dict:
    """The metadata an export carries (ways, example_shape, steps, lr, ...)."""
    return json.loads((Path(version_dir) / METADATA_FILE).read_text())


def export_run(run_dir: Path, out: Path, version: Optional[int] = None,
               steps: Optional[int] = None, checkpoint: Optional[str] = None) -> Path:
    """Exports a run's checkpoint (default: the latest) with `steps` adaptation steps per
    request (default: the run's test steps); returns the version directory."""
    from tfmeta import training

    run_dir = Path(run_dir)
    run = training.Run.open(run_dir)
    config = run.config
    path = run.restore(checkpoint)
    model = run.eval_model
    if run.eval_params is not None:
        for variable, value in zip(model.trainable_variables, run.eval_params()):
            variable.assign(value)
    steps = config.adapt.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    metadata = {
        "algorithm": config.algorithm, "dataset": config.data.dataset,
        "task": "classification" if model.loss_name == "cross_entropy" else "regression",
        "ways": model.head.units if model.loss_name == "cross_entropy" else 0,
        "shots": config.data.shots, "example_shape": list(model.example_shape),
        "dtype": config.model.dtype, "steps": steps, "lr": config.adapt.lr,
        "run_dir": str(run_dir.resolve()), "checkpoint": path}
    return export(model, config.adapt, out, steps, metadata, version)
