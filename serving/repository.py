"""The model a server holds: the newest version under a base path, swapped in as versions appear.

TensorFlow Serving's layout is BASE/<integer version>/saved_model.pb. The repository loads the
largest version that has a saved_model.pb, serves it, and polls BASE for a newer one; a request in
flight keeps the version it started with. A version is loaded as TensorFlow Serving loads it: the
session-based SavedModel loader (`tf.compat.v1.saved_model.loader.load`), its signatures run by
tensor name in a Session, with the request's deadline as `RunOptions.timeout_in_ms`, so that an
expired request is cancelled inside the graph. A version's sessions are a `sessions.SessionPool`:
warm, one per prediction slot and a spare, so that a cancelled request can close its own. Inputs
are typed arrays checked against the signature's specs (names, exact dtype, shape) before the
call: like TF Serving, nothing is cast. Errors carry an HTTP status: 400 for a bad request
(including the model's own InvalidArgumentError checks and the export's example count), 404 for
an unknown model or version, 429 when the server runs out of memory for a request, 499 for a
request its client cancelled, 503 when the server is busy, 504 past the deadline, 500 for
anything else. Each request runs the signature on its own inputs
alone: requests are never batched together.
"""

import gc
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfmeta import export
from tfmeta_serving.errors import ServingError
from tfmeta_serving import task_cache
from tfmeta_serving.sessions import SessionPool

DEFAULT_SIGNATURE = "serving_default"


@dataclass
class Version:
    """One loaded version of a model.

    Attributes:
        number: the version directory's integer name.
        path: the version directory.
        sessions: the Sessions holding the restored graph and variables.
        signature_defs: the SignatureDef protos by signature name, as saved_model.pb has them.
        inputs: per signature, the input TensorSpecs by input name.
        metadata: tfmeta's metadata (`export.read_metadata`), or None for another SavedModel.
    """
    number: int
    path: Path
    sessions: SessionPool
    signature_defs: dict
    inputs: dict
    metadata: Optional[dict] = None

    def check_examples(self, signature: str, shapes: dict) -> None:
        """A 400 when a request of `shapes` {input: shape} holds more examples than the export's
        `max_examples`, before any of its work (the exported graph checks it too)."""
        if not self.metadata or not self.metadata.get("max_examples"):
            return
        count = export.examples_in_request(self.metadata, signature, shapes)
        if count > self.metadata["max_examples"]:
            raise ServingError(400, export.too_many_examples(count, self.metadata["max_examples"]))


class _LoaderDeprecation(logging.Filter):
    """Drops TensorFlow's notice that the session-based loader is deprecated: it is chosen on
    purpose, as the loader TensorFlow Serving itself uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is deprecated" not in record.getMessage()


def load_version(path: Path, sessions: int = 1,
                 on_full: Callable[[], None] = lambda: None) -> Version:
    """Loads BASE/<version> with the session-based loader, into a pool of `sessions`
    (`SessionPool`; `on_full` is called once they are all warm), and reads its signatures."""
    quiet = _LoaderDeprecation()
    tf.get_logger().addFilter(quiet)
    try:
        sessions = SessionPool(path, tf.Graph(), sessions, on_full)
    finally:
        tf.get_logger().removeFilter(quiet)
    defs = dict(sessions.meta_graph.signature_def)
    # "__saved_model_init_op" is the SavedModel's initializer, listed among the signatures.
    inputs = {name: {key: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype))
                     for key, info in signature.inputs.items()}
              for name, signature in defs.items() if not name.startswith("__")}
    try:
        metadata = export.read_metadata(path)
    except (OSError, ValueError):   # not a tfmeta export, or damaged: reported on loading
        metadata = None
    return Version(int(path.name), path, sessions, defs, inputs, metadata)


# A version directory's name: ASCII digits only (str.isdigit also takes "²" and "١"), and few
# enough of them for an int64, as TensorFlow Serving reads versions.
VERSION = re.compile(r"[0-9]{1,18}")


def versions_in(base: Path) -> list:
    """Integer version directories under `base` that hold a saved_model.pb, oldest first."""
    found = [p for p in base.iterdir()
             if VERSION.fullmatch(p.name) and (p / "saved_model.pb").is_file()]
    return sorted(found, key=lambda p: int(p.name))


def _fingerprint(path: Path) -> tuple:
    """The names, sizes and modification times of a version directory's files: a version that
    failed to load is tried again once it changes (it may have been seen half-written)."""
    try:
        return tuple(sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                            for f in path.rglob("*") if f.is_file()))
    except OSError:
        return ()


class Repository:
    """Serves the newest version of the model under `base_path` as `name`, each version with a
    pool of `sessions` (`SessionPool`: one per prediction slot and a spare), and a cache of
    adapted tasks of `task_cache_bytes` (0: none)."""

    def __init__(self, name: str, base_path: Path, log: Callable[[str], None] = print,
                 sessions: int = 1, task_cache_bytes: int = 0):
        self.name = name
        # Adapted tasks of repeated support sets (`predict`); None: every request adapts.
        self.task_cache = task_cache.TaskCache(task_cache_bytes) if task_cache_bytes else None
        self.sessions = sessions
        self.base_path = Path(base_path)
        self.log = log
        self._current: Optional[Version] = None
        self._lock = threading.Lock()
        self._failed: dict = {}   # path -> its fingerprint when it failed to load
        self._skipped: set = set()

    @property
    def current(self) -> Optional[Version]:
        return self._current

    def refresh(self) -> bool:
        """Loads a version newer than the one served, if any; returns whether it swapped."""
        self._log_skipped()
        candidates = [p for p in versions_in(self.base_path)
                      if self._failed.get(p) != _fingerprint(p)
                      and (self._current is None or int(p.name) > self._current.number)]
        if not candidates:
            return False
        path = candidates[-1]
        try:
            number = int(path.name)
            version = load_version(path, self.sessions, lambda: self.log(
                f"version {number}: {self.sessions} sessions warm"))
        except Exception as error:  # a corrupt or half-written export must not take the server down
            self._failed[path] = _fingerprint(path)
            self.log(f"could not load {path}: {first_line(str(error))}; it is tried again when "
                     "its files change")
            return False
        self._failed.pop(path, None)
        with self._lock:
            replaced, self._current = self._current, version
        if replaced is not None:
            replaced.sessions.close()   # requests in flight keep their leased sessions
        # TensorFlow and the model leave ~350k objects for the cyclic collector, which a JSON
        # request's ~100k new lists make it walk several times: 3x the request's cost. Frozen,
        # they are skipped (a replaced version's cyclic garbage then stays; versions are rare).
        gc.collect()
        gc.freeze()
        self.log(f"serving {self.name} version {version.number} from {path}: signatures "
                 f"{', '.join(sorted(version.inputs))}")
        if version.metadata is not None:
            self.log(export.queries_notice(version.metadata))
        else:
            self.log(f"no tfmeta metadata in {path / export.METADATA_FILE}; cannot say whether "
                     "answers depend on the rest of a request")
        return True

    def _log_skipped(self) -> None:
        """Logs, once each, the entries of the base path that are not version directories."""
        for entry in self.base_path.iterdir():
            if (entry.name not in self._skipped and not entry.name.startswith(".")
                    and not VERSION.fullmatch(entry.name)):
                self._skipped.add(entry.name)
                self.log(f"skipping {entry}: a version is a directory named by an integer")

    def watch(self, seconds: float) -> threading.Thread:
        """Polls for new versions every `seconds` in a daemon thread, which logs and outlives any
        error of one poll (an unreadable base path, a version that cannot load)."""
        def loop():
            while True:
                time.sleep(seconds)
                try:
                    self.refresh()
                except Exception as error:
                    self.log(f"looking for new versions under {self.base_path} failed: "
                             f"{type(error).__name__}: {first_line(str(error))}")
        thread = threading.Thread(target=loop, name="version-watch", daemon=True)
        thread.start()
        return thread

    def get(self, name: str, version: Optional[int] = None) -> Version:
        """The served version, if `name` and `version` (None: any) name it; else 404."""
        if name != self.name:
            raise ServingError(404, f"model '{name}' is not served here; this server serves "
                                    f"'{self.name}'")
        current = self._current
        if current is None:
            raise ServingError(404, f"model '{name}' has no loadable version yet")
        if version is not None and version != current.number:
            raise ServingError(404, f"model '{name}' version {version} is not served; the "
                                    f"served version is {current.number}")
        return current

    def signature(self, name: str, version: Optional[int], signature: Optional[str]) -> tuple:
        """(Version, signature name, {input name: TensorSpec}) of a request, or a 404 or 400."""
        served = self.get(name, version)
        signature = signature or DEFAULT_SIGNATURE
        if signature not in served.inputs:
            raise ServingError(400, f"unknown signature '{signature}'; model '{name}' has: "
                                    f"{', '.join(sorted(served.inputs))}")
        return served, signature, served.inputs[signature]


def check_names(signature: str, specs: dict, inputs: dict) -> None:
    """A 400 unless `inputs` names exactly the signature's inputs."""
    missing = [k for k in specs if k not in inputs]
    if missing:
        raise ServingError(400, f"missing input '{missing[0]}'; signature '{signature}' "
                                f"takes {', '.join(specs)}")
    extra = [k for k in inputs if k not in specs]
    if extra:
        raise ServingError(400, f"unknown input '{extra[0]}'; signature '{signature}' "
                                f"takes {', '.join(specs)}")


def deadline_after(milliseconds: Optional[float]) -> Optional[float]:
    """The `time.monotonic()` instant `milliseconds` from now; None (no deadline) for None or 0,
    as TensorFlow Serving reads a timeout of 0."""
    return time.monotonic() + milliseconds / 1000 if milliseconds else None


def milliseconds_left(deadline: Optional[float]) -> Optional[int]:
    """Whole milliseconds until `deadline` (None: no deadline); a 504 when none are left."""
    if deadline is None:
        return None
    left = math.floor((deadline - time.monotonic()) * 1000)
    if left <= 0:
        raise ServingError(504, "the request's deadline passed before the model ran")
    return left


def run(served: Version, signature: str, inputs: dict, deadline: Optional[float] = None,
        cancellation=None) -> dict:
    """Calls `signature` of a loaded version on typed arrays named as its inputs (`check_names`),
    cancelled at `deadline` (a `time.monotonic()` instant; None: none) or by `cancellation` (an
    `admission.Cancellation`, which closes the request's session); the model's own checks become
    400s, the deadline a 504 and a cancellation a 499."""
    specs = served.inputs[signature]
    definition = served.signature_defs[signature]
    feed = {definition.inputs[k].name: checked(k, inputs[k], spec, signature)
            for k, spec in specs.items()}
    fetches = {k: v.name for k, v in definition.outputs.items()}
    timeout = milliseconds_left(deadline)
    options = tf.compat.v1.RunOptions(timeout_in_ms=timeout or 0)
    with served.sessions.lease() as session:
        if cancellation is not None:
            cancellation.on_cancel(session.close)
        try:
            return session.run(fetches, feed, options=options)
        except tf.errors.InvalidArgumentError as error:
            raise ServingError(400, describe_error(error.message, specs)) from None
        except tf.errors.DeadlineExceededError:
            raise ServingError(504, f"the request's deadline passed while the model ran "
                                    f"({timeout} ms were left); it was cancelled") from None
        except Exception as error:
            if cancellation is not None and cancellation.cancelled:
                raise ServingError(499, "the client cancelled the request") from None
            if isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError)):
                raise ServingError(507, "the server ran out of memory for this request") from None
            raise ServingError(500, f"{type(error).__name__}: {first_line(str(error))}") from None
        finally:
            if cancellation is not None:
                cancellation.on_cancel(None)


def checked(name: str, array: np.ndarray, spec: tf.TensorSpec, signature: str) -> np.ndarray:
    """A typed array fed as it is, or a 400 when its dtype is not the signature's (no cast: a cast
    may change values, and TF Serving refuses a dtype mismatch too) or its shape does not fit."""
    array = np.asarray(array)
    if spec.dtype == tf.string:
        matches = array.dtype.kind == "S" or (array.dtype == object and all(
            isinstance(item, bytes) for item in array.reshape(-1)))
    else:
        matches = array.dtype == spec.dtype.as_numpy_dtype
    if not matches:
        given = "bytes" if array.dtype.kind in "SO" else array.dtype.name
        raise ServingError(400, f"input '{name}' is {given}; signature '{signature}' takes "
                                f"{spec.dtype.name} (send that dtype: tensors are not cast)")
    if not spec.shape.is_compatible_with(array.shape):
        expected = [("?" if d is None else d) for d in spec.shape.as_list()]
        raise ServingError(400, f"input '{name}' has shape {list(array.shape)}; expected "
                                f"[{', '.join(map(str, expected))}]")
    return array


def describe_error(message: str, specs: dict) -> str:
    """The model's error for a client: its `first_line`, prefixed with the input whose ops failed
    when the failing node sits in that input's name scope (as the image decoders do)."""
    line = first_line(message)
    node = re.search(r"(?:Detected at node '?|\{\{node )([\w./-]+)", message)
    if node:
        # A scope named like an input placeholder is made unique as "<input>_1".
        scope = re.sub(r"_\d+$", "", node.group(1).split("/")[0])
        if scope in specs and scope not in line:
            return f"{scope}: {line}"
    return line


def first_line(message: str) -> str:
    """The line of a TensorFlow error that says what failed, without the node and trace lines
    ("Graph execution error:", "Detected at node ...") around it, and without the "assertion
    failed: [...]" around an assertion whose message is one sentence."""
    lines = [line.strip() for line in message.split("\n\t [[")[0].splitlines() if line.strip()]
    line = lines[-1] if lines else message.strip()
    sentence = re.fullmatch(r"assertion failed: \[(.*)\]", line)
    return sentence.group(1) if sentence and "] [" not in sentence.group(1) else line


def signature_def_map(version: Version):
    """The version's signatures as the SignatureDefMap proto that TF Serving's metadata returns."""
    from tensorflow_serving.apis import get_model_metadata_pb2
    proto = get_model_metadata_pb2.SignatureDefMap()
    for key, value in version.signature_defs.items():
        proto.signature_def[key].CopyFrom(value)
    return proto


# adapt_predict's signatures, and the adapt and predict_task signatures that answer them in two.
_IN_TWO = {"adapt_predict": ("adapt", "predict_task", "support_x", "query_x"),
           "adapt_predict_images": ("adapt_images", "predict_task_images", "support_images",
                                    "query_images")}


def predict(served: Version, signature: str, inputs: dict, deadline: Optional[float] = None,
            cancellation=None, cache=None) -> dict:
    """`run`, but with a `task_cache.TaskCache` an adapt_predict request is answered in two: its
    support set's task from the cache, or from `adapt` (then kept), and its queries from
    `predict_task`. The answers are those of `adapt_predict`: the same adapted parameters and
    statistics, in the same graph."""
    name = "adapt_predict" if signature == DEFAULT_SIGNATURE else signature
    if cache is None or name not in _IN_TWO or _IN_TWO[name][0] not in served.signature_defs:
        return run(served, signature, inputs, deadline, cancellation)
    adapt_signature, answer, support_input, query_input = _IN_TWO[name]
    support = {k: inputs[k] for k in (support_input, "support_y")}
    task_key = task_cache.key(served.metadata.get("task_export_id", ""), served.number,
                              adapt_signature, support)
    task = cache.get(task_key)
    if task is None:
        task = run(served, adapt_signature, support, deadline, cancellation)["task_bytes"]
        cache.put(task_key, task)
    return run(served, answer, {"task_bytes": np.array(task, object),
                                query_input: inputs[query_input]}, deadline, cancellation)
