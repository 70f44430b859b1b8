"""TCP ports: free ones of 127.0.0.1 for a multi-worker cluster on one machine or a test server, and
whether a task's "host:port" still accepts connections."""

import socket


def free_ports(count: int) -> list:
    """`count` distinct ports that were free a moment ago (all held open together while they are
    chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def accepts(address: str, timeout: float = 2.0) -> bool:
    """Whether "host:port" accepts a TCP connection within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout):
            return True
    except (OSError, ValueError):
        return False
