"""Voice sessions: audio frames → VAD segments → partial and final transcripts with speakers → the same
utterance pipeline as chat (guardrail → sentiment ∥ planner → assist → escalation → store).

Per channel, a VAD segmenter finds speech. While someone speaks, a partial transcript of the segment so far
reaches the client every ``partial_interval_s``: it is requested that long after the previous one was sent, less
the measured ASR latency and twice its deviation (the ASR queue keeps only the newest waiting one per channel); at
end of speech the segment is queued for its final. Finals are transcribed strictly in order by one worker per
session. If the ASR service fails, the segment stays queued (its audio is kept) and is retried with backoff —
replayed when ASR recovers — so the final transcript is complete; the client hears one retryable
``asr_unavailable`` error meanwhile.

Speculative finals: an utterance ends after ``vad_min_silence_ms`` of silence, but its audio is complete as
soon as the pause passes the speech pad. The final's transcription (and speaker embedding) starts then, while
the silence is still being confirmed; if the pause does end the utterance at that point the result is used
as the final, and if speech resumes it is sent as a partial instead. The silence wait thus overlaps the ASR
work instead of adding to it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.asr.base import SAMPLE_RATE

from . import metrics, tracing
from .audio import AudioDecoder
from .events import ErrorEvent, TranscriptPartial, new_id

if TYPE_CHECKING:
    from models.asr.vad import SileroVad

    from .config import Settings
    from .ports import AsrPort, SpeakerPort
    from .session import Emit, Pipeline, SessionState
    from .stages.base import Turn

__all__ = ["VoiceSession", "Segment"]

log = logging.getLogger("switchboard.voice")


@dataclass
class _Speculation:
    utterance_id: str
    start: float
    end: float
    transcript: asyncio.Task[Any]
    embedding: asyncio.Task[Any] | None


@dataclass
class Segment:
    utterance_id: str
    channel: int
    start: float  # seconds of audio since the session started
    end: float
    audio: np.ndarray
    speech_end_wall: float  # perf_counter when the audio at `end` arrived
    attempts: int = 0
    speculation: _Speculation | None = None


class _WallClock:
    """Maps audio time (seconds since session start) to the wall time the audio arrived."""

    def __init__(self) -> None:
        self._t: list[float] = []
        self._wall: list[float] = []

    def add(self, audio_t: float, wall: float) -> None:
        self._t.append(audio_t)
        self._wall.append(wall)
        if len(self._t) > 4096:
            del self._t[:2048], self._wall[:2048]

    def at(self, audio_t: float) -> float:
        i = bisect.bisect_left(self._t, audio_t)
        return self._wall[min(i, len(self._wall) - 1)] if self._wall else time.perf_counter()


@dataclass
class _Channel:
    index: int
    segmenter: object  # models.asr.vad.VadSegmenter
    fixed_speaker: str | None
    buffer: deque[np.ndarray] = field(default_factory=deque)
    buffer_start: int = 0  # sample index of buffer[0][0]
    buffered: int = 0
    seg_start: float | None = None
    utterance_id: str | None = None
    partial_due: float = 0.0  # wall time by which the next partial should be on its way to the client
    partial_latency: float = 0.3  # request → client time of a partial: moving average, seconds
    partial_jitter: float = 0.1  # and its moving mean absolute deviation (the lead is average + 2 × this)
    partial_requested: float = 0.0  # wall time of the latest partial request
    partial_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    partial_seq: int = 0  # requests made; a partial older than the last one sent is dropped
    partial_sent: int = 0
    speculation: _Speculation | None = None
    last_speaker: str = "S1"
    clock: _WallClock = field(default_factory=lambda: _WallClock())


class VoiceSession:
    KEEP_S = 60.0  # audio kept per channel for segments in progress

    def __init__(
        self,
        pipeline: Pipeline,
        state: SessionState,
        emit: Emit,
        decoder: AudioDecoder,
        vad: SileroVad,
        asr: AsrPort,
        speakers: SpeakerPort | None,
        settings: Settings,
        recorder: object | None = None,
        channel_speakers: tuple[str | None, ...] | None = None,
    ) -> None:
        from models.asr.vad import VadSegmenter

        self.pipeline, self.state, self.emit = pipeline, state, emit
        self.decoder, self.asr, self.speakers, self.settings = decoder, asr, speakers, settings
        self.recorder = recorder
        roles = (
            list(channel_speakers)
            if channel_speakers
            else (["customer", "agent"] if decoder.channels == 2 else [None])
        )
        self.channels = [
            _Channel(
                i,
                VadSegmenter(
                    vad.fresh() if hasattr(vad, "fresh") else vad, min_silence_ms=settings.vad_min_silence_ms
                ),
                role,
            )
            for i, role in enumerate(roles)
        ]
        self._clustering = None
        self._queue: asyncio.Queue[Segment | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._finals_worker(), name=f"voice-finals-{state.session_id}")
        self._analysis: asyncio.Queue[Turn | None] = asyncio.Queue()
        self._analyser = asyncio.create_task(
            self._analysis_worker(), name=f"voice-analysis-{state.session_id}"
        )
        # agent speech is transcribed and stored but not analysed: stereo/telephony know the agent's channel;
        # on mono calls the first voice heard is taken to be the agent (SWITCHBOARD_MONO_AGENT_SPEAKER)
        self._agent_labels = {"agent"} | (
            {settings.mono_agent_speaker} if settings.mono_agent_speaker else set()
        )
        self.track_decoders = [
            AudioDecoder(decoder.encoding, decoder.sample_rate, 1) for _ in range(decoder.channels)
        ]
        self._asr_error_reported = False
        self._finalized: set[str] = set()  # utterances whose final is out: later partials are dropped

    # ------------------------------------------------------------ audio in

    async def feed(self, frame: bytes) -> None:
        """Decode one binary frame in the session's format (raises BadAudio, accepting nothing of it) and
        advance every channel."""
        for index, audio in enumerate(self.decoder.decode(frame)):
            self._advance(self.channels[index], audio)

    async def feed_track(self, index: int, frame: bytes) -> None:
        """One mono frame for one channel (telephony streams send each party's track separately)."""
        self._advance(self.channels[index], self.track_decoders[index].decode(frame)[0])

    def _advance(self, ch: _Channel, audio: np.ndarray) -> None:
        now = time.perf_counter()
        if self.recorder is not None:
            self.recorder.write_channel(ch.index, audio)
        ch.buffer.append(audio)
        ch.buffered += audio.size
        end_t = (ch.buffer_start + ch.buffered) / SAMPLE_RATE
        ch.clock.add(end_t, now)
        for event in ch.segmenter.feed(audio):
            if event.kind == "start":
                # the first partial comes half an interval in: a preview is most useful early
                ch.seg_start, ch.utterance_id = event.time, new_id("utt")
                ch.partial_due = now + self.settings.partial_interval_s / 2
            elif ch.seg_start is not None:
                self._close_segment(ch, event.time)
        if ch.seg_start is not None:
            pause_end = ch.segmenter.pause_end
            spec = ch.speculation
            if pause_end is not None and (spec is None or spec.end != pause_end):
                self._speculate(ch, pause_end)
                ch.partial_requested = now  # the speculation doubles as the next partial if speech resumes
            elif pause_end is None and spec is not None:
                ch.speculation = None  # speech resumed: what was transcribed so far is a partial
                self._spawn_partial(ch, self._partial_from(ch, spec, ch.partial_seq))
        if ch.seg_start is not None and self._partial_wanted(ch, now):
            ch.partial_requested = now
            self._spawn_partial(
                ch, self._partial(ch, ch.utterance_id, ch.seg_start, end_t, ch.partial_seq, requested=now)
            )
        self._trim(ch)

    def _partial_wanted(self, ch: _Channel, now: float) -> bool:
        """Whether to request a partial now. Partials are timed by when they reach the client, not by when they
        are asked for: ``partial_interval_s`` after one is sent the next is due, and the request goes out a lead
        ahead of that: the measured request-to-client time plus twice its deviation (as TCP times its
        retransmissions), so that even a slower-than-usual preview arrives in time whatever the ASR load, and a
        steady one a little early. One request per channel is in flight at a time (a busy ASR thus gets fewer
        requests); one stuck longer than an interval is superseded by a fresher one (the ASR queue keeps only
        the newest waiting partial per channel). None is asked for in a pause: the final may be due, and a
        speculative final (itself the next partial if speech resumes) has the ASR."""
        interval = self.settings.partial_interval_s
        lead = min(ch.partial_latency + 2 * ch.partial_jitter, interval)
        if now < ch.partial_due - lead or ch.speculation is not None or ch.segmenter.in_pause:
            return False
        since = now - ch.partial_requested
        return since >= interval if ch.partial_tasks else since >= interval / 4

    def _spawn_partial(self, ch: _Channel, coro: Any) -> None:
        ch.partial_seq += 1
        task = asyncio.create_task(coro)
        ch.partial_tasks.add(task)
        task.add_done_callback(ch.partial_tasks.discard)

    def _speculate(self, ch: _Channel, end: float) -> None:
        """Start the final's work for the segment as it would end at ``end`` (see the module docstring)."""
        self._drop_speculation(ch)
        audio = self._slice(ch, ch.seg_start or 0.0, end)
        embedding = None
        if ch.fixed_speaker is None and self.speakers is not None:
            embedding = asyncio.create_task(self.speakers.embed(audio))
        ch.speculation = _Speculation(
            ch.utterance_id or "",
            ch.seg_start or 0.0,
            end,
            asyncio.create_task(self._transcribe_final(audio)),
            embedding,
        )

    @staticmethod
    def _drop_speculation(ch: _Channel) -> None:
        spec, ch.speculation = ch.speculation, None
        if spec is not None:
            for task in (spec.transcript, spec.embedding):
                if task is not None:
                    task.cancel()
                    task.add_done_callback(_consume)

    def _slice(self, ch: _Channel, start: float, end: float) -> np.ndarray:
        """Samples [start, end) of the channel, copying only the buffered chunks that overlap them."""
        a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
        parts, pos = [], ch.buffer_start
        for chunk in ch.buffer:
            lo, hi = pos, pos + chunk.size
            if hi > a and lo < b:
                parts.append(chunk[max(0, a - lo) : min(chunk.size, b - lo)])
            if hi >= b:
                break
            pos = hi
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _trim(self, ch: _Channel) -> None:
        keep_from = (ch.buffer_start + ch.buffered) - int(self.KEEP_S * SAMPLE_RATE)
        if ch.seg_start is not None:
            keep_from = min(keep_from, int(ch.seg_start * SAMPLE_RATE) - SAMPLE_RATE)
        while ch.buffer and ch.buffer_start + ch.buffer[0].size < keep_from:
            dropped = ch.buffer.popleft()
            ch.buffer_start += dropped.size
            ch.buffered -= dropped.size

    def _close_segment(self, ch: _Channel, end: float) -> None:
        start, uid = ch.seg_start, ch.utterance_id
        ch.seg_start = ch.utterance_id = None
        if start is None or uid is None:
            return
        segment = Segment(
            uid, ch.index, round(start, 3), round(end, 3), self._slice(ch, start, end), ch.clock.at(end)
        )
        spec = ch.speculation
        if spec is not None and spec.utterance_id == uid and spec.end == segment.end:
            segment.speculation, ch.speculation = spec, None
        else:
            self._drop_speculation(ch)
        self._queue.put_nowait(segment)

    # ------------------------------------------------------------ partials

    async def _partial(
        self, ch: _Channel, uid: str | None, start: float, end: float, seq: int, requested: float
    ) -> None:
        audio = self._slice(ch, start, end)
        if uid is None or audio.size < SAMPLE_RATE // 4:
            return
        key = f"{self.state.session_id}/{ch.index}"
        with tracing.span("partial", parent=self.state.span, utterance_id=uid):
            await self._send_partial(
                ch, uid, start, end, seq, self.asr.transcribe(audio, "partial", key), requested
            )

    async def _partial_from(self, ch: _Channel, spec: _Speculation, seq: int) -> None:
        """A speculative final that speech interrupted, sent as a partial (its timing, from the start of the
        pause, says nothing about how long partials take)."""
        await self._send_partial(ch, spec.utterance_id, spec.start, spec.end, seq, spec.transcript, None)

    async def _send_partial(
        self,
        ch: _Channel,
        uid: str,
        start: float,
        end: float,
        seq: int,
        transcript: Any,
        requested: float | None,
    ) -> None:
        try:
            result = await transcript
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # partials are best-effort; finals carry the guarantee
            log.warning("partial transcription failed (%s)", type(exc).__name__)
            return
        if not result.text.strip() or uid in self._finalized or seq < ch.partial_sent:
            return  # nothing heard (or superseded), the final is already out, or a newer partial was sent
        if _stuck(result.text):
            return  # a preview of a decoder loop ("I... I... I... I..."): the next partial or the final follows
        text = await self.pipeline.redact_partial(result.text.strip())
        if text is None or uid in self._finalized or seq < ch.partial_sent:
            return
        ch.partial_sent = seq
        sent = time.perf_counter()
        ch.partial_due = sent + self.settings.partial_interval_s
        if requested is not None:
            error = min(sent - requested, 2 * self.settings.partial_interval_s) - ch.partial_latency
            ch.partial_latency += 0.3 * error
            ch.partial_jitter += 0.3 * (abs(error) - ch.partial_jitter)
        speaker = ch.fixed_speaker or ch.last_speaker
        await self.emit(
            TranscriptPartial(
                utterance_id=uid, text=text, speaker=speaker, start=round(start, 3), end=round(end, 3)
            )
        )

    # ------------------------------------------------------------ finals

    def _embedding_task(self, ch: _Channel, segment: Segment) -> asyncio.Task[Any] | None:
        """The segment's voice embedding, computed while its words are transcribed (mono calls only)."""
        if ch.fixed_speaker is not None or self.speakers is None:
            return None
        if segment.speculation is not None and segment.speculation.embedding is not None:
            return segment.speculation.embedding
        return asyncio.create_task(self.speakers.embed(segment.audio))

    async def _speaker_for(self, ch: _Channel, embedding_task: asyncio.Task[Any] | None) -> str:
        if ch.fixed_speaker is not None:
            return ch.fixed_speaker
        if embedding_task is None:
            return ch.last_speaker
        try:
            embedding = await embedding_task
        except Exception as exc:  # diarization is an enrichment: keep the last speaker rather than stall
            log.warning("speaker embedding failed (%s)", type(exc).__name__)
            return ch.last_speaker
        if self._clustering is None:
            from models.diarization.online import RESEMBLYZER_THRESHOLD, OnlineSpeakerClustering

            threshold = self.settings.diarization_threshold
            self._clustering = OnlineSpeakerClustering(
                embedder=None,  # embeddings come from the speaker_embedder deployment
                threshold=RESEMBLYZER_THRESHOLD if threshold is None else threshold,
                max_speakers=self.settings.diarization_max_speakers,
            )
        label, _ = self._clustering.assign_embedding(embedding)
        ch.last_speaker = label
        return label

    async def _finals_worker(self) -> None:
        backoff = self.settings.asr_retry_backoff_s
        while True:
            segment = await self._queue.get()
            if segment is None:
                return
            ch = self.channels[segment.channel]
            embedding = self._embedding_task(ch, segment)
            result = None
            if segment.speculation is not None:
                try:
                    result = await segment.speculation.transcript
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                except Exception:  # transcribed again below, with retries and the error event
                    pass
            while result is None:
                try:
                    result = await self._transcribe_final(segment.audio)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    segment.attempts += 1
                    log.warning(
                        "final transcription failed (%s), attempt %d; audio kept",
                        type(exc).__name__,
                        segment.attempts,
                    )
                    if not self._asr_error_reported:
                        self._asr_error_reported = True
                        await self.pipeline.publish(
                            self.state,
                            self.emit,
                            ErrorEvent(
                                code="asr_unavailable",
                                message="speech recognition is failing; the audio is kept and will be transcribed "
                                "when it recovers",
                                retryable=True,
                                utterance_id=segment.utterance_id,
                            ),
                        )
                    await asyncio.sleep(min(backoff * 2 ** (segment.attempts - 1), 5.0))
            self._asr_error_reported = False
            self._finalized.add(segment.utterance_id)  # its final goes out now: no partial after it
            try:
                text = result.text.strip()
                if not text and embedding is not None:
                    embedding.cancel()
                    embedding.add_done_callback(_consume)
                if text:
                    speaker = await self._speaker_for(ch, embedding)
                    with tracing.span("utterance", parent=self.state.span, utterance_id=segment.utterance_id):
                        turn = await self.pipeline.finalize_utterance(
                            self.state,
                            self.emit,
                            raw_text=text,
                            speaker=speaker,
                            start=segment.start,
                            end=segment.end,
                            confidence=result.confidence,
                            received_at=time.perf_counter(),
                            utterance_id=segment.utterance_id,
                            latency_from=segment.speech_end_wall,
                            words=result.words,
                        )
                    if turn is not None:
                        metrics.observe_transcription(
                            turn.timings_ms["transcript"], self.state.tenant, self.state.channel, self._model(result)
                        )
                    if turn is not None and speaker not in self._agent_labels:
                        # analysed in order, without holding up the next final
                        self._analysis.put_nowait(turn)
            except Exception as exc:  # one utterance must not stop the worker
                log.error("processing a final failed (%s)", type(exc).__name__)

    async def _transcribe_final(self, audio: np.ndarray) -> Any:
        """A final transcription, timed for the ASR real-time factor (processing seconds / audio seconds)."""
        started = time.perf_counter()
        with tracing.span("transcribe", parent=self.state.span):
            result = await self.asr.transcribe(audio, "final")
        metrics.observe_asr(
            audio.size / SAMPLE_RATE,
            time.perf_counter() - started,
            self.state.tenant,
            self.state.channel,
            self._model(result),
        )
        return result

    def _model(self, result: Any) -> str:
        return getattr(result, "model", None) or self.settings.asr_final_model

    async def _analysis_worker(self) -> None:
        while (turn := await self._analysis.get()) is not None:
            try:
                with tracing.span("utterance.analysis", parent=self.state.span, utterance_id=turn.utterance_id):
                    await self.pipeline.analyse(self.state, turn, self.emit)
            except Exception as exc:  # analysis of one turn must not stop the next
                log.error("analysing a final failed (%s)", type(exc).__name__)

    # ------------------------------------------------------------ end

    async def close(self, wait_s: float = 120.0) -> None:
        """End of audio: close open segments, then wait for every final (they are retried until then)."""
        for ch in self.channels:
            end_t = (ch.buffer_start + ch.buffered) / SAMPLE_RATE
            for event in ch.segmenter.flush():
                if event.kind == "end" and ch.seg_start is not None:
                    self._close_segment(ch, event.time)
            if ch.seg_start is not None:
                self._close_segment(ch, end_t)
        partials = [task for ch in self.channels for task in ch.partial_tasks]
        for task in partials:
            task.cancel()
        for ch in self.channels:
            self._drop_speculation(ch)
        await asyncio.gather(*partials, return_exceptions=True)
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), wait_s)
        except TimeoutError:
            log.error(
                "finals still pending after %.0fs at session end; the recording keeps the audio", wait_s
            )
            self._worker.cancel()
        self._analysis.put_nowait(None)
        await self._analyser
        if self.recorder is not None:
            await self.recorder.close()


def _stuck(text: str, run: int = 4) -> bool:
    """The same word ``run`` times in a row: on a second of audio, fast previews (short window, greedy) sometimes
    loop on one word ("little little little little ..."); people rarely say a word four times running."""
    words = re.findall(r"[\w']+", text.lower())
    return any(len(set(words[i : i + run])) == 1 for i in range(len(words) - run + 1))


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a dropped task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
