"""Per-tenant configuration: what differs between the organisations one deployment serves.

``tenants.yaml`` (``SWITCHBOARD_TENANTS_FILE``)::

    tenants:
      acme:
        escalation_rules: /etc/switchboard/acme-escalation.yaml   # their own rules (else the deployment's)
        models: challenger        # which registered version their sessions use: champion | challenger
        provider: Acme Health     # the organisation's name in generated replies
        retention_days: 3650      # how long their sessions are kept (pipelines.retention; default 7 years)
        kb_articles: [kb-billing-*, kb-records-*]   # the knowledge-base articles they may be shown (globs)

A tenant not listed gets the deployment's settings. The file is validated at start (unknown keys, bad
values and missing rule files are errors that name the tenant and the key).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["TenantConfig", "TenantDirectory", "DEFAULT_RETENTION_DAYS", "TENANT_PATTERN"]

DEFAULT_RETENTION_DAYS = 2557  # 7 years
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    escalation_rules: Path | None = None
    models: Literal["champion", "challenger"] | None = None
    provider: str | None = Field(default=None, max_length=120)
    retention_days: int = Field(default=DEFAULT_RETENTION_DAYS, ge=1, le=36500)
    kb_articles: tuple[str, ...] | None = None

    @field_validator("escalation_rules")
    @classmethod
    def _rules_exist(cls, path: Path | None) -> Path | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"escalation rules file {path} not found")
        return path

    def allows_article(self, article_id: str) -> bool:
        return self.kb_articles is None or any(fnmatch.fnmatchcase(article_id, g) for g in self.kb_articles)


class TenantDirectory:
    """Every tenant's configuration; ``get`` never fails (unlisted tenants get the defaults)."""

    def __init__(self, tenants: dict[str, TenantConfig] | None = None) -> None:
        self._tenants = dict(tenants or {})
        self.default = TenantConfig()

    @classmethod
    def load(cls, path: Path | str | None) -> TenantDirectory:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"tenants file {path} not found (SWITCHBOARD_TENANTS_FILE)") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("tenants", {}), dict):
            raise ValueError(f"{path}: expected `tenants:` mapping tenant ids to their settings")
        tenants = {}
        for tenant, body in (raw.get("tenants") or {}).items():
            if not TENANT_PATTERN.match(str(tenant)):
                raise ValueError(f"{path}: invalid tenant id {tenant!r} (letters, digits, '_', '.', '-')")
            try:
                tenants[str(tenant)] = TenantConfig.model_validate(body or {})
            except ValidationError as exc:
                where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"{path}: tenant {tenant}: {where}") from None
        return cls(tenants)

    def get(self, tenant: str) -> TenantConfig:
        return self._tenants.get(tenant, self.default)

    def __contains__(self, tenant: str) -> bool:
        return tenant in self._tenants

    @property
    def tenants(self) -> list[str]:
        return sorted(self._tenants)
