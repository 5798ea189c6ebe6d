"""Retention: each tenant's data is kept for its retention period (7 years by default), then purged; legal holds
keep data past it; one customer's data is deleted on request. Every purge, hold, release, policy change and
erasure is written to the audit trail (counts and ids, never content) in the same transaction as the change.

Tables (own ``MetaData``; same database as the session store):

* ``retention_policies``: ``tenant`` -> ``days`` (set with ``policy``; wins over the YAML file).
* ``legal_holds``: ``id``, ``tenant``, ``scope`` (``session`` / ``customer`` / ``tenant``), ``target`` (a session
  id, a customer id, the tenant), ``reason``, ``set_by``, ``at``, ``released_at``, ``released_by``. A hold is
  active until released; holds are never deleted.
* ``retention_leases``: which replica runs the scheduled purge, and when it last finished.

**What is deleted.** A session is due when the later of its end (``ended_at``; its start when it never ended)
and its last utterance or event is older than the tenant's retention; a session under an active hold (on the
session, its customer or the whole tenant) is kept. Deleting a session deletes its row in ``sessions`` and every
row of any table with a ``session_id`` column (found in the database, so tables added later are covered:
utterances, events, escalations, review_items, session_analytics, channel_threads, recordings, ...), and its
recording files: each part named in ``recordings`` and anything left under the session's recordings folder.
Erasing a customer also deletes rows of any table with ``tenant`` and ``customer_id`` columns.

**Consistency.** Work goes in batches; each batch is one transaction that holds the tenant's audit-chain lock
(:meth:`pipelines.audit.AuditLog.locked`), re-selects its sessions under that lock (so a hold placed meanwhile
is respected), deletes the recording files, then the rows, and appends its audit entry. A failed batch rolls
back its rows and audit entry; a file already deleted stays deleted, and the next run finishes the batch.

CLI (``--help`` on each)::

    python -m pipelines.retention purge [--dry-run] [--tenant T]
    python -m pipelines.retention hold --tenant T --scope customer --target C --reason "case 42"
    python -m pipelines.retention release --tenant T --id N
    python -m pipelines.retention holds --tenant T [--all]
    python -m pipelines.retention erase --tenant T --customer C
    python -m pipelines.retention policy --tenant T [--days N]
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import platform
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    column,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .audit import AuditError, AuditLog, engine_for
from .errors import SwitchboardError
from .storage import metadata as store_metadata

if TYPE_CHECKING:
    from .recordings import RecordingStore

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "SCOPES",
    "EraseReport",
    "Hold",
    "LegalHoldError",
    "PurgeReport",
    "Retention",
    "RetentionPolicy",
    "TenantPurge",
]

log = logging.getLogger("switchboard.retention")

#: Seven years (7 * 365 + 2 leap days).
DEFAULT_RETENTION_DAYS = 2557
MAX_RETENTION_DAYS = 36500
SCOPES = ("session", "customer", "tenant")
SYSTEM_ACTOR = "system@retention"

_sessions = store_metadata.tables["sessions"]
_utterances = store_metadata.tables["utterances"]
_events = store_metadata.tables["events"]
_recordings = store_metadata.tables["recordings"]

metadata = MetaData()

retention_policies = Table(
    "retention_policies",
    metadata,
    Column("tenant", String(64), primary_key=True),
    Column("days", Integer, nullable=False),
    Column("set_by", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("target", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("set_by", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("released_by", String(128)),
    Index("ix_legal_holds_active", "tenant", "released_at"),
)

retention_leases = Table(
    "retention_leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(128)),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_finished_at", DateTime(timezone=True)),
)

_OWN_TABLES = {"audit_log", "audit_heads", *metadata.tables}


class LegalHoldError(SwitchboardError):
    """A deletion was refused because a legal hold covers the data (release the hold first)."""

    code = "legal_hold"

    def __init__(self, message: str, holds: list[int]) -> None:
        super().__init__(message)
        self.holds = holds


# ---------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Retention periods from configuration: a default and per-tenant overrides. A tenant's row in
    ``retention_policies`` (``python -m pipelines.retention policy``) wins over these.

    YAML::

        default_days: 2557
        tenants:
          acme: 3650
          demo: 30
    """

    default_days: int = DEFAULT_RETENTION_DAYS
    tenants: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, days in [("default_days", self.default_days), *self.tenants.items()]:
            _check_days(days, name)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RetentionPolicy:
        import yaml

        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not isinstance(raw.get("tenants", {}), dict):
            raise ValueError(f"{path}: expected `default_days: N` and `tenants: {{tenant: N}}`")
        return cls(
            default_days=int(raw.get("default_days", DEFAULT_RETENTION_DAYS)),
            tenants={str(t): int(d) for t, d in (raw.get("tenants") or {}).items()},
        )

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        """``retention_days`` with the per-tenant ``retention_days`` of the tenants file
        (``SWITCHBOARD_TENANTS_FILE``, pipelines/tenants.py) when the settings have them, else the defaults."""
        from .tenants import TenantDirectory

        default = getattr(settings, "retention_days", None) or DEFAULT_RETENTION_DAYS
        directory = TenantDirectory.load(getattr(settings, "tenants_file", None))
        return cls(default_days=default, tenants={t: directory.get(t).retention_days for t in directory.tenants})


def _check_days(days: Any, what: str = "days") -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention {what} must be a whole number of days from 1 to {MAX_RETENTION_DAYS}")
    return days


# ---------------------------------------------------------------- reports


@dataclass(slots=True)
class TenantPurge:
    tenant: str
    days: int
    cutoff: datetime
    due: int = 0  # sessions past retention and not held (when the run started)
    held: int = 0  # sessions past retention but kept by a legal hold
    sessions: int = 0  # deleted
    rows: dict[str, int] = field(default_factory=dict)  # deleted rows per table (sessions included)
    files: int = 0  # recording files deleted


@dataclass(slots=True)
class PurgeReport:
    now: datetime
    dry_run: bool
    run: str
    tenants: dict[str, TenantPurge] = field(default_factory=dict)
    stopped: bool = False  # stopped early (shutdown); the next run goes on

    @property
    def sessions(self) -> int:
        return sum(t.sessions for t in self.tenants.values())

    @property
    def due(self) -> int:
        return sum(t.due for t in self.tenants.values())

    @property
    def held(self) -> int:
        return sum(t.held for t in self.tenants.values())

    @property
    def files(self) -> int:
        return sum(t.files for t in self.tenants.values())


@dataclass(slots=True)
class EraseReport:
    tenant: str
    customer_id: str
    request: str
    sessions: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    external: dict[str, int] = field(default_factory=dict)  # items deleted by each of ``Retention.erasers``


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    tenant: str
    scope: str
    target: str
    reason: str
    set_by: str
    at: datetime
    released_at: datetime | None
    released_by: str | None

    @property
    def active(self) -> bool:
        return self.released_at is None


Progress = Callable[[str, int, int], None]  # (tenant, sessions done, sessions due)


def _utc(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _DataTables:
    """Tables found in the database: those keyed by session, and those keyed by customer."""

    by_session: list[tuple[str, Any, bool]]  # (name, lightweight table, has a tenant column)
    by_customer: list[tuple[str, Any]]
    names: frozenset[str]


# ---------------------------------------------------------------- the service


class Retention:
    """Retention policies, legal holds, the purge and customer erasure over the session store's database.

    ``Retention(store.engine, audit=audit, recordings=recording_store_or_url, policy=...)``.
    """

    def __init__(
        self,
        engine_or_url: Engine | str,
        *,
        audit: AuditLog | None = None,
        recordings: RecordingStore | str | None = None,
        policy: RetentionPolicy | None = None,
        batch_size: int = 500,
        actor: str = SYSTEM_ACTOR,
        erasers: Mapping[str, Callable[[str, str], int]] | None = None,
    ) -> None:
        if isinstance(engine_or_url, str):
            self.engine = engine_for(engine_or_url)
            self._owns_engine = True
        else:
            self.engine = engine_or_url
            self._owns_engine = False
        self.audit = audit or AuditLog(self.engine)
        url = recordings if isinstance(recordings, str) or recordings is None else recordings.url
        self.recordings_url = url.rstrip("/") if url else None
        self.policy = policy or RetentionPolicy()
        if not 1 <= batch_size <= 5000:
            raise ValueError("batch_size must be 1..5000")
        self.batch_size = batch_size
        self.actor = actor
        # Other stores holding a customer's data (e.g. the Feast online features): name -> fn(tenant, customer_id)
        # returning how many items it deleted. Called with the last batch of an erasure; must be idempotent.
        self.erasers = dict(erasers or {})
        self.holder = f"{platform.node()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._schema_ready = False

    # ------------------------------------------------------------ schema

    def create_schema(self) -> None:
        """Create the retention tables and the audit tables (idempotent)."""
        self.audit.create_schema()
        with self.audit.transaction() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(0x5B_2E7E)))
            metadata.create_all(conn)
        self._schema_ready = True

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            self.create_schema()

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def _discover(self, conn: Connection) -> _DataTables:
        insp = inspect(conn)
        names = frozenset(insp.get_table_names())
        by_session, by_customer = [], []
        for name in sorted(names - _OWN_TABLES - {"sessions"}):
            cols = {c["name"] for c in insp.get_columns(name)}
            if "session_id" in cols:
                has_tenant = "tenant" in cols
                light = table(name, column("session_id"), *([column("tenant")] if has_tenant else []))
                by_session.append((name, light, has_tenant))
            if {"tenant", "customer_id"} <= cols:
                by_customer.append((name, table(name, column("tenant"), column("customer_id"))))
        return _DataTables(by_session, by_customer, names)

    # ------------------------------------------------------------ policy

    def days_for(self, tenant: str, conn: Connection | None = None) -> int:
        """The tenant's retention in days: its ``retention_policies`` row, else the configured policy."""
        self._ensure_schema()

        def read(c: Connection) -> int:
            row = c.execute(
                select(retention_policies.c.days).where(retention_policies.c.tenant == tenant)
            ).first()
            return int(row[0]) if row else int(self.policy.tenants.get(tenant, self.policy.default_days))

        if conn is not None:
            return read(conn)
        with self.engine.connect() as c:
            return read(c)

    def set_policy(self, tenant: str, days: int, actor: str) -> int:
        """Set ``tenant``'s retention to ``days`` (audited); returns the previous effective value."""
        _check_days(days)
        self._ensure_schema()
        with self.audit.locked(tenant) as w:
            previous = self.days_for(tenant, w.conn)
            p = retention_policies.c
            changed = w.conn.execute(
                update(retention_policies)
                .where(p.tenant == tenant)
                .values(days=days, set_by=actor, at=_now())
            )
            if changed.rowcount == 0:
                w.conn.execute(
                    insert(retention_policies).values(tenant=tenant, days=days, set_by=actor, at=_now())
                )
            w.append(actor, "retention.policy", f"tenant:{tenant}", {"days": days, "previous": previous})
        return previous

    # ------------------------------------------------------------ legal holds

    def place_hold(self, tenant: str, scope: str, target: str | None, reason: str, actor: str) -> int:
        """Hold a session, a customer or the whole tenant (``target`` is then the tenant): nothing it covers is
        purged or erased until it is released. The reason stays in ``legal_holds``, not in the audit entry."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        target = tenant if scope == "tenant" else (target or "")
        if scope == "tenant" and target != tenant:
            raise ValueError("a tenant hold's target is the tenant itself")
        if not target or len(target) > 128:
            raise ValueError("a hold needs a target (a session id or customer id, up to 128 characters)")
        if not reason.strip() or len(reason) > 2000:
            raise ValueError("a hold needs a reason (up to 2000 characters)")
        self._ensure_schema()
        with self.audit.locked(tenant) as w:
            hold_id = w.conn.execute(
                insert(legal_holds)
                .values(tenant=tenant, scope=scope, target=target, reason=reason, set_by=actor, at=_now())
                .returning(legal_holds.c.id)
            ).scalar_one()
            w.append(actor, "retention.hold", f"{scope}:{target}", {"hold": hold_id, "scope": scope})
        return int(hold_id)

    def release_hold(self, tenant: str, hold_id: int, actor: str) -> Hold:
        """Release one of ``tenant``'s active holds (audited)."""
        self._ensure_schema()
        with self.audit.locked(tenant) as w:
            h = legal_holds.c
            row = w.conn.execute(
                select(legal_holds).where(h.id == hold_id, h.tenant == tenant, h.released_at.is_(None))
            ).first()
            if row is None:
                raise ValueError(f"tenant {tenant} has no active legal hold {hold_id}")
            now = _now()
            w.conn.execute(
                update(legal_holds).where(h.id == hold_id).values(released_at=now, released_by=actor)
            )
            w.append(
                actor, "retention.release", f"{row.scope}:{row.target}", {"hold": hold_id, "scope": row.scope}
            )
        return Hold(
            row.id, row.tenant, row.scope, row.target, row.reason, row.set_by, _utc(row.at), now, actor
        )

    def holds(self, tenant: str, *, active_only: bool = True) -> list[Hold]:
        self._ensure_schema()
        h = legal_holds.c
        query = select(legal_holds).where(h.tenant == tenant).order_by(h.id)
        if active_only:
            query = query.where(h.released_at.is_(None))
        with self.engine.connect() as conn:
            return [
                Hold(
                    r.id,
                    r.tenant,
                    r.scope,
                    r.target,
                    r.reason,
                    r.set_by,
                    _utc(r.at),
                    _utc(r.released_at),
                    r.released_by,
                )
                for r in conn.execute(query)
            ]

    @staticmethod
    def _held(s: Any) -> Any:
        """SQL: an active hold covers session row ``s`` (its id, its customer or its tenant)."""
        h = legal_holds.c
        return exists(
            select(literal(1)).where(
                h.tenant == s.tenant,
                h.released_at.is_(None),
                or_(
                    h.scope == "tenant",
                    and_(h.scope == "customer", h.target == s.customer_id),
                    and_(h.scope == "session", h.target == s.id),
                ),
            )
        )

    def _holds_on_customer(
        self, conn: Connection, tables: _DataTables, tenant: str, customer_id: str
    ) -> list[int]:
        """Active holds covering the tenant, the customer or one of the customer's sessions."""
        h, s = legal_holds.c, _sessions.c
        covers = [h.scope == "tenant", and_(h.scope == "customer", h.target == customer_id)]
        if "sessions" in tables.names:
            own_sessions = select(s.id).where(s.tenant == tenant, s.customer_id == customer_id)
            covers.append(and_(h.scope == "session", h.target.in_(own_sessions)))
        query = select(h.id).where(h.tenant == tenant, h.released_at.is_(None), or_(*covers))
        return sorted(int(i) for i in conn.execute(query).scalars())

    # ------------------------------------------------------------ deleting

    def _delete_files(self, conn: Connection, tables: _DataTables, tenant: str, ids: list[str]) -> int:
        """Every recording file of these sessions: the parts named in ``recordings`` and anything else under
        the sessions' recordings folders (a part whose row was never written). Returns the files deleted."""
        paths: dict[str, Any] = {}
        if "recordings" in tables.names:
            r = _recordings.c
            for uri in conn.execute(select(r.uri).where(r.session_id.in_(ids), r.tenant == tenant)).scalars():
                fs, path = fsspec.core.url_to_fs(uri)
                paths[f"{fs.protocol}:{path}"] = (fs, path)
        folders = []
        if self.recordings_url and _safe_part(tenant):
            for sid in ids:
                if not _safe_part(sid):
                    continue
                fs, folder = fsspec.core.url_to_fs(f"{self.recordings_url}/{tenant}/{sid}")
                if fs.exists(folder):
                    folders.append((fs, folder))
                    for path in fs.find(folder):
                        paths[f"{fs.protocol}:{path}"] = (fs, path)
        deleted = 0
        for fs, path in paths.values():
            if fs.exists(path):
                fs.rm(path)
                deleted += 1
        for fs, folder in folders:
            if fs.exists(folder):
                fs.rm(folder, recursive=True)
        return deleted

    def _delete_sessions(
        self, conn: Connection, tables: _DataTables, tenant: str, ids: list[str]
    ) -> tuple[dict[str, int], int]:
        files = self._delete_files(conn, tables, tenant, ids)
        rows: dict[str, int] = {}
        for name, t, has_tenant in tables.by_session:
            where = [t.c.session_id.in_(ids)] + ([t.c.tenant == tenant] if has_tenant else [])
            n = conn.execute(delete(t).where(*where)).rowcount
            if n:
                rows[name] = n
        s = _sessions.c
        rows["sessions"] = conn.execute(delete(_sessions).where(s.id.in_(ids), s.tenant == tenant)).rowcount
        return rows, files

    # ------------------------------------------------------------ purge

    def _due(self, tenant: str, cutoff: datetime, tables: _DataTables, *, held: bool) -> Any:
        """SQL conditions: ``tenant``'s sessions past ``cutoff`` (by end, last utterance and last event) that are
        (``held=True``) or are not (``held=False``) under a legal hold."""
        s = _sessions.c
        cutoff_lit = literal(cutoff, DateTime(timezone=True))
        conditions = [s.tenant == tenant, func.coalesce(s.ended_at, s.started_at) < cutoff_lit]
        for t in (_utterances, _events):
            if t.name in tables.names:
                conditions.append(
                    ~exists(select(literal(1)).where(t.c.session_id == s.id, t.c.created_at >= cutoff_lit))
                )
        conditions.append(self._held(s) if held else ~self._held(s))
        return and_(*conditions)

    def purge(
        self,
        now: datetime | None = None,
        *,
        dry_run: bool = False,
        tenant: str | None = None,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> PurgeReport:
        """Delete every session past its tenant's retention, except those under a legal hold, with all its rows
        and recording files; one audited transaction per batch. ``dry_run`` only counts."""
        now = _utc(now) or _now()
        actor = actor or self.actor
        self._ensure_schema()
        report = PurgeReport(now=now, dry_run=dry_run, run=uuid.uuid4().hex[:16])
        with self.engine.connect() as conn:
            tables = self._discover(conn)
            if "sessions" not in tables.names:
                return report
            tq = select(_sessions.c.tenant).distinct().order_by(_sessions.c.tenant)
            if tenant is not None:
                tq = tq.where(_sessions.c.tenant == tenant)
            for t in conn.execute(tq).scalars().all():
                days = self.days_for(t, conn)
                plan = TenantPurge(t, days, now - timedelta(days=days))
                count = select(func.count()).select_from(_sessions)
                plan.due = conn.execute(
                    count.where(self._due(t, plan.cutoff, tables, held=False))
                ).scalar_one()
                plan.held = conn.execute(
                    count.where(self._due(t, plan.cutoff, tables, held=True))
                ).scalar_one()
                report.tenants[t] = plan
        if dry_run:
            return report
        for plan in report.tenants.values():
            if plan.due and progress:
                progress(plan.tenant, 0, plan.due)
            batch_no = 0
            while plan.due and not self._stop.is_set():
                with self.audit.locked(plan.tenant) as w:
                    ids = list(
                        w.conn.execute(
                            select(_sessions.c.id)
                            .where(self._due(plan.tenant, plan.cutoff, tables, held=False))
                            .order_by(_sessions.c.id)
                            .limit(self.batch_size)
                        ).scalars()
                    )
                    if not ids:
                        break
                    rows, files = self._delete_sessions(w.conn, tables, plan.tenant, ids)
                    batch_no += 1
                    w.append(
                        actor,
                        "retention.purge",
                        f"tenant:{plan.tenant}",
                        {
                            "run": report.run,
                            "batch": batch_no,
                            "sessions": len(ids),
                            "sessions_sha256": _digest(ids),
                            "rows": rows,
                            "files": files,
                            "retention_days": plan.days,
                            "cutoff": plan.cutoff.isoformat(timespec="seconds"),
                        },
                    )
                plan.sessions += len(ids)
                plan.files += files
                for name, n in rows.items():
                    plan.rows[name] = plan.rows.get(name, 0) + n
                if progress:
                    progress(plan.tenant, plan.sessions, max(plan.due, plan.sessions))
                if len(ids) < self.batch_size:
                    break
            if self._stop.is_set():
                report.stopped = True
                break
        return report

    # ------------------------------------------------------------ erasure

    def erase_customer(
        self, tenant: str, customer_id: str, actor: str, *, progress: Progress | None = None
    ) -> EraseReport:
        """Delete every session of one customer of ``tenant`` with all its rows and recording files, and the
        customer's rows in tables keyed by customer. Refused (:class:`LegalHoldError`, itself audited) while a
        hold covers the customer, one of their sessions or the tenant."""
        if not customer_id or len(customer_id) > 128:
            raise ValueError("a customer id of 1-128 characters is needed")
        self._ensure_schema()
        report = EraseReport(tenant, customer_id, uuid.uuid4().hex[:16])
        target = f"customer:{customer_id}"
        with self.engine.connect() as conn:
            tables = self._discover(conn)
            s = _sessions.c
            total = (
                conn.execute(
                    select(func.count()).where(s.tenant == tenant, s.customer_id == customer_id)
                ).scalar_one()
                if "sessions" in tables.names
                else 0
            )
        batch_no = 0
        while True:
            with self.audit.locked(tenant) as w:
                refused = self._holds_on_customer(w.conn, tables, tenant, customer_id)
                if refused:
                    w.append(
                        actor,
                        "retention.erase_refused",
                        target,
                        {"request": report.request, "holds": refused, "sessions_erased": report.sessions},
                    )
                else:
                    ids, rows, files, external = self._erase_batch(w.conn, tables, tenant, customer_id)
                    done = external is not None
                    detail: dict[str, Any] = {
                        "request": report.request,
                        "batch": batch_no + 1,
                        "sessions": len(ids),
                        "sessions_sha256": _digest(ids),
                        "rows": rows,
                        "files": files,
                        "done": done,
                    }
                    if external:
                        detail["external"] = report.external = external
                    batch_no += 1
                    w.append(actor, "retention.erase", target, detail)
            if refused:
                already = (
                    f"; {report.sessions} of their sessions were erased before it" if report.sessions else ""
                )
                raise LegalHoldError(
                    f"customer {customer_id} of tenant {tenant} is under legal hold {', '.join(map(str, refused))}: "
                    f"nothing more was deleted{already}; release the hold to erase",
                    refused,
                )
            report.sessions += len(ids)
            report.files += files
            for name, n in rows.items():
                report.rows[name] = report.rows.get(name, 0) + n
            if progress:
                progress(tenant, report.sessions, max(total, report.sessions))
            if done:
                return report

    def _erase_batch(
        self, conn: Connection, tables: _DataTables, tenant: str, customer_id: str
    ) -> tuple[list[str], dict[str, int], int, dict[str, int] | None]:
        """One batch of the customer's sessions. With the last one, first the other stores (``erasers``: when one
        fails, nothing of this batch is deleted and the request can be repeated), then their rows keyed by
        customer only (analytics whose session row is gone, ...). Returns (session ids, rows per table, files,
        items deleted per eraser -- None before the last batch)."""
        ids: list[str] = []
        rows: dict[str, int] = {}
        files = 0
        if "sessions" in tables.names:
            s = _sessions.c
            query = select(s.id).where(s.tenant == tenant, s.customer_id == customer_id)
            ids = list(conn.execute(query.order_by(s.id).limit(self.batch_size)).scalars())
        external = None
        if len(ids) < self.batch_size:
            external = {name: int(erase(tenant, customer_id)) for name, erase in self.erasers.items()}
        if ids:
            rows, files = self._delete_sessions(conn, tables, tenant, ids)
        if external is not None:
            for name, t in tables.by_customer:
                n = conn.execute(
                    delete(t).where(t.c.tenant == tenant, t.c.customer_id == customer_id)
                ).rowcount
                if n:
                    rows[name] = rows.get(name, 0) + n
        return ids, rows, files, external

    # ------------------------------------------------------------ the schedule

    def purge_if_due(
        self, interval_s: float, now: datetime | None = None, lease_s: float = 6 * 3600
    ) -> PurgeReport | None:
        """Run the purge unless one ran (on any replica) within ``interval_s`` or is running now; replicas that
        share the database take turns through the ``retention_leases`` row."""
        now = _utc(now) or _now()
        self._ensure_schema()
        lease = retention_leases.c
        with self.audit.transaction() as conn:
            dialect = self.engine.dialect.name
            ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(retention_leases)
            conn.execute(ins.values(name="purge").on_conflict_do_nothing())
            claimed = conn.execute(
                update(retention_leases)
                .where(
                    lease.name == "purge",
                    or_(lease.expires_at.is_(None), lease.expires_at < now),
                    or_(
                        lease.last_finished_at.is_(None),
                        lease.last_finished_at <= now - timedelta(seconds=interval_s),
                    ),
                )
                .values(holder=self.holder, expires_at=now + timedelta(seconds=lease_s))
            ).rowcount
        if claimed != 1:
            return None
        finished = False
        try:
            report = self.purge(now)
            finished = not report.stopped
            return report
        finally:
            values: dict[str, Any] = {"expires_at": None}
            if finished:
                values["last_finished_at"] = now
            with self.audit.transaction() as conn:
                conn.execute(
                    update(retention_leases)
                    .where(lease.name == "purge", lease.holder == self.holder)
                    .values(**values)
                )

    async def run_forever(self, interval_s: float = 86400.0, *, check_s: float = 300.0) -> None:
        """The scheduled purge: every ``check_s`` seconds, purge if no replica did within ``interval_s``. Failures
        are logged and retried at the next check. Cancelling it lets a running purge finish its current batch
        (its transaction) and then returns."""
        self._stop.clear()
        while True:
            running = asyncio.ensure_future(asyncio.to_thread(self.purge_if_due, interval_s))
            try:
                report = await asyncio.shield(running)
            except asyncio.CancelledError:
                self._stop.set()
                await asyncio.gather(running, return_exceptions=True)
                raise
            except (SQLAlchemyError, AuditError, OSError) as exc:
                log.error(
                    "retention purge failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, check_s
                )
            else:
                if report is not None:
                    log.info(
                        "retention purge %s: %d sessions deleted, %d files, %d kept under legal hold",
                        report.run,
                        report.sessions,
                        report.files,
                        report.held,
                    )
            await asyncio.sleep(min(check_s, interval_s))


def _now() -> datetime:
    return datetime.now(UTC)


def _safe_part(value: str) -> bool:
    return bool(value) and "/" not in value and "\\" not in value and value not in (".", "..")


# ---------------------------------------------------------------- CLI


@dataclass
class _Bars:
    """One tqdm bar per tenant on stderr."""

    desc: str
    bars: dict[str, Any] = field(default_factory=dict)

    def __call__(self, tenant: str, done: int, total: int) -> None:
        import sys

        from tqdm import tqdm

        bar = self.bars.get(tenant)
        if bar is None:
            bar = self.bars[tenant] = tqdm(
                total=total, desc=f"{self.desc} {tenant}", unit="session", file=sys.stderr
            )
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _iter_rows(rows: Mapping[str, int]) -> Iterator[str]:
    for name in sorted(rows):
        yield f"{name}={rows[name]}"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import getpass
    import sys

    from .config import Settings

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.retention",
        description="Retention: purge sessions past their tenant's retention (7 years by default), legal holds, "
        "deletion of one customer's data. Every change is written to the audit trail.",
    )
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (default: SWITCHBOARD_DATABASE_URL, else the SQLite file)"
    )
    parser.add_argument(
        "--recordings-url", help="recordings folder or fsspec URL (default: from the settings)"
    )
    parser.add_argument("--policy-file", help="YAML retention policy (default_days, tenants: {tenant: days})")
    parser.add_argument("--actor", help="who is acting, for the audit trail (default: <os user>@cli)")
    parser.add_argument("--batch-size", type=int, default=500, help="sessions per transaction (default 500)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("purge", help="delete sessions past retention (held ones are kept)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--tenant", help="only this tenant")
    p = sub.add_parser("hold", help="place a legal hold on a session, a customer or a whole tenant")
    p.add_argument("--tenant", required=True)
    p.add_argument("--scope", choices=SCOPES, required=True)
    p.add_argument("--target", help="the session id or customer id (not needed for --scope tenant)")
    p.add_argument("--reason", required=True, help="why (kept with the hold, not in the audit trail)")
    p = sub.add_parser("release", help="release a legal hold")
    p.add_argument("--tenant", required=True)
    p.add_argument("--id", type=int, required=True, help="the hold's id (see `holds`)")
    p = sub.add_parser("holds", help="list a tenant's legal holds")
    p.add_argument("--tenant", required=True)
    p.add_argument("--all", action="store_true", help="released holds too")
    p = sub.add_parser("erase", help="delete one customer's sessions and data (refused under a legal hold)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--customer", required=True, help="the customer id")
    p = sub.add_parser("policy", help="show or set a tenant's retention period")
    p.add_argument("--tenant", required=True)
    p.add_argument("--days", type=int, help="new retention in days (1-36500); omit to show the current one")
    args = parser.parse_args(argv)

    settings = Settings()
    policy = (
        RetentionPolicy.from_yaml(args.policy_file)
        if args.policy_file
        else RetentionPolicy.from_settings(settings)
    )
    retention = Retention(
        args.database_url or settings.sqlalchemy_url,
        recordings=args.recordings_url or settings.resolved_recordings_url,
        policy=policy,
        batch_size=args.batch_size,
    )
    actor = args.actor or f"{getpass.getuser()}@cli"
    try:
        if args.command == "purge":
            bars = _Bars("purging")
            try:
                report = retention.purge(dry_run=args.dry_run, tenant=args.tenant, progress=bars, actor=actor)
            finally:
                bars.close()
            for t in report.tenants.values():
                if args.dry_run:
                    print(
                        f"tenant {t.tenant}: retention {t.days} days (before {t.cutoff:%Y-%m-%d}): "
                        f"{t.due} sessions would be deleted, {t.held} kept under legal hold"
                    )
                else:
                    print(
                        f"tenant {t.tenant}: retention {t.days} days: {t.sessions} sessions deleted "
                        f"({', '.join(_iter_rows(t.rows)) or 'no rows'}; {t.files} recording files), "
                        f"{t.held} kept under legal hold"
                    )
            if not report.tenants:
                print("no sessions")
            return 0
        if args.command == "hold":
            hold_id = retention.place_hold(args.tenant, args.scope, args.target, args.reason, actor)
            held = f"{args.scope} {args.target} of " if args.scope != "tenant" else ""
            print(f"legal hold {hold_id} placed on {held}tenant {args.tenant}")
            return 0
        if args.command == "release":
            hold = retention.release_hold(args.tenant, args.id, actor)
            print(f"legal hold {hold.id} on {hold.scope} {hold.target} released")
            return 0
        if args.command == "holds":
            for h in retention.holds(args.tenant, active_only=not args.all):
                state = "active" if h.active else f"released {h.released_at:%Y-%m-%d} by {h.released_by}"
                print(
                    f"{h.id:>6}  {h.scope:<8} {h.target:<32} {h.at:%Y-%m-%d} by {h.set_by}  [{state}]  {h.reason}"
                )
            return 0
        if args.command == "erase":
            bars = _Bars("erasing")
            try:
                report = retention.erase_customer(args.tenant, args.customer, actor, progress=bars)
            finally:
                bars.close()
            print(
                f"customer {args.customer} of tenant {args.tenant}: {report.sessions} sessions erased "
                f"({', '.join(_iter_rows(report.rows)) or 'no rows'}; {report.files} recording files)"
            )
            return 0
        if args.days is None:
            print(f"tenant {args.tenant}: retention {retention.days_for(args.tenant)} days")
        else:
            previous = retention.set_policy(args.tenant, args.days, actor)
            print(f"tenant {args.tenant}: retention {args.days} days (was {previous})")
        return 0
    except LegalHoldError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, AuditError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        retention.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
