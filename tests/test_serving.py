"""The embedded server against TensorFlow Serving's contract: REST, gRPC, versions, bad input."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from helpers import train_tiny
from tfmeta import config as config_lib, export, training
from tfmeta_serving.client import GrpcClient, RestClient, ServingClientError

README = Path(__file__).resolve().parents[1] / "README.md"
SERVING = Path(__file__).resolve().parents[1] / "serving"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tfmeta serve --embedded` in a subprocess on free ports."""

    def __init__(self, base: Path, log: Path, *flags):
        self.port, self.grpc_port = free_port(), free_port()
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
def omniglot_models(omniglot_dir, tmp_path_factory) -> Path:
    run = train_tiny(tmp_path_factory.mktemp("omniglot") / "run", "omniglot_5w1s-cpu",
                     f"data.omniglot.data_dir={omniglot_dir}", "model.filters=8",
                     "train.meta_batch=2")
    models = tmp_path_factory.mktemp("models") / "omniglot"
    export.export_run(run, models)
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
    run = training.Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
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
        with pytest.raises(ServingClientError, match="outside") as error:
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
                                r"outside \[0, 5\)"),
    "class without support": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 2, 3, 3]))),
                              "needs a support example"),
    "NaN": (lambda i: json.dumps(columnar(i)).replace("0.0", "NaN", 1).encode(),
            "contains NaN or Inf"),
    "Inf": (lambda i: json.dumps(columnar(i)).replace("0.0", "Infinity", 1).encode(),
            "contains NaN or Inf"),
    "empty support set": (lambda i: {"inputs": {"support_x": [], "support_y": [],
                                                "query_x": i["query_x"].tolist()}},
                          "support_x is empty"),
    "body over the limit": (lambda i: b'{"inputs": "' + b"x" * (3 << 20) + b'"}',
                            "over the limit of 2097152 bytes"),
    "both instances and inputs": (lambda i: {**columnar(i), "instances": [1]},
                                  "exactly one of"),
    "unknown signature": (lambda i: columnar(i, signature_name="classify"),
                          "unknown signature 'classify'"),
    "non-integer labels": (lambda i: columnar(corrupt(i, support_y=np.array([0, 1, 2.5, 3, 4]))),
                           "must hold integers"),
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
    models = tmp_path / "omniglot"
    shutil.copytree(omniglot_models, models)
    server = Server(models, tmp_path / "server.log")
    try:
        staging = tmp_path / "staging"
        shutil.copytree(models / "1", staging)
        os.replace(staging, models / "2")
        deadline = time.time() + 30
        while server.get("/v1/models/omniglot")["model_version_status"][0]["version"] != "2":
            assert time.time() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        status, body = server.post("/v1/models/omniglot/versions/2:predict",
                                   columnar(request_inputs))
        assert status == 200
        assert server.post("/v1/models/omniglot/versions/1:predict",
                           columnar(request_inputs))[0] == 404
        assert RestClient(server.url, "omniglot").status()["model_version_status"][0][
            "version"] == "2"
    finally:
        server.stop()


def test_the_readme_requests_work_against_the_embedded_server(tmp_path):
    run = train_tiny(tmp_path / "run", "sine")
    export.export_run(run, tmp_path / "models" / "sine")
    server = Server(tmp_path / "models" / "sine", tmp_path / "server.log")
    try:
        block = README.read_text().split("<!-- serving-example -->")[1].split("```sh\n")[1]
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
        f"--model_base_path={omniglot_models.resolve()}"]


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


def test_accuracy_through_rest_matches_evaluate_on_the_same_episodes(server, omniglot_models):
    meta = export.read_metadata(omniglot_models / "1")
    run_dir = Path(meta["run_dir"])
    run = training.Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
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
