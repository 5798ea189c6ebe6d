"""Serving from a real MLflow registry: alias resolution, hot reload when an alias moves, A/B assignment,
fallbacks when nothing is registered or a version fails to load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.served import RULES, RULES_FALLBACK, ServedModel, assign_variant
from pipelines.training.common import TrainedModel, next_semver, register_trained, write_manifest

pytestmark = pytest.mark.unit


class Echo:
    """A stand-in runtime model: returns the word written in its folder (the loader under test is the
    registry plumbing, not a network)."""

    def __init__(self, folder: Path, label: str) -> None:
        data = json.loads((folder / "word.json").read_text())
        if data.get("broken"):
            raise RuntimeError("corrupt weights")
        self.word, self.label = data["word"], label


def _folder(tmp: Path, word: str, broken: bool = False) -> Path:
    folder = tmp / f"model-{word}"
    write_manifest(folder, kind="echo", task="test", labels=[word])
    (folder / "word.json").write_text(json.dumps({"word": word, "broken": broken}))
    return folder


def _register(settings: Settings, tmp: Path, word: str, alias: str | None = "auto", broken: bool = False):
    model = TrainedModel("echo_model", _folder(tmp, word, broken), {"word": word}, {"accuracy": 0.5})
    return register_trained(model, settings, alias=alias)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", ab_challenger_share=0.5, model_refresh_s=3600)


def _served(settings: Settings) -> ServedModel:
    return ServedModel(
        "echo_model",
        "models:/echo_model@champion",
        loader=Echo,
        rules=lambda: "rules-model",
        settings=settings,
        refresh=False,
    )


def test_nothing_registered_serves_rules_without_creating_a_store(settings):
    served = _served(settings)
    slot = served.get("champion")
    assert (slot.model, slot.label, slot.variant) == ("rules-model", RULES, RULES)
    assert not (settings.data_dir / "mlflow.db").exists()


def test_semver_and_aliases_then_alias_move_hot_reloads(settings, tmp_path):
    first = _register(settings, tmp_path, "alpha")
    second = _register(settings, tmp_path, "beta")
    assert (first.version, first.semver, first.alias) == ("1", "1.0.0", "champion")
    assert (second.version, second.semver, second.alias) == ("2", "1.1.0", "challenger")

    served = _served(settings)
    champion, challenger = served.get("champion"), served.get("challenger")
    assert (champion.model.word, champion.label) == ("alpha", "echo_model@1")
    assert (challenger.model.word, challenger.label, challenger.variant) == (
        "beta",
        "echo_model@2",
        "challenger",
    )

    held = champion.model  # a call in flight keeps the model it started with
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=settings.resolved_mlflow_uri, registry_uri=settings.resolved_mlflow_uri
    )
    client.set_registered_model_alias("echo_model", "champion", "2")
    client.delete_registered_model_alias("echo_model", "challenger")
    changes = served.refresh()
    assert "champion: echo_model@2" in changes and "challenger: removed" in changes
    assert served.get("champion").model.word == "beta"
    assert served.get("challenger").label == "echo_model@2"  # no challenger: the champion serves everyone
    assert held.word == "alpha"
    assert served.refresh() == []  # nothing moved: nothing reloaded


def test_broken_version_keeps_the_loaded_one(settings, tmp_path):
    _register(settings, tmp_path, "alpha")
    served = _served(settings)
    _register(settings, tmp_path, "gamma", alias="champion", broken=True)
    assert served.refresh() == []
    assert served.get("champion").model.word == "alpha"
    assert "corrupt weights" in (served.last_error or "")


def test_broken_first_version_falls_back_to_rules(settings, tmp_path):
    _register(settings, tmp_path, "delta", broken=True)
    slot = _served(settings).get("champion")
    assert (slot.model, slot.label) == ("rules-model", RULES_FALLBACK)


def test_variant_assignment_is_stable_and_close_to_the_share():
    settings = Settings(ab_challenger_share=0.3)
    ids = [f"ses_{i:05d}" for i in range(4000)]
    arms = [assign_variant(i, settings) for i in ids]
    assert arms == [assign_variant(i, settings) for i in ids]
    assert 0.27 < arms.count("challenger") / len(arms) < 0.33
    assert {assign_variant(i, Settings()) for i in ids[:50]} == {"champion"}
    shadow = Settings(ab_challenger_share=0.3, ab_mode="shadow")
    assert {assign_variant(i, shadow) for i in ids[:50]} == {"champion"}


def test_next_semver():
    assert next_semver([]) == "1.0.0"
    assert next_semver(["1.0.0", "1.2.0", "junk"]) == "1.3.0"
    assert next_semver(["1.2.3"], "patch") == "1.2.4"
    assert next_semver(["1.2.3"], "major") == "2.0.0"


def test_promote_and_roll_back_from_the_cli(settings, tmp_path, monkeypatch, capsys):
    from pipelines.registry import main

    _register(settings, tmp_path, "alpha")
    _register(settings, tmp_path, "beta")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(settings.data_dir))
    assert main(["promote", "echo_model"]) == 0
    served = _served(settings)
    assert served.get("champion").model.word == "beta" and not served.has("challenger")
    assert main(["promote", "echo_model"]) == 2  # nothing left to promote: a clear error
    assert "no @challenger" in capsys.readouterr().err
    assert main(["set-alias", "echo_model", "champion", "1"]) == 0
    assert served.refresh() == ["champion: echo_model@1"]
    assert main(["set-alias", "echo_model", "champion", "9"]) == 2


def test_loading_uses_the_configured_store_not_the_process_default(settings, tmp_path, monkeypatch):
    """A serving replica never sets MLflow's process-wide URIs; downloads must not depend on them."""
    import mlflow

    _register(settings, tmp_path, "alpha")
    elsewhere = (tmp_path / "elsewhere").as_uri()
    mlflow.set_tracking_uri(elsewhere)
    mlflow.set_registry_uri(elsewhere)
    try:
        slot = _served(settings).get("champion")
        assert (slot.model.word, slot.label) == ("alpha", "echo_model@1")
    finally:
        mlflow.set_tracking_uri(settings.resolved_mlflow_uri)
        mlflow.set_registry_uri(settings.resolved_mlflow_uri)
