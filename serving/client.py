"""A small client for TensorFlow Serving's REST and gRPC APIs (the real server or the embedded one).

    client = RestClient("http://localhost:8501", "omniglot")  # or GrpcClient("localhost:8500", ..)
    out = client.predict(support_x=sx, support_y=sy, query_x=qx)   # {"probabilities": ..., ...}
    out = client.predict("adapt_predict_images", support_images=[png, ...], support_y=sy,
                         query_images=[png])                      # files as bytes

From a shell, with a request file {"inputs": {...}} or {"instances": [...]}:

    python -m tfmeta_serving.client rest --model sine request.json
    python -m tfmeta_serving.client grpc --model sine request.json
"""

import argparse
import base64
import dataclasses
import json
import sys
import urllib.error
import urllib.request
from typing import Optional

import numpy as np

__all__ = ["RestClient", "GrpcClient", "Task", "ServingClientError", "encode", "main"]


class ServingClientError(Exception):
    """The server refused a request: its status (HTTP, or the gRPC code's name) and message."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Task:
    """A task adapted once by the server (`adapt`): its bytes, kept by the client and sent with
    each later query, and the signature that answers queries from it."""
    data: bytes
    signature: str

    def __len__(self) -> int:
        return len(self.data)


class _Adapts:
    """Adapt once, predict many: `adapt` returns a Task; `predict(task, query_x=...)` (or
    `query_images=...`) answers from it without adapting again."""

    def adapt(self, **support) -> Task:
        """Adapts to support_x (or support_images, the files) and support_y; returns the Task."""
        images = "support_images" in support
        out = self.predict("adapt_images" if images else "adapt", **support)
        # One output: TF Serving's REST answer gives it without its name.
        return Task(_task_bytes(next(iter(out.values()))),
                    "predict_task_images" if images else "predict_task")

    def _with_task(self, signature, inputs: dict) -> tuple:
        if isinstance(signature, Task):
            return signature.signature, {"task_bytes": signature.data, **inputs}
        return signature, inputs


def _task_bytes(value) -> bytes:
    value = value.item() if isinstance(value, np.ndarray) else value
    if isinstance(value, dict):   # REST: {"b64": ...}
        return base64.b64decode(value["b64"])
    return bytes(value)


def encode(payload) -> bytes:
    """JSON with numpy arrays written directly (float32 in its shortest exact form), many times
    faster than nested lists through the json module, and bytes as TF Serving's {"b64": ...}."""
    import orjson

    def binary(value):
        if isinstance(value, (bytes, bytearray)):
            return {"b64": base64.b64encode(value).decode("ascii")}
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")

    return orjson.dumps(payload, default=binary, option=orjson.OPT_SERIALIZE_NUMPY)


def _array_or_list(value):
    """Numbers as a contiguous numpy array (fast to encode); files (bytes) as a list, and one
    bytes value (a task) as itself."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(v, (bytes, bytearray)) for v in value):
        return list(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return value.tolist()
    return np.ascontiguousarray(value)


class RestClient(_Adapts):
    """REST: POST /v1/models/NAME[/versions/V]:predict, GET status and metadata."""

    def __init__(self, url: str = "http://localhost:8501", model: str = "default",
                 version: Optional[int] = None, timeout: float = 60):
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.base = url.rstrip("/") + path
        self.timeout = timeout

    def _call(self, url: str, body: Optional[bytes] = None) -> dict:
        request = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text
            raise ServingClientError(error.code, message) from None

    def request(self, payload: dict) -> dict:
        """POSTs a predict body (numpy arrays allowed); returns the decoded JSON answer."""
        return self._call(self.base + ":predict", encode(payload))

    def predict(self, signature=None, **inputs) -> dict:
        """Columnar predict; returns {output name: np.ndarray}. `signature` may be a Task, whose
        signature then answers `inputs` (the queries) from it."""
        signature, inputs = self._with_task(signature, inputs)
        payload = {"inputs": {k: _array_or_list(v) for k, v in inputs.items()}}
        if signature:
            payload["signature_name"] = signature
        outputs = self.request(payload)["outputs"]
        if not isinstance(outputs, dict) or set(outputs) == {"b64"}:   # one output, unnamed
            return {"output": np.asarray(outputs)}
        return {k: np.asarray(v) for k, v in outputs.items()}

    def status(self) -> dict:
        return self._call(self.base)

    def metadata(self) -> dict:
        return self._call(self.base + "/metadata")


class GrpcClient(_Adapts):
    """gRPC: PredictionService.Predict and GetModelMetadata via tensorflow-serving-api's stubs."""

    def __init__(self, target: str = "localhost:8500", model: str = "default",
                 version: Optional[int] = None, timeout: float = 60,
                 max_message_bytes: int = 64 << 20):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model, self.version, self.timeout = model, version, timeout
        self._dtypes = {}
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _spec(self, request, signature: Optional[str] = None):
        request.model_spec.name = self.model
        if self.version:
            request.model_spec.version.value = self.version
        if signature:
            request.model_spec.signature_name = signature

    def predict(self, signature=None, **inputs) -> dict:
        """Returns {output name: np.ndarray}; raises ServingClientError on a refused request.
        `signature` may be a Task, whose signature then answers `inputs` (the queries) from it.

        Each input is sent in the dtype the served signature declares (read once from the
        model's metadata), so plain Python lists and files as bytes work; a conversion that would
        change a value (1.5 or 2**40 to int32) raises ValueError instead."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        signature, inputs = self._with_task(signature, inputs)
        request = predict_pb2.PredictRequest()
        self._spec(request, signature)
        dtypes = self._input_dtypes(signature or "serving_default")
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(_typed(key, value, dtypes.get(key))))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from None
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def _input_dtypes(self, signature: str) -> dict:
        import tensorflow as tf
        if signature not in self._dtypes:
            signatures = self.metadata().signature_def
            if signature not in signatures:  # let the server word the error
                return {}
            self._dtypes[signature] = {
                k: tf.dtypes.as_dtype(v.dtype).as_numpy_dtype
                for k, v in signatures[signature].inputs.items()}
        return self._dtypes[signature]

    def metadata(self):
        """The SignatureDefMap proto of the served version."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request)
        request.metadata_field.append("signature_def")
        try:
            response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from None
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return signatures

    def close(self):
        self.channel.close()


def _typed(name: str, value, dtype) -> np.ndarray:
    """`value` as an array of `dtype` (None: as it is); files stay whole bytes objects."""
    if dtype is object:
        return np.asarray(value, dtype=object)
    natural = np.asarray(value)
    if dtype is None or natural.dtype == dtype:
        return natural
    converted = natural.astype(dtype)
    if np.issubdtype(dtype, np.integer) and not np.array_equal(converted, natural):
        raise ValueError(f"input '{name}' holds values that {np.dtype(dtype).name} cannot "
                         "represent exactly")
    return converted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfmeta_serving.client",
                                     description="Send a predict request file over REST or gRPC.")
    parser.add_argument("protocol", choices=["rest", "grpc"])
    parser.add_argument("request", help='JSON file: {"inputs": {...}} (gRPC: inputs only)')
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int)
    parser.add_argument("--signature")
    parser.add_argument("--url", default="http://localhost:8501", help="REST base URL")
    parser.add_argument("--target", default="localhost:8500", help="gRPC host:port")
    args = parser.parse_args(argv)
    payload = json.loads(open(args.request).read())
    signature = args.signature or payload.get("signature_name")
    try:
        if args.protocol == "rest":
            client = RestClient(args.url, args.model, args.version)
            payload = {**payload, **({"signature_name": signature} if signature else {})}
            print(json.dumps(client.request(payload)))
        else:
            if "inputs" not in payload or not isinstance(payload["inputs"], dict):
                parser.error("gRPC requests need {\"inputs\": {name: value, ...}}")
            client = GrpcClient(args.target, args.model, args.version)
            outputs = client.predict(signature, **payload["inputs"])
            print(json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}))
    except ServingClientError as error:
        print(f"error {error.status}: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
