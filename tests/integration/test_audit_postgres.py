"""The audit trail and retention on the real local PostgreSQL (a fresh database per test): the triggers, the
tampering verify finds, one chain under concurrent writers on separate connections, the purge and erasure
over data written through the real SessionStore and RecordingStore."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy

from pipelines.audit import AuditLog
from pipelines.retention import Retention
from tests.unit.test_audit import assert_triggers_block, bypass, check_concurrent_chain, fill, rehash_row
from tests.unit.test_retention import erase_scenario, make_world, purge_scenario

pytestmark = [pytest.mark.integration]


@pytest.fixture
def audit(pg_database):
    log = AuditLog(pg_database)
    log.create_schema()
    yield log
    log.close()


def test_triggers_reject_update_delete_and_truncate(audit):
    fill(audit)
    assert_triggers_block(audit)
    for statement in ("TRUNCATE audit_log", "TRUNCATE audit_heads"):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only|forward"):
            with audit.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    audit.create_schema()  # idempotent: the triggers exist once
    with audit.engine.connect() as conn:
        names = (
            conn.exec_driver_sql(
                "SELECT tgname FROM pg_trigger WHERE tgrelid IN ('audit_log'::regclass, 'audit_heads'::regclass) "
                "AND NOT tgisinternal ORDER BY tgname"
            )
            .scalars()
            .all()
        )
    assert names == [
        "audit_heads_forward",
        "audit_heads_no_truncate",
        "audit_log_no_change",
        "audit_log_no_truncate",
    ]
    result = audit.verify()
    assert result.ok and result.tenants == {"acme": 5}


def test_json_and_timestamps_round_trip_exactly(audit):
    audit.append(
        "acme", "oidc|7f3a", "admin.config", "assist_top_k", {"old": 3, "new": 5, "ratio": 0.1, "note": "é✓"}
    )
    audit.append(
        "acme", "admin@acme", "admin.agent_status", "agent-7", {"nested": {"b": [1, 2.5, None], "a": True}}
    )
    assert audit.verify().ok


def test_an_edited_row_is_found(audit):
    fill(audit)
    bypass(audit, "UPDATE audit_log SET target = 'ses_9999' WHERE tenant = 'acme' AND seq = 3")
    first = audit.verify().first
    assert first.seq == 3 and "hash does not match" in first.reason


def test_an_edit_with_triggers_disabled_by_a_superuser_is_found(audit):
    fill(audit)
    with audit.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # triggers do not fire
        conn.exec_driver_sql(
            """UPDATE audit_log SET detail = '{"events": 99, "via": "watch"}' WHERE seq = 2"""
        )
    first = audit.verify().first
    assert first.seq == 2 and "hash does not match" in first.reason


def test_deleted_reordered_and_forged_rows_are_found(pg_database):
    cases = [
        (["DELETE FROM audit_log WHERE seq = 2"], 3, "where 2 was expected"),
        (["DELETE FROM audit_log WHERE seq = 5"], None, "head"),
        (
            [
                "UPDATE audit_log SET seq = 100 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = 100",
            ],
            2,
            "does not link",
        ),
    ]
    for tenant, (statements, seq, reason) in zip(("t1", "t2", "t3"), cases, strict=True):
        audit = AuditLog(pg_database)
        fill(audit, tenant)
        bypass(audit, *(s.replace("WHERE", f"WHERE tenant = '{tenant}' AND") for s in statements))
        first = audit.verify(tenant).first
        assert first is not None and first.seq == seq and reason in first.reason, (tenant, first)
        audit.close()
    audit = AuditLog(pg_database)
    fill(audit, "t4")
    forged, _ = rehash_row(audit, "t4", 2, actor="someone@else")
    bypass(
        audit,
        f"UPDATE audit_log SET actor = 'someone@else', hash = '{forged}' WHERE tenant = 't4' AND seq = 2",
    )
    assert audit.verify("t4").first.seq == 3
    assert [b.tenant for b in audit.verify().broken] == ["t1", "t2", "t3", "t4"]
    audit.close()


def test_concurrent_writers_on_separate_connections_keep_one_chain(pg_database):
    check_concurrent_chain(pg_database)


def test_replicas_creating_the_schema_at_once(pg_database):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        log = AuditLog(pg_database)
        try:
            barrier.wait()
            log.create_schema()
            Retention(log.engine, audit=log).create_schema()
        except BaseException as exc:  # asserted below
            errors.append(exc)
        finally:
            log.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    audit = AuditLog(pg_database)
    fill(audit)
    assert audit.verify().ok
    audit.close()


def test_tenants_never_see_each_others_rows(audit):
    fill(audit, "acme", 3)
    fill(audit, "beta", 2)
    assert {e.tenant for e in audit.entries("acme", limit=None)} == {"acme"}
    assert audit.heads("acme").keys() == {"acme"}
    bypass(audit, "DELETE FROM audit_log WHERE tenant = 'beta' AND seq = 1")
    assert audit.verify("acme").ok
    assert [b.tenant for b in audit.verify().broken] == ["beta"]


def test_a_hold_waits_for_a_running_purge_batch(pg_database):
    """Purge batches and holds of one tenant take the same lock: a hold placed while a batch runs lands after
    it, so the batch's selection and the hold never interleave."""
    retention = Retention(pg_database)
    retention.create_schema()
    placed = threading.Event()

    def hold() -> None:
        other = Retention(pg_database)
        other.place_hold("acme", "customer", "c1", "case", "legal@acme")
        placed.set()
        other.close()

    with retention.audit.locked("acme") as writer:  # what a purge batch holds
        thread = threading.Thread(target=hold)
        thread.start()
        time.sleep(0.5)
        assert not placed.is_set()
        writer.append("system@retention", "retention.purge", "tenant:acme", {"sessions": 0})
    thread.join(10)
    assert placed.is_set()
    assert [e.action for e in retention.audit.entries("acme", limit=None, newest_first=False)] == [
        "retention.purge",
        "retention.hold",
    ]
    retention.close()


async def test_purge_on_postgresql(pg_database, tmp_path: Path):
    world = await make_world(pg_database, tmp_path)
    try:
        await purge_scenario(world)
    finally:
        await world.store.close()


async def test_erase_on_postgresql(pg_database, tmp_path: Path):
    world = await make_world(pg_database, tmp_path)
    try:
        await erase_scenario(world)
    finally:
        await world.store.close()
