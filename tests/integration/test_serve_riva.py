"""switchboard serves Riva's ASR API on its gRPC port: the stock `riva.client.ASRService` works unchanged."""

from __future__ import annotations

import time

import grpc
import pytest
import riva.client

from models.asr.metrics import wer
from pipelines.samples import two_speaker_call

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def call():
    return two_speaker_call(
        [
            ("agent", "Good morning, you have reached the pharmacy line. How can I help?"),
            ("customer", "I would like to transfer my prescription to a different pharmacy near my home."),
        ]
    )


def config(diarize: bool = True):
    cfg = riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM,
        sample_rate_hertz=16000,
        audio_channel_count=1,
        language_code="en-US",
        max_alternatives=1,
        enable_word_time_offsets=True,
        enable_automatic_punctuation=True,
    )
    riva.client.add_speaker_diarization_to_config(cfg, diarize, 2)
    return cfg


def service(app, token):
    return riva.client.ASRService(
        riva.client.Auth(uri=app.grpc_target, metadata_args=[["authorization", f"Bearer {token}"]])
    )


def test_offline_recognize_with_word_offsets_and_speaker_tags(app, call):
    response = service(app, app.token).offline_recognize(call.pcm16(), config())
    alternatives = [r.alternatives[0] for r in response.results]
    text = " ".join(a.transcript for a in alternatives)
    assert wer(" ".join(t.text for t in call.turns), text) <= 0.15, text
    words = [w for a in alternatives for w in a.words]
    assert words and all(w.end_time >= w.start_time for w in words)
    assert [w.start_time for w in words] == sorted(w.start_time for w in words)
    assert words[-1].end_time <= call.audio.size / 16  # ms
    assert len({w.speaker_tag for w in words}) == 2, "two voices, two speaker tags"


def test_streaming_recognize_with_interim_results(app, call):
    pcm = call.pcm16()
    chunk = 3200  # 100 ms

    def chunks():
        for i in range(0, len(pcm), chunk):
            time.sleep(0.05)  # 2x real time
            yield pcm[i : i + chunk]

    streaming = riva.client.StreamingRecognitionConfig(config=config(), interim_results=True)
    interim, finals = [], []
    for response in service(app, app.token).streaming_response_generator(
        audio_chunks=chunks(), streaming_config=streaming
    ):
        for result in response.results:
            (finals if result.is_final else interim).append(result)
    assert interim, "interim results arrive while audio streams"
    text = " ".join(r.alternatives[0].transcript for r in finals)
    assert wer(" ".join(t.text for t in call.turns), text) <= 0.15, text
    assert all(r.alternatives[0].words for r in finals)


def test_wrong_token_is_unauthenticated(app, call):
    with pytest.raises(grpc.RpcError) as err:
        service(app, "wrong").offline_recognize(call.pcm16()[:32000], config(False))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
