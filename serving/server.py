"""`tfmeta serve`: TensorFlow Serving when its binary is on PATH, else the embedded server.

The embedded server holds one model (the newest version under --model-base-path, picked up
without a restart when a new version directory appears) and answers REST on aiohttp and gRPC on
grpcio, with TF Serving's paths, messages and status codes, within `admission.Limits`. Both fronts
share one `admission.Admission`: a cap on running predictions and a bounded queue, beyond which a
request is refused at once; REST bodies are read first, under their own places and rate
(`bodies`); REST requests get a deadline (TF Serving's --rest_api_timeout_in_ms), gRPC ones the
client's.
"""

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

BINARY = "tensorflow_model_server"


def binary_command(base_path: Path, name: str, port: int, grpc_port: int,
                   rest_timeout_ms: int) -> Optional[list]:
    """The tensorflow_model_server command line, or None when the binary is not on PATH."""
    binary = shutil.which(BINARY)
    if binary is None:
        return None
    return [binary, f"--port={grpc_port}", f"--rest_api_port={port}", f"--model_name={name}",
            f"--model_base_path={Path(base_path).resolve()}",
            f"--rest_api_timeout_in_ms={rest_timeout_ms}"]


def newest_notice(base_path: Path) -> Optional[str]:
    """The newest export's note on whether answers depend on the rest of a request, if it has
    tfmeta's metadata."""
    from tfmeta import export
    from tfmeta_serving.repository import versions_in

    versions = versions_in(Path(base_path))
    if not versions or not (versions[-1] / export.METADATA_FILE).is_file():
        return None
    return export.queries_notice(export.read_metadata(versions[-1]))


def serve(base_path: Path, name: str, port: int = 8501, grpc_port: int = 8500,
          poll_seconds: float = 2.0, host: str = "0.0.0.0", limits=None,
          log: Callable[[str], None] = print) -> None:
    """Runs the embedded server until interrupted (SIGINT or SIGTERM), within `limits` (an
    `admission.Limits`; None: its defaults)."""
    from aiohttp import web

    from tfmeta_serving import admission as admission_lib, grpc_service, memory, rest
    from tfmeta_serving.repository import Repository

    memory.configure_allocators()  # in time only if TensorFlow has not started: the CLI sets it
    limits = limits or admission_lib.Limits()
    admission = admission_lib.Admission(limits.concurrent, limits.queued)
    memory.Trimmer(lambda: admission.admitted == 0, lambda: admission.finished).start()
    repository = Repository(name, Path(base_path), log=log, sessions=limits.concurrent + 1,
                            task_cache_bytes=limits.task_cache_bytes)
    if not repository.refresh():
        log(f"no version under {base_path} yet; waiting for one (every {poll_seconds:g} s)")
    repository.watch(poll_seconds)
    grpc_server = grpc_service.server(repository, admission, grpc_port, limits.max_body_bytes,
                                      host=host)
    grpc_server.start()
    logging.getLogger("aiohttp.server").addFilter(OneLineClientErrors())
    timeout = limits.rest_timeout_ms
    log(f"REST on http://{host}:{port}/v1/models/{name}, gRPC on {host}:{grpc_port}; "
        f"{admission.concurrent} predictions at once, {admission.queued} waiting, "
        f"{limits.receiving} bodies received at once, REST deadline "
        + (f"{timeout} ms" if timeout else "none")
        + (f", adapted tasks cached within {limits.task_cache_bytes / (1 << 20):g} MB"
           if repository.task_cache else ""))
    try:
        # run_app turns SIGINT and SIGTERM into a clean shutdown.
        web.run_app(rest.app(repository, admission, limits), host=host, port=port, print=None)
    finally:
        grpc_server.stop(grace=1)
        cache = repository.task_cache
        if cache is not None:
            log(f"task cache: {cache.hits} hits, {cache.misses} misses, {len(cache)} tasks in "
                f"{cache.bytes} bytes of {cache.max_bytes}")


class OneLineClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (an over-long request line, a malformed header) with
    a full traceback, although it is the client's error and already answered with a 400. This
    filter logs such a record as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500:
            record.msg = f"{record.getMessage()}: {error.code} {error.message}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def exec_binary(command: list) -> None:
    """Replaces this process with tensorflow_model_server."""
    os.execv(command[0], command)


def start(base_path: Path, name: Optional[str] = None, port: int = 8501, grpc_port: int = 8500,
          poll_seconds: float = 2.0, host: str = "0.0.0.0", limits=None,
          embedded_only: tuple = (), embedded: bool = False,
          log: Callable[[str], None] = print) -> None:
    """Serves `base_path` as model `name` (default: the directory's name): execs
    tensorflow_model_server when it is on PATH and `embedded` is false, else runs the embedded
    server (`serve`) within `limits` (an `admission.Limits`; None: its defaults). Raises
    ConfigError for a missing directory, or when the binary would run and `embedded_only` names
    flags that only the embedded server has."""
    from tfmeta.errors import ConfigError
    from tfmeta_serving.admission import Limits

    limits = limits or Limits()
    base = Path(base_path)
    if not base.is_dir():
        raise ConfigError(f"--model-base-path {base} is not a directory; create it with "
                          f"`tfmeta export RUN_DIR --out {base}`")
    name = name or base.resolve().name
    command = None if embedded else binary_command(base, name, port, grpc_port,
                                                   limits.rest_timeout_ms)
    if command:
        flags = (["--host"] if host != "0.0.0.0" else []) + list(embedded_only)
        if flags:
            raise ConfigError(f"{', '.join(flags)}: {BINARY} has no such flag (it listens on "
                              "every address, and has no prediction or body limits of its "
                              "own); drop it, or pass --embedded")
        notice = newest_notice(base)
        if notice:
            log(notice)
        log(f"running {' '.join(command)}")
        exec_binary(command)
    try:
        serve(base, name, port, grpc_port, poll_seconds, host, limits, log=log)
    except OSError as error:
        raise ConfigError(f"cannot serve: {error}") from None
