"""The session store on both backends: a SQLite file and the real local PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy

from pipelines.storage import SessionStore
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leaked_tasks")]


async def roundtrip(url: str) -> None:
    store = SessionStore(url)
    await store.start()
    try:
        store.create_session("ses_a", "tenant-a", "cust-1", "chat")
        store.create_session("ses_b", "tenant-b", "cust-2", "sms")
        for i, text in enumerate(["hello [PERSON]", "my card is [CARD]"]):
            store.add_utterance(
                utterance_id=f"u{i}",
                session_id="ses_a",
                tenant="tenant-a",
                seq=i,
                speaker="customer",
                text=text,
            )
            store.add_event(
                session_id="ses_a",
                tenant="tenant-a",
                seq=i,
                payload={"type": "transcript.final", "utterance_id": f"u{i}", "text": text},
            )
        store.add_escalation(
            session_id="ses_a",
            tenant="tenant-a",
            utterance_id="u1",
            rule="r",
            reason="why",
            queue="supervisor",
            priority="high",
        )
        store.end_session("ses_a", "tenant-a")
        transcript = await store.transcript("tenant-a", "ses_a")
        assert [u["text"] for u in transcript] == ["hello [PERSON]", "my card is [CARD]"]
        assert [e["utterance_id"] for e in await store.session_events("tenant-a", "ses_a")] == ["u0", "u1"]
        row = await store.get_session("tenant-a", "ses_a")
        assert (
            row.status == "ended"
            and row.next_seq == 2
            and row.fired_rules == frozenset({"r"})
            and row.turns == 2
        )
        # tenant scoping happens in the data layer
        assert await store.get_session("tenant-b", "ses_a") is None
        assert await store.transcript("tenant-b", "ses_a") == []
    finally:
        await store.close()


async def test_sqlite_roundtrip(tmp_path):
    await roundtrip(f"sqlite:///{tmp_path / 'store.db'}")


async def test_postgresql_roundtrip(pg_database):
    await roundtrip(pg_database)


async def test_writes_queue_while_the_database_is_down_and_flush_when_it_is_back():
    """DESIGN failure table: database unavailable → writes queued and flushed later, nothing lost."""
    name = f"sb_outage_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    store = SessionStore(url, max_backoff_s=0.2)
    await store.start()  # the database does not exist yet: start must not fail
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        store.create_session("ses_x", "t", "c", "chat")
        for i in range(50):
            store.add_event(session_id="ses_x", tenant="t", seq=i, payload={"type": "sentiment", "n": i})
        await asyncio.sleep(0.8)
        assert store.write_failures > 0 and store.backlog == 51
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        await asyncio.wait_for(store.flush(), 30)
        events = await store.session_events("t", "ses_x")
        assert [e["n"] for e in events] == list(range(50))
    finally:
        await store.close()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_a_rejected_write_does_not_block_the_others(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 'store.db'}")
    await store.start()
    try:
        store.create_session("ses_dup", "t", "c", "chat")
        store.create_session("ses_dup", "t", "c", "chat")  # duplicate primary key: rejected
        store.add_event(session_id="ses_dup", tenant="t", seq=0, payload={"type": "x"})
        await asyncio.wait_for(store.flush(), 10)
        assert store.rejected_writes == 1
        assert len(await store.session_events("t", "ses_dup")) == 1
    finally:
        await store.close()
