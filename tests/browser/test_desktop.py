"""The agent desktop and the customer chat widget in a real headless Chromium, against the real Serve app:
a customer writes in the widget, the agent sees the conversation live with a suggested reply and its articles,
accepts it, the customer receives it, and the feedback is in PostgreSQL; an angry customer raises an escalation
alert; the supervisor view lists the sessions."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import stored

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = "I want to request my medical records be sent to my new provider"
ANGRY = "This is ridiculous, I want to cancel and speak to a manager right now"
GENERATION_S = 240  # the generated reply comes from the real (CPU) vLLM engine


def _expect():
    from playwright.sync_api import expect

    return expect


def sign_in(page, app, role: str) -> None:
    page.goto(f"{app.http_url}/desktop")
    page.get_by_test_id("token-input").fill(app.tokens[role])
    page.get_by_test_id("login-submit").click()
    _expect()(page.get_by_test_id("whoami")).to_have_text(f"demo · {role}")


def open_widget(new_page, app, customer_id: str):
    page = new_page(width=420, height=720)
    page.goto(f"{app.http_url}/widget?token={app.tokens['customer']}&customer_id={customer_id}")
    _expect()(page.get_by_test_id("status")).to_have_text("connected")
    return page


def customer_says(page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("message-input").press("Enter")
    _expect()(page.locator('[data-testid=message][data-speaker=customer][data-utterance-id]').last).to_be_visible()


def session_row(desk, customer_id: str):
    return desk.locator("[data-testid=sessions] [data-testid=session-row]", has_text=customer_id)


def stored_feedback(settings, session_id: str, wait_s: float = 30.0) -> list[dict]:
    """The session's stored ``suggestion.feedback`` records (the store writes in the background: poll)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = [e for e in stored(settings, "events", session_id) if e["type"] == "suggestion.feedback"]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_agent_accepts_a_suggestion_and_the_customer_gets_it(app, new_page, shot):
    expect = _expect()
    desk = new_page()
    sign_in(desk, app, "agent")
    shot(desk, "desktop-signed-in")

    widget = open_widget(new_page, app, "browser-records")
    customer_says(widget, RECORDS)
    shot(widget, "widget-customer-message")

    row = session_row(desk, "browser-records")
    expect(row).to_be_visible(timeout=20_000)
    session_id = row.get_attribute("data-session-id")
    assert session_id
    shot(desk, "desktop-session-listed")
    row.click()

    line = desk.locator("[data-testid=transcript-line][data-speaker=customer][data-final=true]")
    expect(line.first).to_contain_text("medical records")
    suggestion = desk.locator("[data-testid=suggestion][data-final=true]").first
    expect(suggestion).to_be_visible(timeout=GENERATION_S * 1000)
    articles = suggestion.get_by_test_id("article")
    expect(articles.first).to_be_visible()
    assert all(a.get_attribute("data-article-id") for a in articles.all())
    expect(suggestion.locator(".atitle").first).not_to_be_empty()
    reply = suggestion.get_by_test_id("suggestion-text").inner_text().strip()
    assert reply
    expect(desk.get_by_test_id("sentiment-trend").locator("polyline")).to_have_count(1)
    shot(desk, "desktop-suggestion")

    suggestion_id = suggestion.get_attribute("data-suggestion-id")
    suggestion.get_by_test_id("accept").click()
    expect(suggestion.get_by_test_id("suggestion-outcome")).to_have_text("Accepted and sent")
    expect(desk.locator("[data-testid=transcript-line][data-speaker=agent]").last).to_be_visible()
    shot(desk, "desktop-accepted")

    agent_message = widget.locator("[data-testid=message][data-speaker=agent]")
    expect(agent_message.last).to_be_visible()
    # the delivered text is the accepted suggestion, as the guardrail let it through
    words = re.findall(r"[A-Za-z]{4,}", reply)[:4]
    for word in words:
        expect(agent_message.last).to_contain_text(word)
    shot(widget, "widget-agent-reply")

    feedback = stored_feedback(app.settings, session_id)
    assert [(f["suggestion_id"], f["action"]) for f in feedback] == [(suggestion_id, "accepted")], feedback
    assert feedback[0]["type"] == "suggestion.feedback"


def test_escalation_alert_and_supervisor_view(app, new_page, shot):
    expect = _expect()
    widget = open_widget(new_page, app, "browser-angry")
    customer_says(widget, ANGRY)

    desk = new_page()
    sign_in(desk, app, "agent")
    row = session_row(desk, "browser-angry")
    expect(row).to_be_visible(timeout=20_000)
    row.click()
    banner = desk.get_by_test_id("escalation-banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner.get_by_test_id("escalation-queue")).not_to_be_empty()
    expect(banner.get_by_test_id("escalation-priority")).to_have_text(re.compile(r"low|normal|high|urgent"))
    expect(banner.get_by_test_id("escalation-reason")).not_to_be_empty()
    shot(desk, "desktop-escalation")
    # the customer is told where the conversation went (routing notice: expected delay)
    expect(widget.get_by_test_id("routing-notice").first).to_be_visible(timeout=30_000)
    shot(widget, "widget-routing-notice")

    sup = new_page()
    sign_in(sup, app, "supervisor")
    expect(sup.get_by_test_id("view-supervisor")).to_be_visible()
    rows = sup.locator("[data-testid=supervisor-table] [data-testid=session-row]")
    expect(rows.filter(has_text="browser-angry")).to_be_visible(timeout=20_000)
    expect(rows.filter(has_text="browser-records")).to_have_count(1)  # from the first test: all sessions
    angry = rows.filter(has_text="browser-angry")
    expect(angry.get_by_test_id("row-escalation")).not_to_have_text("—")
    expect(angry.get_by_test_id("row-sentiment")).to_contain_text("-")  # a negative latest score
    shot(sup, "supervisor-sessions")
    angry.click()
    expect(sup.get_by_test_id("view-desk")).to_be_visible()
    expect(sup.get_by_test_id("escalation-banner")).to_be_visible()
    expect(sup.locator("[data-testid=transcript-line][data-speaker=customer]").first).to_contain_text("manager")
    shot(sup, "supervisor-opened-session")


def test_widget_and_desktop_refuse_bad_tokens(app, new_page, shot):
    expect = _expect()
    desk = new_page()
    desk.goto(f"{app.http_url}/desktop?token=not-a-token")
    expect(desk.get_by_test_id("token-input")).to_have_value("not-a-token")
    assert "token=" not in desk.url  # the prefilled token is taken out of the address bar
    desk.get_by_test_id("login-submit").click()
    expect(desk.get_by_test_id("login-error")).to_contain_text("not accepted")
    desk.get_by_test_id("token-input").fill(app.tokens["customer"])
    desk.get_by_test_id("login-submit").click()
    expect(desk.get_by_test_id("login-error")).to_contain_text("customer chat widget")
    shot(desk, "desktop-refused")

    widget = new_page(width=420, height=720)
    widget.goto(f"{app.http_url}/widget?token=not-a-token")
    expect(widget.get_by_test_id("error-notice")).to_contain_text("not valid")
    expect(widget.get_by_test_id("message-input")).to_be_disabled()
    shot(widget, "widget-refused")
