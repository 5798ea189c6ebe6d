"""Retention on a real SQLite file, with sessions written through the real SessionStore and encrypted recordings
through the real RecordingStore: the purge deletes exactly the sessions past retention with every row and file,
keeps what a legal hold covers, erasure deletes one customer's everything and nobody else's, and every change
is in the audit trail. The same scenarios run on PostgreSQL in tests/integration/test_audit_postgres.py."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import numpy as np
import pytest
import sqlalchemy

import pipelines.storage as storage
from pipelines.audit import AuditLog
from pipelines.recordings import RecordingStore
from pipelines.retention import (
    DEFAULT_RETENTION_DAYS,
    LegalHoldError,
    Retention,
    RetentionPolicy,
    main,
)
from pipelines.storage import SessionStore

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
SESSION_TABLES = (
    "utterances",
    "events",
    "escalations",
    "review_items",
    "session_analytics",
    "channel_threads",
    "recordings",
)


# ---------------------------------------------------------------- a store with real data (shared with PostgreSQL)


@contextmanager
def clock(at: datetime):
    """The store stamps rows with ``storage._now()``: hold it at ``at`` while rows are written."""
    saved = storage._now
    storage._now = lambda: at
    try:
        yield
    finally:
        storage._now = saved


@dataclass
class World:
    store: SessionStore
    recordings: RecordingStore
    url: str
    rec_url: str

    async def session(
        self,
        sid: str,
        tenant: str,
        customer: str,
        at: datetime,
        *,
        ended: bool = True,
        recording: bool = True,
        last_activity: datetime | None = None,
    ) -> None:
        """One session with a row in every session table and (voice) an encrypted recording file."""
        s = self.store
        with clock(at):
            s.create_session(sid, tenant, customer, "voice" if recording else "sms")
            for i, speaker in enumerate(("customer", "agent")):
                s.add_utterance(
                    utterance_id=f"{sid}_u{i}",
                    session_id=sid,
                    tenant=tenant,
                    seq=i,
                    speaker=speaker,
                    text=f"[PERSON] line {i}",
                )
                s.add_event(
                    session_id=sid,
                    tenant=tenant,
                    seq=i,
                    payload={"type": "transcript.final", "utterance_id": f"{sid}_u{i}", "text": "..."},
                )
            s.add_escalation(
                session_id=sid,
                tenant=tenant,
                utterance_id=f"{sid}_u0",
                rule="angry",
                reason="r",
                queue="supervisor",
                priority="high",
            )
            s.add_review_item(
                session_id=sid,
                tenant=tenant,
                utterance_id=f"{sid}_u1",
                reason="pii_check_failed",
                nonce=b"n" * 12,
                ciphertext=b"sealed",
            )
            summary = {"quality": {"score": 0.8}, "duration_s": 30.0, "escalations": 1, "sentiment_avg": 0.1}
            s.add_session_analytics(
                session_id=sid, tenant=tenant, customer_id=customer, channel="voice", summary=summary
            )
            await s.link_thread(tenant, "sms", f"key-{sid}", sid)
            if recording:
                recorder = self.recordings.open(tenant, sid, 1, 0)
                recorder.write_channel(0, np.linspace(-0.5, 0.5, 24000, dtype=np.float32))
                await recorder.close()
            if ended:
                s.end_session(sid, tenant)
        if last_activity is not None:  # a resumed conversation: new turns long after it began
            with clock(last_activity):
                s.reopen_session(sid, tenant)
                s.add_utterance(
                    utterance_id=f"{sid}_u9",
                    session_id=sid,
                    tenant=tenant,
                    seq=9,
                    speaker="customer",
                    text="again",
                )
        await s.flush()

    def counts(self, sid: str) -> dict[str, int]:
        """Rows of one session per table (``sessions`` included)."""
        with self.store.engine.connect() as conn:
            out = {
                "sessions": conn.execute(
                    sqlalchemy.text("SELECT count(*) FROM sessions WHERE id = :s"), {"s": sid}
                ).scalar()
            }
            for name in SESSION_TABLES:
                out[name] = conn.execute(
                    sqlalchemy.text(f"SELECT count(*) FROM {name} WHERE session_id = :s"), {"s": sid}
                ).scalar()
        return out

    def files(self, tenant: str, sid: str) -> list[str]:
        fs, path = fsspec.core.url_to_fs(f"{self.rec_url}/{tenant}/{sid}")
        return fs.find(path) if fs.exists(path) else []

    def retention(self, **kw) -> Retention:
        return Retention(self.store.engine, recordings=self.recordings, **kw)


async def make_world(url: str, tmp_path: Path, rec_url: str | None = None) -> World:
    store = SessionStore(url)
    await store.start()
    rec_url = rec_url or str(tmp_path / "recordings")
    return World(store, RecordingStore(rec_url, tmp_path / "recording.key", store), url, rec_url)


def gone(world: World, tenant: str, sid: str) -> bool:
    return all(n == 0 for n in world.counts(sid).values()) and world.files(tenant, sid) == []


def whole(world: World, tenant: str, sid: str, recording: bool = True) -> bool:
    counts = world.counts(sid)
    return all(
        counts[t] >= 1 for t in ("sessions", *SESSION_TABLES) if t != "recordings" or recording
    ) and len(world.files(tenant, sid)) == int(recording)


async def purge_scenario(world: World) -> None:
    """Old, new, held, resumed sessions in two tenants with different retention."""
    old, recent = NOW - 8 * YEAR, NOW - timedelta(days=1)
    await world.session("ses_old_1", "acme", "c1", old)
    await world.session("ses_old_2", "acme", "c2", old, recording=False)
    await world.session("ses_old_3", "acme", "c2", old - YEAR, ended=False)  # never ended: its start counts
    await world.session("ses_new", "acme", "c1", recent)
    await world.session("ses_held_c", "acme", "c3", old)  # customer c3 is held
    await world.session("ses_held_s", "acme", "c1", old)  # this session is held
    await world.session("ses_resumed", "acme", "c4", old, last_activity=recent)
    await world.session("ses_b_old", "beta", "c1", NOW - timedelta(days=40))
    await world.session("ses_b_new", "beta", "c1", NOW - timedelta(days=10))
    # a part written but never linked in `recordings` (the process died mid-call): still customer data
    fs, path = fsspec.core.url_to_fs(f"{world.rec_url}/acme/ses_old_2/part-0001.sbrec")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        fh.write(b"SBREC1\n...")

    retention = world.retention(batch_size=2)
    audit = retention.audit
    retention.set_policy("beta", 30, "admin@beta")
    hold_c = retention.place_hold("acme", "customer", "c3", "litigation 2030-17", "legal@acme")
    retention.place_hold("acme", "session", "ses_held_s", "complaint", "legal@acme")
    beta_hold = retention.place_hold("beta", "customer", "c3", "other tenant's hold", "legal@beta")

    dry = retention.purge(NOW, dry_run=True)
    assert (dry.tenants["acme"].due, dry.tenants["acme"].held, dry.tenants["beta"].due) == (3, 2, 1)
    assert dry.sessions == 0 and whole(world, "acme", "ses_old_1")

    seen: list[tuple[str, int, int]] = []
    report = retention.purge(NOW, progress=lambda t, done, total: seen.append((t, done, total)))
    assert report.tenants["acme"].sessions == 3 and report.tenants["beta"].sessions == 1
    assert report.held == 2 and report.tenants["acme"].days == DEFAULT_RETENTION_DAYS
    assert report.tenants["acme"].files == 3  # ses_old_1 and ses_old_3 parts, ses_old_2 orphan part
    assert report.tenants["acme"].rows["utterances"] == 6 and report.tenants["acme"].rows["sessions"] == 3
    assert ("acme", 2, 3) in seen and ("acme", 3, 3) in seen  # batches of two

    for sid in ("ses_old_1", "ses_old_2", "ses_old_3"):
        assert gone(world, "acme", sid), (sid, world.counts(sid), world.files("acme", sid))
    assert gone(world, "beta", "ses_b_old")
    for tenant, sid in [
        ("acme", "ses_new"),
        ("acme", "ses_held_c"),
        ("acme", "ses_held_s"),
        ("beta", "ses_b_new"),
    ]:
        assert whole(world, tenant, sid), sid
    assert world.counts("ses_resumed")["utterances"] == 3 and world.files("acme", "ses_resumed")
    assert await world.recordings.read_wav("acme", "ses_held_c") is not None  # kept audio still decrypts

    purges = [
        e for e in audit.entries("acme", limit=None, newest_first=False) if e.action == "retention.purge"
    ]
    assert [e.detail["sessions"] for e in purges] == [2, 1]
    assert purges[0].actor == "system@retention" and purges[0].target == "tenant:acme"
    assert (
        sum(e.detail["rows"]["events"] for e in purges) == 6 and sum(e.detail["files"] for e in purges) == 3
    )
    assert "[PERSON]" not in str([e.detail for e in purges])  # counts, never content
    assert [e.action for e in audit.entries("beta", limit=None, newest_first=False)] == [
        "retention.policy",
        "retention.hold",
        "retention.purge",
    ]
    assert audit.verify().ok

    # a second run finds nothing; releasing the hold lets the next one delete
    assert retention.purge(NOW).sessions == 0
    retention.release_hold("acme", hold_c, "legal@acme")
    assert retention.purge(NOW).tenants["acme"].sessions == 1 and gone(world, "acme", "ses_held_c")
    assert whole(world, "acme", "ses_held_s")
    assert [h.id for h in retention.holds("beta")] == [beta_hold]
    assert audit.verify().ok


async def erase_scenario(world: World) -> None:
    await world.session("ses_c1_a", "acme", "c1", NOW - 2 * YEAR)
    await world.session("ses_c1_b", "acme", "c1", NOW - timedelta(days=3), ended=False)
    await world.session("ses_c1_c", "acme", "c1", NOW - timedelta(days=2), recording=False)
    await world.session("ses_c2", "acme", "c2", NOW - timedelta(days=3))
    await world.session(
        "ses_beta_c1", "beta", "c1", NOW - timedelta(days=3)
    )  # same customer id, other tenant
    # an analytics row whose session row is gone: keyed by the customer only
    world.store.add_session_analytics(
        session_id="ses_lost",
        tenant="acme",
        customer_id="c1",
        channel="chat",
        summary={"quality": {"score": 0.5}, "duration_s": 1.0, "escalations": 0},
    )
    await world.store.flush()
    retention = world.retention(batch_size=2)
    audit = retention.audit

    hold = retention.place_hold("acme", "session", "ses_c1_b", "dispute", "legal@acme")
    retention.place_hold("beta", "customer", "c1", "beta's own case", "legal@beta")  # must not block acme
    with pytest.raises(LegalHoldError, match=f"legal hold {hold}") as refused:
        retention.erase_customer("acme", "c1", "dpo@acme")
    assert refused.value.holds == [hold] and refused.value.code == "legal_hold"
    assert whole(world, "acme", "ses_c1_a") and whole(world, "acme", "ses_c1_b")
    last = audit.entries("acme", limit=1)[0]
    assert (
        last.action == "retention.erase_refused"
        and last.detail["holds"] == [hold]
        and last.actor == "dpo@acme"
    )

    retention.release_hold("acme", hold, "legal@acme")
    report = retention.erase_customer("acme", "c1", "dpo@acme")
    assert report.sessions == 3 and report.files == 2 and report.rows["session_analytics"] == 4
    for sid in ("ses_c1_a", "ses_c1_b", "ses_c1_c"):
        assert gone(world, "acme", sid), sid
    assert whole(world, "acme", "ses_c2") and whole(world, "beta", "ses_beta_c1")
    with world.store.engine.connect() as conn:
        left = conn.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM session_analytics WHERE tenant = 'acme' AND customer_id = 'c1'"
            )
        ).scalar()
    assert left == 0
    erased = [
        e for e in audit.entries("acme", limit=None, newest_first=False) if e.action == "retention.erase"
    ]
    assert [e.detail["sessions"] for e in erased] == [2, 1] and erased[-1].detail["done"]
    assert {e.target for e in erased} == {"customer:c1"} and erased[0].detail["request"] == report.request
    assert audit.verify().ok

    # a tenant-wide hold refuses any erasure in that tenant (and it is audited)
    retention.place_hold("acme", "tenant", None, "regulator inquiry", "legal@acme")
    with pytest.raises(LegalHoldError):
        retention.erase_customer("acme", "c2", "dpo@acme")
    assert whole(world, "acme", "ses_c2")
    # beta's c1 is held in beta: refused there
    with pytest.raises(LegalHoldError):
        retention.erase_customer("beta", "c1", "dpo@beta")
    assert whole(world, "beta", "ses_beta_c1") and audit.verify().ok


# ---------------------------------------------------------------- tests


@pytest.fixture
async def world(tmp_path: Path):
    w = await make_world(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    yield w
    await w.store.close()


async def test_purge_deletes_exactly_what_is_past_retention(world):
    await purge_scenario(world)


async def test_erase_deletes_one_customer_and_respects_holds(world):
    await erase_scenario(world)


async def test_recordings_on_any_fsspec_url(tmp_path):
    w = await make_world(
        f"sqlite:///{tmp_path / 'store.db'}", tmp_path, rec_url=f"memory://rec-{id(tmp_path)}"
    )
    try:
        await w.session("ses_a", "acme", "c1", NOW - 8 * YEAR)
        await w.session("ses_b", "acme", "c1", NOW)
        assert len(w.files("acme", "ses_a")) == 1
        report = w.retention().purge(NOW)
        assert report.files == 1 and gone(w, "acme", "ses_a") and whole(w, "acme", "ses_b")
    finally:
        await w.store.close()


async def test_erasure_reaches_other_stores_through_erasers(world):
    """A store outside the database (the Feast online features, say) is erased with the last batch; when it
    fails, that batch rolls back and the request can simply be repeated."""
    await world.session("ses_c1", "acme", "c1", NOW)
    features = {("acme", "c1"): {"sentiment_avg": 0.2}, ("beta", "c1"): {"sentiment_avg": 0.9}}
    failing = {"on": True}

    def forget(tenant: str, customer_id: str) -> int:
        if failing["on"]:
            raise OSError("feature store unreachable")
        return 1 if features.pop((tenant, customer_id), None) is not None else 0

    retention = world.retention(erasers={"features": forget})
    with pytest.raises(OSError):
        retention.erase_customer("acme", "c1", "dpo@acme")
    assert whole(world, "acme", "ses_c1") and retention.audit.entries("acme") == []  # rolled back, no entry
    failing["on"] = False
    report = retention.erase_customer("acme", "c1", "dpo@acme")
    assert report.external == {"features": 1} and report.files == 1 and gone(world, "acme", "ses_c1")
    assert features == {("beta", "c1"): {"sentiment_avg": 0.9}}
    assert retention.audit.entries("acme", limit=1)[0].detail["external"] == {"features": 1}
    assert retention.audit.verify().ok


def test_policy_file_table_and_bounds(tmp_path, world):
    path = tmp_path / "retention.yaml"
    path.write_text("default_days: 3650\ntenants:\n  beta: 90\n")
    policy = RetentionPolicy.from_yaml(path)
    retention = world.retention(policy=policy)
    assert retention.days_for("acme") == 3650 and retention.days_for("beta") == 90
    assert retention.set_policy("beta", 400, "admin@beta") == 90
    assert retention.days_for("beta") == 400  # the table wins over the file
    assert retention.set_policy("beta", 500, "admin@beta") == 400
    entries = retention.audit.entries("beta", limit=None, newest_first=False)
    assert [(e.action, e.detail) for e in entries] == [
        ("retention.policy", {"days": 400, "previous": 90}),
        ("retention.policy", {"days": 500, "previous": 400}),
    ]
    for bad in (0, -1, 40000):
        with pytest.raises(ValueError, match="whole number of days"):
            retention.set_policy("beta", bad, "admin@beta")
    with pytest.raises(ValueError):
        RetentionPolicy(tenants={"x": 0})
    assert RetentionPolicy().default_days == DEFAULT_RETENTION_DAYS == 2557


def test_holds_are_validated_listed_and_released_once(world):
    retention = world.retention()
    with pytest.raises(ValueError, match="scope"):
        retention.place_hold("acme", "galaxy", "x", "why", "legal@acme")
    with pytest.raises(ValueError, match="reason"):
        retention.place_hold("acme", "customer", "c1", "  ", "legal@acme")
    with pytest.raises(ValueError, match="target"):
        retention.place_hold("acme", "customer", None, "why", "legal@acme")
    first = retention.place_hold("acme", "customer", "c1", "case 1", "legal@acme")
    tenant_hold = retention.place_hold("acme", "tenant", None, "case 2", "legal@acme")
    assert [(h.scope, h.target) for h in retention.holds("acme")] == [("customer", "c1"), ("tenant", "acme")]
    with pytest.raises(ValueError, match="no active legal hold"):
        retention.release_hold("beta", first, "legal@beta")  # another tenant's hold
    released = retention.release_hold("acme", first, "legal@acme")
    assert not released.active and released.released_by == "legal@acme"
    with pytest.raises(ValueError, match="no active legal hold"):
        retention.release_hold("acme", first, "legal@acme")
    assert [h.id for h in retention.holds("acme")] == [tenant_hold]
    assert len(retention.holds("acme", active_only=False)) == 2
    hold_entry = retention.audit.entries("acme", limit=None, newest_first=False)[0]
    assert hold_entry.target == "customer:c1" and "case 1" not in str(
        hold_entry.detail
    )  # the reason stays private


async def test_scheduled_purge_takes_turns_between_replicas(world):
    await world.session("ses_old", "acme", "c1", NOW - 8 * YEAR)
    one, two = world.retention(), world.retention()
    report = one.purge_if_due(86400, now=NOW)
    assert report is not None and report.sessions == 1
    assert two.purge_if_due(86400, now=NOW + timedelta(hours=1)) is None  # done within the interval
    assert one.purge_if_due(86400, now=NOW + timedelta(hours=2)) is None
    assert two.purge_if_due(86400, now=NOW + timedelta(days=1, seconds=1)) is not None


async def test_run_forever_purges_and_stops_when_cancelled(world, caplog):
    await world.session("ses_old", "acme", "c1", datetime.now(UTC) - 8 * YEAR)
    await world.session("ses_new", "acme", "c1", datetime.now(UTC))
    retention = world.retention()
    task = asyncio.create_task(retention.run_forever(3600, check_s=0.05))
    for _ in range(200):
        if world.counts("ses_old")["sessions"] == 0:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(world, "acme", "ses_old") and whole(world, "acme", "ses_new")
    assert [e.action for e in retention.audit.entries("acme", limit=None)] == ["retention.purge"]


async def test_run_forever_survives_a_failing_database(tmp_path, caplog):
    retention = Retention(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")  # the folder does not exist
    task = asyncio.create_task(retention.run_forever(3600, check_s=0.05))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "retention purge failed" in caplog.text
    retention.close()


# ---------------------------------------------------------------- CLI


async def test_cli(world, capsys):
    await world.session("ses_old", "acme", "c1", datetime.now(UTC) - 8 * YEAR)
    await world.session("ses_c9", "acme", "c9", datetime.now(UTC))
    base = ["--database-url", world.url, "--recordings-url", world.rec_url, "--actor", "ops@acme"]
    assert main([*base, "policy", "--tenant", "acme"]) == 0
    assert "2557 days" in capsys.readouterr().out
    assert main([*base, "purge", "--dry-run"]) == 0
    assert (
        "1 sessions would be deleted" in capsys.readouterr().out and world.counts("ses_old")["sessions"] == 1
    )
    assert (
        main([*base, "hold", "--tenant", "acme", "--scope", "customer", "--target", "c9", "--reason", "case"])
        == 0
    )
    assert "legal hold 1 placed" in capsys.readouterr().out
    assert main([*base, "holds", "--tenant", "acme"]) == 0
    assert "c9" in capsys.readouterr().out
    assert main([*base, "erase", "--tenant", "acme", "--customer", "c9"]) == 1
    assert "refused" in capsys.readouterr().err and world.counts("ses_c9")["sessions"] == 1
    assert main([*base, "release", "--tenant", "acme", "--id", "1"]) == 0
    assert main([*base, "erase", "--tenant", "acme", "--customer", "c9"]) == 0
    assert "1 sessions erased" in capsys.readouterr().out and gone(world, "acme", "ses_c9")
    assert main([*base, "purge"]) == 0
    out, err = capsys.readouterr()
    assert "1 sessions deleted" in out and "purging acme" in err  # the progress bar
    assert gone(world, "acme", "ses_old")
    assert main([*base, "policy", "--tenant", "acme", "--days", "0"]) == 2
    assert main([*base, "policy", "--tenant", "acme", "--days", "3650"]) == 0
    actions = [e.action for e in AuditLog(world.store.engine).entries("acme", limit=None, newest_first=False)]
    assert actions == [
        "retention.hold",
        "retention.erase_refused",
        "retention.release",
        "retention.erase",
        "retention.purge",
        "retention.policy",
    ]


def test_cli_help(capsys):
    for args in (
        ["--help"],
        *([c, "--help"] for c in ("purge", "hold", "release", "holds", "erase", "policy")),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        assert exit_.value.code == 0
    assert "--dry-run" in capsys.readouterr().out
