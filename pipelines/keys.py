"""Envelope encryption at rest with a data key per tenant.

* A **master key** (key-encryption key, KEK; 32 bytes in a file, 0600) never encrypts data. It wraps the
  tenants' data keys. ``master_key_file`` is the active one; ``old_master_key_files`` may still unwrap keys
  wrapped before a master-key rotation.
* A **data key** (DEK) per tenant and version encrypts that tenant's transcripts, event payloads and call
  recordings with AES-256-GCM. It is stored only wrapped (AES-GCM under the KEK, the tenant and version as
  associated data) in the ``tenant_keys`` table, and cached unwrapped in memory.
* Associated data binds every ciphertext to its place (tenant, session, row): a value copied to another
  tenant's row, or another session, fails to decrypt instead of being shown there.

Rotation without downtime:

* ``python -m pipelines.keys rotate --tenant T``: a new data-key version. New writes use it as soon as each
  process's cache (``ACTIVE_TTL_S``) expires; older versions stay for reading what they encrypted.
* Master key: put the new key file first (``SWITCHBOARD_MASTER_KEY_FILE``) and the old one in
  ``SWITCHBOARD_OLD_MASTER_KEY_FILES``, roll the replicas, run ``python -m pipelines.keys rewrap`` (every data
  key wrapped again under the new master key; no data is touched), then drop the old file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, DateTime, Integer, String, Table, Text, UniqueConstraint, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .review import load_or_create_key
from .storage import metadata

__all__ = ["KeyRing", "KeyError_", "tenant_keys", "PREFIX", "encrypted_store"]

log = logging.getLogger("switchboard.keys")

PREFIX = "enc1:"  # a sealed text: enc1:<version>:<base64(nonce + ciphertext)>
ACTIVE_TTL_S = 30.0  # how long a process keeps using a tenant's active version before re-reading it

tenant_keys = Table(
    "tenant_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kek_id", String(16), nullable=False),
    Column("wrapped", Text, nullable=False),  # base64(nonce + AES-GCM(KEK, DEK))
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "version", name="uq_tenant_keys_version"),
)


class KeyError_(RuntimeError):  # noqa: N801 - not the builtin KeyError
    """A data key that cannot be found or unwrapped, or a ciphertext that does not verify."""


def kek_id(key: bytes) -> str:
    return hashlib.sha256(b"switchboard-kek\x00" + key).hexdigest()[:16]


def _wrap_aad(tenant: str, version: int) -> bytes:
    return f"switchboard-dek/{tenant}/{version}".encode()


class KeyRing:
    """Per-tenant data keys over a SQLAlchemy engine. Thread-safe; every call is synchronous (the store
    calls it from its writer thread and its readers)."""

    def __init__(self, engine: Engine, master_keys: list[bytes]) -> None:
        if not master_keys or any(len(k) != 32 for k in master_keys):
            raise ValueError("master keys must be 32 bytes each (AES-256); the first one is active")
        self.engine = engine
        self._keks = {kek_id(k): AESGCM(k) for k in master_keys}
        self.active_kek = kek_id(master_keys[0])
        self._deks: dict[tuple[str, int], AESGCM] = {}
        self._active: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._schema = False

    @classmethod
    def from_settings(cls, settings: Any, engine: Engine) -> KeyRing:
        keys = [load_or_create_key(Path(settings.resolved_master_key_file))]  # created on first use (local)
        for name in filter(None, (x.strip() for x in (settings.old_master_key_files or "").split(","))):
            if not Path(name).is_file():
                raise KeyError_(f"old master key file {name} not found (SWITCHBOARD_OLD_MASTER_KEY_FILES)")
            keys.append(Path(name).read_bytes())
        return cls(engine, keys)

    def _ensure_schema(self) -> None:
        if not self._schema:
            tenant_keys.create(self.engine, checkfirst=True)
            self._schema = True

    # ------------------------------------------------------------ data keys

    def _unwrap(self, tenant: str, version: int, kek: str, wrapped: str) -> AESGCM:
        aead = self._keks.get(kek)
        if aead is None:
            raise KeyError_(
                f"data key {tenant}/v{version} is wrapped by master key {kek}, which is not configured; "
                "add its file to SWITCHBOARD_OLD_MASTER_KEY_FILES"
            )
        blob = base64.b64decode(wrapped)
        try:
            return AESGCM(aead.decrypt(blob[:12], blob[12:], _wrap_aad(tenant, version)))
        except InvalidTag:
            raise KeyError_(f"data key {tenant}/v{version} does not unwrap: wrong master key or tampered") from None

    def _load(self, tenant: str, version: int | None) -> tuple[int, AESGCM] | None:
        self._ensure_schema()
        t = tenant_keys.c
        query = select(t.version, t.kek_id, t.wrapped).where(t.tenant == tenant)
        query = query.where(t.version == version) if version is not None else query.order_by(t.version.desc())
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        if row is None:
            return None
        return row.version, self._unwrap(tenant, row.version, row.kek_id, row.wrapped)

    def _create(self, tenant: str, version: int) -> None:
        """Store a new wrapped data key; a concurrent creator of the same version wins and ours is dropped."""
        dek, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
        wrapped = nonce + self._keks[self.active_kek].encrypt(nonce, dek, _wrap_aad(tenant, version))
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    tenant_keys.insert(),
                    dict(
                        tenant=tenant,
                        version=version,
                        kek_id=self.active_kek,
                        wrapped=base64.b64encode(wrapped).decode(),
                        created_at=datetime.now(UTC),
                    ),
                )
        except IntegrityError:
            pass

    def active(self, tenant: str) -> tuple[int, AESGCM]:
        """The tenant's current data key (created on first use)."""
        now = time.monotonic()
        with self._lock:
            cached = self._active.get(tenant)
            if cached is not None and now - cached[1] < ACTIVE_TTL_S:
                return cached[0], self._deks[(tenant, cached[0])]
        found = self._load(tenant, None)
        if found is None:
            self._create(tenant, 1)
            found = self._load(tenant, None)
            assert found is not None
        version, aead = found
        with self._lock:
            self._deks[(tenant, version)] = aead
            self._active[tenant] = (version, now)
        return version, aead

    def key(self, tenant: str, version: int) -> AESGCM:
        with self._lock:
            aead = self._deks.get((tenant, version))
        if aead is not None:
            return aead
        found = self._load(tenant, version)
        if found is None:
            raise KeyError_(f"no data key {tenant}/v{version}")
        with self._lock:
            self._deks[(tenant, version)] = found[1]
        return found[1]

    def rotate(self, tenant: str) -> int:
        """A new data-key version for the tenant; returns it."""
        current = self._load(tenant, None)
        version = (current[0] if current else 0) + 1
        self._create(tenant, version)
        with self._lock:
            self._active.pop(tenant, None)
        return version

    def rewrap(self) -> int:
        """Wrap every data key again under the active master key; returns how many were rewrapped."""
        self._ensure_schema()
        t = tenant_keys.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.id, t.tenant, t.version, t.kek_id, t.wrapped)).all()
        moved = 0
        for row in rows:
            if row.kek_id == self.active_kek:
                continue
            aead = self._keks.get(row.kek_id)
            if aead is None:
                raise KeyError_(f"data key {row.tenant}/v{row.version} needs master key {row.kek_id}")
            blob = base64.b64decode(row.wrapped)
            dek = aead.decrypt(blob[:12], blob[12:], _wrap_aad(row.tenant, row.version))
            nonce = os.urandom(12)
            wrapped = nonce + self._keks[self.active_kek].encrypt(nonce, dek, _wrap_aad(row.tenant, row.version))
            with self.engine.begin() as conn:
                conn.execute(
                    update(tenant_keys)
                    .where(t.id == row.id, t.kek_id == row.kek_id)
                    .values(kek_id=self.active_kek, wrapped=base64.b64encode(wrapped).decode())
                )
            moved += 1
        return moved

    # ------------------------------------------------------------ sealing values

    def seal(self, tenant: str, plaintext: bytes, aad: bytes) -> str:
        version, aead = self.active(tenant)
        nonce = os.urandom(12)
        blob = nonce + aead.encrypt(nonce, plaintext, _aad(tenant, aad))
        return f"{PREFIX}{version}:{base64.b64encode(blob).decode()}"

    def open(self, tenant: str, token: str, aad: bytes) -> bytes:
        if not token.startswith(PREFIX):
            raise KeyError_("not a sealed value")
        version_s, _, b64 = token[len(PREFIX) :].partition(":")
        blob = base64.b64decode(b64)
        try:
            return self.key(tenant, int(version_s)).decrypt(blob[:12], blob[12:], _aad(tenant, aad))
        except (InvalidTag, ValueError):
            raise KeyError_("a sealed value does not verify here (another tenant's or session's row?)") from None

    def seal_text(self, tenant: str, text: str, aad: bytes) -> str:
        return self.seal(tenant, text.encode(), aad)

    def open_text(self, tenant: str, token: str, aad: bytes) -> str:
        """A sealed text back; a value stored before encryption was turned on is returned as it is."""
        return self.open(tenant, token, aad).decode() if token.startswith(PREFIX) else token


def encrypted_store(settings: Any, **kw: Any) -> Any:
    """The session store of ``settings`` with transcripts and events sealed by tenant data keys."""
    from .storage import SessionStore

    store = SessionStore(settings.sqlalchemy_url, **kw)
    store.keyring = KeyRing.from_settings(settings, store.engine)
    return store


def _aad(tenant: str, aad: bytes) -> bytes:
    return f"{tenant}/".encode() + aad


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    from .config import Settings
    from .storage import SessionStore

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.keys",
        description="Per-tenant data keys (envelope encryption of transcripts, events and recordings).",
        epilog="Settings: SWITCHBOARD_DATABASE_URL, SWITCHBOARD_MASTER_KEY_FILE, SWITCHBOARD_OLD_MASTER_KEY_FILES.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_rotate = sub.add_parser("rotate", help="start a new data-key version for a tenant (old data stays readable)")
    p_rotate.add_argument("--tenant", required=True)
    sub.add_parser("rewrap", help="wrap every data key again under the active master key")
    p_status = sub.add_parser("status", help="data-key versions per tenant and the master key wrapping them")
    p_status.add_argument("--tenant")
    args = parser.parse_args(argv)

    settings = Settings()
    store = SessionStore(settings.sqlalchemy_url)
    try:
        store.create_schema()
        ring = KeyRing.from_settings(settings, store.engine)
        if args.command == "rotate":
            print(f"{args.tenant}: data key v{ring.rotate(args.tenant)} is active (old versions kept for reading)")
        elif args.command == "rewrap":
            print(f"rewrapped {ring.rewrap()} data key(s) under master key {ring.active_kek}")
        else:
            t = tenant_keys.c
            query = select(t.tenant, t.version, t.kek_id, t.created_at).order_by(t.tenant, t.version)
            if args.tenant:
                query = query.where(t.tenant == args.tenant)
            with store.engine.connect() as conn:
                for row in conn.execute(query):
                    print(f"{row.tenant}\tv{row.version}\tmaster {row.kek_id}\t{row.created_at:%Y-%m-%d %H:%M}")
    except KeyError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.engine.dispose()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
