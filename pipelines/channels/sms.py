"""SMS through Twilio's inbound webhook: request signatures, the form fields, thread keys and the TwiML reply.

Pure functions; the web endpoint (in ``serve/``) validates the signature, parses the form, looks the thread up
and answers with :func:`twiml_message`. Phone numbers are personal data: they never leave this module except
as keyed hashes (:func:`sms_thread_key`, :func:`customer_ref`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

from ..errors import ProtocolError

__all__ = [
    "InboundSms",
    "twilio_signature",
    "validate_twilio_request",
    "parse_inbound_sms",
    "normalize_number",
    "sms_thread_key",
    "customer_ref",
    "twiml_message",
    "MAX_SMS_CHARS",
]

#: Twilio's limit for one (concatenated) message body.
MAX_SMS_CHARS = 1600

_MAX_MEDIA = 10  # Twilio attaches at most 10 media to one MMS
_SEPARATORS = re.compile(r"[\s\-().]")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class InboundSms:
    message_sid: str
    from_number: str  # normalised (see normalize_number)
    to_number: str
    body: str
    num_media: int = 0
    media_urls: tuple[str, ...] = ()


# ---------------------------------------------------------------- signatures


Params = Mapping[str, str] | Mapping[str, str | Sequence[str]]


def twilio_signature(auth_token: str, url: str, params: Params) -> str:
    """``X-Twilio-Signature`` of a form POST: base64(HMAC-SHA1(token, url + name1 + value1 + ...)) with the
    parameters sorted by name. ``url`` is the full URL Twilio requested, query string included. A repeated
    parameter (a sequence of values) contributes each distinct value, sorted, as Twilio's library does."""
    data = url
    for name in sorted(params):
        value = params[name]
        data += "".join(name + v for v in ([value] if isinstance(value, str) else sorted(set(value))))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def _url_variants(url: str) -> tuple[str, ...]:
    """The URL without and with its port (the scheme's default when it has none): Twilio signs whichever
    form it was configured with and a proxy may add or drop the port, so its own validator tries both."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number: only the URL as given can match
        return (url,)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = hostport if port is None else hostport[: hostport.rfind(":")]
    port = port or (443 if parts.scheme == "https" else 80)
    return (
        urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")),
        urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}")),
    )


def validate_twilio_request(auth_token: str, url: str, params: Params, signature: str) -> bool:
    """True when ``signature`` (the ``X-Twilio-Signature`` header) matches the request, compared in constant
    time; the URL is tried without and with its default port."""
    if not signature:
        return False
    given = signature.encode()
    return any(
        hmac.compare_digest(twilio_signature(auth_token, variant, params).encode(), given)
        for variant in _url_variants(url)
    )


# ---------------------------------------------------------------- the inbound form


def normalize_number(number: str) -> str:
    """A phone number as one canonical string: spaces, dashes, dots and parentheses removed
    (``+1 (415) 555-0100`` → ``+14155550100``); channel prefixes such as ``whatsapp:`` are kept."""
    return _SEPARATORS.sub("", number).lower()


def parse_inbound_sms(params: Mapping[str, str], *, max_chars: int = MAX_SMS_CHARS) -> InboundSms:
    """The fields of Twilio's inbound message webhook. Missing ``MessageSid``/``From``/``To``/``Body`` →
    ``invalid_event``; a body longer than ``max_chars`` → ``message_too_large``."""
    missing = [name for name in ("From", "To", "Body") if params.get(name) is None]
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        missing.insert(0, "MessageSid")
    if missing:
        raise ProtocolError(f"SMS webhook without {', '.join(missing)}", code="invalid_event")
    from_number, to_number = normalize_number(params["From"]), normalize_number(params["To"])
    if not from_number or not to_number:
        raise ProtocolError("SMS webhook with an empty From or To", code="invalid_event")
    body = params["Body"]
    if len(body) > max_chars:
        raise ProtocolError(f"SMS body over {max_chars} characters", code="message_too_large")
    try:
        num_media = int(params.get("NumMedia") or 0)
    except ValueError:
        raise ProtocolError("SMS webhook with a non-numeric NumMedia", code="invalid_event") from None
    if not 0 <= num_media <= _MAX_MEDIA:
        raise ProtocolError(f"SMS webhook with NumMedia={num_media}", code="invalid_event")
    media = tuple(url for i in range(num_media) if (url := params.get(f"MediaUrl{i}")))
    return InboundSms(sid, from_number, to_number, body, num_media, media)


# ---------------------------------------------------------------- pseudonymous keys


def _keyed_hash(secret: str | bytes, *parts: str) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("a non-empty secret is required to hash personal data")
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def sms_thread_key(secret: str | bytes, from_number: str, to_number: str) -> str:
    """The thread key of one SMS conversation (the customer's number + ours): HMAC-SHA256, 64 hex
    characters. The raw numbers are not recoverable without ``secret``."""
    return _keyed_hash(secret, "sms-thread", normalize_number(from_number), normalize_number(to_number))


def customer_ref(secret: str | bytes, from_number: str) -> str:
    """A stable pseudonymous ``customer_id`` for a phone number: ``sms-<16 hex>``."""
    return "sms-" + _keyed_hash(secret, "sms-customer", normalize_number(from_number))[:16]


# ---------------------------------------------------------------- the reply


def twiml_message(text: str | None) -> str:
    """The TwiML response body: ``<Response/>`` (no reply) or one ``<Message>`` with ``text`` XML-escaped
    (characters XML 1.0 cannot carry are dropped)."""
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    if not text:
        return head + "<Response/>"
    return f"{head}<Response><Message>{escape(_XML_INVALID.sub('', text))}</Message></Response>"
