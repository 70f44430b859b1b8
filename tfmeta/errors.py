"""User-facing errors.

Every error that a user can fix (a bad config, a missing or corrupt data file, impossible episode
sizes, a diverged run) is a `TfmetaError`. The CLI prints its message and exits with status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class TfmetaError(Exception):
    """An error whose message tells the user what to fix."""


class ConfigError(TfmetaError):
    """A config file, key or value is wrong."""


class DataError(TfmetaError):
    """A dataset is missing, corrupt or too small for the requested episodes."""


class DivergedError(TfmetaError):
    """The meta-loss became NaN or Inf; the run stopped at the last good checkpoint."""
