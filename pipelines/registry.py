"""Register model folders in MLflow so serving can load them as ``models:/NAME@ALIAS``.

A customer's Whisper (a CTranslate2 folder or a Hugging Face checkpoint) is logged as the ``weights`` artifact
of a pyfunc model, registered under a name, tagged with a semantic version and given an alias (``champion``
by default). ``SWITCHBOARD_ASR_FINAL_MODEL=models:/whisper_asr@champion`` then serves it; moving the alias
and redeploying serves the new version. The embedded default store is SQLite under the data folder (no
server); set ``SWITCHBOARD_MLFLOW_TRACKING_URI`` for a tracking server.

    python -m pipelines.registry register-folder /models/whisper-large-v3-ct2 --name whisper_asr --semver 3.0.0
    python -m pipelines.registry list
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import Settings

__all__ = ["EXPERIMENT", "FolderModel", "register_folder", "mlflow_store", "main"]

log = logging.getLogger("switchboard.registry")

EXPERIMENT = "switchboard-models"


try:  # the pyfunc wrapper needs mlflow at class-definition time; serving code never imports this module
    import mlflow.pyfunc

    class FolderModel(mlflow.pyfunc.PythonModel):
        """A registered Whisper folder; ``predict`` transcribes float32 16 kHz mono arrays (for `mlflow models
        serve` and batch scoring). switchboard itself only downloads the ``weights`` artifact."""

        def load_context(self, context: Any) -> None:
            from models.asr.whisper import FasterWhisperAsr, TransformersWhisperAsr

            folder = Path(context.artifacts["weights"])
            hf = (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists()
            self.engine = TransformersWhisperAsr(folder) if hf else FasterWhisperAsr(folder)

        def predict(
            self, context: Any, model_input: list[Any], params: dict[str, Any] | None = None
        ) -> list[str]:
            import numpy as np

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
    for row in _list(settings):
        print(f"{row['name']:<28} v{row['version']:<5} {row['alias']:<12} {row['semver']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
