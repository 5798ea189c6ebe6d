"""A plain transformers ``generate`` loop: the baseline the benchmark compares vLLM's continuous batching against.

One request at a time (an ``asyncio.Lock``): ``model.generate`` runs in a worker thread and a
``TextIteratorStreamer`` hands its text back to the event loop. Float32 on CPU; greedy decoding when
``temperature == 0``, sampling otherwise. Stop strings end generation (transformers' ``stop_strings`` criterion)
and are cut from the text, as vLLM does; token counts follow vLLM's (the completion includes the EOS or the
token that completed a stop string).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .base import GenerationChunk, GenerationError, GenerationRequest

__all__ = ["TransformersGenerator"]

log = logging.getLogger(__name__)


class TransformersGenerator:
    """``model_dir``: a Hugging Face causal-LM folder with a chat template. ``threads`` sets torch's intra-op
    thread count (process-wide: ``torch.set_num_threads``); ``None`` keeps torch's default."""

    def __init__(self, model_dir: str | Path, name: str | None = None, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.model_dir.name
        if threads is not None:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        if self.tokenizer.chat_template is None:
            raise GenerationError(f"{self.model_dir} has no chat template; the generator needs one")
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32)
        self.model.to("cpu").eval()
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self._eos_ids.add(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else next(iter(self._eos_ids), None)
        self._max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self._lock = asyncio.Lock()
        log.info("transformers model %s loaded in %.1f s", self.name, time.perf_counter() - started)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        ids: Any = self.tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "input_ids") or isinstance(ids, dict):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        ids = list(ids)
        if self._max_len and len(ids) + request.max_tokens > self._max_len:
            raise GenerationError(
                f"prompt is {len(ids)} tokens; at most {self._max_len - request.max_tokens} fit "
                f"with max_tokens={request.max_tokens}"
            )
        return ids

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ids = self.prompt_ids(request)
        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):  # the caller went away: stop at the next step
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": request.temperature}
            if request.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if request.stop:
            sampling.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        input_ids = torch.tensor([ids], dtype=torch.long)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    outcome["sequences"] = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=request.max_tokens,
                        pad_token_id=self._pad_id,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                        **sampling,
                    )
            except BaseException as exc:  # surfaced to the caller below; the streamer must still end
                outcome["error"] = exc
                streamer.end()

        async with self._lock:
            worker = asyncio.get_running_loop().run_in_executor(None, run)
            cutter = _StopCutter(request.stop)
            finished = False
            try:
                pieces = iter(streamer)
                while (text := await asyncio.to_thread(next, pieces, None)) is not None:
                    delta = cutter.feed(text)
                    if delta:
                        yield GenerationChunk(text=delta, model=self.name)
                    if cutter.stopped:  # the stop-string criterion ends generate at this token anyway
                        cancel.set()
                        break
                await worker
                if "error" in outcome:
                    exc = outcome["error"]
                    raise GenerationError(f"transformers generate failed on {self.name}: {exc!r}") from exc
                tail = cutter.flush()
                sequence = outcome["sequences"][0].tolist()
                completion = len(sequence) - len(ids)
                hit_eos = completion > 0 and sequence[-1] in self._eos_ids
                reason = (
                    "length"
                    if completion >= request.max_tokens and not (cutter.stopped or hit_eos)
                    else "stop"
                )
                finished = True
                yield GenerationChunk(
                    text=tail,
                    finished=True,
                    finish_reason=reason,
                    prompt_tokens=len(ids),
                    completion_tokens=completion,
                    model=self.name,
                )
            finally:
                if not finished:  # the caller gave up: stop the thread before the next request starts
                    cancel.set()
                    try:
                        await asyncio.shield(worker)
                    except BaseException:  # the generate error, if any, is moot now
                        log.debug("generate ended with an error after the caller left", exc_info=True)

    async def close(self) -> None:
        async with self._lock:
            self.model = None  # type: ignore[assignment]


class _StopCutter:
    """Turns streamed text into deltas that never show a stop string: text that might be the start of one is
    held back until it is ruled out; at a stop string everything from it on is dropped."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        keep = max((_overlap(self.pending, s) for s in self.stops), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
