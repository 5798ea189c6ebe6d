"""switchboard.v1 gRPC: the ``.proto`` lives here; its Python code is generated at install
(``python -m serve.protos``, run by ``make install``) and never committed. ``load()`` regenerates it when the
``.proto`` is newer than the generated code (an install that skipped the Makefile), so imports never go stale.

Ray pickles gRPC messages by reference between the proxy and the replicas: the generated modules are
``serve.protos.sessions_pb2`` / ``sessions_pb2_grpc`` everywhere, which this layout guarantees.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["PROTO", "build", "load"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = HERE / "sessions.proto"
_OUTPUTS = (HERE / "sessions_pb2.py", HERE / "sessions_pb2_grpc.py")


def _stale() -> bool:
    return any(not p.exists() or p.stat().st_mtime < PROTO.stat().st_mtime for p in _OUTPUTS)


def build(force: bool = False) -> list[Path]:
    """Run protoc (grpcio-tools) on ``sessions.proto`` when the generated code is missing or stale."""
    if not force and not _stale():
        return []
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).resolve().parent / "_proto")  # google/protobuf/*.proto
    rel = PROTO.relative_to(ROOT).as_posix()
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}", f"--grpc_python_out={ROOT}", rel]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed on {rel} (exit {code}); is grpcio-tools installed? run `make install`")
    return list(_OUTPUTS)


def load() -> tuple[ModuleType, ModuleType]:
    """``(sessions_pb2, sessions_pb2_grpc)``, generated first if needed."""
    if _stale():
        build()
        for name in ("serve.protos.sessions_pb2", "serve.protos.sessions_pb2_grpc"):
            sys.modules.pop(name, None)
    return (
        importlib.import_module("serve.protos.sessions_pb2"),
        importlib.import_module("serve.protos.sessions_pb2_grpc"),
    )
