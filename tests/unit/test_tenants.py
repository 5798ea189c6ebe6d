"""Per-tenant configuration on the real pipeline (real models, real SQLite store): a tenant's own escalation
rules, pinned model version and knowledge base, and caches that never serve one tenant another's results."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import Settings
from pipelines.events import ChatMessage, SessionStart
from pipelines.ports import ModelPorts
from pipelines.reply_cache import CachedReply, ReplyCache
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from pipelines.tenants import TenantDirectory
from tests.fakes import Failing, Recorder

pytestmark = pytest.mark.unit

ACME_RULES = """
default_queue: acme_desk
queues:
  acme_desk: {available: true}
rules:
  - name: refund_words
    when:
      keywords: [refund]
    queue: acme_desk
    priority: high
    reason: acme escalates every refund request
"""


@pytest.fixture
def tenants_file(tmp_path):
    rules = tmp_path / "acme-rules.yaml"
    rules.write_text(ACME_RULES)
    path = tmp_path / "tenants.yaml"
    path.write_text(
        f"""
tenants:
  acme:
    escalation_rules: {rules}
    models: challenger
    provider: Acme Health
    retention_days: 3650
    kb_articles: ["kb-billing-*"]
"""
    )
    return path


@pytest.fixture
async def pipeline(tmp_path, index_dir, local_models, tenants_file):
    settings = Settings(data_dir=tmp_path, index_dir=index_dir, tenants_file=tenants_file)
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))

    def build(**ports) -> Pipeline:
        parts = {n: getattr(local_models, n) for n in ("guardrail", "sentiment", "embedder", "intent", "retriever")}
        return Pipeline(ModelPorts(**{**parts, **ports}), store, review, settings)

    yield build
    await store.close()


async def turn(pipeline: Pipeline, tenant: str, text: str):
    rec = Recorder()
    state, started = await pipeline.start_session(tenant, SessionStart(channel="chat", customer_id="c-1"))
    await rec(started)
    await pipeline.handle(state, ChatMessage(text=text), rec)
    return rec


def test_the_tenants_file_is_validated_with_the_tenant_and_key_named(tmp_path, tenants_file):
    directory = TenantDirectory.load(tenants_file)
    assert directory.tenants == ["acme"] and directory.get("acme").retention_days == 3650
    assert directory.get("nobody") == directory.default and directory.default.retention_days == 2557
    bad = tmp_path / "bad.yaml"
    for body, message in [
        ("tenants:\n  acme:\n    modles: challenger\n", "tenant acme: modles"),
        ("tenants:\n  acme:\n    models: newest\n", "tenant acme: models"),
        ("tenants:\n  'a:b': {}\n", "invalid tenant id"),
        ("tenants:\n  acme:\n    escalation_rules: /nope.yaml\n", "not found"),
        ("tenants:\n  acme:\n    retention_days: 0\n", "retention_days"),
    ]:
        bad.write_text(body)
        with pytest.raises(ValueError, match=message):
            TenantDirectory.load(bad)
    with pytest.raises(FileNotFoundError, match="SWITCHBOARD_TENANTS_FILE"):
        TenantDirectory.load(tmp_path / "missing.yaml")


async def test_a_tenant_gets_its_own_rules_models_and_knowledge_base(pipeline):
    p = pipeline()
    refund = "I would like a refund for the duplicate payment on my bill"
    acme = await turn(p, "acme", refund)
    demo = await turn(p, "demo", refund)
    assert [e["rule"] for e in acme.of("escalation")] == ["refund_words"]
    assert acme.of("escalation")[0]["queue"] == "acme_desk"
    assert not [e for e in demo.of("escalation") if e.get("rule") == "refund_words"]
    assert acme.of("session.started")[0]["variant"] == "challenger"
    assert demo.of("session.started")[0]["variant"] == "champion"

    records = "I need my medical records sent to a new provider"
    acme = await turn(p, "acme", records)
    demo = await turn(p, "demo", records)
    acme_articles = [a["id"] for a in acme.of("assist.suggestion")[0]["articles"]]
    demo_articles = [a["id"] for a in demo.of("assist.suggestion")[0]["articles"]]
    assert acme_articles and all(a.startswith("kb-billing-") for a in acme_articles)
    assert any(not a.startswith("kb-billing-") for a in demo_articles)


async def test_cached_articles_are_never_another_tenants(pipeline, local_models):
    retriever = Failing(local_models.retriever)
    p = pipeline(retriever=retriever)
    await turn(p, "demo", "I need my medical records sent to a new provider")  # demo's cache fills
    retriever.error = ConnectionError("knowledge base down")
    demo = await turn(p, "demo", "I need my medical records sent to a new provider")
    assert demo.of("assist.suggestion")[0]["fallback"] == "cached_articles"
    acme = await turn(p, "acme", "I need my medical records sent to a new provider")
    assert not acme.of("assist.suggestion")  # nothing of its own cached: an error, not demo's articles
    assert [e["code"] for e in acme.of("error")] == ["stage_failed"]


def test_the_reply_cache_serves_a_reply_only_to_its_tenant():
    cache = ReplyCache(capacity=8, threshold=0.9)
    vector = np.ones(8, dtype=np.float32)
    cache.put(vector, CachedReply("Acme refunds within 5 days.", ("kb-billing-001",), "m@1", tenant="acme"))
    assert cache.get(vector, ["kb-billing-001"], "acme").text.startswith("Acme")
    assert cache.get(vector, ["kb-billing-001"], "demo") is None
