"""Real audio through the real Serve app: websocket voice sessions, Twilio Media Streams, recordings."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf
import sqlalchemy
import websockets
from scipy.signal import resample_poly

from models.asr.metrics import wer
from pipelines.audio import mulaw_encode
from pipelines.samples import two_speaker_call
from serve.client import SessionClient
from tests.integration.conftest import stored

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAME = 640


@pytest.fixture(scope="module")
def call():
    return two_speaker_call(
        [
            ("agent", "Thank you for calling Maple Ridge Health. How can I help you today?"),
            ("customer", "I need a refill of my blood pressure prescription sent to my pharmacy."),
            ("agent", "Of course, I can send that request to your doctor right away."),
        ]
    )


async def stream_call(c: SessionClient, pcm: bytes, pace: float = 4.0) -> list[dict]:
    """Send audio at `pace` x real time, end the session, return every event."""
    events: list[dict] = []

    async def receive() -> None:
        while True:
            event = await c.recv(wait_s=300)
            events.append(event)
            if event["type"] == "session.ended":
                return

    receiver = asyncio.create_task(receive())
    for i in range(0, len(pcm), FRAME):
        await c.send(pcm[i : i + FRAME])
        await asyncio.sleep(0.02 / pace)
    await c.send({"type": "session.end"})
    await asyncio.wait_for(receiver, 300)
    return events


async def test_voice_session_over_websocket(app, call, pg_session_database):
    async with SessionClient(app.ws_url, app.token) as c:
        started = await c.start(
            channel="voice", audio={"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
        )
        assert started["channel"] == "voice"
        events = await stream_call(c, call.pcm16())
        session_id = c.session_id
    finals = [e for e in events if e["type"] == "transcript.final"]
    hyp = " ".join(f["text"] for f in finals)
    assert wer(" ".join(t.text for t in call.turns), hyp) <= 0.15, hyp
    assert len({f["speaker"] for f in finals}) == 2, "two voices, two speaker labels"
    assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
    assert all(f["latency_ms"] > 0 and 0 < f["confidence"] <= 1 for f in finals)
    types = [e["type"] for e in events]
    assert "sentiment" in types and "assist.suggestion" in types and types[-1] == "session.ended"

    # the recording is stored encrypted, linked to the session, and served only to its tenant
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.get(
            f"{app.http_url}/v1/sessions/{session_id}/recording",
            headers={"Authorization": f"Bearer {app.token}"},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        assert rate == 16000 and abs(audio.size - call.audio.size) < 1600
        denied = await http.get(
            f"{app.http_url}/v1/sessions/{session_id}/recording", headers={"Authorization": "Bearer nope"}
        )
        assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
        missing = await http.get(
            f"{app.http_url}/v1/sessions/ses_nope/recording", headers={"Authorization": f"Bearer {app.token}"}
        )
        assert missing.status_code == 404


async def test_stereo_voice_uses_channels_as_speakers(app, call):
    customer = np.concatenate([np.zeros(8000, np.float32), call.audio])
    agent = np.zeros_like(customer)
    pcm = (np.stack([customer, agent], axis=1) * 32767).astype("<i2").tobytes()
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(channel="voice", audio={"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 2})
        events = []

        async def receive() -> None:
            while (e := await c.recv(wait_s=300))["type"] != "session.ended":
                events.append(e)

        receiver = asyncio.create_task(receive())
        for i in range(0, len(pcm), FRAME * 2):
            await c.send(pcm[i : i + FRAME * 2])
            await asyncio.sleep(0.005)
        await c.send({"type": "session.end"})
        await asyncio.wait_for(receiver, 300)
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert finals and {f["speaker"] for f in finals} == {"customer"}


async def test_bad_audio_is_refused_and_nothing_accepted_is_lost(app, call):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(channel="voice", audio={"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1})
        pcm = call.pcm16()
        half = (len(pcm) // 2) // FRAME * FRAME
        for i in range(0, half, FRAME):
            await c.send(pcm[i : i + FRAME])
        await c.send(b"\x01\x02\x03")  # truncated sample
        await c.send(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a WAV container, not raw PCM
        errors = []
        while len(errors) < 2:
            e = await c.recv(wait_s=120)
            if e["type"] == "error":
                errors.append(e)
        assert [e["code"] for e in errors] == ["bad_audio_format", "bad_audio_format"]
        events = await stream_call(c, pcm[half:])
    hyp = " ".join(e["text"] for e in events if e["type"] == "transcript.final")
    assert wer(" ".join(t.text for t in call.turns), hyp) <= 0.2, hyp


async def test_twilio_media_stream(app, call, pg_session_database):
    ws_url = app.ws_url.replace("/v1/sessions", f"/v1/twilio?token={app.token}")
    # 8 kHz μ-law, as telephony sends it: band-limited before sampling (a plain [::2] would alias)
    narrow = np.clip(resample_poly(call.audio, 1, 2), -1.0, 1.0)
    ulaw = mulaw_encode((narrow * 32767).astype(np.int16))
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "start": {
                        "streamSid": "MZ0001",
                        "callSid": "CA-test-0001",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        "customParameters": {"customer_id": "twilio-cust-7"},
                    },
                    "streamSid": "MZ0001",
                }
            )
        )
        for n, i in enumerate(range(0, len(ulaw), 160)):
            payload = base64.b64encode(ulaw[i : i + 160]).decode()
            await ws.send(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(n + 2),
                        "media": {
                            "track": "inbound",
                            "chunk": str(n + 1),
                            "timestamp": str(n * 20),
                            "payload": payload,
                        },
                        "streamSid": "MZ0001",
                    }
                )
            )
            if n % 25 == 0:
                await asyncio.sleep(0.01)
        await ws.send(
            json.dumps({"event": "media", "media": {"track": "inbound", "payload": "@@not-base64@@"}})
        )
        error = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert error["type"] == "error" and error["code"] == "bad_audio_format"
        await ws.send(
            json.dumps({"event": "stop", "stop": {"callSid": "CA-test-0001"}, "streamSid": "MZ0001"})
        )
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 300)
    engine = sqlalchemy.create_engine(pg_session_database)
    with engine.connect() as conn:
        sid = conn.execute(
            sqlalchemy.text("select id from sessions where customer_id = 'twilio-cust-7'")
        ).scalar_one()
        status = conn.execute(
            sqlalchemy.text("select status from sessions where id = :s"), {"s": sid}
        ).scalar_one()
    engine.dispose()
    texts = [(u["text"], u["speaker"]) for u in stored(app.settings, "utterances", sid)]
    assert status == "ended" and {s for _, s in texts} == {"customer"}
    assert wer(" ".join(t.text for t in call.turns), " ".join(t for t, _ in texts)) <= 0.25


async def test_twilio_without_token_is_refused(app):
    ws_url = app.ws_url.replace("/v1/sessions", "/v1/twilio")
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"event": "start", "start": {"callSid": "CA1", "tracks": ["inbound"]}}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert error["code"] == "unauthorized"
