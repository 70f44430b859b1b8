"""The adapted task as one value a client keeps: an export's `adapt` signature turns a support set
into a task once, and `predict_task` answers any number of queries from it, each without the
T inner steps.

A task is a string scalar, a fixed-width header and a payload:

    b"tfmeta-task/1 " + export id (16 hex digits) + b" " + classes M (4 digits) + b" "
        + checksum (20 digits) + b"\\n" + tf.io.serialize_tensor(state [P])

`state` holds, in the model's dtype, the parameters the inner loop changed (`model.inner_indices`:
all of them for MAML, the head for ANIL), then the support set's batch-norm statistics where the
queries need them ("support" norm: `models.support_statistics`). M is the task's class count
(`losses.mask_classes`; 0 for regression). The checksum is the farmhash fingerprint of the
classes field and the payload. So `predict_task` refuses, each in one sentence and before any
parsing: a string too short to be a task, one no `adapt` made, one adapted by another export
(TensorFlow Serving swaps versions under a client), one of the wrong size (truncated, or another
model's) and a damaged one.
"""

import dataclasses
from typing import List, Tuple

import tensorflow as tf

from tfmeta.models import MetaModel, support_statistics
from tfmeta.refusals import refusal

MAGIC = "tfmeta-task/1 "
_ID, _CLASSES, _CHECKSUM = 16, 4, 20
HEADER = len(MAGIC) + _ID + 1 + _CLASSES + 1 + _CHECKSUM + 1
NAME = "task_bytes"


@dataclasses.dataclass(frozen=True)
class Layout:
    """What one export's tasks hold.

    Attributes:
        export_id: 16 hex digits, drawn at export.
        params: the shapes of the adapted parameters, in `model.inner_indices` order.
        statistics: the shapes of the batch-norm statistics, (mean, variance) per layer in call
            order; () where queries need none.
        dtype: the model's float dtype.
        length: a task's size in bytes.
    """
    export_id: str
    params: Tuple[tuple, ...]
    statistics: Tuple[tuple, ...]
    dtype: tf.DType
    length: int

    @property
    def size(self) -> int:
        """P, the values of a task's state."""
        return sum(_count(shape) for shape in self.params + self.statistics)


def layout(model: MetaModel, params: List[tf.Tensor], step: int, export_id: str) -> Layout:
    """The layout of `model`'s tasks, its statistics' shapes read from one pass on zeros (eager)."""
    if len(export_id) != _ID:
        raise ValueError(f"export_id must be {_ID} characters, got {export_id!r}")
    zeros = tf.zeros([2, *model.example_shape], params[0].dtype)
    statistics = [tuple(t.shape) for pair in support_statistics(model, params, zeros, step)
                  for t in pair]
    shapes = tuple(tuple(params[i].shape) for i in model.inner_indices)
    size = sum(_count(shape) for shape in shapes + tuple(statistics))
    payload = tf.io.serialize_tensor(tf.zeros([size], params[0].dtype))
    return Layout(export_id, shapes, tuple(statistics), params[0].dtype,
                  HEADER + int(tf.strings.length(payload)))


def encode(task_layout: Layout, adapted: List[tf.Tensor], statistics: list,
           classes: tf.Tensor) -> tf.Tensor:
    """The task string [] of adapted parameters `adapted` (the inner loop's, in order), the
    support statistics (`models.support_statistics`) and the class count M (int32 scalar)."""
    values = list(adapted) + [t for pair in statistics for t in pair]
    state = tf.concat([tf.reshape(tf.cast(v, task_layout.dtype), [-1]) for v in values], 0)
    payload = tf.io.serialize_tensor(state)
    classes_field = tf.strings.as_string(classes, width=_CLASSES, fill="0")
    return tf.strings.join([MAGIC, task_layout.export_id, " ", classes_field, " ",
                            _checksum(classes_field, payload), "\n", payload])


def decode(task_layout: Layout, task: tf.Tensor) -> Tuple[list, list, tf.Tensor]:
    """(adapted parameters, statistics as [(mean, variance)], classes M) of a task string [],
    after the refusals that a task of another export, of another size or damaged meets."""
    length = tf.strings.length(task)
    checks = [refusal(length >= HEADER, f"{NAME} holds {{}} bytes, too few to be a task; send "
                      "the task_bytes an adapt signature returned", length)]
    with tf.control_dependencies(checks):
        checks.append(refusal(tf.equal(tf.strings.substr(task, 0, len(MAGIC)), MAGIC),
                              f"{NAME} is not a task: it does not begin with {MAGIC.strip()!r}; "
                              "send the task_bytes an adapt signature returned"))
    with tf.control_dependencies(checks):
        export_id = tf.strings.substr(task, len(MAGIC), _ID)
        checks.append(refusal(
            tf.equal(export_id, task_layout.export_id),
            f"{NAME} was adapted by another model or version (export {{}}); this is export "
            f"{task_layout.export_id}: adapt the support set again", export_id))
    with tf.control_dependencies(checks):
        checks.append(refusal(tf.equal(length, task_layout.length),
                              f"{NAME} holds {{}} bytes, but a task of this model holds "
                              f"{task_layout.length}: it was cut short or padded", length))
    start = len(MAGIC) + _ID + 1
    with tf.control_dependencies(checks):
        classes_field = tf.strings.substr(task, start, _CLASSES)
        checksum = tf.strings.substr(task, start + _CLASSES + 1, _CHECKSUM)
        payload = tf.strings.substr(task, HEADER, length - HEADER)
        checks.append(refusal(tf.equal(checksum, _checksum(classes_field, payload)),
                              f"{NAME} is damaged: its content does not match its checksum"))
    with tf.control_dependencies(checks):
        state = tf.ensure_shape(tf.io.parse_tensor(payload, task_layout.dtype),
                                [task_layout.size])
        classes = tf.strings.to_number(classes_field, tf.int32)
    values, offset = [], 0
    for shape in task_layout.params + task_layout.statistics:
        values.append(tf.reshape(state[offset:offset + _count(shape)], shape))
        offset += _count(shape)
    adapted, flat = values[:len(task_layout.params)], values[len(task_layout.params):]
    return adapted, list(zip(flat[0::2], flat[1::2])), classes


def _checksum(classes_field: tf.Tensor, payload: tf.Tensor) -> tf.Tensor:
    fingerprint = tf.strings.to_hash_bucket_fast(tf.strings.join([classes_field, payload]),
                                                 2 ** 62)
    return tf.strings.as_string(fingerprint, width=_CHECKSUM, fill="0")


def _count(shape: tuple) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count
