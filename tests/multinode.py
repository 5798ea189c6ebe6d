"""A real two-node Ray cluster on this machine, for tests/integration/test_multinode.py.

``TwoNodeCluster`` runs ``ray start --head --block`` and ``ray start --address=... --block`` as two process
trees, each with its own ``--temp-dir``, ports, and a custom resource naming the node (``node_a`` is the head,
``node_b`` the worker). ``remove_worker()`` is ``ray stop`` for the worker node alone, without the drain, as if
the machine died: SIGTERM to its ``ray start`` (its raylet unregisters, so GCS marks the node and its actors dead
at once), then SIGKILL for anything of that node still running. ``ray stop`` itself would stop every Ray process on
the machine: another test's local Ray, a developer's cluster.

``python -m tests.multinode deploy ...`` deploys the app with ``serve.run.launch(address=...)`` from a driver
process of its own and prints how to connect as JSON: the pytest process may already be connected to another Ray
(the integration ``app`` fixture's local one), and a process is connected to one Ray at most. The Serve
controller is a detached actor, so the app outlives that driver.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

__all__ = ["RayNode", "TwoNodeCluster", "deploy", "free_port"]

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
APP = "switchboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray turns token auth on when ~/.ray/auth_token exists (a local `ray.init()` writes it), and this process's
        # state API and HTTP calls carry no token: this cluster listens on 127.0.0.1 only and lives for one test
        RAY_AUTH_MODE="disabled",
        # SIGTERM to `ray start --block` drains the node first (Serve moves replicas away) for up to this long:
        # these nodes are removed as if they crashed
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@dataclass
class RayNode:
    """One ``ray start --block`` process tree. ``name`` is also its custom resource (``{name: 1}``)."""

    name: str
    temp_dir: Path
    process: subprocess.Popen
    log_path: Path
    stopped: bool = False

    @classmethod
    def start(cls, name: str, temp_dir: Path, args: list[str], env: dict[str, str]) -> RayNode:
        temp_dir.mkdir(parents=True)
        log_path = temp_dir.parent / f"{name}.log"
        command = [RAY, "start", "--block", f"--temp-dir={temp_dir}", f"--resources={json.dumps({name: 1})}"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )
        return cls(name, temp_dir, process, log_path)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def processes(self) -> list[psutil.Process]:
        """This node's processes: the ``ray start`` tree (GCS, raylet, its workers...), its process group (workers
        a dead raylet left behind), and anything whose command line names its temp dir."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.process.pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        marker = str(self.temp_dir)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(proc.pid) == self.process.pid or marker in " ".join(proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
            except (psutil.Error, OSError):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace_s: float = 10.0) -> None:
        """``ray stop`` for this node only. SIGTERM to ``ray start --block``: it stops the node's processes the way
        Ray does (the raylet unregisters, so GCS marks the node and its actors dead at once); with
        ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` (``TwoNodeCluster``) it skips draining, so the node is lost as in
        a crash. Whatever is left after ``grace_s`` (or was left behind) gets SIGTERM, then SIGKILL."""
        self.stopped = True
        procs = self.processes()
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        rest = [p for p in {p.pid: p for p in procs + self.processes()}.values() if _alive(p)]
        _send(rest, signal.SIGTERM)
        _, alive = psutil.wait_procs(rest, timeout=grace_s)
        leftovers = [p for p in {p.pid: p for p in alive + self.processes()}.values() if _alive(p)]
        _send(leftovers, signal.SIGKILL)
        psutil.wait_procs(leftovers, timeout=5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _send(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


class TwoNodeCluster:
    """``with TwoNodeCluster() as cluster:`` a head (``node_a``) and a worker (``node_b``) on this machine; every
    process of both is stopped on exit, whatever happened."""

    def __init__(self, num_cpus: float = 2, object_store_bytes: int = 200 * 2**20, env: dict[str, str] | None = None):
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self.env = _env(**(env or {}))
        self.root: Path | None = None
        self.head: RayNode | None = None
        self.worker: RayNode | None = None
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--disable-usage-stats",
        ]

    def __enter__(self) -> TwoNodeCluster:
        # short: Ray's unix socket paths under <temp-dir>/session_*/sockets must fit in 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="sbmn-", dir="/tmp"))
        try:
            self.head = RayNode.start(
                "node_a",
                self.root / "head",
                [
                    "--head",
                    f"--port={self.gcs_port}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}",
                    *self._node_args(),
                ],
                self.env,
            )
            self._wait(lambda: self._get("/api/gcs_healthz").text.strip() == "success", 120, "the head node")
            self.worker = RayNode.start(
                "node_b", self.root / "worker", [f"--address={self.address}", *self._node_args()], self.env
            )
            self.wait_nodes({"node_a", "node_b"}, 120)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                node.stop(grace_s=5.0)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def remove_worker(self, grace_s: float = 10.0) -> None:
        assert self.worker is not None
        self.worker.stop(grace_s)

    # ------------------------------------------------------------ what the cluster reports

    def _get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.dashboard_url}{path}", timeout=10)

    def _wait(self, ready: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in (self.head, self.worker):
                if node is not None and not node.stopped and node.process.poll() is not None:
                    raise RuntimeError(f"`ray start` for {node.name} exited:\n{node.log_tail()}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                pass
            except Exception as exc:  # the state API raises its own errors while the dashboard starts
                if "RayStateApi" not in type(exc).__name__ and "ServerUnavailable" not in type(exc).__name__:
                    raise
            time.sleep(1.0)
        logs = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in (self.head, self.worker) if n is not None)
        raise TimeoutError(f"waited {timeout_s:.0f}s for {what}\n{logs}")

    def wait_nodes(self, names: set[str], timeout_s: float) -> dict[str, str]:
        """Wait until exactly the nodes ``names`` are alive; returns ``nodes()``."""
        self._wait(lambda: set(self.nodes()) == names, timeout_s, f"the alive nodes to be {sorted(names)}")
        return self.nodes()

    def nodes(self) -> dict[str, str]:
        """node name (its custom resource) → node id, for the nodes alive now."""
        from ray.util.state import list_nodes

        names = {}
        # filtered here, not by the API: a server-side filter makes it report the other nodes as "missing output"
        for node in list_nodes(address=self.dashboard_url, raise_on_missing_output=False):
            if node.state != "ALIVE":
                continue
            for name in ("node_a", "node_b"):
                if name in (node.resources_total or {}):
                    names[name] = node.node_id
        return names

    def serve_details(self) -> dict[str, Any]:
        """What ``serve status`` shows (the dashboard's Serve REST API): applications, deployments, replicas."""
        response = self._get("/api/serve/applications/")
        response.raise_for_status()
        return response.json()

    def deployments(self) -> dict[str, dict[str, Any]]:
        return self.serve_details().get("applications", {}).get(APP, {}).get("deployments", {})

    def replica_nodes(self) -> dict[str, list[str]]:
        """deployment → the node ids of its live replica actors (Ray state API)."""
        from ray.util.state import list_actors

        placed: dict[str, list[str]] = {}
        prefix = f"ServeReplica:{APP}:"
        for actor in list_actors(address=self.dashboard_url, limit=10000, raise_on_missing_output=False):
            if actor.state == "ALIVE" and actor.class_name and actor.class_name.startswith(prefix):
                placed.setdefault(actor.class_name[len(prefix) :], []).append(actor.node_id)
        return placed

    def wait_replicas(self, count: int, timeout_s: float, on: set[str] | None = None) -> dict[str, list[str]]:
        """Wait until the app is RUNNING and every deployment has ``count`` RUNNING replicas (on the nodes ``on``,
        when given). Returns ``replica_nodes()``."""
        placed: dict[str, list[str]] = {}

        def ready() -> bool:
            nonlocal placed
            app = self.serve_details().get("applications", {}).get(APP, {})
            if app.get("status") != "RUNNING":
                return False
            for deployment in app.get("deployments", {}).values():
                running = [r for r in deployment.get("replicas", []) if r.get("state") == "RUNNING"]
                if len(running) != count or deployment.get("status") != "HEALTHY":
                    return False
            placed = self.replica_nodes()
            return all(len(ids) == count and (on is None or set(ids) <= on) for ids in placed.values())

        self._wait(ready, timeout_s, f"{count} running replicas of every deployment")
        return placed


def deploy(
    cluster: TwoNodeCluster,
    config: Path,
    settings: dict[str, Any],
    *,
    port: int,
    grpc_port: int,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Deploy the app on ``cluster`` with ``serve.run.launch`` from a driver process of its own; returns
    ``{"http_url", "ws_url", "token"}``."""
    command = [
        sys.executable,
        "-m",
        "tests.multinode",
        "deploy",
        f"--address={cluster.address}",
        f"--config={config}",
        f"--settings={json.dumps(settings)}",
        f"--port={port}",
        f"--grpc-port={grpc_port}",
        f"--timeout={timeout_s}",
    ]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"deploy failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.multinode")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("deploy", help="deploy a Serve config on a running cluster; print how to connect (JSON)")
    run.add_argument("--address", required=True)
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--settings", default="{}")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--grpc-port", type=int, required=True)
    run.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    from serve.run import launch

    running = launch(
        args.config,
        settings=json.loads(args.settings),
        port=args.port,
        grpc_port=args.grpc_port,
        dashboard=False,
        timeout_s=args.timeout,
        address=args.address,
    )
    print(json.dumps({"http_url": running.http_url, "ws_url": running.ws_url, "token": running.token}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
