"""Worker processes (`tfmeta.workers.start`): they die with their parent, and start quietly."""

import os
import signal
import subprocess
import sys
import time

import pytest

# Every test here trains a model or starts a process: the `trains` tier.
pytestmark = pytest.mark.trains

PARENT = (
    "import multiprocessing, os, sys, time\n"
    "from tfmeta import workers\n"
    "if __name__ == '__main__':\n"
    "    pool = multiprocessing.get_context('spawn').Pool(1, initializer=workers.start)\n"
    "    print(pool.apply(os.getpid), flush=True)\n"
    "    pool.apply_async(time.sleep, (120,))\n"
    "    time.sleep(120)\n")

# A pool whose workers are replaced after each task: the replacements are started by the pool's
# handler thread, not by the main thread, and the pool must still close.
REPLACED = (
    "import multiprocessing, os, time\n"
    "from tfmeta import workers\n"
    "if __name__ == '__main__':\n"
    "    context = multiprocessing.get_context('spawn')\n"
    "    with context.Pool(1, initializer=workers.start, maxtasksperchild=1) as pool:\n"
    "        print(len({pool.apply(os.getpid) for _ in range(3)}), flush=True)\n"
    "        time.sleep(10)  # the last replacement starts and waits for a task\n")


def test_a_worker_dies_with_its_killed_parent(tmp_path):
    """SIGKILLed, an experiment's process takes its workers with it: a worker left behind would
    keep writing a run that the restarted experiment resumes at the same time."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {k: v for k, v in os.environ.items() if k != "TFMETA_VERBOSE"}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    worker = int(parent.stdout.readline())
    os.kill(worker, 0)  # alive
    parent.kill()
    parent.wait(10)
    # A worker starts TensorFlow without its start-up chatter reaching the parent's console.
    assert "absl::InitializeLog" not in parent.stderr.read()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed parent")


def test_a_pool_of_replaced_workers_closes(tmp_path):
    """Once hung for good with PR_SET_PDEATHSIG: it kills a replacement worker when the pool's
    handler thread (its forking thread) ends, while the worker holds the task queue's lock."""
    script = tmp_path / "replaced.py"
    script.write_text(REPLACED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3"]  # three workers, one per task
