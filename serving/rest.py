"""TensorFlow Serving's REST API on aiohttp.

    POST /v1/models/NAME[/versions/V]:predict   {"instances": [...]} or {"inputs": ...},
                                                optional "signature_name"
    GET  /v1/models/NAME[/versions/V]           model status
    GET  /v1/models/NAME[/versions/V]/metadata  signatures

A predict request's body is read first, by `bodies.Bodies` (its own places and a minimum rate, 408
for a slow sender), and holds nothing else while it arrives. Only then is the request admitted by
`admission.Admission` (503 when the server is busy); it is parsed, checked, run and encoded in one
of the prediction slots, on a thread pool of the admitted requests' size, so the event loop keeps
accepting. The whole request must finish within `Limits.rest_timeout_ms` (TF Serving's
--rest_api_timeout_in_ms; 504 after it).

Row format ("instances") stacks each named input across the instances, so every input needs the
same number of rows, and answers {"predictions": [...]} row by row. Columnar format ("inputs")
passes each input whole and answers {"outputs": ...}. Errors are {"error": "..."} with a 4xx or 5xx
status. JSON goes through orjson (numbers parse several times faster than with the
standard library, which an image request is mostly made of); NaN and Infinity, which strict JSON
lacks but TF Serving accepts, fall back to the standard parser and reach the model's own checks.
Values become arrays of the signature's dtypes by TF Serving's JSON mapping (`json_tensors`):
binary strings as {"b64": ...}, and nothing converted that would change a value.
"""

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web
from google.protobuf import json_format

from tfmeta_serving import json_tensors
from tfmeta_serving.admission import Admission, Limits
from tfmeta_serving.bodies import Bodies
from tfmeta_serving.errors import ServingError
from tfmeta_serving.repository import (VERSION, Repository, check_names, deadline_after, predict,
                                       signature_def_map)

ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<action>:predict|/metadata)?$")


def app(repository: Repository, admission: Admission, limits: Limits = Limits()
        ) -> web.Application:
    """The REST application serving `repository` within `admission`'s and `limits`' bounds."""
    application = web.Application(client_max_size=limits.max_body_bytes,
                                  middlewares=[_errors_as_json])
    application["repository"] = repository
    application["admission"] = admission
    application["limits"] = limits
    application["bodies"] = Bodies(limits.max_body_bytes, limits.receiving,
                                   limits.body_grace_ms / 1000, limits.min_body_rate)
    # A thread for every admitted request: they wait for a slot there, never in this pool's queue.
    application["executor"] = ThreadPoolExecutor(admission.concurrent + admission.queued,
                                                 thread_name_prefix="rest-predict")
    application.on_cleanup.append(lambda app: _shutdown(app["executor"]))
    application.on_response_prepare.append(_no_banner)
    application.router.add_route("*", "/{tail:.*}", _dispatch)
    return application


async def _no_banner(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp names itself and Python's version in a Server header: nothing a client needs."""
    response.headers.popall("Server", None)


async def _shutdown(executor: ThreadPoolExecutor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)


@web.middleware
async def _errors_as_json(request, handler):
    try:
        return await handler(request)
    except ServingError as error:
        headers = {"Retry-After": "1"} if error.status in (429, 503) else None
        response = web.json_response({"error": error.message}, status=error.status,
                                     headers=headers)
        if error.status == 408:  # the rest of a slow body is not waited for
            response.force_close()
        return response
    except MemoryError:
        return web.json_response({"error": "the server ran out of memory for this request"},
                                 status=429, headers={"Retry-After": "1"})


async def _dispatch(request: web.Request) -> web.Response:
    match = ROUTE.match(request.path)
    if not match:
        raise ServingError(404, f"no such endpoint: {request.method} {request.path}; try "
                                "/v1/models/NAME, /v1/models/NAME/metadata or "
                                "POST /v1/models/NAME:predict")
    name, version, action = match["name"], match["version"], match["action"]
    if version is not None:
        if not VERSION.fullmatch(version):
            raise ServingError(404, f"version '{version[:40]}' is not an integer version")
        version = int(version)
    method = "POST" if action == ":predict" else "GET"
    if request.method != method:
        raise ServingError(405, f"{request.path} takes {method}, not {request.method}")
    repository = request.app["repository"]
    if action == ":predict":
        return await _predict(request, repository, name, version)
    served = repository.get(name, version)
    if action == "/metadata":
        return web.json_response({
            "model_spec": {"name": name, "signature_name": "", "version": str(served.number)},
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_def_map(served), preserving_proto_field_name=True)}})
    return web.json_response({"model_version_status": [{
        "version": str(served.number), "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})


async def _predict(request: web.Request, repository: Repository, name: str, version):
    app = request.app
    limits = app["limits"]
    deadline = deadline_after(limits.rest_timeout_ms)
    repository.get(name, version)   # a 404 before the body is waited for
    body = await app["bodies"].read(request, deadline, limits.rest_timeout_ms)
    admission = app["admission"]
    admission.admit()
    working = None
    try:
        working = asyncio.get_running_loop().run_in_executor(
            app["executor"], _answer, repository, admission, name, version, body, deadline)
        # The ticket is held until the work ends, even if this handler is cancelled first.
        working.add_done_callback(lambda _: admission.leave())
        answer = await working
    finally:
        if working is None:
            admission.leave()
    return web.Response(body=answer, content_type="application/json")


def _answer(repository: Repository, admission: Admission, name: str, version, body: bytes,
            deadline) -> bytes:
    """The JSON answer to a predict body, worked out in a prediction slot; raises ServingError."""
    with admission.slot(deadline):
        return _work(repository, name, version, body, deadline)


def _work(repository: Repository, name: str, version, body: bytes, deadline) -> bytes:
    payload = parse(body)
    if not isinstance(payload, dict):
        raise ServingError(400, "the body must be a JSON object with \"instances\" or \"inputs\"")
    if ("instances" in payload) == ("inputs" in payload):
        raise ServingError(400, "send exactly one of \"instances\" (row format) and \"inputs\" "
                                "(columnar format)" + (", not both" if "inputs" in payload else ""))
    signature = payload.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise ServingError(400, "\"signature_name\" must be a string")
    rows = "instances" in payload
    inputs = stack_instances(payload["instances"]) if rows else payload["inputs"]
    served, signature, specs = repository.signature(name, version, signature)
    if not isinstance(inputs, dict):
        if len(specs) != 1:
            raise ServingError(400, f"signature '{signature}' takes named inputs "
                                    f"{', '.join(specs)}; send an object of them")
        inputs = {next(iter(specs)): inputs}
    check_names(signature, specs, inputs)
    served.check_examples(signature, {k: [len(v)] if isinstance(v, list) else []
                                      for k, v in inputs.items()})
    booleans = b"true" in body or b"false" in body
    arrays = {k: json_tensors.to_array(k, v, specs[k], booleans) for k, v in inputs.items()}
    outputs = json_tensors.from_outputs(predict(served, signature, arrays, deadline,
                                                cache=repository.task_cache))
    if rows:
        answer = {"predictions": unstack(outputs)}
    elif len(outputs) == 1:
        answer = {"outputs": next(iter(outputs.values()))}
    else:
        answer = {"outputs": outputs}
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def parse(body: bytes):
    """The request's JSON; strict JSON first, then the standard parser for NaN and Infinity."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ServingError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise ServingError(400, "malformed JSON: nested too deeply") from None
    except ValueError:  # Python's cap on an integer's digits (4,300), past every dtype's range
        raise ServingError(400, "malformed JSON: a number beyond the range of every input "
                                "dtype") from None


def stack_instances(instances) -> object:
    """Row format to columns: a list of {input: row} (or of bare rows, for a single input)."""
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "\"instances\" must be a non-empty list")
    if not all(isinstance(row, dict) for row in instances):
        if any(isinstance(row, dict) for row in instances):
            raise ServingError(400, "\"instances\" mixes objects and bare values")
        return instances
    keys = set(instances[0])
    for i, row in enumerate(instances):
        if set(row) != keys:
            raise ServingError(400, f"instance {i} has inputs {sorted(row)}, instance 0 has "
                                    f"{sorted(keys)}; in row format every instance carries every "
                                    "input (use \"inputs\" when inputs differ in length)")
    return {k: [row[k] for row in instances] for k in instances[0]}


def unstack(outputs: dict) -> list:
    """Columns to row format: row i holds every output's row i (a bare value for one output)."""
    if not all(isinstance(v, list) or getattr(v, "ndim", 0) >= 1 for v in outputs.values()):
        raise ServingError(400, "the outputs include one value for the whole request (an "
                                "adapted task), which has no rows; send \"inputs\" (columnar "
                                "format) instead")
    rows = {len(v) for v in outputs.values()}
    if len(rows) != 1:
        raise ServingError(400, "the outputs differ in length, so they cannot be returned as "
                                "rows; send \"inputs\" (columnar format) instead")
    if len(outputs) == 1:
        return list(next(iter(outputs.values())))
    return [{k: v[i] for k, v in outputs.items()} for i in range(rows.pop())]
