"""Voice sessions in-process: real VAD, real Whisper (packaged tiny.en), real speaker embeddings, real
pipeline and SQLite store; fakes only to inject ASR failures."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from models.asr.base import AsrCapabilities, AsrError, Transcription
from models.asr.metrics import wer
from pipelines.audio import AudioDecoder
from pipelines.events import SessionStart
from pipelines.review import ReviewQueue, load_or_create_key
from pipelines.samples import two_speaker_call
from pipelines.session import Pipeline
from pipelines.storage import SessionStore
from pipelines.voice import VoiceSession
from tests.fakes import Failing, Recorder

pytestmark = [pytest.mark.unit, pytest.mark.slow, pytest.mark.usefixtures("no_leaked_tasks")]

FRAME = 640  # 20 ms of PCM16 at 16 kHz


@pytest.fixture(scope="module")
def call():
    return two_speaker_call()


@pytest.fixture(scope="module")
def short_call():
    return two_speaker_call(
        [
            (
                "customer",
                "I would like to reschedule my appointment with the cardiology department next week please.",
            )
        ]
    )


@pytest.fixture(scope="module")
def voice_models(index_dir):
    from models.asr.vad import SileroVad
    from pipelines.backends import LocalAsr, LocalSpeakers, build_asr, build_speaker_embedder
    from pipelines.config import Settings

    s = Settings(data_dir=index_dir.parent, index_dir=index_dir)
    engines = build_asr(s)
    return {
        "vad": SileroVad(),
        "asr": LocalAsr(engines),
        "engines": engines,
        "speakers": LocalSpeakers(build_speaker_embedder(s)),
    }


@pytest.fixture
async def session_factory(settings, local_models, voice_models):
    store = SessionStore(settings.sqlalchemy_url)
    await store.start()
    review = ReviewQueue(store, load_or_create_key(settings.resolved_review_key_file))
    pipeline = Pipeline(local_models, store, review, settings)

    async def make(asr=None, channels=1, recorder=None):
        rec = Recorder()
        state, started = await pipeline.start_session(
            "demo", SessionStart(channel="voice", customer_id="caller")
        )
        voice = VoiceSession(
            pipeline,
            state,
            rec,
            AudioDecoder("pcm_s16le", 16000, channels),
            voice_models["vad"],
            asr or voice_models["asr"],
            voice_models["speakers"],
            settings,
            recorder=recorder,
        )
        return voice, rec, state

    yield make, store, pipeline
    await store.close()


async def stream(voice: VoiceSession, pcm: bytes, realtime: bool = False) -> None:
    t0 = time.perf_counter()
    for i in range(0, len(pcm), FRAME):
        await voice.feed(pcm[i : i + FRAME])
        if realtime:
            delay = t0 + (i + FRAME) / 32000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % (FRAME * 50) == 0:
            await asyncio.sleep(0)  # let finals run while audio keeps coming
    await voice.close()


def attribution(finals: list[dict], turns) -> float:
    """Share of finals whose speaker label maps (majority mapping) to the reference speaker of that time."""
    pairs = []
    for f in finals:
        mid = (f["start"] + f["end"]) / 2
        ref = min(
            turns, key=lambda t: 0 if t.start <= mid <= t.end else min(abs(mid - t.start), abs(mid - t.end))
        )
        pairs.append((f["speaker"], ref.speaker))
    mapping = {}
    for label in {p for p, _ in pairs}:
        refs = [r for p, r in pairs if p == label]
        mapping[label] = max(set(refs), key=refs.count)
    return sum(mapping[p] == r for p, r in pairs) / len(pairs)


def test_partials_use_the_fast_settings_and_finals_the_accurate_ones(voice_models):
    from pipelines.config import Settings

    s = Settings()
    partial, final = voice_models["engines"]["partial"], voice_models["engines"]["final"].engines[0]
    assert partial._model is final._model  # one copy of the weights
    assert (partial.beam_size, partial.word_timestamps, partial.window_margin_s) == (
        s.asr_partial_beam_size, False, s.asr_partial_window_margin_s
    )
    assert (final.beam_size, final.word_timestamps, final.window_margin_s) == (
        s.asr_final_beam_size, True, s.asr_window_margin_s
    )
    assert s.asr_partial_window_margin_s < s.asr_window_margin_s and s.asr_partial_beam_size < s.asr_final_beam_size


async def test_two_speaker_call_transcribed_in_order_with_speakers(session_factory, call):
    make, store, _ = session_factory
    voice, rec, state = await make()
    await stream(voice, call.pcm16())
    finals = rec.of("transcript.final")
    assert len(finals) >= len(call.turns)
    hyp = " ".join(f["text"] for f in finals)
    ref = " ".join(t.text for t in call.turns)
    assert wer(ref, hyp) <= 0.15, (ref, hyp)
    assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
    assert all(0 < f["confidence"] <= 1 and f["latency_ms"] >= 0 and f["end"] > f["start"] for f in finals)
    assert {f["speaker"] for f in finals} <= {"S1", "S2", "S3"}
    for f in finals:  # word timestamps, inside the utterance, in order
        times = [(w["start"], w["end"]) for w in f["words"]]
        assert times and all(f["start"] - 0.2 <= s <= e <= f["end"] + 0.2 for s, e in times)
        assert [s for s, _ in times] == sorted(s for s, _ in times)
    assert attribution(finals, call.turns) >= 0.9
    # finals flow into the same analysis as chat
    assert rec.of("sentiment") and rec.of("assist.suggestion")
    stored = await store.transcript("demo", state.session_id)
    assert [u["text"] for u in stored] == [f["text"] for f in finals]


async def test_stereo_channels_are_the_speakers(session_factory, short_call):
    make, _, _ = session_factory
    voice, rec, _ = await make(channels=2)
    silence = np.zeros_like(short_call.audio)
    stereo = np.stack([short_call.audio, silence], axis=1)  # customer on the left channel only
    await stream(voice, (stereo * 32767).astype("<i2").tobytes())
    finals = rec.of("transcript.final")
    assert finals and {f["speaker"] for f in finals} == {"customer"}
    assert wer(short_call.turns[0].text, " ".join(f["text"] for f in finals)) <= 0.2


async def test_partials_arrive_while_speaking_then_the_final(session_factory, short_call):
    """Partials are produced while the customer speaks (their rate under load is measured by
    benchmarks/asr_stream.py, not asserted here), carry the final's utterance id, and are redacted text."""
    make, _, _ = session_factory
    voice, rec, _ = await make()
    await stream(voice, short_call.pcm16(), realtime=True)
    partials, finals = rec.of("transcript.partial"), rec.of("transcript.final")
    assert len(partials) >= 2, (
        f"{len(partials)} partials for a {short_call.turns[0].end - short_call.turns[0].start:.1f}s utterance"
    )
    assert {p["utterance_id"] for p in partials} <= {f["utterance_id"] for f in finals}
    assert all(p["end"] > p["start"] and p["speaker"] for p in partials)
    first_final = next(i for i, e in enumerate(rec.events) if e["type"] == "transcript.final")
    assert any(e["type"] == "transcript.partial" for e in rec.events[:first_final])


class FlakyAsr:
    """A real engine that starts failing after ``ok_calls`` calls (the primary dying mid-call)."""

    name = "flaky"
    capabilities = AsrCapabilities()

    def __init__(self, inner, ok_calls: int) -> None:
        self.inner, self.ok_calls, self.calls = inner, ok_calls, 0

    def transcribe(self, audio, *, prompt=None) -> Transcription:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise AsrError("primary crashed")
        return self.inner.transcribe(audio)

    def transcribe_batch(self, audios):
        return [self.transcribe(a) for a in audios]


async def test_primary_failing_mid_call_fails_over_to_backup_without_losing_words(
    session_factory, call, voice_models
):
    from models.asr.fallback import FallbackAsr
    from pipelines.backends import LocalAsr

    make, _, _ = session_factory
    real = voice_models["engines"]["partial"]
    flaky = FlakyAsr(real, ok_calls=2)
    chain = FallbackAsr([flaky, real], retries=1, backoff_s=0.01)
    voice, rec, _ = await make(asr=LocalAsr({"final": chain, "partial": real}))
    await stream(voice, call.pcm16())
    hyp = " ".join(f["text"] for f in rec.of("transcript.final"))
    assert flaky.calls > 2, "the primary did fail during the call"
    assert wer(" ".join(t.text for t in call.turns), hyp) <= 0.15


async def test_asr_outage_keeps_audio_and_replays_it_on_recovery(session_factory, short_call, voice_models):
    make, _, _ = session_factory
    outage = Failing(voice_models["asr"], error=AsrError("ASR service down"))
    voice, rec, _ = await make(asr=outage)

    async def recover_later() -> None:
        await asyncio.sleep(2.0)
        outage.error = None

    recovery = asyncio.create_task(recover_later())
    await stream(voice, short_call.pcm16())
    await recovery
    errors = rec.of("error")
    assert [e["code"] for e in errors] == ["asr_unavailable"] and errors[0]["retryable"]
    text = " ".join(f["text"] for f in rec.of("transcript.final"))
    assert wer(short_call.turns[0].text, text) <= 0.2, text


@pytest.mark.parametrize("where", ["local", "fsspec-memory"])
async def test_recording_is_encrypted_and_reads_back(session_factory, settings, short_call, where):
    """Local folder by default; any fsspec URL otherwise (the in-memory filesystem stands in for S3 here)."""
    import fsspec

    from pipelines.recordings import RecordingStore

    make, store, _ = session_factory
    url = settings.resolved_recordings_url if where == "local" else f"memory://recordings-{id(settings)}"
    recordings = RecordingStore(url, settings.resolved_recording_key_file, store)
    voice, rec, state = await make()
    voice.recorder = recordings.open(state.tenant, state.session_id, 1, 0)
    pcm = short_call.pcm16()
    await stream(voice, pcm)
    rows = await store.recordings("demo", state.session_id)
    assert len(rows) == 1 and rows[0]["duration_s"] == pytest.approx(short_call.audio.size / 16000, abs=0.05)
    with fsspec.open(rows[0]["uri"], "rb") as fh:
        raw = fh.read()
    assert rows[0]["uri"].startswith(url)
    assert pcm[16000:16400] not in raw, "audio is not stored in clear"
    wav = await recordings.read_wav("demo", state.session_id)
    import io

    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 16000 and abs(audio.size - short_call.audio.size) < 400
    assert np.abs(audio[: short_call.audio.size] - short_call.audio[: audio.size]).max() < 2e-3
    assert await recordings.read_wav("other-tenant", state.session_id) is None


class CountingAsr:
    """The real ASR port, recording the role and length of every call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    async def transcribe(self, audio, role, key=None):
        self.calls.append((role, audio.size))
        return await self.inner.transcribe(audio, role, key)


async def test_speculative_finals_are_used_not_transcribed_twice(session_factory, call, voice_models):
    """A final's transcription starts when the pause passes the speech pad; when the pause then ends the
    utterance, that result is the final: no segment goes through the final model twice."""
    make, _, _ = session_factory
    counting = CountingAsr(voice_models["asr"])
    voice, rec, _ = await make(asr=counting)
    await stream(voice, call.pcm16(), realtime=True)
    finals = rec.of("transcript.final")
    assert wer(" ".join(t.text for t in call.turns), " ".join(f["text"] for f in finals)) <= 0.15
    final_sizes = [size for role, size in counting.calls if role == "final"]
    for f in finals:
        size = int(f["end"] * 16000) - int(f["start"] * 16000)
        assert final_sizes.count(size) == 1, (
            f"the segment {f['start']}-{f['end']} was transcribed twice or never"
        )
    # speculations that speech interrupted were not wasted: they went out as partials
    assert len(final_sizes) >= len(finals) and rec.of("transcript.partial")


def test_partials_are_timed_to_arrive_every_interval_one_at_a_time():
    from types import SimpleNamespace

    from pipelines.voice import VoiceSession, _Channel

    session = SimpleNamespace(settings=SimpleNamespace(partial_interval_s=0.8))
    ch = _Channel(0, SimpleNamespace(in_pause=False), None)
    ch.partial_due, ch.partial_latency, ch.partial_jitter = 10.0, 0.3, 0.05  # last sent at 9.2; ASR ~0.3 s
    wanted = VoiceSession._partial_wanted
    assert not wanted(session, ch, 9.5) and wanted(session, ch, 9.6)  # asked for 0.3 + 2 × 0.05 s before it is due
    ch.partial_jitter = 0.15
    assert wanted(session, ch, 9.4)  # an ASR whose latency varies more is asked earlier, so slow ones are in time
    ch.partial_jitter = 0.05
    ch.partial_requested, ch.partial_tasks = 9.7, {object()}  # one in flight
    assert not wanted(session, ch, 10.2)  # no second request while it runs...
    assert wanted(session, ch, 10.5)  # ...unless it is stuck for a whole interval: a fresher one supersedes it
    ch.partial_tasks = set()
    assert not wanted(session, ch, 9.8) and wanted(session, ch, 9.9)  # nothing came back: retry soon, not at once
    ch.segmenter.in_pause = True
    assert not wanted(session, ch, 11.0)  # a pause: the final may be due and has the ASR
    ch.segmenter.in_pause, ch.speculation = False, object()
    assert not wanted(session, ch, 11.0)  # a speculative final runs: it is the next partial if speech resumes


def test_a_preview_stuck_on_one_word_is_not_sent():
    from pipelines.voice import _stuck

    assert _stuck("This is little little little little little little")
    assert _stuck("I... I... I... I... I...")
    assert not _stuck("no no no, that is not what I said")  # three times is speech
    assert not _stuck("I need a refill of my prescription") and not _stuck("")
