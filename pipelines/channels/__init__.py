"""Asynchronous channels: SMS (Twilio webhook) and email (RFC 822 / IMAP) in, provider adapters out.

Pure Python, no Ray and no web framework: the endpoints in ``serve/`` translate HTTP to these calls.
"""

from __future__ import annotations

from .email import (
    ImapPoller,
    InboundEmail,
    email_customer_ref,
    email_thread_key,
    html_to_text,
    normalize_message_id,
    parse_email,
    reply_subject,
    strip_quoted,
    thread_refs,
)
from .outbound import (
    Outbound,
    OutboundError,
    OutboundMessage,
    OutboxSender,
    SmtpEmailSender,
    TwilioSmsSender,
    outbound_from_settings,
)
from .sms import (
    MAX_SMS_CHARS,
    InboundSms,
    customer_ref,
    normalize_number,
    parse_inbound_sms,
    sms_thread_key,
    twilio_signature,
    twiml_message,
    validate_twilio_request,
)

__all__ = [
    # sms
    "InboundSms",
    "MAX_SMS_CHARS",
    "twilio_signature",
    "validate_twilio_request",
    "parse_inbound_sms",
    "normalize_number",
    "sms_thread_key",
    "customer_ref",
    "twiml_message",
    # email
    "InboundEmail",
    "parse_email",
    "strip_quoted",
    "html_to_text",
    "normalize_message_id",
    "thread_refs",
    "email_thread_key",
    "email_customer_ref",
    "reply_subject",
    "ImapPoller",
    # outbound
    "OutboundMessage",
    "Outbound",
    "OutboundError",
    "OutboxSender",
    "TwilioSmsSender",
    "SmtpEmailSender",
    "outbound_from_settings",
]
