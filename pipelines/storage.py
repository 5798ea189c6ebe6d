"""Session storage through SQLAlchemy: a SQLite file by default, PostgreSQL in production.

Only redacted text is ever written. Writes go through a queue drained by one background task in batches
(one transaction per batch), so the hot path never waits on the database; if the database is unavailable,
batches stay queued and are retried with backoff, then flushed (DESIGN failure table: "writes queued and
flushed later"). ``flush()`` waits until everything queued so far is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError, SQLAlchemyError

from .errors import SwitchboardError

__all__ = [
    "SessionStore",
    "SessionRow",
    "metadata",
    "sessions",
    "utterances",
    "events",
    "escalations",
    "review_items",
    "channel_threads",
]

log = logging.getLogger("switchboard.storage")


class StoreUnavailable(SwitchboardError):
    """A read that needs the database while it is down (writes are queued meanwhile, never dropped)."""

    code = "store_unavailable"

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("customer_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(16), nullable=False, default="active"),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)

utterances = Table(
    "utterances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("speaker", String(32), nullable=False),
    Column("text", Text, nullable=False),  # redacted
    Column("message_id", String(128)),
    Column("start_s", Float),
    Column("end_s", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("type", String(32), nullable=False),
    Column("utterance_id", String(64)),
    Column("payload", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

escalations = Table(
    "escalations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("utterance_id", String(64), nullable=False),
    Column("rule", String(64)),
    Column("reason", Text, nullable=False),
    Column("queue", String(64), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

review_items = Table(
    "review_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("utterance_id", String(64), nullable=False),
    Column("reason", String(128), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),  # AES-GCM; the raw text is never stored in clear
    Column("status", String(16), nullable=False, default="pending"),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


recordings = Table(
    "recordings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("part", Integer, nullable=False),
    Column("uri", Text, nullable=False),  # encrypted object (AES-GCM chunks)
    Column("channels", Integer, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Post-call analytics, one row per ended session (a resumed and re-ended session gets a new row; the
# latest is the current one).
session_analytics = Table(
    "session_analytics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("customer_id", String(128), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("quality_score", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("sentiment_avg", Float),
    Column("escalations", Integer, nullable=False),
    Column("variant", String(16)),
    Column("summary", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Which session a channel conversation belongs to: an SMS thread (customer + our number) or an email thread
# (any Message-ID of it). Keys are keyed hashes, never raw phone numbers or addresses. Written directly, not
# through the queue: two first messages of one thread must end in one session.
channel_threads = Table(
    "channel_threads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("thread_key", String(128), nullable=False),
    Column("session_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "channel", "thread_key", name="uq_channel_threads_key"),
)

_REJECTED = (IntegrityError, DataError, ProgrammingError)
_INSERT = {name: insert(t) for name, t in metadata.tables.items()}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    tenant: str
    customer_id: str
    channel: str
    status: str
    next_seq: int
    fired_rules: frozenset[str] = frozenset()
    suggestion_ids: frozenset[str] = frozenset()
    turns: int = 0


def make_engine(url: str) -> Engine:
    """The engine every part of switchboard uses (SQLite: WAL, 30 s busy timeout, usable from threads)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


class SessionStore:
    """Async facade over a sync SQLAlchemy engine with a write-behind queue."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 256,
        max_backoff_s: float = 5.0,
        keyring: Any | None = None,
        read_wait_s: float = 10.0,
    ) -> None:
        self.url = url
        # a read waits for the writes queued before it; while the database is down it gives up after this
        # long with `store_unavailable` (retryable) instead of hanging the caller
        self.read_wait_s = read_wait_s
        self.engine = make_engine(url)
        # pipelines.keys.KeyRing: transcripts and event payloads are sealed with the tenant's data key
        # (in the writer thread, just before they are written) and opened on the way back
        self.keyring = keyring
        self.batch_size = batch_size
        self.max_backoff_s = max_backoff_s
        self._pending: deque[tuple[Any, Any]] = deque()  # (statement, params)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.write_failures = 0
        self.rejected_writes = 0
        self._schema_ready = False

    # ------------------------------------------------------------ lifecycle

    def create_schema(self) -> None:
        metadata.create_all(self.engine)
        self._schema_ready = True

    async def start(self) -> None:
        """Start the writer. If the database is down, sessions still start: writes queue until it is back."""
        try:
            await asyncio.to_thread(self.create_schema)
        except SQLAlchemyError as exc:
            log.warning(
                "database unavailable at start (%s); writes will queue until it is back", type(exc).__name__
            )
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name="switchboard-store-writer")

    async def close(self) -> None:
        """Flush everything queued, then stop the writer and release connections."""
        if self._task is not None:
            await self.flush()
            self._closed = True
            self._wake.set()
            await self._task
            self._task = None
        await asyncio.to_thread(self.engine.dispose)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed (wrap in ``asyncio.timeout`` to bound it)."""
        if self._task is None:
            raise RuntimeError("SessionStore.start() was not called")
        await self._idle.wait()

    # ------------------------------------------------------------ writes (queued)

    def _enqueue(self, statement: Any, params: dict[str, Any]) -> None:
        self._pending.append((statement, params))
        self._idle.clear()
        self._wake.set()

    def create_session(self, session_id: str, tenant: str, customer_id: str, channel: str) -> None:
        self._enqueue(
            _INSERT["sessions"],
            dict(
                id=session_id,
                tenant=tenant,
                customer_id=customer_id,
                channel=channel,
                status="active",
                started_at=_now(),
            ),
        )

    def reopen_session(self, session_id: str, tenant: str) -> None:
        self._enqueue(
            update(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant),
            dict(status="active", ended_at=None),
        )

    def end_session(self, session_id: str, tenant: str, status: str = "ended") -> None:
        self._enqueue(
            update(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant),
            dict(status=status, ended_at=_now()),
        )

    def add_utterance(
        self,
        *,
        utterance_id: str,
        session_id: str,
        tenant: str,
        seq: int,
        speaker: str,
        text: str,
        message_id: str | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> None:
        self._enqueue(
            _INSERT["utterances"],
            dict(
                id=utterance_id,
                session_id=session_id,
                tenant=tenant,
                seq=seq,
                speaker=speaker,
                text=text,
                message_id=message_id,
                start_s=start_s,
                end_s=end_s,
                created_at=_now(),
            ),
        )

    def add_event(self, *, session_id: str, tenant: str, seq: int, payload: dict[str, Any]) -> None:
        self._enqueue(
            _INSERT["events"],
            dict(
                session_id=session_id,
                tenant=tenant,
                seq=seq,
                type=payload["type"],
                utterance_id=payload.get("utterance_id"),
                payload=payload,
                created_at=_now(),
            ),
        )

    def add_escalation(
        self,
        *,
        session_id: str,
        tenant: str,
        utterance_id: str,
        rule: str | None,
        reason: str,
        queue: str,
        priority: str,
    ) -> None:
        self._enqueue(
            _INSERT["escalations"],
            dict(
                session_id=session_id,
                tenant=tenant,
                utterance_id=utterance_id,
                rule=rule,
                reason=reason,
                queue=queue,
                priority=priority,
                created_at=_now(),
            ),
        )

    def add_session_analytics(
        self,
        *,
        session_id: str,
        tenant: str,
        customer_id: str,
        channel: str,
        summary: dict[str, Any],
        variant: str | None = None,
    ) -> None:
        """The session's post-call analytics (``session.ended.summary``, with its ``quality`` score)."""
        self._enqueue(
            _INSERT["session_analytics"],
            dict(
                session_id=session_id,
                tenant=tenant,
                customer_id=customer_id,
                channel=channel,
                quality_score=float(summary["quality"]["score"]),
                duration_s=float(summary["duration_s"]),
                sentiment_avg=summary.get("sentiment_avg"),
                escalations=int(summary["escalations"]),
                variant=variant,
                summary=summary,
                created_at=_now(),
            ),
        )

    async def session_analytics(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        return await self._session_rows(session_analytics, tenant, session_id, session_analytics.c.id)

    def add_review_item(
        self, *, session_id: str, tenant: str, utterance_id: str, reason: str, nonce: bytes, ciphertext: bytes
    ) -> None:
        self._enqueue(
            _INSERT["review_items"],
            dict(
                session_id=session_id,
                tenant=tenant,
                utterance_id=utterance_id,
                reason=reason,
                nonce=nonce,
                ciphertext=ciphertext,
                status="pending",
                created_at=_now(),
            ),
        )

    def add_recording(
        self,
        *,
        session_id: str,
        tenant: str,
        part: int,
        uri: str,
        channels: int,
        duration_s: float,
        bytes_: int,
    ) -> None:
        self._enqueue(
            _INSERT["recordings"],
            dict(
                session_id=session_id,
                tenant=tenant,
                part=part,
                uri=uri,
                channels=channels,
                duration_s=duration_s,
                bytes=bytes_,
                created_at=_now(),
            ),
        )

    # ------------------------------------------------------------ reads (tenant-scoped)

    async def _caught_up(self) -> None:
        """Wait (at most ``read_wait_s``) until the writes queued so far have landed, so a read sees them."""
        if self._task is None:
            raise RuntimeError("SessionStore.start() was not called")
        try:
            await asyncio.wait_for(self._idle.wait(), self.read_wait_s)
        except TimeoutError:
            raise StoreUnavailable(
                f"the session store is not reachable ({len(self._pending)} writes queued, none lost); "
                "try again shortly",
            ) from None

    async def _session_rows(
        self, table: Table, tenant: str, session_id: str, order: Any
    ) -> list[dict[str, Any]]:
        """Every row of ``table`` for one session of one tenant, after the queued writes have landed."""
        await self._caught_up()

        def _read() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                query = (
                    select(table)
                    .where(table.c.session_id == session_id, table.c.tenant == tenant)
                    .order_by(order)
                )
                return [dict(r._mapping) for r in conn.execute(query)]

        return await asyncio.to_thread(_read)

    async def recordings(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        return await self._session_rows(recordings, tenant, session_id, recordings.c.part)

    async def get_session(self, tenant: str, session_id: str) -> SessionRow | None:
        await self._caught_up()

        def _read() -> SessionRow | None:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant)
                ).first()
                if row is None:
                    return None
                scoped = (events.c.session_id == session_id, events.c.tenant == tenant)
                n = conn.execute(select(events.c.seq).where(*scoped).order_by(events.c.seq.desc())).first()
                rules = conn.execute(
                    select(escalations.c.rule).where(
                        escalations.c.session_id == session_id, escalations.c.tenant == tenant
                    )
                ).scalars()
                suggestions = [
                    self._opened_payload(tenant, session_id, r.seq, r.payload)
                    for r in conn.execute(
                        select(events.c.seq, events.c.payload).where(*scoped, events.c.type == "assist.suggestion")
                    )
                ]
                turns = conn.execute(
                    select(utterances.c.id).where(
                        utterances.c.session_id == session_id,
                        utterances.c.tenant == tenant,
                        utterances.c.speaker == "customer",
                    )
                ).all()
                return SessionRow(
                    row.id,
                    row.tenant,
                    row.customer_id,
                    row.channel,
                    row.status,
                    (n[0] + 1) if n else 0,
                    fired_rules=frozenset(r for r in rules if r),
                    suggestion_ids=frozenset(p["suggestion_id"] for p in suggestions),
                    turns=len(turns),
                )

        return await asyncio.to_thread(_read)

    async def transcript(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        rows = await self._session_rows(utterances, tenant, session_id, utterances.c.seq)
        if self.keyring is None:
            return rows
        return await asyncio.to_thread(lambda: [{**r, "text": self._opened_text(r)} for r in rows])

    async def session_events(self, tenant: str, session_id: str) -> list[dict[str, Any]]:
        rows = await self._session_rows(events, tenant, session_id, events.c.seq)
        return await asyncio.to_thread(
            lambda: [self._opened_payload(tenant, session_id, r["seq"], r["payload"]) for r in rows]
        )

    # ------------------------------------------------------------ channel threads (written directly)

    async def find_thread(self, tenant: str, channel: str, keys: Sequence[str]) -> str | None:
        """The session owning the first of ``keys`` (in the order given) that is linked, or None."""
        if not keys:
            return None

        def _read() -> str | None:
            if not self._schema_ready:
                self.create_schema()
            t = channel_threads.c
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(t.thread_key, t.session_id).where(
                        t.tenant == tenant, t.channel == channel, t.thread_key.in_(list(keys))
                    )
                ).all()
            owners = {r.thread_key: r.session_id for r in rows}
            return next((owners[k] for k in keys if k in owners), None)

        return await asyncio.to_thread(_read)

    async def link_thread(self, tenant: str, channel: str, key: str, session_id: str) -> str:
        """Link ``key`` to ``session_id`` unless it is linked already; returns the session that owns the key
        (the first writer wins, so two concurrent first messages of one thread end in one session)."""

        def _link() -> str:
            if not self._schema_ready:
                self.create_schema()
            row = dict(
                tenant=tenant, channel=channel, thread_key=key, session_id=session_id, created_at=_now()
            )
            try:
                with self.engine.begin() as conn:
                    conn.execute(_INSERT["channel_threads"], row)
                return session_id
            except IntegrityError:
                t = channel_threads.c
                with self.engine.connect() as conn:
                    owner = conn.execute(
                        select(t.session_id).where(
                            t.tenant == tenant, t.channel == channel, t.thread_key == key
                        )
                    ).scalar()
                if owner is None:  # rejected for another reason than the key being taken
                    raise
                return owner

        return await asyncio.to_thread(_link)

    # ------------------------------------------------------------ the writer

    def _sealed(self, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
        """The row as stored: with a key ring, an utterance's text and an event's payload are sealed with the
        tenant's data key, bound to their session and row (a sealed value moved elsewhere does not open)."""
        if self.keyring is None or not getattr(statement, "is_insert", False):
            return params
        if statement is _INSERT["utterances"]:
            aad = f"{params['session_id']}/utterance/{params['id']}".encode()
            return {**params, "text": self.keyring.seal_text(params["tenant"], params["text"], aad)}
        if statement is _INSERT["events"]:
            aad = f"{params['session_id']}/event/{params['seq']}".encode()
            sealed = self.keyring.seal_text(params["tenant"], json.dumps(params["payload"]), aad)
            return {**params, "payload": {"type": params["type"], "sealed": sealed}}
        return params

    def _opened_text(self, row: dict[str, Any]) -> str:
        if self.keyring is None:
            return row["text"]
        aad = f"{row['session_id']}/utterance/{row['id']}".encode()
        return self.keyring.open_text(row["tenant"], row["text"], aad)

    def _opened_payload(self, tenant: str, session_id: str, seq: int, payload: Any) -> dict[str, Any]:
        payload = payload if isinstance(payload, dict) else json.loads(payload)
        if "sealed" not in payload:
            return payload
        if self.keyring is None:
            raise RuntimeError("sealed session data and no key ring: configure the master key (SWITCHBOARD_MASTER_KEY_FILE)")
        aad = f"{session_id}/event/{seq}".encode()
        return json.loads(self.keyring.open_text(tenant, payload["sealed"], aad))

    def _write_batch(self, batch: list[tuple[Any, Any]]) -> None:
        if not self._schema_ready:
            self.create_schema()
        batch = [(statement, self._sealed(statement, params)) for statement, params in batch]
        with self.engine.begin() as conn:
            # consecutive inserts into one table go as one executemany; order across tables is kept
            i = 0
            while i < len(batch):
                statement, params = batch[i]
                j = i + 1
                if statement.is_insert:
                    while j < len(batch) and batch[j][0] is statement:
                        j += 1
                conn.execute(statement, params if j == i + 1 else [p for _, p in batch[i:j]])
                i = j

    def _write_one_by_one(self, n: int) -> None:
        """Write the first ``n`` queued statements separately, dequeuing each once it is settled; a statement
        the database rejects is logged and dropped. Connection errors propagate (and are retried)."""
        for _ in range(n):
            statement, params = self._pending[0]
            try:
                with self.engine.begin() as conn:
                    conn.execute(statement, self._sealed(statement, params))
            except _REJECTED as exc:
                self.rejected_writes += 1
                log.error(
                    "store dropped a rejected %s write (%s)",
                    getattr(statement, "table", "?"),
                    type(exc).__name__,
                )
            self._pending.popleft()

    async def _writer(self) -> None:
        backoff = 0.1
        while True:
            if not self._pending:
                self._idle.set()
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(self.batch_size, len(self._pending)))]
            try:
                try:
                    await asyncio.to_thread(self._write_batch, batch)
                except _REJECTED as exc:
                    # A statement the database rejects will never succeed: write one by one, skip that one.
                    log.error("store batch rejected (%s); writing statements one by one", type(exc).__name__)
                    await asyncio.to_thread(self._write_one_by_one, len(batch))
                    continue
            except SQLAlchemyError as exc:
                # Keep the batch queued and retry: nothing accepted is dropped while the database is down.
                self.write_failures += 1
                log.warning(
                    "store write failed (%s); %d writes queued, retrying",
                    type(exc).__name__,
                    len(self._pending),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.1
            for _ in batch:
                self._pending.popleft()
