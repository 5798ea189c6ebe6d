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

from ..config import Settings

__all__ = [
    "MANIFEST",
    "TrainedModel",
    "RegisteredVersion",
    "write_manifest",
    "read_manifest",
    "register_trained",
    "next_semver",
]

log = logging.getLogger("switchboard.training")

MANIFEST = "switchboard.json"


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


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: it is not a switchboard model folder")
    return json.loads(path.read_text())


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

    read_manifest(model.folder)  # refuse folders serving could not load
    with mlflow_store(settings) as client:
        existing = []
        has_champion = False
        if client.search_registered_models(filter_string=f"name='{model.name}'"):
            versions = client.search_model_versions(f"name='{model.name}'")
            existing = [(v.tags or {}).get("semver", "") for v in versions]
            has_champion = "champion" in (client.get_registered_model(model.name).aliases or {})
        semver = semver or next_semver(existing, bump)
        if alias == "auto":
            alias = "challenger" if has_champion or model.beats_baseline is False else "champion"
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
            value = read_manifest(model.folder).get(key)
            if value:
                client.set_model_version_tag(model.name, version, key, str(value))
        if alias:
            client.set_registered_model_alias(model.name, alias, version)
    log.info("registered %s v%s (%s)%s", model.name, version, semver, f" as @{alias}" if alias else "")
    return RegisteredVersion(model.name, version, semver, alias)
