"""Audio in: decode the wire formats of PROTOCOL.md (PCM16 16 kHz, μ-law 8 kHz; mono or stereo) into float32
mono 16 kHz arrays, one per channel. Frames that cannot be audio in the declared format are refused with
``bad_audio_format`` and nothing of them is accepted; everything accepted is returned whole."""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly

from .errors import ProtocolError

__all__ = ["AudioDecoder", "BadAudio", "mulaw_decode", "mulaw_encode", "TARGET_RATE"]

TARGET_RATE = 16000

_CONTAINER_MAGIC = {
    b"RIFF": "a WAV file",
    b"OggS": "an Ogg file",
    b"fLaC": "a FLAC file",
    b"ID3": "an MP3 file",
    b"\x1aE\xdf\xa3": "a WebM/Matroska file",
}


class BadAudio(ProtocolError):
    code = "bad_audio_format"


def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.uint8)
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    sample = magnitude - 0x84
    return np.where(sign != 0, -sample, sample).astype(np.int16)


_MULAW = _mulaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    return _MULAW[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples → G.711 μ-law bytes (for tests and telephony replies)."""
    x = np.clip(samples.astype(np.int32), -32635, 32635)
    sign = np.where(x < 0, 0x80, 0)
    x = np.abs(x) + 0x84
    exponent = np.floor(np.log2(x)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


class _StreamingResampler:
    """8 kHz → 16 kHz with a polyphase filter; keeps a little history so frame edges do not click."""

    CONTEXT = 32

    def __init__(self, up: int, down: int) -> None:
        self.up, self.down = up, down
        self._history = np.zeros(self.CONTEXT, dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.up == self.down or x.size == 0:
            return x
        joined = np.concatenate([self._history, x])
        # full-scale input overshoots after the low-pass (Gibbs): clip back into the [-1, 1] the models expect
        y = np.clip(resample_poly(joined, self.up, self.down), -1.0, 1.0).astype(np.float32)
        self._history = joined[-self.CONTEXT :]
        return y[self.CONTEXT * self.up // self.down :]


class AudioDecoder:
    """Stateful per-session decoder for one declared format."""

    def __init__(self, encoding: str, sample_rate: int, channels: int) -> None:
        if encoding not in ("pcm_s16le", "mulaw"):
            raise BadAudio(f"unsupported encoding {encoding!r}; use pcm_s16le or mulaw")
        if channels not in (1, 2):
            raise BadAudio(f"{channels} channels: send mono or stereo (one channel per party)")
        self.encoding, self.sample_rate, self.channels = encoding, sample_rate, channels
        self.bytes_per_frame = (2 if encoding == "pcm_s16le" else 1) * channels
        self._resamplers = [_StreamingResampler(TARGET_RATE, sample_rate) for _ in range(channels)]
        self.samples_in = 0  # per channel, at the input rate

    @property
    def seconds(self) -> float:
        return self.samples_in / self.sample_rate

    def decode(self, frame: bytes) -> list[np.ndarray]:
        if not frame:
            raise BadAudio("empty audio frame")
        for magic, what in _CONTAINER_MAGIC.items():
            if frame.startswith(magic):
                raise BadAudio(f"this frame is {what}; send raw {self.encoding} samples, not a container")
        if len(frame) % self.bytes_per_frame:
            raise BadAudio(
                f"truncated frame: {len(frame)} bytes is not a whole number of {self.channels}-channel "
                f"{self.encoding} samples ({self.bytes_per_frame} bytes each); the frame was not accepted"
            )
        if self.encoding == "pcm_s16le":
            ints = np.frombuffer(frame, dtype="<i2")
        else:
            ints = mulaw_decode(frame)
        audio = ints.astype(np.float32) / 32768.0
        audio = audio.reshape(-1, self.channels)
        self.samples_in += audio.shape[0]
        return [self._resamplers[c](np.ascontiguousarray(audio[:, c])) for c in range(self.channels)]
