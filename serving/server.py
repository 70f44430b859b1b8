"""`tfmeta serve`: TensorFlow Serving when its binary is on PATH, else the embedded server.

The embedded server holds one model (the newest version under --model-base-path, picked up
without a restart when a new version directory appears) and answers REST on aiohttp and gRPC on
grpcio, with TF Serving's paths, messages and status codes.
"""

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

BINARY = "tensorflow_model_server"


def binary_command(base_path: Path, name: str, port: int, grpc_port: int) -> Optional[list]:
    """The tensorflow_model_server command line, or None when the binary is not on PATH."""
    binary = shutil.which(BINARY)
    if binary is None:
        return None
    return [binary, f"--port={grpc_port}", f"--rest_api_port={port}", f"--model_name={name}",
            f"--model_base_path={Path(base_path).resolve()}"]


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
          max_body_bytes: int = 16 << 20, poll_seconds: float = 2.0, host: str = "0.0.0.0",
          log: Callable[[str], None] = print) -> None:
    """Runs the embedded server until interrupted (SIGINT or SIGTERM)."""
    from aiohttp import web

    from tfmeta_serving import grpc_service, rest
    from tfmeta_serving.repository import Repository

    repository = Repository(name, Path(base_path), log=log)
    if not repository.refresh():
        log(f"no version under {base_path} yet; waiting for one (every {poll_seconds:g} s)")
    repository.watch(poll_seconds)
    grpc_server = grpc_service.server(repository, grpc_port, max_body_bytes, host=host)
    grpc_server.start()
    logging.getLogger("aiohttp.server").addFilter(OneLineClientErrors())
    log(f"REST on http://{host}:{port}/v1/models/{name}, gRPC on {host}:{grpc_port}")
    try:
        # run_app turns SIGINT and SIGTERM into a clean shutdown.
        web.run_app(rest.app(repository, max_body_bytes), host=host, port=port, print=None)
    finally:
        grpc_server.stop(grace=1)


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
