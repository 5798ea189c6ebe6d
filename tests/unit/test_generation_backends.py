"""The transformers baseline on the real packaged SmolLM2, and the OpenAI-compatible client against a real
``vllm serve`` (vLLM's OpenAI API server started as a subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.generation.base import GenerationError, GenerationRequest, Generator, collect
from models.generation.hf_generate import TransformersGenerator, _StopCutter
from models.generation.openai_http import OpenAIChatGenerator

ASK = ({"role": "user", "content": "A customer says their parcel is late. Write a short, polite reply."},)


def _request(max_tokens: int = 24, **kwargs) -> GenerationRequest:
    return GenerationRequest(messages=ASK, max_tokens=max_tokens, **kwargs)


def _templated_length(tokenizer, messages) -> int:
    ids = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)


# ------------------------------------------------------------------------------ transformers generate loop


@pytest.fixture(scope="module")
def hf_generator(smollm2_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(smollm2_dir, threads=2)


@pytest.mark.unit
async def test_transformers_streams_the_greedy_continuation(hf_generator: TransformersGenerator) -> None:
    import torch

    assert isinstance(hf_generator, Generator)
    request = _request(max_tokens=12)
    chunks = [chunk async for chunk in hf_generator.stream(request)]
    text = "".join(c.text for c in chunks)
    last = chunks[-1]
    assert text.strip()
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) > 2  # streamed, not one blob
    assert last.finish_reason == "length" and last.completion_tokens == 12
    assert last.prompt_tokens == _templated_length(hf_generator.tokenizer, ASK)
    assert last.model == "smollm2-135m-instruct"

    # the deltas are exactly what a direct greedy generate decodes to
    ids = torch.tensor([hf_generator.prompt_ids(request)])
    with torch.inference_mode():
        out = hf_generator.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=hf_generator.tokenizer.pad_token_id,
        )
    assert text == hf_generator.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.unit
async def test_transformers_cuts_at_stop_strings(hf_generator: TransformersGenerator) -> None:
    full, full_last = await collect(hf_generator, _request(max_tokens=40))
    assert full_last.finish_reason == "length" and full_last.completion_tokens == 40
    words = full.split()
    assert len(words) > 6, full
    stop = words[5]
    text, last = await collect(hf_generator, _request(max_tokens=40, stop=("@@never@@", stop)))
    assert text == full[: full.find(stop)]
    assert last.finish_reason == "stop"
    assert 0 < last.completion_tokens < 40
    assert last.prompt_tokens == full_last.prompt_tokens


@pytest.mark.unit
async def test_transformers_sampling_and_early_exit(hf_generator: TransformersGenerator) -> None:
    text, last = await collect(hf_generator, _request(max_tokens=10, temperature=0.8))
    assert text and last.finished and 0 < last.completion_tokens <= 10

    # a caller that leaves after the first delta frees the model for the next request
    stream = hf_generator.stream(_request(max_tokens=200))
    first = await anext(stream)
    assert first.text and not first.finished
    await stream.aclose()
    assert not hf_generator._lock.locked()
    _, again = await asyncio.wait_for(collect(hf_generator, _request(max_tokens=5)), timeout=60)
    assert again.completion_tokens == 5


@pytest.mark.unit
async def test_transformers_refuses_a_prompt_that_does_not_fit(hf_generator: TransformersGenerator) -> None:
    huge = ({"role": "user", "content": "word " * 9000},)
    with pytest.raises(GenerationError, match="prompt is .* tokens"):
        await collect(hf_generator, GenerationRequest(messages=huge, max_tokens=8))
    assert not hf_generator._lock.locked()


@pytest.mark.unit
def test_stop_cutter_holds_back_a_possible_stop_string() -> None:
    cutter = _StopCutter(("###", "END"))
    assert cutter.feed("Hello #") == "Hello "  # "#" might start "###"
    assert cutter.feed("# wo") == "## wo"  # ruled out: "## " is not a stop
    assert cutter.feed("rld E") == "rld "
    assert cutter.feed("N") == ""
    assert cutter.feed("D and more") == "" and cutter.stopped
    assert cutter.flush() == ""
    plain = _StopCutter(("###",))
    assert plain.feed("a #") == "a " and plain.flush() == "#"


# ------------------------------------------------------------------------------ a real `vllm serve`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    def __init__(self, model_dir: Path, log_path: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "2048",
            "--port",
            str(self.port),
            "--served-model-name",
            "smollm2",
        ]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_in = self._wait_ready(deadline_s=180)

    def _wait_ready(self, deadline_s: float) -> float:
        started = time.monotonic()
        next_note = started + 15
        while time.monotonic() - started < deadline_s:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"vllm serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    took = time.monotonic() - started
                    print(f"vllm serve ready in {took:.1f} s on port {self.port}", file=sys.stderr)
                    return took
            except httpx.HTTPError:
                pass
            if time.monotonic() > next_note:
                print(f"waiting for vllm serve ({time.monotonic() - started:.0f} s)...", file=sys.stderr)
                next_note += 15
            time.sleep(1)
        self.stop()
        pytest.fail(f"vllm serve did not answer GET /v1/models within {deadline_s} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def vllm_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = _Server(smollm2_dir, tmp_path_factory.mktemp("vllm") / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.slow
async def test_openai_client_streams_from_vllm_serve(vllm_server: _Server, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    generator = OpenAIChatGenerator(vllm_server.base_url)  # no model: discovered from GET /models
    try:
        assert isinstance(generator, Generator)
        started = time.perf_counter()
        chunks = [chunk async for chunk in generator.stream(_request(max_tokens=32))]
        took = time.perf_counter() - started
        text = "".join(c.text for c in chunks)
        last = chunks[-1]
        assert generator.model == "smollm2" and generator.name == "smollm2"
        assert text.strip() and len(chunks) > 2
        assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert last.finish_reason == "length" and last.completion_tokens == 32 and last.model == "smollm2"
        tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
        assert last.prompt_tokens == _templated_length(tokenizer, ASK)
        print(f"vllm serve: 32 tokens in {took:.2f} s ({32 / took:.0f} tokens/s)", file=sys.stderr)

        full, _ = await collect(generator, _request(max_tokens=40))
        stop = full.split()[5]
        cut, cut_last = await collect(generator, _request(max_tokens=40, stop=(stop,)))
        assert cut == full[: full.find(stop)]
        assert cut_last.finish_reason == "stop" and cut_last.completion_tokens < 40
    finally:
        await generator.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_openai_client_reports_a_wrong_model_or_url(vllm_server: _Server) -> None:
    wrong_model = OpenAIChatGenerator(vllm_server.base_url, model="no-such-model")
    with pytest.raises(GenerationError, match=r"HTTP 404.*no-such-model"):
        await collect(wrong_model, _request())
    await wrong_model.close()

    no_prefix = OpenAIChatGenerator(f"http://127.0.0.1:{vllm_server.port}")  # forgot /v1
    with pytest.raises(
        GenerationError, match=r"/models answered HTTP 404 \(check base_url: it should end in /v1\)"
    ):
        await collect(no_prefix, _request())
    await no_prefix.close()

    nobody = f"http://127.0.0.1:{_free_port()}/v1"
    unreachable = OpenAIChatGenerator(nobody, model="smollm2", timeout_s=5)
    with pytest.raises(
        GenerationError, match=rf"cannot connect to {nobody}/chat/completions.*server is running"
    ):
        await collect(unreachable, _request())
    await unreachable.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_openai_client_reports_a_stopped_server(vllm_server: _Server) -> None:
    """Runs last in this module: it stops the shared server."""
    generator = OpenAIChatGenerator(vllm_server.base_url, timeout_s=5)
    text, _ = await collect(generator, _request(max_tokens=4))
    assert text
    vllm_server.stop()
    with pytest.raises(GenerationError, match=rf"cannot connect to {vllm_server.base_url}/chat/completions"):
        await collect(generator, _request(max_tokens=4))
    await generator.close()
