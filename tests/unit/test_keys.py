"""Envelope encryption at rest: per-tenant data keys wrapped by a master key, on a real SQLite store and real
recording files. The tests read the raw rows and files, move ciphertext between tenants and rotate keys."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy

from pipelines.keys import PREFIX, KeyError_, KeyRing, main, tenant_keys
from pipelines.recordings import RecordingStore
from pipelines.storage import SessionStore

pytestmark = pytest.mark.unit

SECRET_TEXT = "my account number ends in 7731 and I live on Elm Street"


@pytest.fixture
async def store(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 'sb.db'}")
    store.master = os.urandom(32)  # type: ignore[attr-defined]
    store.keyring = KeyRing(store.engine, [store.master])  # type: ignore[attr-defined]
    await store.start()
    yield store
    await store.close()


def write_turn(store: SessionStore, tenant: str, session_id: str, uid: str, seq: int, text: str) -> None:
    store.create_session(session_id, tenant, "cust-1", "chat")
    store.add_utterance(utterance_id=uid, session_id=session_id, tenant=tenant, seq=seq, speaker="customer", text=text)
    store.add_event(
        session_id=session_id,
        tenant=tenant,
        seq=seq,
        payload={"type": "transcript.final", "utterance_id": uid, "text": text, "speaker": "customer"},
    )


def raw_rows(store: SessionStore, table: str) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sqlalchemy.text(f"select * from {table}"))]


async def test_transcripts_and_events_are_sealed_at_rest_and_open_for_their_tenant(store):
    write_turn(store, "acme", "ses-1", "utt-1", 0, SECRET_TEXT)
    await store.flush()
    (utt,) = raw_rows(store, "utterances")
    (evt,) = raw_rows(store, "events")
    assert utt["text"].startswith(PREFIX) and "Elm" not in utt["text"]
    payload = json.loads(evt["payload"]) if isinstance(evt["payload"], str) else evt["payload"]
    assert set(payload) == {"type", "sealed"} and "Elm" not in json.dumps(payload)
    assert evt["type"] == "transcript.final" and evt["utterance_id"] == "utt-1"  # still queryable
    (line,) = await store.transcript("acme", "ses-1")
    assert line["text"] == SECRET_TEXT
    (event,) = await store.session_events("acme", "ses-1")
    assert event == {"type": "transcript.final", "utterance_id": "utt-1", "text": SECRET_TEXT, "speaker": "customer"}
    # the key is wrapped: the stored data key is not the key that decrypts
    (key_row,) = raw_rows(store, "tenant_keys")
    assert key_row["tenant"] == "acme" and key_row["version"] == 1 and len(key_row["wrapped"]) > 40


async def test_a_sealed_value_moved_to_another_tenant_or_row_does_not_open(store):
    write_turn(store, "acme", "ses-a", "utt-a", 0, SECRET_TEXT)
    write_turn(store, "globex", "ses-g", "utt-g", 0, "hello")
    await store.flush()
    with store.engine.begin() as conn:
        sealed = conn.execute(sqlalchemy.text("select text from utterances where id = 'utt-a'")).scalar()
        conn.execute(sqlalchemy.text("update utterances set text = :t where id = 'utt-g'"), {"t": sealed})
    with pytest.raises(KeyError_, match="does not verify"):
        await store.transcript("globex", "ses-g")
    # and within one tenant, a value moved to another row fails too (bound to session and row)
    write_turn(store, "acme", "ses-b", "utt-b", 0, "other")
    await store.flush()
    with store.engine.begin() as conn:
        conn.execute(sqlalchemy.text("update utterances set text = :t where id = 'utt-b'"), {"t": sealed})
    with pytest.raises(KeyError_):
        await store.transcript("acme", "ses-b")


async def test_data_key_rotation_keeps_old_rows_readable(store):
    ring = store.keyring
    write_turn(store, "acme", "ses-1", "utt-1", 0, "before rotation")
    await store.flush()
    assert ring.rotate("acme") == 2
    write_turn(store, "acme", "ses-2", "utt-2", 0, "after rotation")
    await store.flush()
    versions = {r["id"]: r["text"].split(":")[1] for r in raw_rows(store, "utterances")}
    assert versions == {"utt-1": "1", "utt-2": "2"}
    assert (await store.transcript("acme", "ses-1"))[0]["text"] == "before rotation"
    assert (await store.transcript("acme", "ses-2"))[0]["text"] == "after rotation"
    # another process (its own cache, same master key) reads both and writes with the new version
    other = KeyRing(store.engine, [store.master])
    assert other.active("acme")[0] == 2
    assert other.open_text("acme", ring.seal_text("acme", "x", b"r"), b"r") == "x"


async def test_master_key_rotation_rewraps_without_touching_data(tmp_path):
    old, new = os.urandom(32), os.urandom(32)
    store = SessionStore(f"sqlite:///{tmp_path / 'sb.db'}")
    store.keyring = KeyRing(store.engine, [old])
    await store.start()
    try:
        write_turn(store, "acme", "ses-1", "utt-1", 0, SECRET_TEXT)
        await store.flush()
        before = raw_rows(store, "utterances")
        # step 1: the new master key first, the old one still configured; rewrap
        rotating = KeyRing(store.engine, [new, old])
        assert rotating.rewrap() == 1 and rotating.rewrap() == 0
        assert raw_rows(store, "utterances") == before  # the data was not touched
        # step 2: the old master key is gone; everything still opens
        store.keyring = KeyRing(store.engine, [new])
        assert (await store.transcript("acme", "ses-1"))[0]["text"] == SECRET_TEXT
        # a process still holding only the old master key cannot unwrap, and says what to configure
        with pytest.raises(KeyError_, match="OLD_MASTER_KEY_FILES"):
            KeyRing(store.engine, [old]).key("acme", 1)
        with pytest.raises(KeyError_, match="not configured"):
            KeyRing(store.engine, [os.urandom(32)]).key("acme", 1)
    finally:
        await store.close()


def test_concurrent_first_use_creates_one_data_key(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 'sb.db'}")
    store.create_schema()
    master = os.urandom(32)
    rings = [KeyRing(store.engine, [master]) for _ in range(6)]
    sealed: list[str] = []

    def first_write(ring: KeyRing) -> None:
        sealed.append(ring.seal_text("newco", "hi", b"x"))

    threads = [threading.Thread(target=first_write, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.engine.connect() as conn:
        assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(tenant_keys)).scalar() == 1
    assert all(rings[0].open_text("newco", s, b"x") == "hi" for s in sealed)
    store.engine.dispose()


async def test_recordings_use_the_tenant_data_key_and_old_ones_still_play(tmp_path, store):
    audio = (np.sin(np.linspace(0, 200, 16000)) * 0.3).astype(np.float32)
    legacy = RecordingStore(str(tmp_path / "rec"), tmp_path / "recording.key", store)
    rec = legacy.open("acme", "ses-old", 1, 0)
    rec.write_channel(0, audio)
    await rec.close()
    current = RecordingStore(str(tmp_path / "rec"), tmp_path / "recording.key", store, keyring=store.keyring)
    rec = current.open("acme", "ses-new", 1, 0)
    assert rec.key_version == 1
    rec.write_channel(0, audio)
    await rec.close()
    raw = await asyncio.to_thread(Path(rec.uri).read_bytes)
    assert b'"key_version": 1' in raw and audio.tobytes()[:64] not in raw
    for session in ("ses-old", "ses-new"):
        wav = await current.read_wav("acme", session)
        assert wav is not None and len(wav) > 32000
    # another tenant cannot read it, even by asking for the path's session id
    assert await current.read_wav("globex", "ses-new") is None


def test_cli_help_and_status(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "rotate" in capsys.readouterr().out
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    assert main(["rotate", "--tenant", "acme"]) == 0
    assert main(["rotate", "--tenant", "acme"]) == 0
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "acme: data key v2 is active" in out and "acme\tv1" in out and "acme\tv2" in out
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0
