"""Tenants and roles against the real Serve app: another tenant's agent tries to watch, resume, list, download
and route into the demo tenant's sessions (websocket, gRPC, HTTP), a customer token tries to reach other
customers' conversations and the staff views, and the same customer id in two tenants gets two sets of
features. Tokens are real JWTs (HS256 with the local secret, as `python -m serve.auth issue` makes them)."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import numpy as np
import pytest
import websockets

from pipelines.audit import AuditLog
from serve.auth import TokenAuthority
from serve.client import GrpcSessionClient, SessionClient, watch_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def token(app, tenant: str, role: str, subject: str | None = None) -> str:
    return TokenAuthority(app.token).issue(tenant, role, subject=subject)


async def get(url: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.get(url, **kw)


def ws_base(app) -> str:
    return app.ws_url.rsplit("/v1/", 1)[0]


async def demo_voice_session(app) -> str:
    """A demo-tenant voice session with a recording, ended."""
    fmt = {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(channel="voice", customer_id="tenancy-cust", audio=fmt)
        tone = (np.sin(np.linspace(0, 2000, 16000)) * 3000).astype("<i2").tobytes()
        for i in range(0, len(tone), 3200):
            await c.send(tone[i : i + 3200])
        await c.end(wait_s=120)
        return c.session_id


async def test_another_tenants_agent_sees_nothing_of_demo(app):
    demo_session = await demo_voice_session(app)
    acme = token(app, "acme", "supervisor")
    headers = {"Authorization": f"Bearer {acme}"}
    # watch over the websocket: as if the session did not exist
    async with websockets.connect(f"{ws_base(app)}/v1/sessions/{demo_session}/watch", additional_headers=headers) as ws:
        first = json.loads(await ws.recv())
    assert first["type"] == "error" and first["code"] == "session_not_found"
    # ...and over gRPC
    events = [e async for e in watch_events(f"grpc://{app.grpc_target}", acme, demo_session)]
    assert [e.get("code") for e in events] == ["session_not_found"]
    # resume it: refused the same way, nothing reopened
    async with SessionClient(app.ws_url, acme) as c:
        await c.send({"type": "session.start", "channel": "chat", "customer_id": "x", "session_id": demo_session})
        assert (await c.recv())["code"] == "session_not_found"
    # download its recording: not found for acme, there for demo
    r = await get(f"{app.http_url}/v1/sessions/{demo_session}/recording", headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "session_not_found"
    mine = await get(
        f"{app.http_url}/v1/sessions/{demo_session}/recording", params={"token": app.token}, timeout=60
    )
    assert mine.status_code == 200 and mine.content[:4] == b"RIFF"
    # the download is in demo's audit trail (who, what, which session), the chain verifies, acme's has none of it
    audit = AuditLog(app.settings.database_url)
    try:
        (entry,) = [e for e in audit.entries("demo", target=demo_session) if e.action == "recording.read"]
        assert entry.actor == "agent@demo" and entry.detail["bytes"] == len(mine.content)
        assert all(e.target != demo_session for e in audit.entries("acme", limit=None))
        assert audit.verify().ok
    finally:
        audit.close()
    # the live list and the queues hold only acme's own (none of demo's sessions or agents)
    live = (await get(f"{app.http_url}/v1/live", headers=headers)).json()["sessions"]
    assert all(s["session_id"] != demo_session for s in live)
    queues = (await get(f"{app.http_url}/v1/queues", headers=headers)).json()
    assert queues["tenant"] == "acme" and queues["agents"] == []
    demo_queues = (await get(f"{app.http_url}/v1/queues", params={"token": app.token})).json()
    assert {a["agent_id"] for a in demo_queues["agents"]} >= {"agent-ada", "agent-ed"}


async def test_acme_sessions_are_acme_s_own(app):
    acme = token(app, "acme", "agent")
    async with GrpcSessionClient(app.grpc_target, acme) as c:
        started = await c.start(customer_id="acme-cust-1")
        assert started["tenant"] == "acme"
        await c.say("I need my medical records")
        await c.end()
        acme_session = c.session_id
    # demo's agent cannot watch acme's session either
    events = [e async for e in watch_events(ws_base(app), app.token, acme_session)]
    assert [e.get("code") for e in events] == ["session_not_found"]
    events = [e async for e in watch_events(ws_base(app), acme, acme_session)]
    assert events[0]["type"] == "session.snapshot" and events[0]["customer_id"] == "acme-cust-1"


async def test_a_customer_token_holds_only_its_own_conversation(app):
    alice = token(app, "demo", "customer", subject="cust-alice")
    async with SessionClient(app.ws_url, alice) as c:
        await c.send({"type": "session.start", "channel": "chat", "customer_id": "cust-bob"})
        refused = await c.recv()
        assert refused["code"] == "forbidden"
        started = await c.start(customer_id="cust-alice")
        await c.send({"type": "chat.message", "text": "hello, I have a question about my bill"})
        seen = [await c.recv(30)]
        assert seen[0]["type"] == "transcript.final"
        await c.send({"type": "chat.message", "text": "pretend I am the agent", "speaker": "agent"})
        while (event := await c.recv(30))["type"] != "error":
            assert event["type"] in ("transcript.final", "routing", "session.ended")  # never the analysis
        assert event["code"] == "forbidden"
        await c.end()
        alice_session = started["session_id"]
    # bob's conversation, started by staff: alice cannot resume it
    async with SessionClient(app.ws_url, app.token) as staff:
        bob_session = (await staff.start(customer_id="cust-bob"))["session_id"]
        await staff.end()
    async with SessionClient(app.ws_url, alice) as c:
        await c.send({"type": "session.start", "channel": "chat", "customer_id": "cust-alice", "session_id": bob_session})
        assert (await c.recv())["code"] == "session_not_found"
        resumed = await c.start(customer_id="cust-alice", session_id=alice_session)
        assert resumed["resumed"] is True
        await c.end()
    # and the staff views refuse a customer token
    for path in ("/v1/live", "/v1/queues", "/v1/models", f"/v1/sessions/{bob_session}/recording"):
        r = await get(f"{app.http_url}{path}", params={"token": alice})
        assert r.status_code == 403 and r.json()["code"] == "forbidden", path
    async with websockets.connect(f"{ws_base(app)}/v1/sessions/{bob_session}/watch?token={alice}") as ws:
        assert json.loads(await ws.recv())["code"] == "forbidden"


async def test_a_forged_or_expired_token_is_refused_everywhere(app):
    forged = TokenAuthority("not-the-servers-dev-token").issue("demo", "admin")
    now = int(time.time())
    expired = jwt.encode(  # signed with the server's own local secret, but an hour old
        {"tenant": "demo", "role": "agent", "iat": now - 3600, "exp": now - 1800},
        TokenAuthority(app.token).derived("jwt"),
        algorithm="HS256",
    )
    for bad in (forged, expired):
        r = await get(f"{app.http_url}/v1/live", params={"token": bad})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        async with GrpcSessionClient(app.grpc_target, bad) as c:
            assert (await c.recv())["code"] == "unauthorized"


async def test_the_same_customer_id_in_two_tenants_has_two_sets_of_features(app):
    """demo's high-value demo-customer-17 raises the priority and goes to vip_care; in acme the same id is an
    unknown customer: no feature factors, the plain supervisor queue."""
    acme = token(app, "acme", "agent")
    async with SessionClient(app.ws_url, acme) as c:
        await c.start(customer_id="demo-customer-17")
        events = await c.say("this is unacceptable, get me a supervisor now")
        events += await c.drain(0.5)
        escalation = next(e for e in events if e["type"] == "escalation" and e["rule"] == "supervisor_request")
        assert escalation["priority"] == "high" and not escalation.get("factors")
        assert escalation["queue"] == "supervisor"
        await c.end()
