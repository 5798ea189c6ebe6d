"""Models served from the MLflow registry: champion and challenger versions, A/B assignment, hot reload.

A ``ServedModel`` holds what one deployment replica serves for one model name:

- ``models:/NAME@champion`` resolves to a version, which is downloaded and loaded; with A/B or shadow mode on,
  ``models:/NAME@challenger`` is loaded as well;
- a background thread re-resolves the aliases every ``model_refresh_s``. A moved alias loads the new version
  next to the old one and swaps it in atomically: calls in flight finish on the old model, live sessions are
  never interrupted;
- a name with no registered version serves the rule-based model (labelled ``rules``); a version that fails to
  load keeps the previous one, or serves the rules labelled ``rules:fallback`` if there is none.

Every prediction says which model and variant produced it: ``label`` is ``name@version``, ``rules`` or
``rules:fallback``; ``variant`` is ``champion``, ``challenger`` or ``rules``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from models.registry import is_mlflow_uri, resolve_model_uri

from .config import Settings

__all__ = ["Loaded", "ServedModel", "assign_variant", "TEXT_MARKERS", "RULES", "RULES_FALLBACK"]

log = logging.getLogger("switchboard.models")

T = TypeVar("T")

TEXT_MARKERS = ("switchboard.json",)
RULES = "rules"
RULES_FALLBACK = "rules:fallback"


def assign_variant(session_id: str, settings: Settings) -> str:
    """``challenger`` for a stable ``ab_challenger_share`` of sessions in split mode, else ``champion``.

    The bucket is a hash of the session id, so a resumed session keeps its variant."""
    if settings.ab_mode != "split" or settings.ab_challenger_share <= 0.0:
        return "champion"
    bucket = int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:8], "big") / 2.0**64
    return "challenger" if bucket < settings.ab_challenger_share else "champion"


@dataclass(frozen=True)
class Loaded(Generic[T]):
    model: T | None  # None: nothing to run (e.g. no reranker)
    label: str  # name@version, "rules" or "rules:fallback"
    variant: str  # champion, challenger or rules
    source: str | None = None  # the resolved URI or folder it was loaded from

    @property
    def is_rules(self) -> bool:
        return self.variant == RULES


class ServedModel(Generic[T]):
    """``spec``: an MLflow URI, a model folder, ``rules`` or None (rules only).

    ``loader(folder, label)`` builds the runtime model; ``rules()`` the rule-based one (None when the
    capability has no rule-based version, e.g. the reranker: then nothing runs)."""

    def __init__(
        self,
        name: str,
        spec: str | None,
        *,
        loader: Callable[[Path, str], T],
        rules: Callable[[], T | None],
        settings: Settings,
        challenger: bool | None = None,
        refresh: bool = True,
    ) -> None:
        self.name = name
        self.spec = None if spec in (None, "", RULES, "none", "off") else spec
        self.settings = settings
        self._loader = loader
        self._rules_factory = rules
        self._rules: Loaded[T] | None = None
        self.challenger_enabled = (
            challenger
            if challenger is not None
            else settings.ab_challenger_share > 0.0 or settings.ab_mode == "shadow"
        )
        self._slots: dict[str, Loaded[T]] = {}
        self.last_error: str | None = None
        self.refresh()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh and self.spec is not None and is_mlflow_uri(self.spec) and "@" in self.spec:
            self._thread = threading.Thread(target=self._refresh_loop, name=f"refresh-{name}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ what to serve

    def get(self, variant: str = "champion") -> Loaded[T]:
        """The model for ``variant``; the champion when there is no challenger."""
        slots = self._slots
        return slots.get(variant) or slots.get("champion") or self._rules_slot(RULES)

    def get_rules(self) -> Loaded[T]:
        """The rule-based model (built on first use)."""
        return self._rules_slot(RULES)

    def has(self, variant: str) -> bool:
        return variant in self._slots

    def describe(self) -> dict[str, str]:
        return {variant: slot.label for variant, slot in self._slots.items()}

    # ------------------------------------------------------------ loading

    def _rules_slot(self, label: str) -> Loaded[T]:
        if self._rules is None:
            self._rules = Loaded(self._rules_factory(), RULES, RULES)
        return Loaded(self._rules.model, label, RULES)

    def _targets(self) -> dict[str, str | None]:
        """variant → the exact source to load (``models:/NAME/VERSION`` or a folder); None: not registered."""
        spec = self.spec
        if spec is None:
            return {"champion": None}
        if not is_mlflow_uri(spec):
            return {"champion": spec}
        targets = {"champion": resolve_model_uri(spec, tracking_uri=self._tracking_uri())}
        if self.challenger_enabled and spec.startswith("models:/") and spec.endswith("@champion"):
            challenger = spec[: -len("champion")] + "challenger"
            targets["challenger"] = resolve_model_uri(challenger, tracking_uri=self._tracking_uri())
        return targets

    def _tracking_uri(self) -> str | None:
        """None while there is no embedded store yet: nothing is registered (and nothing is created)."""
        return self.settings.resolved_mlflow_uri if self.settings.mlflow_store_exists else None

    def _load(self, variant: str, source: str) -> Loaded[T]:
        from models.registry import download_model_folder

        if is_mlflow_uri(source):
            folder = download_model_folder(
                source,
                tracking_uri=self.settings.resolved_mlflow_uri,
                cache_dir=self.settings.data_dir / "model-cache",
                markers=TEXT_MARKERS,
            )
            name, _, version = source[len("models:/") :].rpartition("/")
            label = f"{name}@{version}" if source.startswith("models:/") else source
        else:
            folder = Path(source).expanduser()
            label = f"{self.name}@{folder.name}"
        return Loaded(self._loader(folder, label), label, variant, source)

    def refresh(self) -> list[str]:
        """Resolve the aliases and load what changed. Returns the changes made (for logs and tests)."""
        changes: list[str] = []
        try:
            targets = self._targets()
        except Exception as exc:  # registry unreachable: keep serving what is loaded
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: cannot resolve %s (%s); keeping the loaded models", self.name, self.spec, exc)
            if "champion" not in self._slots:
                self._slots = {"champion": self._rules_slot(RULES_FALLBACK)}
                changes.append(f"champion: {RULES_FALLBACK}")
            return changes
        slots = dict(self._slots)
        for variant, source in targets.items():
            current = slots.get(variant)
            if source is None:
                if variant == "challenger":
                    if slots.pop("challenger", None) is not None:
                        changes.append("challenger: removed")
                elif current is None or current.label != RULES:
                    slots[variant] = self._rules_slot(RULES)
                    changes.append(f"champion: {RULES} ({self.spec} is not registered)")
                continue
            if current is not None and current.source == source:
                continue
            try:
                started = time.perf_counter()
                loaded = self._load(variant, source)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("%s: loading %s (%s) failed: %s", self.name, source, variant, exc)
                if current is None and variant == "champion":
                    slots[variant] = self._rules_slot(RULES_FALLBACK)
                    changes.append(f"champion: {RULES_FALLBACK}")
                continue
            slots[variant] = loaded
            changes.append(f"{variant}: {loaded.label}")
            log.info(
                "%s: serving %s as %s (loaded in %.1fs)",
                self.name,
                loaded.label,
                variant,
                time.perf_counter() - started,
            )
        self._slots = slots  # one assignment: readers see the old or the new set, never a mix
        return changes

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.model_refresh_s):
            try:
                self.refresh()
            except Exception:  # the loop must survive anything a registry does
                log.exception("%s: refresh failed", self.name)

    def close(self) -> None:
        self._stop.set()
