"""In-graph refusals of a request that read as one sentence: the input, the index and the
offending value, with no tensor names and no "Condition x ... did not hold element-wise"
fragments, whoever runs the graph (`tf.saved_model.load`, a session, `tensorflow_model_server`).
TensorFlow's Assert kernel prints the sentence as "assertion failed: [<sentence>]"."""

import tensorflow as tf


def refusal(ok: tf.Tensor, template: str, *values: tf.Tensor) -> tf.Operation:
    """An assertion that `ok` (a bool scalar) holds; its message is `template` with `values`
    (scalars) in its "{}"s."""
    message = tf.strings.format(template, values) if values else template
    return tf.debugging.Assert(ok, [message])


def first(bad: tf.Tensor) -> tf.Tensor:
    """The index of the first True of `bad` [n] (n when there is none, also for n = 0): int32
    scalar."""
    return tf.cast(tf.argmax(tf.concat([tf.cast(bad, tf.int32), [1]], 0)), tf.int32)


def bad_rows(x: tf.Tensor) -> tf.Tensor:
    """[n] bool: which examples of `x` [n, ...] hold a NaN or an Inf."""
    finite = tf.math.is_finite(x)
    return tf.logical_not(tf.reduce_all(tf.reshape(finite, [tf.shape(x)[0], -1]), axis=1))
