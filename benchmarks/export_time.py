"""How long `tfmeta export` takes: a short run of PRESET, exported `--repeat` times.

    python benchmarks/export_time.py --data-dir DIR [--preset omniglot_5w1s-cpu] [--repeat 1]

Prints one JSON line per export (seconds) and the median. The first export of a process is what
`tfmeta export` costs; later ones reuse TensorFlow's caches and take less. The run is 4
meta-iterations with 8 filters: an export's cost is tracing and writing its signatures, which the
weights do not change.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tfmeta import config as config_lib, export, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--preset", default="omniglot_5w1s-cpu")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = config_lib.load(args.preset, [
            f"run_dir={Path(tmp) / 'run'}", f"data.omniglot.data_dir={args.data_dir}",
            "train.epochs=1", "train.iterations=4", "train.eval_tasks=2", "landscape.every=0",
            "model.filters=8"])
        run_dir = training.train(config, progress=False, log=lambda _: None)
        seconds = []
        for i in range(args.repeat):
            began = time.perf_counter()
            export.export_run(run_dir, Path(tmp) / "models", log=lambda _: None)
            seconds.append(time.perf_counter() - began)
            print(json.dumps({"preset": args.preset, "export": i + 1,
                              "seconds": round(seconds[-1], 2)}), flush=True)
        print(json.dumps({"preset": args.preset, "median_seconds": round(
            statistics.median(seconds), 2)}))


if __name__ == "__main__":
    main()
