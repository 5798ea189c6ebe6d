"""The Zendesk connector against a local fake Zendesk (tests/zendesk_server.py): real HTTP, real retries."""

from __future__ import annotations

import time

import pytest

from pipelines.crm import CaseRef, CrmError, CustomerContext, NullCrm, ZendeskCrm, crm_from_settings
from pipelines.errors import SwitchboardError
from tests.zendesk_server import FakeZendesk

pytestmark = pytest.mark.unit

SUMMARY = {
    "subject": "Billing question",
    "intent": "billing",
    "quality": {"score": 71.5},
    "tags": ["Billing Q"],
}
TRANSCRIPT = ["customer: I was charged twice", "agent: I will refund the second charge"]


@pytest.fixture
def zd():
    server = FakeZendesk(page_size=2).start()
    yield server
    server.stop()


@pytest.fixture
async def crm(zd):
    client = ZendeskCrm(zd.url, zd.email, zd.token, timeout_s=0.5, retries=3, backoff_s=0.01)
    yield client
    await client.aclose()


async def test_context_has_no_name_or_contact_details(zd, crm) -> None:
    uid = zd.add_user("cust-1", tags=["vip"], user_fields={"plan": "enterprise"})
    other = zd.add_user("cust-2")
    for status in ("open", "pending", "solved", "new", "closed"):  # paginated: page size 2
        zd.add_ticket(uid, status)
    zd.add_ticket(other, "open")
    ctx = await crm.fetch_context("acme", "cust-1")
    assert ctx == CustomerContext("cust-1", str(uid), open_tickets=3, tags=("vip",), plan="enterprise")
    assert len(zd.seen("GET", f"/api/v2/users/{uid}/tickets/requested.json")) == 3
    assert "Jane" not in repr(ctx) and "example.com" not in repr(ctx)
    assert await crm.fetch_context("acme", "nobody") is None


async def test_close_creates_one_case_with_the_idempotency_key(zd, crm) -> None:
    uid = zd.add_user("cust-1")
    ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    assert ref.system == "zendesk" and ref.created
    (ticket,) = zd.tickets_for("sess-1")
    assert str(ticket["id"]) == ref.case_id and ticket["requester_id"] == uid
    assert ticket["subject"] == "Billing question" and ticket["status"] == "new"
    assert ticket["tags"] == ["billing_q", "switchboard", "switchboard_acme"]
    (comment,) = zd.comments[ticket["id"]]
    assert comment["public"] is False
    assert "intent: billing" in comment["body"] and '{"score": 71.5}' in comment["body"]
    assert comment["body"].endswith("\n".join(TRANSCRIPT))
    (post,) = zd.seen("POST")
    assert post.idempotency_key == "switchboard-acme-sess-1"
    # looked up first: the session's case, then the requester
    assert [r.path for r in zd.requests] == [
        "/api/v2/tickets.json",
        "/api/v2/users/search.json",
        "/api/v2/tickets.json",
    ]
    assert zd.requests[0].query == {"external_id": "sess-1"}


async def test_an_unknown_customer_becomes_a_requester_by_external_id(zd, crm) -> None:
    ref = await crm.close_case("acme", "sess-1", "cust-new", {"status": "solved"}, [])
    (post,) = zd.seen("POST")
    assert post.body["ticket"]["requester"] == {"external_id": "cust-new", "name": "Customer cust-new"}
    assert post.body["ticket"]["subject"] == "Switchboard session sess-1"
    assert zd.tickets[int(ref.case_id)]["status"] == "solved"


async def test_an_existing_case_is_updated_not_duplicated(zd, crm) -> None:
    zd.add_user("cust-1")
    first = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    again = await crm.close_case(
        "acme", "sess-1", "cust-1", {"status": "solved", "tags": ["refund"]}, ["more"]
    )
    assert again == CaseRef("zendesk", first.case_id, created=False)
    (ticket,) = zd.tickets_for("sess-1")
    assert ticket["status"] == "solved"
    assert ticket["tags"] == ["billing_q", "refund", "switchboard", "switchboard_acme"]  # added, none dropped
    assert len(zd.comments[ticket["id"]]) == 2 and len(zd.seen("POST")) == 1


async def test_custom_fields_come_from_the_summary(zd) -> None:
    crm = ZendeskCrm(zd.url, zd.email, zd.token, backoff_s=0.01, custom_fields={"intent": 360001, "x": 9})
    try:
        ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    finally:
        await crm.aclose()
    assert zd.tickets[int(ref.case_id)]["custom_fields"] == [{"id": 360001, "value": "billing"}]


async def test_events_are_logged_as_internal_notes(zd, crm) -> None:
    # no case yet: nothing to write to (the transcript goes into the case at the end)
    assert await crm.log_event("acme", "sess-1", None, "customer: hello", -0.4) is None
    assert zd.seen("PUT") == []
    ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    found = await crm.log_event("acme", "sess-1", None, "customer: still there?", -0.42)
    assert found == CaseRef("zendesk", ref.case_id)
    assert await crm.log_event("acme", "sess-1", found, "agent: yes", None) == found
    notes = zd.comments[int(ref.case_id)][1:]
    assert notes == [
        {"body": "customer: still there?\n(sentiment -0.42)", "public": False},
        {"body": "agent: yes", "public": False},
    ]


async def test_retries_server_errors_and_rate_limits(zd, crm) -> None:
    zd.add_user("cust-1")
    zd.fail_next(2, status=503)
    assert (await crm.fetch_context("acme", "cust-1")) is not None
    zd.fail_next(1, status=429, retry_after=0.3)
    started = time.perf_counter()
    ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    assert time.perf_counter() - started >= 0.3  # Retry-After honoured, not the 10 ms backoff
    zd.fail_next(2, status=500)  # an update refused with 5xx is retried too
    await crm.log_event("acme", "sess-1", ref, "agent: done", 0.1)
    assert len(zd.tickets_for("sess-1")) == 1 and len(zd.comments[int(ref.case_id)]) == 2


async def test_gives_up_after_the_retries_with_a_retryable_error(zd, crm) -> None:
    zd.fail_next(10, status=500)
    with pytest.raises(CrmError) as info:
        await crm.fetch_context("acme", "cust-1")
    err = info.value
    assert isinstance(err, SwitchboardError)
    assert err.code == "crm_unavailable" and err.retryable and "after 4 attempts" in err.message
    assert len(zd.requests) == 4
    assert err.to_event().code == "crm_unavailable"


async def test_a_lost_create_response_is_retried_into_the_same_ticket(zd, crm) -> None:
    zd.add_user("cust-1")
    zd.drop_next(2, method="POST")  # the create is processed twice, both responses lost
    zd.drop_next(1, method="GET")  # and a lookup's response is lost too
    ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    assert len(zd.tickets_for("sess-1")) == 1
    assert str(zd.tickets_for("sess-1")[0]["id"]) == ref.case_id
    posts = zd.seen("POST")
    assert len(posts) == 3 and {p.idempotency_key for p in posts} == {"switchboard-acme-sess-1"}
    # and a later close for the same session finds the case instead of creating another
    await crm.close_case("acme", "sess-1", "cust-1", {"status": "solved"}, [])
    assert len(zd.tickets_for("sess-1")) == 1 and len(zd.seen("POST")) == 3


async def test_a_lost_comment_response_is_not_retried(zd, crm) -> None:
    ref = await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    zd.drop_next(1)
    with pytest.raises(CrmError, match="not retried, it may have been applied") as info:
        await crm.log_event("acme", "sess-1", ref, "agent: hello", None)
    assert info.value.retryable
    assert len(zd.comments[int(ref.case_id)]) == 2  # applied once, not twice


async def test_bad_credentials_fail_at_once_saying_what_to_check(zd) -> None:
    crm = ZendeskCrm(zd.url, zd.email, "wrong", backoff_s=0.01)
    try:
        with pytest.raises(CrmError) as info:
            await crm.fetch_context("acme", "cust-1")
    finally:
        await crm.aclose()
    err = info.value
    assert err.code == "crm_rejected" and not err.retryable and err.status == 401
    assert "check the Zendesk email and API token" in err.message and zd.url in err.message
    assert "wrong" not in err.message
    assert len(zd.requests) == 1  # a 4xx is never retried


async def test_other_client_errors_are_not_retried(zd, crm) -> None:
    zd.fail_next(1, status=422)
    with pytest.raises(CrmError) as info:
        await crm.close_case("acme", "sess-1", "cust-1", SUMMARY, TRANSCRIPT)
    assert info.value.status == 422 and not info.value.retryable
    assert len(zd.requests) == 1


async def test_timeouts_are_retried_then_reported(zd, crm) -> None:
    zd.add_user("cust-1")
    zd.slow_next(1, 0.8)  # over the 0.5 s timeout once: the retry succeeds
    assert (await crm.fetch_context("acme", "cust-1")) is not None
    zd.slow_next(4, 0.8)
    started = time.perf_counter()
    with pytest.raises(CrmError, match="ReadTimeout") as info:
        await crm.fetch_context("acme", "cust-1")
    assert info.value.code == "crm_unavailable" and info.value.retryable
    assert time.perf_counter() - started < 4 * 0.5 + 1.0


async def test_an_unreachable_zendesk_is_unavailable() -> None:
    crm = ZendeskCrm("http://127.0.0.1:9", "a@b.c", "t", retries=1, backoff_s=0.01)
    try:
        with pytest.raises(CrmError, match="cannot connect") as info:
            await crm.fetch_context("acme", "cust-1")
    finally:
        await crm.aclose()
    assert info.value.code == "crm_unavailable"


async def test_null_crm_and_factory() -> None:
    null = crm_from_settings("none")
    assert isinstance(null, NullCrm)
    assert await null.fetch_context("acme", "c") is None
    assert await null.log_event("acme", "s", None, "x", 0.0) is None
    assert (await null.close_case("acme", "s", "c", {}, [])) == CaseRef("none", "s")
    zendesk = crm_from_settings("zendesk", base_url="https://x.zendesk.com", email="a@b.c", api_token="t")
    assert isinstance(zendesk, ZendeskCrm)
    await zendesk.aclose()
    with pytest.raises(ValueError, match="api_token"):
        crm_from_settings("zendesk", base_url="https://x.zendesk.com", email="a@b.c")
    with pytest.raises(ValueError, match="unknown CRM"):
        crm_from_settings("salesforce")
