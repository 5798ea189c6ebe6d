"""The ``switchboard`` command line without a server: help texts, WAV checks, token resolution, the errors a
user can fix, and how events are printed. Real WAV files (``wave``), real sockets to a closed port."""

from __future__ import annotations

import asyncio
import socket
import time
import wave
from pathlib import Path

import pytest

from serve.cli import CliError, describe, main, read_wav, resolve_token, session_url
from serve.client import _Events

pytestmark = pytest.mark.unit

HINT = "is the server running? start it with `make serve`"


def _write_wav(
    path: Path, rate: int = 16000, channels: int = 1, width: int = 2, seconds: float = 0.5
) -> Path:
    frames = int(rate * seconds)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(
            bytes(range(256)) * (frames * channels * width // 256)
            + b"\x00" * (frames * channels * width % 256)
        )
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once the socket is closed


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SWITCHBOARD_TOKEN / SWITCHBOARD_DATA_DIR, in an empty working directory."""
    monkeypatch.delenv("SWITCHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("SWITCHBOARD_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- --help everywhere


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: switchboard")
    for command in ("chat", "call", "tail"):
        assert f"switchboard {command}" in out  # in the listing and the examples
    assert "make serve" in out and "exit codes" in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("chat", ["--customer", "--channel", "{chat,sms,email}", "--message TEXT", "/agent", "/end"]),
        ("call", ["FILE.wav", "--realtime", "--no-realtime", "--customer", "16 kHz or 8 kHz", "ffmpeg"]),
        ("tail", ["SESSION_ID", "snapshot", "agent or supervisor token"]),
    ],
)
def test_every_subcommand_has_help_with_its_options_and_examples(capsys, command, expected):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: switchboard {command}")
    for option in ["--url", "--token", "--timeout", "--json", "SWITCHBOARD_TOKEN", "grpc://", *expected]:
        assert option in out, f"`switchboard {command} --help` does not mention {option}"
    assert f"examples:\n  switchboard {command}" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ---------------------------------------------------------------- WAV files


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (8000, 1), (16000, 2), (8000, 2)])
def test_supported_wav_formats_are_read_with_their_format(tmp_path, rate, channels):
    audio = read_wav(_write_wav(tmp_path / "ok.wav", rate=rate, channels=channels, seconds=0.5))
    assert audio.audio_format() == {"encoding": "pcm_s16le", "sample_rate": rate, "channels": channels}
    assert len(audio.pcm) == int(rate * 0.5) * channels * 2
    assert audio.duration_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _write_wav(p, rate=44100), "unsupported WAV format in {p}: 44100 Hz (need 16000 or 8000)"),
        (lambda p: _write_wav(p, width=1), "unsupported WAV format in {p}: 8-bit samples (need 16-bit)"),
        (lambda p: _write_wav(p, width=4, rate=48000), "32-bit samples (need 16-bit), 48000 Hz"),
        (lambda p: _write_wav(p, channels=3), "3 channels (need mono or stereo)"),
        (lambda p: _write_wav(p, seconds=0), "{p} holds no audio"),
        (lambda p: p.write_text("not audio at all"), "{p} is not a PCM WAV file"),
        (lambda p: None, "{p}: no such file"),
        (lambda p: p.mkdir(), "{p} is not a file"),
    ],
    ids=["44khz", "8bit", "32bit-48khz", "3ch", "empty", "text", "missing", "directory"],
)
def test_a_bad_wav_exits_2_with_a_clear_message_before_connecting(tmp_path, capsys, make, message):
    path = tmp_path / "in.wav"
    make(path)
    expected = message.format(p=path)
    with pytest.raises(CliError) as raised:
        read_wav(path)
    assert expected in str(raised.value) and raised.value.exit_code == 2
    # the command checks the file first: a closed port would give a different error
    url = f"ws://127.0.0.1:{_closed_port()}/v1/sessions"
    assert main(["call", str(path), "--token", "t", "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and expected in captured.err
    assert HINT not in captured.err and captured.out == ""


# ---------------------------------------------------------------- tokens


def test_token_resolution_order(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dev-token").write_text("from-file\n")
    env = {"SWITCHBOARD_TOKEN": "from-env", "SWITCHBOARD_DATA_DIR": str(data_dir)}
    assert resolve_token("explicit", env) == "explicit"
    assert resolve_token(None, env) == "from-env"
    assert resolve_token("", env) == "from-env"
    assert resolve_token(None, {**env, "SWITCHBOARD_TOKEN": "  "}) == "from-file"
    assert resolve_token(None, {"SWITCHBOARD_DATA_DIR": str(data_dir)}) == "from-file"


def test_default_data_dir_is_dot_switchboard_in_the_working_directory(no_token_env):
    (no_token_env / ".switchboard").mkdir()
    (no_token_env / ".switchboard" / "dev-token").write_text("  local-dev-token \n")
    assert resolve_token(None) == "local-dev-token"


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_no_token_anywhere_is_a_friendly_error(no_token_env, capsys, content):
    if content is not None:
        (no_token_env / ".switchboard").mkdir()
        (no_token_env / ".switchboard" / "dev-token").write_text(content)
    with pytest.raises(CliError) as raised:
        resolve_token(None)
    assert "--token" in str(raised.value) and "SWITCHBOARD_TOKEN" in str(raised.value)
    assert str(Path(".switchboard") / "dev-token") in str(raised.value)
    assert main(["chat", "--message", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no token") and "make serve" in err


def test_the_data_dir_comes_from_the_environment(no_token_env, monkeypatch):
    elsewhere = no_token_env / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dev-token").write_text("tok-elsewhere")
    (no_token_env / ".switchboard").mkdir()
    (no_token_env / ".switchboard" / "dev-token").write_text("tok-default")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(elsewhere))
    assert resolve_token(None) == "tok-elsewhere"


# ---------------------------------------------------------------- URLs and unreachable servers


def test_session_urls():
    assert session_url("ws://127.0.0.1:8000/v1/sessions") == "ws://127.0.0.1:8000/v1/sessions"
    assert session_url("ws://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/sessions"
    assert session_url("wss://cc.example.com/") == "wss://cc.example.com/v1/sessions"
    assert session_url("grpc://127.0.0.1:9000/") == "grpc://127.0.0.1:9000"
    for bad in ("http://127.0.0.1:8000", "127.0.0.1:9000", "grpc://", "ws:///v1/sessions"):
        with pytest.raises(CliError):
            session_url(bad)


def test_a_bad_url_or_timeout_is_a_usage_error(capsys):
    assert main(["tail", "ses_x", "--token", "t", "--url", "http://127.0.0.1:8000"]) == 2
    assert "error: --url must be ws://" in capsys.readouterr().err
    assert main(["tail", "ses_x", "--token", "t", "--timeout", "0"]) == 2
    assert "error: --timeout must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
@pytest.mark.parametrize("argv", [["chat", "--message", "hi"], ["tail", "ses_x"]])
def test_an_unreachable_server_says_how_to_start_it(capsys, scheme, argv):
    url = f"{scheme}://127.0.0.1:{_closed_port()}" + ("/v1/sessions" if scheme == "ws" else "")
    assert main([*argv, "--url", url, "--token", "t", "--timeout", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and HINT in captured.err
    assert url in captured.err and captured.out == ""


def test_a_wav_call_to_an_unreachable_server(tmp_path, capsys):
    wav = _write_wav(tmp_path / "call.wav", rate=8000, channels=2)
    assert (
        main(["call", str(wav), "--no-realtime", "--token", "t", "--url", f"ws://127.0.0.1:{_closed_port()}"])
        == 2
    )
    assert HINT in capsys.readouterr().err


# ---------------------------------------------------------------- what gets printed


def test_events_are_described_for_people():
    final = {
        "type": "transcript.final",
        "utterance_id": "utt_1",
        "text": "I want my records",
        "speaker": "customer",
        "start": 0.0,
        "end": 0.0,
        "confidence": 1.0,
        "latency_ms": 3.0,
    }
    suggestion = {
        "type": "assist.suggestion",
        "suggestion_id": "sug_1",
        "utterance_id": "utt_1",
        "text": "Offer the records request form.",
        "articles": [{"id": "kb-records-request", "title": "Requesting medical records", "score": 0.82}],
        "source": "articles_only",
        "latency_ms": 41.0,
    }
    routing = {
        "type": "routing",
        "status": "queued",
        "queue": "supervisor",
        "priority": "high",
        "notice": "A supervisor will join in about 2 minutes.",
        "position": 1,
    }
    error = {
        "type": "error",
        "code": "unknown_suggestion",
        "message": "no such suggestion",
        "retryable": False,
    }
    assert "CUSTOMER" in describe(final) and "I want my records" in describe(final)
    assert "kb-records-request" in describe(suggestion) and "Offer the records request form." in describe(
        suggestion
    )
    assert "queued" in describe(routing) and "A supervisor will join in about 2 minutes." in describe(routing)
    assert "unknown_suggestion" in describe(error) and "no such suggestion" in describe(error)
    snapshot = {
        "type": "session.snapshot",
        "session_id": "ses_1",
        "channel": "chat",
        "customer_id": "cust-1",
        "status": "ended",
        "events": [final, suggestion],
    }
    lines = describe(snapshot).splitlines()
    assert "ses_1" in lines[0] and "ended" in lines[0] and "2 events" in lines[0]
    assert any("I want my records" in line for line in lines[1:])
    assert any("kb-records-request" in line for line in lines[1:])
    # an event the renderer cannot read is shown raw rather than crashing the command
    assert '"type": "transcript.final"' in describe({"type": "transcript.final", "text": "partial data"})


# ---------------------------------------------------------------- how `call` (and the demo) stream audio


class _LoopbackSession(_Events):
    """A fake server on the client interface: records what is sent, answers session.end with session.ended."""

    def __init__(self) -> None:
        self.session_id = "ses_fake"
        self.sent: list[tuple[float, object]] = []
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()

    async def send(self, event):
        self.sent.append((time.perf_counter(), event))
        if isinstance(event, bytes) and len(self.sent) == 2:
            await self.inbox.put(
                {"type": "transcript.partial", "utterance_id": "u", "text": "hi", "speaker": "S1"}
            )
        if isinstance(event, dict) and event["type"] == "session.end":
            await self.inbox.put({"type": "session.ended", "session_id": self.session_id})

    async def recv(self, wait_s: float = 30.0) -> dict:
        return await asyncio.wait_for(self.inbox.get(), wait_s)


@pytest.mark.parametrize(("pace", "min_s", "max_s"), [(None, 0.0, 0.3), (1.0, 0.45, 2.0), (4.0, 0.11, 0.45)])
async def test_stream_audio_frames_paces_and_ends(no_leaked_tasks, pace, min_s, max_s):
    session, seen = _LoopbackSession(), []
    pcm = bytes(16000)  # 0.5 s of 16 kHz mono PCM16
    t0 = time.perf_counter()
    events = await session.stream_audio(
        pcm, bytes_per_second=32000, frame_bytes=3200, pace=pace, on_event=seen.append
    )
    elapsed = time.perf_counter() - t0
    frames = [e for _, e in session.sent if isinstance(e, bytes)]
    assert b"".join(frames) == pcm and {len(f) for f in frames} == {3200}
    assert session.sent[-1][1] == {"type": "session.end"}
    assert [e["type"] for e in events] == ["transcript.partial", "session.ended"] and seen == events
    assert min_s <= elapsed < max_s, elapsed  # 0.5 s of audio at `pace` times real time
