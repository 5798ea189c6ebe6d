"""Riva's generated protobuf classes declare ``__module__ = "riva.proto.riva_asr_pb2"`` while the
nvidia-riva-client package ships them as ``riva.client.proto.riva_asr_pb2``. Ray pickles gRPC messages by
reference between the proxy and the replicas, so the declared module must be importable: this module
registers the aliases, and is what the Serve gRPC options name as the servicer function."""

from __future__ import annotations

import sys

import riva.client.proto as _proto
from riva.client.proto import (
    health_pb2,
    riva_asr_pb2,
    riva_asr_pb2_grpc,
    riva_audio_pb2,
    riva_common_pb2,
)

sys.modules.setdefault("riva.proto", _proto)
for _module in (health_pb2, riva_asr_pb2, riva_asr_pb2_grpc, riva_audio_pb2, riva_common_pb2):
    sys.modules.setdefault(f"riva.proto.{_module.__name__.rsplit('.', 1)[1]}", _module)

add_RivaSpeechRecognitionServicer_to_server = riva_asr_pb2_grpc.add_RivaSpeechRecognitionServicer_to_server

__all__ = ["add_RivaSpeechRecognitionServicer_to_server", "riva_asr_pb2", "riva_audio_pb2"]
