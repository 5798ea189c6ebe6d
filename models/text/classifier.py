"""A fine-tuned Hugging Face sequence classifier loaded from a switchboard model folder.

The folder holds the weights, the tokenizer and ``switchboard.json`` (written by the training pipelines):
``kind: sequence_classifier``, ``task``, ``labels`` (in the model's output order), ``base_model``,
``max_length``. Loads from the local folder only (never a hub) and leaves torch's global thread count alone:
the serving process decides that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SequenceClassifier", "MANIFEST", "read_folder_manifest"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MANIFEST = "switchboard.json"


def read_folder_manifest(folder: Path) -> dict[str, Any]:
    """The ``switchboard.json`` of a model folder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: it is not a switchboard model folder")
    return json.loads(path.read_text())


class SequenceClassifier:
    """``predict_proba(texts)`` → class probabilities, columns in ``labels`` order."""

    def __init__(self, folder: Path, name: str | None = None, *, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.folder = Path(folder)
        manifest = read_folder_manifest(self.folder)
        if manifest.get("kind") != "sequence_classifier":
            raise ValueError(f"{folder} holds a {manifest.get('kind')!r} model, not a sequence_classifier")
        self.manifest = manifest
        self.labels: list[str] = [str(label) for label in manifest["labels"]]
        self.task: str = str(manifest.get("task", ""))
        self.max_length = int(manifest.get("max_length", 128))
        self.batch_size = batch_size
        self.name = name or f"{self.folder.name}"
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self._model = AutoModelForSequenceClassification.from_pretrained(str(self.folder))
        self._model.eval()
        id2label = {int(k): str(v) for k, v in (self._model.config.id2label or {}).items()}
        if [id2label.get(i) for i in range(len(self.labels))] != self.labels:
            raise ValueError(f"{folder}: manifest labels {self.labels} disagree with the model's {id2label}")

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Shape ``(len(texts), len(labels))``, float32. Texts are batched by length (less padding) and the
        rows come back in input order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = self._model(**batch).logits
                out[idx] = self._torch.softmax(logits.float(), dim=-1).numpy()
        return out

    def predict(self, texts: list[str]) -> list[str]:
        """The most probable label per text."""
        return [self.labels[int(i)] for i in self.predict_proba(texts).argmax(axis=1)]
