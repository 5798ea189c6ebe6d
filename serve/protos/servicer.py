"""What the Serve gRPC options name (``grpc_servicer_functions``): registers ``switchboard.v1.Sessions``,
generating the code first if needed."""

from __future__ import annotations

from typing import Any

from . import load

__all__ = ["add_SessionsServicer_to_server"]


def add_SessionsServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 - grpc's naming
    load()[1].add_SessionsServicer_to_server(servicer, server)
