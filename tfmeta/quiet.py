"""A quiet TensorFlow start: no start-up chatter from its native logging on a healthy machine.

Importing TensorFlow and enumerating devices print, from C++ before absl's logging is set up, a
banner ("All log messages before absl::InitializeLog() ..."), info lines (oneDNN, CPU features, "Could
not find cuda drivers") and, on a machine without a GPU driver, an error-level "failed call to cuInit:
... (303)". `TF_CPP_MIN_LOG_LEVEL` does not reach them. `start()` runs the import and the device
enumeration with file descriptor 2 pointed at a temporary file, then replays every line except
those: other warnings and errors still reach the user, and the devices are enumerated as usual,
so a GPU is still found. `TFMETA_VERBOSE=1` (or `tfmeta --verbose`) keeps TensorFlow's full logging.
"""

import os
import re
import sys
import tempfile

VERBOSE = "TFMETA_VERBOSE"

# Start-up lines that say nothing is wrong. Info-level lines are below TF_CPP_MIN_LOG_LEVEL=2,
# which tfmeta sets; the cuInit error only says that this machine has no CUDA driver.
BENIGN = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r")")


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
