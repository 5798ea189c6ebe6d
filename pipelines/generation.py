"""The MLflow side of the response generator: its weights and its prompt, registered, resolved and evaluated.

The generator's weights are a Hugging Face causal-LM folder registered as ``response_generator`` (the packaged
SmolLM2-135M-Instruct, converted from its GGUF, is version 1.0.0 ``@champion`` after ``setup``); its prompt is a
chat template in MLflow's prompt registry, ``assist_reply`` (the built-in template ``@champion`` after
``setup``). Serving resolves ``settings.generation_model`` and ``settings.generation_prompt`` through
``resolve_generator_model`` and ``load_prompt_template``; moving an alias and restarting serves the new version.

    python -m pipelines.generation setup --if-missing          # make serve: fast when both are registered
    python -m pipelines.generation register-model /models/my-llm --semver 2.0.0   # a folder or a .gguf
    python -m pipelines.generation register-prompt --file my_prompt.yaml --alias challenger
    python -m pipelines.generation show-prompt > my_prompt.yaml                   # a starting point
    python -m pipelines.generation promote [--prompt]          # challenger → champion
    python -m pipelines.generation evaluate --limit 20         # held-out KB questions → MLflow run + JSON

The embedded store is SQLite under the data folder (no server); ``SWITCHBOARD_MLFLOW_TRACKING_URI`` points at a
tracking server instead. This module imports MLflow only inside functions: ``setup --if-missing`` must stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.generation.convert import gguf_to_hf, is_hf_causal_lm, packaged_smollm2_gguf
from models.generation.grounding import DEFAULT_TEMPLATE, ArticleContext, PromptTemplate

from .config import PACKAGE_DIR, Settings
from .training.common import RegisteredVersion, registered_version

__all__ = [
    "MODEL_NAME",
    "PROMPT_NAME",
    "SMOLLM2_FOLDER",
    "EVAL_FILE",
    "resolve_generator_model",
    "load_prompt_template",
    "register_prompt_template",
    "template_from_file",
    "template_to_yaml",
    "register_generator",
    "promote_prompt",
    "setup",
    "placeholders",
    "token_f1",
    "summarize",
    "evaluate",
    "main",
]

log = logging.getLogger("switchboard.generation")

MODEL_NAME = "response_generator"
PROMPT_NAME = "assist_reply"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
EVAL_FILE = PACKAGE_DIR / "kb" / "retrieval_eval.yaml"  # held out: nothing is trained or tuned on it
MODEL_MARKERS = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards with their index
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_ROLES = frozenset({"system", "user", "assistant"})


# ---------------------------------------------------------------- the store


def _client(settings: Settings) -> Any:
    """An ``MlflowClient`` bound to the configured store, without touching the process-wide URIs (serving
    replicas call this)."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ---------------------------------------------------------------- the weights


def resolve_generator_model(settings: Settings) -> tuple[Path, str]:
    """``settings.generation_model`` → (local Hugging Face folder, display name).

    - an MLflow URI (``models:/response_generator@champion``): the version behind the alias, downloaded once
      into ``<data_dir>/model-cache``; named ``response_generator@<version>``;
    - a Hugging Face folder: itself, named after the folder;
    - a ``.gguf`` file: converted once into ``settings.llm_dir/<stem>``.

    Raises FileNotFoundError saying what to run when the model is not registered or not there.
    """
    from models.registry import download_model_folder, is_mlflow_uri, resolve_model_uri

    spec = settings.generation_model
    if is_mlflow_uri(spec):
        register_hint = (
            "run `python -m pipelines.generation setup` (registers the packaged SmolLM2-135M-Instruct) or "
            "`python -m pipelines.generation register-model FOLDER_OR_GGUF`"
        )
        if not settings.mlflow_store_exists:
            raise FileNotFoundError(
                f"the generator {spec} is not registered (no MLflow store at {settings.resolved_mlflow_uri}): "
                + register_hint
            )
        resolved = resolve_model_uri(spec, tracking_uri=settings.resolved_mlflow_uri)
        if resolved is None:
            raise FileNotFoundError(
                f"the generator {spec} is not registered in {settings.resolved_mlflow_uri}: " + register_hint
            )
        folder = download_model_folder(
            resolved,  # the exact version: the alias cannot move between resolving and downloading
            tracking_uri=settings.resolved_mlflow_uri,
            cache_dir=settings.data_dir / "model-cache",
            markers=MODEL_MARKERS,
        )
        if resolved.startswith("models:/"):
            registered, version = resolved[len("models:/") :].rsplit("/", 1)
            return folder, f"{registered}@{version}"
        return folder, spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if not is_hf_causal_lm(path):
            raise FileNotFoundError(
                f"{path} is not a Hugging Face causal-LM folder (it needs config.json and *.safetensors)"
            )
        return path, path.name
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"the generator GGUF {path} does not exist")
        folder = gguf_to_hf(path, settings.llm_dir / path.stem)
        return folder, folder.name
    raise FileNotFoundError(
        f"generation_model {spec!r} is neither an MLflow URI, a Hugging Face folder nor a .gguf file: set "
        "SWITCHBOARD_GENERATION_MODEL (default models:/response_generator@champion, see `make setup`)"
    )


def _as_model_folder(source: Path, settings: Settings) -> Path:
    source = Path(source).expanduser().resolve()
    if source.is_file() and source.suffix.lower() == ".gguf":
        return gguf_to_hf(source, settings.llm_dir / source.stem)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is neither a model folder nor a .gguf file")
    if not is_hf_causal_lm(source):
        raise FileNotFoundError(
            f"{source} is not a Hugging Face causal-LM folder (it needs config.json and *.safetensors)"
        )
    if not list(source.glob("tokenizer*")):
        raise FileNotFoundError(f"{source} has no tokenizer files: save the tokenizer next to the weights")
    return source


def register_generator(
    source: Path,
    settings: Settings,
    *,
    semver: str | None = None,
    alias: str | None = "auto",
    name: str = MODEL_NAME,
) -> RegisteredVersion:
    """Register a causal-LM folder (or a GGUF, converted first) as a version of ``name``.

    ``semver`` defaults to the next minor version (``1.0.0`` for the first). ``alias="auto"``: ``champion``
    when there is none yet, else ``challenger`` (``promote`` makes it the champion); ``None``: no alias."""
    from .registry import mlflow_store, register_folder
    from .training.common import plan_version

    folder = _as_model_folder(source, settings)
    with mlflow_store(settings) as client:
        semver, alias = plan_version(client, name, semver=semver, alias=alias)
    print(f"==> registering {folder} as {name} {semver}{' @' + alias if alias else ''}", flush=True)
    started = time.perf_counter()
    version = register_folder(
        folder,
        name,
        settings,
        alias=alias,
        semver=semver,
        tags={"kind": "causal_lm", "source": folder.name},
    )
    print(f"    models:/{name}/{version} in {time.perf_counter() - started:.0f} s", flush=True)
    return RegisteredVersion(name, version, semver, alias)


# ---------------------------------------------------------------- the prompt


def _prompt_name(spec: str) -> str:
    if not spec.startswith("prompts:/"):
        raise ValueError(f"generation_prompt {spec!r} is not a prompt-registry URI (prompts:/NAME@ALIAS)")
    return re.split(r"[@/]", spec[len("prompts:/") :], maxsplit=1)[0]


def load_prompt_template(settings: Settings, spec: str | None = None) -> PromptTemplate:
    """``settings.generation_prompt`` (or ``spec``, ``prompts:/NAME@ALIAS`` / ``prompts:/NAME/VERSION``) from
    MLflow's prompt registry, labelled ``NAME@VERSION``. Not registered: the built-in template; registry
    unreachable: the built-in template and a warning."""
    spec = spec or settings.generation_prompt
    _prompt_name(spec)  # refuse anything but a prompts:/ URI
    if not settings.mlflow_store_exists:
        return DEFAULT_TEMPLATE
    try:
        prompt = _client(settings).load_prompt(spec, allow_missing=True, cache_ttl_seconds=0)
    except Exception as exc:  # a server down, a store that cannot be opened: serve the built-in prompt
        log.warning(
            "prompt registry at %s unreachable (%s); using the built-in prompt",
            settings.resolved_mlflow_uri,
            exc,
        )
        return DEFAULT_TEMPLATE
    if prompt is None:
        return DEFAULT_TEMPLATE
    return PromptTemplate.from_registry_template(prompt.template, version=f"{prompt.name}@{prompt.version}")


_KNOWN_PLACEHOLDERS = ("articles", "question", "conversation", "intent", "provider", "example_id")


def _unfilled(template: PromptTemplate) -> set[str]:
    """The placeholders ``template.render`` leaves as they are (it fills the names it knows)."""
    rendered = template.render(
        articles=[ArticleContext("kb-x", "x", "x")], conversation=[("customer", "x")], intent="x"
    )
    return set(_PLACEHOLDER.findall("\n".join(m["content"] for m in rendered)))


def placeholders() -> list[str]:
    """The ``{{names}}`` a prompt may use (those of the known ones ``PromptTemplate.render`` fills)."""
    probe = PromptTemplate(messages=(("user", " ".join("{{" + p + "}}" for p in _KNOWN_PLACEHOLDERS)),))
    return [p for p in _KNOWN_PLACEHOLDERS if p not in _unfilled(probe)]


def _validate(template: PromptTemplate) -> PromptTemplate:
    if not template.messages:
        raise ValueError("the prompt has no messages")
    text = "\n".join(content for _, content in template.messages)
    used = set(_PLACEHOLDER.findall(text))
    unknown = sorted(_unfilled(template) & used)
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{{{unknown[0]}}}}}; the generator fills {', '.join(placeholders())}"
        )
    if "articles" not in used:
        raise ValueError("the prompt must contain {{articles}}: replies are grounded in them")
    if not used & {"question", "conversation"}:
        raise ValueError("the prompt must contain {{question}} or {{conversation}}")
    bad = sorted({role for role, _ in template.messages} - _ROLES)
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}: use system, user or assistant")
    return template


def template_from_file(path: Path) -> tuple[PromptTemplate, str | None]:
    """(template, commit message) from a YAML file: ``messages:`` (a list of ``role``/``content``) and an
    optional ``commit_message:``; a bare list of messages also works. ``show-prompt`` writes this format."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    commit = None
    if isinstance(data, dict):
        commit = data.get("commit_message")
        data = data.get("messages")
    if not isinstance(data, list) or not all(
        isinstance(m, dict) and {"role", "content"} <= m.keys() for m in data
    ):
        raise ValueError(f"{path}: expected `messages:` with a list of {{role, content}} entries")
    return _validate(PromptTemplate.from_registry_template(data, version=Path(path).name)), commit


def template_to_yaml(template: PromptTemplate) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None  # multi-line contents stay readable (and editable)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    body = yaml.dump(
        {"messages": template.as_registry_template()},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=110,
    )
    return (
        f"# prompt {template.version}; placeholders: "
        + ", ".join("{{" + p + "}}" for p in placeholders())
        + "\n# register: python -m pipelines.generation register-prompt --file THIS.yaml --alias challenger\n"
        + "commit_message: describe the change\n"
        + body
    )


def register_prompt_template(
    template: PromptTemplate,
    settings: Settings,
    *,
    alias: str | None = "champion",
    name: str = PROMPT_NAME,
    commit_message: str | None = None,
) -> str:
    """A new version of prompt ``name`` holding ``template``, ``alias`` pointed at it; returns ``NAME@VERSION``."""
    from .registry import mlflow_store

    _validate(template)
    with mlflow_store(settings) as client:
        version = client.register_prompt(
            name=name,
            template=template.as_registry_template(),
            commit_message=commit_message or f"from {template.version}",
            tags={"source": template.version},
        )
        if alias:
            client.set_prompt_alias(name, alias, version.version)
    label = f"{name}@{version.version}"
    log.info("registered prompt %s%s", label, f" as @{alias}" if alias else "")
    return label


def promote_prompt(settings: Settings, name: str = PROMPT_NAME) -> str:
    """The prompt's challenger becomes its champion; the challenger alias is removed."""
    from .registry import mlflow_store

    with mlflow_store(settings) as client:
        prompt = client.load_prompt(f"prompts:/{name}@challenger", allow_missing=True, cache_ttl_seconds=0)
        if prompt is None:
            raise LookupError(f"prompt {name} has no @challenger to promote")
        client.set_prompt_alias(name, "champion", prompt.version)
        client.delete_prompt_alias(name, "challenger")
    return f"prompts:/{name}@champion -> version {prompt.version} (challenger alias removed)"


# ---------------------------------------------------------------- setup


def setup(settings: Settings, *, if_missing: bool = False) -> dict[str, str | None]:
    """The packaged SmolLM2 → ``response_generator`` (1.0.0 for the first version) ``@champion``, unless
    ``if_missing`` and a champion or challenger is registered; the built-in prompt → ``assist_reply@champion``
    unless the prompt already has a champion (other than an earlier built-in template, which the current one
    replaces). Returns what was registered (None: nothing)."""
    done: dict[str, str | None] = {"model": None, "prompt": None}
    registered = None
    if if_missing:
        registered = registered_version(MODEL_NAME, settings)
    if registered is not None:
        print(f"==> {MODEL_NAME}: version {registered} is registered, skipping", flush=True)
    else:
        folder = settings.llm_dir / SMOLLM2_FOLDER
        if not is_hf_causal_lm(folder):
            gguf_to_hf(packaged_smollm2_gguf(), folder)
        done["model"] = register_generator(folder, settings, alias="champion").uri
    prompt = None
    if settings.mlflow_store_exists:
        prompt = _client(settings).load_prompt(
            f"prompts:/{PROMPT_NAME}@champion", allow_missing=True, cache_ttl_seconds=0
        )
    stale = (
        prompt is not None
        and (prompt.tags or {}).get("source") == DEFAULT_TEMPLATE.version
        and PromptTemplate.from_registry_template(prompt.template, "").messages != DEFAULT_TEMPLATE.messages
    )
    if prompt is not None and not stale:
        print(f"==> prompt {PROMPT_NAME}: version {prompt.version} is the champion, skipping", flush=True)
    else:
        # none yet, or the champion is an earlier built-in template (never a prompt someone registered)
        done["prompt"] = register_prompt_template(
            DEFAULT_TEMPLATE, settings, alias="champion", commit_message="built-in template (setup)"
        )
        print(f"==> prompt {done['prompt']} registered as @champion", flush=True)
    return done


# ---------------------------------------------------------------- evaluation

_WORD = re.compile(r"[a-z0-9]+")
_CITATION = re.compile(r"\s*\[(?:kb|KB)[-\w.]*\]")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 (lower-cased alphanumeric words, citation marks dropped)."""
    pred = _WORD.findall(_CITATION.sub("", prediction).lower())
    ref = _WORD.findall(_CITATION.sub("", reference).lower())
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The evaluation's metrics from its per-question rows (see ``evaluate``)."""
    n = max(len(rows), 1)
    latencies = [r["latency_s"] for r in rows]
    tokens = sum(r["completion_tokens"] for r in rows)
    return {
        "questions": float(len(rows)),
        "retrieval_hit_rate": round(sum(r["retrieved_expected"] for r in rows) / n, 4),
        "grounded_rate": round(sum(r["grounded"] for r in rows) / n, 4),
        "cited_expected_rate": round(sum(r["cited_expected"] for r in rows) / n, 4),
        "answer_overlap": round(sum(r["answer_f1"] for r in rows) / n, 4),
        "answer_overlap_articles_baseline": round(sum(r["baseline_f1"] for r in rows) / n, 4),
        # what the agent is shown: the generated reply when grounded, the top article's reply otherwise
        "answer_overlap_shown": round(sum(r["shown_f1"] for r in rows) / n, 4),
        "latency_p50_s": round(_percentile(latencies, 0.5), 3),
        "latency_p95_s": round(_percentile(latencies, 0.95), 3),
        "tokens_per_s": round(tokens / sum(latencies), 2) if sum(latencies) > 0 else 0.0,
        "completion_tokens_mean": round(tokens / n, 1),
    }


def _build_generator(backend: str, folder: Path, name: str, settings: Settings) -> Any:
    if backend == "transformers":
        try:
            from models.generation.hf_generate import TransformersGenerator
        except ImportError as exc:
            raise ImportError(
                "the transformers backend (models/generation/hf_generate.py) is not available"
            ) from exc
        return TransformersGenerator(folder, name=name)
    import os

    # vLLM logs to stdout by default (its engine processes too): keep stdout for the JSON report
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from models.generation.vllm_engine import VllmGenerator

    return VllmGenerator(
        folder,
        name=name,
        kv_cache_gib=settings.generation_kv_cache_gib,
        max_num_seqs=settings.generation_max_num_seqs,
    )


async def _generate_all(
    generator: Any,
    template: PromptTemplate,
    cases: Sequence[tuple[dict[str, Any], list[Any], dict[str, str]]],
    settings: Settings,
    progress: bool,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from models.generation.base import GenerationRequest, collect
    from models.generation.grounding import check_grounding, clean_answer

    from .indexing import provider_name

    provider = provider_name(settings.kb_path)  # as serving renders and checks replies
    rows = []
    for question, hits, replies in tqdm(
        cases, desc="generating", unit="question", file=sys.stderr, disable=not progress
    ):
        # as the serving stage (pipelines/stages/generate.py) builds them: the prompt shows each article's reply,
        # the check reads its chunk and reply
        articles = [
            ArticleContext(h.id, h.title, f"{h.text.strip()}\n{h.reply.strip()}".strip(), summary=h.reply)
            for h in hits
        ]
        messages = template.render(
            articles=articles, conversation=[("customer", question["query"])], intent=None, provider=provider
        )
        started = time.perf_counter()
        text, last = await collect(
            generator, GenerationRequest(messages=messages, max_tokens=settings.generation_max_tokens)
        )
        latency = time.perf_counter() - started
        answer = clean_answer(text, truncated=last.finish_reason == "length")
        shown, report = check_grounding(
            answer,
            articles,
            min_support=settings.grounding_min_support,
            question=f"{question['query']} {provider}",  # the provider's name is not a fact
        )
        gold = question["gold"]
        references = [replies[g] for g in gold if g in replies]
        baseline = hits[0].reply if hits else ""

        def f1(candidate: str, references: list[str] = references) -> float:
            return max((token_f1(candidate, ref) for ref in references), default=0.0)

        rows.append(
            {
                "question": question["query"],
                "expected": gold,
                "retrieved": [h.id for h in hits],
                "retrieved_expected": any(h.id in gold for h in hits),
                "answer": answer,
                "grounded": report.grounded,
                "support": report.support,
                "reason": report.reason,
                "citations": report.citations,
                "cited_expected": any(c in gold for c in report.citations),
                "answer_f1": round(f1(shown), 4),
                "baseline_f1": round(f1(baseline), 4),
                "shown_f1": round(f1(shown if report.grounded else baseline), 4),
                "latency_s": round(latency, 4),
                "prompt_tokens": last.prompt_tokens,
                "completion_tokens": last.completion_tokens,
                "finish_reason": last.finish_reason,
            }
        )
    return rows


def evaluate(
    settings: Settings,
    *,
    backend: str = "vllm",
    limit: int | None = None,
    alias: str = "champion",
    prompt: str | None = None,
    eval_file: Path = EVAL_FILE,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate replies to the held-out KB questions and score them; logged to an MLflow run in the training
    experiment. Returns the report (params, metrics, per-question rows).

    Per question: the real embedder and retriever pick ``assist_top_k`` articles, the prompt template
    (``prompt`` or ``settings.generation_prompt``) is rendered with them and the question, the model
    (``alias`` of the registered generator, or the configured folder/GGUF) answers greedily, and the answer is
    cleaned and checked for grounding. Metrics: ``grounded_rate``; ``cited_expected_rate`` (an expected
    article among the citations); ``answer_overlap`` (token F1 against the expected article's reply) next to
    ``answer_overlap_articles_baseline`` (the top article's reply) and ``answer_overlap_shown`` (the reply
    when grounded, the baseline otherwise); latency p50/p95 and tokens/s (one request at a time)."""
    from models.registry import is_mlflow_uri

    from .backends import build_embedder, build_retriever
    from .indexing import build_index, load_articles
    from .registry import _experiment_id, mlflow_store
    from .training.reranker import load_eval_queries

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    spec = settings.generation_model
    if is_mlflow_uri(spec) and spec.startswith("models:/") and "@" in spec:
        spec = spec.rsplit("@", 1)[0] + f"@{alias}"
    model_settings = settings.model_copy(update={"generation_model": spec})
    say(f"==> resolving the generator {spec}")
    folder, model_label = resolve_generator_model(model_settings)
    template = load_prompt_template(settings, prompt)
    say(f"    {model_label} ({folder}); prompt {template.version}")

    questions = load_eval_queries(eval_file)[: limit or None]
    say(f"==> retrieving articles for {len(questions)} held-out questions ({eval_file.name})")
    build_index(settings)
    embedder = build_embedder(settings)
    retriever = build_retriever(settings)
    replies = {a["id"]: str(a.get("reply", "")) for a in load_articles(settings.kb_path)}
    vectors = embedder.embed_batch([q["query"] for q in questions])
    results = retriever.search_batch(vectors, settings.assist_top_k, texts=[q["query"] for q in questions])
    reranker = results[0].reranker if results else None
    retriever.reranker.close()
    cases = [(q, list(r.hits), replies) for q, r in zip(questions, results, strict=True)]

    say(f"==> loading {model_label} with the {backend} backend")
    started = time.perf_counter()
    generator = _build_generator(backend, folder, model_label, settings)
    say(f"    ready in {time.perf_counter() - started:.0f} s")

    async def run(generator: Any) -> list[dict[str, Any]]:
        try:
            return await _generate_all(generator, template, cases, settings, progress)
        finally:
            await generator.close()

    rows = asyncio.run(run(generator))
    metrics = summarize(rows)
    params = {
        "model": model_label,
        "model_uri": spec,
        "prompt": template.version,
        "backend": backend,
        "eval_file": eval_file.name,
        "limit": limit or "all",
        "top_k": settings.assist_top_k,
        "max_tokens": settings.generation_max_tokens,
        "min_support": settings.grounding_min_support,
        "embedder": getattr(embedder, "name", "minilm"),
        "reranker": reranker or "faiss",
    }
    report: dict[str, Any] = {"params": params, "metrics": metrics, "rows": rows}

    say("==> logging the evaluation to MLflow")
    import mlflow

    with mlflow_store(settings) as client:
        experiment = _experiment_id(client, settings)
        tags = {"task": "generation_eval", "model": model_label, "prompt": template.version}
        registered = re.fullmatch(r"(\w+)@(\d+)", model_label)
        if registered:
            tags.update(model_name=registered.group(1), model_version=registered.group(2))
        with mlflow.start_run(experiment_id=experiment, run_name=f"evaluate-{model_label}", tags=tags) as run:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_dict(report, "evaluation/generation_eval.json")
            if "@" in template.version and template.version != "builtin":
                name, version = template.version.split("@", 1)
                try:
                    client.link_prompt_version_to_run(run.info.run_id, f"prompts:/{name}/{version}")
                except Exception as exc:  # linking is bookkeeping: the evaluation itself is logged
                    log.warning("could not link prompt %s to the run: %s", template.version, exc)
        if registered:
            name, version = registered.groups()
            client.set_model_version_tag(name, version, "evaluation_run", run.info.run_id)
            for key in ("grounded_rate", "answer_overlap"):
                client.set_model_version_tag(name, version, f"eval_{key}", str(metrics[key]))
    report["run_id"] = run.info.run_id
    return report


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generation",
        description="Register, resolve and evaluate the response generator's model (`response_generator`) and "
        "prompt (`assist_reply`) in MLflow (the embedded SQLite store unless SWITCHBOARD_MLFLOW_TRACKING_URI "
        "is set).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    setup_p = sub.add_parser(
        "setup",
        help="register the packaged SmolLM2 and the built-in prompt as @champion",
        description="Convert the packaged SmolLM2-135M-Instruct GGUF into <data_dir>/llm/smollm2-135m-instruct, "
        "register it as response_generator @champion, and register the built-in prompt as assist_reply "
        "@champion unless the prompt has a champion.",
    )
    setup_p.add_argument(
        "--if-missing", action="store_true", help="skip the model when a version is registered (make serve)"
    )
    prompt_p = sub.add_parser(
        "register-prompt",
        help="register a prompt template version",
        description="Register a chat prompt (YAML: `messages:` list of role/content with {{articles}} and "
        "{{question}} or {{conversation}}; also {{intent}}, {{provider}}, {{example_id}}) as a new version of "
        "assist_reply.",
    )
    source = prompt_p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="YAML file (`show-prompt` prints one to start from)")
    source.add_argument("--builtin", action="store_true", help="the built-in template")
    prompt_p.add_argument(
        "--alias", default="champion", help="alias for the new version (default champion; none: no alias)"
    )
    prompt_p.add_argument("--message", help="commit message (default: the file's commit_message)")
    show_p = sub.add_parser(
        "show-prompt",
        help="print the prompt serving uses, as YAML",
        description="Print the configured prompt (or --alias of assist_reply) in the YAML register-prompt reads.",
    )
    show_p.add_argument("--alias", help="show assist_reply@ALIAS instead of SWITCHBOARD_GENERATION_PROMPT")
    model_p = sub.add_parser(
        "register-model",
        help="register a causal-LM folder or GGUF as response_generator",
        description="Register a Hugging Face causal-LM folder (config, safetensors, tokenizer, chat template) or "
        "a GGUF file (converted into <data_dir>/llm first) as a new version of response_generator.",
    )
    model_p.add_argument("source", type=Path, help="model folder or .gguf file")
    model_p.add_argument("--semver", help="semantic version tag (default: the next minor version)")
    model_p.add_argument(
        "--alias",
        default="auto",
        choices=["auto", "champion", "challenger", "none"],
        help="alias for the new version (auto: champion if there is none, else challenger)",
    )
    promote_p = sub.add_parser(
        "promote",
        help="make the challenger the champion",
        description="Point @champion at the @challenger version and remove @challenger (the model by default).",
    )
    promote_p.add_argument("--prompt", action="store_true", help="promote the prompt's challenger instead")
    eval_p = sub.add_parser(
        "evaluate",
        help="generate replies to the held-out KB questions; log metrics to MLflow and print JSON",
        description="Retrieve articles for each held-out question (pipelines/kb/retrieval_eval.yaml), generate "
        "a reply, check its grounding and score it against the expected article's reply; logs an MLflow run "
        "in the switchboard-models experiment and prints the JSON report (progress goes to stderr).",
    )
    eval_p.add_argument(
        "--backend", default="vllm", choices=["vllm", "transformers"], help="generator backend"
    )
    eval_p.add_argument("--limit", type=int, help="first N questions only")
    eval_p.add_argument("--alias", default="champion", help="model alias to evaluate (default champion)")
    eval_p.add_argument("--prompt-alias", help="evaluate assist_reply@ALIAS instead of the configured prompt")
    eval_p.add_argument(
        "--rows", action="store_true", help="include the per-question rows in the printed JSON"
    )
    eval_p.add_argument(
        "--output", type=Path, help="also write the full report (with rows) to this JSON file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = Settings()
    try:
        if args.command == "setup":
            setup(settings, if_missing=args.if_missing)
        elif args.command == "register-prompt":
            if args.builtin:
                template, commit = DEFAULT_TEMPLATE, "built-in template"
            else:
                template, commit = template_from_file(args.file)
            alias = None if args.alias == "none" else args.alias
            label = register_prompt_template(
                template, settings, alias=alias, commit_message=args.message or commit
            )
            print(
                f"prompts:/{label.replace('@', '/')}"
                + (f"  (prompts:/{PROMPT_NAME}@{alias})" if alias else "")
            )
        elif args.command == "show-prompt":
            spec = f"prompts:/{PROMPT_NAME}@{args.alias}" if args.alias else None
            print(template_to_yaml(load_prompt_template(settings, spec)), end="")
        elif args.command == "register-model":
            version = register_generator(
                args.source, settings, semver=args.semver, alias=None if args.alias == "none" else args.alias
            )
            print(version.uri + (f"  (models:/{version.name}@{version.alias})" if version.alias else ""))
        elif args.command == "promote":
            if args.prompt:
                print(promote_prompt(settings))
            else:
                from .registry import promote_challenger

                print(promote_challenger(MODEL_NAME, settings))
        elif args.command == "evaluate":
            prompt = f"prompts:/{PROMPT_NAME}@{args.prompt_alias}" if args.prompt_alias else None
            report = evaluate(
                settings, backend=args.backend, limit=args.limit, alias=args.alias, prompt=prompt
            )
            if args.output:
                args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
                print(f"==> report with per-question rows: {args.output}", file=sys.stderr)
            if not args.rows:
                report = {k: v for k, v in report.items() if k != "rows"}
            print(json.dumps(report, indent=1, default=str))
    except (FileNotFoundError, LookupError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: keep the CLI behind this guard
    sys.exit(main())
