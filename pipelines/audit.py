"""The audit trail: an append-only, hash-chained log of who read which session, transcript or recording, of
every admin change and of every retention action (purge, legal hold, erasure).

Schema (its own ``MetaData``; same database as the session store):

* ``audit_log``: ``id``, ``tenant``, ``seq`` (1, 2, ... per tenant; unique with the tenant), ``at`` (UTC),
  ``actor`` (a subject or ``role@tenant``, never PII), ``action`` (one of :data:`ACTIONS`), ``target`` (a
  session id, ``customer:<id>``, a setting name...), ``detail`` (JSON of counts and ids, never content),
  ``prev_hash``, ``hash``.
* ``audit_heads``: one row per tenant, the chain's last ``seq`` and ``hash``.

**One chain per tenant.** ``hash = sha256(canonical JSON of (tenant, seq, at, actor, action, target, detail,
prev_hash))``; the first row of a tenant links to :data:`GENESIS`. Per-tenant chains let one tenant's trail be
exported and verified on its own, and let two tenants append without waiting on each other.

**Appends are serialised per tenant**, so two writers (threads, replicas) cannot fork a chain: the append
transaction locks the tenant's ``audit_heads`` row (``SELECT ... FOR UPDATE`` in PostgreSQL; ``BEGIN
IMMEDIATE`` in SQLite, which takes the database's write lock), reads the head, inserts ``seq + 1`` and moves
the head. ``UNIQUE (tenant, seq)`` is the backstop: even a writer that skipped the lock could not insert a
second row with the same position. Callers that must change data and audit it atomically (retention) run their
statements inside :meth:`AuditLog.locked`.

**Append-only in the database:** triggers created by :meth:`AuditLog.create_schema` reject ``UPDATE`` and
``DELETE`` (and ``TRUNCATE`` in PostgreSQL) on ``audit_log``, and anything on ``audit_heads`` but moving a head
forward by exactly one. In production, also give the application's database role no ownership of these tables
(``GRANT SELECT, INSERT`` on ``audit_log``; ``SELECT, INSERT, UPDATE`` on ``audit_heads``), so it cannot drop
the triggers. Someone who can (the table owner, a superuser) can still rewrite rows: :meth:`AuditLog.verify`
then finds the first row whose hash, link or position is wrong. Rewriting a whole chain tail consistently is
only caught against a hash kept elsewhere: ``python -m pipelines.audit heads > anchor.json`` now, ``verify
--anchor anchor.json`` later.

CLI::

    python -m pipelines.audit verify [--tenant T] [--anchor FILE] [--database-url URL]   # exit 1: tampered
    python -m pipelines.audit show --tenant T [--limit N]
    python -m pipelines.audit heads [--tenant T]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .errors import SwitchboardError

__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditWriter",
    "Break",
    "VerifyResult",
    "actor_for",
    "engine_for",
    "entry_hash",
]

log = logging.getLogger("switchboard.audit")

#: ``prev_hash`` of each tenant's first row.
GENESIS = "0" * 64

#: The audit vocabulary: every action recorded, and what it means. Add a line here for a new one.
ACTIONS: dict[str, str] = {
    "session.read": "a stored session (its metadata or state) was read",
    "session.watch": "staff followed a live session (snapshot, then its events)",
    "transcript.read": "a stored transcript / event history was read (e.g. the replay of an ended session)",
    "recording.read": "a call recording was decrypted and sent",
    "analytics.read": "a session's post-call analytics were read",
    "review.read": "a message held for manual review was decrypted",
    "admin.config": "a setting was changed (target: the setting's name)",
    "admin.agent_status": "an agent's status was set (target: the agent id)",
    "admin.role": "a role or token was granted or revoked",
    "audit.read": "the audit trail itself was read",
    "retention.policy": "a tenant's retention period was set",
    "retention.purge": "sessions past their tenant's retention were deleted (counts only)",
    "retention.hold": "a legal hold was placed",
    "retention.release": "a legal hold was released",
    "retention.erase": "one customer's sessions and data were deleted on request (counts only)",
    "retention.erase_refused": "a deletion request was refused because a legal hold covers the data",
}

_ACTOR = re.compile(r"^[\w.@:/+|-]{1,128}$")
_MAX_TEXT = 256  # longest string inside ``detail``: ids and names, never content


class AuditError(SwitchboardError):
    """The audit trail could not be written (or was given a bad entry). Reads of stored data should be refused
    while it cannot be written."""

    code = "audit_unavailable"


def actor_for(principal: Any) -> str:
    """The actor string for an authenticated principal: its token subject when it has one, else ``role@tenant``.
    A subject that looks like an e-mail address (or has characters an actor may not) is stored as
    ``sub-sha256:<40 hex>`` of ``tenant/subject``: an auditor who knows the subject can find its entries, a reader
    of the trail learns no address."""
    subject = getattr(principal, "subject", None)
    if not subject:
        return f"{principal.role}@{principal.tenant}"
    if "@" not in subject and _ACTOR.match(subject):
        return subject
    return "sub-sha256:" + hashlib.sha256(f"{principal.tenant}/{subject}".encode()).hexdigest()[:40]


def engine_for(url: str) -> Engine:
    """An engine like the session store's (SQLite: WAL, 30 s busy timeout, usable from threads)."""
    from .storage import make_engine

    return make_engine(url)


# ---------------------------------------------------------------- schema

metadata = MetaData()

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("tenant", "seq", name="uq_audit_log_tenant_seq"),
    Index("ix_audit_log_tenant_target", "tenant", "target"),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

_PG_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$""",
    """CREATE OR REPLACE FUNCTION audit_heads_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.tenant = OLD.tenant AND NEW.seq = OLD.seq + 1 THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit_heads only move forward by one: % rejected', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$""",
]
_PG_TRIGGER_DEFS = {
    (
        "audit_log",
        "audit_log_no_change",
    ): "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    (
        "audit_log",
        "audit_log_no_truncate",
    ): "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    ("audit_heads", "audit_heads_forward"): "CREATE TRIGGER audit_heads_forward BEFORE UPDATE OR DELETE ON "
    "audit_heads FOR EACH ROW EXECUTE FUNCTION audit_heads_forward_only()",
    ("audit_heads", "audit_heads_no_truncate"): "CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON "
    "audit_heads FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_forward_only()",
}
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE rejected'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE rejected'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_heads_forward BEFORE UPDATE ON audit_heads "
    "WHEN NEW.tenant <> OLD.tenant OR NEW.seq <> OLD.seq + 1 "
    "BEGIN SELECT RAISE(ABORT, 'audit_heads only move forward by one: UPDATE rejected'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_heads_no_delete BEFORE DELETE ON audit_heads "
    "BEGIN SELECT RAISE(ABORT, 'audit_heads only move forward by one: DELETE rejected'); END",
]
_SCHEMA_LOCK = 0x5B_A0D17  # pg_advisory_xact_lock key: replicas starting together create the schema once


# ---------------------------------------------------------------- hashing


def _utc(at: datetime) -> datetime:
    """Stored timestamps come back naive from SQLite (they were written as UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(
    *,
    tenant: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    detail: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """sha256 (hex) of one row's canonical JSON (sorted keys, no spaces, UTC time with microseconds)."""
    body = {
        "v": 1,
        "tenant": tenant,
        "seq": int(seq),
        "at": _utc(at).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "target": target,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _check_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Details are small JSON of counts, flags and ids (strings up to 256 characters), never content."""

    def ok(value: Any, depth: int) -> bool:
        if value is None or isinstance(value, bool | int):
            return True
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, str):
            return len(value) <= _MAX_TEXT
        if depth >= 3:
            return False
        if isinstance(value, list | tuple):
            return len(value) <= 1000 and all(ok(v, depth + 1) for v in value)
        if isinstance(value, Mapping):
            return all(isinstance(k, str) and len(k) <= 64 and ok(v, depth + 1) for k, v in value.items())
        return False

    if not ok(detail, 0):
        raise AuditError(
            "audit detail must be small JSON (numbers, flags, ids up to 256 characters; 3 levels at most)"
        )
    return json.loads(_canonical(detail))  # exactly what is hashed is what is stored (tuples become lists)


# ---------------------------------------------------------------- entries and results


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int | None
    tenant: str
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "seq": self.seq,
            "at": self.at.isoformat(timespec="microseconds"),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def _from_row(cls, row: Any) -> AuditEntry:
        detail = row.detail if isinstance(row.detail, dict) else json.loads(row.detail)
        return cls(
            row.id,
            row.tenant,
            int(row.seq),
            _utc(row.at),
            row.actor,
            row.action,
            row.target,
            detail,
            row.prev_hash,
            row.hash,
        )


@dataclass(frozen=True, slots=True)
class Break:
    """The first row of a tenant's chain that does not verify, and why."""

    tenant: str
    seq: int | None
    id: int | None
    reason: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "chain"
        return (
            f"tenant {self.tenant}: {where}"
            + (f" (id {self.id})" if self.id is not None else "")
            + f": {self.reason}"
        )


@dataclass(slots=True)
class VerifyResult:
    ok: bool = True
    rows_checked: int = 0
    tenants: dict[str, int] = field(default_factory=dict)  # rows checked per tenant
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # last verified (seq, hash) per tenant
    broken: list[Break] = field(default_factory=list)  # at most one per tenant: its first broken row

    @property
    def first(self) -> Break | None:
        return self.broken[0] if self.broken else None

    def _fail(self, brk: Break) -> None:
        self.ok = False
        self.broken.append(brk)


# ---------------------------------------------------------------- the log


class AuditWriter:
    """Appends to one tenant's chain inside a transaction that holds its lock (see :meth:`AuditLog.locked`).
    ``conn`` is that transaction: statements run on it commit (or roll back) together with the entries."""

    def __init__(self, log_: AuditLog, conn: Connection, tenant: str, seq: int, head: str) -> None:
        self._log, self.conn, self.tenant, self._seq, self._head = log_, conn, tenant, seq, head
        self.entries: list[AuditEntry] = []

    def append(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}; add it to pipelines.audit.ACTIONS")
        if not _ACTOR.match(actor or ""):
            raise AuditError(
                "the actor must be a subject or role@tenant (1-128 of letters, digits, . @ : / + | - _)"
            )
        if not target or len(target) > 256:
            raise AuditError("the audit target must be 1-256 characters")
        clean = _check_detail(detail or {})
        at = datetime.now(UTC)
        seq = self._seq + 1
        digest = entry_hash(
            tenant=self.tenant,
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            target=target,
            detail=clean,
            prev_hash=self._head,
        )
        row_id = self.conn.execute(
            audit_log.insert().returning(audit_log.c.id),
            dict(
                tenant=self.tenant,
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                target=target,
                detail=clean,
                prev_hash=self._head,
                hash=digest,
            ),
        ).scalar_one()
        moved = self.conn.execute(
            update(audit_heads)
            .where(audit_heads.c.tenant == self.tenant, audit_heads.c.seq == self._seq)
            .values(seq=seq, hash=digest)
        )
        if moved.rowcount != 1:  # the lock makes this impossible; never write a fork silently
            raise AuditError(f"audit head of tenant {self.tenant} moved under a held lock")
        entry = AuditEntry(row_id, self.tenant, seq, at, actor, action, target, clean, self._head, digest)
        self._seq, self._head = seq, digest
        self.entries.append(entry)
        return entry


class AuditLog:
    """The append-only, per-tenant hash-chained audit trail (SQLite or PostgreSQL).

    ``AuditLog(store.engine)`` shares the session store's engine; ``AuditLog(url)`` makes its own.
    """

    def __init__(self, engine_or_url: Engine | str) -> None:
        if isinstance(engine_or_url, str):
            self.engine = engine_for(engine_or_url)
            self._owns_engine = True
        else:
            self.engine = engine_or_url
            self._owns_engine = False
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"the audit log supports SQLite and PostgreSQL, not {self.dialect}")
        self._schema_ready = False

    # ------------------------------------------------------------ schema and transactions

    def create_schema(self) -> None:
        """Create the tables and the append-only triggers (idempotent; safe from several replicas at once)."""
        with self.transaction() as conn:
            if self.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            metadata.create_all(conn)
            if self.dialect == "postgresql":
                # text(), not exec_driver_sql(): psycopg would take the % of RAISE for a placeholder
                for statement in _PG_TRIGGERS:
                    conn.execute(text(statement))
                for (table, name), statement in _PG_TRIGGER_DEFS.items():
                    exists = conn.execute(
                        text(
                            "SELECT 1 FROM pg_trigger WHERE tgname = :name "
                            "AND tgrelid = CAST(:table AS regclass)"
                        ),
                        {"name": name, "table": table},
                    ).first()
                    if exists is None:
                        conn.execute(text(statement))
            else:
                for statement in _SQLITE_TRIGGERS:
                    conn.exec_driver_sql(statement)
        self._schema_ready = True

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            self.create_schema()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; in SQLite it takes the write lock at once (``BEGIN IMMEDIATE``), so a
        read-then-write inside it cannot interleave with another writer."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        else:
            with self.engine.begin() as conn:
                yield conn

    def _insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> None:
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        conn.execute(dialect_insert(table).values(**values).on_conflict_do_nothing())

    @contextmanager
    def locked(self, tenant: str) -> Iterator[AuditWriter]:
        """One transaction holding ``tenant``'s chain: entries appended through the writer, and any statement run
        on ``writer.conn``, commit together; other writers of this tenant wait until it ends."""
        if not tenant or len(tenant) > 64:
            raise AuditError("the audit tenant must be 1-64 characters")
        self._ensure_schema()
        with self.transaction() as conn:
            self._insert_ignore(conn, audit_heads, {"tenant": tenant, "seq": 0, "hash": GENESIS})
            head = conn.execute(
                select(audit_heads.c.seq, audit_heads.c.hash)
                .where(audit_heads.c.tenant == tenant)
                .with_for_update()
            ).one()
            yield AuditWriter(self, conn, tenant, int(head.seq), head.hash)

    # ------------------------------------------------------------ writing

    def append(
        self, tenant: str, actor: str, action: str, target: str, detail: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Append one entry to ``tenant``'s chain (its own transaction). Raises :class:`AuditError` when the
        entry is invalid or the database cannot be written."""
        try:
            with self.locked(tenant) as writer:
                return writer.append(actor, action, target, detail)
        except SQLAlchemyError as exc:
            raise AuditError(f"the audit trail could not be written ({type(exc).__name__})") from exc

    async def record(self, tenant: str, actor: str, action: str, target: str, **detail: Any) -> AuditEntry:
        """``await audit.record("acme", "agent@acme", "recording.read", session_id, bytes=n)`` from async code."""
        return await asyncio.to_thread(self.append, tenant, actor, action, target, detail)

    async def start(self) -> None:
        """Create the schema off the event loop; if the database is down, the first append retries it."""
        try:
            await asyncio.to_thread(self.create_schema)
        except SQLAlchemyError as exc:
            log.warning(
                "audit schema not created at start (%s); the first append retries", type(exc).__name__
            )

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # ------------------------------------------------------------ reading

    def _tables(self, conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names()) & {"audit_log", "audit_heads"}

    def entries(
        self, tenant: str, *, limit: int | None = 50, newest_first: bool = True, target: str | None = None
    ) -> list[AuditEntry]:
        """``tenant``'s entries only (newest first by default), optionally for one target."""
        with self.engine.connect() as conn:
            if "audit_log" not in self._tables(conn):
                return []
            query = select(audit_log).where(audit_log.c.tenant == tenant)
            if target is not None:
                query = query.where(audit_log.c.target == target)
            query = query.order_by(audit_log.c.seq.desc() if newest_first else audit_log.c.seq)
            if limit is not None:
                query = query.limit(limit)
            return [AuditEntry._from_row(r) for r in conn.execute(query)]

    def heads(self, tenant: str | None = None) -> dict[str, tuple[int, str]]:
        """The current (seq, hash) of each tenant's chain: keep a copy elsewhere to anchor a later verify."""
        with self.engine.connect() as conn:
            if "audit_heads" not in self._tables(conn):
                return {}
            query = select(audit_heads).order_by(audit_heads.c.tenant)
            if tenant is not None:
                query = query.where(audit_heads.c.tenant == tenant)
            return {r.tenant: (int(r.seq), r.hash) for r in conn.execute(query)}

    def verify(
        self, tenant: str | None = None, *, anchor: Mapping[str, tuple[int, str]] | None = None
    ) -> VerifyResult:
        """Recompute every chain (or ``tenant``'s) from its first row and report each tenant's first broken row:
        an edited row or forged hash (hash mismatch), a deleted, inserted or reordered row (position or link
        mismatch), rows removed from the end (head mismatch). ``anchor`` ({tenant: (seq, hash)}, from an earlier
        :meth:`heads`) must still be part of the chains: this also catches a consistently rewritten chain."""
        result = VerifyResult()
        with self.engine.connect() as conn:
            present = self._tables(conn)
            if "audit_log" not in present:
                if anchor:
                    for t in sorted(anchor):
                        if tenant is None or t == tenant:
                            result._fail(Break(t, None, None, "the audit_log table is missing"))
                return result
            heads: dict[str, tuple[int, str]] = {}
            if "audit_heads" in present:
                hq = select(audit_heads)
                if tenant is not None:
                    hq = hq.where(audit_heads.c.tenant == tenant)
                heads = {r.tenant: (int(r.seq), r.hash) for r in conn.execute(hq)}
            tq = select(audit_log.c.tenant).distinct()
            if tenant is not None:
                tq = tq.where(audit_log.c.tenant == tenant)
            tenants = set(conn.execute(tq).scalars()) | set(heads)
            if anchor:
                tenants |= {t for t in anchor if tenant is None or t == tenant}
            for t in sorted(tenants):
                self._verify_tenant(conn, t, heads.get(t), (anchor or {}).get(t), result)
        return result

    def _verify_tenant(
        self,
        conn: Connection,
        tenant: str,
        head: tuple[int, str] | None,
        anchor: tuple[int, str] | None,
        result: VerifyResult,
    ) -> None:
        prev, expected, rows, anchored = GENESIS, 1, 0, anchor is None
        query = (
            select(audit_log)
            .where(audit_log.c.tenant == tenant)
            .order_by(audit_log.c.seq, audit_log.c.id)
            .execution_options(yield_per=1000)
        )
        for row in conn.execute(query):
            entry = AuditEntry._from_row(row)
            rows += 1
            reason = None
            if entry.seq != expected:
                reason = (
                    f"found at position {entry.seq} where {expected} was expected "
                    "(a row was deleted, inserted or renumbered)"
                )
            elif entry.prev_hash != prev:
                reason = "does not link to the previous row (a row was deleted, inserted or reordered)"
            else:
                recomputed = entry_hash(
                    tenant=entry.tenant,
                    seq=entry.seq,
                    at=entry.at,
                    actor=entry.actor,
                    action=entry.action,
                    target=entry.target,
                    detail=entry.detail,
                    prev_hash=entry.prev_hash,
                )
                if recomputed != entry.hash:
                    reason = "its hash does not match its contents (the row was edited or its hash forged)"
            if reason is not None:
                result.rows_checked += rows
                result.tenants[tenant] = rows
                result._fail(Break(tenant, entry.seq, entry.id, reason))
                return
            if anchor is not None and entry.seq == anchor[0]:
                if entry.hash != anchor[1]:
                    result.rows_checked += rows
                    result.tenants[tenant] = rows
                    result._fail(
                        Break(tenant, entry.seq, entry.id, "differs from the anchored hash (chain rewritten)")
                    )
                    return
                anchored = True
            prev, expected = entry.hash, expected + 1
        result.rows_checked += rows
        result.tenants[tenant] = rows
        last = (expected - 1, prev)
        if head is None:
            if rows:
                result._fail(
                    Break(tenant, None, None, "the chain has rows but no head (audit_heads row removed)")
                )
                return
        elif head != last:
            result._fail(
                Break(
                    tenant,
                    None,
                    None,
                    f"the chain ends at position {last[0]} but its head is at {head[0]} "
                    "(rows removed from the end, or the head was altered)",
                )
            )
            return
        if not anchored:
            result._fail(
                Break(tenant, None, None, f"the anchored position {anchor[0]} is gone (rows removed)")
            )
            return
        result.heads[tenant] = last


# ---------------------------------------------------------------- CLI


def _load_anchor(path: str) -> dict[str, tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    return {t: (int(v["seq"]), str(v["hash"])) for t, v in raw.items()}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import getpass
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.audit",
        description="The audit trail: verify its hash chains, show a tenant's entries, print the chain heads.",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: SWITCHBOARD_DATABASE_URL, else the SQLite file in the data dir)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser(
        "verify",
        help="recompute the chains; exit 0 when intact, 1 when tampered",
        description="Recompute every tenant's hash chain (or one tenant's) and report the first broken row. "
        "Exit code 0: intact; 1: tampered.",
    )
    p_verify.add_argument("--tenant", help="verify only this tenant's chain")
    p_verify.add_argument(
        "--anchor",
        metavar="FILE",
        help="JSON from an earlier `heads`: those positions must still hold those hashes",
    )
    p_show = sub.add_parser(
        "show", help="a tenant's latest entries (newest first); the read is itself audited"
    )
    p_show.add_argument("--tenant", required=True)
    p_show.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")
    p_show.add_argument("--target", help="only entries about this target (a session id, customer:<id>...)")
    p_show.add_argument("--json", action="store_true", help="one JSON object per line")
    p_show.add_argument("--actor", help="who is reading (default: <os user>@cli)")
    p_heads = sub.add_parser(
        "heads", help="each tenant's chain head as JSON (keep it elsewhere as an anchor)"
    )
    p_heads.add_argument("--tenant")
    args = parser.parse_args(argv)

    if args.database_url is None:
        from .config import Settings

        args.database_url = Settings().sqlalchemy_url
    audit = AuditLog(args.database_url)
    try:
        if args.command == "verify":
            anchor = _load_anchor(args.anchor) if args.anchor else None
            result = audit.verify(args.tenant, anchor=anchor)
            if not result.tenants and not result.broken:
                print("no audit entries" + (f" for tenant {args.tenant}" if args.tenant else ""))
            for t, n in sorted(result.tenants.items()):
                if t in result.heads:
                    seq, digest = result.heads[t]
                    print(f"ok        tenant {t}: {n} rows, head {seq}:{digest[:16]}")
            for brk in result.broken:
                print(f"TAMPERED  {brk}")
            print(
                f"{'intact' if result.ok else 'TAMPERED'}: {result.rows_checked} rows in {len(result.tenants)} chains"
            )
            return 0 if result.ok else 1
        if args.command == "show":
            actor = args.actor or f"{getpass.getuser()}@cli"
            rows = audit.entries(args.tenant, limit=args.limit, target=args.target)
            audit.append(args.tenant, actor, "audit.read", f"tenant:{args.tenant}", {"rows": len(rows)})
            for e in rows:
                if args.json:
                    print(json.dumps(e.to_dict(), sort_keys=True))
                else:
                    print(
                        f"{e.seq:>8}  {e.at.isoformat(timespec='seconds')}  {e.actor:<24} {e.action:<22} "
                        f"{e.target}  {_canonical(e.detail)}"
                    )
            return 0
        heads = audit.heads(args.tenant)
        print(json.dumps({t: {"seq": s, "hash": h} for t, (s, h) in heads.items()}, indent=2, sort_keys=True))
        return 0
    except (SQLAlchemyError, AuditError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        audit.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
