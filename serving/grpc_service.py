"""TensorFlow Serving's gRPC API, with the stubs of the tensorflow-serving-api package.

PredictionService.Predict and GetModelMetadata, and ModelService.GetModelStatus, answered from the
same `Repository` as REST, within the same `admission.Admission` limits. A prediction honours the
client's deadline (none: no limit, as in TF Serving): it waits for a slot until then, and the
model runs with the time left. A client that cancels its call stops the work and frees the slot
(`admission.Cancellation`). Before any tensor is materialized, its name, dtype, declared shape,
stored values and decoded size are checked (`tensor_protos`), and so is the export's limit on
examples per request. A ServingError's HTTP status maps to the gRPC code TF Serving uses:
400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 429 -> RESOURCE_EXHAUSTED, 499 -> CANCELLED,
503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED, other -> INTERNAL. As in TF Serving, an input tensor
must have the signature's dtype: an int64 label or a float64 image is refused, never cast.
"""

import time
from concurrent import futures
from typing import Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tfmeta_serving import tensor_protos
from tfmeta_serving.admission import Admission, Cancellation
from tfmeta_serving.errors import ServingError
from tfmeta_serving.repository import Repository, check_names, predict, signature_def_map

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# Threads beyond the admitted requests': they answer metadata, status and refusals at once.
SPARE_THREADS = 4
# grpcio reports a call without a deadline as one some 290 billion years away.
NO_DEADLINE_SECONDS = 10 * 365 * 86400
# A client's own deadline ends its call before the server's copy of it, by the time its headers
# took to arrive: tens of milliseconds to seconds on a busy machine.
DEADLINE_SLACK_SECONDS = 1.0


def _version(model_spec):
    return model_spec.version.value if model_spec.HasField("version") else None


def _abort(context, error: ServingError):
    context.abort(CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)


def stops_by_closing(deadline: Optional[float], now: float) -> bool:
    """Whether a call that ended at `now` (a `time.monotonic()` instant) before its answer must
    stop its work by closing its session. Not within DEADLINE_SLACK_SECONDS of `deadline`: that is
    the deadline's end, and TensorFlow's own timeout stops the step by then, keeping the session
    (a closed one costs the next request that finds no other a fresh one: seconds)."""
    return deadline is None or now < deadline - DEADLINE_SLACK_SECONDS


def deadline_of(context) -> Optional[float]:
    """The call's deadline as a `time.monotonic()` instant; None when the client set none."""
    left = context.time_remaining()
    return None if left is None or left > NO_DEADLINE_SECONDS else time.monotonic() + left


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: Repository, admission: Admission, max_tensor_bytes: int):
        self.repository = repository
        self.admission = admission
        self.max_tensor_bytes = max_tensor_bytes

    def Predict(self, request, context):
        spec = request.model_spec
        deadline = deadline_of(context)
        cancellation = Cancellation()

        def ended():
            # Called when the call ends for any reason: after an answer it finds nothing to stop.
            if stops_by_closing(deadline, time.monotonic()):
                cancellation.cancel()
        context.add_callback(ended)
        try:
            served, signature, specs = self.repository.signature(
                spec.name, _version(spec), spec.signature_name)
            check_names(signature, specs, request.inputs)
            shapes = tensor_protos.check_all(request.inputs, specs, signature,
                                             self.max_tensor_bytes)
            served.check_examples(signature, shapes)
            with self.admission.ticket(), self.admission.slot(deadline, cancellation):
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                outputs = predict(served, signature, inputs, deadline, cancellation,
                                  self.repository.task_cache)
        except ServingError as error:
            _abort(context, error)
        except MemoryError:
            _abort(context, ServingError(429, "the server ran out of memory for this request"))
        except (TypeError, ValueError) as error:
            _abort(context, ServingError(400, f"unreadable input tensor: {error}"))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served.number
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        spec = request.model_spec
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(400, "metadata_field must be exactly ['signature_def'], got "
                                        f"{list(request.metadata_field)}")
            served = self.repository.get(spec.name, _version(spec))
        except ServingError as error:
            _abort(context, error)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served.number
        response.metadata["signature_def"].Pack(signature_def_map(served))
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository: Repository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        try:
            served = self.repository.get(request.model_spec.name, _version(request.model_spec))
        except ServingError as error:
            _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = served.number
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def server(repository: Repository, admission: Admission, port: int,
           max_message_bytes: int = 16 << 20, host: str = "0.0.0.0") -> grpc.Server:
    """A gRPC server for `repository` within `admission`'s limits on `host`:`port`, not yet
    started; a message, and each of its tensors decoded, is at most `max_message_bytes`."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    workers = admission.concurrent + admission.queued + SPARE_THREADS
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                         thread_name_prefix="grpc"),
                              options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(repository, admission, max_message_bytes), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repository),
                                                              grpc_server)
    try:
        bound = grpc_server.add_insecure_port(f"[{host}]:{port}" if ":" in host
                                              else f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host} port {port}: is the port in use, or "
                      f"the host not this machine's?")
    return grpc_server
