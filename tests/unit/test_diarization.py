"""Speaker diarization: online clustering, resemblyzer on synthetic and real calls, pyannote weight loading.

Real models only (resemblyzer's packaged encoder; a small random-weight pyannote model built here), no hub.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.optimize import linear_sum_assignment
from scipy.signal import resample_poly

from models.diarization.base import (
    SAMPLE_RATE,
    Diarizer,
    DiarizerUnavailable,
    SpeakerEmbedding,
    SpeakerTurn,
)
from models.diarization.online import OnlineSpeakerClustering, ResemblyzerDiarizer, ResemblyzerEmbedder

pytestmark = pytest.mark.unit

# `make install` provides both; a machine without them fails here instead of silently testing less.
assert shutil.which("espeak-ng"), (
    "espeak-ng is not installed: run `make install` (or apt-get install espeak-ng)"
)
_PYANNOTE = importlib.util.find_spec("pyannote.audio")
assert _PYANNOTE is not None, "pyannote.audio is not installed: run `make install`"

# Two clearly different espeak-ng voices: American male (pitch 50) and British female variant 3 at pitch 70.
# Note: `-v en-gb+f3` silently ignores the variant in espeak-ng 1.52 (same audio as `-v en-gb`); `en+f3` works.
# Two *male* espeak voices (en-us vs en, en+m3) are nearly indistinguishable to resemblyzer (cross-voice mean
# cosine 0.81-0.87, as high as same-voice 0.88-0.89), so they are not a meaningful test of the clustering.
AGENT = ("-v", "en-us")
CALLER = ("-v", "en+f3", "-p", "70")
CONVERSATION = [
    (AGENT, "Hello, thank you for calling Acme support, my name is Jordan."),
    (CALLER, "Hi, I have a problem with my internet connection since yesterday."),
    (AGENT, "I am sorry to hear that. Can you give me your account number please?"),
    (CALLER, "Sure, it is four five six seven eight nine."),
    (CALLER, "And the router keeps blinking orange all the time."),
    (AGENT, "Thank you. I can see an outage in your area right now."),
    (CALLER, "Oh really? How long will it take to fix it?"),
    (AGENT, "Our technicians expect it to be resolved within two hours."),
]


def _espeak(voice: tuple[str, ...], text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", *voice, "--stdout", text], capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    g = np.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def mapped_accuracy(predicted: list[str], truth: list[str], weights: list[float] | None = None) -> float:
    """Accuracy under the best one-to-one mapping of predicted labels to true speakers (Hungarian)."""
    pred_labels, true_labels = sorted(set(predicted)), sorted(set(truth))
    w = np.ones(len(truth)) if weights is None else np.asarray(weights, dtype=float)
    counts = np.zeros((len(pred_labels), len(true_labels)))
    for p, t, weight in zip(predicted, truth, w, strict=True):
        counts[pred_labels.index(p), true_labels.index(t)] += weight
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / w.sum())


@pytest.fixture(scope="module")
def embedder() -> ResemblyzerEmbedder:
    return ResemblyzerEmbedder()


@pytest.fixture(scope="module")
def conversation() -> list[tuple[np.ndarray, str]]:
    return [(_espeak(voice, text), "agent" if voice == AGENT else "caller") for voice, text in CONVERSATION]


# -- clustering logic, with hand-made embeddings -------------------------------------------------------------


class FakeEmbedder:
    """Returns queued embeddings, ignoring the audio."""

    name = "fake"

    def __init__(self, embeddings: list[SpeakerEmbedding | None]) -> None:
        self.queue = list(embeddings)

    def embed(self, audio: np.ndarray) -> SpeakerEmbedding | None:
        return self.queue.pop(0)


def _unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


A, B, C = _unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)


def test_clustering_opens_joins_and_caps_speakers() -> None:
    cl = OnlineSpeakerClustering(FakeEmbedder([]), threshold=0.7, max_speakers=2)
    assert isinstance(cl, Diarizer)
    assert cl.assign_embedding(SpeakerEmbedding(A, 2.0)) == ("S1", 1.0)
    label, conf = cl.assign_embedding(SpeakerEmbedding(B, 2.0))
    assert label == "S2" and conf > 0.9  # far below the threshold: confidently new
    label, conf = cl.assign_embedding(SpeakerEmbedding(_unit(1, 0.1, 0), 2.0))
    assert label == "S1" and conf > 0.9
    # Third voice, but max_speakers=2: forced to the closest speaker with a confidence below 0.5.
    label, conf = cl.assign_embedding(SpeakerEmbedding(_unit(0.3, 0, 1), 2.0))
    assert label == "S1" and conf < 0.5
    assert cl.speakers == ("S1", "S2")
    cl.reset()
    assert cl.speakers == () and cl.assign_embedding(SpeakerEmbedding(C, 2.0)) == ("S1", 1.0)


def test_clustering_without_embedder_takes_embeddings_only() -> None:
    import pickle

    cl = OnlineSpeakerClustering(None)  # embeddings computed elsewhere (a shared embedding deployment)
    emb = pickle.loads(pickle.dumps(SpeakerEmbedding(A, 2.0)))  # crosses process boundaries
    assert cl.assign_embedding(emb) == ("S1", 1.0)
    with pytest.raises(TypeError):
        cl.assign(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert pickle.loads(pickle.dumps(SpeakerTurn(0.0, 1.0, "S1"))).duration == 1.0


def test_clustering_guards_short_and_empty_utterances() -> None:
    cl = OnlineSpeakerClustering(FakeEmbedder([]), threshold=0.7, min_new_speaker_seconds=1.0)
    assert cl.assign_embedding(None) == ("S1", 0.0)  # nothing heard yet: the documented default
    assert cl.assign_embedding(SpeakerEmbedding(B, 0.5)) == ("S1", 0.5)  # provisional, founds nothing
    assert cl.speakers == ()
    assert cl.assign_embedding(SpeakerEmbedding(A, 2.0))[0] == "S1"
    label, conf = cl.assign_embedding(SpeakerEmbedding(B, 0.5))  # short and unlike S1: no phantom speaker
    assert label == "S1" and conf < 0.5 and cl.speakers == ("S1",)
    assert cl.assign_embedding(SpeakerEmbedding(B, 2.0))[0] == "S2"
    assert cl.assign_embedding(None) == ("S2", 0.0)  # silence: previous speaker, no confidence


def test_similarity_is_not_biased_towards_talkative_speakers() -> None:
    # S1 has a lot of varied speech; S2 one utterance. A new S2-like utterance must still go to S2.
    cl = OnlineSpeakerClustering(FakeEmbedder([]), threshold=0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        cl.assign_embedding(SpeakerEmbedding(_unit(*(np.array([1, 0.2, 0]) + 0.3 * rng.random(3))), 3.0))
    cl.assign_embedding(SpeakerEmbedding(_unit(0.2, 1, 0.3), 1.5))
    assert cl.speakers == ("S1", "S2")
    assert cl.assign_embedding(SpeakerEmbedding(_unit(0.35, 1, 0.25), 1.5))[0] == "S2"


def test_clustering_validates_arguments() -> None:
    with pytest.raises(ValueError):
        OnlineSpeakerClustering(FakeEmbedder([]), threshold=1.5)
    with pytest.raises(ValueError):
        OnlineSpeakerClustering(FakeEmbedder([]), max_speakers=0)


# -- resemblyzer on synthetic and real speech ----------------------------------------------------------------


def test_two_espeak_voices_are_told_apart(embedder, conversation) -> None:
    diarizer = ResemblyzerDiarizer(embedder=embedder)
    results = [diarizer.assign(audio) for audio, _ in conversation]
    labels = [label for label, _ in results]
    truth = [speaker for _, speaker in conversation]
    assert all(label in ("S1", "S2", "S3") for label in labels)
    assert labels[0] == "S1"
    assert all(0.0 <= conf <= 1.0 for _, conf in results)
    assert mapped_accuracy(labels, truth) >= 0.9  # measured 1.0 (8/8)
    # A short backchannel from the caller does not open a third speaker.
    label, _ = diarizer.assign(_espeak(CALLER, "Okay."))
    assert diarizer.speakers == ("S1", "S2") and label in ("S1", "S2")
    diarizer.reset()
    assert diarizer.assign(conversation[1][0])[0] == "S1"


def test_real_phone_call_turns(embedder) -> None:
    """The two-speaker call shipped in the pyannote.audio wheel, cut at its reference turns, fed in order.

    Measured: 8/10 turns (0.80), 0.95 of speech time. The two misses are unattributable online: the second
    speaker's 0.5 s "Hello?" arrives before any speaker model exists (provisional "S1"), and a 0.44 s turn lies
    entirely inside the other speaker's turn (overlapped speech). One more turn (3.4 s) is a near tie
    (0.750 vs 0.751 mean cosine), so the floors leave room for it to flip (0.7 / 0.8) while still failing the
    alternatives tried: cosine to the normalised centroid (0.6 / 0.53) or letting short turns found speakers
    (0.5 / 0.51).
    """
    assert _PYANNOTE is not None and _PYANNOTE.submodule_search_locations
    sample = Path(next(iter(_PYANNOTE.submodule_search_locations))) / "sample"
    audio, rate = sf.read(sample / "sample.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    turns = []
    for line in (sample / "sample.rttm").read_text().splitlines():
        fields = line.split()
        start, duration = float(fields[3]), float(fields[4])
        turns.append(SpeakerTurn(start, start + duration, fields[7]))
    diarizer = ResemblyzerDiarizer(embedder=embedder)
    labels = [diarizer.assign(audio[int(t.start * rate) : int(t.end * rate)])[0] for t in turns]
    truth = [t.speaker for t in turns]
    assert mapped_accuracy(labels, truth) >= 0.7
    assert mapped_accuracy(labels, truth, [t.duration for t in turns]) >= 0.8
    assert len(set(labels)) == 2


def test_unusable_audio_never_raises(embedder) -> None:
    diarizer = ResemblyzerDiarizer(embedder=embedder)
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert diarizer.assign(silence) == ("S1", 0.0)
    assert diarizer.assign(np.zeros(0, dtype=np.float32)) == ("S1", 0.0)
    assert diarizer.assign(np.full(SAMPLE_RATE, 1e-5, dtype=np.float32)) == ("S1", 0.0)  # -100 dBFS hiss
    click = np.zeros(SAMPLE_RATE, dtype=np.float32)
    click[8000:8080] = 0.9
    assert diarizer.assign(click) == ("S1", 0.0)
    assert diarizer.assign(np.zeros(800, dtype=np.int16)) == ("S1", 0.0)  # 50 ms of int16 is accepted
    assert diarizer.speakers == ()
    assert embedder.embed(silence) is None
    with pytest.raises(ValueError):
        diarizer.assign(np.zeros((2, SAMPLE_RATE), dtype=np.float32))  # stereo is the caller's job
    with pytest.raises(ValueError):
        diarizer.assign(np.full(SAMPLE_RATE, np.nan, dtype=np.float32))


def test_silence_after_speech_keeps_the_last_speaker(embedder, conversation) -> None:
    diarizer = ResemblyzerDiarizer(embedder=embedder)
    first, _ = diarizer.assign(conversation[0][0])
    second, _ = diarizer.assign(conversation[1][0])
    assert (first, second) == ("S1", "S2")
    assert diarizer.assign(np.zeros(SAMPLE_RATE // 2, dtype=np.float32)) == ("S2", 0.0)
    embedding = embedder.embed(conversation[0][0])
    assert embedding is not None and embedding.vector.shape == (256,)
    assert abs(float(np.linalg.norm(embedding.vector)) - 1.0) < 1e-5
    assert 1.5 < embedding.speech_seconds <= len(conversation[0][0]) / SAMPLE_RATE


# -- customer pyannote weights, on a small random-weight model built here -------------------------------------


def _save_pyannote_checkpoint(model, path: Path) -> Path:
    """Write a checkpoint the way pyannote's own converters do (wespeaker/convert.py), plus hyper-parameters."""
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # adds pyannote.audio version, architecture and specifications
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def pyannote_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pyannote pipeline folder: x-vector embedding, PyanNet segmentation, PLDA, config.yaml."""
    from models.diarization.pyannote_backend import load_pyannote

    load_pyannote()
    import torch
    import yaml
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC
    from pyannote.audio.models.segmentation import PyanNet

    root = tmp_path_factory.mktemp("pyannote")
    torch.manual_seed(0)
    embedding = XVectorMFCC(mfcc={"n_mfcc": 20, "melkwargs": {"n_mels": 40}}, dimension=32)
    embedding.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=3.0
    )
    _save_pyannote_checkpoint(embedding, root / "embedding" / "pytorch_model.bin")
    segmentation = PyanNet(
        lstm={"hidden_size": 16, "num_layers": 1}, linear={"hidden_size": 16, "num_layers": 1}
    )
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=5.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.build()
    _save_pyannote_checkpoint(segmentation, root / "segmentation" / "pytorch_model.bin")
    (root / "plda").mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        root / "plda" / "xvec_transform.npz",
        mean1=np.zeros(32),
        mean2=np.zeros(8),
        lda=rng.normal(size=(32, 8)),
    )
    np.savez(root / "plda" / "plda.npz", mu=np.zeros(8), tr=np.eye(8), psi=np.linspace(2.0, 1.0, 8))
    config = {
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "segmentation": "$model/segmentation",
                "embedding": "embedding/pytorch_model.bin",
                "plda": "$model/plda",
                "clustering": "VBxClustering",
            },
        },
        "params": {
            "segmentation": {"min_duration_off": 0.0},
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
        },
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_pyannote_checkpoint_loads_and_assigns(pyannote_models, conversation) -> None:
    from models.diarization.pyannote_backend import PyannoteDiarizer, PyannoteEmbedder

    embedder = PyannoteEmbedder(pyannote_models / "embedding")  # folder form
    assert embedder.name == "pyannote:XVectorMFCC" and embedder.dimension == 32
    assert embedder.model.hparams.dimension == 32  # hyper-parameters restored from the checkpoint
    diarizer = PyannoteDiarizer(None, threshold=0.5, embedder=embedder)
    assert isinstance(diarizer, Diarizer)
    for audio, _ in conversation[:4]:
        label, conf = diarizer.assign(audio)  # random weights: only the form is meaningful
        assert label in {f"S{i}" for i in range(1, 9)} and 0.0 <= conf <= 1.0
    assert diarizer.assign(np.zeros(SAMPLE_RATE, dtype=np.float32))[1] == 0.0
    assert embedder.embed(conversation[0][0][:1600]) is None  # 0.1 s: below the minimum
    # File form, through the public constructor.
    other = PyannoteDiarizer(pyannote_models / "embedding" / "pytorch_model.bin", threshold=0.5)
    assert other.assign(conversation[0][0]) == ("S1", 1.0)


def test_pyannote_refuses_anything_but_local_files(pyannote_models, tmp_path) -> None:
    from models.diarization.pyannote_backend import PyannoteDiarizer, PyannoteEmbedder

    with pytest.raises(DiarizerUnavailable, match="only local paths"):
        PyannoteEmbedder("pyannote/wespeaker-voxceleb-resnet34-LM")  # a hub id is never downloaded
    hub_config = tmp_path / "config.yaml"
    hub_config.write_text(
        "pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
        "  params:\n    segmentation: pyannote/segmentation-3.0\n"
        f"    embedding: {pyannote_models / 'embedding'}\n    plda: {pyannote_models / 'plda'}\n"
    )
    diarizer = PyannoteDiarizer(pyannote_models / "embedding", threshold=0.5, pipeline_config=hub_config)
    with pytest.raises(DiarizerUnavailable, match="segmentation model not found"):
        diarizer.diarize(np.zeros(SAMPLE_RATE, dtype=np.float32))
    with pytest.raises(DiarizerUnavailable, match="needs pipeline_config"):
        PyannoteDiarizer(pyannote_models / "embedding", threshold=0.5).diarize(np.zeros(SAMPLE_RATE))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random weights: VBx averages empty clusters
def test_pyannote_offline_pipeline_from_local_config(pyannote_models, conversation) -> None:
    from models.diarization.pyannote_backend import PyannoteDiarizer

    diarizer = PyannoteDiarizer(
        pyannote_models / "embedding", threshold=0.5, pipeline_config=pyannote_models / "config.yaml"
    )
    recording = np.concatenate([audio for audio, _ in conversation[:3]])
    turns = diarizer.diarize(recording)
    assert all(isinstance(t, SpeakerTurn) for t in turns)
    assert all(0.0 <= t.start < t.end <= len(recording) / SAMPLE_RATE for t in turns)
    assert {t.speaker for t in turns} <= {f"S{i}" for i in range(1, len(turns) + 1)}
