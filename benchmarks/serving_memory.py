"""The server's memory against hostile and large requests: decompression bombs, then a burst.

    python benchmarks/serving_memory.py MODELS/NAME [--clients 8] [--rounds 3] [--no-bombs]
                                        [-- SERVE_FLAG ...]

MODELS/NAME is an image classifier's export (e.g. omniglot_20w1s-cpu). The script starts
`tfmeta serve --embedded` on 127.0.0.1, warms it up with 20 good requests and prints JSON lines:

- `warm`: the resident set (RSS) after the warm-up (10 float and 10 image-file requests);
- `bomb`: for a PNG that declares 20000 x 20000 RGBA (1.6 MB on the wire, 1.6 GB decoded) and a
  JPEG that declares 60000 x 60000, each over REST and gRPC: the status, the time to answer and
  the RSS after it (skipped with --no-bombs, for servers that would decode them);
- `worst`: one request at a time, each the largest of its kind that the limits let in: a body of
  16 MB of float JSON (parsed, then refused for its examples), the most float queries the export
  takes (`max_examples`), and its most files at the largest side (one 2048 x 2048 file decoded at
  a time; over gRPC, whose message carries them): the status and the RSS at its peak over the
  warm RSS, the bound that docs/guides/serving-security.md states for one request;
- `burst`: `--clients` clients at once, each sending `--rounds` large legal requests over REST,
  alternately N support images with the most float queries the export takes and with 40 files of
  2048 x 2048 (16 MB each decoded): their statuses, the RSS at its peak (sampled every 50 ms) and
  3 s after the burst, and that as a share of the warm RSS.
"""

import argparse
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bombs import jpeg_bomb, png_bomb  # noqa: E402
from serving import start_server  # noqa: E402
from rss import peak_during, rss_mb  # noqa: E402
from soak import drawing, parse  # noqa: E402
from tfmeta import export  # noqa: E402
from tfmeta_serving.repository import versions_in  # noqa: E402


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-bombs", action="store_true")
    args, serve_flags = parse(parser)

    meta = export.read_metadata(versions_in(args.models)[-1])
    ways, shape = meta["ways"], meta["example_shape"]
    rng = np.random.default_rng(0)
    labels = list(range(ways))
    floats = lambda n: rng.random((n, *shape)).round(3).tolist()  # noqa: E731
    files = lambda items: [{"b64": base64.b64encode(f).decode()} for f in items]  # noqa: E731
    good = json.dumps({"inputs": {"support_x": floats(ways), "support_y": labels,
                                  "query_x": floats(ways)}}).encode()
    drawings = [drawing(rng) for _ in range(ways)]
    good_files = json.dumps({"signature_name": "adapt_predict_images", "inputs": {
        "support_images": files(drawings), "support_y": labels,
        "query_images": files(drawings)}}).encode()
    most = meta.get("max_examples", 1000)
    queries = json.dumps({"inputs": {"support_x": floats(ways), "support_y": labels,
                                     "query_x": floats(most - ways)}}).encode()
    large = png_bomb(2048, 2048, 6)
    images = json.dumps({"signature_name": "adapt_predict_images", "inputs": {
        "support_images": files([large] * ways), "support_y": labels,
        "query_images": files([large] * 20)}}).encode()

    log = Path(f"/tmp/serving-memory-{time.time_ns()}.log")
    process, url, target = start_server(args.models, log, *serve_flags)
    predict = f"{url}/v1/models/{args.models.name}:predict"
    try:
        for body in [good] * 10 + [good_files] * 10:
            assert post(predict, body) == 200, log.read_text()
        warm = rss_mb(process.pid)
        print(json.dumps({"warm_rss_mb": round(warm)}), flush=True)
        if not args.no_bombs:
            from tfmeta_serving.client import GrpcClient, ServingClientError
            client = GrpcClient(target, args.models.name, timeout=300)
            for name, bomb in (("png 20000x20000 RGBA", png_bomb()),
                               ("jpeg 60000x60000", jpeg_bomb())):
                body = json.dumps({"signature_name": "adapt_predict_images", "inputs": {
                    "support_images": files([bomb] + [large] * (ways - 1)),
                    "support_y": labels, "query_images": files([large])}}).encode()
                start = time.perf_counter()
                status = post(predict, body)
                took = time.perf_counter() - start
                print(json.dumps({"bomb": name, "protocol": "REST", "bytes": len(bomb),
                                  "status": status, "ms": round(took * 1e3, 1),
                                  "rss_mb": round(rss_mb(process.pid))}), flush=True)
                start = time.perf_counter()
                try:
                    client.predict("adapt_predict_images", support_images=[bomb] + [large] * (
                        ways - 1), support_y=labels, query_images=[large])
                    status = "OK"
                except ServingClientError as error:
                    status = error.status
                took = time.perf_counter() - start
                print(json.dumps({"bomb": name, "protocol": "gRPC", "status": status,
                                  "ms": round(took * 1e3, 1),
                                  "rss_mb": round(rss_mb(process.pid))}), flush=True)
            client.close()
        worst(process, predict, target, args.models.name, meta, large, floats, files)
        peak, sampling, statuses = [rss_mb(process.pid)], [True], []

        def sample():
            while sampling[0]:
                peak[0] = max(peak[0], rss_mb(process.pid))
                time.sleep(0.05)

        def client_loop(i):
            for j in range(args.rounds):
                statuses.append(post(predict, queries if (i + j) % 2 else images))

        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()
        clients = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - start
        for _ in range(10):
            post(predict, good)
        time.sleep(3)
        sampling[0] = False
        after = rss_mb(process.pid)
        print(json.dumps({"burst": f"{args.clients} clients x {args.rounds} large requests",
                          "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                          "wall_s": round(wall, 1), "warm_rss_mb": round(warm),
                          "peak_rss_mb": round(peak[0]), "after_rss_mb": round(after),
                          "after_over_warm": round(after / warm, 2)}), flush=True)
    finally:
        process.terminate()
        process.wait(30)


def worst(process, predict: str, target: str, name: str, meta: dict, large: bytes, floats,
          files) -> None:
    """One request at a time, each the largest of its kind the limits let in."""
    from tfmeta_serving.client import GrpcClient, ServingClientError
    ways, most = meta["ways"], meta.get("max_examples", 1000)
    labels = list(range(ways))
    per_example = len(json.dumps(floats(1)[0]))
    sixteen = json.dumps({"inputs": {"support_x": floats(ways), "support_y": labels,
                                     "query_x": floats((15 << 20) // per_example)}}).encode()
    cases = {
        f"REST {len(sixteen) / 2**20:.1f} MB of float JSON (parsed, refused for its examples)":
            lambda: post(predict, sixteen),
        f"REST {most - ways} float queries (the most the export takes)": lambda: post(
            predict, json.dumps({"inputs": {"support_x": floats(ways), "support_y": labels,
                                            "query_x": floats(most - ways)}}).encode()),
    }

    def files_at_the_side():
        client = GrpcClient(target, name, timeout=None)
        try:
            count = min(most, (15 << 20) // len(large)) - ways
            client.predict("adapt_predict_images", support_images=[large] * ways,
                           support_y=labels, query_images=[large] * count)
            return f"OK ({count} query files)"
        except ServingClientError as error:
            return error.status
        finally:
            client.close()

    cases["gRPC the most 2048 x 2048 files a 16 MB message holds"] = files_at_the_side
    for case, work in cases.items():
        time.sleep(2)   # the idle trim
        before = rss_mb(process.pid)
        start = time.perf_counter()
        status, peak = peak_during(process.pid, work)
        print(json.dumps({"worst": case, "status": status,
                          "s": round(time.perf_counter() - start, 1),
                          "rss_before_mb": round(before), "peak_over_before_mb":
                          round(peak - before)}), flush=True)


if __name__ == "__main__":
    main()
