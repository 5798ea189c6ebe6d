"""RivaAsr against a real in-process gRPC server speaking Riva's protocol (Whisper tiny.en inside), with speech
synthesised by espeak-ng at test time. The last tests drive the same server with the stock ``riva.client``
to show it is protocol-faithful."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import riva.client
import soundfile as sf
from riva.client.proto import riva_asr_pb2 as rasr

from models.asr.base import SAMPLE_RATE, AsrEngine, AsrError, AsrUnavailable, Transcription
from models.asr.riva import RivaAsr, pcm16_bytes
from tests.riva_server import (
    MODEL_NAME,
    RivaServerState,
    packaged_whisper,
    start_riva_test_server,
    stop_riva_test_server,
)

pytestmark = pytest.mark.unit

BALANCE = "Hello, I would like to check the balance on my account, please."
RESCHEDULE = "I need to reschedule my appointment for next week."
CHUNK = SAMPLE_RATE // 10  # 100 ms


# -- helpers -----------------------------------------------------------------------------------------------


def _speak(text: str, folder: Path, name: str, voice: str = "en-us") -> Path:
    """espeak-ng → 16 kHz mono 16-bit WAV (sox resamples)."""
    raw, out = folder / f"{name}.raw.wav", folder / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    return out


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


def _chunks(audio: np.ndarray, size: int = CHUNK) -> Iterator[bytes]:
    data = pcm16_bytes(audio)
    for start in range(0, len(data), 2 * size):
        yield data[start : start + 2 * size]


def _assert_words_sane(result: Transcription, duration: float) -> None:
    assert result.words, "no word offsets"
    starts = [word.start for word in result.words]
    assert starts == sorted(starts), "word offsets are not monotonic"
    for word in result.words:
        assert 0.0 <= word.start <= word.end <= duration + 0.05, word
        assert 0.0 <= word.probability <= 1.0


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are needed to synthesise test speech (apt-get install espeak-ng sox)")
    folder = tmp_path_factory.mktemp("riva_speech")
    return {
        "balance": _speak(BALANCE, folder, "balance"),
        "reschedule": _speak(RESCHEDULE, folder, "reschedule", voice="en-gb+f3"),
    }


@pytest.fixture(scope="module")
def audio(speech: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: sf.read(path, dtype="float32")[0] for name, path in speech.items()}


@pytest.fixture(scope="module")
def riva_server() -> Iterator[tuple[RivaServerState, int]]:
    state = RivaServerState()
    server, port = start_riva_test_server(state=state, model=packaged_whisper())
    yield state, port
    stop_riva_test_server(server)


@pytest.fixture
def srv(riva_server: tuple[RivaServerState, int]) -> tuple[RivaServerState, int]:
    """The shared server with its outage knobs reset for this test."""
    state, port = riva_server
    state.fail_next, state.fail_code, state.delay_s = 0, grpc.StatusCode.UNAVAILABLE, 0.0
    state.interim_every_s, state.endpoint_silence_s = 1.0, 0.8
    state.calls.clear()
    state.metadata.clear()
    return state, port


@pytest.fixture
def asr(srv: tuple[RivaServerState, int]) -> Iterator[RivaAsr]:
    engine = RivaAsr(f"127.0.0.1:{srv[1]}", metadata=[("x-api-key", "test-key")])
    yield engine
    engine.close()


# -- RivaAsr -----------------------------------------------------------------------------------------------


def test_transcribe_real_speech(asr: RivaAsr, audio: dict[str, np.ndarray], srv) -> None:
    assert isinstance(asr, AsrEngine)
    assert asr.capabilities.streaming and asr.capabilities.word_timestamps
    assert not asr.capabilities.batching and not asr.capabilities.diarization
    for name, reference in (("balance", BALANCE), ("reschedule", RESCHEDULE)):
        result = asr.transcribe(audio[name])
        assert wer(reference, result.text) <= 0.25, result.text
        _assert_words_sane(result, len(audio[name]) / SAMPLE_RATE)
        assert 0.0 < result.confidence <= 1.0
        assert result.model == "riva:en-US" and result.language == "en"
        assert any(ch in result.text for ch in ",.?"), "automatic punctuation was requested"
    state, _ = srv
    assert state.calls == ["Recognize", "Recognize"]
    assert state.metadata[0]["x-api-key"] == "test-key"


def test_transcribe_batch_and_empty_audio(asr: RivaAsr, audio: dict[str, np.ndarray], srv) -> None:
    results = asr.transcribe_batch([audio["balance"], np.zeros(0, dtype=np.float32)])
    assert wer(BALANCE, results[0].text) <= 0.25
    assert results[1].text == "" and results[1].words == ()
    assert srv[0].calls == ["Recognize"], "empty audio must not reach the server"


def test_diarization_requests_speaker_tags(srv, audio: dict[str, np.ndarray]) -> None:
    with RivaAsr(f"127.0.0.1:{srv[1]}", enable_speaker_diarization=True) as engine:
        assert engine.capabilities.diarization
        result, speakers = engine.transcribe_with_speakers(audio["balance"])
    assert len(speakers) == len(result.words) > 0
    assert set(speakers) == {1}  # the test server's rule: speaker = channel number
    with RivaAsr(f"127.0.0.1:{srv[1]}") as plain:
        _, speakers = plain.transcribe_with_speakers(audio["balance"])
    assert set(speakers) == {0}


def test_stream_yields_interim_then_final(asr: RivaAsr, audio: dict[str, np.ndarray]) -> None:
    samples = audio["balance"]
    events = list(asr.stream(_chunks(samples)))
    interims = [t for is_final, t in events if not is_final]
    finals = [t for is_final, t in events if is_final]
    assert interims, "no interim results"
    assert len(finals) == 1 and events[-1][0]
    assert all(not t.words for t in interims)
    assert wer(BALANCE, finals[0].text) <= 0.25, finals[0].text
    _assert_words_sane(finals[0], len(samples) / SAMPLE_RATE)


def test_stream_endpoints_on_silence(asr: RivaAsr, srv, audio: dict[str, np.ndarray]) -> None:
    srv[0].interim_every_s = 3.0  # this test is about finals; fewer interim decodes keep it quick
    gap = np.zeros(int(1.5 * SAMPLE_RATE), dtype=np.float32)
    samples = np.concatenate([audio["balance"], gap, audio["reschedule"]])
    finals = [t for is_final, t in asr.stream(_chunks(samples)) if is_final]
    assert len(finals) == 2, [t.text for t in finals]
    assert wer(BALANCE, finals[0].text) <= 0.25 and wer(RESCHEDULE, finals[1].text) <= 0.25
    second_start = (len(audio["balance"]) + len(gap)) / SAMPLE_RATE
    assert finals[1].words[0].start >= second_start - 0.3, "offsets count from the start of the stream"
    _assert_words_sane(finals[1], len(samples) / SAMPLE_RATE)


def test_available_models(asr: RivaAsr) -> None:
    assert asr.available_models() == [MODEL_NAME]


# -- failures ----------------------------------------------------------------------------------------------


def test_outage_maps_to_unavailable_then_recovers(asr: RivaAsr, srv, audio: dict[str, np.ndarray]) -> None:
    state, _ = srv
    state.fail_next = 2
    with pytest.raises(AsrUnavailable, match="UNAVAILABLE") as info:
        asr.transcribe(audio["balance"])
    assert isinstance(info.value.__cause__, grpc.RpcError)
    with pytest.raises(AsrUnavailable):
        list(asr.stream(_chunks(audio["balance"])))
    assert wer(BALANCE, asr.transcribe(audio["balance"]).text) <= 0.25


def test_stopped_server_is_unavailable(audio: dict[str, np.ndarray]) -> None:
    server, port = start_riva_test_server(model=packaged_whisper())
    stop_riva_test_server(server)
    with RivaAsr(f"127.0.0.1:{port}", timeout_s=5.0) as engine:
        with pytest.raises(AsrUnavailable):
            engine.transcribe(audio["balance"])
        with pytest.raises(AsrUnavailable):
            list(engine.stream(_chunks(audio["balance"])))
        with pytest.raises(AsrUnavailable):
            engine.available_models()


def test_recovers_when_the_server_comes_back(audio: dict[str, np.ndarray]) -> None:
    server, port = start_riva_test_server(model=packaged_whisper())
    with RivaAsr(f"127.0.0.1:{port}") as engine:
        stop_riva_test_server(server)
        for _ in range(3):  # a few failures grow gRPC's reconnect backoff
            with pytest.raises(AsrUnavailable):
                engine.transcribe(audio["balance"])
            time.sleep(0.3)
        server, _ = start_riva_test_server(port, model=packaged_whisper())
        try:
            deadline, result = time.monotonic() + 8.0, None
            while result is None:
                try:
                    result = engine.transcribe(audio["balance"])
                except AsrUnavailable:
                    assert time.monotonic() < deadline, "RivaAsr did not reconnect within 8 s"
                    time.sleep(0.2)
            assert wer(BALANCE, result.text) <= 0.25
        finally:
            stop_riva_test_server(server)


def test_stream_reraises_the_callers_chunk_error(asr: RivaAsr) -> None:
    def microphone() -> Iterator[bytes]:
        yield bytes(2 * CHUNK)
        raise OSError("microphone unplugged")

    with pytest.raises(OSError, match="microphone unplugged"):
        list(asr.stream(microphone()))


def test_slow_server_times_out_as_unavailable(srv, audio: dict[str, np.ndarray]) -> None:
    state, port = srv
    state.delay_s = 2.0
    with (
        RivaAsr(f"127.0.0.1:{port}", timeout_s=0.3) as engine,
        pytest.raises(AsrUnavailable, match="timed out"),
    ):
        engine.transcribe(audio["balance"])


def test_other_errors_are_asr_error_not_unavailable(srv, audio: dict[str, np.ndarray]) -> None:
    state, port = srv
    with RivaAsr(f"127.0.0.1:{port}", model="no-such-model") as engine:
        with pytest.raises(AsrError, match="INVALID_ARGUMENT.*Unavailable model") as info:
            engine.transcribe(audio["balance"])
        assert not isinstance(info.value, AsrUnavailable)
    state.fail_next, state.fail_code = 1, grpc.StatusCode.INTERNAL
    with RivaAsr(f"127.0.0.1:{port}") as engine, pytest.raises(AsrError) as info:
        engine.transcribe(audio["balance"])
    assert not isinstance(info.value, AsrUnavailable)


# -- the test server speaks Riva: stock riva.client against it ---------------------------------------------


@pytest.fixture
def stock(srv) -> Iterator[riva.client.ASRService]:
    auth = riva.client.Auth(uri=f"127.0.0.1:{srv[1]}")
    yield riva.client.ASRService(auth)
    auth.channel.close()


def test_stock_client_offline_recognize(stock, speech: dict[str, Path], audio: dict[str, np.ndarray]) -> None:
    # Raw PCM, as a caller with samples in memory sends it.
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM,
        sample_rate_hertz=SAMPLE_RATE,
        audio_channel_count=1,
        language_code="en-US",
        max_alternatives=1,
        enable_word_time_offsets=True,
        enable_automatic_punctuation=False,
    )
    response = stock.offline_recognize(pcm16_bytes(audio["balance"]), config)
    transcript = " ".join(result.alternatives[0].transcript for result in response.results)
    assert wer(BALANCE, transcript) <= 0.25 and transcript == transcript.lower() and "," not in transcript
    words = [word for result in response.results for word in result.alternatives[0].words]
    assert words and all(isinstance(word.start_time, int) for word in words)
    assert words[-1].end_time <= len(audio["balance"]) * 1000 // SAMPLE_RATE + 50  # milliseconds

    # A WAV file, the way Riva's own transcribe_file_offline.py does it.
    wav_config = riva.client.RecognitionConfig(language_code="en-US", enable_automatic_punctuation=True)
    riva.client.add_audio_file_specs_to_config(wav_config, speech["reschedule"])
    wav_response = stock.offline_recognize(speech["reschedule"].read_bytes(), wav_config)
    assert wer(RESCHEDULE, wav_response.results[0].alternatives[0].transcript) <= 0.25


def test_stock_client_streaming(stock, speech: dict[str, Path]) -> None:
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM,
            language_code="en-US",
            max_alternatives=1,
            enable_automatic_punctuation=True,
            enable_word_time_offsets=True,
        ),
        interim_results=True,
    )
    riva.client.add_audio_file_specs_to_config(config, speech["balance"])
    with riva.client.AudioChunkFileIterator(speech["balance"], 1600) as chunks:  # WAV header in chunk one
        responses = list(stock.streaming_response_generator(audio_chunks=chunks, streaming_config=config))
    results = [result for response in responses for result in response.results]
    assert any(not result.is_final for result in results)
    finals = [result for result in results if result.is_final]
    assert len(finals) == 1 and wer(BALANCE, finals[0].alternatives[0].transcript) <= 0.25
    assert finals[0].alternatives[0].words

    printed = io.StringIO()  # the stock printer consumes our responses unchanged
    riva.client.print_streaming(
        iter(responses), output_file=[printed], additional_info="time", word_time_offsets=True
    )
    assert "Transcript 0:" in printed.getvalue() and "Start (ms)" in printed.getvalue()


def test_stock_client_stereo_diarization_and_config(stock, audio: dict[str, np.ndarray]) -> None:
    left = np.concatenate([audio["balance"], np.zeros(len(audio["reschedule"]) + SAMPLE_RATE, np.float32)])
    right = np.concatenate([np.zeros(len(audio["balance"]) + SAMPLE_RATE, np.float32), audio["reschedule"]])
    stereo = (np.stack([left, right], axis=1) * 32767).astype("<i2").tobytes()
    config = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM,
        sample_rate_hertz=SAMPLE_RATE,
        audio_channel_count=2,
        language_code="en-US",
        enable_word_time_offsets=True,
    )
    riva.client.add_speaker_diarization_to_config(config, diarization_enable=True, diarization_max_speakers=2)
    request = rasr.RecognizeRequest(config=config, audio=stereo, id={"value": "call-42"})
    response = stock.stub.Recognize(request)
    assert response.id.value == "call-42"
    by_speaker: dict[int, list[str]] = {}
    for result in response.results:
        for word in result.alternatives[0].words:
            by_speaker.setdefault(word.speaker_tag, []).append(word.word)
    assert set(by_speaker) == {1, 2}
    assert wer(BALANCE, " ".join(by_speaker[1])) <= 0.25 and wer(RESCHEDULE, " ".join(by_speaker[2])) <= 0.25
    assert [result.channel_tag for result in response.results] == sorted(
        r.channel_tag for r in response.results
    )

    reply = stock.stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest())
    assert [c.model_name for c in reply.model_config] == [MODEL_NAME]
