"""Inbound SMS and e-mail into sessions: one session per conversation thread, replies out through the
channel's provider adapter.

* A thread is found by keyed hashes (``channel_threads``): an SMS thread by the customer's number and ours, an
  e-mail thread by any Message-ID it holds (In-Reply-To, References). A thread whose session ended is resumed
  (same session, same history). Two first messages of one thread racing on two replicas end in one session:
  the first link wins, the other session is closed as ``merged`` and the message goes to the winner.
* The session runs in the process's :class:`~pipelines.live.LiveHub` like a websocket session, so the agent
  desktop watches and answers it the same way. Its customer side is :class:`ChannelReplies`: what an agent
  writes (and the routing notice) is sent through the adapter; a failed send is reported to the watching
  agents (``outbound_failed``) and kept in the session log, nothing is dropped silently.
* The customer's number or address lives only in memory for replies (never in a stored row or log line);
  after a restart a reply goes out again once the customer writes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..events import ChatMessage, ErrorEvent, SessionStart, _Event
from .email import InboundEmail, email_customer_ref, email_thread_key, reply_subject, thread_refs
from .outbound import Outbound, OutboundMessage
from .sms import InboundSms, customer_ref, sms_thread_key

if TYPE_CHECKING:
    from ..live import LiveHub, LiveSession
    from ..session import Pipeline

__all__ = ["ChannelInbox", "ChannelReplies", "Contact"]

log = logging.getLogger("switchboard.channels")


@dataclass
class Contact:
    """Where replies go (memory only)."""

    to: str
    sender: str | None = None  # our number the customer wrote to (SMS)
    subject: str | None = None  # e-mail
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()


@dataclass
class ChannelReplies:
    """The customer's side of an SMS or e-mail session: agent messages and routing notices go out."""

    channel: str
    outbound: Outbound
    contact: Contact
    pipeline: Pipeline
    live: LiveSession | None = None
    sent: list[str] = field(default_factory=list)  # provider ids, newest last

    async def __call__(self, event: _Event) -> None:
        text = None
        if event.type == "transcript.final" and getattr(event, "speaker", None) == "agent":
            text = event.text  # type: ignore[attr-defined] - redacted by the guardrail like every text
        elif event.type == "routing":
            text = event.notice  # type: ignore[attr-defined]
        if not text:
            return
        c = self.contact
        message = OutboundMessage(
            channel=self.channel,  # type: ignore[arg-type]
            to=c.to,
            body=text,
            session_id=self.live.state.session_id if self.live else "",
            subject=c.subject,
            in_reply_to=c.in_reply_to,
            sender=c.sender,
            references=c.references,
        )
        try:
            self.sent.append(await self.outbound.send(message))
        except Exception as exc:
            retryable = bool(getattr(exc, "retryable", True))
            log.warning("outbound %s failed (%s)", self.channel, type(exc).__name__)
            if self.live is not None:
                state = self.live.state
                self.pipeline._record(  # kept: what was not delivered, to send again from the desktop
                    state, {"type": "outbound.failed", "channel": self.channel, "text": text}
                )
                await self._report(
                    ErrorEvent(
                        code="outbound_failed",
                        message=f"the {self.channel} reply could not be delivered ({type(exc).__name__}); "
                        "it is kept in the session log" + ("; send it again" if retryable else ""),
                        retryable=retryable,
                    )
                )

    async def _report(self, error: ErrorEvent) -> None:
        """Stored and sent like any event: the watching agents get it; this adapter (the customer's side)
        sends only agent lines and notices, so the error is not texted to the customer."""
        assert self.live is not None
        await self.pipeline.publish(self.live.state, self.live.emit, error)


class ChannelInbox:
    """Inbound messages of the asynchronous channels, for one tenant of this deployment."""

    def __init__(
        self,
        pipeline: Pipeline,
        hub: LiveHub,
        *,
        tenant: str,
        secret: str,
        sms_out: Outbound,
        email_out: Outbound,
    ) -> None:
        if not secret:
            raise ValueError("a channel secret is required (SWITCHBOARD_CHANNEL_SECRET)")
        self.pipeline = pipeline
        self.hub = hub
        self.tenant = tenant
        self.secret = secret
        self.outbound = {"sms": sms_out, "email": email_out}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def sms(self, inbound: InboundSms) -> str:
        """An inbound SMS → its thread's session; returns the session id."""
        key = sms_thread_key(self.secret, inbound.from_number, inbound.to_number)
        contact = Contact(to=inbound.from_number, sender=inbound.to_number)
        customer = customer_ref(self.secret, inbound.from_number)
        text = inbound.body.strip()
        if not text:
            raise ProtocolError("an SMS without text (media only is not analysed yet)", code="invalid_event")
        return await self._deliver("sms", [key], key, customer, contact, text, inbound.message_sid)

    async def email(self, inbound: InboundEmail) -> str:
        """An inbound e-mail → its thread's session (any Message-ID of the thread); returns the session id."""
        refs = thread_refs(inbound)
        keys = [email_thread_key(self.secret, mid) for mid in refs]
        own = email_thread_key(self.secret, inbound.message_id)
        # the subject is the customer's text too: it goes out again only as the guardrail left it
        subject = await self.pipeline.redact_partial(inbound.subject) if inbound.subject else ""
        contact = Contact(
            to=inbound.from_address,
            subject=reply_subject(subject) if subject is not None else "Re: your message",
            in_reply_to=inbound.message_id,
            references=(*inbound.references, inbound.message_id),
        )
        customer = email_customer_ref(self.secret, inbound.from_address)
        text = inbound.text.strip() or f"({inbound.attachments} attachment(s), no text)"
        return await self._deliver("email", keys, own, customer, contact, text, None)

    async def _deliver(
        self,
        channel: str,
        keys: list[str],
        own_key: str,
        customer: str,
        contact: Contact,
        text: str,
        message_id: str | None,
    ) -> str:
        lock_key = keys[0] if keys else own_key  # one thread's messages open its session one at a time
        lock, users = self._locks.get(lock_key, (asyncio.Lock(), 0))
        self._locks[lock_key] = (lock, users + 1)
        try:
            async with lock:
                live = await self._session(channel, keys, own_key, customer, contact)
        finally:
            lock, users = self._locks[lock_key]
            if users == 1:
                del self._locks[lock_key]
            else:
                self._locks[lock_key] = (lock, users - 1)
        message = ChatMessage(text=text, message_id=message_id, speaker="customer")
        await self.pipeline.handle(live.state, message, live.emit)
        return live.state.session_id

    async def _session(
        self, channel: str, keys: list[str], own_key: str, customer: str, contact: Contact
    ) -> LiveSession:
        store, tenant = self.pipeline.store, self.tenant
        session_id = await store.find_thread(tenant, channel, keys or [own_key])
        if session_id is not None:
            live = self.hub.get(tenant, session_id)
            if live is not None and not live.ended:
                if isinstance(live.deliver, ChannelReplies):
                    live.deliver.contact = contact  # reply to the newest message
                await store.link_thread(tenant, channel, own_key, session_id)
                return live
            await store.flush()
            return await self._open(
                channel, SessionStart(channel=channel, customer_id=customer, session_id=session_id), contact, own_key
            )
        live = await self._open(channel, SessionStart(channel=channel, customer_id=customer), contact, None)
        state = live.state
        owner = await store.link_thread(tenant, channel, keys[0] if keys else own_key, state.session_id)
        if owner != state.session_id:  # another replica started this thread first: join its session
            await self.pipeline.end_session(state, live.emit, status="merged")
            self.hub.close(live)
            await store.flush()
            return await self._open(
                channel, SessionStart(channel=channel, customer_id=customer, session_id=owner), contact, own_key
            )
        for key in {own_key, *keys[1:]}:
            await store.link_thread(tenant, channel, key, state.session_id)
        return live

    async def _open(self, channel: str, start: SessionStart, contact: Contact, own_key: str | None) -> LiveSession:
        state, started = await self.pipeline.start_session(self.tenant, start)
        replies = ChannelReplies(channel, self.outbound[channel], contact, self.pipeline)
        live = self.hub.open(state, replies, customer_view=True)
        replies.live = live
        if own_key is not None:
            await self.pipeline.store.link_thread(self.tenant, channel, own_key, state.session_id)
        await live.emit(started)  # stored by start_session; the desktop's watchers see it
        return live
