"""Shared by the benchmark scripts: the server options (--url, --token, --start, --port) and the server they
name — a running one, or a switchboard launched here for the run and stopped after."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Server", "add_server_args", "free_port", "server"]

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    pid: int | None  # the process whose CPU tree is the server's (only when launched here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="ws://127.0.0.1:8000/v1/sessions", help="websocket URL of a running server"
    )
    parser.add_argument(
        "--token", help="bearer token (default: $SWITCHBOARD_DEV_TOKEN or .switchboard/dev-token)"
    )
    parser.add_argument(
        "--start", action="store_true", help="launch the app locally for the run, stop it after"
    )
    parser.add_argument("--port", type=int, help="HTTP port for --start (default: a free port)")


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[Server]:
    """The server ``args`` name. With ``--start`` a local app on free ports (its Ray logs kept off the
    terminal), shut down on exit; otherwise ``--url`` with ``--token`` or the dev token."""
    if not args.start:
        token_file = REPO / ".switchboard" / "dev-token"
        token = args.token or os.environ.get("SWITCHBOARD_DEV_TOKEN")
        if not token:
            if not token_file.is_file():
                raise SystemExit(
                    f"no token: pass --token, set SWITCHBOARD_DEV_TOKEN, or run `make serve` ({token_file})"
                )
            token = token_file.read_text().strip()
        yield Server(args.url, token, None)
        return
    os.environ.setdefault("SWITCHBOARD_RAY_LOG_TO_DRIVER", "0")
    from serve.run import launch, shutdown

    t = time.perf_counter()
    running = launch(dashboard=False, port=args.port or free_port(), grpc_port=free_port())
    print(f"switchboard up in {time.perf_counter() - t:.0f}s at {running.ws_url}", file=sys.stderr)
    try:
        yield Server(running.ws_url, running.token, os.getpid())
    finally:
        shutdown()
