"""The embedded server against TensorFlow Serving's contract: REST, gRPC, versions, bad input,
hostile input (decompression bombs), overload, deadlines and the memory a burst leaves behind."""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rss
import tensorflow as tf
import yaml
from bombs import jpeg_bomb, png_bomb

from tfmeta import config as config_lib, export
from tfmeta.ports import free_ports
from tfmeta.run import Run
from tfmeta_serving.client import GrpcClient, RestClient, ServingClientError

# Every test here trains a model or starts a process: the `trains` tier.
pytestmark = pytest.mark.trains

ROOT = Path(__file__).resolve().parents[1]
SERVING_GUIDE = ROOT / "docs" / "guides" / "serving.md"
SERVING = Path(__file__).resolve().parents[1] / "serving"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


class Server:
    """`tfmeta serve --embedded` in a subprocess on free ports."""

    def __init__(self, base: Path, log: Path, *flags):
        self.port, self.grpc_port = free_ports(2)
        self.name = base.name
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfmeta_cli.main", "serve", "--model-base-path", str(base),
             "--port", str(self.port), "--grpc-port", str(self.grpc_port), "--embedded",
             "--poll-seconds", "0.3", *flags],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV)
        deadline = time.time() + 120
        while True:
            try:
                self.get(f"/v1/models/{self.name}")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start:\n{log.read_text()}")
                time.sleep(0.3)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body) -> tuple:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def omniglot_models(tiny_omniglot_run, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models") / "omniglot"
    export.export_run(tiny_omniglot_run, models)
    return models


@pytest.fixture(scope="module")
def server(omniglot_models, tmp_path_factory):
    server = Server(omniglot_models, tmp_path_factory.mktemp("log") / "server.log",
                    "--max-body-mb", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def request_inputs(omniglot_models) -> dict:
    meta = export.read_metadata(omniglot_models / "1")
    run_dir = Path(meta["run_dir"])
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    episode = next(iter(run.source.episodes("test", 3, 1).unbatch()))
    return {"support_x": episode.support_x.numpy(), "support_y": episode.support_y.numpy(),
            "query_x": episode.query_x.numpy()}


def columnar(inputs: dict, **extra) -> dict:
    return {"inputs": {k: v.tolist() for k, v in inputs.items()}, **extra}


def expected(models: Path, inputs: dict, signature="adapt_predict") -> dict:
    loaded = tf.saved_model.load(str(models / "1"))
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    return {k: v.numpy() for k, v in loaded.signatures[signature](**tensors).items()}


def assert_good_request(server, inputs):
    status, body = server.post(f"/v1/models/{server.name}:predict", columnar(inputs))
    assert status == 200, body
    assert np.asarray(body["outputs"]["probabilities"]).shape == (75, 5)


def test_status_metadata_and_predict_match_the_savedmodel(server, omniglot_models,
                                                          request_inputs):
    status = server.get("/v1/models/omniglot")
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert server.get("/v1/models/omniglot/versions/1")["model_version_status"][0]["version"] == "1"
    signatures = server.get("/v1/models/omniglot/metadata")["metadata"]["signature_def"][
        "signature_def"]
    assert {"serving_default", "adapt_predict", "predict"} <= set(signatures)
    assert set(signatures["adapt_predict"]["inputs"]) == {"support_x", "support_y", "query_x"}
    truth = expected(omniglot_models, request_inputs)
    code, body = server.post("/v1/models/omniglot:predict", columnar(request_inputs))
    assert code == 200
    for key in ("logits", "probabilities"):
        np.testing.assert_allclose(body["outputs"][key], truth[key], atol=1e-5)
    code, versioned = server.post("/v1/models/omniglot/versions/1:predict",
                                  columnar(request_inputs, signature_name="adapt_predict"))
    assert code == 200 and versioned["outputs"] == body["outputs"]
    # Row format: one instance per example, for the single-input `predict` signature.
    plain = expected(omniglot_models, {"x": request_inputs["query_x"]}, "predict")
    code, rows = server.post("/v1/models/omniglot:predict", {
        "signature_name": "predict", "instances": request_inputs["query_x"].tolist()})
    assert code == 200 and len(rows["predictions"]) == 75
    np.testing.assert_allclose([r["logits"] for r in rows["predictions"]], plain["logits"],
                               atol=1e-5)


def test_grpc_predict_and_metadata(server, omniglot_models, request_inputs):
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "omniglot")
    try:
        out = client.predict(**request_inputs)
        truth = expected(omniglot_models, request_inputs)
        np.testing.assert_allclose(out["probabilities"], truth["probabilities"], atol=1e-5)
        assert "adapt_predict" in client.metadata().signature_def
        bad = dict(request_inputs, support_y=np.array([0, 1, 2, 3, 9], np.int32))
        with pytest.raises(ServingClientError, match=r"^INVALID_ARGUMENT: support_y holds 9 at "
                                                     r"index 4; labels must lie in \[0, 5\)$") as error:
            client.predict(**bad)
        assert error.value.status == "INVALID_ARGUMENT"
        with pytest.raises(ServingClientError) as error:
            GrpcClient(f"127.0.0.1:{server.grpc_port}", "nope").predict(**request_inputs)
        assert error.value.status == "NOT_FOUND"
    finally:
        client.close()


def corrupt(inputs: dict, **changes) -> dict:
    out = {k: v.copy() for k, v in inputs.items()}
    out.update(changes)
    return out


BAD_REQUESTS = {
    "malformed JSON": (lambda i: b'{"inputs": {"support_x": [1, 2', "malformed JSON"),
    "missing input": (lambda i: {"inputs": {k: v.tolist() for k, v in i.items()
                                            if k != "query_x"}}, "missing input 'query_x'"),
    "wrong rank": (lambda i: columnar(corrupt(i, query_x=i["query_x"][..., 0])),
                   r"'query_x' has shape \[75, 28, 28\]; expected \[\?, 28, 28, 1\]"),
    "wrong image size": (lambda i: columnar(corrupt(i, support_x=i["support_x"][:, :14, :14])),
                         r"'support_x' has shape \[5, 14, 14, 1\]"),
    "label outside [0, ways)": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 2, 3, 5]))),
                                r"^support_y holds 5 at index 4; labels must lie in \[0, 5\)$"),
    "one class": (lambda i: columnar(corrupt(i, support_y=np.zeros(5, np.int32))),
                  r"^support_y holds one class only \(label 0 on all 5 support examples\); a task "
                  r"needs at least two classes$"),
    "labels that skip a class": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 3, 3, 4]))),
                                 r"^support_y has no example of class 2 although its largest "
                                 r"label is 4; labels must be the classes 0\.\.M-1 with a "
                                 r"support example of each$"),
    "NaN": (lambda i: json.dumps(columnar(i)).replace("0.0", "NaN", 1).encode(),
            r"^support_x holds NaN or Inf in example 0$"),
    "Inf": (lambda i: json.dumps(columnar(i)).replace("0.0", "Infinity", 1).encode(),
            r"^support_x holds NaN or Inf in example 0$"),
    "empty support set": (lambda i: {"inputs": {"support_x": [], "support_y": [],
                                                "query_x": i["query_x"].tolist()}},
                          r"^support_x is empty; send at least one example$"),
    "body over the limit": (lambda i: b'{"inputs": "' + b"x" * (3 << 20) + b'"}',
                            "over the limit of 2097152 bytes"),
    "both instances and inputs": (lambda i: {**columnar(i), "instances": [1]},
                                  "exactly one of"),
    "unknown signature": (lambda i: columnar(i, signature_name="classify"),
                          "unknown signature 'classify'"),
    "non-integer labels": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 2.5, 3, 4]))),
                           "must hold integers"),
    "label beyond int32": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 2, 3, 2**40]))),
                           r"holds 1099511627776, outside int32's range"),
    "boolean pixels": (lambda i: json.dumps(columnar(i)).replace("0.0", "true", 1).encode(),
                       "'.*' holds true or false; it is float32 and takes numbers"),
    "pixel beyond float32": (lambda i: json.dumps(columnar(i)).replace("0.0", "1e39", 1).encode(),
                             "beyond float32's range"),
    "deeply nested JSON": (lambda i: b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                           "malformed JSON"),
    "bytes where numbers go": (lambda i: {"inputs": {**columnar(i)["inputs"],
                                                     "query_x": [{"b64": "iVBORw0K"}]}},
                               "'query_x' holds strings or {\"b64\": ...} bytes; it is float32"),
    # Python refuses to parse an integer of over 4,300 digits: this was a 500.
    "a 5,000-digit label": (lambda i: json.dumps(columnar(i)).replace(
        '"support_y": [', '"support_y": [' + "9" * 5000 + ", ", 1).encode(),
        "malformed JSON: a number beyond the range of every input dtype"),
    # Counted before anything is decoded: the empty files would be refused next.
    "more examples than the export takes": (lambda i: {
        "signature_name": "adapt_predict_images", "inputs": {
            "support_images": [{"b64": ""}] * 5, "support_y": [0, 1, 2, 3, 4],
            "query_images": [{"b64": ""}] * 996}},
        r"the request holds 1001 examples, over the limit of 1000 per request set at export "
        r"\(tfmeta export --max-examples\); send its queries in several requests"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_400_and_the_server_keeps_serving(server, request_inputs, case):
    make, message = BAD_REQUESTS[case]
    status, body = server.post("/v1/models/omniglot:predict", make(request_inputs))
    assert status == 400, body
    assert re.search(message, body["error"]), body["error"]
    assert_good_request(server, request_inputs)


@pytest.mark.parametrize("path, message", [
    ("/v1/models/other:predict", "model 'other' is not served"),
    ("/v1/models/omniglot/versions/7:predict", "version 7 is not served"),
    ("/v1/models/omniglot/versions/7", "version 7 is not served"),
    # Only ASCII digits make a version: a superscript two gave a 500, an Arabic-Indic one was
    # served as version 1.
    ("/v1/models/omniglot/versions/%C2%B2:predict", "'²' is not an integer version"),
    ("/v1/models/omniglot/versions/%D9%A1", "'١' is not an integer version"),
    ("/v1/models/omniglot/versions/" + "1" * 30, "is not an integer version"),
    ("/v2/whatever", "no such endpoint")])
def test_unknown_model_or_version_gets_a_404(server, request_inputs, path, message):
    if path.endswith(":predict"):
        status, body = server.post(path, columnar(request_inputs))
    else:
        with pytest.raises(urllib.error.HTTPError) as error:
            server.get(path)
        status, body = error.value.code, json.loads(error.value.read())
    assert status == 404 and message in body["error"]
    assert_good_request(server, request_inputs)


def test_a_new_version_is_served_without_a_restart(omniglot_models, request_inputs,
                                                   tmp_path):
    """The watcher skips what is not a version (a folder named "²", which str.isdigit takes and
    int() refuses, used to kill it), and tries a version that failed to load again once its
    files change (it may have been seen half-written)."""
    models = tmp_path / "omniglot"
    shutil.copytree(omniglot_models, models)
    server = Server(models, tmp_path / "server.log")
    log = lambda: (tmp_path / "server.log").read_text()  # noqa: E731

    def wait_for(condition, what):
        until(condition, 30, lambda: f"{what}:\n{log()}")
    try:
        (models / "²").mkdir()
        half = models / "2"
        half.mkdir()
        (half / "saved_model.pb").write_bytes(b"half-written")
        wait_for(lambda: "could not load" in log() and "skipping" in log(), "no log lines")
        assert f"skipping {models / '²'}: a version is a directory named by an integer" in log()
        assert server.get("/v1/models/omniglot")["model_version_status"][0]["version"] == "1"
        staging = tmp_path / "staging"
        shutil.copytree(models / "1", staging)
        shutil.rmtree(half)
        os.replace(staging, half)
        wait_for(lambda: server.get("/v1/models/omniglot")["model_version_status"][0][
            "version"] == "2", "version 2 not served")
        status, body = server.post("/v1/models/omniglot/versions/2:predict",
                                   columnar(request_inputs))
        assert status == 200
        assert server.post("/v1/models/omniglot/versions/1:predict",
                           columnar(request_inputs))[0] == 404
        assert RestClient(server.url, "omniglot").status()["model_version_status"][0][
            "version"] == "2"
        assert "Traceback" not in log()
    finally:
        server.stop()


def test_no_version_yet_is_a_404_that_names_no_server_path(tmp_path):
    from tfmeta_serving.errors import ServingError
    from tfmeta_serving.repository import Repository
    repository = Repository("m", tmp_path, log=lambda _: None)
    assert not repository.refresh()
    with pytest.raises(ServingError) as error:
        repository.get("m")
    assert error.value.status == 404 and str(tmp_path) not in error.value.message
    assert error.value.message == "model 'm' has no loadable version yet"


def test_the_serving_guides_requests_work_against_the_embedded_server(tiny_sine_run, tmp_path):
    """docs/guides/serving.md's curl and gRPC requests, as written, against the embedded server."""
    export.export_run(tiny_sine_run, tmp_path / "models" / "sine")
    server = Server(tmp_path / "models" / "sine", tmp_path / "server.log")
    try:
        block = SERVING_GUIDE.read_text().split("<!-- example: tested-by test_serving.py::test_the_serving_guides_requests_work_against_the_embedded_server -->")[1].split("```sh\n")[1]
        block = block.split("```")[0]
        request = re.search(r"<<'EOF'\n(.*?)\nEOF", block, re.S)[1]
        (tmp_path / "request.json").write_text(request)
        commands = [line for line in block.splitlines()
                    if line.startswith(("curl ", "python -m tfmeta_serving.client"))]
        assert len(commands) == 2
        truth = expected(tmp_path / "models" / "sine",
                         {k: np.asarray(v, np.float32)
                          for k, v in json.loads(request)["inputs"].items()})["predictions"]
        for command in commands:
            command = (command.replace("localhost:8501", f"127.0.0.1:{server.port}")
                       .replace("localhost:8500", f"127.0.0.1:{server.grpc_port}")
                       .replace("python -m", f"{sys.executable} -m"))
            if command.startswith("curl") and shutil.which("curl") is None:
                answer = server.post("/v1/models/sine:predict", request.encode())[1]
            else:
                answer = json.loads(subprocess.run(command, shell=True, cwd=tmp_path, env=ENV,
                                                   check=True, capture_output=True,
                                                   text=True).stdout)
            outputs = answer["outputs"]
            outputs = outputs["predictions"] if isinstance(outputs, dict) else outputs
            np.testing.assert_allclose(outputs, truth, atol=1e-5)
    finally:
        server.stop()


def test_serve_runs_tensorflow_model_server_when_it_is_on_path(tmp_path, omniglot_models):
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'argv'}\n")
    fake.chmod(0o755)
    env = {**ENV, "PATH": f"{fake.parent}{os.pathsep}{ENV['PATH']}"}
    subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "serve", "--model-base-path",
                    str(omniglot_models), "--port", "9001", "--grpc-port", "9000"],
                   check=True, env=env, capture_output=True)
    assert (tmp_path / "argv").read_text().split() == [
        "--port=9000", "--rest_api_port=9001", "--model_name=omniglot",
        f"--model_base_path={omniglot_models.resolve()}", "--rest_api_timeout_in_ms=30000"]


def test_serve_and_export_errors_exit_2(tmp_path, omniglot_models):
    missing = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "serve",
                              "--model-base-path", str(tmp_path / "nothing"), "--embedded"],
                             env=ENV, capture_output=True, text=True)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    run_dir = export.read_metadata(omniglot_models / "1")["run_dir"]
    taken = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "export", run_dir,
                            "--out", str(omniglot_models), "--version", "1"],
                           env=ENV, capture_output=True, text=True)
    assert taken.returncode == 2 and "exists" in taken.stderr, taken.stderr
    assert "Traceback" not in taken.stderr
    fewer = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "export", run_dir,
                            "--out", str(tmp_path / "m"), "--max-examples", "0"],
                           env=ENV, capture_output=True, text=True)
    assert fewer.returncode == 2 and fewer.stderr.strip() == (
        "error: --max-examples must be a positive number of examples, got 0"), fewer.stderr
    for flag, value, lowest in (("--max-receiving-bodies", "0", 1), ("--body-grace-ms", "0", 1),
                                ("--max-queued-predictions", "-1", 0)):
        start = time.perf_counter()
        bad = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "serve",
                              "--model-base-path", str(omniglot_models), flag, value],
                             env=ENV, capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.strip() == (
            f"error: {flag} must be at least {lowest}, got {value}"), bad.stderr
        assert time.perf_counter() - start < 10   # refused before TensorFlow starts


def test_deployment_files_parse():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    config = text_format.Parse((SERVING / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    names = [c.name for c in config.model_config_list.config]
    assert names == ["omniglot", "sine"]
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    service = compose["services"]["tensorflow-serving"]
    assert service["image"].startswith("tensorflow/serving:2.21")
    assert "--model_config_file=/config/models.config" in service["command"]
    assert not [flag for flag in service["command"] if "batching" in flag]


def test_accuracy_through_rest_matches_evaluate_on_the_same_episodes(server, omniglot_models):
    meta = export.read_metadata(omniglot_models / "1")
    run_dir = Path(meta["run_dir"])
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    run.restore()
    steps, tasks = meta["steps"], 12
    reference = run.evaluator(steps, tasks, "test")()["accuracy"][:, steps]
    client = RestClient(server.url, "omniglot")
    served = []
    for episode in run.source.episodes("test", run.config.train.seed, 1, count=tasks).unbatch():
        out = client.predict(support_x=episode.support_x.numpy(),
                             support_y=episode.support_y.numpy(), query_x=episode.query_x.numpy())
        served.append(np.mean(out["probabilities"].argmax(-1) == episode.query_y.numpy()))
    np.testing.assert_allclose(served, reference, atol=1e-6)


# --- image files, dtypes, concurrency, logs -------------------------------------------------------

@pytest.fixture(scope="module")
def files(omniglot_models) -> dict:
    """A held-out 5-way 1-shot task as PNG files, 2 queries per class."""
    from tfmeta.tasks.omniglot_files import file_tasks
    run_dir = Path(export.read_metadata(omniglot_models / "1")["run_dir"])
    config = config_lib.load(str(run_dir / "config.yaml"))
    task = file_tasks(config.data.omniglot, 5, 1, 2, count=1, seed=5)[0]
    return {"support_images": task.support_png, "support_y": task.support_y,
            "query_images": task.query_png}


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def image_body(inputs: dict, **changes) -> dict:
    inputs = {**inputs, **changes}
    encoded = {k: ([b64(f) for f in v] if k.endswith("_images") and v and isinstance(v[0], bytes)
                   else (v.tolist() if isinstance(v, np.ndarray) else v))
               for k, v in inputs.items()}
    return {"signature_name": "adapt_predict_images", "inputs": encoded}


def test_image_files_over_rest_and_grpc_match_the_savedmodel(server, omniglot_models, files):
    truth = expected(omniglot_models, files, "adapt_predict_images")
    status, body = server.post("/v1/models/omniglot:predict", image_body(files))
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["probabilities"], truth["probabilities"],
                               atol=1e-6)
    rest = RestClient(server.url, "omniglot").predict("adapt_predict_images", **files)
    np.testing.assert_allclose(rest["logits"], truth["logits"], atol=1e-5)
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "omniglot")
    try:
        out = client.predict("adapt_predict_images", **files)
    finally:
        client.close()
    np.testing.assert_allclose(out["logits"], truth["logits"], atol=1e-5)


def cmyk_jpeg() -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.new("CMYK", (30, 30), (0, 0, 0, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


BAD_IMAGE_REQUESTS = {
    "bytes that are not an image": (
        lambda f: image_body(f, query_images=[b"hello, not a PNG"] + f["query_images"][1:]),
        r"^query_images holds bytes that are not a PNG or JPEG file at index 0$"),
    "an empty string": (lambda f: image_body(f, support_images=f["support_images"][:4] + [b""]),
                        r"^support_images holds an empty string at index 4$"),
    "a CMYK JPEG": (lambda f: image_body(f, query_images=[cmyk_jpeg()]),
                    r"^query_images holds a CMYK JPEG at index 0; convert it to RGB or "
                    r"grayscale$"),
    "a damaged PNG": (lambda f: image_body(f, query_images=[f["query_images"][0][:80]]),
                      "^query_images: "),
    "invalid base64": (lambda f: {**image_body(f), "inputs": {**image_body(f)["inputs"],
                                                              "query_images": [{"b64": "%%%"}]}},
                       "'query_images' item 0: \"b64\" is not valid base64"),
    "numbers where files go": (
        lambda f: image_body(f, query_images=np.zeros((1, 28, 28, 1)).tolist()),
        "'query_images' item 0 is float; it takes bytes"),
    "files sent to the float signature": (
        lambda f: {"inputs": {"support_x": [b64(x) for x in f["support_images"]],
                              "support_y": f["support_y"].tolist(),
                              "query_x": [b64(x) for x in f["query_images"]]}},
        "'support_x' holds strings or {\"b64\": ...} bytes"),
    "M = 0 classes": (lambda f: image_body(f, support_images=[], support_y=[]),
                      r"^support_images is empty; send at least one example$"),
    "labels that skip a class": (lambda f: image_body(f, support_y=np.array([0, 2, 2, 3, 4])),
                                 r"^support_y has no example of class 1 although its largest "
                                 r"label is 4; labels must be the classes 0\.\.M-1 with a "
                                 r"support example of each$"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_REQUESTS))
def test_bad_image_request_gets_a_400_naming_the_input(server, request_inputs, files, case):
    make, message = BAD_IMAGE_REQUESTS[case]
    status, body = server.post("/v1/models/omniglot:predict", make(files))
    assert status == 400, body
    assert re.search(message, body["error"]), body["error"]
    assert_good_request(server, request_inputs)


def test_fewer_classes_over_rest(server, files):
    three = {"support_images": files["support_images"][:3], "support_y": files["support_y"][:3],
             "query_images": files["query_images"]}
    status, body = server.post("/v1/models/omniglot:predict", image_body(three))
    assert status == 200, body
    probabilities = np.asarray(body["outputs"]["probabilities"])
    assert probabilities.shape == (10, 5) and np.all(probabilities[:, 3:] == 0)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("name, value, dtype", [
    ("support_y", [0, 1, 2, 3, 4], np.int64), ("support_y", [0, 1, 2, 3, 2**40], np.int64),
    ("support_y", [0.0, 1.0, 2.0, 3.0, 4.0], np.float32), ("query_x", None, np.float64)])
def test_grpc_refuses_a_dtype_other_than_the_signatures(server, request_inputs, name, value,
                                                       dtype):
    """TF Serving refuses a dtype mismatch with INVALID_ARGUMENT; a silent cast could turn 2^40
    into class 0. The stub is used raw: tfmeta's GrpcClient would send the right dtypes."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "omniglot"
    for key, array in request_inputs.items():
        if key == name:
            array = np.asarray(array if value is None else value, dtype)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wanted = "int32" if name == "support_y" else "float32"
    assert f"input '{name}' is {np.dtype(dtype).name}; signature 'serving_default' takes " \
           f"{wanted}" in error.value.details()
    assert_good_request(server, request_inputs)


def test_grpc_client_refuses_to_change_a_value(server, request_inputs):
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "omniglot")
    try:
        with pytest.raises(ValueError, match="'support_y' holds values that int32 cannot"):
            client.predict(**{**request_inputs, "support_y": [0, 1, 2.5, 3, 4]})
    finally:
        client.close()


def test_an_over_long_request_line_is_one_line_in_the_log(server, request_inputs):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = connection.recv(4096)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    assert_good_request(server, request_inputs)
    log = server.log.read_text()
    assert "Traceback" not in log, log
    assert re.search(r"Error handling request from \S+: 400 Got more than \d+ bytes", log), log


def test_concurrent_requests_are_never_mixed(server, omniglot_models, request_inputs):
    """8 clients at once, each with its own task: every answer is the one its own request gets
    alone (a server that batched requests together would mix their support sets)."""
    from concurrent.futures import ThreadPoolExecutor
    meta = export.read_metadata(omniglot_models / "1")
    run = Run(config_lib.load(str(Path(meta["run_dir"]) / "config.yaml")),
                       Path(meta["run_dir"]))
    requests = [{"support_x": e.support_x.numpy(), "support_y": e.support_y.numpy(),
                 "query_x": e.query_x.numpy()[:10 + i]}
                for i, e in enumerate(run.source.episodes("test", 21, 1, count=8).unbatch())]
    alone = [expected(omniglot_models, r)["probabilities"] for r in requests]

    def send(i):
        client = RestClient(server.url, "omniglot")
        return [client.predict(**requests[i])["probabilities"] for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    for i, repeats in enumerate(answers):
        for answer in repeats:
            np.testing.assert_allclose(answer, alone[i], atol=1e-5)


def test_serve_says_whether_answers_depend_on_the_request(server, omniglot_models, tmp_path):
    assert "a query's answer depends on the other queries of its request" in \
        server.log.read_text()
    run_dir = export.read_metadata(omniglot_models / "1")["run_dir"]
    models = tmp_path / "support"
    export.export_run(Path(run_dir), models, norm="support")
    local = Server(models, tmp_path / "server.log", "--host", "127.0.0.1")
    try:
        log = (tmp_path / "server.log").read_text()
        assert "clients may send one query per request" in log
        assert f"REST on http://127.0.0.1:{local.port}" in log
    finally:
        local.stop()


def test_host_with_tensorflow_model_server_is_refused(tmp_path, omniglot_models):
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    env = {**ENV, "PATH": f"{fake.parent}{os.pathsep}{ENV['PATH']}"}
    for flags in (["--host", "127.0.0.1"], ["--max-concurrent-predictions", "4"]):
        result = subprocess.run([sys.executable, "-m", "tfmeta_cli.main", "serve",
                                 "--model-base-path", str(omniglot_models), *flags],
                                env=env, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert f"{flags[0]}: tensorflow_model_server has no such flag" in result.stderr


# --- hostile input, overload, deadlines, memory -------------------------------------------------

def rss_mb(server) -> float:
    return rss.rss_mb(server.process.pid)


@pytest.fixture(scope="module")
def large_file() -> bytes:
    """A legal 2048 x 2048 RGBA PNG (the default limit), 12 kB on the wire, 16 MB decoded."""
    return png_bomb(2048, 2048, 6)


@pytest.mark.parametrize("bomb, size", [(png_bomb, "20000x20000"), (jpeg_bomb, "60000x60000")])
def test_bombs_are_refused_over_rest_and_grpc_without_the_memory(server, files, request_inputs,
                                                                 bomb, size):
    """A PNG that declares 20000 x 20000 RGBA (1.6 GB decoded; it took a server from 0.85 to
    12.8 GB before) and a JPEG that declares 60000 x 60000 are refused from their headers."""
    bomb = bomb()
    before = rss_mb(server)
    start = time.perf_counter()
    status, body = server.post("/v1/models/omniglot:predict", image_body(
        files, support_images=files["support_images"][:2] + [bomb] + files["support_images"][3:]))
    assert time.perf_counter() - start < 5
    assert status == 400 and re.fullmatch(
        rf"support_images holds an image of {size} pixels \(width x height\) at index 2, over "
        r"the limit of 2048 pixels per side set at export \(tfmeta export --max-image-side\); "
        "send it resized", body["error"]), body
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "omniglot")
    try:
        with pytest.raises(ServingClientError, match=rf"{size} pixels .* at index 1") as error:
            client.predict("adapt_predict_images", **{**files, "query_images": [
                files["query_images"][0], bomb]})
    finally:
        client.close()
    assert error.value.status == "INVALID_ARGUMENT"
    assert rss_mb(server) - before < 200
    assert_good_request(server, request_inputs)


@pytest.fixture(scope="module")
def tight_server(omniglot_models, tmp_path_factory):
    """One prediction at a time, one waiting, and a 3 s REST deadline."""
    server = Server(omniglot_models, tmp_path_factory.mktemp("tight") / "server.log",
                    "--max-concurrent-predictions", "1", "--max-queued-predictions", "1",
                    "--rest_api_timeout_in_ms", "3000")
    yield server
    server.stop()


def until(condition, seconds: float, describe) -> None:
    """Waits for condition() for up to `seconds`, then fails with describe()."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.2)


def spare_ready(server) -> None:
    """Waits until the server's session pool has had its spare: prepared at the lowest priority,
    it may take minutes on a busy machine, and until then a request that finds no session
    prepares its own (seconds that a timed test must not count) and the spare's memory arrives
    whenever it is done."""
    until(lambda: "sessions warm" in server.log.read_text(), 300,
          lambda: f"no spare session:\n{server.log.read_text()}")


def burst(send, count: int) -> list:
    """`count` calls of send() released at once; [(result, seconds)] in order."""
    barrier, results = threading.Barrier(count), [None] * count

    def one(i):
        barrier.wait()
        start = time.perf_counter()
        results[i] = (send(), time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_overload_is_refused_at_once_and_every_accepted_answer_is_right(
        tight_server, omniglot_models, files, large_file, request_inputs):
    """Six requests of about half a second each at a server that runs one and queues one: the
    others get 503 (REST) or UNAVAILABLE (gRPC) at once, the answered ones are their requests'
    own answers, and a good request succeeds afterwards."""
    slow = {**files, "query_images": [large_file] * 4 + files["query_images"]}
    truth = expected(omniglot_models, {k: (np.array(v, object) if k.endswith("_images") else v)
                                       for k, v in slow.items()}, "adapt_predict_images")
    assert tight_server.post("/v1/models/omniglot:predict", image_body(slow))[0] == 200  # warm
    rest = burst(lambda: tight_server.post("/v1/models/omniglot:predict", image_body(slow)), 6)
    refused = [(body, took) for (status, body), took in rest if status == 503]
    answered = [body for (status, body), _ in rest if status == 200]
    assert refused and answered and len(refused) + len(answered) == 6, [
        (status, body.get("error"), round(took, 2)) for (status, body), took in rest]
    for body, took in refused:
        assert took < 0.5 and "the server is busy: 1 predictions are running and 1 waiting" in \
            body["error"]
    for body in answered:
        np.testing.assert_allclose(body["outputs"]["probabilities"], truth["probabilities"],
                                   atol=1e-5)

    def grpc_send():
        client = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot")
        try:
            return client.predict("adapt_predict_images", **slow)["probabilities"]
        except ServingClientError as error:
            return error.status
        finally:
            client.close()

    grpc = [result for result, _ in burst(grpc_send, 6)]
    statuses = [result if isinstance(result, str) else "OK" for result in grpc]
    assert set(statuses) == {"OK", "UNAVAILABLE"}, statuses
    for result in grpc:
        if not isinstance(result, str):
            np.testing.assert_allclose(result, truth["probabilities"], atol=1e-5)
    assert_good_request(tight_server, request_inputs)


def test_the_deadline_cancels_the_work_and_frees_the_slot(tight_server, files, large_file,
                                                          request_inputs):
    """A request that needs about 11 s, on a server with a 3 s REST deadline and a single
    prediction slot: 504 after 3 s (not when the work is done), and the next request runs at
    once, so the model really stopped (it would otherwise hold the only slot). gRPC keeps the
    client's deadline. "At once" is against a good request timed on the same machine just
    before, so that a loaded machine, which slows both, cannot decide it: uncancelled, the slow
    request would hold the slot for about 16 times a good request's time."""
    patient = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot", timeout=120)
    hasty = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot", timeout=1.5)

    def good_request_seconds() -> float:
        start = time.perf_counter()
        assert patient.predict(**request_inputs)["probabilities"].shape == (75, 5)
        return time.perf_counter() - start

    try:
        spare_ready(tight_server)
        alone = good_request_seconds()
        slow = image_body(files, query_images=[large_file] * 120 + files["query_images"])
        start = time.perf_counter()
        status, body = tight_server.post("/v1/models/omniglot:predict", slow)
        took = time.perf_counter() - start
        assert status == 504 and "deadline" in body["error"], body
        assert 2.9 < took < 7, took
        assert good_request_seconds() < 3 * alone + 1.5, alone
        with pytest.raises(ServingClientError) as error:
            hasty.predict("adapt_predict_images", **{
                **files, "query_images": [large_file] * 120 + files["query_images"]})
        assert error.value.status == "DEADLINE_EXCEEDED"
        assert good_request_seconds() < 3 * alone + 1.5, alone
    finally:
        patient.close()
        hasty.close()
    assert "Traceback" not in tight_server.log.read_text()


def test_memory_returns_after_large_legal_requests(tight_server, files, large_file,
                                                   request_inputs):
    """Large legal requests, 995 queries (the most the export takes beside 5 support examples)
    and 24 files of 2048 x 2048 (16 MB each decoded): a few idle seconds later the server's
    resident set is back within 60 MB of its warmed-up size (measured: 24 MB), inside the 20%
    asked for. Either half of the fix undone fails it: with TensorFlow's oneDNN pool allocator
    (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0) 112 MB stayed, and without the idle malloc_trim 106 MB.
    Sent over gRPC, whose deadline is the client's (60 s), so that a busy machine cannot turn
    them into 504s at the 3 s REST one; so is the warm-up."""
    spare_ready(tight_server)
    client = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot")
    try:
        for _ in range(5):
            assert client.predict(**request_inputs)["probabilities"].shape == (75, 5)
        time.sleep(1.5)  # the idle trim of the warm-up's own garbage
        warm = rss_mb(tight_server)
        queries = {**request_inputs, "query_x": np.random.default_rng(0).random(
            (995, 28, 28, 1), dtype=np.float32)}
        images = {**files, "query_images": [large_file] * 24}
        for _ in range(2):
            assert client.predict(**queries)["probabilities"].shape == (995, 5)
            assert client.predict("adapt_predict_images", **images)["probabilities"].shape == (
                24, 5)
    finally:
        client.close()
    time.sleep(3)
    after = rss_mb(tight_server)
    assert after - warm < 60 and after <= 1.2 * warm, (warm, after)


def test_the_worst_request_of_each_kind_stays_within_the_stated_memory(
        tight_server, files, large_file, request_inputs):
    """One request at a time, each the largest its kind may be, against the bound the serving guide
    states for one request (measured on this export: 15 MB of float JSON about 300 MB while it
    is parsed; the most examples, or 2048 x 2048 files decoded one at a time, under 200 MB)."""
    from tfmeta_serving.client import GrpcClient
    rng = np.random.default_rng(0)
    floats = lambda n: rng.random((n, 28, 28, 1)).round(6).tolist()  # noqa: E731
    per_query = len(json.dumps(floats(1)[0]))
    fifteen = json.dumps({"inputs": {"support_x": floats(5), "support_y": [0, 1, 2, 3, 4],
                                     "query_x": floats((15 << 20) // per_query)}}).encode()
    most = {"inputs": {"support_x": floats(5), "support_y": [0, 1, 2, 3, 4],
                       "query_x": floats(995)}}

    def files_at_the_side():
        client = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot", timeout=120)
        try:
            return client.predict("adapt_predict_images", **{
                **files, "query_images": [large_file] * 40})["probabilities"].shape
        finally:
            client.close()

    cases = [(lambda: tight_server.post("/v1/models/omniglot:predict", fifteen)[0], 400, 450),
             (lambda: tight_server.post("/v1/models/omniglot:predict", most)[0], 200, 250),
             (files_at_the_side, (40, 5), 250)]
    for work, expected_result, bound_mb in cases:
        time.sleep(1.5)   # the idle trim
        before = rss_mb(tight_server)
        result, peak = rss.peak_during(tight_server.process.pid, work)
        assert result == expected_result
        assert peak - before < bound_mb, (expected_result, before, peak)


def test_fifty_slow_senders_hold_no_prediction_slot(server, request_inputs):
    """50 connections send a predict request's headers and then trickle its body, a byte a
    second (ten such used to take every prediction slot for 30 s). Good requests sent meanwhile
    are answered as fast as without them, and every slow sender gets 408 once its body falls
    behind the minimum rate: the 5 s grace, since a byte a second is far below 64 kB/s."""
    from attacks import trickle
    body = json.dumps(columnar(request_inputs)).encode()
    alone = []
    for _ in range(5):
        start = time.perf_counter()
        assert_good_request(server, request_inputs)
        alone.append(time.perf_counter() - start)
    slow = [None] * 50

    def send(i):
        slow[i] = trickle("127.0.0.1", server.port, "/v1/models/omniglot:predict", body)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(50)]
    for sender in senders:
        sender.start()
    time.sleep(0.5)
    beside = []
    while len(beside) < 5:
        start = time.perf_counter()
        assert_good_request(server, request_inputs)
        beside.append(time.perf_counter() - start)
    for sender in senders:
        sender.join()
    assert all(s is not None and s[0] == 408 for s in slow), slow
    assert max(took for _, took, _ in slow) < 9, slow
    # The same requests' latency with and without the slow senders: they cost the good requests
    # nothing measurable (a margin for a loaded machine, where the medians were 0.05-0.3 s).
    assert np.median(beside) < 2 * np.median(alone) + 0.5, (alone, beside)


def test_bodies_beyond_the_receiving_places_get_a_503_that_states_the_state(
        omniglot_models, request_inputs, tmp_path):
    from attacks import trickle
    server = Server(omniglot_models, tmp_path / "server.log", "--max-receiving-bodies", "2",
                    "--body-grace-ms", "8000")
    try:
        body = json.dumps(columnar(request_inputs)).encode()
        slow = [None, None]
        deadline = time.monotonic() + 7

        def send_slowly(i):
            # A probe being read holds a place too, so a slow sender that arrives just then is
            # turned away (503) and sends again.
            while True:
                slow[i] = trickle("127.0.0.1", server.port, "/v1/models/omniglot:predict", body)
                if slow[i][0] != 503 or time.monotonic() > deadline:
                    return

        senders = [threading.Thread(target=send_slowly, args=(i,)) for i in range(2)]
        for sender in senders:
            sender.start()
        # Until both slow senders are being read (a loaded machine may take a moment to connect
        # them), a small request is read and answered at once (a 400: it lacks an input); then
        # it is refused before its body is read. The probes cost no prediction, so many fit in
        # the senders' 8 s of grace however busy the machine.
        probe = {"inputs": {"support_x": [[0.0]]}}
        while True:
            status, answer = server.post("/v1/models/omniglot:predict", probe)
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 503 and answer["error"] == (
            "the server is busy: it is receiving 2 request bodies, its limit (tfmeta serve "
            "--max-receiving-bodies); retry later")
        for sender in senders:
            sender.join()
        assert [s[0] for s in slow] == [408, 408] and all(7.9 < s[1] < 14 for s in slow), slow
        assert_good_request(server, request_inputs)
        # No library banner in an answer, good or refused.
        request = urllib.request.Request(server.url + "/v1/models/omniglot")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers.get("Server") is None
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.url + "/nope", timeout=30)
        assert error.value.headers.get("Server") is None
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        server.stop()


def raw_predict(server, inputs: dict, timeout=None, signature: str = ""):
    """A Predict call through TF Serving's own stub, with TensorProtos as given."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "omniglot"
    request.model_spec.signature_name = signature
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=timeout)


def test_a_tensor_that_declares_more_than_it_stores_is_refused_without_the_memory(
        server, request_inputs):
    """A query_x that declares 2^28 floats and stores one (34 bytes, 1 GB once expanded: it
    took a server from 848 to 1,866 MB) is refused from its header, and so is one sent under a
    name the signature does not have."""
    import grpc
    from attacks import sparse_tensor
    good = {k: tf.make_tensor_proto(v) for k, v in request_inputs.items()}
    rows = (1 << 28) // 784
    cases = [
        ({**good, "query_x": sparse_tensor([rows, 28, 28, 1])},
         rf"input 'query_x' declares shape \[{rows}, 28, 28, 1\] \({rows * 784} values\) but "
         r"stores 1 values; send every value \(a shorter tensor is not expanded\)"),
        ({**good, "bogus": sparse_tensor([1 << 30])}, "unknown input 'bogus'"),
        # 1.5 million int32 zeros in 1.5 MB of varints decode to 6 MB, over the 2 MB limit.
        ({**good, "support_y": sparse_tensor([1_500_000], tf.int32, stored=1_500_000)},
         r"input 'support_y' declares shape \[1500000\], 6000000 bytes decoded, over the limit "
         r"of 2097152 bytes"),
        ({**good, "support_y": tf.make_tensor_proto(request_inputs["support_y"].astype(np.int64))},
         "input 'support_y' is int64; signature 'serving_default' takes int32")]
    before = rss_mb(server)
    for inputs, message in cases:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            raw_predict(server, inputs, timeout=30)
        assert time.perf_counter() - start < 2
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(message, error.value.details()), error.value.details()
    assert rss_mb(server) - before < 50
    assert_good_request(server, request_inputs)


def test_more_examples_than_the_export_takes_are_refused_before_any_work(
        tight_server, omniglot_models, request_inputs, files):
    """The export's limit (`max_examples`, 1,000 support and query examples) holds in the graph
    itself, so TensorFlow Serving's session loader refuses the request too, before it decodes a
    file; the embedded server refuses it before it runs the model, over REST and gRPC."""
    from helpers import session_run
    assert export.read_metadata(omniglot_models / "1")["max_examples"] == 1000
    message = ("the request holds 1001 examples, over the limit of 1000 per request set at "
               "export (tfmeta export --max-examples); send its queries in several requests")
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        session_run(omniglot_models / "1", "adapt_predict_images", {
            "support_images": files["support_images"], "support_y": files["support_y"],
            "query_images": [b""] * 996})
    queries = np.zeros((996, 28, 28, 1), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        session_run(omniglot_models / "1", "adapt_predict", {**request_inputs, "query_x": queries})
    client = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot")   # 16 MB messages
    try:
        with pytest.raises(ServingClientError, match=re.escape(message)) as error:
            client.predict(**{**request_inputs, "query_x": queries[:996]})
        assert error.value.status == "INVALID_ARGUMENT"
        out = client.predict(**{**request_inputs, "query_x": queries[:995]})
        assert out["probabilities"].shape == (995, 5)
    finally:
        client.close()


def test_grpc_without_a_deadline_is_answered(server, request_inputs):
    """A call with no deadline (grpc's default) used to fail with "Value out of range"; as in
    TF Serving it runs with none."""
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "omniglot", timeout=None)
    try:
        assert client.predict(**request_inputs)["probabilities"].shape == (75, 5)
    finally:
        client.close()
    response = raw_predict(server, {k: tf.make_tensor_proto(v) for k, v in request_inputs.items()})
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (75, 5)


def test_a_cancelled_call_stops_its_work_and_frees_the_slot(tight_server, files, large_file,
                                                            request_inputs):
    """A gRPC call that needs about 11 s, on a server with a single prediction slot, cancelled by
    its client after a second: the next request is answered at once (uncancelled, the work
    would hold the only slot for about 10 s more), from the pool's spare session."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "omniglot", "adapt_predict_images"
    slow = {**files, "query_images": [large_file] * 120 + files["query_images"]}
    for key, value in slow.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(
            np.array(value, object) if key.endswith("_images") else np.asarray(value, np.int32)))
    client = GrpcClient(f"127.0.0.1:{tight_server.grpc_port}", "omniglot", timeout=30)
    try:
        # A server in use: its sessions have run both signatures. (A session's first run of a
        # signature builds its executors, seconds that a cancellation does not interrupt.)
        for _ in range(3):
            client.predict(**request_inputs)
            client.predict("adapt_predict_images", **files)
        spare_ready(tight_server)
        with grpc.insecure_channel(f"127.0.0.1:{tight_server.grpc_port}") as channel:
            call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(
                request)
            time.sleep(1.0)
            assert call.cancel() and call.cancelled()
        start = time.perf_counter()
        assert client.predict(**request_inputs)["probabilities"].shape == (75, 5)
        # 3 s leaves room for a loaded machine; the uncancelled work would take ~10 s.
        assert time.perf_counter() - start < 3
    finally:
        client.close()
    assert "Traceback" not in tight_server.log.read_text()



def test_a_task_adapted_once_answers_its_queries_over_rest_and_grpc(server, omniglot_models,
                                                                   request_inputs, files):
    """Each client's `adapt` returns a Task, and `predict(task, ...)` answers as `adapt_predict`
    answers from the task's support set (a query alone, where the model's queries are
    independent): arrays and files, REST and gRPC.
    A task cut short is refused with its sentence, and the server keeps serving."""
    from tfmeta_serving.client import GrpcClient, RestClient, ServingClientError, Task
    rest = RestClient(server.url, server.name)
    clients = [rest, GrpcClient(f"127.0.0.1:{server.grpc_port}", server.name)]
    arrays = {k: request_inputs[k] for k in ("support_x", "support_y")}
    images = {k: files[k] for k in ("support_images", "support_y")}
    independent = export.read_metadata(omniglot_models / "1")["query_independent"]
    expected = {"arrays": rest.predict("adapt_predict", **request_inputs)["probabilities"],
                "files": rest.predict("adapt_predict_images", **files)["probabilities"]}
    for client in clients:
        for kind, support, queries in (("arrays", arrays, request_inputs["query_x"]),
                                       ("files", images, files["query_images"])):
            task = client.adapt(**support)
            assert isinstance(task, Task) and task.data.startswith(b"tfmeta-task/1 ")
            key = "query_x" if kind == "arrays" else "query_images"
            # A transductive model's queries are normalized together: they go in one request.
            rows = [slice(0, 1), slice(len(queries) - 1, None)] if independent else [slice(None)]
            for row in rows:
                answer = client.predict(task, **{key: queries[row]})["probabilities"]
                np.testing.assert_allclose(answer, expected[kind][row], atol=1e-5)
        with pytest.raises(ServingClientError, match="it was cut short or padded"):
            client.predict(Task(task.data[:-5], task.signature), query_images=queries[:1])
    status, body = server.post(f"/v1/models/{server.name}:predict",
                               {"instances": [{"support_x": request_inputs["support_x"][i].tolist(),
                                               "support_y": int(request_inputs["support_y"][i])}
                                              for i in range(len(request_inputs["support_y"]))],
                                "signature_name": "adapt"})
    assert status == 400 and "send \"inputs\"" in body["error"]


def test_a_cached_task_answers_a_repeated_support_set_as_adaptation_does(
        server, omniglot_models, request_inputs, files, tmp_path):
    """`--task-cache-mb`: a repeated support set is answered from its kept task, with the same
    answers as a server without the cache, over REST and gRPC and for files; the cache stays
    within its budget (its log line at shutdown) however many support sets arrive."""
    from tfmeta_serving.client import GrpcClient, RestClient
    task_bytes = export.read_metadata(omniglot_models / "1")["task_bytes"]
    budget_mb = 3 * (task_bytes + 300) / (1 << 20)   # room for three tasks
    cached = Server(omniglot_models, tmp_path / "cached.log", "--task-cache-mb", f"{budget_mb}")
    try:
        plain = RestClient(server.url, server.name)
        clients = [RestClient(cached.url, cached.name),
                   GrpcClient(f"127.0.0.1:{cached.grpc_port}", cached.name)]
        expected = {"adapt_predict": plain.predict("adapt_predict", **request_inputs),
                    "adapt_predict_images": plain.predict("adapt_predict_images", **files)}
        for client in clients:
            for _ in range(2):   # adapted, then from the cache
                for signature, inputs in (("adapt_predict", request_inputs),
                                          ("adapt_predict_images", files)):
                    got = client.predict(signature, **inputs)
                    np.testing.assert_allclose(got["logits"], expected[signature]["logits"],
                                               rtol=0, atol=1e-6)
        rng = np.random.default_rng(0)
        for _ in range(6):   # new support sets: each evicts the least recent
            clients[1].predict("adapt_predict", **{
                **request_inputs,
                "support_x": rng.random(request_inputs["support_x"].shape).astype(np.float32)})
    finally:
        cached.stop()
    line = [l for l in cached.log.read_text().splitlines() if l.startswith("task cache:")][-1]
    hits, misses, tasks, used, budget = map(int, re.findall(r"\d+", line))
    assert (hits, misses, tasks) == (6, 8, 3) and used <= budget, line
