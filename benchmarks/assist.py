#!/usr/bin/env python
"""Assist benchmark: time to first token and to the full generated reply at N concurrent requests; JSON out.

vLLM's continuously batched engine next to a plain transformers ``generate`` loop on the same model, one after
the other in one run (``engines``, the default); or end to end through a running app's websocket (``--app``).

    python benchmarks/assist.py                                 # vLLM then transformers, 1 4 8 16 in flight
    python benchmarks/assist.py --concurrency 1 2 --requests 2  # a quick look
    python benchmarks/assist.py --start --concurrency 1 4       # end to end: launch a local app for the run
    python benchmarks/assist.py --app ws://127.0.0.1:8000/v1/sessions --token T    # a running server
    python benchmarks/assist.py --out b.json --compare a.json   # run, and the deltas against an earlier run
    python benchmarks/assist.py --compare a.json b.json         # compare two results

Engines. The prompts are those serving builds: each held-out question (``pipelines/kb/retrieval_eval.yaml``)
goes through the guardrail, the embedder, the intent model (the planner's threshold) and the retriever (top
``assist_top_k`` articles, the intent's category preferred), then ``ReplyWriter.request`` renders the
configured prompt (``load_prompt_template``: the registered champion, else the built-in one) as the generation
stage does. The packaged SmolLM2-135M-Instruct folder is loaded by each backend in turn, never both at once
(the vLLM engine is shut down before transformers loads). Same ``generation_max_tokens``, greedy decoding.
For each concurrency N, ``--requests`` requests (default max(8, 2N)) run with N in flight (N workers, each
sending its next request when its last one ends); the questions are a seeded shuffle, the same for both
backends. One warm-up request per backend is not counted.
- ttft_ms: request sent -> first non-empty text delta (the transformers loop serves one request at a time, so
  its TTFT includes the wait behind the requests ahead); full_ms: request sent -> last chunk.
- requests_per_s, tokens_per_s: completed requests and completion tokens / wall time of the level.
- grounded_rate: share of replies that pass ``check_grounding`` as serving checks them (``clean_answer``,
  each article's chunk and reply, ``grounding_min_support``, the question plus the provider's name).
- speedup[N]: vLLM tokens_per_s / transformers tokens_per_s (``speedup_requests``: the same, requests/s).

App (``--app [URL]``, or ``--start`` to launch one). N chat sessions (PROTOCOL v1) at once, each sending
``--messages`` held-out questions one after another. Per message: articles_ms (send -> the
``assist.suggestion`` with ``final: false``, or the only one when nothing is generated), ttft_ms (send -> the
first ``assist.delta``), full_ms (send -> the final ``assist.suggestion``); counts of ``source`` (generated /
cache / articles_only) and of ``fallback`` reasons; server_first_token_ms: the final's ``first_token_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import platform
import random
import sys
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._stats import emit  # noqa: E402
from benchmarks._stats import percentiles as _percentiles  # noqa: E402

BACKENDS = ("vllm", "transformers")
SMOLLM2_DIR = REPO / ".switchboard" / "llm" / "smollm2-135m-instruct"
KEY_METRICS = (
    ("ttft_p50_ms", lambda r: r["ttft_ms"].get("p50")),
    ("ttft_p95_ms", lambda r: r["ttft_ms"].get("p95")),
    ("full_p50_ms", lambda r: r["full_ms"].get("p50")),
    ("full_p95_ms", lambda r: r["full_ms"].get("p95")),
    ("requests_per_s", lambda r: r.get("requests_per_s")),
    ("tokens_per_s", lambda r: r.get("tokens_per_s")),
    ("grounded_rate", lambda r: r.get("grounded_rate")),
)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    return _percentiles(values, digits=1)


def load_questions(seed: int) -> list[str]:
    """The held-out questions (never trained on), in a seeded order."""
    import yaml

    from pipelines.generation import EVAL_FILE

    questions = [str(q["query"]) for q in yaml.safe_load(EVAL_FILE.read_text())["queries"]]
    random.Random(seed).shuffle(questions)
    return questions


# ---------------------------------------------------------------- engines


@dataclasses.dataclass(frozen=True)
class Case:
    question: str  # redacted, as the generation stage sees it
    request: Any  # GenerationRequest
    articles: list[Any]  # ArticleContext, what the grounding check reads


def build_cases(settings: Any, questions: list[str]) -> tuple[list[Case], dict[str, Any]]:
    """Serving's prompts for ``questions``: guardrail → embedder → intent (planner threshold) → retriever →
    ``ReplyWriter.request``. Every model used here is released before the generators load."""
    from pipelines.backends import build_embedder, build_guardrail
    from pipelines.generation import load_prompt_template
    from pipelines.indexing import build_index, provider_name
    from pipelines.model_services import IntentService, RetrieverService
    from pipelines.stages.generate import ReplyWriter

    build_index(settings)
    redacted = [r.text for r in build_guardrail(settings).redact_batch(questions)]
    vectors = build_embedder(settings).embed_batch(redacted)
    predictions = IntentService(settings, refresh=False).predict_batch(redacted, vectors)
    intents = ["human_agent" if p.confidence < settings.intent_threshold else p.intent for p in predictions]
    retriever = RetrieverService(settings, refresh=False)
    results = retriever.search_batch(vectors, settings.assist_top_k, prefer=intents, texts=redacted)
    reranker = results[0].reranker if results else None
    retriever.reranker.close()
    template = load_prompt_template(settings)
    provider = provider_name(settings.kb_path)
    writer = ReplyWriter(None, None, settings, template, provider=provider)  # type: ignore[arg-type]
    cases = []
    for text, intent, result in zip(redacted, intents, results, strict=True):
        hits = list(result.hits)
        if not hits:  # serving generates nothing without articles (ReplyWriter.wanted)
            continue
        turn = SimpleNamespace(intent=intent)
        state = SimpleNamespace(history=deque([("customer", text)], maxlen=12))
        articles = writer.articles(hits)
        request = writer.request(turn, state, articles, "")  # type: ignore[arg-type]
        cases.append(Case(text, request, articles))
    info = {
        "questions": len(questions),
        "prompts": len(cases),
        "prompt": template.version,
        "provider": provider,
        "top_k": settings.assist_top_k,
        "reranker": reranker or "faiss",
        "max_tokens": settings.generation_max_tokens,
        "temperature": 0.0,
    }
    return cases, info


def build_generator(backend: str, folder: Path, settings: Any) -> Any:
    if backend == "transformers":
        from models.generation.hf_generate import TransformersGenerator

        return TransformersGenerator(folder)
    from models.generation.vllm_engine import VllmGenerator

    return VllmGenerator(
        folder, kv_cache_gib=settings.generation_kv_cache_gib, max_num_seqs=settings.generation_max_num_seqs
    )


async def one_request(generator: Any, case: Case, settings: Any, provider: str) -> dict[str, Any]:
    from models.generation.grounding import check_grounding, clean_answer

    request = dataclasses.replace(case.request, request_id=f"assist-bench-{uuid.uuid4().hex}")
    parts: list[str] = []
    first: float | None = None
    last = None
    started = time.perf_counter()
    async for chunk in generator.stream(request):
        if chunk.text and first is None:
            first = time.perf_counter()
        parts.append(chunk.text)
        last = chunk
    done = time.perf_counter()
    answer = clean_answer("".join(parts), truncated=last is not None and last.finish_reason == "length")
    _, report = check_grounding(
        answer,
        case.articles,
        min_support=settings.grounding_min_support,
        question=f"{case.question} {provider}",  # as the generation stage: the provider's name is not a fact
    )
    return {
        "ttft_ms": ((first or done) - started) * 1000,
        "full_ms": (done - started) * 1000,
        "tokens": last.completion_tokens if last is not None else 0,
        "prompt_tokens": last.prompt_tokens if last is not None else 0,
        "grounded": report.grounded,
    }


async def run_level(
    generator: Any, backend: str, cases: list[Case], concurrency: int, n: int, settings: Any, provider: str
) -> dict[str, Any]:
    from tqdm import tqdm

    items = [cases[k % len(cases)] for k in range(n)]
    pending = iter(items)  # shared by the workers: each takes the next request when its last one ends
    rows: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    bar = tqdm(total=n, desc=f"{backend} x{concurrency}", unit="req", file=sys.stderr, leave=False)

    async def worker() -> None:
        for case in pending:
            try:
                rows.append(await one_request(generator, case, settings, provider))
            except Exception as exc:  # counted and reported: a benchmark does not stop on failures
                errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            bar.update()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    bar.close()
    tokens = sum(r["tokens"] for r in rows)
    return {
        "backend": backend,
        "concurrency": concurrency,
        "requests": n,
        "ok": len(rows),
        "errors": dict(errors),
        "duration_s": round(wall, 2),
        "ttft_ms": percentiles([r["ttft_ms"] for r in rows]),
        "full_ms": percentiles([r["full_ms"] for r in rows]),
        "completion_tokens_mean": round(tokens / len(rows), 1) if rows else 0.0,
        "prompt_tokens_mean": round(sum(r["prompt_tokens"] for r in rows) / len(rows), 1) if rows else 0.0,
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "requests_per_s": round(len(rows) / wall, 3) if wall else 0.0,
        "grounded_rate": round(sum(r["grounded"] for r in rows) / len(rows), 4) if rows else None,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


async def measure(
    generator: Any,
    backend: str,
    cases: list[Case],
    args: argparse.Namespace,
    settings: Any,
    provider: str,
    results: list[dict[str, Any]],
) -> None:
    """Every concurrency level on one loaded backend (after one uncounted warm-up request); closes it."""
    try:
        await one_request(generator, cases[-1], settings, provider)
        for n in args.concurrency:
            requests = args.requests or max(8, 2 * n)
            row = await run_level(generator, backend, cases, n, requests, settings, provider)
            results.append(row)
            say(
                f"    {backend} x{n}: ttft p50 {row['ttft_ms'].get('p50')} ms, full p50 "
                f"{row['full_ms'].get('p50')} ms, {row['tokens_per_s']} tok/s, "
                f"grounded {row['grounded_rate']}"
            )
    finally:
        await generator.close()


def _torch_threads() -> int:
    """The transformers loop's intra-op threads (vLLM's CPU worker binds its own OpenMP threads)."""
    import torch

    return torch.get_num_threads()


def run_engines(args: argparse.Namespace) -> dict[str, Any]:
    from models.generation.convert import gguf_to_hf, packaged_smollm2_gguf
    from pipelines.config import Settings

    settings = Settings()
    folder = gguf_to_hf(packaged_smollm2_gguf(), SMOLLM2_DIR)
    questions = load_questions(args.seed)
    say(f"==> building serving's prompts for {len(questions)} held-out questions")
    cases, info = build_cases(settings, questions)
    gc.collect()
    say(f"    {info['prompts']} prompts; prompt {info['prompt']}, top {info['top_k']}, {info['reranker']}")

    results: list[dict[str, Any]] = []
    load_s: dict[str, float] = {}
    for backend in args.backends:
        say(f"==> loading {folder.name} with the {backend} backend")
        started = time.perf_counter()
        generator = build_generator(backend, folder, settings)
        load_s[backend] = round(time.perf_counter() - started, 1)
        say(f"    ready in {load_s[backend]:.0f} s")

        asyncio.run(measure(generator, backend, cases, args, settings, info["provider"], results))
        del generator
        gc.collect()  # never two models loaded at once

    def throughput(backend: str, n: int, key: str) -> float | None:
        return next((r[key] for r in results if r["backend"] == backend and r["concurrency"] == n), None)

    def speedup(key: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for n in args.concurrency:
            fast, slow = throughput("vllm", n, key), throughput("transformers", n, key)
            out[str(n)] = round(fast / slow, 2) if fast is not None and slow else None
        return out

    return {
        "mode": "engines",
        "model": folder.name,
        "settings": {**info, "load_s": load_s, "torch_threads": _torch_threads(), "warmup_requests": 1},
        "results": results,
        "speedup": speedup("tokens_per_s"),
        "speedup_requests": speedup("requests_per_s"),
        "speedup_basis": "vllm / transformers tokens_per_s at the same concurrency",
    }


# ---------------------------------------------------------------- app


async def run_sessions(
    url: str, token: str, sessions: int, messages: int, questions: list[str], wait_s: float
) -> dict[str, Any]:
    from tqdm import tqdm

    from serve.client import SessionClient

    articles_ms: list[float] = []
    ttft_ms: list[float] = []
    full_ms: list[float] = []
    server_first_token_ms: list[float] = []
    sources: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    grounded: list[bool] = []
    tokens = 0
    models: Counter[str] = Counter()
    bar = tqdm(total=sessions * messages, desc=f"app x{sessions}", unit="msg", file=sys.stderr, leave=False)

    async def message(c: SessionClient, text: str) -> None:
        nonlocal tokens
        sent = time.perf_counter()
        await c.send({"type": "chat.message", "text": text})
        first_delta = None
        articles_seen = False
        while True:
            event = await c.recv(wait_s)
            now = (time.perf_counter() - sent) * 1000
            kind = event["type"]
            if kind == "error":
                errors[f"message:{event.get('code')}"] += 1
                return
            if kind == "assist.delta" and first_delta is None:
                first_delta = now
            if kind != "assist.suggestion":
                continue
            if not event.get("final", True):
                articles_ms.append(now)
                articles_seen = True
                continue
            if not articles_seen:
                articles_ms.append(now)  # generation off (or not wanted): the only suggestion is the articles
            full_ms.append(now)
            if first_delta is not None:
                ttft_ms.append(first_delta)
            if event.get("first_token_ms") is not None:
                server_first_token_ms.append(event["first_token_ms"])
            sources[event.get("source") or "none"] += 1
            if event.get("fallback"):
                fallbacks[event["fallback"]] += 1
            if event.get("grounding"):
                grounded.append(bool(event["grounding"].get("grounded")))
            tokens += (event.get("tokens") or {}).get("completion", 0)
            if event.get("model"):
                models[event["model"]] += 1
            return

    async def session(i: int) -> None:
        try:
            async with SessionClient(url, token, open_timeout=120) as c:
                started = await c.start(customer_id=f"bench-assist-{i}")
                if started.get("type") != "session.started":
                    errors[f"start:{started.get('code')}"] += 1
                    return
                for m in range(messages):
                    await message(c, questions[(i * messages + m) % len(questions)])
                    bar.update()
                await c.end(wait_s=wait_s)
        # counted and reported: a benchmark reports failures, it does not stop on them
        except Exception as exc:
            errors[f"exception:{type(exc).__name__}"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    wall = time.perf_counter() - started
    bar.close()
    return {
        "backend": "app",
        "concurrency": sessions,
        "requests": sessions * messages,
        "ok": len(full_ms),
        "errors": dict(errors),
        "duration_s": round(wall, 2),
        "articles_ms": percentiles(articles_ms),
        "ttft_ms": percentiles(ttft_ms),
        "full_ms": percentiles(full_ms),
        "server_first_token_ms": percentiles(server_first_token_ms),
        "sources": dict(sources),
        "fallbacks": dict(fallbacks),
        "models": dict(models),
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "requests_per_s": round(len(full_ms) / wall, 3) if wall else 0.0,
        "grounded_rate": round(sum(grounded) / len(grounded), 4) if grounded else None,
    }


def run_app(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks._server import server

    questions = load_questions(args.seed)
    target = argparse.Namespace(url=args.app, token=args.token, start=args.start, port=args.port)
    results = []
    with server(target) as running:
        for n in args.concurrency:
            row = asyncio.run(
                run_sessions(running.url, running.token, n, args.messages, questions, args.wait_s)
            )
            results.append(row)
            say(
                f"    app x{n}: articles p50 {row['articles_ms'].get('p50')} ms, full p50 "
                f"{row['full_ms'].get('p50')} ms, sources {row['sources']}, errors {row['errors']}"
            )
        url = running.url
    return {
        "mode": "app",
        "url": url,
        "messages_per_session": args.messages,
        "results": results,
        "speedup": {},
    }


# ---------------------------------------------------------------- compare / CLI


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Key metrics of every (backend, concurrency) both results hold, as [a, b, b/a]."""

    def rows(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f"{x['backend']}@{x['concurrency']}": x for x in r.get("results", [])}

    ra, rb = rows(a), rows(b)
    out: dict[str, Any] = {
        "a": a.get("label", "a"),
        "b": b.get("label", "b"),
        "note": "each row: [a, b, b/a]",
    }
    for key in sorted(set(ra) & set(rb), key=lambda k: (k.split("@")[0], int(k.split("@")[1]))):
        table = {}
        for name, fn in KEY_METRICS:
            x, y = fn(ra[key]), fn(rb[key])
            table[name] = [
                x,
                y,
                round(y / x, 3) if isinstance(x, int | float) and x and y is not None else None,
            ]
        out[key] = table
    for name in ("speedup",):
        shared = sorted(set(a.get(name) or {}) & set(b.get(name) or {}), key=int)
        if shared:
            out[name] = {n: [a[name][n], b[name][n]] for n in shared}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 4, 8, 16],
        help="requests in flight at once (app: concurrent sessions), one level each (default %(default)s)",
    )
    parser.add_argument("--requests", type=int, help="engines: requests per level (default max(8, 2 x N))")
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="engines: backends, in order"
    )
    parser.add_argument("--seed", type=int, default=7, help="question order seed (default %(default)s)")
    app = parser.add_argument_group("app mode (end to end through the websocket)")
    app.add_argument(
        "--app",
        nargs="?",
        const="ws://127.0.0.1:8000/v1/sessions",
        metavar="URL",
        help="benchmark a running server (default URL %(const)s)",
    )
    app.add_argument(
        "--token", help="bearer token (default: $SWITCHBOARD_DEV_TOKEN or .switchboard/dev-token)"
    )
    app.add_argument("--start", action="store_true", help="launch the app locally for the run, stop it after")
    app.add_argument("--port", type=int, help="HTTP port for --start (default: a free port)")
    app.add_argument("--messages", type=int, default=2, help="questions per session (default %(default)s)")
    app.add_argument(
        "--wait-s", type=float, default=120.0, help="longest wait for one event (default %(default)s)"
    )
    parser.add_argument("--label", default=None, help="name for this run in comparisons")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="A.json B.json: compare two results (no run); A.json: run, then add the deltas against A",
    )
    args = parser.parse_args()

    if args.compare and len(args.compare) > 2:
        parser.error("--compare takes one or two files")
    if args.compare and len(args.compare) == 2:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        print(json.dumps(compare(a, b), indent=2))
        return 0
    earlier = json.loads(args.compare[0].read_text()) if args.compare else None

    # vLLM logs to stdout by default (its engine process too): stdout carries only the JSON result
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before = round(os.getloadavg()[0], 2)
    app_mode = args.app is not None or args.start
    if app_mode and args.app is None:
        args.app = "ws://127.0.0.1:8000/v1/sessions"
    with contextlib.redirect_stdout(sys.stderr):
        body = run_app(args) if app_mode else run_engines(args)
    result = {
        "benchmark": "assist",
        "label": args.label or f"{body['mode']}-{'-'.join(map(str, args.concurrency))}",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        **body,
    }
    if earlier is not None:
        result["compare"] = compare(earlier, result)
    emit(result, args.out)
    errors = sum(sum(r.get("errors", {}).values()) for r in result["results"])
    return 0 if not errors else 1


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: keep the run behind this guard
    sys.exit(main())
