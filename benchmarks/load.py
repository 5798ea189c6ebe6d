#!/usr/bin/env python
"""Scale benchmark: hold thousands of idle websocket chat sessions, then find the highest chat message rate whose
message → suggestion p95 stays under the target while they are held. Prints JSON.

    python benchmarks/load.py --start --idle 10000 --out benchmarks/results/load.json   # `make load`
    python benchmarks/load.py --url ws://10.0.0.5:8000/v1/sessions --token T --idle 2000 --rates 4,8,12
    python benchmarks/load.py --compare a.json b.json

Phases, all on one server:

1. **hold** — open ``--idle`` chat sessions (``session.start`` → ``session.started``, paced by
   ``--connect-rate``; a ``rate_limited`` start is retried after a pause, as a client should) and keep every one
   open for ``--hold-s`` seconds. A connection the server closes, or a session that fails to start, is a drop.
2. **rate** — with every idle session still open, ``--active`` more sessions, opened by a separate driver
   process (real clients are other machines: a process holding 10,000 connections would add its own event-loop
   delays to what it measures), send customer messages as an open-loop Poisson process at each rate of
   ``--rates`` (messages/s, ``--step-s`` seconds each). Latency is measured from
   sending the message to the first ``assist.suggestion`` (what the agent sees first: grounded articles, or the
   cached reply) and, separately, to the final generated one. The sweep stops after the first rate whose p95
   misses ``--target-ms`` (or that errors, or cannot keep up with its own arrivals).
3. **check** — every held session sends ``session.end`` and must get ``session.ended``: it was alive end to end,
   not just its TCP connection. Any that does not is a drop.

The result has sessions held and dropped, each rate's p50/p95/p99, the highest rate that met the target, the
server's CPU and memory (with ``--start``: every process of the server it launched) and the cost per session from the
session summaries (tokens) and CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._cpu import tree_cpu, tree_rss_mb  # noqa: E402
from benchmarks._server import add_server_args, server  # noqa: E402
from benchmarks._stats import emit, percentiles  # noqa: E402
from benchmarks.chat_load import MESSAGES  # noqa: E402
from serve.client import SessionClient  # noqa: E402
from serve.run import haproxy_maxconn  # noqa: E402

SCRIPT = Path(__file__).resolve()


def _log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Held:
    """One held session: its client and the task reading its events."""

    index: int
    client: SessionClient
    session_id: str
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    reader: asyncio.Task | None = None
    closed: str | None = None  # why the connection ended before we ended it
    busy: bool = False
    ending: bool = False

    async def read(self) -> None:
        try:
            while True:
                raw = await self.client.ws.recv()
                if isinstance(raw, str):
                    self.inbox.put_nowait(json.loads(raw))
        except Exception as exc:  # the connection closed
            if not self.ending:
                self.closed = type(exc).__name__
            self.inbox.put_nowait(None)

    async def until(self, pred, wait_s: float) -> tuple[dict | None, list[dict]]:
        """Events up to the first that ``pred`` accepts (or an error event, or the connection closing)."""
        seen: list[dict] = []
        deadline = time.perf_counter() + wait_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None, seen
            try:
                event = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                return None, seen
            if event is None:
                return None, seen
            seen.append(event)
            if event["type"] == "error" or pred(event):
                return event, seen


class ServerMeter:
    """CPU seconds (by deployment and role, ``benchmarks/_cpu.py``) and memory of the server this run launched
    (``--start``: every process under this one). The benchmark's own process is not counted."""

    def sample(self) -> dict[str, Any]:
        cpu = tree_cpu(os.getpid(), include_root=False)
        by_role = {k.removeprefix("replica:"): v for k, v in cpu.items() if k != "total"}
        return {"cpu_s": cpu["total"], "rss_mb": tree_rss_mb(os.getpid(), include_root=False), "by_role": by_role}

    @staticmethod
    def spent(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        """CPU seconds per role between two samples."""
        return {
            role: round(b["by_role"][role] - a["by_role"].get(role, 0.0), 2)
            for role in sorted(b["by_role"])
            if b["by_role"][role] - a["by_role"].get(role, 0.0) >= 0.01
        }


async def open_sessions(url: str, token: str, n: int, rate: float, in_flight: int) -> tuple[list[Held], dict]:
    held: list[Held] = []
    failures: dict[str, int] = {}
    retries = 0
    queued_starts = 0  # sessions that waited in the server's queue (session.queued) before starting
    connect_ms: list[float] = []
    gate = asyncio.Semaphore(in_flight)
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal retries, queued_starts
        await asyncio.sleep(i / rate)
        async with gate:
            t = time.perf_counter()
            for attempt in range(30):
                client = SessionClient(url, token, open_timeout=120)
                try:
                    await client.__aenter__()
                    started = await client.start(customer_id=f"load-{i}")
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
                    failures[f"connect:{type(exc).__name__}"] = failures.get(f"connect:{type(exc).__name__}", 0) + 1
                    return
                queued_starts += bool(client.queued)
                if started.get("type") == "session.started":
                    h = Held(i, client, started["session_id"])
                    h.reader = asyncio.create_task(h.read())
                    held.append(h)
                    connect_ms.append((time.perf_counter() - t) * 1000)
                    return
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)
                code = started.get("code", started.get("type"))
                if code in ("rate_limited", "server_busy"):
                    retries += 1
                    await asyncio.sleep(0.5 + attempt * 0.25)
                    continue
                failures[f"start:{code}"] = failures.get(f"start:{code}", 0) + 1
                return
            failures["start:gave_up"] = failures.get("start:gave_up", 0) + 1

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    last = 0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(5)
        if len(held) - last >= 500 or all(t.done() for t in tasks):
            last = len(held)
            _log(f"{len(held)}/{n} sessions open")
    await asyncio.gather(*tasks)
    return held, {
        "opened": len(held),
        "open_s": round(time.perf_counter() - t0, 1),
        "start_retries": retries,
        "starts_queued": queued_starts,
        "start_failures": failures,
        "connect_ms": percentiles(connect_ms),
    }


async def rate_step(active: list[Held], rate: float, step_s: float, target_ms: float, seed: int) -> dict:
    """Open-loop Poisson arrivals at ``rate``: each goes to a session not waiting for its own reply."""
    rng = random.Random(seed)
    first_ms: list[float] = []
    final_ms: list[float] = []
    server_ms: list[float] = []
    sources: dict[str, int] = {}
    fallbacks: dict[str, int] = {}  # why a final suggestion is not generated (shed, ungrounded, timeout, ...)
    errors: dict[str, int] = {}
    backlog = 0
    pending: set[asyncio.Task] = set()

    async def message(h: Held, text: str) -> None:
        h.busy = True
        try:
            t = time.perf_counter()
            await h.client.send({"type": "chat.message", "text": text})
            first, _ = await h.until(lambda e: e["type"] == "assist.suggestion", 30)
            if first is None or first["type"] != "assist.suggestion":
                code = "timeout" if first is None else first.get("code", first["type"])
                errors[code] = errors.get(code, 0) + 1
                if first is None or first["type"] == "error":
                    return
            first_ms.append((time.perf_counter() - t) * 1000)
            server_ms.append(first.get("latency_ms", 0.0))
            final = first
            if first.get("final") is False:
                final, _ = await h.until(
                    lambda e: e["type"] == "assist.suggestion" and e.get("final", True) is not False, 60
                )
            if final is not None and final["type"] == "assist.suggestion":
                final_ms.append((time.perf_counter() - t) * 1000)
                sources[final.get("source", "?")] = sources.get(final.get("source", "?"), 0) + 1
                why = final.get("fallback") or "none"
                fallbacks[why] = fallbacks.get(why, 0) + 1
            elif final is not None:
                code = final.get("code", final["type"])
                errors[f"final:{code}"] = errors.get(f"final:{code}", 0) + 1
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        finally:
            h.busy = False

    t0 = time.perf_counter()
    next_at = t0
    sent = 0
    while True:
        next_at += rng.expovariate(rate)
        if next_at - t0 > step_s:
            break
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        free = [h for h in active if not h.busy and h.closed is None]
        if not free:
            backlog += 1  # every active session is still waiting: the server is not keeping up
            continue
        h = rng.choice(free)
        task = asyncio.create_task(message(h, MESSAGES[sent % len(MESSAGES)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    sending_s = time.perf_counter() - t0
    if pending:
        await asyncio.wait(pending, timeout=90)
    first = percentiles(first_ms)
    ok = bool(first_ms) and not errors and not backlog and first.get("p95", 1e9) < target_ms
    return {
        "rate_per_s": rate,
        "sent": sent,
        "achieved_per_s": round(len(first_ms) / sending_s, 2) if sending_s else 0.0,
        "message_to_suggestion_ms": first,
        "message_to_final_suggestion_ms": percentiles(final_ms),
        "server_assist_ms": percentiles(server_ms),
        "final_sources": sources,
        "final_fallbacks": fallbacks,
        "errors": errors,
        "not_sent_no_free_session": backlog,
        "met_target": ok,
    }


async def end_all(held: list[Held], in_flight: int) -> dict:
    gate = asyncio.Semaphore(in_flight)
    ended = 0
    failed: dict[str, int] = {}
    tokens: list[int] = []

    async def one(h: Held) -> None:
        nonlocal ended
        async with gate:
            if h.closed is not None:
                failed[f"closed:{h.closed}"] = failed.get(f"closed:{h.closed}", 0) + 1
                return
            h.ending = True
            try:
                await h.client.send({"type": "session.end"})
                event, _ = await h.until(lambda e: e["type"] == "session.ended", 120)
            except Exception as exc:
                event = {"type": "error", "code": type(exc).__name__}
            if event is not None and event["type"] == "session.ended":
                ended += 1
                assist = (event.get("summary") or {}).get("assist") or {}
                if "tokens" in assist:
                    tokens.append(assist["tokens"])
            else:
                code = "timeout" if event is None else event.get("code", event["type"])
                failed[f"end:{code}"] = failed.get(f"end:{code}", 0) + 1
            with contextlib.suppress(Exception):
                await h.client.__aexit__(None, None, None)
            if h.reader is not None:
                h.reader.cancel()

    await asyncio.gather(*(one(h) for h in held))
    return {"ended": ended, "failed": failed, "tokens": tokens}


async def drive(args: argparse.Namespace, url: str, token: str) -> None:
    """``--driver``: the rate phase, in its own process. Real clients are other machines; one process that also
    holds thousands of idle connections would add its own event-loop delays to every latency it measures. Writes
    one JSON line per event on stdout for the parent (which samples the server's CPU at each step's edges)."""
    rates = [float(r) for r in args.rates.split(",")]
    active, opening = await open_sessions(url, token, args.active, args.connect_rate, args.in_flight)
    if opening["start_failures"]:
        print(json.dumps({"event": "failed", "opening": opening}), flush=True)
    for i, rate in enumerate(rates):
        print(json.dumps({"event": "step_start", "rate": rate}), flush=True)
        step = await rate_step(active, rate, args.step_s, args.target_ms, seed=i)
        print(json.dumps({"event": "step_end", "step": step}), flush=True)
        if not step["met_target"]:
            break
    check = await end_all(active, args.in_flight)
    print(json.dumps({"event": "done", **check}), flush=True)


async def rate_phase(
    args: argparse.Namespace, url: str, token: str, meter: ServerMeter | None
) -> tuple[list[dict], dict[str, Any]]:
    """Run ``--driver`` in a subprocess while this process keeps holding the idle sessions."""
    cmd = [
        sys.executable, str(SCRIPT), "--driver", "--url", url, "--active", str(args.active),
        "--rates", args.rates, "--step-s", str(args.step_s), "--target-ms", str(args.target_ms),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, env={**os.environ, "SWITCHBOARD_DEV_TOKEN": token}
    )
    assert proc.stdout is not None
    steps: list[dict] = []
    done: dict[str, Any] = {"ended": 0, "failed": {"driver": 1}, "tokens": []}
    cpu0 = None
    async for line in proc.stdout:
        msg = json.loads(line)
        if msg["event"] == "step_start":
            cpu0 = meter.sample() if meter else None
        elif msg["event"] == "step_end":
            step = msg["step"]
            if meter and cpu0:
                cpu1 = meter.sample()
                step["server_cpu_cores"] = round((cpu1["cpu_s"] - cpu0["cpu_s"]) / args.step_s, 2)
                step["server_cpu_s_by_role"] = meter.spent(cpu0, cpu1)
            steps.append(step)
            m = step["message_to_suggestion_ms"]
            _log(
                f"rate {step['rate_per_s']:g}/s: p50 {m.get('p50')} p95 {m.get('p95')} ms, errors {step['errors']}, "
                f"backlog {step['not_sent_no_free_session']}, final sources {step['final_sources']}"
            )
        elif msg["event"] == "done":
            done = {k: v for k, v in msg.items() if k != "event"}
        elif msg["event"] == "failed":
            _log(f"the rate driver could not open its sessions: {msg['opening']['start_failures']}")
    await proc.wait()
    return steps, done


async def run(args: argparse.Namespace, url: str, token: str, meter: ServerMeter | None) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    before = meter.sample() if meter else None
    _log(f"opening {args.idle} sessions at {args.connect_rate:g}/s")
    held, opening = await open_sessions(url, token, args.idle, args.connect_rate, args.in_flight)
    after_open = meter.sample() if meter else None
    _log(f"holding {len(held)} sessions for {args.hold_s:g}s")
    await asyncio.sleep(args.hold_s)
    dropped_in_hold = sum(1 for h in held if h.closed is not None)
    during_hold = meter.sample() if meter else None
    steps: list[dict] = []
    driver: dict[str, Any] = {"ended": 0, "failed": {}, "tokens": []}
    if args.active and rates:
        steps, driver = await rate_phase(args, url, token, meter)
    _log("ending every held session")
    check = await end_all(held, args.in_flight)
    check["tokens"] += driver.pop("tokens")
    end = meter.sample() if meter else None
    met = [s for s in steps if s["met_target"]]
    best = max(met, key=lambda s: s["rate_per_s"]) if met else None
    dropped = args.idle - check["ended"]
    tokens = check.pop("tokens")
    server: dict[str, Any] = {}
    if meter and before and after_open and during_hold and end:
        server = {
            "rss_mb_idle_held": round(during_hold["rss_mb"], 1),
            "rss_mb_before": round(before["rss_mb"], 1),
            "rss_kb_per_held_session": round(
                (during_hold["rss_mb"] - before["rss_mb"]) * 1024 / max(1, len(held)), 1
            ),
            "cpu_s_opening": round(after_open["cpu_s"] - before["cpu_s"], 1),
            "cpu_cores_while_idle": round((during_hold["cpu_s"] - after_open["cpu_s"]) / max(args.hold_s, 1), 3),
            "cpu_s_total": round(end["cpu_s"] - before["cpu_s"], 1),
            "cpu_s_opening_by_role": meter.spent(before, after_open),
            "cpu_s_idle_hold_by_role": meter.spent(after_open, during_hold),
        }
    messages = sum(len(s["message_to_suggestion_ms"]) and s["message_to_suggestion_ms"].get("n", 0) for s in steps)
    cost = {
        "sessions": len(held),
        "messages": messages,
        "tokens_per_session_mean": round(sum(tokens) / len(tokens), 2) if tokens else 0.0,
        "tokens_total": sum(tokens),
    }
    if server:
        # everything the server spent (opening, idling, chatting, ending) over the sessions it served
        cost["server_cpu_s_per_session"] = round(server["cpu_s_total"] / max(1, len(held)), 4)
        busy = sum(s.get("server_cpu_cores", 0) * args.step_s for s in steps)
        cost["server_cpu_s_per_message"] = round(busy / messages, 3) if messages else None
        cost["gpu_s_per_session"] = 0.0  # this machine has no GPU: every model runs on the CPU
    return {
        "sessions_requested": args.idle,
        "sessions_held": len(held) - dropped_in_hold,
        "sessions_dropped": dropped,
        "hold_s": args.hold_s,
        "opening": opening,
        "dropped_during_hold": dropped_in_hold,
        "end_check": check,
        "target_p95_ms": args.target_ms,
        "active_sessions": args.active,
        "active_end_check": driver,
        "steps": steps,
        "highest_rate_meeting_target_per_s": best["rate_per_s"] if best else None,
        "p95_at_highest_rate_ms": best["message_to_suggestion_ms"]["p95"] if best else None,
        "server": server,
        "cost": cost,
    }


def compare(a: dict, b: dict) -> dict:
    keys = ("sessions_held", "sessions_dropped", "highest_rate_meeting_target_per_s", "p95_at_highest_rate_ms")
    return {"a": a.get("label", "a"), "b": b.get("label", "b"), **{k: [a.get(k), b.get(k)] for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--idle", type=int, default=10_000, help="sessions to open and hold (default %(default)s)")
    parser.add_argument("--hold-s", type=float, default=60.0, help="seconds to hold them idle (default %(default)s)")
    parser.add_argument("--connect-rate", type=float, default=150.0, help="new sessions per second")
    parser.add_argument("--in-flight", type=int, default=200, help="handshakes (and ends) in flight at once")
    parser.add_argument("--active", type=int, default=100, help="held sessions that chat in the rate phase")
    parser.add_argument(
        "--rates", default="1,2,3,4,5,6,8,10,12,16,20", help="message rates to step through, per second"
    )
    parser.add_argument("--step-s", type=float, default=60.0, help="seconds per rate step (default %(default)s)")
    parser.add_argument("--target-ms", type=float, default=500.0, help="p95 message → suggestion target")
    parser.add_argument("--label", default=None, help="name for this run in comparisons")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)  # the rate phase's own process
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two results")
    args = parser.parse_args()

    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        print(json.dumps(compare(a, b), indent=2))
        return 0
    if args.driver:
        with contextlib.redirect_stdout(sys.stderr), server(args) as target:
            pass
        asyncio.run(drive(args, target.url, target.token))
        return 0
    if args.start:
        # One tenant (the dev token's) opens every session here; its new-session rate limit is raised to the
        # connect rate so the run measures holding sessions, not the limiter (which still applies).
        os.environ.setdefault("SWITCHBOARD_TENANT_MESSAGES_PER_S", str(max(50.0, args.connect_rate * 1.5)))
        # Ray Serve's Python proxy holds a session in one descriptor, HAProxy in two: the default front door
        # (HAProxy) holds serve.run.haproxy_maxconn() connections, 7,590 under a 20,000 descriptor limit
        holds = haproxy_maxconn()
        if args.idle > holds and "SWITCHBOARD_INGRESS_PROXY" not in os.environ:
            print(
                f"front door: Ray Serve's Python proxy ({args.idle} idle sessions are more than HAProxy holds "
                f"under this descriptor limit: {holds})",
                file=sys.stderr,
            )
            os.environ["SWITCHBOARD_INGRESS_PROXY"] = "serve"
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle * 2 + 4096), hard))

    with contextlib.redirect_stdout(sys.stderr), server(args) as target:
        meter = ServerMeter() if args.start else None  # a server elsewhere: its CPU is not ours to read
        result = asyncio.run(run(args, target.url, target.token, meter))
    result = {
        "benchmark": "load",
        "label": args.label or f"idle{args.idle}",
        "url": target.url,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **result,
    }
    emit(result, args.out)
    return 0 if result["sessions_dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
