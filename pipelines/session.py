"""The session pipeline: plain asyncio over typed events, no Ray.

    guardrail → transcript → (sentiment ∥ planner) → assist → escalation → store

``Pipeline`` is shared by every session of a process (stages, store, caches); ``SessionState`` is one
conversation. Events are pushed to ``emit`` as soon as each stage produces them, and every emitted event is
also appended to the session's stored event log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.asr.base import Word
from models.generation.grounding import DEFAULT_TEMPLATE, PromptTemplate

from . import metrics, tracing
from .analytics import CallSignals, quality_summary
from .config import Settings
from .crm import CrmConnector, NullCrm
from .errors import ProtocolError, SwitchboardError
from .events import (
    ChatMessage,
    ErrorEvent,
    Escalation,
    SessionEnded,
    SessionStart,
    SessionStarted,
    Suggestion,
    SuggestionFeedback,
    TranscriptFinal,
    _Event,
    new_id,
)
from .handoff import CrmSession, CrmSync, Handoff
from .logs import bind_session
from .metrics import count_feedback, count_prediction, count_shadow
from .overload import LoadGovernor
from .ports import FeaturePort, ModelPorts
from .review import ReviewQueue
from .served import assign_variant
from .stages.assist import AssistStage
from .stages.base import Stage, Turn
from .stages.escalation import PRIORITIES, EscalationRules, EscalationStage
from .stages.generate import ReplyWriter
from .stages.guardrail import GuardrailStage
from .stages.planner import PlannerStage
from .stages.sentiment import SentimentStage
from .storage import SessionStore
from .tenants import TenantDirectory
from .words import align_words

__all__ = ["Pipeline", "SessionState", "Emit"]

log = logging.getLogger("switchboard.pipeline")

Emit = Callable[[_Event], Awaitable[None]]


@dataclass
class SessionState:
    session_id: str
    tenant: str
    customer_id: str
    channel: str
    seq: int = 0  # next event sequence number
    turns: int = 0
    negative_streak: int = 0
    sentiment_sum: float = 0.0
    escalations: int = 0
    fired_rules: set[str] = field(default_factory=set)
    suggestions: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)
    ended: bool = False
    variant: str = "champion"  # A/B arm for this session's models
    signals: CallSignals = field(default_factory=CallSignals)  # for the post-call analytics
    features: asyncio.Future | None = None  # the customer's online features, fetched at session start
    _features_reader: Callable[[], Awaitable[Any]] | None = None  # one retry after a timeout or error
    history: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=6))  # (speaker, redacted)
    generation_tokens: int = 0  # prompt + completion tokens this session spent on generated replies
    stage_calls: int = 0  # analysis stages run for this session (each one or two model requests): its cost
    generating: set[asyncio.Task] = field(default_factory=set)  # replies still being generated
    suggestion_models: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (source, model)
    crm: CrmSession = field(default_factory=CrmSession)  # CRM context, case and notes
    routed: bool = False  # an escalation was routed to a human agent (a seat or a queue place to release)
    routed_at: float = 0.0  # time.time() of the last routing
    span: Any = None  # the session's root trace span (pipelines/tracing.py), ended with the session

    async def customer_features(self) -> Any:
        """The online features (None when no feature store is configured). The read started at session start;
        if it missed its budget or failed (a cold or busy store), it is tried once more now, with the same
        timeout, and the result is kept for the rest of the session."""
        if self.features is None:
            return None
        features = await self.features
        if getattr(features, "source", "online") in ("timeout", "error") and self._features_reader:
            reader, self._features_reader = self._features_reader, None
            self.features = asyncio.ensure_future(reader())
            features = await self.features
        return features

    def clock(self) -> float:
        """Seconds since the session (this connection) started."""
        return round(time.perf_counter() - self.started, 3)


class Pipeline:
    def __init__(
        self,
        ports: ModelPorts,
        store: SessionStore,
        review: ReviewQueue,
        settings: Settings,
        features: FeaturePort | None = None,
        prompt: PromptTemplate | None = None,
        provider: str = "our organisation",
        handoff: Handoff | None = None,
        crm: CrmConnector | None = None,
    ) -> None:
        self.settings = settings
        self.handoff = handoff  # escalations are routed to human agents (None: alerts only)
        self.crm = CrmSync(crm or NullCrm(), context_timeout_s=settings.crm_timeout_s)
        self.store = store
        self.ports = ports
        self.features = features
        self.tenants = TenantDirectory.load(settings.tenants_file)  # per-tenant rules, models, KB
        t = settings.stage_timeout_s
        self.guardrail = GuardrailStage(ports.guardrail, review, timeout_s=t)
        self.sentiment = SentimentStage(ports.sentiment, timeout_s=t)
        self.planner = PlannerStage(
            ports.embedder, ports.intent, threshold=settings.intent_threshold, timeout_s=t
        )
        self.assist = AssistStage(
            ports.embedder,
            ports.retriever,
            top_k=settings.assist_top_k,
            timeout_s=t,
            budget_s=settings.assist_budget_ms / 1000.0,
            tenants=self.tenants,
        )
        self.writer = ReplyWriter(
            ports.generator, ports.guardrail, settings, prompt or DEFAULT_TEMPLATE, provider=provider
        )
        self.writer.tenants = self.tenants
        self.escalation = EscalationStage(EscalationRules.load(settings.escalation_rules), timeout_s=t)
        self.governor = LoadGovernor.from_settings(settings)  # shedding under overload, session admission
        self._escalations = {  # a tenant with its own rules gets its own stage
            tenant: EscalationStage(EscalationRules.load(cfg.escalation_rules), timeout_s=t)
            for tenant in self.tenants.tenants
            if (cfg := self.tenants.get(tenant)).escalation_rules is not None
        }

    def escalation_for(self, tenant: str) -> EscalationStage:
        return self._escalations.get(tenant, self.escalation)

    def _variant(self, tenant: str, session_id: str) -> str:
        """The tenant's pinned model version (``models`` in tenants.yaml), else the A/B assignment."""
        return self.tenants.get(tenant).models or assign_variant(session_id, self.settings)

    @property
    def stages(self) -> list[Stage]:
        return [self.guardrail, self.sentiment, self.planner, self.assist, self.escalation]

    # ------------------------------------------------------------ session lifecycle

    async def start_session(self, tenant: str, start: SessionStart) -> tuple[SessionState, SessionStarted]:
        if start.session_id:
            row = await self.store.get_session(tenant, start.session_id)
            if row is None:
                raise ProtocolError(
                    f"no session {start.session_id} for this tenant; omit session_id to start a new one",
                    code="session_not_found",
                )
            state = SessionState(
                row.id,
                tenant,
                row.customer_id,
                row.channel,
                seq=row.next_seq,
                turns=row.turns,
                fired_rules=set(row.fired_rules),
                suggestions=set(row.suggestion_ids),
            )
            self.store.reopen_session(row.id, tenant)
            state.variant = self._variant(tenant, row.id)
            started = SessionStarted(
                session_id=row.id,
                tenant=tenant,
                channel=row.channel,  # type: ignore[arg-type]
                resumed=True,
                variant=state.variant,
            )
        else:
            state = SessionState(new_id("ses"), tenant, start.customer_id, start.channel)
            state.variant = self._variant(tenant, state.session_id)
            self.store.create_session(state.session_id, tenant, start.customer_id, start.channel)
            started = SessionStarted(
                session_id=state.session_id, tenant=tenant, channel=start.channel, variant=state.variant
            )
        state.span = tracing.start_span(
            "session", session_id=state.session_id, tenant=tenant, channel=state.channel, resumed=bool(start.session_id)
        )
        bind_session(state.session_id, tenant)
        metrics.session_started(tenant, state.channel)
        metrics.count_event("session.start", tenant, state.channel)
        state.crm = self.crm.start(tenant, state.customer_id)
        if self.features is not None:
            port, customer = self.features, state.customer_id
            state.features = asyncio.ensure_future(port.online(tenant, customer))
            state._features_reader = lambda: port.online(tenant, customer)
        self._record(state, started)
        return state, started

    async def end_session(
        self, state: SessionState, emit: Emit | None, *, status: str = "ended"
    ) -> SessionEnded:
        try:
            with tracing.span("session.end", parent=state.span, status=status):
                return await self._end_session(state, emit, status)
        finally:
            span, state.span = state.span, None
            if span is not None:
                span.end()

    async def _end_session(self, state: SessionState, emit: Emit | None, status: str) -> SessionEnded:
        if state.generating:  # replies being written finish (or hit their own budget) before the summary
            await asyncio.wait(set(state.generating), timeout=self.settings.generation_timeout_s + 5.0)
        state.ended = True
        duration = state.clock()
        metrics.session_ended(state.tenant, state.channel, status, duration)
        summary: dict[str, Any] = {
            "turns": state.turns,
            "escalations": state.escalations,
            "sentiment_avg": round(state.sentiment_sum / state.turns, 4) if state.turns else None,
            "duration_s": duration,
            "variant": state.variant,
        }
        if state.suggestion_models:
            sources = Counter(source for source, _ in state.suggestion_models.values())
            summary["assist"] = {**sources, "tokens": state.generation_tokens}
        summary["cost"] = {"tokens": state.generation_tokens, "stage_calls": state.stage_calls}
        metrics.observe_session_tokens(state.generation_tokens, state.tenant, state.channel)
        if state.features is not None and state.features.done() and not state.features.cancelled():
            summary["customer_features"] = getattr(state.features.result(), "source", None)
        context = await self.crm.context(state.crm) if self.crm.enabled else None
        if context is not None:  # what the CRM knew at the start (no names or contact details)
            summary["crm"] = {"open_tickets": context.open_tickets, "plan": context.plan, "tags": list(context.tags)}
        summary["quality"] = quality_summary(
            state.signals, channel=state.channel, duration_s=duration, escalations=state.escalations
        )
        self.store.add_session_analytics(
            session_id=state.session_id,
            tenant=state.tenant,
            customer_id=state.customer_id,
            channel=state.channel,
            summary=summary,
            variant=state.variant,
        )
        ended = SessionEnded(session_id=state.session_id, summary=summary)
        self._record(state, ended)
        self.store.end_session(state.session_id, state.tenant, status=status)
        # durable before anyone hears of the end (PROTOCOL: `session.ended` follows the flushed transcript)
        await self.store.flush()
        if emit is not None:
            await emit(ended)
        # after the client has its summary: a slow router, feature store or CRM never delays it
        await self._release_agent(state)
        if self.features is not None:
            await self._push_features(state, summary)
        if self.crm.enabled:
            case = await self.crm.close(state.crm, state.tenant, state.session_id, state.customer_id, summary)
            record: dict[str, Any] = {"type": "crm.case", "system": self.crm.crm.name}
            record.update({"case_id": case.case_id, "created": case.created} if case else {"failed": True})
            self._record(state, record)  # in the session log: which case holds it, or that it is owed
            await self.store.flush()
        return ended

    async def _release_agent(self, state: SessionState) -> None:
        if self.handoff is None or not state.routed:
            return
        try:
            await self.handoff.release(state.tenant, state.session_id, time.time() - state.routed_at)
        except Exception as exc:  # the seat is freed by the supervisor view; never fail the session end
            log.warning(
                "releasing the agent seat failed (%s)", type(exc).__name__, extra={"session_id": state.session_id}
            )

    async def _push_features(self, state: SessionState, summary: dict[str, Any]) -> None:
        """Fold this session into the customer's history features (Feast push source). A feature store
        that is down costs the update, never the session end; the daily job recomputes from the store."""
        assert self.features is not None
        try:
            await asyncio.wait_for(
                self.features.push_session_async(
                    state.tenant,
                    state.customer_id,
                    duration_s=summary["duration_s"],
                    sentiment_avg=summary["sentiment_avg"],
                    escalated=state.escalations,
                ),
                timeout=max(1.0, self.settings.stage_timeout_s),
            )
        except Exception as exc:
            log.warning(
                "feature push failed (%s); the daily job will catch up",
                type(exc).__name__,
                extra={"session_id": state.session_id},
            )

    # ------------------------------------------------------------ events in

    async def handle(self, state: SessionState, event: _Event, emit: Emit) -> None:
        bind_session(state.session_id, state.tenant)
        metrics.count_event(event.type, state.tenant, state.channel)
        with tracing.span(f"event {event.type}", parent=state.span, session_id=state.session_id):
            if isinstance(event, ChatMessage):
                await self.handle_message(state, event, emit)
            elif isinstance(event, SuggestionFeedback):
                await self.handle_feedback(state, event, emit)
            else:
                raise ProtocolError(f"{getattr(event, 'type', event)!r} is not valid here", code="invalid_event")

    async def handle_message(self, state: SessionState, msg: ChatMessage, emit: Emit) -> None:
        at = state.clock()
        await self.process_utterance(
            state,
            emit,
            raw_text=msg.text,
            speaker=msg.speaker,
            start=at,
            end=at,
            confidence=1.0,
            received_at=time.perf_counter(),
            message_id=msg.message_id,
            analyse=msg.speaker == "customer",
        )

    async def redact_partial(self, raw_text: str) -> str | None:
        """Redact an interim transcript. None when the guardrail cannot check it: the partial is then not
        shown (its final will be checked again, and blocked for review if that fails too)."""
        try:
            result = await asyncio.wait_for(self.ports.guardrail.redact(raw_text), self.guardrail.timeout_s)
        except Exception:  # a partial is disposable; the final is what must pass the guardrail
            return None
        return result.text

    async def process_utterance(
        self, state: SessionState, emit: Emit, *, analyse: bool = True, **kw: Any
    ) -> None:
        """One finished utterance (a chat message or a voice final): guardrail → transcript → analysis."""
        turn = await self.finalize_utterance(state, emit, **kw)
        if turn is not None and analyse:
            await self.analyse(state, turn, emit)

    async def finalize_utterance(
        self,
        state: SessionState,
        emit: Emit,
        *,
        raw_text: str,
        speaker: str,
        start: float,
        end: float,
        confidence: float,
        received_at: float,
        message_id: str | None = None,
        utterance_id: str | None = None,
        latency_from: float | None = None,
        words: Sequence[Word] | None = None,
    ) -> Turn | None:
        """Guardrail → stored, redacted ``transcript.final`` (+ ``redaction``). Returns the redacted turn for
        analysis, or None when the guardrail blocked it. ``latency_from`` is the perf_counter time latency is
        measured from (end of speech for voice)."""
        turn = Turn(
            utterance_id=utterance_id or new_id("utt"),
            speaker=speaker,
            received_at=received_at,
            raw_text=raw_text,
            message_id=message_id,
        )
        try:
            redaction = await self.guardrail.run(turn, state)
        except SwitchboardError as exc:
            await self.publish(state, emit, exc.to_event())
            return None

        state.signals.utterance(turn.speaker, start, end)
        state.history.append((turn.speaker, turn.redacted))
        self.store.add_utterance(
            utterance_id=turn.utterance_id,
            session_id=state.session_id,
            tenant=state.tenant,
            seq=state.seq,
            speaker=turn.speaker,
            text=turn.redacted,
            message_id=turn.message_id,
            start_s=start,
            end_s=end,
        )
        final = TranscriptFinal(
            utterance_id=turn.utterance_id,
            text=turn.redacted,
            speaker=turn.speaker,
            start=start,
            end=end,
            confidence=round(min(1.0, max(0.0, confidence)), 4),
            latency_ms=round((time.perf_counter() - (latency_from or turn.received_at)) * 1000.0, 2),
            message_id=turn.message_id,
            words=align_words(words, turn.redacted, offset=start) if words else None,
        )
        turn.timings_ms["transcript"] = final.latency_ms  # voice: end of speech → final (the transcription SLO)
        await self.publish(state, emit, final)
        for ev in redaction:
            await self.publish(state, emit, ev)
        if self.crm.enabled:
            turn.crm_line = self.crm.line(state.crm, turn.speaker, turn.redacted)
            if turn.speaker == "agent":  # customer turns are noted with their sentiment by `analyse`
                self._crm_note(state, emit, turn.crm_line, None)
        return turn

    def _crm_note(self, state: SessionState, emit: Emit, line: str, sentiment: float | None) -> None:
        if not self.crm.enabled:
            return

        async def report(error: ErrorEvent) -> None:
            try:
                await self.publish(state, emit, error)
            except Exception:  # the client left; the error is in the session log
                pass

        self.crm.note(state.crm, state.tenant, state.session_id, line, sentiment, report)

    async def analyse(self, state: SessionState, turn: Turn, emit: Emit) -> None:
        """Sentiment ∥ planner → assist → escalation for a finalized customer turn."""
        state.turns += 1
        metrics.count_turn(state.tenant, state.channel)
        with self.governor.turn():  # the critical path: what a turn must do before its first suggestion
            await self._analyse_critical(state, turn, emit)
        escalated: list[Escalation] = []
        for ev in await self._run(self.escalation_for(state.tenant), turn, state, emit):
            if isinstance(ev, Escalation):
                state.escalations += 1
                metrics.count_escalation(state.tenant, state.channel, ev.queue, ev.priority)
                state.signals.escalation_priorities.append(ev.priority)
                self.store.add_escalation(
                    session_id=state.session_id,
                    tenant=state.tenant,
                    utterance_id=ev.utterance_id,
                    rule=ev.rule,
                    reason=ev.reason,
                    queue=ev.queue,
                    priority=ev.priority,
                )
            await self.publish(state, emit, ev)
            if isinstance(ev, Escalation):
                escalated.append(ev)
        if escalated and self.handoff is not None:  # one hand-off per turn: the most urgent of its rules
            await self._route(state, max(escalated, key=lambda e: PRIORITIES.index(e.priority)), emit)
        self._account(state, turn)

    async def _analyse_critical(self, state: SessionState, turn: Turn, emit: Emit) -> None:
        """Sentiment ∥ planner, then assist: everything up to the turn's first suggestion."""
        sentiment_events, planner_events = await asyncio.gather(
            self._run(self.sentiment, turn, state, emit), self._run(self.planner, turn, state, emit)
        )
        if turn.sentiment is not None:
            state.sentiment_sum += turn.sentiment.score
            metrics.observe_sentiment(
                turn.sentiment.score, turn.sentiment.label, state.tenant, state.channel, turn.sentiment.model
            )
            state.negative_streak = state.negative_streak + 1 if turn.sentiment.label == "negative" else 0
        for ev in [*sentiment_events, *planner_events]:
            await self.publish(state, emit, ev)
        score = turn.sentiment.score if turn.sentiment is not None else None
        state.signals.customer_turn(turn.redacted, score, turn.intent)
        if turn.speaker != "agent" and turn.crm_line:
            self._crm_note(state, emit, turn.crm_line, score)
        for ev in await self._run(self.assist, turn, state, emit):
            if isinstance(ev, Suggestion):
                state.signals.suggestions += 1
                metrics.observe_assist(
                    ev.latency_ms, state.tenant, state.channel, ev.reranker or "faiss", ev.source
                )
                self.governor.observe(ev.latency_ms)
                if not self.writer.wanted(state, turn.hits):
                    self._final_suggestion(state, ev)
                elif self.governor.shed("generation", state.tenant, state.channel):
                    ev = ev.model_copy(update={"fallback": ev.fallback or "shed"})  # final: nothing follows
                    metrics.count_suggestion(ev.source, "none", "shed")
                    self._final_suggestion(state, ev)
                else:
                    ev = ev.model_copy(update={"final": False})
                    self._start_generation(state, turn, ev, emit)
            await self.publish(state, emit, ev)

    async def _route(self, state: SessionState, escalation: Escalation, emit: Emit) -> None:
        """Hand the escalated conversation to a human agent: assigned, queued (with the expected wait) or
        overflowed; the ``routing`` event carries the customer-facing notice."""
        assert self.handoff is not None
        try:
            routing = await asyncio.wait_for(
                self.handoff.route(state.session_id, state.tenant, escalation), self.escalation.timeout_s
            )
        except Exception as exc:
            log.error("routing failed (%s)", type(exc).__name__, extra={"session_id": state.session_id})
            await self.publish(
                state,
                emit,
                ErrorEvent(
                    code="stage_failed",
                    message="routing to an agent is unavailable; the escalation alert stands and supervisors see it",
                    retryable=True,
                    utterance_id=escalation.utterance_id,
                ),
            )
            return
        if routing is None:  # an agent has the conversation already
            return
        state.routed, state.routed_at = True, time.time()
        await self.publish(state, emit, routing)

    def _final_suggestion(self, state: SessionState, ev: Suggestion) -> None:
        """What feedback on this suggestion is about (and, at the end, the summary's count by source)."""
        state.suggestion_models[ev.suggestion_id] = (ev.source, ev.model or ev.reranker or "faiss")

    def _start_generation(self, state: SessionState, turn: Turn, first: Suggestion, emit: Emit) -> None:
        """Write the generated reply in the background: escalation and the next messages never wait for it."""
        self._final_suggestion(state, first)  # until the generated version replaces it

        async def publish(ev: Any) -> None:
            if isinstance(ev, Suggestion):
                self._final_suggestion(state, ev)
                if ev.final is not False:
                    metrics.observe_generation(
                        ev.latency_ms, state.tenant, state.channel, ev.model or "none", ev.source
                    )
            try:
                await self.publish(state, emit, ev)
            except Exception:  # the client went away: the reply is in the session log all the same
                pass

        async def run() -> None:
            try:
                with self.governor.generation():
                    await self.writer.write(turn, state, first, publish)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not take the session down
                log.error("reply writer failed (%s)", type(exc).__name__, extra={"session_id": state.session_id})
                await publish(
                    first.model_copy(update={"final": True, "fallback": "generation_error"})
                )

        task = asyncio.ensure_future(run())
        state.generating.add(task)
        task.add_done_callback(state.generating.discard)

    def _account(self, state: SessionState, turn: Turn) -> None:
        """Count which model and variant served each stage; record shadow-challenger results in the session
        log (never sent) with whether they agreed with what was shown."""
        for stage, result in turn.predictions.items():
            if stage == "assist":
                model, variant = result.reranker or "faiss", result.variant
            else:
                model, variant = result.model, result.variant or "rules"
            count_prediction(stage, model, variant)
            shadow = getattr(result, "shadow", None)
            if shadow is None:
                continue
            field_name = "label" if stage == "sentiment" else "intent"
            shown, scored = getattr(result, field_name), getattr(shadow, field_name)
            count_shadow(stage, model, shadow.model, shown == scored)
            self._record(
                state,
                {
                    "type": "shadow",
                    "stage": stage,
                    "utterance_id": turn.utterance_id,
                    "model": shadow.model,
                    field_name: scored,
                    "shown": {"model": model, field_name: shown},
                    "agree": shown == scored,
                },
            )

    async def handle_feedback(self, state: SessionState, fb: SuggestionFeedback, emit: Emit) -> None:
        if fb.suggestion_id not in state.suggestions:
            raise ProtocolError(
                f"suggestion {fb.suggestion_id} was not sent in this session", code="unknown_suggestion"
            )
        record = fb.model_dump(mode="json", exclude_none=True)
        source, model = state.suggestion_models.get(fb.suggestion_id, ("unknown", "unknown"))
        record["source"], record["model"] = source, model
        count_feedback(model, source, fb.action)
        state.signals.feedback[fb.action] += 1
        if fb.final_text:
            # The agent's edited text is stored too, so it passes the guardrail like any other text.
            turn = Turn(
                utterance_id=new_id("fbk"),
                speaker="agent",
                received_at=time.perf_counter(),
                raw_text=fb.final_text,
            )
            try:
                await self.guardrail.run(turn, state)
            except SwitchboardError as exc:
                await self.publish(state, emit, exc.to_event())
                return
            record["final_text"] = turn.redacted
        self._record(state, record)

    # ------------------------------------------------------------ plumbing

    async def _run(self, stage: Stage, turn: Turn, state: SessionState, emit: Emit) -> list[_Event]:
        """Run a stage whose fallback also failed: report it and let the rest of the turn go on."""
        state.stage_calls += 1
        try:
            return await stage.run(turn, state)
        except SwitchboardError as exc:
            await self.publish(state, emit, exc.to_event())
        except Exception as exc:
            log.error("stage %s and its fallback failed (%s)", stage.name, type(exc).__name__)
            await self.publish(
                state,
                emit,
                ErrorEvent(
                    code="stage_failed",
                    message=f"{stage.name} is unavailable for this message; the rest of the analysis continues",
                    retryable=True,
                    utterance_id=turn.utterance_id,
                ),
            )
        return []

    def _record(self, state: SessionState, event: _Event | dict) -> None:
        payload = event if isinstance(event, dict) else event.wire()
        self.store.add_event(session_id=state.session_id, tenant=state.tenant, seq=state.seq, payload=payload)
        state.seq += 1

    async def publish(self, state: SessionState, emit: Emit, event: _Event) -> None:
        """Record the event in the session log, then send it."""
        self._record(state, event)
        if isinstance(event, ErrorEvent):
            metrics.count_error(event.code, event.retryable, state.tenant, state.channel)
        await emit(event)
