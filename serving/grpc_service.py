"""TensorFlow Serving's gRPC API, with the stubs of the tensorflow-serving-api package.

PredictionService.Predict and GetModelMetadata, and ModelService.GetModelStatus, answered from the
same `Repository` as REST, within the same `admission.Admission` limits. A prediction honours the
client's deadline (none: no limit, as in TF Serving): it waits for a slot until then, and the
model runs with the time left. A ServingError's HTTP status maps to the gRPC code TF Serving
uses: 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED,
other -> INTERNAL. As in TF Serving, an input tensor must have the signature's dtype: an int64
label or a float64 image is refused, never cast.
"""

import time
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tfmeta_serving.admission import Admission
from tfmeta_serving.repository import Repository, ServingError, signature_def_map

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# Threads beyond the admitted requests': they answer metadata, status and refusals at once.
SPARE_THREADS = 4


def _version(model_spec):
    return model_spec.version.value if model_spec.HasField("version") else None


def _abort(context, error: ServingError):
    context.abort(CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: Repository, admission: Admission):
        self.repository = repository
        self.admission = admission

    def Predict(self, request, context):
        spec = request.model_spec
        left = context.time_remaining()
        deadline = None if left is None else time.monotonic() + left
        try:
            with self.admission.ticket(), self.admission.slot(deadline):
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                served, outputs = self.repository.predict(spec.name, _version(spec),
                                                          spec.signature_name, inputs, deadline)
        except ServingError as error:
            _abort(context, error)
        except (TypeError, ValueError) as error:
            _abort(context, ServingError(400, f"unreadable input tensor: {error}"))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served.number
        response.model_spec.signature_name = spec.signature_name or "serving_default"
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
    started."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    workers = admission.concurrent + admission.queued + SPARE_THREADS
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers,
                                                         thread_name_prefix="grpc"),
                              options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(repository, admission), grpc_server)
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
