"""User-facing errors.

Every error that a user can fix (a bad config, a missing or corrupt data file, impossible episode
sizes, a diverged run) is a `TfmetaError`. The CLI prints its message and exits with its
`exit_status`, 2, with no traceback (`--verbose` adds it); anything else is a bug and keeps its
traceback. A lost worker of a multi-worker job exits with 138 instead: a fault that a restart
mends, where 2 is one that it repeats.
"""


class TfmetaError(Exception):
    """An error whose message tells the user what to fix."""
    exit_status = 2


class ConfigError(TfmetaError):
    """A config file, key or value is wrong."""


class DataError(TfmetaError):
    """A dataset is missing, corrupt or too small for the requested episodes."""


class DivergedError(TfmetaError):
    """The meta-loss became NaN or Inf; the run stopped at the last good checkpoint."""


class LostWorkerError(TfmetaError):
    """A peer of a multi-worker job died; the job continues only when restarted as a whole.

    Its exit status, 138 (128 + SIGUSR1), is the one that Kubeflow's training operator sets aside
    for a retryable error of the user's own: with `restartPolicy: ExitCode` it restarts the job on
    138 and fails it on 2, which a restart would only repeat.
    """
    exit_status = 138


def expect(condition: bool, key: str, expected: str, value) -> None:
    """Raises ConfigError "'key' must be <expected>, got <value>" unless `condition` holds."""
    if not condition:
        raise ConfigError(f"'{key}' must be {expected}, got {value!r}")
