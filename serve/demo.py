"""``make demo``: start switchboard on embedded defaults, play a scripted patient-support chat through the
real websocket protocol, print the live events as the agent desktop would see them, and shut down.

    python -m serve.demo                       # start, play, stop
    python -m serve.demo --connect ws://...    # play against a running server (make serve)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .client import SessionClient

SCRIPT: list[tuple[str, str]] = [
    ("customer", "Hi, I just got a statement for $480 and I don't understand half of these charges."),
    (
        "customer",
        "My name is Maria Gonzalez, you can email me at maria.gonzalez@example.com or call (415) 555-0132. "
        "My member ID is XJH448291023.",
    ),
    ("agent", "Thanks Maria, I can see the statement. Let me look into the charges with you."),
    (
        "customer",
        "I already paid with my card 4111 1111 1111 1111 and I was charged twice for the same visit!",
    ),
    ("customer", "This is the third time I'm calling about this and nobody calls back. It's ridiculous."),
    ("customer", "I want to speak to a supervisor right now."),
    ("customer", "Also, how do I get a copy of my medical records sent to my new doctor?"),
]

_COLOR = sys.stdout.isatty()


def _c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def render(event: dict) -> str:
    t = event["type"]
    if t == "session.started":
        return _c(
            "1", f"● session {event['session_id']} started (tenant {event['tenant']}, {event['channel']})"
        )
    if t == "transcript.partial":
        return _c("2", f"  {event['speaker']:>8} … {event['text']}")
    if t == "transcript.final":
        timing = ""
        if event.get("end", 0) > event.get("start", 0):
            timing = _c("2", f"  [{event['start']:.1f}-{event['end']:.1f}s, {event['latency_ms']:.0f} ms]")
        return f"  {_c('1', event['speaker'].upper()):>10}: {event['text']}{timing}"
    if t == "redaction":
        kinds = ", ".join(sorted({e["type"] for e in event["entities"]}))
        flags = f"  flags: {', '.join(event['flags'])}" if event.get("flags") else ""
        return _c("35", f"      redacted: {kinds or '-'}{flags}")
    if t == "sentiment":
        color = {"negative": "31", "neutral": "37", "positive": "32"}[event["label"]]
        return _c(color, f"      sentiment: {event['label']} ({event['score']:+.2f}, {event['model']})")
    if t == "escalation" and event.get("factors"):
        return _c(
            "1;31",
            f"   ⚠ ESCALATION → {event['queue']} [{event['priority']}]: {event['reason']}"
            f"  (features: {', '.join(event['factors'])})",
        )
    if t == "intent":
        ents = ", ".join(f"{e['type']}={e['value']}" for e in event.get("entities", []))
        guess = f" (best guess {event['predicted']})" if event.get("predicted") else ""
        return _c(
            "36",
            f"      intent: {event['intent']} {event['confidence']:.2f}{guess} ({event['model']})"
            + (f"  [{ents}]" if ents else ""),
        )
    if t == "assist.suggestion" and event.get("final", True) and event.get("model"):
        # the generated version of a suggestion whose articles were shown first
        tokens = event.get("tokens") or {}
        head = (
            f"      reply [{event['source']}"
            + (f", {event['fallback']}" if event.get("fallback") else "")
            + f", {event['model']}, first token {event.get('first_token_ms') or 0:.0f} ms, "
            f"done {event['latency_ms']:.0f} ms, {tokens.get('completion', 0)} tokens]"
        )
        if event["source"] == "generated":
            return _c("1;34", f"{head}: {event['text']}  (cites {', '.join(event.get('citations') or [])})")
        reason = (event.get("grounding") or {}).get("reason")
        return _c("34", f"{head}: articles shown" + (f" ({reason})" if reason else ""))
    if t == "assist.suggestion":
        arts = "; ".join(f"{a['title']} [{a['id']}] ({a['score']:.2f})" for a in event["articles"])
        ranked = f", reranked by {event['reranker']}" if event.get("reranker") else ""
        return _c(
            "34",
            f"      suggest ({event['latency_ms']:.0f} ms{ranked}): {event['text']}\n        articles: {arts}",
        )
    if t == "assist.delta":
        return _c("2;34", f"        ~ {event['text'].strip()}")
    if t == "escalation":
        return _c("1;31", f"   ⚠ ESCALATION → {event['queue']} [{event['priority']}]: {event['reason']}")
    if t == "routing":
        where = event.get("agent_id") or event["queue"]
        return _c("1;33", f"   → routing {event['status']} to {where} [{event['priority']}]: {event['notice']}")
    if t == "error":
        return _c("33", f"   ! error {event['code']}: {event['message']}")
    if t == "session.ended":
        summary = dict(event.get("summary") or {})
        quality = summary.pop("quality", None)
        lines = [_c("1", f"● session ended: {summary}")]
        if quality:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in quality["components"].items())
            lines.append(
                _c("1", f"  post-call quality {quality['score']:.0f}/100")
                + f"  ({parts}; resolved: {quality['resolved']}, trend {quality['sentiment_trend']:+.2f})"
            )
        return "\n".join(lines)
    return str(event)


async def play(url: str, token: str) -> int:
    async with SessionClient(url, token) as client:
        print(render(await client.start(channel="chat", customer_id="demo-customer-17")))
        last_suggestion = None
        for speaker, text in SCRIPT:
            until = "transcript.final" if speaker == "agent" else "assist.suggestion"
            for event in await client.say(text, speaker=speaker, until=until):
                print(render(event))
                if event["type"] == "assist.suggestion":
                    last_suggestion = event["suggestion_id"]
            for event in await client.drain(0.3):  # escalations follow the suggestion
                print(render(event))
        if last_suggestion:
            await client.send(
                {"type": "suggestion.feedback", "suggestion_id": last_suggestion, "action": "accepted"}
            )
        for event in await client.end():
            print(render(event))
    return 0


async def _play_all(url: str, token: str, voice: bool) -> int:
    rc = await play(url, token)
    if voice:
        rc = rc or await play_voice(url, token)
    return rc


async def play_voice(url: str, token: str) -> int:
    """Stream a two-speaker call (synthesised now with espeak-ng) at real-time pace, mono 16 kHz PCM."""
    from pipelines.samples import two_speaker_call

    call = two_speaker_call()
    pcm = call.pcm16()
    frame = 640  # 20 ms
    print(_c("1", f"\n● voice: streaming a {call.audio.size / 16000:.0f}s two-speaker call in real time"))
    async with SessionClient(url, token) as client:
        print(
            render(
                await client.start(
                    channel="voice",
                    customer_id="demo-caller-9",
                    audio={"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1},
                )
            )
        )
        await client.stream_audio(
            pcm, bytes_per_second=32000, frame_bytes=frame, on_event=lambda e: print(render(e), flush=True)
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--connect", metavar="WS_URL", help="use a running server instead of starting one")
    parser.add_argument("--token", help="bearer token (default: .switchboard/dev-token)")
    parser.add_argument("--no-voice", action="store_true", help="skip the voice call (chat only)")
    args = parser.parse_args(argv)
    if args.connect:
        token = args.token or Path(".switchboard/dev-token").read_text().strip()
        return asyncio.run(_play_all(args.connect, token, voice=not args.no_voice))

    import os

    os.environ.setdefault("SWITCHBOARD_RAY_LOG_TO_DRIVER", "0")  # keep the demo output readable
    from .run import launch, shutdown

    try:
        running = launch(dashboard=False)
        print(f"\nswitchboard is up at {running.ws_url} — playing a scripted chat\n", flush=True)
        return asyncio.run(_play_all(running.ws_url, running.token, voice=not args.no_voice))
    finally:
        print("\nshutting down...", flush=True)
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
