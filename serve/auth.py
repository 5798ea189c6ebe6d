"""Credentials. Local mode: one development token (tenant ``demo``, role ``agent``) from
SWITCHBOARD_DEV_TOKEN or a random one written to ``<data_dir>/dev-token``, plus a supervisor token and a
customer (chat widget) token derived from it (HMAC, so every replica agrees without sharing more files).
Real tenant tokens (JWT/OIDC) replace this in production.

Roles: ``customer`` may only hold its own session (and sees only the conversation, not the analysis);
``agent`` and ``supervisor`` may also watch live sessions, answer customers and send feedback."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings
from pipelines.errors import AuthError

__all__ = ["Principal", "TokenAuthority", "ROLES", "STAFF", "resolve_dev_token", "bearer_token"]

ROLES = ("customer", "agent", "supervisor", "admin")
STAFF = frozenset({"agent", "supervisor", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: str

    @property
    def staff(self) -> bool:
        return self.role in STAFF


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
        self._tokens = {"agent": dev_token, **{r: self._derive(dev_token, r) for r in ("supervisor", "customer")}}

    @staticmethod
    def _derive(dev_token: str, role: str) -> str:
        digest = hmac.new(dev_token.encode(), f"switchboard-local-{role}".encode(), "sha256").hexdigest()
        return f"{role[:4]}.{digest[:32]}"

    def derived(self, purpose: str) -> str:
        """A local secret for ``purpose`` (e.g. the channels' keyed hashes), stable for this dev token."""
        return self._derive(self._tokens["agent"], purpose)

    def tokens(self) -> dict[str, str]:
        """The local tokens by role (``make serve`` prints them)."""
        return dict(self._tokens)

    def authenticate(self, token: str | None) -> Principal:
        if token:
            for role, known in self._tokens.items():
                if hmac.compare_digest(token.encode(), known.encode()):
                    return Principal(tenant="demo", role=role)
        raise AuthError(
            "missing or invalid token: send `Authorization: Bearer <token>` (or ?token=); "
            "the local dev token is printed by `make serve` and stored in .switchboard/dev-token"
        )
