"""TensorFlow Serving's JSON mapping: a REST input's JSON value as an array of the signature's dtype.

As TF Serving's REST API defines it: numbers for integer and float inputs (NaN and Infinity
accepted for floats), strings for string inputs, and binary strings as {"b64": "<base64>"}. No
conversion may change a value silently, so a value is refused with a 400 that names the input when
it is a JSON boolean where a number is expected, a fraction or an out-of-range integer for an
integer input (2^40 for int32), a finite number that overflows a float input (1e39 for float32),
or bytes where numbers are expected and the reverse.
"""

import base64
import binascii

import numpy as np
import tensorflow as tf

from tfmeta_serving.errors import ServingError


def to_array(name: str, value, spec: tf.TensorSpec, may_hold_booleans: bool = True) -> np.ndarray:
    """`value` (parsed JSON) as an array of `spec`'s dtype, or a ServingError(400).

    `may_hold_booleans` False skips the scan for JSON booleans, for a body that has no `true` or
    `false` token (the common case, and a scan of a large image request is not free).
    """
    if spec.dtype == tf.string:
        return _strings(name, value)
    if may_hold_booleans and spec.dtype != tf.bool and _holds_boolean(value):
        raise ServingError(400, f"input '{name}' holds true or false; it is "
                                f"{spec.dtype.name} and takes numbers")
    try:
        array = np.array(value)
    except (ValueError, TypeError, RecursionError):
        array = np.array(None)
    if array.shape == (0,) and spec.shape.rank and spec.shape[1:].is_fully_defined():
        array = np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
    kinds = "b" if spec.dtype == tf.bool else "iuf"
    if array.dtype.kind not in kinds:
        if array.dtype.kind in "SUO" and _holds_bytes(value):
            raise ServingError(400, f"input '{name}' holds strings or {{\"b64\": ...}} bytes; it "
                                    f"is {spec.dtype.name} and takes numbers")
        raise ServingError(400, f"input '{name}' is not a rectangular array of numbers"
                                + (" (or holds an integer beyond 64 bits)"
                                   if array.dtype == object else ""))
    target = spec.dtype.as_numpy_dtype
    if spec.dtype.is_integer:
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ServingError(400, f"input '{name}' must hold integers ({spec.dtype.name})")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            worst = array.max() if array.max() > info.max else array.min()
            raise ServingError(400, f"input '{name}' holds {int(worst)}, outside "
                                    f"{spec.dtype.name}'s range [{info.min}, {info.max}]")
    elif spec.dtype.is_floating and array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size and np.abs(finite).max() > np.finfo(target).max:
            raise ServingError(400, f"input '{name}' holds {np.abs(finite).max():g}, beyond "
                                    f"{spec.dtype.name}'s range")
    return array.astype(target)


def from_outputs(outputs: dict) -> dict:
    """A signature's outputs {name: array} as JSON values: numbers stay arrays; strings become
    {"b64": ...} objects where the name ends in "_bytes" (TensorFlow Serving's rule, which an
    adapted task's `task_bytes` follows) and UTF-8 text otherwise."""
    return {name: _json_strings(name, value) if _is_text(value) else value
            for name, value in outputs.items()}


def _is_text(value) -> bool:
    return isinstance(value, bytes) or (isinstance(value, np.ndarray) and value.dtype.kind in "SO")


def _json_strings(name: str, value):
    encode = ((lambda b: {"b64": base64.b64encode(b).decode("ascii")}) if name.endswith("_bytes")
              else (lambda b: b.decode("utf-8", errors="replace")))
    if isinstance(value, bytes):
        return encode(value)
    return np.vectorize(encode, otypes=[object])(value).tolist()


def _strings(name: str, value) -> np.ndarray:
    """Nested lists of {"b64": ...} objects or strings as an object array of bytes."""
    shape, level = [], [value]
    while level and all(isinstance(v, list) for v in level):
        lengths = {len(v) for v in level}
        if len(lengths) != 1:
            raise ServingError(400, f"input '{name}' is not a rectangular array of strings")
        shape.append(lengths.pop())
        level = [item for v in level for item in v]
    if any(isinstance(v, list) for v in level):
        raise ServingError(400, f"input '{name}' is not a rectangular array of strings")
    items = [_bytes_of(name, i, item) for i, item in enumerate(level)]
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _bytes_of(name: str, index: int, item) -> bytes:
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise ServingError(400, f"input '{name}' item {index}: a binary value must be "
                                    "{\"b64\": \"<base64 string>\"}")
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(400, f"input '{name}' item {index}: \"b64\" is not valid "
                                    "base64") from None
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ServingError(400, f"input '{name}' item {index} is {type(item).__name__}; it takes "
                            "bytes as {\"b64\": \"<base64 string>\"} (a string input)")


def _holds_boolean(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if item is True or item is False:
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def _holds_bytes(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, dict)):
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False
