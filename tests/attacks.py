"""Hostile clients of a server's wire protocols: a REST sender that trickles its body, and gRPC
tensors whose declared shape their stored values do not cover."""

import socket
import time

import numpy as np
import tensorflow as tf


def trickle(host: str, port: int, path: str, body: bytes, first: int = 1,
            every: float = 1.0, seconds: float = 60.0) -> tuple:
    """POSTs `body` with its full Content-Length but sends only `first` bytes, then one more
    byte every `every` seconds, until the server answers, closes, or `seconds` pass.

    Returns (HTTP status or None, seconds until the answer or the close, the bytes sent)."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=seconds) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                           f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        connection.sendall(body[:first])
        sent = first
        connection.settimeout(every)
        answer = b""
        while time.monotonic() - start < seconds:
            try:
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    break
            except socket.timeout:
                if sent < len(body):
                    try:
                        connection.sendall(body[sent:sent + 1])
                        sent += 1
                    except OSError:
                        break
            except OSError:
                break
    took = time.monotonic() - start
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    return status, took, sent


def sparse_tensor(shape: list, dtype=tf.float32, stored: int = 1):
    """A TensorProto that declares `shape` and stores `stored` values (TensorFlow's
    `make_ndarray` would repeat the last one to fill the shape)."""
    proto = tf.make_tensor_proto(np.zeros([stored], dtype.as_numpy_dtype))
    del proto.tensor_shape.dim[:]
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    if proto.tensor_content:  # as values, so that the stored count is `stored`, not bytes
        values = np.frombuffer(proto.tensor_content, dtype.as_numpy_dtype)
        proto.tensor_content = b""
        getattr(proto, {tf.float32: "float_val", tf.int32: "int_val"}[dtype]).extend(
            values.tolist())
    return proto
