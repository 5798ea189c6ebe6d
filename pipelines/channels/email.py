"""Email: inbound RFC 822 messages to the new text of one turn, thread keys, and an optional IMAP poller.

:func:`parse_email` picks the text body (text/plain, else text/html converted to text), decodes it whatever
the transfer encoding and charset, and removes the quoted history (:func:`strip_quoted`) so only what the
customer just wrote is analysed. Threading: the caller looks up the keys of :func:`thread_refs` in the thread
index (``SessionStore.find_thread``); when none is known it starts a session and links the key of the new
Message-ID (:func:`email_thread_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any

from ..errors import ProtocolError
from .sms import _keyed_hash

__all__ = [
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
]

log = logging.getLogger("switchboard.channels.email")


@dataclass(frozen=True, slots=True)
class InboundEmail:
    message_id: str  # normalised ``<id>``; derived from the content when the message has none
    in_reply_to: str | None
    references: tuple[str, ...]  # header order: oldest first
    from_address: str
    to_addresses: tuple[str, ...]
    subject: str
    text: str  # the new part only
    quoted_removed: bool
    attachments: int


# ---------------------------------------------------------------- message ids and threading

_ID = re.compile(r"<([^<>\s]+)>")


def _ids(header: str | None) -> list[str]:
    if not header:
        return []
    found = [f"<{m}>" for m in _ID.findall(header)]
    if not found and header.strip() and " " not in header.strip():
        found = [f"<{header.strip().strip('<>')}>"]  # a bare id without brackets
    return found


def normalize_message_id(value: str) -> str:
    """``<id@host>`` for ``id@host``, `` <id@host> `` or ``<id@host>`` (ids are case-sensitive: kept as is)."""
    ids = _ids(value)
    if not ids:
        raise ValueError(f"not a Message-ID: {value!r}")
    return ids[0]


def thread_refs(email: InboundEmail) -> list[str]:
    """The ids this message answers, newest first: In-Reply-To, then References from the last (the parent)
    to the first (the root); duplicates removed."""
    refs = ([email.in_reply_to] if email.in_reply_to else []) + list(reversed(email.references))
    return list(dict.fromkeys(refs))


def email_thread_key(secret: str | bytes, message_id: str) -> str:
    """The thread-index key of one Message-ID (HMAC-SHA256: ids often embed addresses and host names)."""
    return _keyed_hash(secret, "email-thread", normalize_message_id(message_id))


def email_customer_ref(secret: str | bytes, address: str) -> str:
    """A stable pseudonymous ``customer_id`` for an email address: ``email-<16 hex>``."""
    return "email-" + _keyed_hash(secret, "email-customer", address.strip().lower())[:16]


def reply_subject(subject: str | None) -> str:
    """``Re: <subject>`` (once): mail clients that thread by subject need it next to In-Reply-To."""
    subject = (subject or "").strip()
    return subject if re.match(r"(?i)re\s*:", subject) else f"Re: {subject}".rstrip()


# ---------------------------------------------------------------- html → text


class _HtmlText(HTMLParser):
    """Visible text of an HTML body, one line per block; text inside ``<blockquote>`` gets ``> `` prefixes
    so :func:`strip_quoted` treats it as quoted history."""

    _SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "table", "ul", "ol", "hr", "pre", "blockquote", "section", "article"}
        | {"header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "dd", "dt"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._buf: list[str] = []
        self._depth = 0  # blockquote nesting
        self._line_depth = 0
        self._skip = 0

    def _break(self) -> None:
        line = " ".join("".join(self._buf).split())
        self.lines.append("> " * self._line_depth + line if line else "")
        self._buf, self._line_depth = [], self._depth

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self._break()
            if tag == "blockquote":
                self._depth += 1
                self._line_depth = self._depth

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK and tag not in ("br", "hr"):
            self._break()
            if tag == "blockquote":
                self._depth = max(0, self._depth - 1)
                self._line_depth = self._depth

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._buf.append(data.replace("\xa0", " "))

    def text(self) -> str:
        self.close()
        self._break()
        return _squeeze("\n".join(self.lines))


def html_to_text(html: str) -> str:
    """Readable text of an HTML body: tags, scripts and styles removed, entities unescaped, blocks on
    their own lines, blockquotes as ``> `` lines."""
    parser = _HtmlText()
    parser.feed(html)
    return parser.text()


def _squeeze(text: str) -> str:
    """Trailing spaces removed, runs of blank lines collapsed to one, outer blank lines dropped."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n")


# ---------------------------------------------------------------- quoted history

_QUOTED = re.compile(r"^\s*>")
_SIGNATURE = re.compile(r"^--\s?$")
_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"messaggio originale|oorspronkelijk bericht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
# "On <date>, <name> wrote:" and its common translations; may be wrapped over up to three lines.
_ATTRIBUTION = re.compile(
    r"^\s*(on\b.*\bwrote|le\b.*\ba\s+écrit|am\b.*\bschrieb\b.*|el\b.*\bescribió|op\b.*\bschreef\b.*|"
    r"il\b.*\bha\s+scritto|em\b.*\bescreveu)\s*:\s*$",
    re.IGNORECASE | re.DOTALL,
)
_MAX_ATTRIBUTION = 400  # characters: a date, a name and an address (also bounds the regex's work)
_ATTRIBUTION_START = re.compile(r"^\s*(on|le|am|el|op|il|em)\s", re.IGNORECASE)
# Outlook's header block: From / Sent / To / Subject (and translations), plain or *bold* from HTML.
_HEADER = re.compile(r"^\s*\*?(?P<name>[^\W\d_][\w ]{0,12}?)\s?:\*?\s", re.UNICODE)
_FROM = {"from", "de", "von", "van", "da"}
_DATE_TO_SUBJECT = {
    "sent", "date", "to", "cc", "subject", "envoyé", "à", "objet", "gesendet", "datum", "an", "betreff",
    "enviado el", "enviado", "para", "asunto", "verzonden", "aan", "onderwerp", "inviato", "oggetto",
}  # fmt: skip
_MOBILE_FOOTER = re.compile(
    r"^\s*(sent from my \w[\w ]*|sent from (outlook|mail) for \w+|get outlook for \w+|envoyé de mon \w+|"
    r"von meinem \w+ gesendet)\s*$",
    re.IGNORECASE,
)


def _attribution_span(lines: list[str], i: int) -> int:
    """How many lines (1-3) starting at ``i`` form an "On ... wrote:" attribution; 0 if none."""
    if not _ATTRIBUTION_START.match(lines[i]):
        return 0
    for span in (1, 2, 3):
        joined = " ".join(lines[i : i + span])
        if len(joined) > _MAX_ATTRIBUTION:
            return 0
        if i + span <= len(lines) and _ATTRIBUTION.match(joined):
            return span
    return 0


def _header_block(lines: list[str], i: int) -> bool:
    """Whether line ``i`` starts an Outlook-style header block (From: followed by Sent:/To:/Subject:)."""
    first = _HEADER.match(lines[i])
    if not first or first["name"].lower() not in _FROM:
        return False
    if re.search(r"(?i)\b(sent|date|envoyé|gesendet)\s?:.*\b(to|à|an)\s?:", lines[i]):
        return True  # one line: "From: a Sent: b To: c Subject: d"
    names = set()
    for line in lines[i + 1 : i + 7]:
        if m := _HEADER.match(line):
            names.add(m["name"].lower().strip())
    return len(names & _DATE_TO_SUBJECT) >= 2


def strip_quoted(text: str) -> str:
    """The new text of a reply, without the quoted history: ``>`` lines, "On <date>, <name> wrote:" (and
    French/German/Spanish/Dutch/Italian/Portuguese forms), Outlook's "Original Message" and header blocks,
    underscore separators, the signature after a ``-- `` line and mobile "Sent from my ..." footers.

    Inline replies keep the answers written between quoted passages."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if (
            _SIGNATURE.match(line)
            or _SEPARATOR.match(line)
            or _ORIGINAL.match(line)
            or _header_block(lines, i)
        ):
            break
        if span := _attribution_span(lines, i):
            rest = [rest_line for rest_line in lines[i + span :] if rest_line.strip()]
            inline = bool(rest) and _QUOTED.match(rest[0]) and any(not _QUOTED.match(r) for r in rest)
            if not inline:  # everything after it is history (quoted or, Outlook-style, not)
                break
            i += span
            continue
        if not _QUOTED.match(line):
            out.append(line)
        i += 1
    while out and (not out[-1].strip() or _MOBILE_FOOTER.match(out[-1])):
        out.pop()
    return _squeeze("\n".join(out))


# ---------------------------------------------------------------- parsing


def _text_of(part: EmailMessage) -> str:
    """A text part decoded whatever its transfer encoding; an unknown or wrong charset falls back to UTF-8,
    then Latin-1, replacing what does not decode."""
    try:
        text = part.get_content()
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True) or b""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("latin-1", errors="replace")
    return text if isinstance(text, str) else ""


def _addresses(msg: EmailMessage, name: str) -> tuple[str, ...]:
    header = msg[name]
    if header is None:
        return ()
    return tuple(a.addr_spec for a in getattr(header, "addresses", ()) if a.addr_spec and a.addr_spec != "<>")


def _is_attachment(part: EmailMessage) -> bool:
    return not part.is_multipart() and (
        part.get_content_disposition() == "attachment" or part.get_filename() is not None
    )


def parse_email(raw: bytes, *, max_bytes: int) -> InboundEmail:
    """One inbound message (raw RFC 822 bytes). Over ``max_bytes`` → ``message_too_large``; unparseable,
    without a From address, or without any body text or attachment → ``bad_email``."""
    if len(raw) > max_bytes:
        raise ProtocolError(f"email over {max_bytes} bytes", code="message_too_large")
    try:
        msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[assignment]
        senders = _addresses(msg, "From")
        to = _addresses(msg, "To")
        subject = str(msg["Subject"] or "").strip()
        message_ids = _ids(str(msg["Message-ID"] or ""))
        in_reply_to = _ids(str(msg["In-Reply-To"] or ""))
        references = tuple(dict.fromkeys(_ids(str(msg["References"] or ""))))
        body = msg.get_body(preferencelist=("plain", "html"))
        attachments = sum(1 for part in msg.walk() if part is not body and _is_attachment(part))
    except (ValueError, IndexError, TypeError, AttributeError) as exc:  # malformed headers / structure
        raise ProtocolError(f"unparseable email ({type(exc).__name__})", code="bad_email") from None
    if not senders:
        raise ProtocolError("email without a From address", code="bad_email")
    full = ""
    if body is not None and body.get_content_maintype() == "text":
        full = _text_of(body)  # type: ignore[arg-type]
        if body.get_content_subtype() == "html":
            full = html_to_text(full)
        full = _squeeze(full.replace("\r\n", "\n"))
    if not full.strip() and not attachments:
        raise ProtocolError("email without body text", code="bad_email")
    text = strip_quoted(full)
    if not text and not attachments:
        raise ProtocolError("email with quoted history only, no new text", code="bad_email")
    message_id = (
        message_ids[0] if message_ids else f"<{hashlib.sha256(raw).hexdigest()[:32]}@switchboard.invalid>"
    )
    return InboundEmail(
        message_id=message_id,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        from_address=senders[0],
        to_addresses=to,
        subject=subject,
        text=text,
        quoted_removed=text != full,
        attachments=attachments,
    )


# ---------------------------------------------------------------- IMAP polling

Handler = Callable[[bytes], Awaitable[Any] | Any]


class ImapPoller:
    """Fetches UNSEEN messages over IMAP (stdlib ``imaplib`` in a thread) and hands each to a handler.

    A message is marked ``\\Seen`` only after its handler returned: when the handler fails, the message stays
    unseen and is fetched again on the next poll (nothing is lost; a message that always fails is retried
    and logged every poll). Bodies are fetched with ``BODY.PEEK[]`` so fetching alone never marks them seen.

    ``connect`` (tests): a zero-argument callable returning an ``imaplib.IMAP4``-compatible object, not
    logged in yet.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        mailbox: str = "INBOX",
        ssl: bool = True,
        interval_s: float = 30,
        *,
        max_per_poll: int = 100,
        timeout_s: float = 30,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self.host, self.port, self.user, self._password = host, port, user, password
        self.mailbox, self.ssl, self.interval_s = mailbox, ssl, interval_s
        self.max_per_poll, self.timeout_s = max_per_poll, timeout_s
        self._connect = connect or self._default_connect

    def __repr__(self) -> str:  # no password
        return f"ImapPoller({self.host}:{self.port}, user={self.user!r}, mailbox={self.mailbox!r})"

    def _default_connect(self) -> imaplib.IMAP4:
        cls = imaplib.IMAP4_SSL if self.ssl else imaplib.IMAP4
        return cls(self.host, self.port, timeout=self.timeout_s)

    @staticmethod
    def _check(typ: str, data: Any, what: str) -> Any:
        if typ != "OK":
            raise imaplib.IMAP4.error(f"IMAP {what} failed: {typ} {data!r}")
        return data

    def _open(self) -> Any:
        conn = self._connect()
        try:
            self._check(*conn.login(self.user, self._password), "LOGIN")
            self._check(*conn.select(self.mailbox), "SELECT")
        except BaseException:
            self._logout(conn)
            raise
        return conn

    def _unseen(self, conn: Any) -> list[bytes]:
        data = self._check(*conn.uid("SEARCH", None, "UNSEEN"), "SEARCH")
        return (data[0] or b"").split()[: self.max_per_poll]

    def _fetch(self, conn: Any, uid: bytes) -> bytes | None:
        data = self._check(*conn.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return None  # expunged meanwhile

    def _mark_seen(self, conn: Any, uid: bytes) -> None:
        self._check(*conn.uid("STORE", uid, "+FLAGS", "(\\Seen)"), "STORE")

    @staticmethod
    def _logout(conn: Any) -> None:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError) as exc:
            log.debug("IMAP logout failed (%s)", type(exc).__name__)

    async def poll_once(self, handler: Handler) -> int:
        """Handle every UNSEEN message once; returns how many were handled (and marked seen). IMAP and
        connection errors propagate; handler errors are logged and leave the message unseen."""
        conn = await asyncio.to_thread(self._open)
        handled = 0
        try:
            for uid in await asyncio.to_thread(self._unseen, conn):
                raw = await asyncio.to_thread(self._fetch, conn, uid)
                if raw is None:
                    continue
                try:
                    result = handler(raw)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("email handler failed for IMAP uid %s; left unseen for the next poll", uid)
                    continue
                await asyncio.to_thread(self._mark_seen, conn, uid)
                handled += 1
        finally:
            await asyncio.to_thread(self._logout, conn)
        return handled

    async def run(self, handler: Handler, stop_event: asyncio.Event) -> None:
        """Poll every ``interval_s`` until ``stop_event`` is set; an unreachable server is logged and retried."""
        while not stop_event.is_set():
            try:
                await self.poll_once(handler)
            except (imaplib.IMAP4.error, OSError) as exc:
                log.warning("IMAP poll of %r failed (%s: %s); retrying", self, type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=self.interval_s)
