"""``ingress_proxy: haproxy``: Ray Serve's HAProxy ingress in front of the real app, started the way an operator
starts it (``SWITCHBOARD_INGRESS_PROXY=haproxy python -m serve.run``) in its own process and its own local Ray.
A voice call over the websocket and a chat over gRPC go through it, and the server stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from serve.cli import main
from tests.integration.conftest import _free_port, prepared_data_dir
from tests.integration.test_cli import MESSAGE, _json_lines, _write_wav
from tests.integration.test_serve_voice import call  # noqa: F401 - the espeak-ng call fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def haproxy_app(tmp_path_factory, index_dir):
    data_dir = prepared_data_dir(tmp_path_factory, "haproxy-data")
    port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",  # a Ray of its own, next to the one the shared test app runs in
        "SWITCHBOARD_INGRESS_PROXY": "haproxy",
        "SWITCHBOARD_DATA_DIR": str(data_dir),
        "SWITCHBOARD_INDEX_DIR": str(index_dir),
        "SWITCHBOARD_GENERATION_BACKEND": "none",  # the front door is under test, not the reply engine
        "SWITCHBOARD_TRACE_EXPORTER": "none",
        "SWITCHBOARD_RAY_LOG_TO_DRIVER": "0",
    }
    out, log = data_dir / "serve.out", data_dir / "serve.log"
    with out.open("w") as stdout, log.open("w") as stderr:  # files, not pipes: a full pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve.run", "--no-dashboard", "--port", str(port), "--grpc-port", str(grpc_port)],
            cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True,
        )  # fmt: skip
    token = None
    deadline = time.monotonic() + 600
    while token is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1.0)
        for line in out.read_text().splitlines():
            if line.strip().startswith("dev token :"):
                token = line.split(":", 1)[1].split()[0]
    if token is None:
        proc.kill()
        pytest.fail(f"serve.run with HAProxy did not start: {log.read_text()[-3000:]}")
    yield proc, port, f"ws://127.0.0.1:{port}/v1/sessions", f"grpc://127.0.0.1:{grpc_port}", token
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_haproxy_listens_on_the_http_port(haproxy_app):
    proc, port, *_ = haproxy_app
    haproxies = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "haproxy"]
    assert haproxies, "no haproxy process under serve.run"
    listening = {c.laddr.port for p in haproxies for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert port in listening, (port, listening)


def test_a_voice_call_over_the_websocket_through_haproxy(haproxy_app, call, tmp_path, capsys):  # noqa: F811
    _, _, ws_url, _, token = haproxy_app
    wav = _write_wav(tmp_path / "call.wav", call.audio, 16000)
    assert main(["call", str(wav), "--no-realtime", "--url", ws_url, "--token", token, "--json"]) == 0
    events = _json_lines(capsys.readouterr().out)
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert len({f["speaker"] for f in finals}) == 2, finals  # two voices, two labels (online diarization)
    text = " ".join(f["text"] for f in finals).lower()
    assert "prescription" in text and "pharmacy" in text, text


def test_a_chat_over_grpc_and_a_clean_stop(haproxy_app, capsys):
    proc, _, _, grpc_url, token = haproxy_app
    assert main(["chat", "--url", grpc_url, "--token", token, "--message", MESSAGE, "--json"]) == 0
    events = _json_lines(capsys.readouterr().out)
    assert [e["text"] for e in events if e["type"] == "transcript.final"] == [MESSAGE]
    assert any(e["type"] == "assist.suggestion" for e in events), events
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0


def test_the_shared_app_left_no_haproxy_switch_in_this_process(app):
    """The shared app's Ray took the HAProxy switches (and its ports) with it: servers and `ray start` nodes
    this process starts later choose their own, instead of inheriting ports that are taken."""
    assert app.settings.ingress_proxy == "haproxy"
    assert not {k for k in os.environ if k.startswith("RAY_SERVE_HAPROXY") or k == "RAY_SERVE_ENABLE_HA_PROXY"}
