"""The audit trail on a real SQLite file: append-only in the database, tampering found by verify, one unbroken
chain under concurrent writers, tenants kept apart. The same scenarios run on PostgreSQL in
tests/integration/test_audit_postgres.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from pipelines.audit import GENESIS, AuditError, AuditLog, actor_for, entry_hash

pytestmark = [pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers shared with the PostgreSQL tests


def fill(audit: AuditLog, tenant: str = "acme", n: int = 5) -> None:
    for i in range(n):
        audit.append(
            tenant, f"agent@{tenant}", "transcript.read", f"ses_{i:04d}", {"events": i, "via": "watch"}
        )


def bypass(audit: AuditLog, *statements: str) -> None:
    """What someone who owns the table can do: drop the triggers, change rows, put the triggers back."""
    with audit.engine.begin() as conn:
        if audit.dialect == "postgresql":
            for name, table in [
                ("audit_log_no_change", "audit_log"),
                ("audit_heads_forward", "audit_heads"),
            ]:
                conn.exec_driver_sql(f"DROP TRIGGER {name} ON {table}")
        else:
            for name in (
                "audit_log_no_update",
                "audit_log_no_delete",
                "audit_heads_forward",
                "audit_heads_no_delete",
            ):
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.exec_driver_sql(statement)
    audit.create_schema()  # the triggers are back
    assert_triggers_block(audit)


def assert_triggers_block(audit: AuditLog) -> None:
    """Every change but an append is rejected (row triggers fire only when there are rows to change)."""
    with audit.engine.connect() as conn:
        logged = conn.exec_driver_sql("SELECT count(*) FROM audit_log").scalar()
        heads = conn.exec_driver_sql("SELECT count(*) FROM audit_heads").scalar()
    statements = ["UPDATE audit_log SET target = 'x'", "DELETE FROM audit_log"] if logged else []
    statements += ["UPDATE audit_heads SET seq = 0", "DELETE FROM audit_heads"] if heads else []
    assert statements or audit.verify().rows_checked == 0
    for statement in statements:
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only|forward"):
            with audit.engine.begin() as conn:
                conn.exec_driver_sql(statement)


def rehash_row(audit: AuditLog, tenant: str, seq: int, **changes) -> tuple[str, str]:
    """The row's hash recomputed after ``changes`` (a forger who knows the algorithm): (hash, prev_hash)."""
    row = next(e for e in audit.entries(tenant, limit=None) if e.seq == seq)
    fields = dict(
        tenant=row.tenant,
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        detail=row.detail,
        prev_hash=row.prev_hash,
    )
    fields.update(changes)
    return entry_hash(**fields), fields["prev_hash"]


def hammer(audit_factory, tenant: str, threads: int = 6, each: int = 20) -> list[BaseException]:
    """``threads`` writers (each with its own AuditLog, i.e. its own connections) appending at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        audit = audit_factory()
        try:
            barrier.wait()
            for j in range(each):
                audit.append(tenant, f"agent@{tenant}", "session.read", f"ses_{i}_{j}", {"writer": i})
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)
        finally:
            audit.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def check_concurrent_chain(url: str) -> None:
    first = AuditLog(url)
    first.create_schema()
    errors = hammer(lambda: AuditLog(url), "acme") + hammer(lambda: first, "beta", threads=4, each=10)
    assert errors == []
    result = first.verify()
    assert result.ok, result.broken
    assert result.tenants == {"acme": 120, "beta": 40}
    seqs = [e.seq for e in first.entries("acme", limit=None, newest_first=False)]
    assert seqs == list(range(1, 121))
    first.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def audit(url: str):
    log = AuditLog(url)
    yield log
    log.close()


# ---------------------------------------------------------------- the chain


def test_entries_chain_per_tenant_and_verify(audit):
    fill(audit, "acme", 3)
    fill(audit, "beta", 2)
    acme = audit.entries("acme", limit=None, newest_first=False)
    assert [e.seq for e in acme] == [1, 2, 3]
    assert (
        acme[0].prev_hash == GENESIS
        and acme[1].prev_hash == acme[0].hash
        and acme[2].prev_hash == acme[1].hash
    )
    assert audit.entries("beta", limit=None, newest_first=False)[0].prev_hash == GENESIS  # its own chain
    result = audit.verify()
    assert result.ok and result.rows_checked == 5 and result.tenants == {"acme": 3, "beta": 2}
    assert result.heads["acme"] == (3, acme[-1].hash) == audit.heads()["acme"]


async def test_record_from_async_code(audit):
    entry = await audit.record("acme", "supervisor@acme", "recording.read", "ses_1", bytes=3200, found=True)
    assert entry.detail == {"bytes": 3200, "found": True} and entry.seq == 1
    assert audit.verify().ok


def test_actor_for_a_principal():
    class P:
        tenant, role = "acme", "agent"

    class WithSubject(P):
        subject = "oidc|1234"

    class WithEmail(P):
        subject = "jane.doe@hospital.example"

    assert actor_for(P()) == "agent@acme" and actor_for(WithSubject()) == "oidc|1234"
    hashed = actor_for(WithEmail())
    assert hashed.startswith("sub-sha256:") and "jane" not in hashed and len(hashed) == 51
    assert actor_for(type("Long", (P,), {"subject": "x" * 256})()).startswith("sub-sha256:")


def test_bad_entries_are_refused(audit):
    with pytest.raises(AuditError, match="unknown audit action"):
        audit.append("acme", "agent@acme", "session.delete_everything", "ses_1")
    with pytest.raises(AuditError, match="actor"):
        audit.append("acme", "Jane Doe <jane@example.org>", "session.read", "ses_1")
    with pytest.raises(AuditError, match="small JSON"):
        audit.append("acme", "agent@acme", "session.read", "ses_1", {"text": "x" * 1000})  # content, not ids
    with pytest.raises(AuditError, match="small JSON"):
        audit.append("acme", "agent@acme", "session.read", "ses_1", {"obj": object()})
    with pytest.raises(AuditError, match="small JSON"):
        audit.append("acme", "agent@acme", "session.read", "ses_1", {"nan": float("nan")})
    with pytest.raises(AuditError, match="tenant"):
        audit.append("", "agent@acme", "session.read", "ses_1")
    assert audit.entries("acme") == [] and audit.verify().ok


def test_triggers_reject_update_and_delete(audit):
    fill(audit)
    assert_triggers_block(audit)
    assert audit.verify().ok and len(audit.entries("acme", limit=None)) == 5


def test_create_schema_is_idempotent(audit):
    fill(audit, n=2)
    audit.create_schema()
    AuditLog(audit.engine).create_schema()
    fill(audit, n=2)
    assert audit.verify().ok and audit.verify().tenants == {"acme": 4}


# ---------------------------------------------------------------- tampering


def test_an_edited_row_is_found(audit):
    fill(audit)
    bypass(audit, "UPDATE audit_log SET target = 'ses_9999' WHERE tenant = 'acme' AND seq = 3")
    result = audit.verify()
    assert not result.ok and result.first.tenant == "acme" and result.first.seq == 3
    assert "hash does not match" in result.first.reason


def test_an_edited_detail_or_time_is_found(audit):
    fill(audit)
    bypass(audit, """UPDATE audit_log SET detail = '{"events": 0, "via": "api"}' WHERE seq = 1""")
    assert audit.verify().first.seq == 1
    audit2 = AuditLog(audit.engine)
    bypass(audit2, """UPDATE audit_log SET detail = '{"events":0,"via":"watch"}' WHERE seq = 1""")  # restored
    assert audit2.verify().ok
    bypass(audit2, "UPDATE audit_log SET at = '2020-01-01 00:00:00.000000' WHERE seq = 4")
    assert audit2.verify().first.seq == 4


def test_a_forged_hash_breaks_the_next_link(audit):
    fill(audit)
    forged, _ = rehash_row(audit, "acme", 2, actor="someone@else")
    bypass(audit, f"UPDATE audit_log SET actor = 'someone@else', hash = '{forged}' WHERE seq = 2")
    first = audit.verify().first
    assert first.seq == 3 and "does not link" in first.reason


def test_a_forged_last_row_disagrees_with_the_head(audit):
    fill(audit)
    forged, _ = rehash_row(audit, "acme", 5, target="ses_other")
    bypass(audit, f"UPDATE audit_log SET target = 'ses_other', hash = '{forged}' WHERE seq = 5")
    first = audit.verify().first
    assert first.seq is None and "head" in first.reason


def test_a_deleted_row_is_found(audit):
    fill(audit)
    bypass(audit, "DELETE FROM audit_log WHERE seq = 2")
    first = audit.verify().first
    assert first.seq == 3 and "position 3 where 2 was expected" in first.reason


def test_rows_removed_from_the_end_are_found(audit):
    fill(audit)
    bypass(audit, "DELETE FROM audit_log WHERE seq >= 4")
    first = audit.verify().first
    assert first.seq is None and "ends at position 3 but its head is at 5" in first.reason


def test_reordered_rows_are_found(audit):
    fill(audit)
    bypass(
        audit,
        "UPDATE audit_log SET seq = 100 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 100",
    )
    first = audit.verify().first
    assert first.seq == 2 and "does not link" in first.reason


def test_a_consistent_rewrite_is_caught_by_an_anchor(audit, tmp_path):
    """Rewriting every hash from a row on (and the head) passes the chain check; a head kept elsewhere does not."""
    fill(audit)
    anchor = audit.heads()
    statements, prev = [], None
    for e in audit.entries("acme", limit=None, newest_first=False):
        if e.seq < 3:
            prev = e.hash
            continue
        target = "ses_rewritten" if e.seq == 3 else e.target
        digest, _ = rehash_row(audit, "acme", e.seq, target=target, prev_hash=prev)
        statements.append(
            f"UPDATE audit_log SET target = '{target}', prev_hash = '{prev}', hash = '{digest}' WHERE seq = {e.seq}"
        )
        prev = digest
    statements.append(f"UPDATE audit_heads SET hash = '{prev}' WHERE tenant = 'acme'")
    bypass(audit, *statements)
    assert audit.verify().ok  # consistent: only an anchor catches it
    result = audit.verify(anchor=anchor)
    assert not result.ok and result.first.seq == 5 and "anchored" in result.first.reason
    assert not audit.verify(anchor={"acme": (9, "f" * 64)}).ok  # a position that is gone


def test_a_missing_head_is_found(audit):
    fill(audit)
    bypass(audit, "DELETE FROM audit_heads")
    assert "no head" in audit.verify().first.reason


# ---------------------------------------------------------------- concurrency and tenants


def test_concurrent_writers_keep_one_unbroken_chain(url):
    check_concurrent_chain(url)


def test_tenants_never_see_each_others_rows(audit):
    fill(audit, "acme", 4)
    fill(audit, "beta", 3)
    assert {e.tenant for e in audit.entries("acme", limit=None)} == {"acme"}
    assert audit.entries("acme", target="ses_0001")[0].tenant == "acme"
    assert audit.heads("beta").keys() == {"beta"}
    bypass(audit, "UPDATE audit_log SET target = 'x' WHERE tenant = 'beta' AND seq = 2")
    assert audit.verify("acme").ok and audit.verify("acme").tenants == {"acme": 4}  # verified on its own
    result = audit.verify()
    assert not result.ok and [b.tenant for b in result.broken] == ["beta"] and "acme" in result.heads


# ---------------------------------------------------------------- CLI


def run_cli(*args: str, env_url: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "SWITCHBOARD_DATABASE_URL": env_url, "HOME": "/tmp"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.audit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_verify_show_heads(audit, url, tmp_path, capsys):
    from pipelines.audit import main

    assert main(["--database-url", url, "verify"]) == 0
    assert "no audit entries" in capsys.readouterr().out
    fill(audit, "acme", 3)
    fill(audit, "beta", 1)
    assert main(["--database-url", url, "heads"]) == 0
    heads = json.loads(capsys.readouterr().out)
    assert heads["acme"]["seq"] == 3
    (tmp_path / "anchor.json").write_text(json.dumps(heads))
    assert (
        main(["--database-url", url, "show", "--tenant", "acme", "--limit", "2", "--actor", "ops@cli"]) == 0
    )
    out = capsys.readouterr().out
    assert "ses_0002" in out and "ses_0001" in out and "ses_0000" not in out and "beta" not in out
    assert audit.entries("acme", limit=1)[0].action == "audit.read"  # reading the trail is audited
    assert main(["--database-url", url, "verify", "--anchor", str(tmp_path / "anchor.json")]) == 0
    bypass(audit, "UPDATE audit_log SET actor = 'x@y' WHERE tenant = 'acme' AND seq = 2")
    assert main(["--database-url", url, "verify", "--tenant", "beta"]) == 0
    assert main(["--database-url", url, "verify"]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED  tenant acme: seq 2" in out and "ok        tenant beta" in out


def test_cli_as_a_module_reads_the_url_from_settings(audit, url):
    fill(audit, "acme", 2)
    ok = run_cli("verify", env_url=url)
    assert ok.returncode == 0 and "intact: 2 rows" in ok.stdout, ok.stderr
    bypass(audit, "DELETE FROM audit_log WHERE seq = 1")
    bad = run_cli("verify", "--tenant", "acme", env_url=url)
    assert bad.returncode == 1 and "TAMPERED" in bad.stdout
    helped = run_cli("--help", env_url=url)
    assert helped.returncode == 0 and "verify" in helped.stdout and "show" in helped.stdout


def test_cli_help(capsys):
    from pipelines.audit import main

    for args in (["--help"], ["verify", "--help"], ["show", "--help"], ["heads", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 0
    assert "--anchor" in capsys.readouterr().out


def test_missing_database_table_reads_as_empty(tmp_path):
    log = AuditLog(f"sqlite:///{tmp_path / 'empty.db'}")
    assert log.verify().ok and log.entries("acme") == [] and log.heads() == {}
    assert not log.verify(anchor={"acme": (1, "a" * 64)}).ok  # a trail that existed is gone
    with log.engine.connect() as conn:
        assert "audit_log" not in sqlalchemy.inspect(conn).get_table_names()  # verify created nothing
        assert conn.execute(text("SELECT 1")).scalar() == 1
    log.close()
