"""gRPC input tensors, checked before they are materialized.

A TensorProto declares a shape and stores values, and the two need not agree: TensorFlow's
`make_ndarray` fills the declared shape from whatever is stored, so a 34-byte message that declares
2^30 floats and stores one becomes a 4 GB array. `check` reads only the proto's header fields
(dtype, `tensor_shape`, the length of `tensor_content` or of the `*_val` field) and refuses, with a
400 that names the input, a tensor

- of another dtype than the signature's (tensors are never cast, as in TF Serving);
- whose shape does not fit the signature's, or is unknown or negative;
- whose stored values do not cover its shape exactly (`make_ndarray` would repeat the last one);
- whose decoded size, or the request's in all, is over `max_bytes` (the server's message limit).

Only then is `make_ndarray` safe: it allocates what the client actually sent, at most `max_bytes`.
"""

import math

import tensorflow as tf

from tfmeta_serving.errors import ServingError

# The repeated field that holds a dtype's values when `tensor_content` is empty, and how many of
# its entries make one element.
_FIELDS = {
    tf.float16: ("half_val", 1), tf.bfloat16: ("half_val", 1), tf.float32: ("float_val", 1),
    tf.float64: ("double_val", 1), tf.int8: ("int_val", 1), tf.int16: ("int_val", 1),
    tf.int32: ("int_val", 1), tf.uint8: ("int_val", 1), tf.uint16: ("int_val", 1),
    tf.int64: ("int64_val", 1), tf.uint32: ("uint32_val", 1), tf.uint64: ("uint64_val", 1),
    tf.bool: ("bool_val", 1), tf.complex64: ("scomplex_val", 2),
    tf.complex128: ("dcomplex_val", 2), tf.string: ("string_val", 1)}


def declared_shape(name: str, proto) -> list:
    """The shape a TensorProto declares, as a list of ints; a 400 when it is unknown or has a
    negative dimension."""
    if proto.tensor_shape.unknown_rank:
        raise ServingError(400, f"input '{name}' declares no shape (unknown rank)")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise ServingError(400, f"input '{name}' declares shape {shape}, with a negative "
                                "dimension")
    return shape


def check_all(inputs, specs: dict, signature: str, max_bytes: int) -> dict:
    """Checks a request's input TensorProtos {name: proto} against the signature's TensorSpecs
    (`check`) and their decoded size in all; returns {name: declared shape}."""
    shapes, total = {}, 0
    for name, proto in inputs.items():
        shapes[name], size = check(name, proto, specs[name], signature, max_bytes)
        total += size
    if total > max_bytes:
        raise ServingError(400, f"the request's tensors decode to {total} bytes, over the limit "
                                f"of {max_bytes} bytes (tfmeta serve --max-body-mb)")
    return shapes


def check(name: str, proto, spec: tf.TensorSpec, signature: str, max_bytes: int) -> tuple:
    """Checks one input TensorProto against its TensorSpec without decoding it; returns its
    declared shape and decoded size in bytes. Raises ServingError(400) naming the input."""
    try:
        dtype = tf.as_dtype(proto.dtype)
    except TypeError:
        raise ServingError(400, f"input '{name}' has an unknown dtype ({proto.dtype})") from None
    if dtype != spec.dtype:
        raise ServingError(400, f"input '{name}' is {dtype.name}; signature '{signature}' takes "
                                f"{spec.dtype.name} (send that dtype: tensors are not cast)")
    shape = declared_shape(name, proto)
    if not spec.shape.is_compatible_with(shape):
        expected = [("?" if d is None else d) for d in spec.shape.as_list()]
        raise ServingError(400, f"input '{name}' has shape {shape}; expected "
                                f"[{', '.join(map(str, expected))}]")
    count = math.prod(shape)
    field, per_element = _FIELDS.get(dtype, (None, 1))
    if field is None:
        raise ServingError(400, f"input '{name}' has dtype {dtype.name}, which is not served")
    if dtype == tf.string:
        stored, size = len(proto.string_val), sum(len(item) for item in proto.string_val)
    else:
        size = count * dtype.size
        if proto.tensor_content and len(proto.tensor_content) != size:
            raise ServingError(400, _uncovered(name, shape, count, f"{len(proto.tensor_content)} "
                                               f"bytes of tensor_content ({size} needed)"))
        stored = count if proto.tensor_content else len(getattr(proto, field)) // per_element
    if stored != count:
        raise ServingError(400, _uncovered(name, shape, count, f"{stored} values"))
    if size > max_bytes:
        raise ServingError(400, f"input '{name}' declares shape {shape}, {size} bytes decoded, "
                                f"over the limit of {max_bytes} bytes (tfmeta serve "
                                "--max-body-mb)")
    return shape, size


def _uncovered(name: str, shape: list, count: int, stored: str) -> str:
    return (f"input '{name}' declares shape {shape} ({count} values) but stores {stored}; send "
            "every value (a shorter tensor is not expanded)")
