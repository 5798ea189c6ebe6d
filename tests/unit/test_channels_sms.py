"""SMS: Twilio's webhook signature and form, thread keys, TwiML; the outbox and the Twilio sender against a
real local HTTP server."""

from __future__ import annotations

import base64
import json
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from pipelines.channels import (
    OutboundError,
    OutboundMessage,
    OutboxSender,
    SmtpEmailSender,
    TwilioSmsSender,
    customer_ref,
    outbound_from_settings,
    parse_inbound_sms,
    sms_thread_key,
    twilio_signature,
    twiml_message,
    validate_twilio_request,
)
from pipelines.config import Settings
from pipelines.errors import ProtocolError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]

# Twilio's published request-validation example (token 12345).
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
SECRET = b"thread-secret"


# ---------------------------------------------------------------- signatures


def test_signature_matches_twilios_published_vectors():
    assert twilio_signature("12345", URL, PARAMS) == SIGNATURE
    repeated = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234", "1234"]}
    assert twilio_signature("12345", URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_validation_accepts_the_signature_and_refuses_any_change():
    assert validate_twilio_request("12345", URL, PARAMS, SIGNATURE)
    assert validate_twilio_request("12345", URL, dict(reversed(PARAMS.items())), SIGNATURE)  # order-free
    assert not validate_twilio_request("12345", URL, {**PARAMS, "Digits": "9999"}, SIGNATURE)
    assert not validate_twilio_request("12345", URL + "&x=1", PARAMS, SIGNATURE)
    assert not validate_twilio_request("54321", URL, PARAMS, SIGNATURE)
    assert not validate_twilio_request("12345", URL, PARAMS, "")
    assert not validate_twilio_request("12345", URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8")
    assert not validate_twilio_request("12345", URL, PARAMS, "not base64 ✓")


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "https://mycompany.com:443/myapp.php?foo=1&bar=2"),
        ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "https://mycompany.com/myapp.php?foo=1&bar=2"),
        ("http://mycompany.com/sms", "http://mycompany.com:80/sms"),
        ("https://MyCompany.com:1234/sms", "https://MyCompany.com:1234/sms"),
        ("https://user:pw@mycompany.com/sms", "https://user:pw@mycompany.com:443/sms"),
    ],
)
def test_validation_tries_the_url_with_and_without_its_port(signed_url, request_url):
    signature = twilio_signature("12345", signed_url, PARAMS)
    assert validate_twilio_request("12345", request_url, PARAMS, signature)


def test_a_non_default_port_is_not_interchangeable_with_another():
    signature = twilio_signature("12345", "https://mycompany.com:8443/sms", PARAMS)
    assert not validate_twilio_request("12345", "https://mycompany.com:9443/sms", PARAMS, signature)


# ---------------------------------------------------------------- the inbound form

INBOUND = {
    "MessageSid": "SM0123456789abcdef0123456789abcdef",
    "AccountSid": "AC0123",
    "From": "+1 (415) 555-0100",
    "To": "+1-800-555-1212",
    "Body": "My card was charged twice",
    "NumMedia": "0",
}


def test_parse_inbound_sms_normalises_the_numbers():
    sms = parse_inbound_sms(INBOUND)
    assert sms.message_sid == INBOUND["MessageSid"] and sms.body == "My card was charged twice"
    assert (sms.from_number, sms.to_number) == ("+14155550100", "+18005551212")
    assert sms.num_media == 0 and sms.media_urls == ()


def test_parse_inbound_mms_keeps_the_media_urls():
    params = {
        **INBOUND,
        "Body": "",
        "NumMedia": "2",
        "MediaUrl0": "https://api.twilio.com/m/ME1",
        "MediaContentType0": "image/jpeg",
        "MediaUrl1": "https://api.twilio.com/m/ME2",
    }
    sms = parse_inbound_sms(params)
    assert sms.body == "" and sms.num_media == 2
    assert sms.media_urls == ("https://api.twilio.com/m/ME1", "https://api.twilio.com/m/ME2")


@pytest.mark.parametrize("missing", ["From", "To", "Body", "MessageSid"])
def test_a_webhook_without_a_required_field_is_an_invalid_event(missing):
    params = {k: v for k, v in INBOUND.items() if k != missing}
    with pytest.raises(ProtocolError) as err:
        parse_inbound_sms(params)
    assert err.value.code == "invalid_event" and missing in err.value.message


def test_the_legacy_smssid_is_accepted():
    params = {k: v for k, v in INBOUND.items() if k != "MessageSid"} | {"SmsSid": "SM1"}
    assert parse_inbound_sms(params).message_sid == "SM1"


@pytest.mark.parametrize("num_media", ["two", "-1", "11"])
def test_a_bad_num_media_is_an_invalid_event(num_media):
    with pytest.raises(ProtocolError) as err:
        parse_inbound_sms({**INBOUND, "NumMedia": num_media})
    assert err.value.code == "invalid_event"


def test_a_body_over_the_limit_is_message_too_large():
    assert parse_inbound_sms({**INBOUND, "Body": "x" * 1600}).body == "x" * 1600
    with pytest.raises(ProtocolError) as err:
        parse_inbound_sms({**INBOUND, "Body": "x" * 1601})
    assert err.value.code == "message_too_large" and not err.value.retryable
    with pytest.raises(ProtocolError):
        parse_inbound_sms({**INBOUND, "Body": "x" * 11}, max_chars=10)


# ---------------------------------------------------------------- pseudonymous keys


def test_the_thread_key_is_one_per_conversation_and_formatting_free():
    key = sms_thread_key(SECRET, "+1 (415) 555-0100", "+18005551212")
    assert key == sms_thread_key(SECRET, "+14155550100", "+1 800 555 1212")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != sms_thread_key(SECRET, "+14155550100", "+18005559999")  # another of our numbers
    assert key != sms_thread_key(SECRET, "+14155550101", "+18005551212")  # another customer
    assert key != sms_thread_key(b"other-secret", "+14155550100", "+18005551212")


def test_keys_never_contain_the_phone_number():
    key = sms_thread_key(SECRET, "+14155550100", "+18005551212")
    ref = customer_ref(SECRET, "+1 415 555 0100")
    for number in ("14155550100", "4155550100", "5550100", "18005551212"):
        assert number not in key and number not in ref
    assert ref == customer_ref("thread-secret", "+14155550100")  # str and bytes secrets agree
    assert ref.startswith("sms-") and len(ref) == 20 and int(ref[4:], 16) >= 0
    assert ref != key[:16]  # domain-separated from the thread key
    with pytest.raises(ValueError):
        customer_ref(b"", "+14155550100")


# ---------------------------------------------------------------- TwiML


def test_twiml_without_a_reply_is_an_empty_response():
    for text in (None, ""):
        assert ET.fromstring(twiml_message(text)).tag == "Response"
        assert twiml_message(text).endswith("<Response/>")


def test_twiml_escapes_the_reply():
    text = 'Refund <b>issued</b> & "sent" to A&B\x00 — €12'
    xml = twiml_message(text)
    assert "<b>" not in xml and "&amp;" in xml
    root = ET.fromstring(xml)
    (message,) = root
    assert message.tag == "Message" and message.text == text.replace("\x00", "")


# ---------------------------------------------------------------- outbound: local outbox


async def test_the_outbox_appends_one_json_line_per_message(tmp_path):
    outbox = OutboxSender(tmp_path / "sub" / "outbox.jsonl")
    ids = [
        await outbox.send(OutboundMessage("sms", "+14155550100", f"reply {i}", session_id="ses_1"))
        for i in range(3)
    ]
    lines = [json.loads(line) for line in (tmp_path / "sub" / "outbox.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ids and len(set(ids)) == 3
    assert (
        lines[0]["channel"] == "sms" and lines[2]["body"] == "reply 2" and lines[0]["session_id"] == "ses_1"
    )


async def test_an_unwritable_outbox_is_a_retryable_outbound_failure(tmp_path):
    (tmp_path / "file").write_text("")
    outbox = OutboxSender(tmp_path / "file" / "outbox.jsonl")  # parent is a file
    with pytest.raises(OutboundError) as err:
        await outbox.send(OutboundMessage("sms", "+1", "x", session_id="s"))
    assert err.value.code == "outbound_failed" and err.value.retryable


# ---------------------------------------------------------------- outbound: Twilio REST API


class _Twilio(BaseHTTPRequestHandler):
    status = 201
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "form": parse_qs(body)}
        )
        if type(self).status == 201:
            payload = {"sid": "SM" + "f" * 32, "status": "queued"}
        else:
            payload = {"code": 21211, "message": "The 'To' number is not a valid phone number."}
        data = json.dumps(payload).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def twilio_api():
    _Twilio.requests, _Twilio.status = [], 201
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Twilio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Twilio
    server.shutdown()
    server.server_close()
    thread.join()


async def test_twilio_sender_posts_the_form_with_basic_auth(twilio_api):
    base_url, api = twilio_api
    sender = TwilioSmsSender("AC123", "tok", "+18005551212", base_url=base_url)
    sid = await sender.send(OutboundMessage("sms", "+14155550100", "Refund issued ✓", session_id="ses_1"))
    assert sid == "SM" + "f" * 32
    (request,) = api.requests
    assert request["path"] == "/2010-04-01/Accounts/AC123/Messages.json"
    assert request["auth"] == "Basic " + base64.b64encode(b"AC123:tok").decode()
    assert request["form"] == {"To": ["+14155550100"], "From": ["+18005551212"], "Body": ["Refund issued ✓"]}
    assert "tok" not in repr(sender)


async def test_twilio_sender_uses_the_message_sender_when_given(twilio_api):
    base_url, api = twilio_api
    sender = TwilioSmsSender("AC123", "tok", "+18005551212", base_url=base_url)
    await sender.send(OutboundMessage("sms", "+14155550100", "hi", session_id="s", sender="+18005559999"))
    assert api.requests[0]["form"]["From"] == ["+18005559999"]


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (401, False), (429, True), (503, True)])
async def test_twilio_errors_are_outbound_failures_retryable_per_status(twilio_api, status, retryable):
    base_url, api = twilio_api
    api.status = status
    sender = TwilioSmsSender("AC123", "tok", "+18005551212", base_url=base_url)
    with pytest.raises(OutboundError) as err:
        await sender.send(OutboundMessage("sms", "+1", "hi", session_id="s"))
    assert err.value.code == "outbound_failed" and err.value.status == status
    assert err.value.retryable is retryable
    assert err.value.to_event().retryable is retryable


async def test_an_unreachable_twilio_is_retryable():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = TwilioSmsSender("AC123", "tok", "+1", base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(OutboundError) as err:
        await sender.send(OutboundMessage("sms", "+1", "hi", session_id="s"))
    assert err.value.retryable and err.value.status is None


async def test_an_sms_sender_refuses_an_email():
    sender = TwilioSmsSender("AC123", "tok", "+1")
    with pytest.raises(ValueError):
        await sender.send(OutboundMessage("email", "a@b.c", "hi", session_id="s"))


# ---------------------------------------------------------------- outbound: factory


def test_the_factory_picks_the_adapter_from_the_settings(tmp_path):
    settings = Settings(data_dir=tmp_path)
    local = outbound_from_settings("sms", settings)
    assert isinstance(local, OutboxSender) and local.path == tmp_path / "outbox.jsonl"
    assert isinstance(outbound_from_settings("email", settings), OutboxSender)
    twilio = outbound_from_settings(
        "sms", settings, twilio_account_sid="AC1", twilio_auth_token="t", twilio_from_number="+1"
    )
    assert isinstance(twilio, TwilioSmsSender) and twilio.url.endswith("/Accounts/AC1/Messages.json")
    smtp = outbound_from_settings("email", settings, smtp_host="mail", smtp_from_address="help@acme.test")
    assert isinstance(smtp, SmtpEmailSender) and smtp.port == 587 and smtp.starttls
    with pytest.raises(ValueError):
        outbound_from_settings("sms", settings, twilio_account_sid="AC1")  # half-configured
    with pytest.raises(ValueError):
        outbound_from_settings("email", settings, smtp_host="mail")  # no from address
    with pytest.raises(TypeError):
        outbound_from_settings("sms", settings, twilio_sid="AC1")  # a typo is not ignored
    with pytest.raises(ValueError):
        outbound_from_settings("fax", settings)  # type: ignore[arg-type]
