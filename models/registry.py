"""Model folders from an MLflow registry: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN/PATH``.

Serving code takes a model *folder* (a CTranslate2 Whisper, a Hugging Face checkpoint, ...). A customer ships
such a folder through MLflow by logging it as an artifact of a model (``pipelines.registry`` does this), and
switchboard resolves the URI to a local copy at load time. The tracking store is the embedded SQLite one by
default and a tracking server in production; nothing here talks to a model hub.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "MLFLOW_SCHEMES",
    "is_mlflow_uri",
    "resolve_model_uri",
    "download_model_folder",
    "find_model_folder",
]

log = logging.getLogger(__name__)

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
WHISPER_MARKERS = ("model.bin", "model.safetensors", "pytorch_model.bin")


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def resolve_model_uri(uri: str, *, tracking_uri: str | None) -> str | None:
    """``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` (None when the name or alias is not registered, or
    there is no store at all: ``tracking_uri`` None). Other URIs are returned as they are. Raises when the
    registry cannot be reached, so a caller can tell "not registered" from "registry down"."""
    if not (uri.startswith("models:/") and "@" in uri):
        return uri
    if tracking_uri is None:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = uri[len("models:/") :].split("@", 1)
    try:
        version = MlflowClient(
            tracking_uri=tracking_uri, registry_uri=tracking_uri
        ).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return f"models:/{name}/{version.version}"


def find_model_folder(root: Path, markers: Sequence[str] = WHISPER_MARKERS) -> Path:
    """The shallowest folder under ``root`` holding one of ``markers`` (a logged model nests its artifacts)."""
    candidates = sorted(
        (p.parent for marker in markers for p in root.rglob(marker) if p.is_file()),
        key=lambda p: (len(p.relative_to(root).parts), str(p)),
    )
    if not candidates:
        raise FileNotFoundError(f"no model weights ({', '.join(markers)}) under {root}")
    return candidates[0]


def download_model_folder(
    uri: str,
    *,
    tracking_uri: str | None,
    cache_dir: Path,
    markers: Sequence[str] = WHISPER_MARKERS,
) -> Path:
    """Copy the model behind ``uri`` into ``cache_dir`` and return the folder that holds its weights.

    An alias is resolved to its version first, so the cache key is the exact version: moving the alias and
    restarting (or redeploying) a replica loads the new version, never a stale copy.
    """
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a base dependency
        raise ImportError("loading models from MLflow needs mlflow: `pip install mlflow==3.17.2`") from exc

    resolved = resolve_model_uri(uri, tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    if resolved is None:
        raise FileNotFoundError(
            f"MLflow has no model {uri} at {tracking_uri or 'the default store'}: register one "
            "(`python -m pipelines.registry register-folder --help`; text models: `python -m pipelines.training --help`)"
        )
    key = hashlib.sha256(f"{tracking_uri}|{resolved}".encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / key
    if target.is_dir():
        try:
            return find_model_folder(target, markers)
        except FileNotFoundError:
            pass  # an interrupted download: fetch it again
    target.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%s) from MLflow into %s", uri, resolved, target)
    try:
        source = resolved
        if resolved.startswith("models:/"):
            # resolve the version's artifact location against *this* registry: a bare models:/ URI would be
            # looked up in the process-wide registry, which a serving replica never configures
            from mlflow import MlflowClient

            name, version = resolved[len("models:/") :].rsplit("/", 1)
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            source = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(target), tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise FileNotFoundError(f"could not download {uri} from MLflow: {exc}") from exc
    return find_model_folder(Path(local), markers)
