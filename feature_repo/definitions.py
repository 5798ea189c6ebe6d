"""Feast definitions for switchboard: the ``tenant`` and ``customer`` entities, the profile and the history.

Every feature view is keyed by the composite entity key (``tenant``, ``customer_id``): every parquet row carries
its tenant and every online-store key holds it, so two tenants with the same customer id never share features,
and a read has to name the tenant (``pipelines.features.FeatureClient`` takes it on every call).

* ``customer_profile`` (batch, from ``customer_profile.parquet``): ``customer_lifetime_value`` (float, currency
  units) and ``product_usage_metrics`` (float in [0, 1]: the share of the product surface the customer actively
  used over the last 30 days — one "usage score" so that rules can compare it to a threshold).
* ``customer_history`` (push source ``customer_history_push`` over ``customer_history.parquet``):
  ``avg_session_duration`` (s), ``historical_sentiment_avg`` ([-1, 1], over the sessions that had a sentiment),
  ``escalation_history_count``, ``session_count`` and ``sentiment_session_count`` (the weight of the sentiment
  average). Post-call analytics pushes a new row at every session end; the daily job
  (``python -m pipelines.features daily-job``) recomputes the rows from the session store and materializes them.
* ``escalation_features``: the feature service the escalation stage reads.

The parquet files live in ``<data_dir>/feast``. Python code builds these objects for the configured data dir
with :func:`build`; the module-level objects below are for the ``feast`` CLI and use ``$SWITCHBOARD_DATA_DIR``
(default: ``.switchboard`` next to this folder, the same place ``feature_store.yaml`` points to).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, Int64

TTL = timedelta(days=365)
PROFILE_FILE = "customer_profile.parquet"
HISTORY_FILE = "customer_history.parquet"
PUSH_SOURCE = "customer_history_push"
FEATURE_SERVICE = "escalation_features"
#: The join keys of every feature view, i.e. the columns that identify a row (sources, pushes, online reads).
ENTITY_KEYS = ("tenant", "customer_id")

PROFILE_FEATURES = ("customer_lifetime_value", "product_usage_metrics")
HISTORY_FEATURES = (
    "avg_session_duration",
    "historical_sentiment_avg",
    "escalation_history_count",
    "session_count",
    "sentiment_session_count",
)


def build(feast_data_dir: Path) -> dict[str, Any]:
    """Every Feast object of the repository, with the parquet sources under ``feast_data_dir`` (absolute)."""
    feast_data_dir = Path(feast_data_dir).resolve()
    tenant = Entity(
        name="tenant",
        join_keys=["tenant"],
        value_type=ValueType.STRING,
        description="The tenant that owns the customer (from the session's token); part of every entity key.",
    )
    customer = Entity(
        name="customer",
        join_keys=["customer_id"],
        value_type=ValueType.STRING,
        description="A contact-center customer (the `customer_id` of `session.start`), unique within its tenant.",
    )

    def parquet_source(name: str, file: str) -> FileSource:
        return FileSource(
            name=name,
            path=str(feast_data_dir / file),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        )

    profile_source = parquet_source("customer_profile_source", PROFILE_FILE)
    history_source = parquet_source("customer_history_source", HISTORY_FILE)
    history_push = PushSource(name=PUSH_SOURCE, batch_source=history_source)
    customer_profile = FeatureView(
        name="customer_profile",
        entities=[tenant, customer],
        ttl=TTL,
        schema=[
            Field(
                name="customer_lifetime_value", dtype=Float64, description="Revenue to date (currency units)."
            ),
            Field(
                name="product_usage_metrics",
                dtype=Float64,
                description="Usage score in [0, 1]: share of the product surface used in the last 30 days.",
            ),
        ],
        source=profile_source,
        online=True,
        tags={"owner": "switchboard", "refresh": "batch"},
    )
    customer_history = FeatureView(
        name="customer_history",
        entities=[tenant, customer],
        ttl=TTL,
        schema=[
            Field(name="avg_session_duration", dtype=Float64, description="Mean session length (s)."),
            Field(
                name="historical_sentiment_avg", dtype=Float64, description="Mean session sentiment [-1, 1]."
            ),
            Field(name="escalation_history_count", dtype=Int64, description="Escalations over all sessions."),
            Field(name="session_count", dtype=Int64, description="Sessions seen."),
            Field(
                name="sentiment_session_count",
                dtype=Int64,
                description="Sessions that had a sentiment (the weight of historical_sentiment_avg).",
            ),
        ],
        source=history_push,
        online=True,
        tags={"owner": "switchboard", "refresh": "push + daily job"},
    )
    escalation_features = FeatureService(
        name=FEATURE_SERVICE,
        features=[customer_profile, customer_history],
        description="What the escalation stage reads at session start.",
    )
    return {
        "tenant": tenant,
        "customer": customer,
        "customer_profile_source": profile_source,
        "customer_history_source": history_source,
        "customer_history_push": history_push,
        "customer_profile": customer_profile,
        "customer_history": customer_history,
        "escalation_features": escalation_features,
    }


def default_feast_data_dir() -> Path:
    """``$SWITCHBOARD_DATA_DIR/feast``; unset: ``.switchboard/feast`` in the project root (the CLI default)."""
    data_dir = Path(
        os.environ.get("SWITCHBOARD_DATA_DIR", Path(__file__).resolve().parent.parent / ".switchboard")
    )
    return data_dir.resolve() / "feast"


# Module-level objects: what `feast apply` (the CLI) registers.
_objects = build(default_feast_data_dir())
tenant = _objects["tenant"]
customer = _objects["customer"]
customer_profile_source = _objects["customer_profile_source"]
customer_history_source = _objects["customer_history_source"]
customer_history_push = _objects["customer_history_push"]
customer_profile = _objects["customer_profile"]
customer_history = _objects["customer_history"]
escalation_features = _objects["escalation_features"]
