"""Register model folders in MLflow so serving can load them as ``models:/NAME@ALIAS``.

A customer's Whisper (a CTranslate2 folder or a Hugging Face checkpoint) is logged as the ``weights`` artifact
of a pyfunc model, registered under a name, tagged with a semantic version and given an alias (``champion``
by default). ``SWITCHBOARD_ASR_FINAL_MODEL=models:/whisper_asr@champion`` then serves it; moving the alias
and redeploying serves the new version. The embedded default store is SQLite under the data folder (no
server); set ``SWITCHBOARD_MLFLOW_TRACKING_URI`` for a tracking server.

    python -m pipelines.registry register-folder /models/whisper-large-v3-ct2 --name whisper_asr --semver 3.0.0
    python -m pipelines.registry list
    python -m pipelines.registry promote sentiment_classifier       # challenger → champion
    python -m pipelines.registry set-alias sentiment_classifier champion 3   # roll back
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import Settings

__all__ = [
    "EXPERIMENT",
    "FolderModel",
    "register_folder",
    "mlflow_store",
    "set_alias",
    "promote_challenger",
    "main",
]

log = logging.getLogger("switchboard.registry")

EXPERIMENT = "switchboard-models"


try:  # the pyfunc wrapper needs mlflow at class-definition time; serving code never imports this module
    import mlflow.pyfunc

    class FolderModel(mlflow.pyfunc.PythonModel):
        """A registered model folder, usable with `mlflow models serve` and batch scoring; switchboard itself
        only downloads the ``weights`` artifact.

        - a Whisper folder: ``predict`` transcribes float32 16 kHz mono arrays;
        - a text classifier (``switchboard.json`` kind ``sequence_classifier``): ``predict`` labels texts;
        - a cross-encoder (kind ``cross_encoder``): ``predict`` scores ``[query, passage]`` pairs."""

        def load_context(self, context):  # noqa: ANN001 - MLflow's own signature
            folder = Path(context.artifacts["weights"])
            manifest = folder / "switchboard.json"
            self.kind = json.loads(manifest.read_text())["kind"] if manifest.exists() else "whisper"
            if self.kind == "sequence_classifier":
                from models.text.classifier import SequenceClassifier

                self.engine = SequenceClassifier(folder)
            elif self.kind == "cross_encoder":
                from models.retrieval.reranker import CrossEncoderReranker

                self.engine = CrossEncoderReranker(folder)
            else:
                from models.asr.whisper import FasterWhisperAsr, TransformersWhisperAsr

                hf = (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists()
                self.engine = TransformersWhisperAsr(folder) if hf else FasterWhisperAsr(folder)

        def predict(self, context, model_input, params=None):  # noqa: ANN001
            import numpy as np

            if self.kind == "sequence_classifier":
                probs = self.engine.predict_proba([str(t) for t in model_input])
                return [self.engine.labels[int(i)] for i in probs.argmax(axis=1)]
            if self.kind == "cross_encoder":
                return [float(self.engine.score(q, [p])[0]) for q, p in model_input]
            return [self.engine.transcribe(np.asarray(audio, dtype=np.float32)).text for audio in model_input]

except ImportError:  # pragma: no cover - mlflow is a base dependency
    FolderModel = None  # type: ignore[assignment,misc]


@contextlib.contextmanager
def mlflow_store(settings: Settings) -> Iterator[Any]:
    """An ``MlflowClient`` on the configured store (also made the process's tracking and registry URI)."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)  # fluent calls (start_run, log_model) use the process-wide URI
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, settings: Settings) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if (
        settings.mlflow_tracking_uri is None
    ):  # embedded store: artifacts next to the database, not in ./mlruns
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        artifacts = settings.mlflow_artifact_root.as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts)


def register_folder(
    folder: Path,
    name: str,
    settings: Settings,
    *,
    alias: str | None = "champion",
    semver: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``folder`` as a model version of ``name``; returns the version number (as MLflow gives it)."""
    import mlflow

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass the model folder to register")
    if FolderModel is None:  # pragma: no cover
        raise ImportError("registering models needs mlflow: `pip install mlflow==3.17.2`")
    with mlflow_store(settings) as client:
        with mlflow.start_run(experiment_id=_experiment_id(client, settings), run_name=f"register-{name}"):
            mlflow.log_params({"source_folder": str(folder), "files": len(list(folder.rglob("*")))})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=FolderModel(),
                artifacts={"weights": str(folder)},
                pip_requirements=[],  # runs in switchboard's environment; no dependency inference
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        for key, value in {**(tags or {}), **({"semver": semver} if semver else {})}.items():
            client.set_model_version_tag(name, version, key, value)
        if alias:
            client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s%s", name, version, f" as @{alias}" if alias else "")
    return version


def set_alias(name: str, alias: str, version: str, settings: Settings) -> str:
    """Point ``alias`` of ``name`` at ``version``; replicas load it at their next poll (``model_refresh_s``)."""
    with mlflow_store(settings) as client:
        try:
            client.get_model_version(name, str(version))
        except Exception as exc:
            raise LookupError(
                f"{name} has no version {version} (see `python -m pipelines.registry list`)"
            ) from exc
        client.set_registered_model_alias(name, alias, str(version))
    return f"models:/{name}@{alias} -> version {version}"


def promote_challenger(name: str, settings: Settings) -> str:
    """The challenger becomes the champion; the challenger alias is removed (the A/B test is over)."""
    with mlflow_store(settings) as client:
        try:
            version = client.get_model_version_by_alias(name, "challenger").version
        except Exception as exc:
            raise LookupError(f"{name} has no @challenger to promote") from exc
        client.set_registered_model_alias(name, "champion", version)
        client.delete_registered_model_alias(name, "challenger")
    return f"models:/{name}@champion -> version {version} (challenger alias removed)"


def _list(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    with mlflow_store(settings) as client:
        for model in client.search_registered_models():
            aliases = {v: k for k, v in (model.aliases or {}).items()}
            for version in client.search_model_versions(f"name='{model.name}'"):
                rows.append(
                    {
                        "name": model.name,
                        "version": version.version,
                        "alias": aliases.get(version.version, ""),
                        "semver": (version.tags or {}).get("semver", ""),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.registry",
        description="Register model folders in MLflow (the embedded SQLite store unless "
        "SWITCHBOARD_MLFLOW_TRACKING_URI is set) and list what is registered.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register-folder", help="log a model folder and register it under a name")
    reg.add_argument(
        "folder", type=Path, help="CTranslate2 Whisper folder or Hugging Face Whisper checkpoint"
    )
    reg.add_argument("--name", required=True, help="registered model name, e.g. whisper_asr")
    reg.add_argument(
        "--alias", default="champion", help="alias to point at the new version (default champion)"
    )
    reg.add_argument("--semver", help="semantic version tag, e.g. 1.2.0")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra version tag")
    sub.add_parser("list", help="registered models, versions and aliases")
    promote = sub.add_parser(
        "promote", help="make the challenger the champion (serving picks it up at its next alias poll)"
    )
    promote.add_argument("name", help="registered model name, e.g. sentiment_classifier")
    alias = sub.add_parser("set-alias", help="point an alias at a version (e.g. roll back the champion)")
    alias.add_argument("name")
    alias.add_argument("alias", help="champion or challenger")
    alias.add_argument("version", help="version number")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings()
    if args.command == "register-folder":
        try:
            tags = dict(t.split("=", 1) for t in args.tag)
        except ValueError:
            parser.error("--tag takes KEY=VALUE")
        try:
            version = register_folder(
                args.folder, args.name, settings, alias=args.alias, semver=args.semver, tags=tags
            )
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"models:/{args.name}/{version}" + (f"  (models:/{args.name}@{args.alias})" if args.alias else "")
        )
        return 0
    if args.command in ("promote", "set-alias"):
        try:
            moved = (
                promote_challenger(args.name, settings)
                if args.command == "promote"
                else set_alias(args.name, args.alias, args.version, settings)
            )
        except (LookupError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(moved)
        return 0
    for row in _list(settings):
        print(f"{row['name']:<28} v{row['version']:<5} {row['alias']:<12} {row['semver']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
