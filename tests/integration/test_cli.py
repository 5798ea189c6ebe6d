"""The ``switchboard`` command line against the real Serve app, over the websocket and gRPC."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from serve.cli import main
from serve.client import SessionClient
from tests.integration.test_serve_voice import call  # noqa: F401 - the espeak-ng call fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGE = "I want to request my medical records"
REPO = Path(__file__).resolve().parents[2]


def _url(app, transport: str) -> str:
    return app.ws_url if transport == "websocket" else f"grpc://{app.grpc_target}"


def _plain(out: str) -> str:
    return re.sub(r"\x1b\[[\d;]*m", "", out)  # no colours, even when run with -s on a terminal


_RAY_LOG = re.compile(r"^(\x1b\[[0-9;]*m)?\((ServeReplica|ServeController|ProxyActor|pid=|raylet|\w+ pid=)")


def _json_lines(out: str) -> list[dict]:
    """The CLI's JSON lines. The app runs in this test process, so Ray also forwards its workers' log lines
    (``(ServeReplica:…) INFO …``) to the same stdout; those are not the CLI's output."""
    lines = [line for line in out.splitlines() if line.strip() and not _RAY_LOG.match(line)]
    assert lines, "nothing printed"
    return [json.loads(line) for line in lines]  # every line of the CLI's is one JSON event


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """float32 samples (frames × channels) as a 16-bit PCM WAV file."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
def test_chat_message_prints_json_events(app, capsys, transport):
    argv = ["chat", "--url", _url(app, transport), "--token", app.token, "--message", MESSAGE, "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    events = _json_lines(captured.out)
    types = [e["type"] for e in events]
    assert types[0] == "session.started" and types[-1] == "session.ended", types
    assert "error" not in types, events
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert [(f["text"], f["speaker"]) for f in finals] == [(MESSAGE, "customer")]
    suggestions = [e for e in events if e["type"] == "assist.suggestion"]
    assert suggestions and suggestions[-1].get("final", True) is not False
    assert suggestions[-1]["utterance_id"] == finals[0]["utterance_id"] and suggestions[-1]["articles"]
    assert {"sentiment", "intent"} <= set(types)
    assert events[-1]["session_id"] == events[0]["session_id"] and events[-1]["summary"]["turns"] == 1


def test_chat_readable_output_and_several_messages(app, capsys):
    argv = ["chat", "--url", app.ws_url, "--token", app.token, "--customer", "cust-cli-2"]
    argv += [
        "--message",
        MESSAGE,
        "--message",
        "I want to talk to a supervisor, my lawyer will hear about this",
    ]
    assert main(argv) == 0
    out = _plain(capsys.readouterr().out)
    assert re.search(r"● session ses_\w+ started \(tenant demo, chat\)", out), out
    assert f"CUSTOMER: {MESSAGE}" in out
    assert "sentiment: " in out and "intent: " in out
    assert re.search(r"\[kb-[\w-]+\] \(\d\.\d\d\)", out), "the suggestion lists its article ids"
    assert "ESCALATION → supervisor" in out
    assert "● session ended: " in out and "'turns': 2" in out


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
def test_chat_with_a_bad_token_exits_2(app, capsys, transport):
    assert main(["chat", "--url", _url(app, transport), "--token", "not-a-token", "--message", "hi"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not _RAY_LOG.match(line)]
    assert err and err[0].startswith("error: the server refused the token"), err


def test_interactive_chat_reads_stdin(app):
    """The real command in a subprocess: customer lines, an `/agent` line, then end of input ends the session."""
    proc = subprocess.run(
        [sys.executable, "-m", "serve.cli", "chat", "--url", app.ws_url, "--token", app.token, "--json"],
        input=f"{MESSAGE}\n/agent I can send the records request form to you now\n",
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    events = _json_lines(proc.stdout)
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    finals = {(e["speaker"], e["text"]) for e in events if e["type"] == "transcript.final"}
    assert finals == {("customer", MESSAGE), ("agent", "I can send the records request form to you now")}


def test_call_streams_a_wav_file_and_prints_finals(app, call, tmp_path, capsys):  # noqa: F811
    wav = _write_wav(tmp_path / "call.wav", call.audio, 16000)
    argv = ["call", str(wav), "--no-realtime", "--url", app.ws_url, "--token", app.token, "--json"]
    assert main(argv) == 0
    events = _json_lines(capsys.readouterr().out)
    assert events[0]["type"] == "session.started" and events[0]["channel"] == "voice"
    assert events[-1]["type"] == "session.ended" and events[-1]["session_id"] == events[0]["session_id"]
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert finals and all(f["speaker"] and f["text"] for f in finals), events
    text = " ".join(f["text"] for f in finals).lower()
    assert "prescription" in text and "pharmacy" in text, text


def test_call_over_grpc_with_an_8khz_stereo_file(app, call, tmp_path, capsys):  # noqa: F811
    customer = resample_poly(call.audio, 1, 2).astype(np.float32)  # 16 kHz -> 8 kHz
    stereo = np.stack([customer, np.zeros_like(customer)], axis=1)
    wav = _write_wav(tmp_path / "call-8k.wav", stereo, 8000)
    argv = ["call", str(wav), "--no-realtime", "--url", f"grpc://{app.grpc_target}", "--token", app.token]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = _plain(captured.out)
    assert "8000 Hz, stereo" in captured.err
    assert re.search(r"● session ses_\w+ started \(tenant demo, voice\)", out)
    # finals: "<SPEAKER>: text  [start-end s, latency]"; channel 0 is the customer
    finals = re.findall(r"CUSTOMER: (.+?)  \[\d+\.\d-\d+\.\ds", out)
    assert finals and any("prescription" in f.lower() or "pharmacy" in f.lower() for f in finals), out
    assert "● session ended: " in out


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
def test_tail_of_a_finished_session_prints_its_snapshot(app, capsys, transport):
    assert main(["chat", "--url", app.ws_url, "--token", app.token, "--message", MESSAGE, "--json"]) == 0
    chat = _json_lines(capsys.readouterr().out)
    session_id = chat[0]["session_id"]

    assert main(["tail", session_id, "--url", _url(app, transport), "--token", app.token, "--json"]) == 0
    events = _json_lines(capsys.readouterr().out)
    assert len(events) == 1 and events[0]["type"] == "session.snapshot", events
    snapshot = events[0]
    assert snapshot["session_id"] == session_id and snapshot["status"] == "ended"
    stored = [(e["type"], e.get("text")) for e in snapshot["events"]]
    assert ("transcript.final", MESSAGE) in stored
    assert {"sentiment", "intent", "assist.suggestion"} <= {t for t, _ in stored}

    assert main(["tail", session_id, "--url", _url(app, transport), "--token", app.token]) == 0
    out = _plain(capsys.readouterr().out)
    assert out.startswith(f"● session {session_id} (chat, customer cust-0001, ended): ")
    assert f"CUSTOMER: {MESSAGE}" in out


def test_tail_of_an_unknown_session_fails(app, capsys):
    assert main(["tail", "ses_does_not_exist", "--url", app.ws_url, "--token", app.token, "--json"]) == 1
    events = _json_lines(capsys.readouterr().out)
    assert [(e["type"], e["code"]) for e in events] == [("error", "session_not_found")]


async def test_tail_follows_a_live_session_until_it_ends(app, capsys):
    async with SessionClient(app.ws_url, app.token) as c:
        await c.start(customer_id="cust-cli-tail")
        argv = ["tail", c.session_id, "--url", f"grpc://{app.grpc_target}", "--token", app.token, "--json"]
        tail = asyncio.create_task(asyncio.to_thread(main, argv))
        out, deadline = "", time.monotonic() + 30
        while '"session.snapshot"' not in out:  # the watch is registered once its snapshot is out
            assert not tail.done() and time.monotonic() < deadline, (out, tail)
            await asyncio.sleep(0.1)
            out += capsys.readouterr().out
        said = await c.say(MESSAGE, wait_s=90)
        ended = await c.end(wait_s=60)
        assert await asyncio.wait_for(tail, 60) == 0
    events = _json_lines(out + capsys.readouterr().out)
    assert events[0]["type"] == "session.snapshot" and events[0]["status"] == "live"
    assert [e["type"] for e in events[0]["events"]] == ["session.started"]
    assert [e["type"] for e in events[1:]] == [e["type"] for e in said + ended]
    assert events[-1]["type"] == "session.ended" and events[-1]["session_id"] == c.session_id
