"""``switchboard``: talk to a running switchboard from a terminal, over the websocket or gRPC.

    switchboard chat                                  # type as the customer, see what the agent desktop sees
    switchboard chat --message "I need my records"    # one message, its analysis and suggestion, then exit
    switchboard call call.wav                         # stream a WAV file as a voice call
    switchboard tail ses_1a2b3c4d5e6f7a8b             # follow a session: its history, then live events

Every subcommand takes ``--url`` (``ws://…/v1/sessions`` or ``grpc://host:port``), ``--token`` and ``--json``.
Exit codes: 0 done, 1 the server reported an error, 2 a problem to fix here (no token, server unreachable,
unsupported file, bad option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import textwrap
import threading
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import websockets

from .client import GrpcSessionClient, SessionClient, connect, watch_events
from .demo import render

__all__ = [
    "main",
    "build_parser",
    "resolve_token",
    "session_url",
    "read_wav",
    "describe",
    "CliError",
    "WavAudio",
]

DEFAULT_URL = "ws://127.0.0.1:8000/v1/sessions"
START_HINT = "is the server running? start it with `make serve`"
FRAME_S = 0.1  # audio sent per binary frame by `call`
CONVERT_HINT = "convert it with `ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav`"

# what a connection can fail with, on either transport
_NETWORK_ERRORS = (OSError, TimeoutError, websockets.WebSocketException, grpc.aio.AioRpcError)


class CliError(Exception):
    """A problem the user can fix (no token, server down, unsupported file): printed as ``error: …``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- configuration


def resolve_token(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--token``, else ``$SWITCHBOARD_TOKEN``, else ``<data_dir>/dev-token`` (the file ``make serve``
    writes), with ``data_dir`` = ``$SWITCHBOARD_DATA_DIR`` or ``.switchboard``."""
    env = os.environ if environ is None else environ
    if explicit and explicit.strip():
        return explicit.strip()
    if env.get("SWITCHBOARD_TOKEN", "").strip():
        return env["SWITCHBOARD_TOKEN"].strip()
    path = Path(env.get("SWITCHBOARD_DATA_DIR") or ".switchboard") / "dev-token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise CliError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise CliError(
            f"no token: pass --token, set SWITCHBOARD_TOKEN, or start the server with `make serve` "
            f"(it writes the local dev token to {path})"
        )
    return token


def session_url(url: str) -> str:
    """Validate ``--url``; a websocket URL without a path gets ``/v1/sessions``."""
    url = url.strip()
    if url.startswith("grpc://"):
        if not url.removeprefix("grpc://").strip("/"):
            raise CliError(f"--url {url!r} names no host: use grpc://host:port")
        return url.rstrip("/")
    if url.startswith(("ws://", "wss://")):
        scheme, _, rest = url.partition("://")
        host, _, path = rest.partition("/")
        if not host:
            raise CliError(f"--url {url!r} names no host: use ws://host:port/v1/sessions")
        return url if path.strip("/") else f"{scheme}://{host}/v1/sessions"
    raise CliError(f"--url must be ws://host:port/v1/sessions, wss://… or grpc://host:port (got {url!r})")


@dataclass(frozen=True)
class WavAudio:
    """A WAV file's PCM16 samples and the ``audio`` format ``session.start`` declares for them."""

    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * 2

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.bytes_per_second

    def audio_format(self) -> dict[str, Any]:
        return {"encoding": "pcm_s16le", "sample_rate": self.sample_rate, "channels": self.channels}


def read_wav(path: Path) -> WavAudio:
    """A 16 kHz or 8 kHz, 16-bit PCM, mono or stereo WAV file, or a CliError saying what is wrong."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if not path.is_file():
        raise CliError(f"{path} is not a file")
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise CliError(f"{path} is not a PCM WAV file ({exc}); {CONVERT_HINT}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    problems = []
    if width != 2:
        problems.append(f"{width * 8}-bit samples (need 16-bit)")
    if rate not in (16000, 8000):
        problems.append(f"{rate} Hz (need 16000 or 8000)")
    if channels not in (1, 2):
        problems.append(f"{channels} channels (need mono or stereo)")
    if problems:
        raise CliError(f"unsupported WAV format in {path}: {', '.join(problems)}; {CONVERT_HINT}")
    if not pcm:
        raise CliError(f"{path} holds no audio")
    return WavAudio(pcm=pcm, sample_rate=rate, channels=channels)


# ---------------------------------------------------------------- output


def describe(event: dict[str, Any]) -> str:
    """One event as the agent desktop would show it (``serve.demo.render``), plus a session snapshot."""
    if event.get("type") == "session.snapshot":
        history = event.get("events") or []
        lines = [
            f"● session {event['session_id']} ({event['channel']}, customer {event['customer_id']}, "
            f"{event['status']}): {len(history)} events so far"
        ]
        lines += [describe(e) for e in history]
        return "\n".join(lines)
    try:
        return render(event)
    except (KeyError, TypeError, ValueError):  # a field the renderer expects is missing: show it raw
        return json.dumps(event, ensure_ascii=False)


class _Output:
    """Prints events (readable, or one JSON object a line with ``--json``) and remembers the errors."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.errors: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("type") == "error":
            self.errors.append(event)
        print(json.dumps(event, ensure_ascii=False) if self.as_json else describe(event), flush=True)

    def exit_code(self) -> int:
        if any(e.get("code") == "unauthorized" for e in self.errors):
            raise CliError("the server refused the token: check --token / SWITCHBOARD_TOKEN")
        return 1 if self.errors else 0


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- connections


def _connection_error(exc: BaseException, url: str, *, started: bool = False) -> CliError:
    """One place mapping what a transport raises to what the user should do about it. ``started``: the
    session was already running (a timeout then means a slow reply, not a missing server)."""
    if started and isinstance(exc, TimeoutError):
        return CliError("no reply from the server in time (raise --timeout for slow models)", exit_code=1)
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return CliError(f"cannot reach {url}: {START_HINT}")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return CliError("the server refused the token: check --token / SWITCHBOARD_TOKEN")
        return CliError(f"the gRPC stream failed: {code.name}: {exc.details()}", exit_code=1)
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        return CliError(f"{url} is not a switchboard session endpoint (HTTP {status}); check --url")
    if isinstance(exc, websockets.InvalidURI):
        return CliError(f"--url {url!r} is not a valid websocket URL")
    if isinstance(exc, websockets.ConnectionClosed):
        if exc.rcvd is not None and exc.rcvd.code == 1008:
            return CliError(f"the server closed the connection: {exc.rcvd.reason or 'policy violation'}")
        return CliError(f"the server closed the connection ({exc})", exit_code=1)
    if isinstance(exc, TimeoutError):
        return CliError(f"no answer from {url} in time: {START_HINT}")
    if isinstance(exc, ConnectionError) and "stream ended" in str(exc):  # GrpcSessionClient.recv at EOF
        return CliError(f"the server ended the stream: {exc}", exit_code=1)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return CliError(f"cannot connect to {url} ({reason}): {START_HINT}")


async def _open_session(
    stack: contextlib.AsyncExitStack, url: str, token: str, **start: Any
) -> tuple[SessionClient | GrpcSessionClient, dict[str, Any]]:
    """Connect and send ``session.start``; returns the client and the server's answer (``session.started``
    or an ``error`` such as ``unauthorized``)."""
    client = connect(url, token)
    entered = False
    try:
        await stack.enter_async_context(client)
        entered = True
        return client, await client.start(**start)
    except _NETWORK_ERRORS as exc:
        refused = isinstance(exc, websockets.ConnectionClosed | grpc.aio.AioRpcError | ConnectionError)
        if entered and refused:
            # a refused token: the server sends its error and ends the stream, possibly before session.start
            # went out; the error may still be there to read
            with contextlib.suppress(*_NETWORK_ERRORS):
                event = await client.recv(1.0)
                if event.get("type") == "error":
                    return client, event
            if isinstance(client, GrpcSessionClient) and not isinstance(exc, grpc.aio.AioRpcError):
                code = await client.status()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise CliError(
                        "the server refused the token: check --token / SWITCHBOARD_TOKEN"
                    ) from None
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise CliError(f"cannot reach {url}: {START_HINT}") from None
        raise _connection_error(exc, url) from None


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines typed on stdin, read by a daemon thread (a blocked read never holds up the exit); None at EOF."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:  # the loop closed first: nobody is listening any more
            return

    threading.Thread(target=read, name="switchboard-stdin", daemon=True).start()
    return lines


# ---------------------------------------------------------------- subcommands


async def _chat(args: argparse.Namespace, url: str, token: str) -> int:
    out = _Output(args.json)
    async with contextlib.AsyncExitStack() as stack:
        client, started = await _open_session(
            stack, url, token, channel=args.channel, customer_id=args.customer
        )
        out(started)
        if started["type"] != "session.started":
            return out.exit_code()
        try:
            if args.message:
                await _chat_messages(client, args.message, out, args.timeout)
            else:
                await _chat_interactive(client, out)
        except _NETWORK_ERRORS as exc:
            raise _connection_error(exc, url, started=True) from None
    return out.exit_code()


async def _chat_messages(
    client: SessionClient | GrpcSessionClient, messages: Sequence[str], out: _Output, wait_s: float
) -> None:
    for text in messages:
        for event in await client.say(text, wait_s=wait_s):
            out(event)
        for event in await client.drain(0.5):  # escalation and routing follow the suggestion
            out(event)
    for event in await client.end(wait_s):
        out(event)


async def _chat_interactive(client: SessionClient | GrpcSessionClient, out: _Output) -> None:
    if sys.stdin.isatty():
        _status("type a message and press Enter; `/agent TEXT` answers as the agent; `/end` or Ctrl-D ends")

    async def receive() -> None:
        while True:
            try:
                event = await client.recv(3600)
            except TimeoutError:  # an idle conversation is fine
                continue
            out(event)
            if event["type"] == "session.ended":
                return

    receiver = asyncio.create_task(receive())
    lines = _stdin_lines(asyncio.get_running_loop())
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the server ended the session (or the connection dropped)
                getter.cancel()
                break
            line = getter.result()
            text = "" if line is None else line.strip()
            if line is None or text == "/end":
                await client.send({"type": "session.end"})
                break
            if text.startswith("/agent "):
                await client.send(
                    {"type": "chat.message", "text": text.removeprefix("/agent ").strip(), "speaker": "agent"}
                )
            elif text:
                await client.send({"type": "chat.message", "text": text})
        await receiver
    finally:
        if not receiver.done():
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


async def _call(args: argparse.Namespace, url: str, token: str, audio: WavAudio) -> int:
    out = _Output(args.json)
    if not args.json:
        pace = "in real time" if args.realtime else "as fast as the server takes it"
        _status(
            f"streaming {args.file} ({audio.duration_s:.1f}s, {audio.sample_rate} Hz, "
            f"{'stereo' if audio.channels == 2 else 'mono'}) {pace}"
        )
    async with contextlib.AsyncExitStack() as stack:
        client, started = await _open_session(
            stack, url, token, channel="voice", customer_id=args.customer, audio=audio.audio_format()
        )
        out(started)
        if started["type"] != "session.started":
            return out.exit_code()
        frame = int(audio.bytes_per_second * FRAME_S) // (2 * audio.channels) * 2 * audio.channels
        try:
            await client.stream_audio(
                audio.pcm,
                bytes_per_second=audio.bytes_per_second,
                frame_bytes=frame,
                pace=1.0 if args.realtime else None,
                on_event=out,
                wait_s=max(args.timeout, 300.0),
            )
        except _NETWORK_ERRORS as exc:
            raise _connection_error(exc, url, started=True) from None
    return out.exit_code()


async def _tail(args: argparse.Namespace, url: str, token: str) -> int:
    out = _Output(args.json)
    events = watch_events(url, token, args.session_id)
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                out(event)
                if event["type"] == "session.ended":
                    break
    except (websockets.ConnectionClosed, grpc.aio.AioRpcError) as exc:
        if not out.errors:  # a refusal the server explained already is reported below
            raise _connection_error(exc, url) from None
    except _NETWORK_ERRORS as exc:
        raise _connection_error(exc, url) from None
    return out.exit_code()


# ---------------------------------------------------------------- command line


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions are wrapped to the terminal; epilogs (examples) are kept as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def add_text(self, text: str | None) -> None:
        if text and "\n" not in text:  # a description: one paragraph
            text = textwrap.fill(text, max(self._width - self._current_indent, 40))
        super().add_text(text)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="ws://host:port/v1/sessions for the websocket, grpc://host:port for gRPC (default: %(default)s)",
    )
    group.add_argument(
        "--token",
        help="bearer token (default: $SWITCHBOARD_TOKEN, else <data dir>/dev-token, the data dir being "
        "$SWITCHBOARD_DATA_DIR or .switchboard)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for a reply (default: %(default)s)",
    )
    group.add_argument("--json", action="store_true", help="print each event as one raw JSON line")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Talk to a running switchboard over the websocket or gRPC (PROTOCOL v1).",
        epilog="examples:\n"
        '  switchboard chat --message "I want to request my medical records"\n'
        "  switchboard call call.wav --url grpc://127.0.0.1:9000\n"
        "  switchboard tail ses_1a2b3c4d5e6f7a8b\n"
        "\n`switchboard COMMAND --help` describes each command. The server runs with `make serve`.\n"
        "exit codes: 0 done, 1 the server reported an error, 2 a problem to fix here, 130 interrupted",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common()

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="chat as the customer and see the live analysis",
        description="Open a chat session: each line you type is sent as a customer message; the transcript, "
        "sentiment, intent, suggested reply (with article ids), escalations, routing notices and errors "
        "come back as they happen. With --message, send those messages, wait for each reply, end the "
        "session and print its summary.",
        epilog="examples:\n"
        "  switchboard chat\n"
        "  switchboard chat --customer cust-0042 --channel sms\n"
        '  switchboard chat --message "I was charged twice" --message "I want a supervisor"\n'
        '  switchboard chat --json --message "how do I get my records?" | jq .type\n'
        "\ninteractive: `/agent TEXT` writes as the agent, `/end` or Ctrl-D ends the session",
        formatter_class=_Formatter,
    )
    chat.add_argument(
        "--customer", default="cust-0001", metavar="ID", help="customer id (default: %(default)s)"
    )
    chat.add_argument(
        "--channel", choices=("chat", "sms", "email"), default="chat", help="default: %(default)s"
    )
    chat.add_argument(
        "--message",
        action="append",
        metavar="TEXT",
        help="send this customer message instead of reading stdin (repeatable); exits after the last reply",
    )
    chat.set_defaults(handler=_chat)

    call = commands.add_parser(
        "call",
        parents=[common],
        help="stream a WAV file as a voice call",
        description="Stream a WAV file (16-bit PCM, 16 kHz or 8 kHz, mono or stereo) as a voice session in "
        f"{FRAME_S * 1000:.0f} ms frames: partial and final transcripts with speakers, sentiment, suggestions "
        "and escalations are printed live; the session then ends and its summary is printed. In a stereo "
        "file each channel is one party.",
        epilog="examples:\n"
        "  switchboard call call.wav\n"
        "  switchboard call call.wav --no-realtime --json\n"
        "  switchboard call call.wav --url grpc://127.0.0.1:9000\n"
        f"\nother formats: {CONVERT_HINT}",
        formatter_class=_Formatter,
    )
    call.add_argument("file", type=Path, metavar="FILE.wav", help="the recording to stream")
    call.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pace the audio like a live call; --no-realtime sends it as fast as possible (default: real time)",
    )
    call.add_argument(
        "--customer", default="cust-0001", metavar="ID", help="customer id (default: %(default)s)"
    )
    call.set_defaults(handler=_call)

    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="follow a session: its history, then live events",
        description="Follow a session as an agent or supervisor: a snapshot of the session so far, then each "
        "event as it happens, until the session ends. A session that already ended prints its stored "
        "history. Needs an agent or supervisor token.",
        epilog="examples:\n"
        "  switchboard tail ses_1a2b3c4d5e6f7a8b\n"
        "  switchboard tail ses_1a2b3c4d5e6f7a8b --url grpc://127.0.0.1:9000 --json",
        formatter_class=_Formatter,
    )
    tail.add_argument(
        "session_id", metavar="SESSION_ID", help="the session to follow (session.started's session_id)"
    )
    tail.set_defaults(handler=_tail)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = session_url(args.url)
        if args.timeout <= 0:
            raise CliError("--timeout must be positive")
        handler: Callable[..., Any] = args.handler
        extra = (read_wav(args.file),) if args.command == "call" else ()
        token = resolve_token(args.token)
        return asyncio.run(handler(args, url, token, *extra))
    except CliError as exc:
        _status(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _status("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
