"""A process's resident set, now and at its peak while some work runs, read from /proc."""

import threading
import time


def rss_mb(pid: int) -> float:
    """The resident set of process `pid` in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status
                        if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0.0


def peak_during(pid: int, work, every: float = 0.02) -> tuple:
    """(work()'s result, the largest resident set of `pid` while it ran, sampled every `every`
    seconds)."""
    peak, done = [rss_mb(pid)], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return work(), peak[0]
    finally:
        done.set()
        sampler.join()
