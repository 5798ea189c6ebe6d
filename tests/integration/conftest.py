"""A real local Ray Serve app for the integration tests, started once per test run, storing to a fresh
real PostgreSQL database."""

from __future__ import annotations

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_session_database():
    import uuid

    import sqlalchemy

    from tests.conftest import PG_ADMIN_URL

    name = f"sb_it_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it (see .ci/run)")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def prepared_data_dir(tmp_path_factory, name: str):
    """A fresh data folder an app can start on: Feast's sample customers applied and materialized (SQLite online
    store), and the embedded MLflow store created before replicas poll it."""
    from pipelines.config import Settings
    from pipelines.features import setup
    from pipelines.registry import mlflow_store

    data_dir = tmp_path_factory.mktemp(name)
    setup(Settings(data_dir=data_dir))
    with mlflow_store(Settings(data_dir=data_dir)):
        pass
    return data_dir


@pytest.fixture(scope="session")
def app(tmp_path_factory, index_dir, pg_session_database, smollm2_dir):
    """The real Serve application from cluster/serve-local.yaml, on a free port."""
    from serve.run import launch, shutdown

    data_dir = prepared_data_dir(tmp_path_factory, "serve-data")
    running = launch(
        settings={
            "data_dir": str(data_dir),
            "index_dir": str(index_dir),
            "database_url": pg_session_database,
            "model_refresh_s": 1.0,  # alias moves reach the replicas within a second
            "generation_model": str(smollm2_dir),  # the packaged SmolLM2 on the real vLLM engine
            # The shared app serves every integration test on a busy CI machine: the load governor would shed
            # generation whenever a neighbouring test slows the critical path, and the generation tests need the
            # engine's reply. Shedding has its own tests (tests/unit/test_overload.py) and benchmark (load.py).
            "shed_latency_ms": 60_000.0,
            "shed_inflight_turns": 1_000,
            "max_concurrent_generations": 16,
        },
        port=_free_port(),
        grpc_port=_free_port(),
        dashboard=False,
        timeout_s=600,
    )
    yield running
    shutdown()


def stored(settings, table: str, session_id: str, tenant: str = "demo") -> list[dict]:
    """A session's stored ``utterances`` (text opened) or ``events`` (payloads opened), read straight from the
    app's database with the app's master key: rows are sealed with the tenant's data key at rest."""
    import sqlalchemy

    from pipelines.keys import encrypted_store
    from pipelines.storage import events, utterances

    store = encrypted_store(settings)
    t = {"utterances": utterances, "events": events}[table]
    try:
        with store.engine.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(
                    sqlalchemy.select(t).where(t.c.session_id == session_id, t.c.tenant == tenant).order_by(t.c.seq)
                )
            ]
        if table == "utterances":
            return [{**r, "sealed": r["text"], "text": store._opened_text(r)} for r in rows]
        return [store._opened_payload(tenant, session_id, r["seq"], r["payload"]) for r in rows]
    finally:
        store.engine.dispose()
