"""Soak: the embedded server under a long mix of good, bad, large, hostile and bursty traffic.

    python benchmarks/soak.py MODELS/NAME [--requests 10000] [--clients 8] [--seconds 1800]
                              [--seed 0] [--kinds good,bad,...] [-- SERVE_FLAG ...]

MODELS/NAME is an export of an image classifier (`tfmeta export`, e.g. omniglot_20w1s-cpu). The
script starts `tfmeta serve --embedded` on 127.0.0.1 (extra flags after `--` go to it), warms it
up, then runs `--clients` clients until `--requests` requests are answered or `--seconds` pass.
Each client draws its next request from a fixed mix, half REST and half gRPC:

| kind | share | what |
| --- | --- | --- |
| good | 79% | an N-way 1-shot task with N queries, floats; or its PNG files (`adapt_predict_images`) |
| bad | 10% | one class in the support set, a label outside [0, N), NaN, malformed JSON |
| large | 1% | the most float queries the export takes (`max_examples` - N), or 40 files of 2048 x 2048 (legal, 670 MB decoded in all) |
| bomb | 5% | a PNG that declares 20000 x 20000 RGBA (1.6 MB), a JPEG that declares 60000 x 60000 |
| burst | 1% | 20 good requests at once from one client, beyond the server's queue |
| slow | 2% | REST only: a good request's headers, then its body a byte a second (`attacks.trickle`) |
| sparse | 2% | gRPC only: a query tensor that declares 2^28 floats and stores one (`attacks.sparse_tensor`) |

`--kinds` keeps some kinds of the mix, in their proportions (`--kinds good` measures throughput).

It prints one JSON line per (kind, protocol, status) with its count and, for good requests, the
p50 and p99 latency of the answered ones; the answers that differ from the same request's first
answer (a request is always the same, so any difference is a mixed-up answer); and the server's
resident set after the warm-up, at its peak (sampled every 50 ms) and at the end, after 3 s idle.
"""

import argparse
import base64
import collections
import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attacks import sparse_tensor, trickle  # noqa: E402
from bombs import jpeg_bomb, png_bomb  # noqa: E402
from rss import rss_mb  # noqa: E402
from serving import start_server  # noqa: E402
from tfmeta import export  # noqa: E402
from tfmeta_serving.repository import versions_in  # noqa: E402

KINDS = (("good", 0.79), ("bad", 0.10), ("large", 0.01), ("bomb", 0.05), ("burst", 0.01),
         ("slow", 0.02), ("sparse", 0.02))
# The one protocol of a kind that exists in one only.
ONLY = {"slow": "REST", "sparse": "gRPC"}
BURST = 20


def drawing(rng: np.random.Generator, size: int = 105) -> bytes:
    """A PNG of a few random strokes, dark on white as Omniglot's files are."""
    pixels = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        row, col = rng.integers(10, size - 10, 2)
        pixels[row - 2:row + 2, 10:size - 10] = 0
        pixels[10:size - 10, col - 2:col + 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue()


class Requests:
    """Every request of the mix, built once: REST bodies and gRPC inputs by (kind, variant)."""

    def __init__(self, ways: int, example_shape: list, max_examples: int, seed: int):
        rng = np.random.default_rng(seed)
        labels = np.arange(ways, dtype=np.int32)
        # Pixels to 3 decimals, as a client would send them (and 2,000 queries fit in 16 MB).
        floats = lambda n: rng.random((n, *example_shape)).round(3).astype(np.float32)  # noqa: E731
        support, query = floats(ways), floats(ways)
        files = [drawing(rng) for _ in range(ways)]
        big = png_bomb(2048, 2048, 6)
        self.grpc = {
            ("good", "floats"): (None, dict(support_x=support, support_y=labels, query_x=query)),
            ("good", "files"): ("adapt_predict_images", dict(
                support_images=files, support_y=labels, query_images=files)),
            ("bad", "one class"): (None, dict(support_x=support, support_y=0 * labels,
                                              query_x=query)),
            ("bad", "label"): (None, dict(support_x=support, support_y=labels + 1, query_x=query)),
            ("bad", "NaN"): (None, dict(support_x=support, support_y=labels,
                                        query_x=np.full_like(query, np.nan))),
            ("large", "queries"): (None, dict(support_x=support, support_y=labels,
                                              query_x=floats(max_examples - ways))),
            ("large", "files"): ("adapt_predict_images", dict(
                support_images=[big] * ways, support_y=labels, query_images=[big] * 20)),
            ("bomb", "png"): ("adapt_predict_images", dict(
                support_images=files[:-1] + [png_bomb()], support_y=labels, query_images=files)),
            ("bomb", "jpeg"): ("adapt_predict_images", dict(
                support_images=files, support_y=labels, query_images=[jpeg_bomb()])),
        }
        self.rest = {key: _json(signature, inputs) for key, (signature, inputs) in self.grpc.items()}
        self.rest[("bad", "malformed")] = b'{"inputs": {"support_x": [1, 2'
        self.rest[("slow", "trickle")] = self.rest[("good", "floats")]
        self.sparse = {"support_x": support, "support_y": labels,
                       "query_x": sparse_tensor([(1 << 28) // int(np.prod(example_shape)),
                                                 *example_shape])}
        self.grpc[("sparse", "declared 2^28 floats")] = None

    def variants(self, kind: str, protocol: str) -> list:
        keys = self.rest if protocol == "REST" else self.grpc
        return [variant for k, variant in keys if k == kind]


def _json(signature, inputs: dict) -> bytes:
    """A columnar REST body; files as {"b64": ...}, NaN as the token TF Serving accepts."""
    def value(v):
        if isinstance(v, list):
            return [{"b64": base64.b64encode(f).decode()} for f in v]
        # float32 0.123 is 0.12300000339746475 as a Python float: 6 decimals keep it short and
        # parse back to the same float32.
        return np.round(v.astype(np.float64), 6).tolist() if v.dtype.kind == "f" else v.tolist()
    payload = {"inputs": {k: value(v) for k, v in inputs.items()}}
    if signature:
        payload["signature_name"] = signature
    return json.dumps(payload).encode()


class Soak:
    def __init__(self, url: str, target: str, name: str, requests: Requests, budget: int,
                 seconds: float, kinds: tuple):
        from tfmeta_serving.client import GrpcClient
        self.url = f"{url}/v1/models/{name}:predict"
        self.target, self.name, self.requests = target, name, requests
        self.grpc_client = lambda: GrpcClient(target, name, timeout=60)  # noqa: E731
        self.budget, self.stop_at = budget, time.monotonic() + seconds
        names, shares = zip(*[(k, share) for k, share in KINDS if k in kinds])
        self.kinds, self.shares = names, np.asarray(shares) / sum(shares)
        self.lock = threading.Lock()
        self.sent = 0
        self.counts = collections.Counter()
        self.latency = collections.defaultdict(list)
        self.first_answer, self.wrong = {}, 0

    def take(self, n: int = 1) -> bool:
        with self.lock:
            if self.sent + n > self.budget or time.monotonic() > self.stop_at:
                return False
            self.sent += n
            return True

    def rest(self, key) -> tuple:
        request = urllib.request.Request(self.url, data=self.requests.rest[key], method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())["outputs"]["probabilities"]
        except urllib.error.HTTPError as error:
            error.read()
            return error.code, None

    def slow(self, key) -> tuple:
        host, port = self.url.split("//")[1].split("/")[0].split(":")
        status, _, _ = trickle(host, int(port), self.url.split(port, 1)[1],
                               self.requests.rest[key], seconds=120)
        return status, None

    def sparse(self) -> tuple:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.name
        for key, value in self.requests.sparse.items():
            request.inputs[key].CopyFrom(value if not isinstance(value, np.ndarray)
                                         else tf.make_tensor_proto(value))
        with grpc.insecure_channel(self.target) as channel:
            try:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                                   timeout=60)
                return "OK", None
            except grpc.RpcError as error:
                return error.code().name, None

    def grpc(self, client, key) -> tuple:
        from tfmeta_serving.client import ServingClientError
        if key[0] == "sparse":
            return self.sparse()
        signature, inputs = self.requests.grpc[key]
        try:
            return "OK", client.predict(signature, **inputs)["probabilities"].tolist()
        except ServingClientError as error:
            return error.status, None

    def one(self, client, key: tuple, protocol: str, kind: str) -> None:
        """Sends request `key` and counts its status under `kind`."""
        start = time.perf_counter()
        if protocol == "REST":
            status, answer = self.slow(key) if kind == "slow" else self.rest(key)
        else:
            status, answer = self.grpc(client, key)
        elapsed = time.perf_counter() - start
        with self.lock:
            self.counts[(kind, protocol, status)] += 1
            if answer is not None:
                self.latency[(kind, protocol)].append(elapsed)
                first = self.first_answer.setdefault((key, protocol), answer)
                if not np.allclose(first, answer, atol=1e-5):
                    self.wrong += 1

    def client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = self.grpc_client()
        while True:
            kind = str(rng.choice(self.kinds, p=self.shares))
            protocol = ONLY.get(kind, "REST" if rng.random() < 0.5 else "gRPC")
            if kind == "burst":
                if not self.take(BURST):
                    break
                threads = [threading.Thread(target=self.one, args=(
                    self.grpc_client() if protocol == "gRPC" else None, ("good", "floats"),
                    protocol, "burst")) for _ in range(BURST)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                continue
            if not self.take():
                break
            variants = self.requests.variants(kind, protocol)
            self.one(client, (kind, variants[rng.integers(len(variants))]), protocol, kind)
        client.close()


def parse(parser: argparse.ArgumentParser) -> tuple:
    """(the script's arguments, the `tfmeta serve` flags after `--`)."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="MODELS/NAME: an image classifier's export")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(k for k, _ in KINDS),
                        help="the kinds of request to send (default: all)")
    args, serve_flags = parse(parser)

    meta = export.read_metadata(versions_in(args.models)[-1])
    if not meta.get("image_format"):
        parser.error(f"{args.models} is not an image classifier's export")
    requests = Requests(meta["ways"], meta["example_shape"], meta.get("max_examples", 1000),
                        args.seed)
    log = Path(f"/tmp/soak-server-{time.time_ns()}.log")
    process, url, target = start_server(args.models, log, *serve_flags)
    kinds = tuple(args.kinds.split(","))
    if not set(kinds) <= {k for k, _ in KINDS}:
        parser.error(f"--kinds takes {', '.join(k for k, _ in KINDS)}")
    soak = Soak(url, target, args.models.name, requests, args.requests, args.seconds, kinds)
    try:
        for _ in range(20):
            soak.rest(("good", "floats"))
        warm = rss_mb(process.pid)
        peak, sampling = [warm], True

        def sample():
            while sampling:
                peak[0] = max(peak[0], rss_mb(process.pid))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        began = time.perf_counter()
        clients = [threading.Thread(target=soak.client, args=(args.seed + 1 + i,))
                   for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - began
        time.sleep(3)
        sampling = False
        end = rss_mb(process.pid)
        alive = soak.rest(("good", "floats"))[0] == 200
        for (kind, protocol, status), count in sorted(soak.counts.items(), key=str):
            line = {"kind": kind, "protocol": protocol, "status": status, "count": count}
            times = np.asarray(soak.latency.get((kind, protocol), [])) * 1e3
            if kind == "good" and status in (200, "OK") and times.size:
                line.update(p50_ms=round(float(np.percentile(times, 50)), 1),
                            p99_ms=round(float(np.percentile(times, 99)), 1))
            print(json.dumps(line))
        print(json.dumps({"requests": sum(soak.counts.values()), "clients": args.clients,
                          "wall_s": round(wall, 1), "wrong_answers": soak.wrong,
                          "rss_warm_mb": round(warm), "rss_peak_mb": round(peak[0]),
                          "rss_end_mb": round(end), "end_over_warm": round(end / warm, 3),
                          "server_alive": alive, "server_log": str(log)}))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
