"""Wire audio decoding: formats, channels, resampling and refusals."""

from __future__ import annotations

import audioop  # the reference G.711 implementation (stdlib until 3.13)

import numpy as np
import pytest

from pipelines.audio import AudioDecoder, BadAudio, mulaw_decode, mulaw_encode

pytestmark = pytest.mark.unit


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mulaw_matches_the_reference_codec():
    all_codes = bytes(range(256))
    ours = mulaw_decode(all_codes)
    ref = np.frombuffer(audioop.ulaw2lin(all_codes, 2), dtype="<i2")
    assert np.array_equal(ours, ref)
    samples = (tone(0.1, 8000) * 32767).astype(np.int16)
    assert mulaw_encode(samples) == audioop.lin2ulaw(samples.tobytes(), 2)


def test_pcm16_mono_16k_passes_through():
    audio = tone(0.5, 16000)
    dec = AudioDecoder("pcm_s16le", 16000, 1)
    out = dec.decode((audio * 32767).astype("<i2").tobytes())
    assert len(out) == 1 and out[0].shape == audio.shape
    assert np.abs(out[0] - audio).max() < 1e-3


def test_stereo_is_split_per_channel():
    left, right = tone(0.2, 16000, 300), tone(0.2, 16000, 900)
    frames = (np.stack([left, right], axis=1) * 32767).astype("<i2").tobytes()
    out = AudioDecoder("pcm_s16le", 16000, 2).decode(frames)
    assert len(out) == 2
    assert np.abs(out[0] - left).max() < 1e-3 and np.abs(out[1] - right).max() < 1e-3


def test_mulaw_8k_is_resampled_to_16k_across_frames():
    audio = tone(1.0, 8000, 440)
    payload = mulaw_encode((audio * 32767).astype(np.int16))
    dec = AudioDecoder("mulaw", 8000, 1)
    pieces = [dec.decode(payload[i : i + 160])[0] for i in range(0, len(payload), 160)]  # 20 ms frames
    out = np.concatenate(pieces)
    assert abs(out.size - 16000) <= 64
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16000 / (15000 - 1000)
    assert abs(peak_hz - 440) < 5
    assert dec.seconds == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fmt", "frame", "match"),
    [
        (("pcm_s16le", 16000, 1), b"\x00\x01\x02", "truncated frame"),
        (("pcm_s16le", 16000, 2), b"\x00\x01\x02\x03\x04\x05", "truncated frame"),
        (("pcm_s16le", 16000, 1), b"RIFF$\x00\x00\x00WAVEfmt ", "WAV file"),
        (("mulaw", 8000, 1), b"OggS\x00\x02", "Ogg"),
        (("pcm_s16le", 16000, 1), b"", "empty"),
    ],
)
def test_bad_frames_are_refused_with_a_clear_code(fmt, frame, match):
    dec = AudioDecoder(*fmt)
    with pytest.raises(BadAudio, match=match) as err:
        dec.decode(frame)
    assert err.value.code == "bad_audio_format"
    assert dec.samples_in == 0, "nothing of a refused frame is accepted"


def test_unknown_encoding_is_refused():
    with pytest.raises(BadAudio):
        AudioDecoder("opus", 48000, 1)
