"""The response generator's model and prompt in MLflow (embedded SQLite store under ``tmp_path``)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest

from models.generation.grounding import DEFAULT_TEMPLATE, PromptTemplate
from pipelines.config import Settings
from pipelines.generation import (
    MODEL_NAME,
    PROMPT_NAME,
    SMOLLM2_FOLDER,
    load_prompt_template,
    promote_prompt,
    register_generator,
    register_prompt_template,
    resolve_generator_model,
    setup,
    summarize,
    template_from_file,
    template_to_yaml,
    token_f1,
)

pytestmark = pytest.mark.unit

SHORT = PromptTemplate(
    messages=(
        ("system", "Answer in one sentence from the articles, citing [{{example_id}}]."),
        ("user", "{{articles}}\n\n{{conversation}}\n(intent {{intent}})"),
    ),
    version="test",
)


def _versions(settings: Settings, name: str) -> list[str]:
    from pipelines.registry import mlflow_store

    with mlflow_store(settings) as client:
        return [str(v.version) for v in client.search_model_versions(f"name='{name}'")]


def _with_smollm2(data_dir: Path, smollm2_dir: Path) -> Settings:
    """A data folder whose llm dir already holds the converted SmolLM2 (no 35 s conversion per test)."""
    (data_dir / "llm").mkdir(parents=True, exist_ok=True)
    (data_dir / "llm" / SMOLLM2_FOLDER).symlink_to(smollm2_dir, target_is_directory=True)
    return Settings(data_dir=data_dir)


# ---------------------------------------------------------------- prompt registry


def test_prompt_round_trip_through_aliases(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert load_prompt_template(settings) is DEFAULT_TEMPLATE  # no store yet: the built-in prompt

    assert register_prompt_template(SHORT, settings, alias="champion") == f"{PROMPT_NAME}@1"
    loaded = load_prompt_template(settings)
    assert loaded.messages == SHORT.messages and loaded.version == f"{PROMPT_NAME}@1"

    assert register_prompt_template(DEFAULT_TEMPLATE, settings, alias="challenger") == f"{PROMPT_NAME}@2"
    assert load_prompt_template(settings).version == f"{PROMPT_NAME}@1"  # the champion did not move
    challenger = load_prompt_template(settings, f"prompts:/{PROMPT_NAME}@challenger")
    assert challenger.messages == DEFAULT_TEMPLATE.messages and challenger.version == f"{PROMPT_NAME}@2"
    assert load_prompt_template(settings, f"prompts:/{PROMPT_NAME}/1").messages == SHORT.messages

    promote_prompt(settings)
    assert load_prompt_template(settings).version == f"{PROMPT_NAME}@2"
    assert load_prompt_template(settings, f"prompts:/{PROMPT_NAME}@challenger") is DEFAULT_TEMPLATE
    with pytest.raises(LookupError):
        promote_prompt(settings)


def test_missing_prompt_is_the_builtin_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path)
    register_prompt_template(SHORT, settings)  # the store exists; the prompt asked for does not
    with caplog.at_level(logging.WARNING, logger="switchboard.generation"):
        missing = settings.model_copy(update={"generation_prompt": "prompts:/no_such_prompt@champion"})
        assert load_prompt_template(missing) is DEFAULT_TEMPLATE
    assert not [r for r in caplog.records if r.name == "switchboard.generation"]  # not registered: no warning


def test_unreachable_registry_warns_and_uses_the_builtin_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default retries take minutes
    down = Settings(data_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="switchboard.generation"):
        assert load_prompt_template(down) is DEFAULT_TEMPLATE
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_prompt_file_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "prompt.yaml"
    path.write_text(template_to_yaml(DEFAULT_TEMPLATE))
    template, commit = template_from_file(path)
    assert template.messages == DEFAULT_TEMPLATE.messages and commit

    path.write_text(
        "messages:\n  - {role: user, content: '{{articles}} {{conversation}} {{customer_name}}'}\n"
    )
    with pytest.raises(ValueError, match="customer_name"):
        template_from_file(path)
    path.write_text("messages:\n  - {role: user, content: 'Answer: {{conversation}}'}\n")
    with pytest.raises(ValueError, match="articles"):
        template_from_file(path)
    path.write_text("messages:\n  - {role: user, content: '{{articles}}'}\n")
    with pytest.raises(ValueError, match="question"):
        template_from_file(path)
    path.write_text("messages:\n  - {role: user, content: '{{articles}} Q: {{question}}'}\n")
    assert template_from_file(path)[0].messages == (("user", "{{articles}} Q: {{question}}"),)


# ---------------------------------------------------------------- model registry


def _tiny_copy(smollm2_dir: Path, folder: Path) -> Path:
    """A different (not loadable, never loaded here) version: SmolLM2's config and tokenizer, tiny weights."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    for file in smollm2_dir.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)
    save_file({"marker": np.arange(4, dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


def test_registered_model_resolves_through_its_alias(tmp_path: Path, smollm2_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="pipelines.generation setup"):
        resolve_generator_model(settings)

    first = register_generator(smollm2_dir, settings)
    assert (first.version, first.semver, first.alias) == ("1", "1.0.0", "champion")
    folder, name = resolve_generator_model(settings)
    assert name == f"{MODEL_NAME}@1"
    assert (folder / "model.safetensors").stat().st_size == (smollm2_dir / "model.safetensors").stat().st_size
    assert (folder / "tokenizer.json").exists()

    second = register_generator(_tiny_copy(smollm2_dir, tmp_path / "tiny"), settings)
    assert (second.version, second.semver, second.alias) == ("2", "1.1.0", "challenger")
    assert resolve_generator_model(settings)[1] == f"{MODEL_NAME}@1"  # the champion serves until promoted
    challenger = settings.model_copy(update={"generation_model": f"models:/{MODEL_NAME}@challenger"})
    assert resolve_generator_model(challenger)[1] == f"{MODEL_NAME}@2"

    from pipelines.registry import promote_challenger

    promote_challenger(MODEL_NAME, settings)
    folder, name = resolve_generator_model(settings)
    assert name == f"{MODEL_NAME}@2" and (folder / "model.safetensors").stat().st_size < 1024

    local = settings.model_copy(update={"generation_model": str(smollm2_dir)})
    assert resolve_generator_model(local) == (smollm2_dir, smollm2_dir.name)
    gguf = settings.model_copy(update={"generation_model": str(tmp_path / "missing.gguf")})
    with pytest.raises(FileNotFoundError):
        resolve_generator_model(gguf)
    with pytest.raises(FileNotFoundError, match="causal-LM"):
        register_generator(tmp_path, settings)


def test_setup_if_missing_is_idempotent(tmp_path: Path, smollm2_dir: Path) -> None:
    settings = _with_smollm2(tmp_path, smollm2_dir)
    done = setup(settings, if_missing=True)
    assert done == {"model": f"models:/{MODEL_NAME}/1", "prompt": f"{PROMPT_NAME}@1"}
    assert resolve_generator_model(settings)[1] == f"{MODEL_NAME}@1"
    assert load_prompt_template(settings).messages == DEFAULT_TEMPLATE.messages

    assert setup(settings, if_missing=True) == {"model": None, "prompt": None}
    assert _versions(settings, MODEL_NAME) == ["1"]
    assert load_prompt_template(settings).version == f"{PROMPT_NAME}@1"

    # an earlier built-in template as the champion is replaced by the current one; anyone else's is kept
    register_prompt_template(PromptTemplate(SHORT.messages, version=DEFAULT_TEMPLATE.version), settings)
    assert setup(settings, if_missing=True) == {"model": None, "prompt": f"{PROMPT_NAME}@3"}
    assert load_prompt_template(settings).messages == DEFAULT_TEMPLATE.messages
    register_prompt_template(SHORT, settings)
    assert setup(settings, if_missing=True) == {"model": None, "prompt": None}
    assert load_prompt_template(settings).version == f"{PROMPT_NAME}@4"


# ---------------------------------------------------------------- evaluation


def test_token_f1() -> None:
    assert token_f1("Pay by card [kb-billing-008].", "pay by card") == 1.0
    assert token_f1("", "anything") == 0.0
    assert token_f1("the plan", "a plan") == pytest.approx(0.5)


def test_summarize() -> None:
    row = {
        "retrieved_expected": True,
        "grounded": True,
        "cited_expected": False,
        "answer_f1": 0.5,
        "baseline_f1": 0.25,
        "shown_f1": 0.5,
        "latency_s": 1.0,
        "completion_tokens": 20,
    }
    slow = {**row, "grounded": False, "cited_expected": True, "shown_f1": 0.25, "latency_s": 3.0}
    metrics = summarize([row, slow])
    assert metrics["grounded_rate"] == 0.5 and metrics["cited_expected_rate"] == 0.5
    assert metrics["answer_overlap"] == 0.5 and metrics["answer_overlap_articles_baseline"] == 0.25
    assert metrics["answer_overlap_shown"] == 0.375
    assert metrics["latency_p50_s"] in (1.0, 3.0) and metrics["latency_p95_s"] == 3.0
    assert metrics["tokens_per_s"] == 10.0


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("models.generation.hf_generate") is None,
    reason="the transformers backend is not there yet",
)
def test_evaluate_logs_a_run(tmp_path: Path, smollm2_dir: Path, index_dir: Path) -> None:
    from pipelines.generation import evaluate
    from pipelines.registry import EXPERIMENT, mlflow_store

    settings = _with_smollm2(tmp_path, smollm2_dir).model_copy(
        update={"index_dir": index_dir, "generation_max_tokens": 24}
    )
    setup(settings, if_missing=True)
    report = evaluate(settings, backend="transformers", limit=3, progress=False)
    assert len(report["rows"]) == 3 and report["params"]["model"] == f"{MODEL_NAME}@1"
    metrics = report["metrics"]
    assert metrics["questions"] == 3 and 0 <= metrics["grounded_rate"] <= 1
    assert metrics["answer_overlap_articles_baseline"] > 0 and metrics["tokens_per_s"] > 0
    json.dumps(report)
    with mlflow_store(settings) as client:
        run = client.get_run(report["run_id"])
        assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
        assert run.data.tags["model_version"] == "1" and run.data.tags["prompt"] == f"{PROMPT_NAME}@1"
        assert run.data.metrics["grounded_rate"] == metrics["grounded_rate"]
        assert client.get_model_version(MODEL_NAME, "1").tags["evaluation_run"] == report["run_id"]
