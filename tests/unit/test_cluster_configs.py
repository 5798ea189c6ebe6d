"""The cluster configs: every Serve config validates as Serve's deploy schema (as written and after serve/run.py's
preparation) and tunes exactly the deployments the app builds; the production config autoscales, drains and
health-checks every deployment; the KubeRay RayService embeds the production config verbatim and gives calls the
time to drain; the on-prem cluster config passes the Ray cluster launcher's own preparation and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from pipelines.config import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PRODUCTION = CLUSTER / "serve-gpu.yaml"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
ONPREM = CLUSTER / "onprem" / "cluster.yaml"
SERVE_CONFIGS = [*sorted(CLUSTER.glob("serve-*.yaml")), REPO / "tests" / "integration" / "serve-multinode.yaml"]
LONGEST_CALL_DRAIN_S = 900  # cluster/README.md, "Draining live calls"
GPU_DEPLOYMENTS = {"sentiment", "embedder", "asr", "speaker_embedder", "response_generator"}


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _app_deployments(settings: dict[str, Any]) -> set[str]:
    """The deployment names ``serve.app:build_app`` binds for these settings (binding needs no Ray)."""
    from ray.serve import Application

    from serve.app import build_app

    app = build_app({"settings": {**settings, "dev_token": "unit-test-token"}})
    names: set[str] = set()
    todo = [app]
    while todo:
        deployment = todo.pop()._bound_deployment
        names.add(deployment.name)
        todo += [a for a in (*deployment.init_args, *deployment.init_kwargs.values()) if isinstance(a, Application)]
    return names


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def _rayservice() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service, docs


# ------------------------------------------------------------------ every Serve config


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_validates_as_written_and_as_launched(path: Path, monkeypatch, tmp_path):
    config = _load(path)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    Settings(**app["args"]["settings"])  # the app's settings are real, valid settings

    # what `python -m serve.run` / `serve.run.launch` deploys: the same file after _prepare (settings resolved
    # and pinned, host/port applied); the index build and the token file are left out here
    import pipelines.indexing
    import serve.auth
    from serve.run import _prepare

    monkeypatch.setattr(pipelines.indexing, "build_index", lambda settings: None)
    monkeypatch.setattr(serve.auth, "resolve_dev_token", lambda settings: "unit-test-token")
    prepared, _, _ = _prepare(path, {}, 8123)
    schema = ServeDeploySchema.model_validate(prepared)
    assert schema.http_options.port == 8123
    assert "dev_token" not in prepared["applications"][0]["args"]["settings"]  # Serve logs app args


def test_an_env_var_beats_the_serve_config_file_and_an_override_beats_both(monkeypatch):
    import pipelines.indexing
    import serve.auth
    from serve.run import _prepare

    monkeypatch.setattr(pipelines.indexing, "build_index", lambda settings: None)
    monkeypatch.setattr(serve.auth, "resolve_dev_token", lambda settings: "unit-test-token")
    local = CLUSTER / "serve-local.yaml"
    assert _prepare(local, {}, 8123)[1].max_concurrent_generations == 2  # the file's value
    monkeypatch.setenv("SWITCHBOARD_MAX_CONCURRENT_GENERATIONS", "5")
    _, settings, _ = _prepare(local, {}, 8123)
    assert settings.max_concurrent_generations == 5
    _, settings, _ = _prepare(local, {"max_concurrent_generations": 7}, 8123)
    assert settings.max_concurrent_generations == 7


@pytest.mark.parametrize("generation", ["vllm", "none"])
@pytest.mark.parametrize("voice", [True, False])
def test_launching_without_voice_or_generation_deploys_only_what_the_app_builds(voice, generation, monkeypatch):
    import pipelines.indexing
    import serve.auth
    from serve.app import deployment_names
    from serve.run import _prepare

    monkeypatch.setattr(pipelines.indexing, "build_index", lambda settings: None)
    monkeypatch.setattr(serve.auth, "resolve_dev_token", lambda settings: "unit-test-token")
    overrides = {"voice": voice, "generation_backend": generation}
    prepared, settings, _ = _prepare(CLUSTER / "serve-local.yaml", overrides, 8123)
    ServeDeploySchema.model_validate(prepared)
    built = _app_deployments(prepared["applications"][0]["args"]["settings"])
    assert deployment_names(settings) == built
    assert set(_deployments(prepared)) == built  # Serve refuses config for a deployment the app does not build
    assert ("response_generator" in built) == (generation != "none") and ("asr" in built) == voice


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_tunes_exactly_the_deployments_the_app_builds(path: Path):
    config = _load(path)
    (app,) = config["applications"]
    assert app["name"] == "switchboard" and app["import_path"] == "serve.app:build_app"
    assert set(_deployments(config)) == _app_deployments(app["args"]["settings"])


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_replica_reserves_cpu(path: Path):
    for name, deployment in _deployments(_load(path)).items():
        assert deployment["ray_actor_options"]["num_cpus"] > 0, name


# ------------------------------------------------------------------ the production config


def test_production_autoscales_drains_and_health_checks_every_deployment():
    deployments = _deployments(_load(PRODUCTION))
    generation_budget = Settings.model_fields["generation_timeout_s"].default
    for name, d in deployments.items():
        scaling = d["autoscaling_config"]
        assert "num_replicas" not in d, name
        assert 2 <= scaling["min_replicas"] <= scaling["max_replicas"], name  # no single replica on the hot path
        assert scaling["target_ongoing_requests"] <= d["max_ongoing_requests"], name
        assert scaling["upscale_delay_s"] < scaling["downscale_delay_s"], name
        assert d["health_check_period_s"] < d["health_check_timeout_s"], name
        assert d["graceful_shutdown_wait_loop_s"] < d["graceful_shutdown_timeout_s"], name
        # a model call in flight (at most one generated reply) finishes before its replica stops
        assert d["graceful_shutdown_timeout_s"] >= generation_budget, name
        assert (d["ray_actor_options"].get("num_gpus", 0) > 0) == (name in GPU_DEPLOYMENTS), name
    ingress = deployments["ingress"]
    assert ingress["graceful_shutdown_timeout_s"] >= LONGEST_CALL_DRAIN_S
    assert ingress["max_queued_requests"] == -1
    assert ingress["autoscaling_config"]["downscale_delay_s"] >= 600  # an ingress is costly to drain
    assert deployments["response_generator"]["ray_actor_options"]["num_gpus"] == 1


def test_production_serves_http_on_every_node_without_a_request_timeout():
    config = _load(PRODUCTION)
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["request_timeout_s"] is None  # websockets live as long as the call


# ------------------------------------------------------------------ KubeRay


def test_rayservice_embeds_the_production_config_verbatim():
    service, _ = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded == _load(PRODUCTION), "copy cluster/serve-gpu.yaml into serveConfigV2"
    (app,) = embedded["applications"]
    assert set(_deployments(embedded)) == _app_deployments(app["args"]["settings"])


def test_rayservice_lets_calls_drain_through_upgrades_and_scale_down():
    service, _ = _rayservice()
    spec = service["spec"]
    drain = _deployments(yaml.safe_load(spec["serveConfigV2"]))["ingress"]["graceful_shutdown_timeout_s"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert spec["rayClusterDeletionDelaySeconds"] > drain
    for group in spec["rayClusterConfig"]["workerGroupSpecs"]:
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # SIGTERM drains the Ray node for this long (Serve moves replicas, the ingress waits for its calls)
        assert drain < float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]) < grace, group["groupName"]


def test_rayservice_nodes_export_metrics_and_workers_are_ready_through_healthz():
    service, docs = _rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    labels = []
    for group in groups:
        port = int(group["rayStartParams"]["metrics-export-port"])
        template = group["template"]
        (container,) = template["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert {"configMapRef": {"name": "switchboard-config"}} in container["envFrom"]
        labels.append(template["metadata"]["labels"])
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert "/healthz" in " ".join(container["readinessProbe"]["exec"]["command"]), group["groupName"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == int(gpu["rayStartParams"]["num-gpus"]) >= 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(selector.items() <= pod_labels.items() for pod_labels in labels)
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    fields = set(Settings.model_fields)
    assert all(key.startswith("SWITCHBOARD_") and key[12:].lower() in fields for key in configmap["data"])


# ------------------------------------------------------------------ on-prem


def test_onprem_cluster_config_has_head_and_workers_and_passes_the_launchers_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(ONPREM)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head" in head and "--num-gpus=" in head and "--metrics-export-port=8080" in head
    assert "--address=$RAY_HEAD_IP:6379" in workers and "--num-gpus=" in workers and "--resources=" in workers
    assert config["setup_commands"]
    prepared = prepare_config(config)  # what `ray up` does first (no SSH yet)
    validate_config(prepared)
    assert prepared["available_node_types"]["local.cluster.node"]["min_workers"] == len(config["provider"]["worker_ips"])


def test_the_operator_guide_covers_every_deployment_path_and_the_drain():
    guide = (CLUSTER / "README.md").read_text()
    for command in (
        "serve deploy cluster/serve-gpu.yaml",
        "kubectl apply -f cluster/kuberay/rayservice.yaml",
        "ray up cluster/onprem/cluster.yaml",
    ):
        assert command in guide
    assert f"{LONGEST_CALL_DRAIN_S} s" in guide


def test_haproxy_front_door_moves_its_ports_off_taken_ones_and_fits_the_descriptor_limit(monkeypatch):
    """A second local server (the test suite next to `make serve`) must not collide on HAProxy's stats and
    metrics ports, and HAProxy must not be promised more connections than it has descriptors for."""
    import resource
    import socket

    from serve import run

    env = {k: v for k, v in run.os.environ.items() if not k.startswith("RAY_SERVE_")}
    monkeypatch.setattr(run.os, "environ", env)  # what _use_haproxy sets stays out of this process's environment
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20000))
    assert run.haproxy_maxconn() == 7590  # 2.5 descriptors per connection (HAProxy's pipes), 1024 to spare
    with socket.socket() as taken:
        try:
            taken.bind(("0.0.0.0", 8404))
        except OSError:
            pass  # something on this machine already holds 8404: taken all the same
        taken.listen()
        run._use_haproxy(local=True)
        stats = int(env["RAY_SERVE_HAPROXY_STATS_PORT"])
    assert stats != 8404 and 0 < stats < 65536
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_MAXCONN"] == "7590"
    ports = {int(env[f"RAY_SERVE_{name}"]) for name in ("HAPROXY_METRICS_PORT", "FALLBACK_PROXY_HTTP_PORT",
                                                          "FALLBACK_PROXY_GRPC_PORT")}  # fmt: skip
    assert len(ports | {stats}) == 4  # the Python proxy HAProxy falls back to has ports of its own too
