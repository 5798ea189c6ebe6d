"""Manual-review hold for messages the guardrail could not check. The raw text is kept — never passed on —
encrypted with AES-GCM (key from a key file, created 0600 on first use), bound to its tenant, session and
utterance as associated data so a ciphertext cannot be replayed under another record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from .session import SessionState
    from .storage import SessionStore

__all__ = ["ReviewQueue", "load_or_create_key"]


def load_or_create_key(path: Path) -> bytes:
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"review key {path} must hold exactly 32 bytes (AES-256)")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


class ReviewQueue:
    def __init__(self, store: SessionStore, key: bytes) -> None:
        self.store = store
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(tenant: str, session_id: str, utterance_id: str) -> bytes:
        return f"{tenant}/{session_id}/{utterance_id}".encode()

    async def hold(self, state: SessionState, utterance_id: str, raw_text: str, reason: str) -> None:
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(
            nonce, raw_text.encode(), self._aad(state.tenant, state.session_id, utterance_id)
        )
        self.store.add_review_item(
            session_id=state.session_id,
            tenant=state.tenant,
            utterance_id=utterance_id,
            reason=reason,
            nonce=nonce,
            ciphertext=ciphertext,
        )

    def decrypt(
        self, *, tenant: str, session_id: str, utterance_id: str, nonce: bytes, ciphertext: bytes
    ) -> str:
        """For the (authorised) reviewer tool."""
        return self._aead.decrypt(nonce, ciphertext, self._aad(tenant, session_id, utterance_id)).decode()
