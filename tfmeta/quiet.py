"""A quiet TensorFlow start: no start-up chatter from its native logging on a healthy machine.

Importing TensorFlow and enumerating devices print, from C++ before absl's logging is set up, a
banner ("All log messages before absl::InitializeLog() ..."), info lines (oneDNN, CPU features, "Could
not find cuda drivers") and, on a machine without a GPU driver, an error-level "failed call to cuInit:
... (303)". `TF_CPP_MIN_LOG_LEVEL` does not reach them. `start()` runs the import and the device
enumeration with file descriptor 2 pointed at a temporary file, then replays every line except
those: other warnings and errors still reach the user, and the devices are enumerated as usual,
so a GPU is still found. `TFMETA_VERBOSE=1` (or `tfmeta --verbose`) keeps TensorFlow's full logging.

`held` does the same while a block runs, for lines that only repeat what an error says: when a peer
of a multi-worker job dies, TensorFlow's collectives log its abort from C++ (`COLLECTIVE_ABORT`)
before the error reaches Python, where it becomes one `LostWorkerError` line.
"""

import contextlib
import os
import re
import sys
import tempfile
import threading

VERBOSE = "TFMETA_VERBOSE"

# Start-up lines that say nothing is wrong. Info-level lines are below TF_CPP_MIN_LOG_LEVEL=2,
# which tfmeta sets; the cuInit error only says that this machine has no CUDA driver.
BENIGN = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r")")

# What a surviving worker's collectives log, from C++, when a peer of the job dies.
COLLECTIVE_ABORT = re.compile(
    r"^(E\d{4} [\d:.]+ +\d+ (ring_alg|base_collective_executor|collective_\w+)\.cc:\d+\] "
    r"|Additional GRPC error information from remote target "
    r"|:UNKNOWN:Error received from peer)")

# The start of a record of TensorFlow's native log ("E1202 07:58:46.123456  2286 file.cc:12] "); a
# line without it continues the record before it (a status message of several lines).
RECORD = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ ")


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0")


def start() -> None:
    """Imports TensorFlow and enumerates its devices, quietly unless TFMETA_VERBOSE is set."""
    if verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
        import tensorflow as tf
        tf.config.list_physical_devices()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if not BENIGN.match(line):
                    print(line, file=sys.stderr)


@contextlib.contextmanager
def held(pattern: re.Pattern, dropped_on: type = ()):
    """Holds back the lines of TensorFlow's native log (file descriptor 2) that match `pattern`
    while the block runs, with the lines that continue them; every other line passes at once. The held lines are written at the end,
    unless the block raised one of `dropped_on` (whose message says it all) and TFMETA_VERBOSE is
    unset. Python's own `sys.stderr` (progress bars, messages) keeps writing to the terminal."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(terminal), "w", buffering=1, errors="replace")
    kept = []

    def route():
        holding = False
        with open(reader, "rb") as lines:
            for line in lines:
                text = line.decode(errors="replace")
                if pattern.match(text) or (holding and not RECORD.match(text)):
                    holding = True
                    kept.append(line)
                else:
                    holding = False
                    os.write(terminal, line)

    router = threading.Thread(target=route, name="native-log", daemon=True)
    router.start()
    drop = False
    try:
        yield
    except dropped_on:
        drop = True
        raise
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)  # closes the pipe's last writer: the router reads to its end
        router.join(5)
        if not drop:
            for line in kept:
                os.write(terminal, line)
        os.close(terminal)
