"""A small local Zendesk (stdlib ``ThreadingHTTPServer`` in a thread) with the endpoints ``pipelines.crm`` uses,
kept in memory, and fault injection:

* ``fail_next(n, status=500, retry_after=None)``: the next ``n`` requests get that status (nothing processed);
* ``drop_next(n=1, method=None)``: the next ``n`` requests (of that method) are processed, then the connection is closed without a response
  (a response lost on the way back);
* ``slow_next(n, seconds)``: the next ``n`` requests wait that long before being processed.

It requires basic auth ``{email}/token:{token}`` and honours ``Idempotency-Key`` on ticket creation like
Zendesk: the same key with the same body returns the stored response (``x-idempotency-lookup: hit``), with
another body a 400.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeZendesk"]


@dataclass
class _Fault:
    kind: str  # "fail", "drop", "slow"
    remaining: int
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    method: str | None = None  # only requests with this method (None: any)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    idempotency_key: str | None
    body: dict[str, Any] | None = field(default=None, repr=False)


class FakeZendesk:
    def __init__(self, email: str = "bot@example.com", token: str = "tok-123", page_size: int = 100) -> None:
        self.email, self.token, self.page_size = email, token, page_size
        self.users: dict[int, dict[str, Any]] = {}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[Seen] = []
        self._idempotency: dict[str, tuple[bytes, int, bytes]] = {}
        self._faults: list[_Fault] = []
        self._next_id = 1000
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda *_: None  # a client that gave up (timeouts) is expected here
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-zendesk",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeZendesk:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ setup and inspection

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add_user(self, external_id: str, *, tags=(), user_fields=None, name="Jane Roe") -> int:
        with self._lock:
            uid = self._id()
            self.users[uid] = {
                "id": uid,
                "external_id": external_id,
                "name": name,
                "email": f"{name.lower().replace(' ', '.')}@example.com",
                "phone": "+1 555 0100",
                "tags": list(tags),
                "user_fields": dict(user_fields or {}),
            }
            return uid

    def add_ticket(self, requester_id: int, status: str = "open", external_id: str | None = None) -> int:
        with self._lock:
            tid = self._id()
            self.tickets[tid] = {
                "id": tid,
                "subject": "earlier",
                "status": status,
                "requester_id": requester_id,
                "external_id": external_id,
                "tags": [],
                "custom_fields": [],
            }
            self.comments[tid] = []
            return tid

    def tickets_for(self, external_id: str) -> list[dict[str, Any]]:
        return [t for t in self.tickets.values() if t["external_id"] == external_id]

    def seen(self, method: str, path_prefix: str = "") -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # ------------------------------------------------------------ faults

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        self._faults.append(_Fault("fail", n, status=status, retry_after=retry_after))

    def drop_next(self, n: int = 1, method: str | None = None) -> None:
        self._faults.append(_Fault("drop", n, method=method))

    def slow_next(self, n: int, seconds: float) -> None:
        self._faults.append(_Fault("slow", n, seconds=seconds))

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            self._faults = [f for f in self._faults if f.remaining > 0]
            fault = next((f for f in self._faults if f.method in (None, method)), None)
            if fault is not None:
                fault.remaining -= 1
            return fault

    # ------------------------------------------------------------ the API

    def handle(self, method: str, path: str, query: dict[str, str], raw: bytes) -> tuple[int, dict, dict]:
        body = json.loads(raw) if raw else None
        if method == "GET" and path == "/api/v2/users/search.json":
            users = [u for u in self.users.values() if u["external_id"] == query.get("external_id")]
            return 200, {"users": users, "count": len(users)}, {}
        if method == "GET" and (m := re.fullmatch(r"/api/v2/users/(\d+)/tickets/requested\.json", path)):
            uid = int(m[1])
            if uid not in self.users:
                return 404, {"error": "RecordNotFound"}, {}
            mine = [t for t in self.tickets.values() if t["requester_id"] == uid]
            page = int(query.get("page", "1"))
            chunk = mine[(page - 1) * self.page_size : page * self.page_size]
            more = page * self.page_size < len(mine)
            nxt = f"{self.url}{path}?page={page + 1}" if more else None
            return 200, {"tickets": chunk, "count": len(mine), "next_page": nxt}, {}
        if method == "GET" and path == "/api/v2/tickets.json":
            found = [t for t in self.tickets.values() if t["external_id"] == query.get("external_id")]
            return 200, {"tickets": found, "count": len(found)}, {}
        if method == "POST" and path == "/api/v2/tickets.json":
            return self._create(body["ticket"])
        if method == "PUT" and (m := re.fullmatch(r"/api/v2/tickets/(\d+)\.json", path)):
            return self._update(int(m[1]), body["ticket"])
        return 404, {"error": "InvalidEndpoint"}, {}

    def _create(self, t: dict[str, Any]) -> tuple[int, dict, dict]:
        if "requester_id" in t:
            if t["requester_id"] not in self.users:
                return 422, {"error": "RecordInvalid", "details": {"requester": "invalid"}}, {}
            requester = t["requester_id"]
        else:
            ext = t["requester"]["external_id"]
            known = [u["id"] for u in self.users.values() if u["external_id"] == ext]
            requester = known[0] if known else self.add_user(ext, name=t["requester"].get("name", "Unknown"))
        tid = self.add_ticket(requester, status=t.get("status", "new"), external_id=t.get("external_id"))
        ticket = self.tickets[tid]
        ticket.update(
            subject=t["subject"], tags=list(t.get("tags", [])), custom_fields=t.get("custom_fields", [])
        )
        self.comments[tid].append(t["comment"])
        return 201, {"ticket": ticket}, {"Location": f"{self.url}/api/v2/tickets/{tid}.json"}

    def _update(self, tid: int, t: dict[str, Any]) -> tuple[int, dict, dict]:
        ticket = self.tickets.get(tid)
        if ticket is None:
            return 404, {"error": "RecordNotFound"}, {}
        if "comment" in t:
            self.comments[tid].append(t["comment"])
        if "status" in t:
            ticket["status"] = t["status"]
        if "tags" in t:
            ticket["tags"] = list(t["tags"])
        if "additional_tags" in t:
            ticket["tags"] = sorted(set(ticket["tags"]) | set(t["additional_tags"]))
        if "custom_fields" in t:
            ticket["custom_fields"] = t["custom_fields"]
        return 200, {"ticket": ticket}, {}


def _handler(zd: FakeZendesk) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{zd.email}/token:{zd.token}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = self.headers.get("Idempotency-Key")
            with zd._lock:
                zd.requests.append(
                    Seen(self.command, parts.path, query, key, json.loads(raw) if raw else None)
                )
            if self.headers.get("Authorization") != expected:
                return self._reply(401, b'{"error": "Couldn\'t authenticate you"}', {})
            fault = zd._take_fault(self.command)
            if fault is not None and fault.kind == "fail":
                headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                return self._reply(fault.status, json.dumps({"error": "injected"}).encode(), headers)
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            with zd._lock:
                if key is not None and self.command == "POST" and key in zd._idempotency:
                    stored_raw, status, payload = zd._idempotency[key]
                    if stored_raw != raw:
                        status, payload = 400, b'{"error": "IdempotentRequestError"}'
                    headers = {"x-idempotency-lookup": "hit"}
                else:
                    status, body, headers = zd.handle(self.command, parts.path, query, raw)
                    payload = json.dumps(body).encode()
                    if key is not None and self.command == "POST" and status < 300:
                        zd._idempotency[key] = (raw, status, payload)
                        headers["x-idempotency-lookup"] = "miss"
            if fault is not None and fault.kind == "drop":  # processed, but the response is lost
                self.close_connection = True
                return None
            return self._reply(status, payload, headers)

        do_GET = do_POST = do_PUT = _serve

    return Handler
