"""Per-tenant rate limits: a token bucket per tenant and process. A message over the limit is refused with
``rate_limited`` (retryable) before anything accepts it, so nothing is half-processed or lost."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ProtocolError

__all__ = ["TenantLimiter"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TenantLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, clock=time.monotonic, max_tenants: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_tenants = max_tenants
        self._buckets: dict[str, _Bucket] = {}
        self.refused = 0

    def allow(self, tenant: str, cost: float = 1.0) -> bool:
        now = self.clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= self.max_tenants:  # bounded memory: forget full (idle) buckets
                self._buckets = {t: b for t, b in self._buckets.items() if b.tokens < self.burst}
            bucket = self._buckets[tenant] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < cost:
            self.refused += 1
            return False
        bucket.tokens -= cost
        return True

    def check(self, tenant: str, what: str = "message") -> None:
        """Raise ``rate_limited`` when the tenant is over its rate."""
        if not self.allow(tenant):
            raise ProtocolError(
                f"too many {what}s for this tenant right now (limit {self.rate:g}/s); nothing was accepted, "
                "send it again shortly",
                code="rate_limited",
            )
