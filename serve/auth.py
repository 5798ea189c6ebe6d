"""Credentials and roles. Every credential arrives as ``Authorization: Bearer <credential>`` (``?token=`` for
browsers, ``authorization`` metadata on gRPC); ``TokenAuthority.authenticate`` turns it into a ``Principal``
(tenant, role, subject) or raises ``AuthError`` (code ``unauthorized``) saying what is wrong, never echoing it.

Three kinds of credential:

* **Dev tokens** (local mode only): one development token (tenant ``demo``, role ``agent``) from
  SWITCHBOARD_DEV_TOKEN or a random one written to ``<data_dir>/dev-token``, plus a supervisor token and a
  customer (chat widget) token derived from it (HMAC, so every replica agrees without sharing more files).
* **JWTs** with a tenant claim (``jwt_tenant_claim``, ``^[A-Za-z0-9_.-]{1,64}$``) and a role claim
  (``jwt_role_claim``: one role, or a list of which the highest known role counts); ``sub`` becomes the
  subject; ``exp`` is required; ``iss`` / ``aud`` are checked when ``jwt_issuer`` / ``jwt_audience`` are set.
  HS256 with ``jwt_secret`` (local mode: a secret derived from the dev token, so ``python -m serve.auth issue``
  mints tokens this server accepts), and RS256/ES256/... from the customer's OIDC provider when
  ``jwt_jwks_url`` is set (keys cached ``jwt_jwks_cache_s``, refetched at once on an unknown ``kid``). An HS256
  token is never checked against a JWKS key (algorithm confusion) and is refused when only a JWKS is configured;
  ``alg: none`` is always refused.
* **API keys** ``sk_<id>_<secret>`` for server-to-server webhooks, listed in ``api_keys_file`` (only their
  SHA-256; ``python -m serve.auth new-key --tenant acme`` makes one). They authenticate as role ``service``.

Local mode is neither ``jwt_secret`` nor ``jwt_jwks_url`` set: only then are the dev tokens accepted.

Roles: ``customer`` (the chat widget, a caller: holds its own conversation and sees only the conversation, not
the analysis), ``agent``, ``supervisor``, ``admin`` (staff), and ``service`` (a server calling a webhook; not
staff). What each may do is ``PERMISSIONS``; endpoints ask ``principal.may(action)`` or
``principal.require(action)`` (raises ``AuthError`` with code ``forbidden``). Authenticating at all is enough
for ``/v1/whoami``.

| action | roles | what |
| --- | --- | --- |
| `session.customer` | customer, agent, supervisor, admin | open or resume a conversation and write as the customer (websocket `/v1/sessions`, gRPC `Stream`) |
| `session.answer` | agent, supervisor, admin | write into a conversation as the agent |
| `session.watch` | agent, supervisor, admin | watch a live session, list live sessions (`/v1/sessions/{id}/watch`, gRPC `Watch`, `/v1/live`) |
| `feedback` | agent, supervisor, admin | send `suggestion.feedback` |
| `queues` | agent, supervisor, admin | read the queues, set an agent's status (`/v1/queues`, `/v1/agents/{id}/status`) |
| `models` | agent, supervisor, admin | see which model versions serve (`/v1/models`) |
| `asr` | agent, supervisor, admin | the Riva-compatible speech recognition RPCs |
| `recording.read` | agent, supervisor, admin | download a call recording (`/v1/sessions/{id}/recording`) |
| `webhook.email` | agent, supervisor, admin, service | post an inbound e-mail (`/v1/email/inbound`) |
| `webhook.voice` | agent, supervisor, admin, service | stream a phone call (Twilio Media Streams, `/v1/twilio`) |
| `admin` | admin | tenant administration |
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml

from pipelines.config import Settings
from pipelines.errors import AuthError

__all__ = [
    "Principal",
    "TokenAuthority",
    "ApiKey",
    "ApiKeys",
    "JwksCache",
    "ROLES",
    "STAFF",
    "PERMISSIONS",
    "MAX_TOKEN_BYTES",
    "resolve_dev_token",
    "bearer_token",
    "valid_tenant",
]

log = logging.getLogger(__name__)

ROLES = ("customer", "agent", "supervisor", "admin", "service")
STAFF = frozenset({"agent", "supervisor", "admin"})
#: From a list of roles the highest counts.
_RANK = {"customer": 0, "service": 1, "agent": 2, "supervisor": 3, "admin": 4}

_ALL_STAFF = frozenset(STAFF)
#: action -> the roles that may do it (the table in the module docstring; a test keeps them in sync).
PERMISSIONS: dict[str, frozenset[str]] = {
    "session.customer": frozenset({"customer"}) | _ALL_STAFF,
    "session.answer": _ALL_STAFF,
    "session.watch": _ALL_STAFF,
    "feedback": _ALL_STAFF,
    "queues": _ALL_STAFF,
    "models": _ALL_STAFF,
    "asr": _ALL_STAFF,
    "recording.read": _ALL_STAFF,
    "webhook.email": _ALL_STAFF | {"service"},
    "webhook.voice": _ALL_STAFF | {"service"},
    "admin": frozenset({"admin"}),
}

#: Longer credentials are refused before any parsing.
MAX_TOKEN_BYTES = 8192
_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9]{4,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_SUBJECT = 256
_HMAC_ALGS = ("HS256", "HS384", "HS512")
_ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_MAX_JWKS_BYTES = 1 << 20
_JWKS_COOLDOWN_S = 1.0


def valid_tenant(tenant: object) -> bool:
    """``^[A-Za-z0-9_.-]{1,64}$``, and not only dots (tenants name folders)."""
    return isinstance(tenant, str) and bool(_TENANT.fullmatch(tenant)) and tenant.strip(".") != ""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: str
    subject: str | None = None

    @property
    def staff(self) -> bool:
        return self.role in STAFF

    def may(self, action: str) -> bool:
        """Whether this role may do ``action`` (a key of ``PERMISSIONS``; an unknown action is a bug: ValueError)."""
        try:
            return self.role in PERMISSIONS[action]
        except KeyError:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(PERMISSIONS)}") from None

    def require(self, action: str) -> None:
        """Raise ``AuthError`` (code ``forbidden``) unless this role may do ``action``."""
        if not self.may(action):
            allowed = ", ".join(r for r in ROLES if r in PERMISSIONS[action])
            raise AuthError(f"the {self.role} role may not do {action} (needs {allowed})", code="forbidden")


def resolve_dev_token(settings: Settings) -> str:
    """The configured token, else the one in ``<data_dir>/dev-token``, else a new random one (saved 0600).

    A new token starts with ``dev_``: a bare URL-safe token begins with ``-`` one time in 64, and a command line
    then reads ``--token -abc…`` as an option instead of its value."""
    path = Path(settings.data_dir) / "dev-token"
    if settings.dev_token:
        token = settings.dev_token
    elif path.exists() and path.read_text().strip():
        return path.read_text().strip()
    else:
        token = f"dev_{secrets.token_urlsafe(24)}"
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


def _invalid(why: str) -> AuthError:
    return AuthError(f"invalid token: {why}")


# ---------------------------------------------------------------- JWKS (the OIDC provider's public keys)


class JwksCache:
    """The signing keys at an OIDC provider's JWKS URL, fetched with httpx and trusted for ``ttl_s``.

    An unknown ``kid`` refetches at once (at most once per ``cooldown_s``, so random kids cannot flood the
    provider). When the provider is unreachable the last keys keep serving for one more ``ttl_s``, then tokens
    are refused with an error naming the provider. Symmetric (``oct``) and encryption keys are ignored.
    Thread-safe; ``key`` blocks while it fetches (``TokenAuthority.authenticate_async`` runs it in a thread).
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        cooldown_s: float = _JWKS_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.ttl_s, self.timeout_s, self.cooldown_s = url, ttl_s, timeout_s, cooldown_s
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at = -math.inf
        self._last_error = f"cannot verify tokens: the OIDC provider's JWKS at {url} is unreachable"
        self._lock = threading.Lock()
        self.fetches = 0

    def fresh(self) -> bool:
        """Whether a known ``kid`` can be answered without fetching."""
        return self._fetched_at is not None and self._clock() - self._fetched_at < self.ttl_s

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key that verifies a token with this header, or ``AuthError`` saying why there is none."""
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise _invalid("malformed `kid` header")
        with self._lock:
            now = self._clock()
            fetched = False
            if not self.fresh() and now - self._attempted_at >= self.cooldown_s:
                self._refresh(now)
                fetched = True
            if self._fetched_at is None:  # the last fetch failed and the cooldown holds the retry back
                raise AuthError(self._last_error)
            found = self._lookup(kid)
            if found is None and not fetched and now - self._attempted_at >= self.cooldown_s:
                self._refresh(now)  # key rotation: a new kid appears before our TTL is up
                found = self._lookup(kid)
        if found is None:
            if kid is None:
                raise _invalid("no `kid` header, and the provider's JWKS has several keys")
            raise _invalid("signed with a key the OIDC provider does not list (unknown `kid`)")
        if found.algorithm_name != alg:
            raise _invalid(f"algorithm {alg} does not match its key ({found.algorithm_name})")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            keys = self._fetch()
        except AuthError as exc:
            self._last_error = exc.message
            if self._fetched_at is not None and now - self._fetched_at < 2 * self.ttl_s:
                log.warning(
                    "%s; the keys fetched %.0f s ago still serve", exc.message, now - self._fetched_at
                )
                return
            self._keys, self._fetched_at = {}, None
            raise
        self._keys, self._fetched_at = keys, now

    def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        where = f"the OIDC provider's JWKS at {self.url}"
        self.fetches += 1
        try:
            with (
                httpx.Client(timeout=self.timeout_s) as client,
                client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise AuthError(f"cannot verify tokens: {where} answered HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise AuthError(f"cannot verify tokens: {where} is larger than 1 MiB")
        except httpx.TimeoutException:
            raise AuthError(
                f"cannot verify tokens: {where} did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise AuthError(f"cannot verify tokens: {where} is unreachable ({type(exc).__name__})") from None
        try:
            document = json.loads(bytes(body))
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise AuthError(f"cannot verify tokens: {where} is not a JWKS (no `keys` list)")
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            if "alg" in entry and entry["alg"] not in _ASYMMETRIC_ALGS:
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:  # one unusable key must not take the others down
                log.warning("ignoring a JWKS key from %s: %s", self.url, type(exc).__name__)
                continue
            if key.algorithm_name in _ASYMMETRIC_ALGS:
                kid = entry.get("kid")
                keys[kid if isinstance(kid, str) else None] = key
        if not keys:
            raise AuthError(f"cannot verify tokens: {where} lists no usable signing key")
        return keys


# ---------------------------------------------------------------- API keys (server-to-server webhooks)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One line of the API key file: the key itself is never stored, only its SHA-256 (hex)."""

    id: str
    tenant: str
    role: str
    sha256: str


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """API keys ``sk_<id>_<secret>``. ``from_file`` re-reads the file when it changes (a removed line revokes
    its key at once); a file that became unreadable or invalid refuses every key until it is fixed."""

    def __init__(self, entries: Iterable[ApiKey] = ()) -> None:
        self._by_id: dict[str, ApiKey] = {}
        for entry in entries:
            if entry.id in self._by_id:
                raise ValueError(f"API key id {entry.id!r} appears twice")
            self._by_id[entry.id] = entry
        self.path: Path | None = None
        self._stamp: tuple[int, int] | None = None
        self._broken: str | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    @staticmethod
    def new(tenant: str, role: str = "service") -> tuple[str, ApiKey]:
        """A new key (show it once) and its entry for the file."""
        if not valid_tenant(tenant):
            raise ValueError(f"tenant must match ^[A-Za-z0-9_.-]{{1,64}}$ (and not be only dots): {tenant!r}")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        key = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
        return key, ApiKey(key_id, tenant, role, _hash_key(key))

    @classmethod
    def parse(cls, text: str, *, source: str = "API key file") -> ApiKeys:
        """YAML or JSON: a list of ``{id, tenant, role (default service), sha256, note (optional, free text)}``
        (or ``{keys: [...]}``)."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source} is not YAML or JSON: {exc}") from None
        if isinstance(document, dict) and "keys" in document:
            document = document["keys"]
        if document is None:
            document = []
        if not isinstance(document, list):
            raise ValueError(f"{source} must be a list of {{id, tenant, role, sha256}}")
        entries = []
        for i, item in enumerate(document):
            where = f"{source}, entry {i + 1}"
            if not isinstance(item, dict):
                raise ValueError(f"{where}: not a mapping")
            unknown = set(item) - {"id", "tenant", "role", "sha256", "note"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
            key_id, tenant, role = item.get("id"), item.get("tenant"), item.get("role", "service")
            digest = item.get("sha256")
            for name, value in (("id", key_id), ("sha256", digest)):
                if not isinstance(value, str):
                    raise ValueError(f"{where}: `{name}` must be a string (quote it)")
            assert isinstance(key_id, str) and isinstance(digest, str)
            digest = digest.lower()
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"{where}: `id` must be 4-32 letters or digits")
            if not valid_tenant(tenant):
                raise ValueError(f"{where}: `tenant` must match ^[A-Za-z0-9_.-]{{1,64}}$")
            if role not in ROLES:
                raise ValueError(f"{where}: `role` must be one of {', '.join(ROLES)}")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"{where}: `sha256` must be 64 hex digits (the key's hash, never the key)")
            entries.append(ApiKey(key_id, str(tenant), str(role), digest))
        return cls(entries)

    @classmethod
    def from_file(cls, path: Path | str) -> ApiKeys:
        path = Path(path)
        try:
            stamp = (st := path.stat()).st_mtime_ns, st.st_size  # before reading: a later write is seen
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
        keys = cls.parse(text, source=str(path))
        keys.path, keys._stamp = path, stamp
        return keys

    def _stat(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _reload_if_changed(self) -> None:
        if self.path is None:
            return
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                fresh = ApiKeys.from_file(self.path)
            except ValueError as exc:
                log.error("API keys refused until the file is fixed: %s", exc)
                self._by_id, self._broken = {}, str(self.path)
                return
            self._by_id, self._broken = fresh._by_id, None
            log.info("reloaded %d API keys from %s", len(self._by_id), self.path)

    def verify(self, key: str) -> Principal:
        """The principal of a well-formed, listed key, else ``AuthError`` (unknown id and wrong secret alike)."""
        self._reload_if_changed()
        if self._broken:
            raise AuthError(f"API keys are unavailable: the key file {self._broken} is unreadable or invalid")
        key_id, sep, secret = key[3:].partition("_") if key.startswith("sk_") else ("", "", "")
        if not sep or not secret or not _KEY_ID.fullmatch(key_id):
            raise AuthError("invalid API key: expected `sk_<id>_<secret>`")
        entry = self._by_id.get(key_id)
        digest = _hash_key(key)
        if not hmac.compare_digest(digest, entry.sha256 if entry else "0" * 64) or entry is None:
            raise AuthError(
                "invalid API key: unknown or revoked (check the key and SWITCHBOARD_API_KEYS_FILE)"
            )
        return Principal(entry.tenant, entry.role, f"key:{entry.id}")


# ---------------------------------------------------------------- the authority


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """``claims[name]``, else the dotted path ``a.b.c`` into nested objects (Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_claim(claims: dict[str, Any], name: str, value: Any) -> None:
    *parents, last = name.split(".")
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


class TokenAuthority:
    """Checks every credential (see the module docstring). ``TokenAuthority(dev_token)`` is local mode with the
    default settings; ``TokenAuthority(dev_token, settings)`` (or ``from_settings``) reads the JWT and API key
    settings. ``api_keys`` / ``jwks`` replace the ones the settings would build (tests, embedding)."""

    def __init__(
        self,
        dev_token: str | None = None,
        settings: Settings | None = None,
        *,
        api_keys: ApiKeys | None = None,
        jwks: JwksCache | None = None,
    ) -> None:
        s = settings if settings is not None else Settings.model_construct()
        dev_token = dev_token or s.dev_token
        if jwks is None and s.jwt_jwks_url:
            jwks = JwksCache(s.jwt_jwks_url, ttl_s=s.jwt_jwks_cache_s, timeout_s=s.jwt_jwks_timeout_s)
        self.local = not s.jwt_secret and jwks is None
        if self.local and not dev_token:
            raise ValueError("a development token is required in local mode")
        self._tokens: dict[str, str] = {}
        if dev_token:
            self._tokens = {
                "agent": dev_token,
                **{r: self._derive(dev_token, r) for r in ("supervisor", "customer")},
            }
        self._secret: str | None = s.jwt_secret or (self.derived("jwt") if self.local else None)
        self._jwks = jwks
        if api_keys is None and s.api_keys_file is not None:
            api_keys = ApiKeys.from_file(s.api_keys_file)
        self._api_keys = api_keys
        self._issuer, self._audience, self._leeway = s.jwt_issuer, s.jwt_audience, s.jwt_leeway_s
        self._tenant_claim, self._role_claim = s.jwt_tenant_claim, s.jwt_role_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        return cls(settings.dev_token, settings)

    @staticmethod
    def _derive(dev_token: str, role: str) -> str:
        digest = hmac.new(dev_token.encode(), f"switchboard-local-{role}".encode(), "sha256").hexdigest()
        return f"{role[:4]}.{digest[:32]}"

    def derived(self, purpose: str) -> str:
        """A local secret for ``purpose`` (e.g. the channels' keyed hashes), stable for this dev token."""
        if "agent" not in self._tokens:
            raise ValueError(
                f"no development token to derive the {purpose!r} secret from; configure it explicitly"
            )
        return self._derive(self._tokens["agent"], purpose)

    def tokens(self) -> dict[str, str]:
        """The local tokens by role (``make serve`` prints them); empty outside local mode, where they are refused."""
        return dict(self._tokens) if self.local else {}

    # ------------------------------------------------------------ minting (development, tests)

    def issue(self, tenant: str, role: str, subject: str | None = None, ttl_s: float = 3600) -> str:
        """An HS256 JWT this authority accepts (the local secret, or ``jwt_secret``), valid for ``ttl_s``."""
        if self._secret is None:
            raise ValueError(
                "this deployment verifies tokens with the OIDC provider's keys only: mint them there, or set "
                "SWITCHBOARD_JWT_SECRET to accept locally minted HS256 tokens too"
            )
        if not valid_tenant(tenant):
            raise ValueError(f"tenant must match ^[A-Za-z0-9_.-]{{1,64}}$ (and not be only dots): {tenant!r}")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}: {role!r}")
        if not ttl_s > 0:
            raise ValueError("ttl_s must be positive")
        now = int(time.time())
        claims: dict[str, Any] = {"iat": now, "exp": now + math.ceil(ttl_s), "jti": secrets.token_hex(8)}
        _set_claim(claims, self._tenant_claim, tenant)
        _set_claim(claims, self._role_claim, role)
        if subject is not None:
            claims["sub"] = subject
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = self._audience
        return jwt.encode(claims, self._secret, algorithm="HS256")

    # ------------------------------------------------------------ checking

    def authenticate(self, token: str | None) -> Principal:
        if token and len(token) > MAX_TOKEN_BYTES:
            raise _invalid(f"longer than {MAX_TOKEN_BYTES} bytes")
        if token and not token.isascii():
            raise _invalid("not ASCII")
        if token and self.local:
            for role, known in self._tokens.items():
                if hmac.compare_digest(token.encode(), known.encode()):
                    return Principal(tenant="demo", role=role)
        if token and token.startswith("sk_") and self._api_keys is not None:
            return self._api_keys.verify(token)
        if token and token.count(".") == 2:
            return self._jwt(token)
        if self.local:
            raise AuthError(
                "missing or invalid token: send `Authorization: Bearer <token>` (or ?token=); "
                "the local dev token is printed by `make serve` and stored in .switchboard/dev-token"
            )
        raise AuthError(
            "missing or invalid token: send `Authorization: Bearer <token>` (or ?token=) with a JWT from the "
            "identity provider, or an API key"
        )

    async def authenticate_async(self, token: str | None) -> Principal:
        """``authenticate`` without blocking the event loop: a JWT that may need a JWKS fetch is checked in a
        worker thread. Use this on the ingress when ``jwt_jwks_url`` is set."""
        if self._jwks is not None and token and token.count(".") == 2 and len(token) <= MAX_TOKEN_BYTES:
            return await asyncio.to_thread(self.authenticate, token)
        return self.authenticate(token)

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise _invalid("not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _invalid("unsigned (`alg: none`) tokens are refused")
        key: Any
        if alg in _HMAC_ALGS:
            if self._secret is None:
                raise _invalid(
                    f"{alg} tokens are not accepted here: tokens must be signed by the OIDC provider "
                    "(its JWKS keys)"
                )
            if alg != "HS256":
                raise _invalid(f"algorithm {alg} is not accepted (HS256 only for shared-secret tokens)")
            key = self._secret
        elif alg in _ASYMMETRIC_ALGS:
            if self._jwks is None:
                raise _invalid(
                    f"{alg} tokens need SWITCHBOARD_JWT_JWKS_URL; this deployment accepts HS256 only"
                )
            key = self._jwks.key(header.get("kid"), alg)
        else:
            raise _invalid("unsupported signing algorithm")
        required = ["exp", *(["iss"] if self._issuer else []), *(["aud"] if self._audience else [])]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": required, "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("not valid yet (`nbf` or `iat` in the future)") from None
        except jwt.InvalidAudienceError:
            if self._audience is None:
                raise _invalid(
                    "it names an audience (`aud`) but SWITCHBOARD_JWT_AUDIENCE is not set"
                ) from None
            raise _invalid("wrong audience (`aud`)") from None
        except jwt.InvalidIssuerError:
            raise _invalid("wrong issuer (`iss`)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"no `{exc.claim}` claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise _invalid("algorithm not allowed for its key") from None
        except jwt.InvalidKeyError:
            raise _invalid("its signing key is unusable (too short or the wrong type)") from None
        except jwt.InvalidIssuedAtError:
            raise _invalid("malformed `iat` claim") from None
        except jwt.exceptions.InvalidSubjectError:
            raise _invalid("malformed `sub` claim") from None
        except jwt.exceptions.InvalidJTIError:
            raise _invalid("malformed `jti` claim") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise _invalid("malformed JWT") from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = _claim(claims, self._tenant_claim)
        if tenant is None:
            raise _invalid(f"no `{self._tenant_claim}` claim (the tenant)")
        if not valid_tenant(tenant):
            raise _invalid(f"malformed `{self._tenant_claim}` claim (must match ^[A-Za-z0-9_.-]{{1,64}}$)")
        names = [self._role_claim, *(["roles"] if self._role_claim == "role" else [])]
        found = next(((n, v) for n in names if (v := _claim(claims, n)) is not None), None)
        if found is None:
            raise _invalid(f"no `{self._role_claim}` claim (the role)")
        name, value = found
        if isinstance(value, str):
            candidates = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            candidates = value
        else:
            raise _invalid(f"malformed `{name}` claim (a role or a list of roles)")
        known = [r for r in candidates if r in _RANK]
        if not known:
            raise _invalid(f"`{name}` claim holds no known role ({', '.join(ROLES)})")
        subject = claims.get("sub")
        if subject is not None and (not isinstance(subject, str) or len(subject) > _MAX_SUBJECT):
            raise _invalid("malformed `sub` claim")
        return Principal(str(tenant), max(known, key=_RANK.__getitem__), subject)


# ---------------------------------------------------------------- CLI


def _cli_issue(args: argparse.Namespace) -> int:
    settings = Settings()
    local = not settings.jwt_secret and not settings.jwt_jwks_url
    dev_token = resolve_dev_token(settings) if local else settings.dev_token
    try:
        authority = TokenAuthority(dev_token, settings, api_keys=ApiKeys())
        print(authority.issue(args.tenant, args.role, args.subject, args.ttl))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cli_new_key(args: argparse.Namespace) -> int:
    try:
        key, entry = ApiKeys.new(args.tenant, args.role)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fields = {"id": entry.id, "tenant": entry.tenant, "role": entry.role, "sha256": entry.sha256}
    if args.format == "json":
        line = json.dumps(fields)
    else:
        line = "- {" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "}"
    target = os.environ.get("SWITCHBOARD_API_KEYS_FILE") or "the file SWITCHBOARD_API_KEYS_FILE names"
    print("API key (shown only now; give it to the webhook sender as `Authorization: Bearer <key>`):")
    print(key)
    print(f"Add this entry to {target}:")
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve.auth", description="Mint development tokens and API keys for switchboard."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser(
        "issue",
        help="print an HS256 JWT this server accepts (local mode: signed with a secret derived from the dev "
        "token, SWITCHBOARD_DEV_TOKEN or <data_dir>/dev-token; else SWITCHBOARD_JWT_SECRET)",
        description="Print an HS256 JWT for a tenant and role.",
    )
    issue.add_argument("--tenant", required=True, help="tenant id (^[A-Za-z0-9_.-]{1,64}$)")
    issue.add_argument("--role", required=True, choices=ROLES)
    issue.add_argument("--subject", default=None, help="the `sub` claim (a user id)")
    issue.add_argument("--ttl", type=float, default=3600, help="seconds the token is valid (default 3600)")
    issue.set_defaults(run=_cli_issue)
    new_key = commands.add_parser(
        "new-key",
        help="make an API key for a server-to-server webhook: prints the key once and the line for the key file",
        description="Make an API key; only its SHA-256 goes into SWITCHBOARD_API_KEYS_FILE.",
    )
    new_key.add_argument("--tenant", required=True, help="tenant id (^[A-Za-z0-9_.-]{1,64}$)")
    new_key.add_argument("--role", default="service", choices=ROLES, help="default: service")
    new_key.add_argument(
        "--format", default="yaml", choices=("yaml", "json"), help="entry format (default yaml)"
    )
    new_key.set_defaults(run=_cli_new_key)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
