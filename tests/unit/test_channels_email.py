"""Email: quoted-history removal on real client formats, MIME parsing, threading, the IMAP poller (with a fake
IMAP4 object) and the SMTP sender against a real local SMTP sink."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import socketserver
import threading
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from pipelines.channels import (
    ImapPoller,
    OutboundError,
    OutboundMessage,
    SmtpEmailSender,
    email_customer_ref,
    email_thread_key,
    html_to_text,
    normalize_message_id,
    parse_email,
    reply_subject,
    strip_quoted,
    thread_refs,
)
from pipelines.errors import ProtocolError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("no_leaked_tasks")]

MAX = 1 << 20

# ---------------------------------------------------------------- strip_quoted: real client formats

GMAIL_TOP_POST = """\
Hi, the refund still hasn't arrived.
Can you check again?

Thanks,
Maria

On Tue, Mar 5, 2024 at 10:15 AM Acme Support <support@acme.example> wrote:

> Hello Maria,
>
> Your refund was issued today and should arrive within 5 days.
>
> Best regards,
> Acme Support
"""

GMAIL_WRAPPED_ATTRIBUTION = """\
Still waiting for the refund.

On Tue, Mar 5, 2024 at 10:15 AM Acme Customer Support Team <
support@acme.example> wrote:

> Your refund was issued today.
"""

OUTLOOK_DESKTOP = """\
Please cancel my order 12345.

Regards,
John

-----Original Message-----
From: Acme Support <support@acme.example>
Sent: Tuesday, March 5, 2024 10:15 AM
To: John Smith <john@example.com>
Subject: RE: Order 12345

Your order has shipped.
"""

OUTLOOK_WEB = """\
I never received the parcel.

________________________________
From: Acme Support <support@acme.example>
Sent: Tuesday, March 5, 2024 10:15
To: John Smith <john@example.com>
Subject: Your parcel

It was delivered to your mailbox.
"""

OUTLOOK_HEADERS_ONLY = """\
Yes, that address is correct.

From: Acme Support <support@acme.example>
Date: Tuesday, 5 March 2024 at 10:15
To: John Smith <john@example.com>
Subject: Address check

Is your address still 1 Main St?
"""

OUTLOOK_BOLD_ONE_LINE = """\
That works for me.

*From:* Acme Support <support@acme.example> *Sent:* Tuesday, March 5, 2024 *To:* John *Subject:* Slot

Can we call you at 3pm?
"""

APPLE_MAIL_IPHONE = """\
Thank you, that fixed it!

Sent from my iPhone

> On Mar 5, 2024, at 10:15, Acme Support <support@acme.example> wrote:
>
> Please restart the router.
"""

APPLE_MAIL_UNQUOTED_ATTRIBUTION = """\
It still does not work.

On 5 Mar 2024, at 10:15, Acme Support <support@acme.example> wrote:

> Please restart the router.
> Then wait two minutes.
"""

INLINE_REPLY = """\
Hi,

On Tue, Mar 5, 2024 at 10:15 AM Acme Support <support@acme.example> wrote:
> Could you send us your order number?

It's 12345.

> And the postcode of the delivery address?

SW1A 1AA

Thanks
"""

FRENCH = """\
Je n'ai toujours pas reçu mon remboursement.

Le mar. 5 mars 2024 à 10:15, Acme Support <support@acme.example> a écrit :
> Bonjour, votre remboursement est en cours.
"""

GERMAN = """\
Die Rechnung ist falsch.

Am 05.03.2024 um 10:15 schrieb Acme Support <support@acme.example>:
> Guten Tag, anbei Ihre Rechnung.
"""

SIGNATURE = """\
Where is my order?

-- 
John Smith
Senior Buyer, Example Corp
+1 415 555 0100
"""

NESTED_QUOTES = """\
OK, escalating then.

> > Original question from last week
> Our first answer
"""

NO_QUOTE = """\
Hello,

My account is locked. Username jsmith.
Please help.
"""

FORWARD_IS_KEPT = """\
See the message below from your courier.

---------- Forwarded message ---------
From: Courier <noreply@courier.example>
Subject: Delivery failed

We could not deliver parcel 998.
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GMAIL_TOP_POST, "Hi, the refund still hasn't arrived.\nCan you check again?\n\nThanks,\nMaria"),
        (GMAIL_WRAPPED_ATTRIBUTION, "Still waiting for the refund."),
        (OUTLOOK_DESKTOP, "Please cancel my order 12345.\n\nRegards,\nJohn"),
        (OUTLOOK_WEB, "I never received the parcel."),
        (OUTLOOK_HEADERS_ONLY, "Yes, that address is correct."),
        (OUTLOOK_BOLD_ONE_LINE, "That works for me."),
        (APPLE_MAIL_IPHONE, "Thank you, that fixed it!"),
        (APPLE_MAIL_UNQUOTED_ATTRIBUTION, "It still does not work."),
        (INLINE_REPLY, "Hi,\n\nIt's 12345.\n\nSW1A 1AA\n\nThanks"),
        (FRENCH, "Je n'ai toujours pas reçu mon remboursement."),
        (GERMAN, "Die Rechnung ist falsch."),
        (SIGNATURE, "Where is my order?"),
        (NESTED_QUOTES, "OK, escalating then."),
        (NO_QUOTE, NO_QUOTE.strip()),
    ],
    ids=[
        "gmail-top-post",
        "gmail-wrapped-attribution",
        "outlook-original-message",
        "outlook-web-underscores",
        "outlook-header-block",
        "outlook-bold-one-line",
        "apple-mail-iphone",
        "apple-mail-attribution",
        "inline-reply",
        "french",
        "german",
        "signature",
        "nested-quotes",
        "no-quote",
    ],
)
def test_strip_quoted_keeps_only_the_new_text(text, expected):
    assert strip_quoted(text) == expected


def test_strip_quoted_keeps_a_forwarded_message():
    assert "We could not deliver parcel 998." in strip_quoted(FORWARD_IS_KEPT)


def test_strip_quoted_handles_crlf_and_keeps_words_like_from_in_the_text():
    text = (
        "I moved from: London to Paris.\r\nTo: whom it may concern\r\n\r\nOn Monday, John wrote:\r\n> hi\r\n"
    )
    assert strip_quoted(text) == "I moved from: London to Paris.\nTo: whom it may concern"


def test_a_line_starting_with_on_is_not_an_attribution():
    assert (
        strip_quoted("On Monday I was charged twice.\nPlease fix.")
        == "On Monday I was charged twice.\nPlease fix."
    )


# ---------------------------------------------------------------- html → text


def test_html_to_text_drops_markup_scripts_and_styles_and_quotes_blockquotes():
    html = """<html><head><style>p {color: red}</style><title>t</title></head><body>
    <script>alert('x')</script>
    <div dir="ltr">My order &amp; my invoice are <b>wrong</b>.<br>Order&nbsp;12345</div>
    <div class="gmail_quote"><div class="gmail_attr">On Tue, Mar 5, 2024 at 10:15 AM Acme &lt;a@acme.example&gt; wrote:<br></div>
    <blockquote class="gmail_quote"><div>Hello, <i>how</i> can we help?</div>
    <blockquote>older</blockquote></blockquote></div></body></html>"""
    text = html_to_text(html)
    assert "alert" not in text and "color" not in text and "<" not in text.split("\n")[0]
    assert text.startswith("My order & my invoice are wrong.\nOrder 12345")
    assert "> Hello, how can we help?" in text and "> > older" in text
    assert strip_quoted(text) == "My order & my invoice are wrong.\nOrder 12345"


# ---------------------------------------------------------------- parse_email


def _mime(
    *,
    plain: str | None = "Hello, my card was charged twice.",
    html: str | None = None,
    charset: str = "utf-8",
    cte: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: int = 0,
) -> bytes:
    msg = EmailMessage()
    base = {
        "From": "Maria Garcia <maria@example.com>",
        "To": "Acme Support <support@acme.example>, help@acme.example",
        "Subject": "Re: Refund =?",
        "Message-ID": "<CAF1234@mail.gmail.com>",
    }
    for name, value in (base | (headers or {})).items():
        if value is not None:
            msg[name] = value
    if plain is not None:
        msg.set_content(plain, charset=charset, cte=cte)
    if html is not None:
        if plain is None:
            msg.set_content(html, subtype="html", charset=charset, cte=cte)
        else:
            msg.add_alternative(html, subtype="html", charset=charset, cte=cte)
    for i in range(attachments):
        msg.add_attachment(
            b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename=f"invoice{i}.pdf"
        )
    return msg.as_bytes()


def test_a_plain_message():
    email = parse_email(_mime(), max_bytes=MAX)
    assert email.message_id == "<CAF1234@mail.gmail.com>"
    assert email.from_address == "maria@example.com"
    assert email.to_addresses == ("support@acme.example", "help@acme.example")
    assert email.subject == "Re: Refund =?"
    assert email.text == "Hello, my card was charged twice." and not email.quoted_removed
    assert email.attachments == 0 and email.in_reply_to is None and email.references == ()


def test_multipart_alternative_prefers_the_plain_part():
    raw = _mime(plain="plain version", html="<p>html version</p>")
    assert parse_email(raw, max_bytes=MAX).text == "plain version"


def test_html_only_is_converted_and_its_quote_removed():
    html = (
        "<p>The app crashes on login &mdash; every time.</p>"
        "<div>On Mon, Mar 4, 2024 at 9:00 AM Acme wrote:</div><blockquote><p>Try reinstalling.</p></blockquote>"
    )
    email = parse_email(_mime(plain=None, html=html), max_bytes=MAX)
    assert email.text == "The app crashes on login — every time." and email.quoted_removed


def test_multipart_mixed_with_attachments_counts_them():
    raw = _mime(plain="Invoices attached.", html="<p>Invoices attached.</p>", attachments=2)
    email = parse_email(raw, max_bytes=MAX)
    assert email.text == "Invoices attached." and email.attachments == 2


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_transfer_encodings_are_decoded(cte):
    text = "Ma facture est erronée : 120 € au lieu de 100 € — merci de corriger." + " long" * 30
    raw = _mime(plain=text, cte=cte)
    if cte != "8bit":
        assert "erronée".encode() not in raw  # really encoded on the wire
    assert parse_email(raw, max_bytes=MAX).text == text


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252", "koi8-r", "shift_jis"])
def test_non_utf8_charsets_are_decoded(charset):
    text = {"koi8-r": "Мой заказ не пришёл", "shift_jis": "注文が届きません"}.get(charset, "Café déjà réglé")
    raw = (
        b"From: a@example.com\r\nTo: b@acme.example\r\nSubject: x\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset="
        + charset.encode()
        + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + text.encode(charset)
        + b"\r\n"
    )
    assert parse_email(raw, max_bytes=MAX).text == text


def test_an_unknown_charset_falls_back_to_utf8_then_latin1():
    head = b"From: a@example.com\r\nContent-Type: text/plain; charset=x-unknown-8bit\r\n\r\n"
    assert parse_email(head + "Grüße".encode(), max_bytes=MAX).text == "Grüße"
    assert parse_email(head + "Grüße".encode("latin-1"), max_bytes=MAX).text == "Grüße"


def test_encoded_headers_are_decoded():
    raw = _mime(
        headers={
            "Subject": "=?utf-8?q?Probl=C3=A8me_de_facture?=",
            "From": "=?utf-8?b?" + base64.b64encode("Zoë".encode()).decode() + "?= <zoe@example.com>",
        }
    )
    email = parse_email(raw, max_bytes=MAX)
    assert email.subject == "Problème de facture" and email.from_address == "zoe@example.com"


def test_a_gmail_reply_is_threaded_and_stripped():
    raw = _mime(
        plain=GMAIL_TOP_POST,
        headers={
            "In-Reply-To": "<reply-2@acme.example>",
            "References": "<root@acme.example> <CAF-1@mail.gmail.com> <reply-2@acme.example>",
        },
    ).replace(b"<root@acme.example> <CAF", b"<root@acme.example>\r\n\t<CAF")  # folded, as clients send it
    assert b"\r\n\t<CAF" in raw
    email = parse_email(raw, max_bytes=MAX)
    assert email.quoted_removed and email.text.startswith("Hi, the refund")
    assert email.in_reply_to == "<reply-2@acme.example>"
    assert email.references == ("<root@acme.example>", "<CAF-1@mail.gmail.com>", "<reply-2@acme.example>")
    assert thread_refs(email) == ["<reply-2@acme.example>", "<CAF-1@mail.gmail.com>", "<root@acme.example>"]


def test_a_message_without_message_id_gets_a_stable_one():
    raw = _mime(headers={"Message-ID": None})
    first, again = parse_email(raw, max_bytes=MAX), parse_email(raw, max_bytes=MAX)
    assert first.message_id == again.message_id and first.message_id.endswith("@switchboard.invalid>")
    assert (
        parse_email(_mime(plain="other", headers={"Message-ID": None}), max_bytes=MAX).message_id
        != first.message_id
    )


def test_an_attachment_only_message_is_accepted_with_empty_text():
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg.add_attachment(b"\x89PNG", maintype="image", subtype="png", filename="receipt.png")
    email = parse_email(msg.as_bytes(), max_bytes=MAX)
    assert email.text == "" and email.attachments == 1


def test_too_large_is_message_too_large():
    with pytest.raises(ProtocolError) as err:
        parse_email(_mime(plain="x" * 2000), max_bytes=1000)
    assert err.value.code == "message_too_large"


@pytest.mark.parametrize(
    "raw",
    [
        _mime(headers={"From": None}),  # no From
        _mime(headers={"From": "undisclosed-recipients:;"}),  # a From without an address
        _mime(plain="   \n  "),  # no text
        _mime(plain=None, html="<html><body><script>x()</script></body></html>"),  # html without text
        _mime(plain="> only the quoted history\n> nothing new"),
        b"\x00\x01\x02 not an email at all",
    ],
    ids=["no-from", "from-without-address", "blank", "empty-html", "quote-only", "garbage"],
)
def test_unusable_messages_are_bad_email(raw):
    with pytest.raises(ProtocolError) as err:
        parse_email(raw, max_bytes=MAX)
    assert err.value.code == "bad_email" and not err.value.retryable


# ---------------------------------------------------------------- threading helpers


def test_message_ids_and_thread_keys_are_normalised():
    assert normalize_message_id(" abc@x ") == "<abc@x>" == normalize_message_id("<abc@x>")
    assert email_thread_key(b"s", "abc@x") == email_thread_key("s", "<abc@x>")
    assert email_thread_key(b"s", "<abc@x>") != email_thread_key(b"s", "<ABC@x>")  # ids are case-sensitive
    assert "abc" not in email_thread_key(b"s", "<abc@x>") and len(email_thread_key(b"s", "<abc@x>")) == 64
    with pytest.raises(ValueError):
        normalize_message_id("   ")
    ref = email_customer_ref(b"s", " Maria@Example.com ")
    assert (
        ref == email_customer_ref(b"s", "maria@example.com") and ref.startswith("email-") and len(ref) == 22
    )


def test_reply_subject_adds_re_once():
    assert reply_subject("Refund") == "Re: Refund"
    assert reply_subject("RE: Refund") == "RE: Refund"
    assert reply_subject(None) == "Re:"


# ---------------------------------------------------------------- IMAP poller (fake IMAP4 object)


class FakeImap:
    """The imaplib.IMAP4 calls the poller makes, over an in-memory mailbox."""

    def __init__(self, messages: dict[bytes, bytes]) -> None:
        self.messages = messages
        self.seen: set[bytes] = set()
        self.fetch_items: list[str] = []
        self.logged_in = self.logged_out = False

    def login(self, user: str, password: str) -> tuple[str, list[bytes]]:
        if password != "secret":
            raise imaplib.IMAP4.error("[AUTHENTICATIONFAILED] Invalid credentials")
        self.logged_in = True
        return "OK", [b"Logged in"]

    def select(self, mailbox: str = "INBOX") -> tuple[str, list[bytes]]:
        return ("OK", [str(len(self.messages)).encode()]) if mailbox == "INBOX" else ("NO", [b"no mailbox"])

    def uid(self, command: str, *args: object) -> tuple[str, list]:
        if command == "SEARCH":
            assert args[-1] == "UNSEEN"
            return "OK", [b" ".join(u for u in self.messages if u not in self.seen)]
        if command == "FETCH":
            uid, items = args
            self.fetch_items.append(str(items))
            return "OK", [
                (b"1 (UID " + uid + b" BODY[] {%d}" % len(self.messages[uid]), self.messages[uid]),
                b")",
            ]
        if command == "STORE":
            uid, op, flags = args
            assert (op, flags) == ("+FLAGS", "(\\Seen)")
            self.seen.add(uid)
            return "OK", [b""]
        raise AssertionError(command)

    def logout(self) -> tuple[str, list[bytes]]:
        self.logged_out = True
        return "BYE", [b""]


def _poller(fake: FakeImap, password: str = "secret", mailbox: str = "INBOX") -> ImapPoller:
    return ImapPoller("imap.example", 993, "support", password, mailbox=mailbox, connect=lambda: fake)


async def test_the_poller_hands_each_unseen_message_over_and_marks_it_seen():
    fake = FakeImap({b"7": b"raw seven", b"9": b"raw nine"})
    got: list[bytes] = []

    async def handler(raw: bytes) -> None:
        got.append(raw)

    assert await _poller(fake).poll_once(handler) == 2
    assert got == [b"raw seven", b"raw nine"] and fake.seen == {b"7", b"9"}
    assert all("PEEK" in items for items in fake.fetch_items)  # fetching alone never sets \Seen
    assert fake.logged_out
    assert await _poller(fake).poll_once(handler) == 0 and len(got) == 2  # nothing twice


async def test_a_failing_handler_leaves_the_message_unseen_for_the_next_poll():
    fake = FakeImap({b"1": b"good", b"2": b"poison", b"3": b"good too"})
    calls: list[bytes] = []

    def handler(raw: bytes) -> None:  # a plain function works too
        calls.append(raw)
        if raw == b"poison":
            raise RuntimeError("pipeline down")

    assert await _poller(fake).poll_once(handler) == 2
    assert fake.seen == {b"1", b"3"}  # the failed one is not lost
    assert await _poller(fake).poll_once(handler) == 0
    assert calls == [b"good", b"poison", b"good too", b"poison"]  # retried on the next poll


async def test_imap_errors_propagate_from_poll_once_and_the_connection_is_closed():
    fake = FakeImap({b"1": b"x"})
    with pytest.raises(imaplib.IMAP4.error):
        await _poller(fake, password="wrong").poll_once(lambda raw: None)
    with pytest.raises(imaplib.IMAP4.error):
        await _poller(fake, mailbox="Archive").poll_once(lambda raw: None)
    assert fake.logged_out and not fake.seen
    assert "secret" not in repr(_poller(fake))


async def test_run_polls_until_stopped_and_survives_a_failing_server():
    fake = FakeImap({b"1": b"x"})
    attempts = 0

    def connect() -> FakeImap:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionRefusedError("server restarting")
        return fake

    stop = asyncio.Event()
    handled: list[bytes] = []

    async def handler(raw: bytes) -> None:
        handled.append(raw)
        stop.set()

    poller = ImapPoller("imap.example", 993, "support", "secret", interval_s=0.01, connect=connect)
    await asyncio.wait_for(poller.run(handler, stop), timeout=5)
    assert attempts == 2 and handled == [b"x"] and fake.seen == {b"1"}


# ---------------------------------------------------------------- SMTP sender against a local SMTP sink


class _Smtp(socketserver.StreamRequestHandler):
    """A tiny SMTP server: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT. ``reject_rcpt``: the reply to RCPT."""

    received: list[dict] = []
    reject_rcpt: bytes | None = None

    def reply(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")

    def handle(self) -> None:
        envelope: dict = {"rcpt": []}
        self.reply(b"220 sink ESMTP")
        while line := self.rfile.readline():
            command = line.strip().decode()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == "AUTH":
                envelope["auth"] = base64.b64decode(command.split()[2]).split(b"\0")[1:]
                self.reply(b"235 2.7.0 ok")
            elif verb == "MAIL":
                envelope["from"] = command
                self.reply(b"250 ok")
            elif verb == "RCPT":
                if type(self).reject_rcpt:
                    self.reply(type(self).reject_rcpt)
                    continue
                envelope["rcpt"].append(command)
                self.reply(b"250 ok")
            elif verb == "DATA":
                self.reply(b"354 go ahead")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                envelope["data"] = data
                type(self).received.append(envelope)
                self.reply(b"250 queued")
            elif verb == "QUIT":
                self.reply(b"221 bye")
                return
            else:
                self.reply(b"250 ok")


@pytest.fixture
def smtp_sink():
    _Smtp.received, _Smtp.reject_rcpt = [], None
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Smtp
    server.shutdown()
    server.server_close()
    thread.join()


REPLY = OutboundMessage(
    "email",
    "maria@example.com",
    "Your refund of 120 € was issued today.",
    session_id="ses_1",
    subject="Re: Refund",
    in_reply_to="<CAF-2@mail.gmail.com>",
    references=("<root@acme.example>", "<CAF-1@mail.gmail.com>"),
)


async def test_smtp_sender_delivers_a_threaded_reply(smtp_sink):
    port, sink = smtp_sink
    sender = SmtpEmailSender(
        "127.0.0.1", port, from_address="support@acme.example", user="bot", password="pw"
    )
    message_id = await sender.send(REPLY)
    (envelope,) = sink.received
    assert envelope["auth"] == [b"bot", b"pw"]
    assert "support@acme.example" in envelope["from"] and "maria@example.com" in envelope["rcpt"][0]
    sent = BytesParser(policy=policy.default).parsebytes(envelope["data"].replace(b"\r\n..", b"\r\n."))
    assert sent["Message-ID"] == message_id and message_id.endswith("@acme.example>")
    assert sent["In-Reply-To"] == "<CAF-2@mail.gmail.com>"
    assert sent["References"] == "<root@acme.example> <CAF-1@mail.gmail.com> <CAF-2@mail.gmail.com>"
    assert sent["Subject"] == "Re: Refund" and sent["To"] == "maria@example.com"
    assert sent.get_content().strip() == "Your refund of 120 € was issued today."
    assert "pw" not in repr(sender)


@pytest.mark.parametrize(
    ("reply", "retryable"), [(b"550 5.1.1 no such user", False), (b"451 try later", True)]
)
async def test_smtp_refusals_are_outbound_failures_retryable_per_code(smtp_sink, reply, retryable):
    port, sink = smtp_sink
    sink.reject_rcpt = reply
    sender = SmtpEmailSender("127.0.0.1", port, from_address="support@acme.example")
    with pytest.raises(OutboundError) as err:
        await sender.send(REPLY)
    assert err.value.code == "outbound_failed" and err.value.retryable is retryable
    assert err.value.status == int(reply[:3])


async def test_an_unreachable_smtp_server_is_retryable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = SmtpEmailSender("127.0.0.1", port, from_address="support@acme.example", timeout_s=2)
    with pytest.raises(OutboundError) as err:
        await sender.send(REPLY)
    assert err.value.retryable


async def test_starttls_on_a_server_without_it_is_not_retryable(smtp_sink):
    port, _ = smtp_sink
    sender = SmtpEmailSender("127.0.0.1", port, from_address="support@acme.example", starttls=True)
    with pytest.raises(OutboundError) as err:
        await sender.send(REPLY)
    assert not err.value.retryable
