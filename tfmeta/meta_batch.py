"""Mapping a per-task function over a meta-batch of episodes.

Three mappings, selected by name, give the same numbers at different costs:

- "loop": a `tf.range` loop that sums per-task results as it goes. Memory stays at one task's worth
  whatever the meta-batch size; the default for convolutional models, whose per-task convolutions
  gain nothing from batching across tasks on a CPU.
- "map": `tf.map_fn`, which keeps every task's result before summing.
- "vectorized": `tf.vectorized_map` (pfor), which turns the tasks into one batched computation. Fast
  for dense models (sine MLP); slow for convolutions, whose filter gradient falls back to a loop.
  `sum_gradients` then differentiates the summed objective once, outside the vectorized map, so no
  per-task gradient is ever formed.
"""

from typing import Any, Callable, Sequence

import tensorflow as tf

from tfmeta.tasks.episode import Episode


def _task(batch, i):
    return tf.nest.map_structure(lambda t: t[i], batch)


def map_tasks(fn: Callable[[Any], Any], batch: Any, mapping: str = "loop") -> Any:
    """Applies `fn` to each of the n tasks in `batch`; returns its outputs stacked to [n, ...].

    `batch` is an Episode with [n, ...] fields, or any nest of [n, ...] tensors (an Episode with
    per-task parameters beside it, say).
    """
    if mapping == "vectorized":
        return tf.vectorized_map(fn, batch)
    if mapping == "map":
        first = fn(_task(batch, 0))
        spec = tf.nest.map_structure(tf.type_spec_from_value, first)
        rest = tf.map_fn(fn, tf.nest.map_structure(lambda t: t[1:], batch),
                         fn_output_signature=spec)
        return tf.nest.map_structure(lambda a, b: tf.concat([a[None], b], 0), first, rest)
    return _task_loop(fn, batch, stack=True)


def sum_tasks(fn: Callable[[Episode], Any], batch: Episode, mapping: str = "loop") -> Any:
    """Returns the sum over the n tasks in `batch` of `fn(task)`, leaf by leaf."""
    if mapping == "loop":
        return _task_loop(fn, batch, stack=False)
    return tf.nest.map_structure(lambda t: tf.reduce_sum(t, axis=0), map_tasks(fn, batch, mapping))


Objective = Callable[[list, Episode], tuple]  # (params, task) -> (scalar, dict of scalars)


def task_gradient(objective: Objective, params: Sequence[tf.Tensor], task: Episode) -> tuple:
    """(grad_params objective(params, task), its dict of scalars) for one task."""
    params = list(params)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(params)
        value, aux = objective(params, task)
    return tape.gradient(value, params), aux


def sum_gradients(objective: Objective, params: Sequence[tf.Tensor], batch: Episode,
                  mapping: str = "loop") -> tuple:
    """The sum over the tasks in `batch` of objective(params, task)'s gradient and its scalars.

    Returns:
        (gradients matching params, dict of scalars summed over tasks).
    """
    params = list(params)
    if mapping != "vectorized":
        return sum_tasks(lambda task: task_gradient(objective, params, task), batch, mapping)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(params)
        values, aux = map_tasks(lambda task: objective(params, task), batch, mapping)
        total = tf.reduce_sum(values)
    sums = tf.nest.map_structure(lambda t: tf.reduce_sum(t, axis=0), aux)
    return tape.gradient(total, params), sums


def scale_by(grads: Sequence[tf.Tensor], metrics: dict, global_batch_size) -> tuple:
    """Divides summed gradients and metrics by the global meta-batch size n.

    Keras optimizers sum gradients over `tf.distribute` replicas, so each replica divides its share
    by the *global* n, and the sum over replicas is the mean over the whole meta-batch.
    """
    scale = lambda t: t / tf.cast(global_batch_size, t.dtype)  # noqa: E731
    return [scale(g) for g in grads], {k: scale(v) for k, v in metrics.items()}


def _task_loop(fn, batch, stack: bool):
    # The first task runs outside the loop so that its outputs fix the accumulators' structure.
    n = tf.shape(tf.nest.flatten(batch)[0])[0]
    first = fn(_task(batch, 0))
    flat_first = tf.nest.flatten(first)
    if stack:
        init = [tf.TensorArray(t.dtype, size=n, element_shape=t.shape).write(0, t)
                for t in flat_first]
    else:
        init = flat_first

    def body(i, acc):
        flat = tf.nest.flatten(fn(_task(batch, i)))
        if stack:
            return i + 1, [a.write(i, t) for a, t in zip(acc, flat)]
        return i + 1, [a + t for a, t in zip(acc, flat)]

    _, acc = tf.while_loop(lambda i, _: i < n, body, (tf.constant(1), init))
    if stack:
        acc = [a.stack() for a in acc]
    return tf.nest.pack_sequence_as(first, acc)
