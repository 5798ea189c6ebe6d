#!/usr/bin/env python
"""Chat load benchmark: N concurrent websocket chat sessions (PROTOCOL v1), each sending M customer messages;
measures message → ``assist.suggestion`` latency (p50/p95/p99), messages/s and errors. Prints JSON.

    python benchmarks/chat_load.py --start                      # launch a local app, 50 sessions, then stop it
    python benchmarks/chat_load.py --url ws://127.0.0.1:8000/v1/sessions --sessions 2000 --messages 2
    python benchmarks/chat_load.py --start --out a.json; ...; python benchmarks/chat_load.py --compare a.json b.json

All sessions are opened and held concurrently (opening is paced by --connect-rate), then every session
sends its messages one after another (waiting for each suggestion, plus --think-ms), all sessions at once.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._server import add_server_args, server  # noqa: E402
from benchmarks._stats import emit  # noqa: E402
from benchmarks._stats import percentiles as _percentiles  # noqa: E402
from serve.client import SessionClient  # noqa: E402

MESSAGES = [
    "Hi, I was charged twice for my last visit, can you help me get a refund?",
    "I need to reschedule my appointment with cardiology to next week",
    "My insurance claim was denied and I don't understand why",
    "Can you send my medical records to my new doctor?",
    "I can't log in to the patient portal, it says my password is wrong",
    "My pharmacy says my refill needs a prior authorization",
    "This is the third time I'm calling about this and nobody calls back",
    "How do I set up a payment plan for my balance?",
]


def percentiles(values: list[float]) -> dict[str, float]:
    return _percentiles(values, digits=2)


async def run(
    url: str, token: str, sessions: int, messages: int, think_ms: float, connect_rate: float
) -> dict:
    latencies: list[float] = []
    server_latencies: list[float] = []
    connect_ms: list[float] = []
    errors: dict[str, int] = {}
    opened = asyncio.Event()
    n_open = 0
    go = asyncio.Event()
    rng = random.Random(7)

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def session(i: int) -> None:
        nonlocal n_open
        await asyncio.sleep(i / connect_rate)
        t0 = time.perf_counter()
        try:
            async with SessionClient(url, token, open_timeout=120) as c:
                started = await c.start(customer_id=f"bench-{i}")
                if started.get("type") != "session.started":
                    err(f"start:{started.get('code')}")
                    return
                connect_ms.append((time.perf_counter() - t0) * 1000)
                n_open += 1
                if n_open == sessions:
                    opened.set()
                await go.wait()
                if think_ms:
                    await asyncio.sleep(rng.uniform(0, think_ms / 1000))  # do not start in lockstep
                for m in range(messages):
                    text = MESSAGES[(i + m) % len(MESSAGES)]
                    t = time.perf_counter()
                    events = await c.say(text, wait_s=120)
                    last = events[-1]
                    if last["type"] == "assist.suggestion":
                        latencies.append((time.perf_counter() - t) * 1000)
                        server_latencies.append(last["latency_ms"])
                    else:
                        err(f"message:{last.get('code', last['type'])}")
                    if think_ms:  # exponential think time: arrivals look like independent customers
                        await asyncio.sleep(rng.expovariate(1000.0 / think_ms))
                await c.end(wait_s=120)
        except (
            Exception
        ) as exc:  # counted and reported: a benchmark reports failures, it does not stop on them
            err(f"exception:{type(exc).__name__}")
        finally:
            if n_open + sum(errors.values()) >= sessions:
                opened.set()

    tasks = [asyncio.create_task(session(i)) for i in range(sessions)]
    await opened.wait()
    held = n_open
    t_start = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    return {
        "sessions_requested": sessions,
        "sessions_held": held,
        "messages_per_session": messages,
        "messages_ok": len(latencies),
        "errors": errors,
        "duration_s": round(wall, 2),
        "messages_per_s": round(len(latencies) / wall, 2) if wall else 0.0,
        "latency_ms": percentiles(latencies),
        "server_latency_ms": percentiles(server_latencies),
        "connect_ms": percentiles(connect_ms),
    }


def compare(a: dict, b: dict) -> dict:
    def ratio(x: float | None, y: float | None) -> float | None:
        return round(y / x, 3) if x and y is not None else None

    return {
        "a": a.get("label", "a"),
        "b": b.get("label", "b"),
        "messages_per_s": [
            a["messages_per_s"],
            b["messages_per_s"],
            ratio(a["messages_per_s"], b["messages_per_s"]),
        ],
        **{
            f"latency_{p}_ms": [
                a["latency_ms"].get(p),
                b["latency_ms"].get(p),
                ratio(a["latency_ms"].get(p), b["latency_ms"].get(p)),
            ]
            for p in ("p50", "p95", "p99")
        },
        "note": "each row: [a, b, b/a]",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions (default %(default)s)")
    parser.add_argument("--messages", type=int, default=5, help="messages per session (default %(default)s)")
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause between a session's messages (exponential; 0: none)",
    )
    parser.add_argument("--connect-rate", type=float, default=50.0, help="new connections per second")
    parser.add_argument("--label", default=None, help="name for this run in comparisons")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two results"
    )
    args = parser.parse_args()

    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        print(json.dumps(compare(a, b), indent=2))
        return 0

    # stdout carries only the JSON result: Ray's own prints go to stderr
    with contextlib.redirect_stdout(sys.stderr), server(args) as target:
        url = target.url
        result = asyncio.run(
            run(target.url, target.token, args.sessions, args.messages, args.think_ms, args.connect_rate)
        )
    result = {
        "benchmark": "chat_load",
        "label": args.label or f"{args.sessions}x{args.messages}",
        "url": url,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **result,
    }
    emit(result, args.out)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
