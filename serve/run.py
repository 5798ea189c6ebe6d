"""Run switchboard on a local Ray: ``python -m serve.run`` (what ``make serve`` does).

Resolves settings and the dev token, builds the knowledge-base index if needed, starts a local Ray with
Serve, deploys the Serve config file (``cluster/serve-local.yaml`` by default), waits until ``/healthz``
is green, prints how to connect, and stays in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import Settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "cluster" / "serve-local.yaml"

__all__ = ["Running", "launch", "shutdown", "main"]


@dataclass(frozen=True)
class Running:
    http_url: str
    ws_url: str
    token: str
    settings: Settings
    grpc_target: str = "127.0.0.1:9000"

    @property
    def tokens(self) -> dict[str, str]:
        """The local tokens by role: agent (the dev token), supervisor, customer (the chat widget)."""
        from .auth import TokenAuthority

        return TokenAuthority(self.token).tokens()


def _say(msg: str) -> None:
    print(f"[switchboard] {msg}", file=sys.stderr, flush=True)


def _prepare(
    config_path: Path,
    overrides: dict[str, Any],
    port: int | None,
    grpc_port: int | None = None,
    defaults: dict[str, Any] | None = None,
) -> tuple[dict, Settings, str]:
    from pipelines.indexing import build_index

    from .auth import resolve_dev_token

    config = copy.deepcopy(yaml.safe_load(config_path.read_text()))
    app = config["applications"][0]
    # precedence: overrides > SWITCHBOARD_* env vars > the Serve config file's args.settings > defaults
    # (settings passed as arguments beat the environment in pydantic, so a file value the env sets is left out)
    from_file = {
        k: v
        for k, v in (app.get("args") or {}).get("settings", {}).items()
        if f"SWITCHBOARD_{k.upper()}" not in os.environ
    }
    merged = {**(defaults or {}), **from_file, **overrides}
    settings = Settings(**merged)
    # Replicas may start in another working directory: pin every local path.
    absolute = {"data_dir": Path(settings.data_dir).resolve()}
    if settings.index_dir:
        absolute["index_dir"] = Path(settings.index_dir).resolve()
    settings = settings.model_copy(update=absolute)
    token = resolve_dev_token(settings)
    settings = settings.model_copy(update={"dev_token": token})
    build_index(settings)
    http = config.setdefault("http_options", {})
    # precedence: --port > SWITCHBOARD_HOST/PORT (or args) > the Serve config file
    for name in ("host", "port"):
        if name in settings.model_fields_set:
            http[name] = getattr(settings, name)
    if port is not None:
        http["port"] = port
    if grpc_port is not None:
        config.setdefault("grpc_options", {})["port"] = grpc_port
    settings = settings.model_copy(
        update={"host": http.get("host", settings.host), "port": http.get("port", settings.port)}
    )
    # the token stays out of the app args (Serve logs those): replicas read it from <data_dir>/dev-token
    args = settings.model_dump(mode="json", exclude={"dev_token"})
    app["args"] = {"settings": {k: v for k, v in args.items() if v is not None}}
    # the config tunes every deployment; one these settings leave out (voice or generation off) is not deployed
    from .app import deployment_names

    built = deployment_names(settings)
    app["deployments"] = [d for d in app.get("deployments", []) if d["name"] in built]
    return config, settings, token


def _wait_healthy(url: str, timeout_s: float) -> None:
    import httpx
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        try:
            status = serve.status().applications.get("switchboard")
            if status is not None:
                line = ", ".join(f"{n}={d.status.value}" for n, d in sorted(status.deployments.items()))
                if status.status.value == "DEPLOY_FAILED":
                    raise RuntimeError(f"deployment failed: {status.message}")
                if line != last:
                    _say(f"starting deployments: {line}")
                    last = line
        except RuntimeError:
            raise
        except Exception:  # status polling is best-effort progress reporting
            pass
        time.sleep(1.0)
    raise TimeoutError(
        f"switchboard did not become healthy within {timeout_s:.0f}s; see `serve status` and Ray logs"
    )


def launch(
    config_path: Path = DEFAULT_CONFIG,
    *,
    settings: dict[str, Any] | None = None,
    port: int | None = None,
    grpc_port: int | None = None,
    dashboard: bool = True,
    timeout_s: float = 600.0,
    defaults: dict[str, Any] | None = None,
    address: str | None = None,
) -> Running:
    """Start local Ray + Serve with the config file and wait until healthy. ``defaults`` are settings the
    config file and ``settings`` override (``make serve``: traces to the console). ``address`` (``HOST:PORT`` of
    a running cluster's head): deploy there instead of starting a local Ray."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    from .protos import build as build_protos

    build_protos()  # the switchboard.v1 gRPC code, if `make install` did not generate it yet
    config, resolved, token = _prepare(Path(config_path), settings or {}, port, grpc_port, defaults)
    schema = ServeDeploySchema.model_validate(config)
    os.environ.setdefault("RAY_worker_niceness", "0")
    before = dict(os.environ)
    if resolved.ingress_proxy == "haproxy":
        _use_haproxy(local=address is None and not ray.is_initialized())
    if not ray.is_initialized():
        _say(f"connecting to Ray at {address}" if address else "starting Ray (local)")
        ray.init(
            address=address,
            namespace="serve",
            include_dashboard=dashboard,
            configure_logging=False,
            log_to_driver=os.environ.get("SWITCHBOARD_RAY_LOG_TO_DRIVER", "1") == "1",
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        )
    # the Ray started here took the HAProxy switches with it; processes this one starts later (another local
    # server, `ray start` nodes) choose their own front door and ports
    for name in [k for k in os.environ if k.startswith("RAY_SERVE_") and before.get(k) != os.environ[k]]:
        if name in before:
            os.environ[name] = before[name]
        else:
            del os.environ[name]
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        global_tracing_config=_serve_tracing(resolved),
    )
    client.deploy_apps(schema, _blocking=False)
    host = schema.http_options.host
    http_url = f"http://{host}:{schema.http_options.port}"
    _say(
        f"deploying {config_path.name if isinstance(config_path, Path) else config_path} (first start loads models, ~1 min)"
    )
    _wait_healthy(http_url, timeout_s)
    return Running(
        http_url=http_url,
        ws_url=f"ws://{host}:{schema.http_options.port}/v1/sessions",
        token=token,
        settings=resolved,
        grpc_target=f"{host}:{schema.grpc_options.port}",
    )


def _use_haproxy(*, local: bool) -> None:
    """Ray Serve's HAProxy ingress (``ingress_proxy: haproxy``). Serve's controller and replicas read the switch
    from their environment, which they inherit from the Ray started here; a Ray already running (a cluster, or
    one this process started earlier) keeps the front door it was started with."""
    if not local:
        if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
            _say(
                "front door: whatever the running Ray was started with (HAProxy needs "
                "RAY_SERVE_ENABLE_HA_PROXY=1 where that Ray starts)"
            )
        return
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    # one node and no outer load balancer to drain connections away from a stopping replica (Ray's default: 30 s)
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    # HAProxy's stats page and Prometheus exporter, and the Python proxy HAProxy falls back to while no ingress
    # replica is up, listen on Ray's ports when they are free, else on free ones: a second local server (the
    # test suite next to `make serve`) must not send its callers to the first one's proxy
    for name, default in (
        ("RAY_SERVE_HAPROXY_STATS_PORT", 8404),
        ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101),
        ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", 8500),
        ("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500),
    ):
        if name not in os.environ:
            os.environ[name] = str(_port_free(default) or _port_free(0))
    if "RAY_SERVE_HAPROXY_MAXCONN" not in os.environ:
        os.environ["RAY_SERVE_HAPROXY_MAXCONN"] = str(haproxy_maxconn())
    _say(
        f"front door: HAProxy (stats :{os.environ['RAY_SERVE_HAPROXY_STATS_PORT']}, metrics "
        f":{os.environ['RAY_SERVE_HAPROXY_METRICS_PORT']}, at most {os.environ['RAY_SERVE_HAPROXY_MAXCONN']} "
        "connections; SWITCHBOARD_INGRESS_PROXY=serve for Ray Serve's Python proxy)"
    )


def haproxy_maxconn() -> int:
    """The connections HAProxy can hold under this process's descriptor limit (which Ray's processes inherit).
    HAProxy refuses to start when the limit is below what its ``maxconn`` needs: two descriptors per connection
    (client and ingress replica) and half a pipe pair (it keeps ``maxconn / 4`` pipes), plus its listeners:
    2.5 per connection and 1,024 to spare. At most 65,536 (Ray's own default is 4096); 7,590 under 20,000."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 65536
    return max(256, min(65536, int((hard - 1024) / 2.5)))


def _port_free(port: int) -> int:
    """``port`` if nothing listens on it (0 when taken); ``_port_free(0)``: a free port."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return 0
        return s.getsockname()[1]


def _serve_tracing(settings: Settings) -> Any:
    """Ray Serve's tracing, on when spans are exported: it carries each handle call's trace context into the
    replica (its ``replica_handle_request`` span joins the session's trace). Its hook installs the provider
    only; each deployment adds the exporters from its settings (``pipelines.tracing.configure``)."""
    from ray.serve.schema import TracingConfig

    from pipelines.tracing import SERVE_HOOK

    if settings.trace_exporter == "none":
        return None
    return TracingConfig(enabled=True, exporter_import_path=SERVE_HOOK, sampling_ratio=settings.trace_sample_ratio)


def shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="Serve config file (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, help="override the HTTP port in the config")
    parser.add_argument("--grpc-port", type=int, help="override the gRPC port in the config")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    args = parser.parse_args(argv)
    from pipelines import logs

    logs.install(Settings())  # this process's own `switchboard.*` lines as JSON (the replicas install theirs)
    # `make serve`: spans to the console unless SWITCHBOARD_TRACE_EXPORTER or the config file chose otherwise
    defaults = {} if "SWITCHBOARD_TRACE_EXPORTER" in os.environ else {"trace_exporter": "console"}
    try:
        running = launch(
            args.config,
            port=args.port,
            grpc_port=args.grpc_port,
            dashboard=not args.no_dashboard,
            defaults=defaults,
        )
    except (FileNotFoundError, TimeoutError, RuntimeError, ValueError) as exc:
        _say(f"could not start: {exc}")
        shutdown()
        return 1
    token_file = Path(running.settings.data_dir) / "dev-token"
    tokens = running.tokens
    print(
        "\nswitchboard is up\n"
        f"  websocket : {running.ws_url}\n"
        f"  health    : {running.http_url}/healthz\n"
        f"  metrics   : {running.http_url}/metrics  (this replica; the cluster: Ray's metrics export port, ray_* names)\n"
        f"  gRPC      : {running.grpc_target}  (Riva-compatible nvidia.riva.asr.RivaSpeechRecognition)\n"
        f"  dev token : {running.token}   (role agent; also in {token_file})\n"
        f"  desktop   : {running.http_url}/desktop?token={running.token}\n"
        f"  supervisor: {running.http_url}/desktop?token={tokens['supervisor']}\n"
        f"  widget    : {running.http_url}/widget?token={tokens['customer']}   (customer chat page)\n"
        f"  try       : python -m serve.demo --connect {running.ws_url}\n"
        + (
            "  dashboard : http://127.0.0.1:8265  (Ray dashboard: deployments, replicas, logs)\n"
            if not args.no_dashboard
            else ""
        )
        + "Ctrl-C stops it.",
        flush=True,
    )
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _say("shutting down")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
