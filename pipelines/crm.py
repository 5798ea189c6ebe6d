"""The CRM behind a small interface: the customer's context at session start, internal notes as the session
goes, and one case per session at its end. :class:`NullCrm` does nothing; :class:`ZendeskCrm` talks to the
Zendesk Tickets REST API.

A session's case is never duplicated: before creating, the ticket whose ``external_id`` is the session id is
looked up (and updated when found); the create itself carries ``Idempotency-Key:
switchboard-{tenant}-{session_id}``, so a create retried after a lost response returns the same ticket.

Every text given here is already PII-redacted by the caller; request and response bodies are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import SwitchboardError

__all__ = [
    "CRM_ERROR_CODES",
    "CaseRef",
    "CrmConnector",
    "CrmError",
    "CustomerContext",
    "NullCrm",
    "ZendeskCrm",
    "crm_from_settings",
]

log = logging.getLogger("switchboard.crm")

#: The CRM's error codes, documented like ``pipelines.errors.ERROR_CODES`` (to be merged into it and the
#: README's table; until then :class:`CrmError` checks its codes here).
CRM_ERROR_CODES: dict[str, tuple[str, bool]] = {
    "crm_unavailable": ("the CRM could not be reached or kept failing (timeouts, 5xx, rate limits)", True),
    "crm_rejected": ("the CRM refused the request: credentials, permissions or a bad request", False),
}

_OPEN_STATUSES = frozenset({"new", "open", "pending", "hold"})
_STATUSES = frozenset({"new", "open", "pending", "hold", "solved"})
_MAX_COMMENT_CHARS = 60_000  # Zendesk caps a comment body at 64 KB
_MAX_RETRY_AFTER_S = 30.0
_MAX_PAGES = 10


class CrmError(SwitchboardError):
    """The CRM failed. ``code``: ``crm_unavailable`` (retryable) or ``crm_rejected`` (not: fix the
    configuration or the request). ``status`` is the HTTP status when there was one."""

    code = "crm_unavailable"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        # SwitchboardError.__init__ checks ERROR_CODES, which does not list the CRM codes yet
        Exception.__init__(self, message)
        if code is not None:
            self.code = code
        if self.code not in CRM_ERROR_CODES:
            raise ValueError(f"unknown CRM error code {self.code!r}")
        self.message = message
        self.utterance_id = None
        self.status = status

    @property
    def retryable(self) -> bool:
        return CRM_ERROR_CODES[self.code][1]


@dataclass(frozen=True, slots=True)
class CustomerContext:
    """What the CRM knows about the customer, without a name or contact details."""

    external_id: str  # our customer id
    crm_user_id: str
    open_tickets: int
    tags: tuple[str, ...] = ()
    plan: str | None = None  # a `plan` or `tier` user field, when the CRM has one


@dataclass(frozen=True, slots=True)
class CaseRef:
    system: str  # "zendesk", "none"
    case_id: str
    created: bool = False  # this call created it (False: it existed and was updated)


class CrmConnector(ABC):
    """A CRM. Implementations never put names or contact details in a :class:`CustomerContext`."""

    name: str

    @abstractmethod
    async def fetch_context(self, tenant: str, customer_id: str) -> CustomerContext | None:
        """None: the CRM does not know this customer."""

    @abstractmethod
    async def log_event(
        self, tenant: str, session_id: str, case_ref: CaseRef | None, text: str, sentiment: float | None
    ) -> CaseRef | None:
        """Add a transcript line (and its sentiment) to the session's case as an internal note. Without a
        ``case_ref`` the session's case is looked up; when there is none yet, nothing is written (the whole
        transcript goes into the case at :meth:`close_case`). Returns the case written to."""

    @abstractmethod
    async def close_case(
        self, tenant: str, session_id: str, customer_id: str, summary: dict[str, Any], transcript: list[str]
    ) -> CaseRef:
        """Create the session's case, or update it when it exists, with the summary and the transcript."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to close by default
        """Release connections."""


class NullCrm(CrmConnector):
    """No CRM: no context, nothing logged, no case."""

    name = "none"

    async def fetch_context(self, tenant: str, customer_id: str) -> CustomerContext | None:
        return None

    async def log_event(
        self, tenant: str, session_id: str, case_ref: CaseRef | None, text: str, sentiment: float | None
    ) -> CaseRef | None:
        return None

    async def close_case(
        self, tenant: str, session_id: str, customer_id: str, summary: dict[str, Any], transcript: list[str]
    ) -> CaseRef:
        return CaseRef(system="none", case_id=session_id)


def _tag(value: str) -> str:
    """Zendesk tags: lowercase, no spaces."""
    return re.sub(r"[^a-z0-9_:-]+", "_", value.lower()).strip("_")


def _summary_text(session_id: str, summary: dict[str, Any], transcript: list[str]) -> str:
    lines = [f"Switchboard session {session_id}", ""]
    for key, value in summary.items():
        if key in ("subject", "status", "tags"):
            continue
        shown = value if isinstance(value, str | int | float | bool) or value is None else json.dumps(value)
        lines.append(f"{key}: {shown}")
    head = "\n".join(lines)
    body = "\n".join(transcript)
    room = _MAX_COMMENT_CHARS - len(head) - 40
    if len(body) > room:
        body = "[... earlier lines cut ...]\n" + body[len(body) - room :]
    return f"{head}\n\nTranscript:\n{body}" if transcript else head


class ZendeskCrm(CrmConnector):
    """Zendesk Tickets REST API over ``httpx`` (basic auth ``{email}/token:{api_token}``).

    Retries (``retries`` times, exponential ``backoff_s``) on 429 (after ``Retry-After``, up to 30 s), 5xx,
    timeouts and connection errors; never on another 4xx. Updates that add a comment are not idempotent in
    Zendesk, so they are retried after a refusal (429, 5xx) or a failed connect, but not after a lost
    response (the comment may be there already). ``custom_fields`` maps summary keys to Zendesk ticket field ids."""

    name = "zendesk"

    def __init__(
        self,
        base_url: str,
        email: str,
        api_token: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        custom_fields: dict[str, int] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise ValueError(f"Zendesk base URL must be http(s)://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.custom_fields = dict(custom_fields or {})
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.BasicAuth(f"{email}/token", api_token),
            timeout=httpx.Timeout(timeout_s),
            headers={"Accept": "application/json", "User-Agent": "switchboard-crm"},
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ HTTP

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        content = json.dumps(body).encode() if body is not None else None  # the same bytes on every attempt
        send_headers = {**(headers or {}), **({"Content-Type": "application/json"} if content else {})}
        problem = ""
        for attempt in range(self.retries + 1):
            delay = self.backoff_s * 2**attempt
            try:
                resp = await self._client.request(
                    method, path, params=params, content=content, headers=send_headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                problem = f"cannot connect ({type(exc).__name__})"  # not sent: always safe to retry
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"no response ({type(exc).__name__})"
                if not idempotent:
                    raise CrmError(
                        f"Zendesk {method} {path}: {problem}; not retried, it may have been applied"
                    ) from exc
            else:
                status = resp.status_code
                if status < 300:
                    return resp.json() if resp.content else {}
                if status == 429:
                    problem = "rate limited (429)"
                    delay = min(_retry_after(resp) or delay, _MAX_RETRY_AFTER_S)
                elif status >= 500:
                    problem = f"server error ({status})"
                else:
                    raise _rejected(method, path, status, self.base_url)
            log.warning(
                "zendesk %s %s: %s (attempt %d of %d)", method, path, problem, attempt + 1, self.retries + 1
            )
            if attempt < self.retries:
                await asyncio.sleep(delay)
        raise CrmError(f"Zendesk {method} {path}: {problem} after {self.retries + 1} attempts")

    # ------------------------------------------------------------ lookups

    async def _user(self, customer_id: str) -> dict[str, Any] | None:
        users = (await self._call("GET", "/api/v2/users/search.json", params={"external_id": customer_id}))[
            "users"
        ]
        return next((u for u in users if u.get("external_id") == customer_id), None)

    async def _session_ticket(self, session_id: str) -> dict[str, Any] | None:
        tickets = (await self._call("GET", "/api/v2/tickets.json", params={"external_id": session_id}))[
            "tickets"
        ]
        matching = [t for t in tickets if t.get("external_id") == session_id]
        return (
            min(matching, key=lambda t: t["id"]) if matching else None
        )  # the first one, should there be two

    async def fetch_context(self, tenant: str, customer_id: str) -> CustomerContext | None:
        user = await self._user(customer_id)
        if user is None:
            return None
        open_tickets, path, params = 0, f"/api/v2/users/{user['id']}/tickets/requested.json", None
        for _ in range(_MAX_PAGES):
            page = await self._call("GET", path, params=params)
            open_tickets += sum(t.get("status") in _OPEN_STATUSES for t in page.get("tickets", ()))
            nxt = page.get("next_page")
            # the credentials go only to our own Zendesk
            if not nxt or not nxt.startswith(self.base_url + "/"):
                break
            path, params = nxt[len(self.base_url) :], None
        fields = user.get("user_fields") or {}
        plan = fields.get("plan") or fields.get("tier")
        return CustomerContext(
            external_id=customer_id,
            crm_user_id=str(user["id"]),
            open_tickets=open_tickets,
            tags=tuple(user.get("tags") or ()),
            plan=str(plan) if plan else None,
        )

    # ------------------------------------------------------------ writes

    async def _comment(self, ticket_id: str, text: str, **ticket: Any) -> None:
        body = {"ticket": {"comment": {"body": text, "public": False}, **ticket}}
        await self._call("PUT", f"/api/v2/tickets/{ticket_id}.json", body=body, idempotent=False)

    async def log_event(
        self, tenant: str, session_id: str, case_ref: CaseRef | None, text: str, sentiment: float | None
    ) -> CaseRef | None:
        if case_ref is None:
            ticket = await self._session_ticket(session_id)
            if ticket is None:
                return None
            case_ref = CaseRef(system=self.name, case_id=str(ticket["id"]))
        note = text if sentiment is None else f"{text}\n(sentiment {sentiment:+.2f})"
        await self._comment(case_ref.case_id, note)
        return case_ref

    async def close_case(
        self, tenant: str, session_id: str, customer_id: str, summary: dict[str, Any], transcript: list[str]
    ) -> CaseRef:
        text = _summary_text(session_id, summary, transcript)
        tags = sorted(
            {"switchboard", _tag(f"switchboard_{tenant}"), *(_tag(t) for t in summary.get("tags", ()))}
        )
        status = summary.get("status")
        update: dict[str, Any] = {"status": status} if status in _STATUSES else {}
        fields = [{"id": fid, "value": summary[k]} for k, fid in self.custom_fields.items() if k in summary]
        if fields:
            update["custom_fields"] = fields

        existing = await self._session_ticket(session_id)
        if existing is not None:
            await self._comment(str(existing["id"]), text, additional_tags=tags, **update)
            return CaseRef(system=self.name, case_id=str(existing["id"]))

        user = await self._user(customer_id)
        # a new requester needs a name in Zendesk: a pseudonym from our id, never the customer's name
        requester = (
            {"requester_id": user["id"]}
            if user
            else {"requester": {"external_id": customer_id, "name": f"Customer {customer_id}"}}
        )
        ticket = {
            "subject": summary.get("subject") or f"Switchboard session {session_id}",
            "comment": {"body": text, "public": False},
            **requester,
            "external_id": session_id,
            "tags": tags,
            **update,
        }
        created = await self._call(
            "POST",
            "/api/v2/tickets.json",
            body={"ticket": ticket},
            headers={"Idempotency-Key": f"switchboard-{tenant}-{session_id}"},
        )
        return CaseRef(system=self.name, case_id=str(created["ticket"]["id"]), created=True)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _rejected(method: str, path: str, status: int, base_url: str) -> CrmError:
    hints = {
        401: f"check the Zendesk email and API token, that token access is enabled, and the URL {base_url}",
        403: "the Zendesk user lacks the permission (an agent or admin token is needed)",
        404: f"not found: check the Zendesk URL {base_url}",
        422: "Zendesk could not process the request (an invalid field or value)",
    }
    hint = hints.get(status, "Zendesk refused the request")
    return CrmError(f"Zendesk {method} {path} → {status}: {hint}", code="crm_rejected", status=status)


def crm_from_settings(kind: str, **kw: Any) -> CrmConnector:
    """``none`` → :class:`NullCrm`; ``zendesk`` → :class:`ZendeskCrm` (``base_url``, ``email``, ``api_token``,
    options)."""
    if kind == "none":
        return NullCrm()
    if kind == "zendesk":
        missing = [k for k in ("base_url", "email", "api_token") if not kw.get(k)]
        if missing:
            raise ValueError(f"the zendesk CRM needs {', '.join(missing)}")
        return ZendeskCrm(**kw)
    raise ValueError(f"unknown CRM {kind!r}: none or zendesk")
