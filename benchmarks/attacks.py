"""The attacks of the serving hardening (issue 35), each against a fresh `tfmeta serve --embedded`.

    python benchmarks/attacks.py MODELS/NAME [--before SRC] [--only NAME,...] [--rss-cap-gb 12]

MODELS/NAME is an image classifier's export (for example of omniglot_20w1s-cpu). `--before SRC`
serves it with the tfmeta source tree SRC instead of this one (a `git worktree` of an earlier
commit; export MODELS/NAME with that tree too, since the export's graph holds some of the
guards), so that both are measured on one machine. Each attack prints one JSON line: what it
sent, the status it got, the seconds it took, and the server's resident set before the attack and
at its peak (sampled every 20 ms). A server whose resident set passes `--rss-cap-gb` is killed
and the attack reported as such, so that a server without the guards cannot take the machine.
"""

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from attacks import sparse_tensor, trickle  # noqa: E402
from rss import rss_mb  # noqa: E402
from tfmeta.ports import free_ports  # noqa: E402


class Served:
    """`tfmeta serve --embedded` on free ports, from this tree or from `source`'s."""

    def __init__(self, models: Path, source, log: Path, cap_mb: float):
        self.port, self.grpc_port = free_ports(2)
        self.models, self.name = models, models.name
        env, cwd = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, None
        if source:
            # The installed package maps tfmeta_serving and tfmeta_cli to this tree: put the
            # other tree's modules first under the same names.
            shim = Path(tempfile.mkdtemp(prefix="attacks-before-"))
            for name, folder in (("tfmeta", "tfmeta"), ("tfmeta_serving", "serving"),
                                 ("tfmeta_cli", "cli")):
                (shim / name).symlink_to(Path(source).resolve() / folder)
            # `python -m` puts the working directory first on the path: start from the shim.
            env["PYTHONPATH"], cwd = str(shim), shim
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfmeta_cli.main", "serve", "--model-base-path", str(models),
             "--host", "127.0.0.1", "--port", str(self.port), "--grpc-port",
             str(self.grpc_port), "--embedded", "--poll-seconds", "0.5"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self.cap_mb, self.killed = cap_mb, False
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{self.url}/v1/models/{self.name}", timeout=5)
                # This server's sessions are all warm once it says so (the earlier one had one).
                if source or "sessions warm" in log.read_text():
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def measured(self, work) -> dict:
        """Runs work() -> dict while sampling the resident set; kills the server past the cap."""
        before = rss_mb(self.process.pid)
        peak, done = [before], threading.Event()

        def sample():
            while not done.is_set():
                now = rss_mb(self.process.pid)
                peak[0] = max(peak[0], now)
                if now > self.cap_mb:
                    self.killed = True
                    self.process.kill()
                    return
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()
        try:
            result = work()
        except Exception as error:  # the attack's own failure is a result too
            result = {"status": f"client error: {type(error).__name__}: {error}"[:300]}
        done.set()
        result.update(seconds=round(time.perf_counter() - start, 2),
                      rss_before_mb=round(before), rss_peak_mb=round(peak[0]))
        if self.killed:
            result["status"] = f"server killed by the script at {self.cap_mb / 1024:g} GB RSS"
        return result

    def post(self, path: str, body: bytes, timeout: float = 120) -> tuple:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()[:200].decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read()[:300].decode(errors="replace")

    def get(self, path: str) -> tuple:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, dict(response.headers), response.read()[:300].decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()[:300].decode(errors="replace")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def png(side: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 255, np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def images_body(ways: int, support: list, query: list) -> bytes:
    b64 = lambda files: [{"b64": base64.b64encode(f).decode()} for f in files]  # noqa: E731
    labels = [i % ways for i in range(len(support))]
    return json.dumps({"signature_name": "adapt_predict_images", "inputs": {
        "support_images": b64(support), "support_y": labels, "query_images": b64(query)}}).encode()


def grpc_predict(served: Served, inputs: dict, signature: str = "", timeout=60):
    """Predict through TF Serving's own stub with TensorProtos as given: the status name."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = served.name, signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if not isinstance(value, np.ndarray)
                                     else tf.make_tensor_proto(value))
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                               timeout=timeout)
            return {"status": "OK", "bytes": request.ByteSize()}
        except grpc.RpcError as error:
            return {"status": error.code().name, "bytes": request.ByteSize(),
                    "message": error.details()[:200]}


def good_inputs(meta: dict) -> dict:
    ways, shape = meta["ways"], meta["example_shape"]
    rng = np.random.default_rng(0)
    return {"support_x": rng.random((ways, *shape), dtype=np.float32),
            "support_y": np.arange(ways, dtype=np.int32),
            "query_x": rng.random((ways, *shape), dtype=np.float32)}


def good_body(meta: dict) -> bytes:
    return json.dumps({"inputs": {k: v.tolist() for k, v in good_inputs(meta).items()}}).encode()


def slow_senders(served: Served, meta: dict, count: int) -> dict:
    """`count` connections trickle a body; a good REST and a good gRPC request are sent 1 s
    later."""
    path = f"/v1/models/{served.name}:predict"
    body = good_body(meta)
    results = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, trickle(
        "127.0.0.1", served.port, path, body, seconds=45))) for i in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    start = time.perf_counter()
    status, text = served.post(path, body)
    rest_seconds = time.perf_counter() - start
    start = time.perf_counter()
    grpc_status = grpc_predict(served, good_inputs(meta))["status"]
    grpc_seconds = time.perf_counter() - start
    for thread in threads:
        thread.join()
    return {"status": status, "good_rest_seconds": round(rest_seconds, 3),
            "good_grpc": grpc_status, "good_grpc_seconds": round(grpc_seconds, 3),
            "message": text[:160] if status != 200 else "",
            "slow_senders_got": sorted({str(r[0]) for r in results}),
            "slow_senders_cut_after_s": round(max(r[1] for r in results), 1)}


def attacks(served: Served, meta: dict) -> dict:
    """{name: () -> result dict}, in the order of the issue."""
    ways, shape = meta["ways"], meta["example_shape"]
    per_example = int(np.prod(shape))
    good = good_inputs(meta)
    path = f"/v1/models/{served.name}:predict"
    one = png(1)

    def rest_files(n):
        body = images_body(ways, [one] * ways, [one] * (n - ways))
        status, text = served.post(path, body, timeout=300)
        return {"status": status, "body_mb": round(len(body) / 1e6, 2), "message": text[:160]}

    def cancelled_calls():
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        big = Image.new("L", (2048, 2048))
        buffer = io.BytesIO()
        big.save(buffer, "PNG")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = served.name
        request.model_spec.signature_name = "adapt_predict_images"
        request.inputs["support_images"].CopyFrom(tf.make_tensor_proto(
            np.array([one] * ways, object)))
        request.inputs["support_y"].CopyFrom(tf.make_tensor_proto(np.arange(ways, dtype=np.int32)))
        request.inputs["query_images"].CopyFrom(tf.make_tensor_proto(
            np.array([buffer.getvalue()] * 150, object)))
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            # With a deadline: a call without one the earlier server refused at once.
            calls = [stub.Predict.future(request, timeout=300) for _ in range(10)]
            time.sleep(1.0)
            for call in calls:
                call.cancel()
        start = time.perf_counter()
        refused = 0
        while True:   # until a good request is answered
            status = grpc_predict(served, good)["status"]
            if status == "OK" or time.perf_counter() - start > 120:
                break
            refused += 1
            time.sleep(0.1)
        return {"status": status, "good_request_answered_after_seconds":
                round(time.perf_counter() - start, 2), "refused_before": refused}

    def watcher():
        (served.models / "²").mkdir()
        time.sleep(1.5)
        alive = served.process.poll() is None
        half = served.models / "3"
        half.mkdir()
        (half / "saved_model.pb").write_bytes(b"half-written")
        time.sleep(1.5)
        shutil.rmtree(half)
        shutil.copytree(served.models / "1", served.models / ".3.staging")
        os.replace(served.models / ".3.staging", half)
        deadline = time.time() + 15
        version = None
        while time.time() < deadline:
            version = json.loads(served.get(f"/v1/models/{served.name}")[2])[
                "model_version_status"][0]["version"]
            if version == "3":
                break
            time.sleep(0.5)
        return {"status": "served version " + str(version), "server_alive": alive,
                "note": "a folder '²', then a half-written version 3, then the whole version 3"}

    def headers():
        status, head, _ = served.get(f"/v1/models/{served.name}")
        return {"status": status, "server_header": head.get("Server")}

    return {
        "10 slow senders, then a good request": lambda: slow_senders(served, meta, 10),
        "50 slow senders, then a good request": lambda: slow_senders(served, meta, 50),
        "gRPC query_x declaring 2^28 floats, storing 1": lambda: grpc_predict(served, {
            **good, "query_x": sparse_tensor([(1 << 28) // per_example, *shape])}),
        "gRPC query_x declaring 2^30 floats, storing 1": lambda: grpc_predict(served, {
            **good, "query_x": sparse_tensor([(1 << 30) // per_example, *shape])}),
        "gRPC unknown input declaring 2^28 floats": lambda: grpc_predict(served, {
            **good, "bogus": sparse_tensor([1 << 28])}),
        "REST 8,000 1x1 PNGs": lambda: rest_files(8000),
        "REST 16,000 1x1 PNGs": lambda: rest_files(16000),
        "REST 100,000 1x1 PNGs": lambda: rest_files(100000),
        "gRPC one PNG repeated to 4,000 support examples": lambda: grpc_predict(served, {
            "support_images": _repeated_string(one, 4000),
            "support_y": np.arange(4000, dtype=np.int32) % ways,
            "query_images": np.array([one], object)}, "adapt_predict_images"),
        "gRPC without a deadline": lambda: grpc_predict(served, good, timeout=None),
        "10 cancelled gRPC calls, then a good request": cancelled_calls,
        "REST version %C2%B2 (superscript two)": lambda: dict(zip(
            ("status", "message"), served.post(f"/v1/models/{served.name}/versions/%C2%B2"
                                               ":predict", good_body(meta)))),
        "REST version %D9%A1 (Arabic-Indic one)": lambda: dict(zip(
            ("status", "message"), served.post(f"/v1/models/{served.name}/versions/%D9%A1"
                                               ":predict", good_body(meta)))),
        "REST a 5,000-digit label": lambda: dict(zip(("status", "message"), served.post(
            path, good_body(meta).replace(b'"support_y": [', b'"support_y": [' + b"9" * 5000
                                          + b", ", 1)))),
        "version folder '²', a half-written version, then a whole one": watcher,
        "the Server header": headers,
    }


def _repeated_string(data: bytes, count: int):
    """A string TensorProto that declares `count` entries and stores one."""
    import tensorflow as tf
    proto = tf.make_tensor_proto(np.array([data], object))
    proto.tensor_shape.dim[0].size = count
    return proto


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--before", type=Path, help="an earlier tfmeta source tree to serve with")
    parser.add_argument("--only", help="comma-separated attack names (substrings)")
    parser.add_argument("--rss-cap-gb", type=float, default=12)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tfmeta import export
    from tfmeta_serving.repository import versions_in
    meta = export.read_metadata(versions_in(args.models)[-1])
    work = Path(tempfile.mkdtemp(prefix="attacks-"))
    for index, name in enumerate(attacks(_NoServer(), meta)):
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        # A fresh copy of the models and a fresh server for each attack: one cannot spoil the
        # next one's figures.
        models = work / f"{index}" / args.models.name
        shutil.copytree(args.models, models)
        served = Served(models, args.before, work / f"{index}.log", args.rss_cap_gb * 1024)
        try:
            for _ in range(3):
                served.post(f"/v1/models/{served.name}:predict", good_body(meta))
            result = served.measured(attacks(served, meta)[name])
            log = (work / f"{index}.log").read_text()
            result.update(attack=name, server="before" if args.before else "now",
                          traceback_in_log="Traceback" in log,
                          server_alive=served.process.poll() is None)
            print(json.dumps(result), flush=True)
        finally:
            served.stop()


class _NoServer:
    """Stands in for a server where only the attacks' names are needed: none is called."""
    name, models, port, grpc_port = "m", Path("."), 0, 0


if __name__ == "__main__":
    main()
