"""Serving a Whisper folder registered in MLflow (embedded SQLite store, built in the test)."""

from __future__ import annotations

import pytest

from models.asr.metrics import wer
from pipelines.config import Settings
from pipelines.samples import synthesize

pytestmark = pytest.mark.unit

SENTENCE = "Please send my medical records to my new doctor."


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from models.asr.whisper import packaged_model_path
    from pipelines.registry import register_folder

    settings = Settings(data_dir=tmp_path_factory.mktemp("mlflow-data"))
    folder = packaged_model_path("tiny.en")
    first = register_folder(folder, "whisper_asr", settings, semver="1.0.0")
    second = register_folder(folder, "whisper_asr", settings, alias="challenger", semver="1.1.0")
    return settings, first, second


def test_registered_folder_serves_as_the_final_model(store):
    from pipelines.backends import build_asr

    settings, first, _ = store
    assert (settings.data_dir / "mlflow.db").is_file() and (settings.data_dir / "mlartifacts").is_dir()
    serving = settings.model_copy(
        update={"asr_final_model": "models:/whisper_asr@champion", "asr_backup_model": None}
    )
    engines = build_asr(serving)
    result = engines["final"].transcribe(synthesize(SENTENCE))
    assert wer(SENTENCE, result.text) <= 0.2, result.text
    assert result.model == "models:/whisper_asr@champion" and result.words


def test_aliases_resolve_to_their_version_and_cache_per_version(store):
    from models.registry import download_model_folder

    settings, first, second = store
    assert (first, second) == ("1", "2")
    cache = settings.data_dir / "model-cache"
    champion = download_model_folder(
        "models:/whisper_asr@champion", tracking_uri=settings.resolved_mlflow_uri, cache_dir=cache
    )
    challenger = download_model_folder(
        "models:/whisper_asr@challenger", tracking_uri=settings.resolved_mlflow_uri, cache_dir=cache
    )
    pinned = download_model_folder(
        "models:/whisper_asr/2", tracking_uri=settings.resolved_mlflow_uri, cache_dir=cache
    )
    assert champion != challenger and challenger == pinned
    assert (champion / "model.bin").stat().st_size == (challenger / "model.bin").stat().st_size > 1_000_000
    assert (
        download_model_folder(  # second call: the cached copy, no new download
            "models:/whisper_asr@champion", tracking_uri=settings.resolved_mlflow_uri, cache_dir=cache
        )
        == champion
    )


def test_unknown_alias_says_how_to_register(store, tmp_path):
    from models.registry import download_model_folder

    settings, _, _ = store
    with pytest.raises(FileNotFoundError, match="register-folder"):
        download_model_folder(
            "models:/whisper_asr@nope", tracking_uri=settings.resolved_mlflow_uri, cache_dir=tmp_path
        )


def test_cli_lists_versions_with_aliases_and_semver(store, capsys, monkeypatch):
    from pipelines.registry import main

    settings, _, _ = store
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(settings.data_dir))
    assert main(["list"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["whisper_asr", "v1", "champion", "1.0.0"] in lines and [
        "whisper_asr",
        "v2",
        "challenger",
        "1.1.0",
    ] in lines
    assert main(["register-folder", str(settings.data_dir / "missing"), "--name", "x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
