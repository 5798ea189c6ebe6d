"""Credentials. Local mode: one development token (tenant ``demo``, role ``agent``) from
SWITCHBOARD_DEV_TOKEN or a random one written to ``<data_dir>/dev-token``. Real tenant tokens (JWT/OIDC)
replace this in production."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings
from pipelines.errors import AuthError

__all__ = ["Principal", "TokenAuthority", "resolve_dev_token", "bearer_token"]


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: str


def resolve_dev_token(settings: Settings) -> str:
    """The configured token, else the one in ``<data_dir>/dev-token``, else a new random one (saved 0600)."""
    path = Path(settings.data_dir) / "dev-token"
    if settings.dev_token:
        token = settings.dev_token
    elif path.exists() and path.read_text().strip():
        return path.read_text().strip()
    else:
        token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return query_token or None


class TokenAuthority:
    def __init__(self, dev_token: str) -> None:
        if not dev_token:
            raise ValueError("a development token is required in local mode")
        self._dev = dev_token.encode()

    def authenticate(self, token: str | None) -> Principal:
        if token and hmac.compare_digest(token.encode(), self._dev):
            return Principal(tenant="demo", role="agent")
        raise AuthError(
            "missing or invalid token: send `Authorization: Bearer <token>` (or ?token=); "
            "the local dev token is printed by `make serve` and stored in .switchboard/dev-token"
        )
