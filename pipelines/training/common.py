"""What every training pipeline shares: the model-folder manifest, MLflow logging and registration.

A trained model is a *folder* (Hugging Face weights + tokenizer + ``switchboard.json``). The manifest says
what the folder is (``kind``, ``task``, ``labels``, ``base_model``, ``max_length``) so serving code in
``models/`` can load it without MLflow. ``register_trained`` logs the run's params, metrics and evaluation
reports to MLflow, logs the folder as the model's ``weights`` artifact, registers a version with a semantic
version tag and points an alias at it (``champion`` for the first version, ``challenger`` after that unless
told otherwise).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.text.classifier import MANIFEST
from models.text.classifier import read_folder_manifest as read_manifest

from ..config import Settings

__all__ = [
    "MANIFEST",
    "TrainedModel",
    "RegisteredVersion",
    "write_manifest",
    "read_manifest",
    "register_trained",
    "next_semver",
    "plan_version",
    "registered_version",
]

log = logging.getLogger("switchboard.training")


@dataclass
class TrainedModel:
    """The output of one training run, before registration."""

    name: str  # registered model name: sentiment_classifier, intent_classifier, kb_reranker
    folder: Path  # holds MANIFEST + weights
    params: dict[str, Any]
    metrics: dict[str, float]
    reports: dict[str, Any] = field(default_factory=dict)  # file name -> JSON-serialisable evaluation report
    # Did it beat the model serving today (lexicon, similarity, FAISS order) on the held-out set? A model
    # that did not is registered as @challenger, never made @champion automatically. None: not compared.
    beats_baseline: bool | None = None


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    semver: str
    alias: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def write_manifest(folder: Path, **manifest: Any) -> None:
    """``kind`` (``sequence_classifier`` or ``cross_encoder``), ``task``, ``labels``, ``base_model``,
    ``max_length`` and anything else worth keeping next to the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _parse(semver: str) -> tuple[int, int, int]:
    major, minor, patch = (int(x) for x in semver.split("."))
    return major, minor, patch


def next_semver(existing: list[str], bump: str = "minor") -> str:
    """The next semantic version after the highest of ``existing`` (``1.0.0`` when there is none)."""
    valid = []
    for s in existing:
        try:
            valid.append(_parse(s))
        except ValueError:
            continue
    if not valid:
        return "1.0.0"
    major, minor, patch = max(valid)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    return f"{major}.{minor + 1}.0"


def plan_version(
    client: Any,
    name: str,
    *,
    semver: str | None = None,
    alias: str | None = "auto",
    bump: str = "minor",
    beats_baseline: bool | None = None,
) -> tuple[str, str | None]:
    """The semantic version and alias of a new version of ``name``: ``semver``, else the next after the
    registered versions' (``bump``). ``alias="auto"``: ``champion`` when the name has no champion yet and the
    model did not lose to its baseline, else ``challenger``; any other alias (or None) as it is."""
    existing: list[str] = []
    has_champion = False
    if client.search_registered_models(filter_string=f"name='{name}'"):
        existing = [(v.tags or {}).get("semver", "") for v in client.search_model_versions(f"name='{name}'")]
        has_champion = "champion" in (client.get_registered_model(name).aliases or {})
    if alias == "auto":
        alias = "challenger" if has_champion or beats_baseline is False else "champion"
    return semver or next_semver(existing, bump), alias


def registered_version(
    name: str, settings: Settings, aliases: tuple[str, ...] = ("champion", "challenger")
) -> str | None:
    """The version the first of ``aliases`` that ``name`` has points at; None when it has none of them (a
    model that did not beat its baseline is only ever a challenger, and counts by default)."""
    from models.registry import resolve_model_uri

    if not settings.mlflow_store_exists:
        return None
    for alias in aliases:
        resolved = resolve_model_uri(f"models:/{name}@{alias}", tracking_uri=settings.resolved_mlflow_uri)
        if resolved is not None:
            return resolved.rsplit("/", 1)[1]
    return None


def register_trained(
    model: TrainedModel,
    settings: Settings,
    *,
    alias: str | None = "auto",
    semver: str | None = None,
    bump: str = "minor",
) -> RegisteredVersion:
    """Log ``model`` (params, metrics, reports, weights) to MLflow and register it.

    ``alias="auto"``: ``champion`` when the name has no champion yet and the model beat its baseline, else
    ``challenger`` (promote it with ``python -m pipelines.registry promote NAME``). ``None``: no alias.
    """
    import mlflow

    from ..registry import FolderModel, _experiment_id, mlflow_store

    manifest = read_manifest(model.folder)  # refuse folders serving could not load
    with mlflow_store(settings) as client:
        semver, alias = plan_version(
            client, model.name, semver=semver, alias=alias, bump=bump, beats_baseline=model.beats_baseline
        )
        with mlflow.start_run(
            experiment_id=_experiment_id(client, settings), run_name=f"train-{model.name}-{semver}"
        ):
            mlflow.log_params({k: str(v)[:500] for k, v in model.params.items()})
            mlflow.log_metrics({k: float(v) for k, v in model.metrics.items()})
            with tempfile.TemporaryDirectory() as tmp:
                for file_name, report in model.reports.items():
                    path = Path(tmp) / file_name
                    path.write_text(json.dumps(report, indent=1, default=str))
                    mlflow.log_artifact(str(path), artifact_path="evaluation")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=FolderModel(),
                artifacts={"weights": str(model.folder)},
                pip_requirements=[],
                registered_model_name=model.name,
            )
        version = str(info.registered_model_version)
        client.set_model_version_tag(model.name, version, "semver", semver)
        for key in ("task", "kind", "base_model"):
            value = manifest.get(key)
            if value:
                client.set_model_version_tag(model.name, version, key, str(value))
        if alias:
            client.set_registered_model_alias(model.name, alias, version)
    log.info("registered %s v%s (%s)%s", model.name, version, semver, f" as @{alias}" if alias else "")
    return RegisteredVersion(model.name, version, semver, alias)
