"""Sending replies to customers: one small interface, one adapter per provider.

``Outbound.send(msg)`` returns the provider's message id. :class:`OutboxSender` (the default, used by the
agent-desktop demo) appends to a local JSON-lines file; :class:`TwilioSmsSender` posts to Twilio's REST API;
:class:`SmtpEmailSender` speaks SMTP and threads the reply under the customer's message. Every failure is an
:class:`OutboundError` (``outbound_failed``) whose ``retryable`` says whether sending again can succeed.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl as ssl_module
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import httpx

from ..errors import SwitchboardError

__all__ = [
    "OutboundMessage",
    "Outbound",
    "OutboundError",
    "OutboxSender",
    "TwilioSmsSender",
    "SmtpEmailSender",
    "outbound_from_settings",
]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    channel: Literal["sms", "email"]
    to: str  # E.164 number or email address
    body: str
    session_id: str
    subject: str | None = None  # email
    in_reply_to: str | None = None  # email: the customer's Message-ID
    sender: str | None = None  # overrides the adapter's from number / address
    references: tuple[str, ...] = ()  # email: the thread's earlier ids (References), oldest first


@runtime_checkable
class Outbound(Protocol):
    async def send(self, msg: OutboundMessage) -> str:
        """Deliver ``msg``; returns the provider's message id. Raises OutboundError."""
        ...


class OutboundError(SwitchboardError):
    """A reply could not be handed to the provider. ``retryable``: a timeout, a dropped connection, a
    rate limit or a provider-side (5xx / SMTP 4xx) error; a refused request (bad number, auth) is not."""

    code = "outbound_failed"

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self._retryable = retryable
        self.status = status

    @property
    def retryable(self) -> bool:
        return self._retryable


def _check_channel(msg: OutboundMessage, channel: str, adapter: object) -> None:
    if msg.channel != channel:
        raise ValueError(f"{type(adapter).__name__} sends {channel}, not {msg.channel}")


# ---------------------------------------------------------------- local outbox


class OutboxSender:
    """Appends one JSON line per message to ``path`` (created with its folder); returns ``outbox_<hex>``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    async def send(self, msg: OutboundMessage) -> str:
        message_id = f"outbox_{uuid.uuid4().hex[:16]}"
        record = {"id": message_id, **asdict(msg), "created_at": datetime.now(UTC).isoformat()}
        record["references"] = list(msg.references)
        try:
            async with self._lock:
                await asyncio.to_thread(self._append, json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise OutboundError(f"outbox write failed ({type(exc).__name__})", retryable=True) from exc
        return message_id


# ---------------------------------------------------------------- Twilio SMS


class TwilioSmsSender:
    """Twilio Programmable Messaging: ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form: To, From,
    Body) with basic auth; returns the message SID. ``client``: a shared ``httpx.AsyncClient`` (else one per
    send)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        *,
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.account_sid, self._auth_token, self.from_number = account_sid, auth_token, from_number
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.timeout_s = timeout_s
        self._client = client

    def __repr__(self) -> str:  # no token
        return f"TwilioSmsSender(account_sid={self.account_sid!r}, from_number={self.from_number!r})"

    async def _post(self, client: httpx.AsyncClient, form: dict[str, str]) -> httpx.Response:
        return await client.post(
            self.url, data=form, auth=(self.account_sid, self._auth_token), timeout=self.timeout_s
        )

    async def send(self, msg: OutboundMessage) -> str:
        _check_channel(msg, "sms", self)
        form = {"To": msg.to, "From": msg.sender or self.from_number, "Body": msg.body}
        try:
            if self._client is not None:
                response = await self._post(self._client, form)
            else:
                async with httpx.AsyncClient() as client:
                    response = await self._post(client, form)
        except httpx.TransportError as exc:  # connect, read, timeout
            raise OutboundError(f"Twilio unreachable ({type(exc).__name__})", retryable=True) from exc
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not 200 <= status < 300:
            detail = (
                f"Twilio error {payload.get('code')}: {payload.get('message')}" if payload else "no details"
            )
            raise OutboundError(
                f"Twilio refused the message (HTTP {status}, {detail})",
                retryable=status == 429 or status >= 500,
                status=status,
            )
        sid = payload.get("sid") if isinstance(payload, dict) else None
        if not sid:
            raise OutboundError(
                f"Twilio answered HTTP {status} without a message sid", retryable=False, status=status
            )
        return str(sid)


# ---------------------------------------------------------------- SMTP email


class SmtpEmailSender:
    """SMTP (stdlib ``smtplib`` in a thread). Sets In-Reply-To and References so the customer's mail client
    files the reply in the same thread; returns the new Message-ID. ``ssl``: implicit TLS (port 465);
    ``starttls``: upgrade a plain connection (port 587)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        from_address: str,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        ssl: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        if starttls and ssl:
            raise ValueError("choose starttls or ssl, not both")
        self.host, self.port, self.from_address = host, port, from_address
        self.user, self._password = user, password
        self.starttls, self.ssl, self.timeout_s = starttls, ssl, timeout_s

    def __repr__(self) -> str:  # no password
        return f"SmtpEmailSender({self.host}:{self.port}, from_address={self.from_address!r})"

    def build(self, msg: OutboundMessage) -> EmailMessage:
        """The MIME message sent for ``msg`` (text/plain, UTF-8)."""
        email = EmailMessage()
        sender = msg.sender or self.from_address
        email["From"] = sender
        email["To"] = msg.to
        if msg.subject:
            email["Subject"] = msg.subject
        email["Date"] = formatdate(localtime=False, usegmt=True)
        email["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        if msg.in_reply_to:
            email["In-Reply-To"] = msg.in_reply_to
        references = list(dict.fromkeys([*msg.references, *([msg.in_reply_to] if msg.in_reply_to else [])]))
        if references:
            email["References"] = " ".join(references)
        email.set_content(msg.body)
        return email

    def _deliver(self, email: EmailMessage) -> None:
        context = ssl_module.create_default_context()
        smtp: smtplib.SMTP
        if self.ssl:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with smtp:
            if self.starttls:
                smtp.starttls(context=context)
            if self.user:
                smtp.login(self.user, self._password or "")
            smtp.send_message(email)

    async def send(self, msg: OutboundMessage) -> str:
        _check_channel(msg, "email", self)
        email = self.build(msg)
        try:
            await asyncio.to_thread(self._deliver, email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            status = codes[0] if codes else None
            raise OutboundError(
                f"SMTP refused the recipient ({status})",
                retryable=all(400 <= c < 500 for c in codes),
                status=status,
            ) from exc
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, auth failed, ...
            raise OutboundError(
                f"SMTP error {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500, status=exc.smtp_code
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:  # e.g. STARTTLS or AUTH not offered
            raise OutboundError(f"SMTP server does not support it: {exc}", retryable=False) from exc
        except (smtplib.SMTPException, OSError) as exc:  # disconnected, refused, timeout, TLS
            raise OutboundError(f"SMTP unreachable ({type(exc).__name__})", retryable=True) from exc
        return str(email["Message-ID"])


# ---------------------------------------------------------------- factory

_OPTIONS = {
    "data_dir": None,
    "outbox_path": None,
    "twilio_account_sid": None,
    "twilio_auth_token": None,
    "twilio_from_number": None,
    "twilio_base_url": "https://api.twilio.com",
    "smtp_host": None,
    "smtp_port": 587,
    "smtp_user": None,
    "smtp_password": None,
    "smtp_starttls": True,
    "smtp_ssl": False,
    "smtp_from_address": None,
}


def outbound_from_settings(
    channel: Literal["sms", "email"], settings: Any = None, **overrides: Any
) -> Outbound:
    """The adapter for ``channel``. Options are read from ``overrides``, else from attributes of the same name
    on ``settings`` (``twilio_account_sid``, ``twilio_auth_token``, ``twilio_from_number``,
    ``twilio_base_url``, ``smtp_host``, ``smtp_port``, ``smtp_user``, ``smtp_password``, ``smtp_starttls``,
    ``smtp_ssl``, ``smtp_from_address``, ``outbox_path``, ``data_dir``). Without provider credentials:
    :class:`OutboxSender` on ``outbox_path`` (default ``<data_dir>/outbox.jsonl``)."""
    unknown = set(overrides) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown outbound options: {sorted(unknown)}")

    def opt(name: str) -> Any:
        value = overrides.get(name)
        if value is None:
            value = getattr(settings, name, None)
        return _OPTIONS[name] if value is None else value

    if channel == "sms":
        twilio = [opt("twilio_account_sid"), opt("twilio_auth_token"), opt("twilio_from_number")]
        if all(twilio):
            return TwilioSmsSender(*twilio, base_url=opt("twilio_base_url"))
        if any(twilio):
            raise ValueError("Twilio needs twilio_account_sid, twilio_auth_token and twilio_from_number")
    elif channel == "email":
        if opt("smtp_host"):
            if not opt("smtp_from_address"):
                raise ValueError("SMTP needs smtp_from_address")
            return SmtpEmailSender(
                opt("smtp_host"),
                int(opt("smtp_port")),
                from_address=opt("smtp_from_address"),
                user=opt("smtp_user"),
                password=opt("smtp_password"),
                starttls=bool(opt("smtp_starttls")) and not opt("smtp_ssl"),
                ssl=bool(opt("smtp_ssl")),
            )
    else:
        raise ValueError(f"no outbound channel {channel!r}")
    path = opt("outbox_path")
    if path is None:
        data_dir = opt("data_dir")
        if data_dir is None:
            raise ValueError("the local outbox needs data_dir or outbox_path")
        path = Path(data_dir) / "outbox.jsonl"
    return OutboxSender(path)
