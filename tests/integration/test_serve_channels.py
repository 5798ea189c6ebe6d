"""SMS (Twilio webhook) and e-mail (raw RFC 822 webhook) end to end through the real Serve app: signed form
posts and raw messages in, one session per thread, the agent answering from a watch connection, replies out
through the local outbox, escalations routed to the demo roster, and stable error codes for bad requests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import websockets

from pipelines.channels import twilio_signature
from serve.auth import TokenAuthority

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUR_NUMBER = "+18005550199"
ANGRY = "This is ridiculous, I want to cancel and speak to a manager right now"


def outbox(app) -> Path:
    return Path(app.settings.data_dir) / "outbox.jsonl"


def sent_to(app, to: str) -> list[dict]:
    path = outbox(app)
    lines = path.read_text().splitlines() if path.exists() else []
    return [m for m in map(json.loads, lines) if m["to"] == to]


def wait_for(check, wait_s: float = 30.0):
    deadline = time.monotonic() + wait_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def post_sms(app, body: str, sid: str, from_number: str, *, signature: str | None = None) -> httpx.Response:
    url = f"{app.http_url}/v1/sms/twilio"
    form = {"MessageSid": sid, "From": from_number, "To": OUR_NUMBER, "Body": body, "NumMedia": "0"}
    secret = TokenAuthority(app.token).derived("channels")  # local mode: no Twilio auth token configured
    sig = twilio_signature(secret, url, form) if signature is None else signature
    return httpx.post(url, data=form, headers={"X-Twilio-Signature": sig}, timeout=120)


def post_email(app, raw: bytes, token: str | None) -> httpx.Response:
    headers = {"Content-Type": "message/rfc822", **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(f"{app.http_url}/v1/email/inbound", content=raw, headers=headers, timeout=120)


async def watch_and_answer(app, session_id: str, text: str) -> dict:
    """The agent opens the session (snapshot) and answers it; returns the snapshot."""
    url = app.ws_url.rsplit("/v1/", 1)[0] + f"/v1/sessions/{session_id}/watch"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {app.token}"}) as ws:
        snapshot = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "chat.message", "text": text}))
        while True:  # the agent's own line comes back as a transcript.final
            event = json.loads(await ws.recv())
            if event["type"] == "transcript.final" and event["speaker"] == "agent":
                return snapshot


async def test_an_sms_thread_is_one_session_and_the_agent_replies_by_sms(app):
    number = "+14155550100"
    first = post_sms(app, "Hi, I need to move my appointment", "SMit1", number)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/xml") and "<Response/>" in first.text
    session_id = first.headers["x-session-id"]
    second = post_sms(app, "It is the one on Tuesday", "SMit2", number)
    assert second.headers["x-session-id"] == session_id
    other = post_sms(app, "Hello?", "SMit3", "+14155550111")
    assert other.headers["x-session-id"] != session_id

    snapshot = await watch_and_answer(app, session_id, "Of course, which day suits you?")
    assert snapshot["type"] == "session.snapshot" and snapshot["channel"] == "sms"
    assert snapshot["customer_id"].startswith("sms-") and "4155550100" not in snapshot["customer_id"]
    customer_lines = [e["text"] for e in snapshot["events"] if e["type"] == "transcript.final"]
    assert customer_lines == ["Hi, I need to move my appointment", "It is the one on Tuesday"]
    (reply,) = wait_for(lambda: sent_to(app, number))
    assert reply["channel"] == "sms" and reply["sender"] == OUR_NUMBER and reply["session_id"] == session_id
    assert reply["body"] == "Of course, which day suits you?"


def test_an_escalated_sms_is_routed_and_told_the_wait(app):
    number = "+14155550177"
    r = post_sms(app, ANGRY, "SMit9", number)
    assert r.status_code == 200
    session_id = r.headers["x-session-id"]
    (notice,) = wait_for(lambda: sent_to(app, number))
    assert notice["body"].startswith(("An agent will be with you", "All our specialists are busy"))
    queues = httpx.get(f"{app.http_url}/v1/queues", params={"token": app.token}, timeout=30).json()
    waiting = {e["session_id"] for q in queues["queues"] for e in q["entries"]}
    busy = sum(a["active"] for a in queues["agents"])
    assert session_id in waiting or busy >= 1
    live = httpx.get(f"{app.http_url}/v1/live", params={"token": app.token}, timeout=30).json()["sessions"]
    (row,) = [s for s in live if s["session_id"] == session_id]
    assert row["escalation"]["queue"] and row["routing"]["status"] in ("assigned", "queued", "overflow")


def test_bad_sms_webhooks_get_stable_codes_and_the_server_stays_up(app):
    bad = post_sms(app, "hello", "SMbad", "+14155550100", signature="not-the-signature")
    assert bad.status_code == 403 and bad.json()["code"] == "bad_signature"
    url = f"{app.http_url}/v1/sms/twilio"
    form = {"MessageSid": "SMx", "From": "+14155550100", "To": OUR_NUMBER}  # no Body
    sig = twilio_signature(TokenAuthority(app.token).derived("channels"), url, form)
    missing = httpx.post(url, data=form, headers={"X-Twilio-Signature": sig}, timeout=30)
    assert missing.status_code == 400 and missing.json()["code"] == "invalid_event"
    assert "Body" in missing.json()["message"]
    assert httpx.get(f"{app.http_url}/healthz", timeout=30).status_code == 200


FIRST = b"""From: Pat Doe <pat.it@example.org>
To: help@clinic.example
Subject: Records request
Message-ID: <it-m1@example.org>

Please send my medical records to my new doctor.
"""

REPLY = b"""From: Pat Doe <pat.it@example.org>
To: help@clinic.example
Subject: Re: Records request
Message-ID: <it-m3@example.org>
In-Reply-To: <it-m2@clinic.example>
References: <it-m1@example.org> <it-m2@clinic.example>

The new doctor is Dr. Lee at Elm Street.

On Tue, Mar 4, 2025 at 10:00 AM Help <help@clinic.example> wrote:
> Which doctor should we send them to?
"""


async def test_email_threads_into_one_session_with_quotes_stripped(app):
    r = post_email(app, FIRST, app.token)
    assert r.status_code == 202, r.text
    session_id = r.json()["session_id"]
    await watch_and_answer(app, session_id, "Which doctor should we send them to?")
    (reply,) = wait_for(lambda: sent_to(app, "pat.it@example.org"))
    assert reply["subject"] == "Re: Records request" and reply["in_reply_to"] == "<it-m1@example.org>"
    answer = post_email(app, REPLY, app.token)
    assert answer.status_code == 202 and answer.json()["session_id"] == session_id
    assert answer.json()["quoted_removed"] is True
    url = app.ws_url.rsplit("/v1/", 1)[0] + f"/v1/sessions/{session_id}/watch"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {app.token}"}) as ws:
        snapshot = json.loads(await ws.recv())
    finals = [e for e in snapshot["events"] if e["type"] == "transcript.final"]
    assert [f["speaker"] for f in finals] == ["customer", "agent", "customer"]
    assert finals[-1]["text"].startswith("The new doctor is") and "Which doctor" not in finals[-1]["text"]
    assert any(e["type"] == "assist.suggestion" for e in snapshot["events"])


def test_email_webhook_refuses_bad_mail_and_bad_tokens(app):
    garbage = post_email(app, b"this is not an e-mail at all", app.token)
    assert garbage.status_code == 400 and garbage.json()["code"] == "bad_email"
    assert post_email(app, FIRST, None).json()["code"] == "unauthorized"
    customer = post_email(app, FIRST, app.tokens["customer"])
    assert customer.status_code == 403 and customer.json()["code"] == "forbidden"
    huge = post_email(app, FIRST + b"x" * (11 * 1024 * 1024), app.token)
    assert huge.status_code == 413 and huge.json()["code"] == "message_too_large"
    assert httpx.get(f"{app.http_url}/healthz", timeout=30).status_code == 200
