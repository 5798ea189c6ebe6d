"""Call recordings, encrypted at rest from the first byte.

Audio is written as it arrives, in ~1 s chunks, each sealed with AES-256-GCM (a fresh nonce per chunk, the
tenant/session/part/chunk index as associated data, so chunks cannot be reordered, dropped from the middle
or moved to another call undetected). Storage is any fsspec URL: a local folder by default, an
S3-compatible bucket in production. Each part is linked to its session in the ``recordings`` table.
"""

from __future__ import annotations

import io
import json
import os
import struct
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .review import load_or_create_key

if TYPE_CHECKING:
    from .storage import SessionStore

__all__ = ["Recorder", "RecordingStore", "RecordingError"]

MAGIC = b"SBREC1\n"
SAMPLE_RATE = 16000


class RecordingError(RuntimeError):
    pass


class RecordingStore:
    def __init__(self, url: str, key_file: Path, store: SessionStore, keyring: Any | None = None) -> None:
        """With a ``keyring`` (pipelines.keys.KeyRing) new recordings are sealed with the tenant's data key
        (its version in the part's header); ``key_file`` still opens recordings made before that."""
        self.url = url.rstrip("/")
        self.key_file = Path(key_file)
        self._legacy: AESGCM | None = None
        self.keyring = keyring
        self.store = store

    def _key(self, tenant: str, version: int | None) -> AESGCM:
        if version is None:  # sealed with the single recording key (before per-tenant keys)
            if self._legacy is None:
                self._legacy = AESGCM(load_or_create_key(self.key_file))
            return self._legacy
        if self.keyring is None:
            raise RecordingError("this recording is sealed with a tenant data key; configure the master key")
        return self.keyring.key(tenant, version)

    def _writer_key(self, tenant: str) -> tuple[int | None, AESGCM]:
        return self.keyring.active(tenant) if self.keyring is not None else (None, self._key(tenant, None))

    def _path(self, tenant: str, session_id: str, part: int) -> str:
        return f"{self.url}/{tenant}/{session_id}/part-{part:04d}.sbrec"

    def open(self, tenant: str, session_id: str, channels: int, part: int) -> Recorder:
        return Recorder(self, tenant, session_id, channels, part)

    # ------------------------------------------------------------ read back (authorised API)

    def _decrypt_part(self, uri: str, tenant: str, session_id: str, part: int) -> tuple[int, bytes]:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read()
        if not data.startswith(MAGIC):
            raise RecordingError(f"{uri} is not a switchboard recording")
        pos = len(MAGIC)
        (hlen,) = struct.unpack(">I", data[pos : pos + 4])
        header = json.loads(data[pos + 4 : pos + 4 + hlen])
        if header["tenant"] != tenant or header["session_id"] != session_id:
            raise RecordingError("recording header does not match its record")
        pos += 4 + hlen
        aead = self._key(tenant, header.get("key_version"))
        pcm, index = bytearray(), 0
        while pos < len(data):
            (clen,) = struct.unpack(">I", data[pos : pos + 4])
            nonce = data[pos + 4 : pos + 16]
            chunk = data[pos + 16 : pos + 16 + clen]
            pcm += aead.decrypt(nonce, chunk, _aad(tenant, session_id, part, index))
            pos += 16 + clen
            index += 1
        return header["channels"], bytes(pcm)

    async def read_wav(self, tenant: str, session_id: str) -> bytes | None:
        """The whole call as one WAV (parts concatenated), or None if this tenant has no such recording."""
        import asyncio

        parts = await self.store.recordings(tenant, session_id)
        if not parts:
            return None

        def _build() -> bytes:
            pcm, channels = bytearray(), 1
            for row in parts:
                channels, data = self._decrypt_part(row["uri"], tenant, session_id, row["part"])
                pcm += data
            out = io.BytesIO()
            with wave.open(out, "wb") as w:
                w.setnchannels(channels)
                w.setsampwidth(2)
                w.setframerate(SAMPLE_RATE)
                w.writeframes(bytes(pcm))
            return out.getvalue()

        return await asyncio.to_thread(_build)


def _aad(tenant: str, session_id: str, part: int, index: int) -> bytes:
    return f"{tenant}/{session_id}/{part}/{index}".encode()


class Recorder:
    """Appends decoded 16 kHz audio (one array per channel) to an encrypted recording part."""

    CHUNK_S = 1.0

    def __init__(self, owner: RecordingStore, tenant: str, session_id: str, channels: int, part: int) -> None:
        self.owner, self.tenant, self.session_id, self.channels, self.part = (
            owner,
            tenant,
            session_id,
            channels,
            part,
        )
        self.uri = owner._path(tenant, session_id, part)
        fs, path = fsspec.core.url_to_fs(self.uri)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        self._fh = fs.open(path, "wb")
        self.key_version, self._aead = owner._writer_key(tenant)
        header = json.dumps(
            {
                "tenant": tenant,
                "session_id": session_id,
                "channels": channels,
                "sample_rate": SAMPLE_RATE,
                "part": part,
                **({"key_version": self.key_version} if self.key_version is not None else {}),
            }
        ).encode()
        self._fh.write(MAGIC + struct.pack(">I", len(header)) + header)
        self._pending: list[list[np.ndarray]] = [[] for _ in range(channels)]
        self._lengths = [0] * channels
        self._index = 0
        self.samples = 0
        self.bytes_written = 0
        self.closed = False

    def write_channel(self, index: int, audio: np.ndarray) -> None:
        """Append one channel's samples; channels are interleaved as far as every channel has audio."""
        self._pending[index].append(audio)
        self._lengths[index] += audio.size
        if min(self._lengths) >= self.CHUNK_S * SAMPLE_RATE:
            self._seal()

    def _take(self, n: int) -> np.ndarray:
        columns = []
        for c in range(self.channels):
            joined = np.concatenate(self._pending[c]) if self._pending[c] else np.zeros(0, np.float32)
            take = np.zeros(n, np.float32)
            take[: min(n, joined.size)] = joined[:n]
            rest = joined[n:]
            self._pending[c] = [rest] if rest.size else []
            self._lengths[c] = rest.size
            columns.append(take)
        return np.stack(columns, axis=1)

    def _seal(self, final: bool = False) -> None:
        n = max(self._lengths) if final else min(self._lengths)
        if n == 0:
            return
        frames = self._take(n)
        self.samples += n
        pcm = (np.clip(frames, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(
            nonce, pcm, _aad(self.tenant, self.session_id, self.part, self._index)
        )
        self._fh.write(struct.pack(">I", len(sealed)) + nonce + sealed)
        self._fh.flush()
        self.bytes_written += len(sealed)
        self._index += 1

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._seal(final=True)
        self._fh.close()
        self.owner.store.add_recording(
            session_id=self.session_id,
            tenant=self.tenant,
            part=self.part,
            uri=self.uri,
            channels=self.channels,
            duration_s=round(self.samples / SAMPLE_RATE, 3),
            bytes_=self.bytes_written,
        )
