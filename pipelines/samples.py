"""Sample calls for the demo, tests and benchmarks: two voices synthesised with espeak-ng at run time, so the
reference text and speaker of every turn are known exactly."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

__all__ = ["Turn", "Call", "synthesize", "two_speaker_call", "DEMO_CALL", "espeak_available"]

RATE = 16000
# (voice, pitch): a low male and a high female variant, clearly apart for speaker embeddings
VOICES = {"agent": ("en-us+m3", 25), "customer": ("en-us+f4", 80)}

DEMO_CALL: list[tuple[str, str]] = [
    (
        "agent",
        "Thank you for calling Maple Ridge Health, this is the billing team. How can I help you today?",
    ),
    ("customer", "Hi, I was charged twice for my last visit and I would like a refund please."),
    ("agent", "I am sorry about that. Let me look at your statement right now."),
    ("customer", "This is the third time I am calling about this and nobody called me back."),
    ("agent", "I understand. I will submit the refund request while we are on the phone."),
    ("customer", "Thank you, that really helps."),
]


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Call:
    audio: np.ndarray  # float32 mono 16 kHz
    turns: list[Turn]

    def pcm16(self) -> bytes:
        return (np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes()


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", speed: int = 155, pitch: int = 50) -> np.ndarray:
    """One sentence as float32 mono 16 kHz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng` (make does it for you)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text], check=True
        )
        audio, rate = sf.read(path, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    g = gcd(RATE, rate)
    return resample_poly(audio, RATE // g, rate // g).astype(np.float32) * 0.9


def two_speaker_call(
    script: list[tuple[str, str]] = DEMO_CALL, gap_s: float = 0.8, lead_s: float = 0.5
) -> Call:
    pieces, turns, t = [np.zeros(int(lead_s * RATE), np.float32)], [], lead_s
    for speaker, text in script:
        voice, pitch = VOICES[speaker]
        speech = synthesize(text, voice, pitch=pitch)
        turns.append(Turn(speaker, text, round(t, 3), round(t + speech.size / RATE, 3)))
        pieces += [speech, np.zeros(int(gap_s * RATE), np.float32)]
        t += speech.size / RATE + gap_s
    pieces.append(np.zeros(int(1.0 * RATE), np.float32))
    return Call(np.concatenate(pieces), turns)
