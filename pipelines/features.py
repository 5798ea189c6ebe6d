"""Customer features from Feast: online reads with a timeout and a default, the session push, setup and the
daily job. The only module that imports Feast (lazily: importing this module costs nothing).

* :class:`FeatureClient` ``.online(tenant, customer_id)`` never raises for the store: on a timeout, an error or an
  unknown customer it returns :data:`DEFAULT_FEATURES` with ``source`` saying why. ``.push_session(tenant,
  customer_id, ...)`` folds one ended session into the customer's history (running averages weighted by the
  session counts) through the push source.
* :func:`setup` = sample data (if missing) + ``feast apply`` + materialization; quick when already done.
* :func:`recompute_history` is the daily batch job: history features recomputed from the session store.

Tenant isolation lives here, in the data layer: every feature view is keyed by (``tenant``, ``customer_id``) (two
Feast entities, one composite entity key), so every parquet row and every online-store key carries its tenant.
Every read and push takes the tenant as a required argument and refuses a malformed one (``ValueError``); the
same customer id under two tenants is two customers. The sample customers belong to tenant ``demo``.

The online store is SQLite (``<data_dir>/feast/online.db``) unless ``feast_online_store`` is a Redis URL.
The registry (a file) and the parquet sources live in ``<data_dir>/feast``.

CLI: ``python -m pipelines.features {setup,sample-data,apply,materialize,daily-job,get TENANT ID}
[--online-store URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib.util
import json
import logging
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from .config import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore, RepoConfig

__all__ = [
    "CustomerFeatures",
    "DEFAULT_FEATURES",
    "FeatureClient",
    "FeatureStoreUnavailable",
    "SAMPLE_TENANT",
    "apply",
    "generate_sample_data",
    "materialize",
    "setup",
    "recompute_history",
    "main",
]

log = logging.getLogger("switchboard.features")

#: The tenant the sample customers (and the demo customers) belong to: the tenant of the demo token.
SAMPLE_TENANT = "demo"
#: Demo customers (serve/demo.py, tenant ``demo``) get hand-picked values so that the feature rules visibly fire.
DEMO_CUSTOMERS: dict[str, dict[str, float]] = {
    "demo-customer-17": dict(
        customer_lifetime_value=14250.0,
        product_usage_metrics=0.82,
        avg_session_duration=420.0,
        historical_sentiment_avg=-0.35,
        escalation_history_count=4,
        session_count=11,
    ),
    "demo-caller-9": dict(
        customer_lifetime_value=6400.0,
        product_usage_metrics=0.41,
        avg_session_duration=510.0,
        historical_sentiment_avg=-0.1,
        escalation_history_count=1,
        session_count=5,
    ),
}
BASELINE_FILE = "customer_history_baseline.parquet"
_WARN_EVERY_S = 60.0


_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the rule of serve.auth (fullmatch: no trailing newline)


def _check_tenant(tenant: str) -> str:
    """The tenant, or ValueError: a tenant is required on every read and push (it is half the entity key)."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant) or not tenant.strip("."):
        raise ValueError(f"invalid tenant {tenant!r}: letters, digits, '_', '.', '-' only")
    return tenant


def _entity_row(tenant: str, customer_id: str) -> dict[str, str]:
    """The entity key of one tenant's customer (the join keys of every feature view), validated."""
    if not isinstance(customer_id, str) or not customer_id:
        raise ValueError(f"invalid customer id {customer_id!r}: a non-empty string")
    return {"tenant": _check_tenant(tenant), "customer_id": customer_id}


class FeatureStoreUnavailable(RuntimeError):
    """The feature store could not be read or written (push, setup, daily job). Retryable."""

    retryable = True


Source = Literal["online", "default", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class CustomerFeatures:
    """One customer's features. ``source``: ``online`` (read from the store), ``default`` (unknown customer),
    ``timeout`` (the read missed ``feature_timeout_s``) or ``error`` (the store failed); the last three carry
    the defaults, which say nothing (rules that need features do not apply)."""

    customer_lifetime_value: float = 0.0
    avg_session_duration: float = 0.0
    historical_sentiment_avg: float = 0.0
    escalation_history_count: int = 0
    product_usage_metrics: float = 0.0
    session_count: int = 0
    sentiment_session_count: int = 0
    source: Source = "default"


DEFAULT_FEATURES = CustomerFeatures()

#: feature name -> its type (float or int), from the defaults of CustomerFeatures
_FEATURE_TYPES = {
    f.name: type(getattr(DEFAULT_FEATURES, f.name)) for f in fields(CustomerFeatures) if f.name != "source"
}


# ---------------------------------------------------------------- repository and config


def _definitions(settings: Settings) -> ModuleType:
    """``feature_repo/definitions.py`` (not a package: loaded from ``settings.feast_repo_path``)."""
    path = Path(settings.feast_repo_path) / "definitions.py"
    name = f"_switchboard_feature_repo_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise FileNotFoundError(f"no Feast definitions at {path}; check SWITCHBOARD_FEAST_REPO_PATH")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def redis_connection_string(url: str) -> str:
    """``redis://[:password@]host:port/db`` → Feast's ``host:port,db=N[,password=...][,ssl=true]`` (with short
    socket timeouts so that a Redis that is down fails a read instead of hanging a thread)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"feast_online_store must be a redis:// URL, got {url!r}")
    db = (parsed.path or "/0").strip("/") or "0"
    parts = [f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}", f"db={int(db)}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.username and parsed.username != "default":
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    parts += ["socket_connect_timeout=2", "socket_timeout=2"]
    return ",".join(parts)


def online_store_label(settings: Settings) -> str:
    url = settings.feast_online_store
    if not url:
        return f"sqlite {settings.feast_data_dir / 'online.db'}"
    parsed = urlparse(url)
    return f"redis {parsed.hostname}:{parsed.port or 6379}/{(parsed.path or '/0').strip('/') or '0'}"


def repo_config(settings: Settings) -> RepoConfig:
    """The RepoConfig of ``feature_repo/feature_store.yaml``, with paths under ``settings.feast_data_dir``
    (absolute, whatever the cwd) and the configured online store."""
    from feast import RepoConfig

    data = settings.feast_data_dir
    online: dict[str, Any]
    if settings.feast_online_store:
        online = {"type": "redis", "connection_string": redis_connection_string(settings.feast_online_store)}
    else:
        online = {"type": "sqlite", "path": str(data / "online.db")}
    return RepoConfig(
        project="switchboard",
        provider="local",
        registry={"registry_type": "file", "path": str(data / "registry.db"), "cache_ttl_seconds": 60},
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=Path(settings.feast_repo_path).resolve(),
    )


def _store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    settings.feast_data_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))


def _fail_fast_redis(store: FeatureStore) -> None:
    """redis-py 7 retries a failed command 3 times with backoff (~7 s when Redis is down), which would hold a
    read thread long after its budget: one immediate retry instead (it still covers a dropped idle connection).
    Reaches into Feast's provider, which has no public hook for the client's retry policy."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        online: Any = store._get_provider().online_store
        online._get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 1))
    except Exception as exc:  # a Feast upgrade moved it: keep Feast's default policy
        log.warning("could not shorten the Redis retry policy (%s); reads may block longer", exc)


def _utc(ts: datetime | None) -> datetime:
    if ts is None:
        return datetime.now(UTC)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _feature_refs(settings: Settings) -> list[str]:
    d = _definitions(settings)
    return [f"customer_profile:{f}" for f in d.PROFILE_FEATURES] + [
        f"customer_history:{f}" for f in d.HISTORY_FEATURES
    ]


# ---------------------------------------------------------------- the online client


class FeatureClient:
    """Reads and pushes one deployment's customer features, always for one tenant's customer: every call takes
    the tenant first and refuses a malformed one. Thread-safe; Feast is loaded on first use.

    Reads run on a small dedicated thread pool, so reads stuck on a slow store never starve the event
    loop's default executor; a read that misses the budget is abandoned (its thread finishes on its own).
    """

    def __init__(self, settings: Settings, *, max_workers: int = 4) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="switchboard-features")
        self._store_lock = threading.Lock()
        self._store: FeatureStore | None = None
        self._refs: list[str] | None = None
        self._push_locks: dict[tuple[str, str], threading.Lock] = {}
        self._push_locks_guard = threading.Lock()
        self._last_warning: dict[str, float] = {}

    # ---------------------------------------------------------------- plumbing

    def _build(self) -> FeatureStore:
        store = _store(self.settings)
        self._refs = _feature_refs(self.settings)
        if self.settings.feast_online_store:
            _fail_fast_redis(store)
        # load the registry and the online store connection now, not on the first read
        store.get_online_features(features=self._refs, entity_rows=[_entity_row("__warmup__", "__warmup__")])
        return store

    def store(self) -> FeatureStore:
        """The FeatureStore, built on first use by the calling thread (never queued behind reads on the pool,
        which could deadlock it); a failed build is retried by the next call."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._build()
                store = self._store
        return store

    async def warmup(self) -> None:
        """Build the store and load the registry ahead of the first read (optional; reads do it lazily)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self.store)

    def status(self) -> str:
        """``ready`` once the store is loaded, else ``unavailable`` (reads then return defaults)."""
        return "ready" if self._store is not None else "unavailable"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _warn(self, reason: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last_warning.get(reason)
        if last is None or now - last >= _WARN_EVERY_S:
            self._last_warning[reason] = now
            log.warning(message + " (logged at most once a minute)", *args)

    def _read_raw(self, tenant: str, customer_id: str) -> dict[str, Any]:
        row = _entity_row(tenant, customer_id)
        store = self.store()
        assert self._refs is not None
        response = store.get_online_features(features=self._refs, entity_rows=[row])
        return {k: v[0] for k, v in response.to_dict(include_event_timestamps=True).items()}

    @staticmethod
    def _parse(raw: dict[str, Any]) -> CustomerFeatures:
        values = {name: cast(raw[name]) for name, cast in _FEATURE_TYPES.items() if raw.get(name) is not None}
        if not values:
            return DEFAULT_FEATURES
        return replace(DEFAULT_FEATURES, **values, source="online")

    def read(self, tenant: str, customer_id: str) -> CustomerFeatures:
        """Blocking read of one tenant's customer with no timeout; raises on store errors and on a malformed
        tenant (``online`` is the hot-path API)."""
        return self._parse(self._read_raw(tenant, customer_id))

    # ---------------------------------------------------------------- hot path

    async def online(self, tenant: str, customer_id: str) -> CustomerFeatures:
        """The features of ``tenant``'s customer within ``feature_timeout_s``. Never raises for the store (a
        timeout or an error gives the defaults); a malformed tenant or customer id is the caller's bug and
        raises ``ValueError`` before any read."""
        _entity_row(tenant, customer_id)
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._pool, self.read, tenant, customer_id)
            return await asyncio.wait_for(fut, self.settings.feature_timeout_s)
        except TimeoutError:
            self._warn(
                "timeout",
                "feature read for a customer missed its %.0f ms budget; using defaults",
                self.settings.feature_timeout_s * 1000,
            )
            return replace(DEFAULT_FEATURES, source="timeout")
        except Exception as exc:  # the store is optional on the hot path: defaults, and say why
            self._warn("error", "feature read failed (%s: %s); using defaults", type(exc).__name__, exc)
            return replace(DEFAULT_FEATURES, source="error")

    # ---------------------------------------------------------------- session push

    def _lock_for(self, tenant: str, customer_id: str) -> threading.Lock:
        with self._push_locks_guard:
            return self._push_locks.setdefault((tenant, customer_id), threading.Lock())

    def push_session(
        self,
        tenant: str,
        customer_id: str,
        *,
        duration_s: float,
        sentiment_avg: float | None,
        escalated: bool | int,
        ended_at: datetime | None = None,
    ) -> CustomerFeatures:
        """Fold one ended session into the history of ``tenant``'s customer and push it to the online store
        (the row carries the tenant: another tenant's customer with the same id is never touched).

        ``escalated``: escalations in the session (``True`` counts one). ``sentiment_avg`` None (no customer
        turn) leaves the sentiment average and its weight unchanged. Read-modify-write is serialized per
        customer within this process; concurrent pushes for one customer from two processes can lose one
        update until the daily job recomputes it. Raises :class:`FeatureStoreUnavailable`, and ``ValueError``
        for a malformed tenant or customer id.
        """
        import pandas as pd
        from feast.data_source import PushMode

        key = _entity_row(tenant, customer_id)
        with self._lock_for(tenant, customer_id):
            try:
                raw = self._read_raw(tenant, customer_id)
                current = self._parse(raw)
            except Exception as exc:
                raise FeatureStoreUnavailable(f"cannot read the history of a customer: {exc}") from exc
            n = current.session_count
            ns = current.sentiment_session_count
            avg_duration = (current.avg_session_duration * n + float(duration_s)) / (n + 1)
            sentiment = current.historical_sentiment_avg
            if sentiment_avg is not None:
                sentiment = (sentiment * ns + float(sentiment_avg)) / (ns + 1)
                ns += 1
            updated = replace(
                current,
                avg_session_duration=avg_duration,
                historical_sentiment_avg=sentiment,
                escalation_history_count=current.escalation_history_count + int(escalated),
                session_count=n + 1,
                sentiment_session_count=ns,
                source="online",
            )
            ts = _utc(ended_at)
            if current.session_count and raw.get("session_count__ts"):
                # Redis keeps the newer row: never push behind the stored one (e.g. a late push after the job)
                ts = max(ts, datetime.fromtimestamp(int(raw["session_count__ts"]) + 1, UTC))
            d = _definitions(self.settings)
            row: dict[str, Any] = {**key, "event_timestamp": ts, "created": datetime.now(UTC)}
            row.update({c: getattr(updated, c) for c in d.HISTORY_FEATURES})
            try:
                # ONLINE only: the file offline store appends by rewriting the whole parquet file in place,
                # which is neither atomic nor safe with several writers; the session store stays the source
                # of truth and the daily job rewrites the offline history from it.
                self.store().push(d.PUSH_SOURCE, pd.DataFrame([row]), to=PushMode.ONLINE)
            except Exception as exc:
                raise FeatureStoreUnavailable(f"feature push failed: {exc}") from exc
            return updated

    async def push_session_async(self, tenant: str, customer_id: str, **kwargs: Any) -> CustomerFeatures:
        """:meth:`push_session` (same arguments) on the client's thread pool."""
        _entity_row(tenant, customer_id)  # refuse a malformed tenant here, not on a pool thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self.push_session, tenant, customer_id, **kwargs)
        )


# ---------------------------------------------------------------- offline: sample data, apply, materialize


def generate_sample_data(
    settings: Settings, customers: int = 200, seed: int = 0, *, tenant: str = SAMPLE_TENANT
) -> Path:
    """Write the profile and history parquet sources (seeded, realistic): ``cust-0001``… plus the demo
    customers, all of ``tenant`` (default ``demo``). The history is also kept as the baseline the daily job adds
    stored sessions to."""
    import numpy as np
    import pandas as pd

    _check_tenant(tenant)
    d = _definitions(settings)
    out = settings.feast_data_dir
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = [f"cust-{i:04d}" for i in range(1, customers + 1)]
    n = len(ids)
    ts = [now - timedelta(days=float(x)) for x in rng.uniform(1, 90, n)]
    sessions = rng.poisson(6, n) + 1
    profile = pd.DataFrame(
        {
            "tenant": tenant,
            "customer_id": ids,
            "event_timestamp": ts,
            "created": ts,
            "customer_lifetime_value": np.round(rng.lognormal(7.6, 1.0, n), 2),
            "product_usage_metrics": np.round(rng.beta(2.0, 3.0, n), 3),
        }
    )
    history = pd.DataFrame(
        {
            "tenant": tenant,
            "customer_id": ids,
            "event_timestamp": ts,
            "created": ts,
            "avg_session_duration": np.round(rng.lognormal(np.log(300), 0.5, n), 1),
            "historical_sentiment_avg": np.round(np.clip(rng.normal(0.05, 0.3, n), -1, 1), 3),
            "escalation_history_count": rng.binomial(sessions, rng.beta(1.5, 8.0, n)).astype("int64"),
            "session_count": sessions.astype("int64"),
            "sentiment_session_count": sessions.astype("int64"),
        }
    )
    demo = pd.DataFrame(
        [
            {"tenant": tenant, "customer_id": cid, "event_timestamp": now, "created": now, **vals}
            for cid, vals in DEMO_CUSTOMERS.items()
        ]
    )
    demo["sentiment_session_count"] = demo["session_count"]
    profile = pd.concat([profile, demo[list(profile.columns)]], ignore_index=True)
    history = pd.concat([history, demo[list(history.columns)]], ignore_index=True)
    for col in ("escalation_history_count", "session_count", "sentiment_session_count"):
        history[col] = history[col].astype("int64")
    _write_parquet(profile, out / d.PROFILE_FILE)
    _write_parquet(history, out / d.HISTORY_FILE)
    _write_parquet(history, out / BASELINE_FILE)
    print(f"sample data: {len(profile)} customers of tenant {tenant} → {out}", flush=True)
    return out


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Atomic replace, so a concurrent materialization never reads a half-written file."""
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def _require_tenant_column(path: Path) -> None:
    """ValueError when a parquet source predates tenant scoping (no ``tenant`` column): Feast would fail on it,
    and no one can tell which tenant its rows belong to."""
    import pyarrow.parquet as pq

    if path.exists() and "tenant" not in pq.read_schema(path).names:
        raise ValueError(
            f"{path} has no `tenant` column: it was written before features were scoped by tenant. Add the "
            "tenant of every row (a `tenant` column), or regenerate the sample data with "
            "`python -m pipelines.features setup --force`"
        )


def apply(settings: Settings) -> None:
    """``feast apply``: register the entity, sources, feature views and the feature service."""
    objects = list(_definitions(settings).build(settings.feast_data_dir).values())
    store = _store(settings)
    store.apply(objects)
    print(
        f"feast apply: {len(objects)} objects registered in {settings.feast_data_dir / 'registry.db'}",
        flush=True,
    )


def materialize(settings: Settings, end: datetime | None = None) -> float:
    """Load the batch sources into the online store (incremental: from the last run, or the TTL window on the
    first). Returns the seconds it took."""
    end = _utc(end)
    d = _definitions(settings)
    for name in (d.PROFILE_FILE, d.HISTORY_FILE):
        _require_tenant_column(settings.feast_data_dir / name)
    store = _store(settings)
    print(
        f"materializing up to {end:%Y-%m-%d %H:%M:%S} UTC into {online_store_label(settings)} …", flush=True
    )
    t0 = time.perf_counter()
    store.materialize_incremental(end_date=end)
    took = time.perf_counter() - t0
    print(f"materialized in {took:.2f} s", flush=True)
    return took


def _fingerprint(settings: Settings) -> str:
    d = _definitions(settings)
    h = hashlib.sha256((Path(settings.feast_repo_path) / "definitions.py").read_bytes())
    h.update(online_store_label(settings).encode())
    for name in (d.PROFILE_FILE, d.HISTORY_FILE):
        path = settings.feast_data_dir / name
        h.update(f"{name}:{path.stat().st_mtime_ns if path.exists() else 0}".encode())
    return h.hexdigest()


def _marker(settings: Settings) -> Path:
    key = hashlib.sha1(online_store_label(settings).encode()).hexdigest()[:10]
    return settings.feast_data_dir / f".setup-{key}.json"


def setup(settings: Settings, *, force: bool = False) -> bool:
    """Sample data (if missing) + apply + materialize. Idempotent: when the definitions, the sources and the
    online store are unchanged since the last setup (and a sample customer reads back), it does nothing.
    Returns True when work was done."""
    d = _definitions(settings)
    data = settings.feast_data_dir
    if not force and _marker(settings).exists():
        saved = json.loads(_marker(settings).read_text())
        if saved.get("fingerprint") == _fingerprint(settings) and _probe(settings):
            print(f"feature store ready ({online_store_label(settings)}); nothing to do", flush=True)
            return False
    if force or not (data / d.PROFILE_FILE).exists() or not (data / d.HISTORY_FILE).exists():
        generate_sample_data(settings)
    for name in (d.PROFILE_FILE, d.HISTORY_FILE):
        _require_tenant_column(data / name)  # before apply: a refused setup changes nothing
    apply(settings)
    materialize(settings)
    _marker(settings).write_text(
        json.dumps({"fingerprint": _fingerprint(settings), "at": datetime.now(UTC).isoformat()})
    )
    return True


def _probe(settings: Settings) -> bool:
    """True when some customer of the profile source reads back from the online store (under its tenant)."""
    import pandas as pd

    d = _definitions(settings)
    try:
        first = pd.read_parquet(settings.feast_data_dir / d.PROFILE_FILE, columns=list(d.ENTITY_KEYS)).iloc[0]
        client = FeatureClient(settings, max_workers=1)
        try:
            return client.read(str(first["tenant"]), str(first["customer_id"])).source == "online"
        finally:
            client.close()
    except Exception:
        return False


# ---------------------------------------------------------------- the daily job


def _stored_sessions(settings: Settings, now: datetime) -> pd.DataFrame:
    """One row per ended session in the session store: tenant, customer_id, duration_s, sentiment_avg,
    escalations (sessions whose tenant is not a valid tenant are skipped, with a warning).

    The ``session.ended`` summary is used when present; otherwise the duration comes from the timestamps, the
    sentiment from the ``sentiment`` events and the escalations from the escalations table."""
    import pandas as pd
    from sqlalchemy import func, inspect, select

    from .keys import encrypted_store
    from .storage import escalations, events, sessions

    store = encrypted_store(settings)  # event payloads are sealed with tenant data keys at rest
    engine = store.engine
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(sessions.name):
                log.warning(
                    "no sessions table at %s yet: nothing to recompute", engine.url.render_as_string()
                )
                return pd.DataFrame(columns=_STORED_COLUMNS)
            rows = conn.execute(
                select(
                    sessions.c.id,
                    sessions.c.tenant,
                    sessions.c.customer_id,
                    sessions.c.started_at,
                    sessions.c.ended_at,
                ).where(sessions.c.ended_at.is_not(None), sessions.c.status != "active")
            ).all()
            rows = [r for r in rows if _utc(r.ended_at) <= now]
            invalid = [r for r in rows if not _valid_tenant(r.tenant)]
            if invalid:
                log.warning("daily job: %d sessions with an invalid tenant skipped", len(invalid))
                rows = [r for r in rows if _valid_tenant(r.tenant)]
            ids = [r.id for r in rows]
            summaries: dict[str, dict[str, Any]] = {}
            sentiments: dict[str, list[float]] = {}
            esc_counts: dict[str, int] = {}
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                for sid, tenant, seq, etype, payload in conn.execute(
                    select(
                        events.c.session_id, events.c.tenant, events.c.seq, events.c.type, events.c.payload
                    ).where(events.c.session_id.in_(chunk), events.c.type.in_(("session.ended", "sentiment")))
                ):
                    p = store._opened_payload(tenant, sid, seq, payload)
                    if etype == "session.ended" and isinstance(p.get("summary"), dict):
                        summaries[sid] = p["summary"]
                    elif etype == "sentiment" and p.get("score") is not None:
                        sentiments.setdefault(sid, []).append(float(p["score"]))
                for sid, count in conn.execute(
                    select(escalations.c.session_id, func.count())
                    .where(escalations.c.session_id.in_(chunk))
                    .group_by(escalations.c.session_id)
                ):
                    esc_counts[sid] = int(count)
    finally:
        engine.dispose()
    out = []
    for r in rows:
        s = summaries.get(r.id, {})
        duration = s.get("duration_s")
        if duration is None:
            duration = (_utc(r.ended_at) - _utc(r.started_at)).total_seconds()
        sentiment = s.get("sentiment_avg")
        if sentiment is None and sentiments.get(r.id):
            sentiment = sum(sentiments[r.id]) / len(sentiments[r.id])
        escalated = s.get("escalations")
        if escalated is None:
            escalated = esc_counts.get(r.id, 0)
        out.append(
            {
                "tenant": r.tenant,
                "customer_id": r.customer_id,
                "duration_s": float(duration),
                "sentiment_avg": None if sentiment is None else float(sentiment),
                "escalations": int(escalated),
            }
        )
    return pd.DataFrame(out, columns=_STORED_COLUMNS)


_STORED_COLUMNS = ["tenant", "customer_id", "duration_s", "sentiment_avg", "escalations"]


def _valid_tenant(tenant: Any) -> bool:
    try:
        _check_tenant(tenant)
    except ValueError:
        return False
    return True


def recompute_history(settings: Settings, *, now: datetime | None = None) -> int:
    """The daily batch job: recompute ``customer_history`` for every (tenant, customer) with ended sessions in
    the session store (that tenant's baseline history + that tenant's stored sessions), append the rows to the
    history source and materialize them. Returns the number of customers updated."""
    import pandas as pd

    d = _definitions(settings)
    now = _utc(now)
    t0 = time.perf_counter()
    stored = _stored_sessions(settings, now)
    print(f"daily job: {len(stored)} ended sessions in the session store", flush=True)
    if stored.empty:
        return 0
    stored["has_sentiment"] = stored["sentiment_avg"].notna()
    stored["sentiment_sum"] = stored["sentiment_avg"].fillna(0.0)
    keys = list(d.ENTITY_KEYS)
    agg = stored.groupby(keys).agg(
        n=("duration_s", "size"),
        duration_sum=("duration_s", "sum"),
        ns=("has_sentiment", "sum"),
        sentiment_sum=("sentiment_sum", "sum"),
        escalations=("escalations", "sum"),
    )
    baseline_path = settings.feast_data_dir / BASELINE_FILE
    history_path = settings.feast_data_dir / d.HISTORY_FILE
    for path in (baseline_path, history_path):
        _require_tenant_column(path)
    if baseline_path.exists():
        base = pd.read_parquet(baseline_path)
        base = base.sort_values("event_timestamp").drop_duplicates(keys, keep="last")
        base = base.set_index(keys).reindex(agg.index)
    else:
        base = pd.DataFrame(index=agg.index, columns=list(d.HISTORY_FEATURES))
    base = base.fillna(0)
    n_b, ns_b = base["session_count"].astype("int64"), base["sentiment_session_count"].astype("int64")
    n = n_b + agg["n"]
    ns = ns_b + agg["ns"].astype("int64")
    rows = pd.DataFrame(
        {
            "tenant": agg.index.get_level_values("tenant"),
            "customer_id": agg.index.get_level_values("customer_id"),
            "event_timestamp": now,
            "created": datetime.now(UTC),
            "avg_session_duration": (
                (base["avg_session_duration"] * n_b + agg["duration_sum"]) / n
            ).to_numpy(),
            "historical_sentiment_avg": (
                (
                    (base["historical_sentiment_avg"] * ns_b + agg["sentiment_sum"]) / ns.where(ns > 0, 1)
                ).to_numpy()
            ),
            "escalation_history_count": (
                base["escalation_history_count"].astype("int64") + agg["escalations"]
            )
            .astype("int64")
            .to_numpy(),
            "session_count": n.astype("int64").to_numpy(),
            "sentiment_session_count": ns.astype("int64").to_numpy(),
        }
    )
    if history_path.exists():
        previous = pd.read_parquet(history_path)
        rows = pd.concat([previous, rows[list(previous.columns)]], ignore_index=True)
        rows = rows.drop_duplicates([*keys, "event_timestamp"], keep="last")
    _write_parquet(rows, history_path)
    store = _store(settings)
    # only the rows written now (a wider window would replay older rows over newer pushes on SQLite)
    store.materialize(
        start_date=now - timedelta(seconds=1),
        end_date=now + timedelta(seconds=1),
        feature_views=["customer_history"],
    )
    print(f"daily job: {len(agg)} customers updated in {time.perf_counter() - t0:.2f} s", flush=True)
    return len(agg)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.features",
        description="The Feast feature store of switchboard: setup, sample data, apply, materialize, the daily "
        "history job and online reads. Settings come from SWITCHBOARD_* variables (data dir, online store).",
        epilog="Run `setup` once (it is quick when already done), then `daily-job` every day, e.g. from cron: "
        "`0 3 * * * cd /srv/switchboard && .venv/bin/python -m pipelines.features daily-job`.",
    )
    parser.add_argument(
        "--online-store",
        metavar="URL",
        help="Online store override: redis://host:port/db (default: SWITCHBOARD_FEAST_ONLINE_STORE or SQLite)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="sample data (if missing) + apply + materialize; quick when done")
    p_setup.add_argument("--force", action="store_true", help="regenerate sample data and redo everything")
    p_sample = sub.add_parser("sample-data", help="(re)write the seeded sample parquet sources")
    p_sample.add_argument("--customers", type=int, default=200)
    p_sample.add_argument("--seed", type=int, default=0)
    p_sample.add_argument(
        "--tenant", default=SAMPLE_TENANT, help=f"tenant of the sample customers (default: {SAMPLE_TENANT})"
    )
    sub.add_parser("apply", help="register the definitions of feature_repo/ (feast apply)")
    sub.add_parser("materialize", help="load new batch rows into the online store (incremental)")
    sub.add_parser("daily-job", help="recompute history features from the session store and materialize")
    p_get = sub.add_parser(
        "get", help="read one tenant's customer's online features (with the configured timeout)"
    )
    p_get.add_argument("tenant", help=f"the tenant the customer belongs to (sample data: {SAMPLE_TENANT})")
    p_get.add_argument("customer_id")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.online_store:
        settings = settings.model_copy(update={"feast_online_store": args.online_store})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "setup":
            setup(settings, force=args.force)
        elif args.command == "sample-data":
            generate_sample_data(settings, customers=args.customers, seed=args.seed, tenant=args.tenant)
        elif args.command == "apply":
            apply(settings)
        elif args.command == "materialize":
            materialize(settings)
        elif args.command == "daily-job":
            recompute_history(settings)
        elif args.command == "get":
            client = FeatureClient(settings)
            try:
                features = asyncio.run(_get(client, args.tenant, args.customer_id))
            finally:
                client.close()
            print(json.dumps(asdict(features), indent=2))
            if features.source in ("error", "timeout"):
                print(
                    f"(read {features.source}: is the online store up and set up? "
                    "run `python -m pipelines.features setup`)",
                    file=sys.stderr,
                )
                return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(
            f"error: {type(exc).__name__}: {exc}\nis the online store ({online_store_label(settings)}) reachable, and "
            "is the repository set up? `python -m pipelines.features setup` (re)builds it",
            file=sys.stderr,
        )
        return 1
    return 0


async def _get(client: FeatureClient, tenant: str, customer_id: str) -> CustomerFeatures:
    _entity_row(tenant, customer_id)  # a malformed tenant is refused before Feast loads
    await client.warmup()
    return await client.online(tenant, customer_id)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
