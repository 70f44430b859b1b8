"""Export: a SavedModel that adapts to each request's support set inside its own graph.

The default signature `adapt_predict` runs the same `adaptation.adapt` as training and evaluation
(T SGD steps on the support set, from the meta-trained weights), then applies the adapted weights
to the query:

    adapt_predict(support_x [K, *shape], support_y [K] int32 | [K, 1], query_x [Q, *shape])
        -> {"logits" [Q, N], "probabilities" [Q, N]}    for classification
        -> {"predictions" [Q, 1]}                        for regression
    adapt_predict_images(support_images [K] string, support_y [K] int32, query_images [Q] string)
        -> the same, from PNG or JPEG files (image datasets)
    predict(x [B, *shape]) -> the same, from the meta-trained weights without adaptation

K and Q may be any size. The query set is normalized as the model's `norm` mode says
(`models.query_outputs`): with "support", each query's answer depends only on the support set and
itself, so a request with one query gets the same answer as that query among others; with
"transductive" (the papers' batch norm), the queries of a request share statistics, so an answer
depends on the other queries sent with it. `export_run(norm="support")` serves a transductive
model with support statistics. `predict` normalizes x with its own statistics in either mode.

`adapt_predict_images` decodes and preprocesses inside the graph exactly as training did
(`tasks.image_format`). A classifier answers an M-way task for any M <= N: labels 0..M-1 adapt and
predict over those M classes (`losses.mask_classes`); the other logits are the lowest float and
their probabilities 0.

Bad requests fail inside the graph with an InvalidArgumentError whose message names the input, so
TensorFlow Serving and the embedded server reject them alike: more examples (support and query
together, or predict's x) than the export's `max_examples` (checked first, before any file is
decoded or any step taken), an empty support or query set,
support sizes that disagree, NaN or Inf values, labels outside [0, N), a support set of one class,
labels that skip a class, files that are empty or not PNG or JPEG, and files whose header declares
a side over the export's `max_image_side` (refused before they are decoded). Cost of a request: T forward and backward passes on
the support set and one forward pass on the query set (on support and query together with
"support" norm).

The export is written in TensorFlow Serving's layout, MODELS/NAME/<version>/{saved_model.pb,
variables/}, with the metadata (ways, norm mode, the inputs each signature expects, steps,
learning rate, source run) in `assets.extra/tfmeta.json`. It is written beside the target and
renamed into place, so a server watching MODELS/NAME never sees half a version; exports into one
MODELS/NAME take turns (a lock), and one that was killed leaves a hidden folder that the next
removes.
"""

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import types
from pathlib import Path
from typing import Callable, Optional

import tensorflow as tf

from tfmeta import adapted_task, files, rundir
from tfmeta.adaptation import AdaptedTask, adapt_task
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.model import NORMS
from tfmeta.errors import ConfigError
from tfmeta.models import MetaModel, apply
from tfmeta.refusals import bad_rows, first, refusal
from tfmeta.tasks.image_format import DEFAULT_MAX_SIDE, ImageFormat, decode_images

__all__ = ["export", "export_run", "read_metadata", "AdaptivePredictor", "next_version",
           "describe_signatures", "check_request", "examples_in_request", "too_many_examples",
           "queries_notice", "METADATA_FILE", "DEFAULT_MAX_EXAMPLES", "DEFAULT_SIGNATURE"]

METADATA_FILE = "assets.extra/tfmeta.json"
# Held while a version is chosen and written (a dot file: no server takes it for a version).
EXPORT_LOCK = ".export.lock"
# Support and query examples of one request: 20-way 5-shot with 15 queries a class is 400.
DEFAULT_MAX_EXAMPLES = 1000
# The signature that serving_default is.
DEFAULT_SIGNATURE = "adapt_predict"


class AdaptivePredictor(tf.Module):
    """The exported module: the meta-trained model and its serving functions.

    Args:
        model: a MetaModel whose variables hold the meta-trained weights; its `norm` mode decides
            how query sets are normalized.
        config: the inner loop; `steps` replaces its step count.
        steps: adaptation steps per request.
        metadata: JSON-serializable facts about the export, kept as `metadata_json`.
        image_format: the dataset's image files, for `adapt_predict_images`; None for none.
        max_image_side: the largest width or height of a file `adapt_predict_images` decodes.
        max_examples: the most examples one request may carry (support and query together).
        export_id: 16 hex digits that the tasks of `adapt` carry and `predict_task` checks.
        start: (params, support) -> where a task's adaptation starts, in the graph (the finetune
            baseline's per-task head: `adaptation.Origin.task`); None: the model's weights.
    """

    def __init__(self, model: MetaModel, config: AdaptConfig, steps: int, metadata: dict,
                 image_format: Optional[ImageFormat] = None,
                 max_image_side: int = DEFAULT_MAX_SIDE,
                 max_examples: int = DEFAULT_MAX_EXAMPLES, export_id: str = "0" * 16,
                 start: Optional[Callable[[list, tuple], list]] = None):
        super().__init__(name="tfmeta")
        self._start = start or (lambda params, support: params)
        self.model = model
        # The backend tf.Variables, tracked directly (as keras.export.ExportArchive does). Through
        # the Keras model alone they reach the object graph, which tf.saved_model.load restores,
        # but not the SavedModel's saver, which the session-based loader of TensorFlow Serving
        # and saved_model_cli restores: those would fail with "Could not find variable ...".
        self.backend_variables = [v.value for v in model.variables]
        self.config = dataclasses.replace(config, steps=steps)
        self.metadata_json = tf.Variable(json.dumps(metadata), trainable=False)
        self.image_format = image_format
        self.max_image_side = max_image_side
        self.max_examples = max_examples
        self.dtype = model.trainable_variables[0].dtype
        if model.loss_name == "cross_entropy":
            self.ways = model.head.units
        else:
            self.ways = 0
        # With per-step batch norm, a query sees the row of the last step taken, as in evaluation.
        self.query_step = self.config.steps - 1
        self.task_layout = adapted_task.layout(model, self._params(), self.query_step, export_id)

    def signatures(self) -> dict:
        """{signature name: concrete function} for `tf.saved_model.save`.

        The adaptation, the task's encoding and the answer from a task are each traced once, as
        functions that the array and image signatures call after their own checks. None of the
        tf.functions is an attribute of the module, so the SavedModel holds each graph once and
        saving does not trace them again."""
        model = self.model
        example = tf.TensorSpec([None, *model.example_shape], self.dtype)
        labels = (tf.TensorSpec([None], tf.int32, name="support_y") if self.ways else
                  tf.TensorSpec([None, model.head.units], self.dtype, name="support_y"))
        support, query, x = (tf.TensorSpec(example.shape, self.dtype, name=name)
                             for name in ("support_x", "query_x", "x"))
        task = tf.TensorSpec([], tf.string, name=adapted_task.NAME)
        function = lambda method, *specs: tf.function(  # noqa: E731
            method, input_signature=list(specs))
        traced = lambda method, *specs: function(method, *specs).get_concrete_function()  # noqa
        # A plain object, which tf.Module does not track.
        self._unchecked = types.SimpleNamespace(
            adapt_predict=function(self._adapted_outputs, support, labels, query),
            adapt=function(self._adapted_task, support, labels),
            predict_task=function(self._task_outputs, task, query))
        adapt_predict = traced(self._adapt_predict, support, labels, query)
        out = {"serving_default": adapt_predict, "adapt_predict": adapt_predict,
               "adapt": traced(self._adapt, support, labels),
               "predict_task": traced(self._predict_task, task, query),
               "predict": traced(self._predict, x)}
        if self.image_format is not None:
            files_of = lambda name: tf.TensorSpec([None], tf.string, name=name)  # noqa: E731
            out["adapt_predict_images"] = traced(self._adapt_predict_images,
                                                 files_of("support_images"), labels,
                                                 files_of("query_images"))
            out["adapt_images"] = traced(self._adapt_images, files_of("support_images"), labels)
            out["predict_task_images"] = traced(self._predict_task_images, task,
                                                files_of("query_images"))
        return out

    def _params(self) -> list:
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def _outputs(self, outputs: tf.Tensor) -> dict:
        if not self.ways:
            return {"predictions": outputs}
        return {"logits": outputs, "probabilities": tf.nn.softmax(outputs)}

    def _checked(self, support_x, support_y, query_x, names) -> tf.Tensor:
        """`support_x` once the request's checks have passed (query_x None for `adapt`)."""
        given = [x for x in (support_x, query_x) if x is not None]
        with tf.control_dependencies([self._check_count(*given)]):
            checks = check_request(support_x, support_y, query_x, self.ways, names)
        with tf.control_dependencies(checks):
            return tf.identity(support_x)

    def _adapted(self, support_x, support_y) -> AdaptedTask:
        support = (support_x, support_y)
        return adapt_task(self.model, self._start(self._params(), support), support, self.config,
                          steps=self.config.steps)

    def _adapted_outputs(self, support_x, support_y, query_x) -> dict:
        return self._outputs(self._adapted(support_x, support_y).outputs(query_x))

    def _adapted_task(self, support_x, support_y) -> dict:
        task = self._adapted(support_x, support_y)
        encoded = adapted_task.encode(
            self.task_layout, [task.params[i] for i in self.model.inner_indices],
            task.statistics, task.classes if self.ways else tf.constant(0))
        return {adapted_task.NAME: encoded}

    def _task_outputs(self, task, query_x) -> dict:
        inner, statistics, classes = adapted_task.decode(self.task_layout, task)
        params = self._params()
        for index, value in zip(self.model.inner_indices, inner):
            params[index] = value
        adapted = AdaptedTask(self.model, params, statistics, classes if self.ways else None,
                              self.query_step)
        return self._outputs(adapted.outputs(query_x))

    def _adapt_predict(self, support_x, support_y, query_x, names=("support_x", "query_x")):
        support_x = self._checked(support_x, support_y, query_x, names)
        return self._unchecked.adapt_predict(support_x, support_y, query_x)

    def _adapt(self, support_x, support_y, names=("support_x", None)):
        support_x = self._checked(support_x, support_y, None, names)
        return self._unchecked.adapt(support_x, support_y)

    def _predict_task(self, task, query_x, name="query_x"):
        with tf.control_dependencies([self._check_count(query_x)] +
                                     _check_examples(query_x, name)):
            query_x = tf.identity(query_x)
        return self._unchecked.predict_task(task, query_x)

    def _decode(self, images, name):
        return decode_images(images, self.image_format, name, self.dtype, self.max_image_side)

    def _adapt_predict_images(self, support_images, support_y, query_images):
        # Counted before a single file is decoded.
        with tf.control_dependencies([self._check_count(support_images, query_images)]):
            support_images, query_images = tf.identity(support_images), tf.identity(query_images)
        return self._adapt_predict(self._decode(support_images, "support_images"), support_y,
                                   self._decode(query_images, "query_images"),
                                   names=("support_images", "query_images"))

    def _adapt_images(self, support_images, support_y):
        with tf.control_dependencies([self._check_count(support_images)]):
            support_images = tf.identity(support_images)
        return self._adapt(self._decode(support_images, "support_images"), support_y,
                           names=("support_images", None))

    def _predict_task_images(self, task, query_images):
        with tf.control_dependencies([self._check_count(query_images)]):
            query_images = tf.identity(query_images)
        return self._predict_task(task, self._decode(query_images, "query_images"),
                                  name="query_images")

    def _predict(self, x):
        with tf.control_dependencies([self._check_count(x)] + _check_examples(x, "x")):
            x = tf.identity(x)
        # No step taken: per-step batch norm's first row, as evaluation's 0-step score uses.
        return self._outputs(apply(self.model, self._params(), x, step=0))

    def _check_count(self, *inputs) -> tf.Operation:
        """An assertion that `inputs` hold at most `max_examples` examples (rows) together."""
        count = tf.add_n([tf.shape(x, out_type=tf.int64)[0] for x in inputs])
        return refusal(count <= self.max_examples, too_many_examples("{}", self.max_examples),
                       count)


def _check_examples(x: tf.Tensor, name: str) -> list:
    empty = refusal(tf.shape(x)[0] > 0, f"{name} is empty; send at least one example")
    with tf.control_dependencies([empty]):
        bad = bad_rows(x)
    return [empty, refusal(tf.logical_not(tf.reduce_any(bad)),
                           f"{name} holds NaN or Inf in example {{}}", first(bad))]


def check_request(support_x: tf.Tensor, support_y: tf.Tensor, query_x: Optional[tf.Tensor],
                  ways: int, names=("support_x", "query_x")) -> list:
    """Graph assertions on one adapt_predict request (query_x None: an `adapt` request, support
    only); `ways` 0 means regression; `names` are the support and query inputs' names for the
    messages (`refusals`: each one sentence).

    A classifier's labels must lie in [0, ways), hold at least two classes (one class leaves
    nothing to learn, and is most likely a client's mistake) and use every class in
    0..max(support_y). The label checks run after the emptiness checks and each after the one
    before, so a request is reported by its first fault.
    """
    support, query = names
    checks = _check_examples(support_x, support) + (
        _check_examples(query_x, query) if query_x is not None else [])
    examples, labels = tf.shape(support_x)[0], tf.shape(support_y)[0]
    checks.append(refusal(tf.equal(examples, labels), f"{support} holds {{}} examples but "
                          "support_y holds {} labels; send one label per support example",
                          examples, labels))
    if not ways:
        with tf.control_dependencies(checks):
            bad = tf.logical_not(tf.math.is_finite(tf.reshape(support_y, [labels, -1])[:, 0]))
        checks.append(refusal(tf.logical_not(tf.reduce_any(bad)),
                              "support_y holds NaN or Inf at index {}", first(bad)))
        return checks
    with tf.control_dependencies(checks):
        outside = (support_y < 0) | (support_y >= ways)
        at = first(outside)
        in_range = [refusal(tf.logical_not(tf.reduce_any(outside)),
                            f"support_y holds {{}} at index {{}}; labels must lie in [0, {ways})",
                            tf.gather(tf.concat([support_y, [0]], 0), at), at)]
    with tf.control_dependencies(in_range):  # bincount itself fails on a negative label
        counts = tf.math.bincount(support_y, minlength=ways, maxlength=ways)
        low, high = tf.reduce_min(support_y), tf.reduce_max(support_y)
        two_classes = refusal(low < high, "support_y holds one class only (label {} on all {} "
                              "support examples); a task needs at least two classes",
                              high, tf.size(support_y))
    with tf.control_dependencies([two_classes]):
        missing = tf.logical_and(tf.equal(counts, 0), tf.range(ways) <= high)
    checks += in_range + [two_classes, refusal(
        tf.logical_not(tf.reduce_any(missing)),
        "support_y has no example of class {} although its largest label is {}; labels must "
        "be the classes 0..M-1 with a support example of each", first(missing), high)]
    return checks


def describe_signatures(model: MetaModel, image_format: Optional[ImageFormat],
                        max_image_side: int = DEFAULT_MAX_SIDE) -> dict:
    """What each signature takes and returns, for the export's metadata."""
    dtype = tf.as_dtype(model.trainable_variables[0].dtype).name
    shape = ["K", *model.example_shape]
    if image_format is not None:
        example = {"dtype": dtype, **image_format.describe()}
    else:
        example = {"dtype": dtype, "shape": list(model.example_shape)}
    if model.loss_name == "cross_entropy":
        ways = model.head.units
        labels = {"dtype": "int32", "shape": ["K"],
                  "values": f"classes 0..M-1 for any 2 <= M <= {ways}, each with an example"}
        outputs = {"logits": {"dtype": dtype, "shape": ["Q", ways],
                              "note": "classes >= M hold the lowest float"},
                   "probabilities": {"dtype": dtype, "shape": ["Q", ways],
                                     "note": "softmax over the M classes; 0 for the others"}}
    else:
        labels = {"dtype": dtype, "shape": ["K", model.head.units]}
        outputs = {"predictions": {"dtype": dtype, "shape": ["Q", model.head.units]}}
    task = {"dtype": "string", "shape": [],
            "encoding": "an adapted task: opaque bytes (REST: {\"b64\": ...})"}
    independent = model.query_independent
    dependence = ("each query's answer depends only on the support set and itself"
                  if independent else
                  "each query's answer depends on the other queries of the request (they are "
                  "normalized together): send a task's queries in one request")
    signatures = {
        "adapt_predict": {
            "inputs": {"support_x": {**example, "shape": shape}, "support_y": labels,
                       "query_x": {**example, "shape": ["Q", *shape[1:]]}},
            "outputs": outputs, "query_independent": independent, "queries": dependence},
        "adapt": {
            "inputs": {"support_x": {**example, "shape": shape}, "support_y": labels},
            "outputs": {adapted_task.NAME: task},
            "queries": "send the task with each later request to predict_task"},
        "predict_task": {
            "inputs": {adapted_task.NAME: task, "query_x": {**example, "shape": ["Q", *shape[1:]]}},
            "outputs": outputs, "query_independent": independent, "queries": dependence},
        "predict": {
            "inputs": {"x": {**example, "shape": ["B", *shape[1:]]}},
            "outputs": outputs, "query_independent": not model.normalizes,
            "queries": "no adaptation" + ("" if not model.normalizes else
                                          "; the rows of x are normalized together")}}
    if image_format is not None:
        files = {"dtype": "string", "encoding": "PNG or JPEG file bytes (REST: {\"b64\": ...})",
                 "max_side": max_image_side,
                 "preprocessing": image_format.describe()["preprocessing"] + ", in the graph"}
        signatures["adapt_predict_images"] = {
            "inputs": {"support_images": {**files, "shape": ["K"]}, "support_y": labels,
                       "query_images": {**files, "shape": ["Q"]}},
            "outputs": outputs, "query_independent": independent, "queries": dependence}
        signatures["adapt_images"] = {
            "inputs": {"support_images": {**files, "shape": ["K"]}, "support_y": labels},
            "outputs": {adapted_task.NAME: task},
            "queries": "send the task with each later request to predict_task_images"}
        signatures["predict_task_images"] = {
            "inputs": {adapted_task.NAME: task, "query_images": {**files, "shape": ["Q"]}},
            "outputs": outputs, "query_independent": independent, "queries": dependence}
    return signatures


def too_many_examples(count, limit: int) -> str:
    """The refusal of a request of `count` examples (a number, or "{}" for the graph's format)."""
    return (f"the request holds {count} examples, over the limit of {limit} per request set at "
            "export (tfmeta export --max-examples); send its queries in several requests")


def examples_in_request(metadata: dict, signature: str, shapes: dict) -> int:
    """The examples a request carries, as the export's `max_examples` counts them: the sizes of
    the signature's example dimensions (K support and Q query examples, or B rows), read from
    `shapes` {input name: shape}. An input whose leading dimension the metadata does not name as
    one of them is not counted."""
    signatures = metadata["signatures"]
    described = signatures.get(DEFAULT_SIGNATURE if signature == "serving_default"
                               else signature, {"inputs": {}})
    sizes = {}
    for name, info in described["inputs"].items():
        dimension = info["shape"][0] if info.get("shape") else None
        if isinstance(dimension, str) and shapes.get(name):
            sizes[dimension] = max(sizes.get(dimension, 0), int(shapes[name][0]))
    return sum(sizes.values())


def next_version(model_dir: Path) -> int:
    """1 + the largest integer version under `model_dir` (1 when there is none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and p.is_dir()]
    return max(versions, default=0) + 1


def export(model: MetaModel, config: AdaptConfig, out: Path, steps: int, metadata: dict,
           version: Optional[int] = None, image_format: Optional[ImageFormat] = None,
           max_image_side: int = DEFAULT_MAX_SIDE,
           max_examples: int = DEFAULT_MAX_EXAMPLES,
           start: Optional[Callable[[list, tuple], list]] = None) -> Path:
    """Writes `model` as MODELS/NAME/<version> (`out` is MODELS/NAME); returns the version path.
    `start` is where each request's adaptation starts (`AdaptivePredictor`).

    `metadata` is completed with the version, the norm mode, the image format, the largest image
    side accepted (`max_image_side`), the most examples a request may carry (`max_examples`) and
    the signatures' inputs.

    Raises:
        ConfigError: the version exists or is not positive, or `max_image_side` or
            `max_examples` is below 1.
    """
    if max_image_side < 1:
        raise ConfigError(f"--max-image-side must be a positive number of pixels, got "
                          f"{max_image_side}")
    if max_examples < 1:
        raise ConfigError(f"--max-examples must be a positive number of examples, got "
                          f"{max_examples}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One export at a time into a model directory: the next free version is chosen, written and
    # renamed into place under the lock, and a second export waits for its turn.
    with files.exclusive(out / EXPORT_LOCK, wait=True):
        for stale in out.glob(".*.partial-*"):   # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
        version = next_version(out) if version is None else version
        if version < 1:
            raise ConfigError(f"--version must be a positive integer, got {version}")
        target = out / str(version)
        if target.exists():
            raise ConfigError(f"{target} exists; choose another --version (next free: "
                              f"{next_version(out)})")
        metadata = {**metadata, "version": version, "norm": model.norm,
                    "query_independent": model.query_independent,
                    "image_format": dataclasses.asdict(image_format) if image_format else None,
                    "max_image_side": max_image_side if image_format else None,
                    "max_examples": max_examples,
                    "signatures": describe_signatures(model, image_format, max_image_side)}
        export_id = secrets.token_hex(8)
        metadata["task_export_id"] = export_id
        module = AdaptivePredictor(model, config, steps, metadata, image_format, max_image_side,
                                   max_examples, export_id, start)
        metadata["task_bytes"] = module.task_layout.length
        module.metadata_json.assign(json.dumps(metadata))
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=out))
        try:
            # The inner loop's gradients are ops of the traced graphs; a served model is never
            # differentiated, so the custom gradients' own functions are not saved.
            tf.saved_model.save(module, str(staging), signatures=module.signatures(),
                                options=tf.saved_model.SaveOptions(
                                    experimental_custom_gradients=False))
            (staging / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            os.chmod(staging, 0o777 & ~files.umask())   # mkdtemp's folder is private (0700)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def read_metadata(version_dir: Path) -> dict:
    """The metadata an export carries (ways, norm, example_shape, signatures, steps, lr, ...)."""
    return json.loads((Path(version_dir) / METADATA_FILE).read_text())


def queries_notice(metadata: dict) -> str:
    """One plain sentence for a server's log: may a query's answer depend on the rest of the
    request?"""
    if metadata.get("query_independent", True):
        return (f"each query is answered from the support set and itself alone (norm: "
                f"{metadata.get('norm', 'none')}): clients may send one query per request")
    return (f"a query's answer depends on the other queries of its request (norm: "
            f"{metadata['norm']}, transductive batch norm): send a task's queries together, or "
            f"re-export with `tfmeta export --norm support` to answer one query at a time")


def export_run(run_dir: Path, out: Path, version: Optional[int] = None,
               steps: Optional[int] = None, checkpoint: Optional[str] = None,
               norm: Optional[str] = None, max_image_side: Optional[int] = None,
               max_examples: int = DEFAULT_MAX_EXAMPLES,
               log: Callable[[str], None] = print) -> Path:
    """Exports a run's checkpoint (default: the latest) with `steps` adaptation steps per
    request (default: the run's test steps); returns the version directory.

    `norm` serves the model with another query normalization than it was trained with (one of
    NORMS; "support" lets a transductive model answer one query at a time). `max_image_side`
    (default `image_format.DEFAULT_MAX_SIDE`) is the largest side of an image file the image
    signature accepts; it is for image datasets only. `max_examples` is the most support and
    query examples one request may carry.
    """
    from tfmeta.run import Run

    if norm is not None and norm not in NORMS:
        raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    run_dir = Path(run_dir)
    saved = rundir.read_config(run_dir)
    trained = saved.model.norm
    run = Run.open(run_dir, config=dataclasses.replace(
        saved, model=dataclasses.replace(saved.model, norm=norm or trained)))
    config = run.config
    path = run.restore(checkpoint, log)
    model = run.eval_model
    # The weights adaptation starts from (the finetune baseline's: a fresh head) are the export's.
    for variable, value in zip(model.trainable_variables, run.origin.params()):
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
        "learned_lr": model.inner.learned_lr or "none",
        **({"lr_note": "the learned rates' starting value: adaptation uses the meta-learned "
                       "rates"} if model.inner.learned_lr else {}),
        "trained_norm": trained,
        "run_dir": str(run_dir.resolve()), "checkpoint": str(Path(path).resolve())}
    image_format = run.source.image_format
    if max_image_side is not None and image_format is None:
        raise ConfigError(f"--max-image-side is for models of image files; {run_dir} is a "
                          f"{config.data.dataset} run, whose export has no image signature")
    # Each request starts where evaluation starts its task (the finetune baseline: a head drawn
    # from the support set), so an export answers as evaluation scores.
    return export(model, config.adapt, out, steps, metadata, version, image_format,
                  DEFAULT_MAX_SIDE if max_image_side is None else max_image_side, max_examples,
                  run.origin.task)
