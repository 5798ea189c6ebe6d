"""Generated suggestions through the real Serve app: the packaged SmolLM2 on the real vLLM engine (CPU build) in
the ``response_generator`` deployment, streamed to the websocket after the articles."""

from __future__ import annotations

import httpx
import pytest

from serve.client import SessionClient
from tests.integration.conftest import stored as stored_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTIONS = [
    "Can I set up a payment plan for my hospital bill?",
    "How do I reset my patient portal password?",
    "I paid the same bill twice, when do I get my money back?",
]


def _assist(events: list[dict]) -> tuple[dict, list[dict], dict]:
    """(first suggestion, deltas, final suggestion) of one turn."""
    suggestions = [e for e in events if e["type"] == "assist.suggestion"]
    deltas = [e for e in events if e["type"] == "assist.delta"]
    assert len(suggestions) == 2, [e["type"] for e in events]
    return suggestions[0], deltas, suggestions[1]


async def test_articles_first_then_streamed_generation_then_the_checked_reply(app):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-gen-1")
        sources = []
        for question in QUESTIONS:
            events = await c.say(question, wait_s=60)
            types = [e["type"] for e in events]
            first, deltas, final = _assist(events)
            # the articles come first and are not held back by the model
            assert first["final"] is False and first["source"] == "articles_only" and first["articles"]
            assert types.index("assist.suggestion") < min(
                (i for i, t in enumerate(types) if t == "assist.delta"), default=len(types)
            )
            # the generated version of the same suggestion, streamed in order, then checked
            assert final["suggestion_id"] == first["suggestion_id"] and final["final"] is True
            assert [d["index"] for d in deltas] == list(range(len(deltas)))
            assert all(d["suggestion_id"] == first["suggestion_id"] and d["text"] for d in deltas)
            assert deltas, "the real engine streamed nothing"
            assert final["tokens"]["prompt"] > 20 and 0 < final["tokens"]["completion"] <= 96
            assert final["first_token_ms"] > 0 and final["latency_ms"] >= final["first_token_ms"]
            assert final["model"] == "smollm2-135m-instruct" and final["prompt_version"]
            assert final["articles"] == first["articles"]
            if final["source"] == "generated":
                ids = {a["id"] for a in first["articles"]}
                assert final["grounding"]["grounded"] is True and final["citations"]
                assert set(final["citations"]) <= ids
                assert final["text"] and final["text"] != first["text"]
            else:  # the check rejected what the small model wrote: the articles stand
                assert final["source"] == "articles_only" and final["fallback"] == "ungrounded"
                assert final["grounding"]["grounded"] is False and final["grounding"]["reason"]
                assert final["text"] == first["text"]
            sources.append(final["source"])
        await c.send({"type": "suggestion.feedback", "suggestion_id": final["suggestion_id"], "action": "rejected"})
        ended = await c.end(wait_s=60)
        summary = ended[-1]["summary"]
        assert summary["assist"]["tokens"] > 0
        assert sum(v for k, v in summary["assist"].items() if k != "tokens") == len(QUESTIONS)
        assert sorted(k for k in summary["assist"] if k != "tokens") == sorted(set(sources))
        session_id = c.session_id

    # the feedback is stored with the model and source it was about
    payloads = stored_rows(app.settings, "events", session_id)
    feedback = [p for p in payloads if p["type"] == "suggestion.feedback"]
    assert feedback and feedback[0]["action"] == "rejected"
    assert feedback[0]["source"] == sources[-1]
    assert feedback[0]["model"] == "smollm2-135m-instruct"
    stored = [p for p in payloads if p["type"] == "assist.suggestion"]
    assert len(stored) == 2 * len(QUESTIONS)  # the articles and the final version, both in the session log


def test_models_endpoint_shows_the_generator_and_prompt(app):
    r = httpx.get(f"{app.http_url}/v1/models", headers={"Authorization": f"Bearer {app.token}"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"]["response_generator"] == {"champion": "smollm2-135m-instruct"}
    assert body["generation"]["backend"] == "vllm"
    assert body["generation"]["prompt"]  # builtin here: the app's registry has no assist_reply prompt
    assert {"lookups", "hits", "hit_rate", "entries"} <= set(body["generation"]["reply_cache"])
