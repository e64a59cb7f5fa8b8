"""``analyze(source)``: any video, audio file, subtitle file or transcript -> a :class:`Timeline`.

The flow (pyannote's "Pipeline": I/O, segmentation, batching and a progress hook around a model):

1. segmentation: a subtitle file (given, or beside the video), an embedded subtitle stream, else
   speech recognition with word timestamps and VAD, else (no audio at all) fixed windows;
2. the media is processed in windows of a few minutes, each decoded once: its audio slice feeds
   the ASR and every utterance's voice input; frames streamed at a low rate (``iter_frames``) are
   assigned to the utterances they fall in. Memory is bounded by the window, not the file;
3. the predictor (:mod:`mmva.model.predictor`: the default model, text + voice + face, or a
   ``mmva train`` checkpoint) predicts each batch of utterances; absent modalities are reported as
   absent, never guessed. A checkpoint decodes each utterance's span itself, exactly as in training.

Cold-start order (issue 15): the file is probed first (an unreadable file fails before anything
loads), then the speaker encoder, the predictor and the ASR load, each warmed up once; the voice
activity found for a window is handed to the ASR (not computed twice); a window's frames are decoded
in a thread while the text and voice heads run. Each step computes what it computed before, so the
output is the same.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import mmva
from mmva.analyze import asr as asr_mod
from mmva.analyze.diarize import DiarizeOptions, Diarizer
from mmva.analyze.segment import SegmentOptions, fixed_windows, segment_words, snap_to_speech
from mmva.analyze.subtitles import (SUBTITLE_EXTENSIONS, TRANSCRIPT_EXTENSIONS, cues_to_utterances,
                                    read_subtitles, read_transcript, sidecar_subtitles)
from mmva.analyze.timeline import Timeline, apply_prediction
from mmva.types import Utterance

log = logging.getLogger("mmva")

Progress = Callable[[str, float], None]
SAMPLE_RATE = 16000
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".wma")


@dataclass(frozen=True)
class AnalyzeOptions:
    """Knobs of the pipeline beyond ``analyze()``'s arguments (defaults suit talking-head video)."""

    fps: float = 2.0  # frames decoded per second of video for the face
    max_side: int = 320  # decoded frame size (longer side), enough for a face detector
    frames_per_utterance: int = 4  # face frames per utterance: half the cost of 8, same result on a steady face
    window: float = 300.0  # seconds of media decoded at a time: bounds memory on long videos
    lookahead: float = 15.0  # extra audio read past a window to find a pause to cut at
    context_turns: int = 3  # previous utterances given to the text model as dialogue context
    language: str | None = None  # ASR language (None: English for .en models, else detected)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    vad: asr_mod.VadOptions = field(default_factory=asr_mod.VadOptions)
    diarize: DiarizeOptions | None = field(default_factory=DiarizeOptions)  # None: no speaker labels


class _Stages:
    """Per-stage wall time and the progress callback (stage name, overall fraction done).

    Stages run in several threads (frame decoding, the face head), so the callback may be called
    from any of them, one call at a time; a stage's time is its own wall time, and stages that
    overlap add up to more than the run's."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.done = 0.0  # reported fractions never go back (overlapping subtitle cues could)
        self._lock = threading.Lock()

    def announce(self, stage: str, fraction: float) -> None:
        """Tell the progress callback that ``stage`` starts (timed elsewhere, e.g. in a thread)."""
        if self.progress is not None:
            with self._lock:
                self.done = max(self.done, min(1.0, fraction))
                self.progress(stage, self.done)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def run(self, stage: str, fraction: float, fn: Callable[[], Any]) -> Any:
        self.announce(stage, fraction)
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.add(stage, time.perf_counter() - t0)


def input_kind(path: str) -> str:
    """'transcript', 'subtitles' or 'media', from the file name."""
    ext = Path(str(path).split("?")[0]).suffix.lower()
    if ext in TRANSCRIPT_EXTENSIONS:
        return "transcript"
    if ext in SUBTITLE_EXTENSIONS:
        return "subtitles"
    return "media"


def analyze(source: str, *, subtitles: str | None = None, asr_model: str | None = None, device: str = "cpu",
            top_k: int = 3, progress: Progress | None = None, model: Any = None,
            speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None,
            diarize: bool = True, options: AnalyzeOptions | None = None) -> Timeline:
    """Analyse a video, audio file, subtitle file or transcript into an emotion timeline.

    ``subtitles`` segments by that .srt/.vtt instead of speech recognition; ``asr_model`` is a
    faster-whisper model folder or name (default: the offline Whisper tiny.en); ``progress(stage,
    fraction)`` is called as work advances; ``model`` is the model to run instead of the shipped
    default: a path or ``s3://`` URI of a ``mmva train`` checkpoint, a default-model folder or a
    ``model.tar.gz``, or a predictor object (:func:`mmva.model.predictor.load_predictor`).
    Speakers are found in the audio (:mod:`mmva.analyze.diarize`): ``speakers`` fixes their number,
    ``min_speakers``/``max_speakers`` bound it, ``diarize=False`` leaves utterances unlabelled.

    >>> t = analyze("talk.mp4")                                  # doctest: +SKIP
    >>> [(u.start_time, u.text, u.emotions[0]["label"]) for u in t.utterances][:1]   # doctest: +SKIP
    [(0.52, 'I am so happy to see you.', 'joy')]
    """
    opts = _with_speakers(options or AnalyzeOptions(), diarize, speakers, min_speakers, max_speakers)
    stages = _Stages(progress)
    kind = input_kind(source)
    if kind != "media":
        predictor = _load_predictor(model, device)
        problems: list[str] = []
        utts = read_transcript(source) if kind == "transcript" else read_subtitles(source, problems)
        end = max((u.end_time or 0.0 for u in utts), default=None) if kind == "subtitles" else None
        timeline = Timeline(source=str(source), segmentation=kind, duration=end, problems=problems)
        _predict(predictor, utts, [None] * len(utts), [None] * len(utts), opts, top_k, stages, 0.0, [])
        timeline.utterances = utts
    else:
        timeline, predictor = _analyze_media(str(source), subtitles, asr_model, device, top_k, opts, stages, model)
    timeline.model = {**_model_info(predictor), **timeline.model}
    timeline.timings = stages.timings
    if progress is not None:
        progress("done", 1.0)
    return timeline


def _with_speakers(opts: AnalyzeOptions, diarize: bool, speakers: int | None, min_speakers: int | None,
                   max_speakers: int | None) -> AnalyzeOptions:
    """``opts`` with the speaker counts asked for (checked now: a bad count fails before any work)."""
    import dataclasses

    asked = {k: v for k, v in (("speakers", speakers), ("min_speakers", min_speakers),
                               ("max_speakers", max_speakers)) if v is not None}
    if not diarize:
        if asked:
            raise ValueError(f"{', '.join(asked)} given with diarization turned off")
        return dataclasses.replace(opts, diarize=None)
    base = opts.diarize or DiarizeOptions()
    if asked:
        base = dataclasses.replace(base, **{"speakers": None, "min_speakers": None, "max_speakers": None, **asked})
        from mmva.encoders.speaker import resemblyzer_weights

        resemblyzer_weights()  # asked for speakers without the encoder: say so now
    return dataclasses.replace(opts, diarize=base)


def _diarizer(opts: AnalyzeOptions, has_audio: bool, problems: list[str]) -> Diarizer | None:
    """A diarizer for this file, or None (no audio, turned off, or no speaker encoder: said in problems)."""
    from mmva.encoders.weights import WeightsNotFound

    if opts.diarize is None or not has_audio:
        return None
    try:
        return Diarizer(opts.diarize)
    except WeightsNotFound as err:
        problems.append(f"speakers not identified: {err}")
        return None


def _warm_up(model: Any) -> None:
    try:
        model.warm_up()
    except Exception as exc:  # a failed warm-up only costs time: the real call reports real errors
        log.debug("model warm-up failed: %s", exc)


def _in_background(fn: Callable[[], Any], name: str) -> Future:
    """Run ``fn`` in a daemon thread; its result (or exception) comes from the returned future.

    >>> _in_background(lambda: 6 * 7, "answer").result()
    42
    """
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            fut.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


class _Models:
    """The speaker encoder and the predictor of one analysis, loaded once and warmed up (their first
    calls made on a short tone), after the file was probed: a file that cannot be read fails before
    any model is loaded.

    They load before the ASR model, as before issue 15: with the CTranslate2 model loaded first (and
    in every variant that loaded torch models in a thread while the ASR ran), torch's convolutions
    and LSTM ran several times slower for the rest of the process (a cold 60 s analysis: 55 s of CPU
    instead of 26 s on 2 cores; the cause, likely two OpenMP runtimes, was not traced further).
    The default model's networks no longer run on torch when their ONNX forms are cached (face,
    speaker encoder, text: :mod:`mmva.model.onnx_cache`); onnxruntime, on one intra-op thread of its
    own pool, ran them as fast after the ASR model was loaded and run as before it (8 face crops
    34.7 vs 34.6 ms, GE2E on 10 s 55.5 vs 56.4 ms, while torch's GE2E went from 57 to 86 ms). The
    order stays for checkpoints and cold caches, which still load torch.
    """

    def __init__(self, model: Any, device: str, opts: AnalyzeOptions, has_audio: bool, problems: list[str],
                 stages: _Stages) -> None:
        self._args = (model, device, opts, has_audio, problems)
        self._stages = stages
        self._loaded: tuple[Diarizer | None, Any] | None = None

    def load(self) -> tuple[Diarizer | None, Any]:
        if self._loaded is None:
            self._loaded = self._stages.run("load models", 0.0, self._load)
        return self._loaded

    def _load(self) -> tuple[Diarizer | None, Any]:
        model, device, opts, has_audio, problems = self._args
        diarizer = _diarizer(opts, has_audio, problems)
        predictor = _load_predictor(model, device)
        for found in (diarizer, predictor):
            if found is not None and hasattr(found, "warm_up"):
                _warm_up(found)
        return diarizer, predictor

    def diarizer(self) -> Diarizer | None:
        return self.load()[0]

    def predictor(self) -> Any:
        return self.load()[1]


def _load_predictor(model: Any, device: str) -> Any:
    if model is not None and not isinstance(model, (str, Path)):
        return model  # a predictor object
    from mmva.model.predictor import load_predictor

    return load_predictor(model, asr_mod.resolve_device(device))


def _model_info(predictor: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"mmva_version": mmva.__version__}
    for attr in ("info", "describe", "metadata"):
        value = getattr(predictor, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, dict):
            info.update({k: v for k, v in value.items() if isinstance(v, (str, int, float, bool, list, dict))})
            break
    info.setdefault("name", getattr(predictor, "name", type(predictor).__name__))
    return info


# -------------------------------------------------------------------------------------------------
# media


def _analyze_media(path: str, subtitles: str | None, asr_model: str | None, device: str, top_k: int,
                   opts: AnalyzeOptions, stages: _Stages, model: Any) -> tuple[Timeline, Any]:
    from mmva.io.media import probe, read_subtitles_stream

    info = stages.run("probe", 0.0, lambda: probe(path))  # a file that cannot be read fails here, before any loading
    timeline = Timeline(source=path, duration=round(info.duration, 3) if info.duration else None,
                        media={"has_video": info.has_video, "has_audio": info.has_audio, "width": info.width,
                               "height": info.height, "fps": round(info.fps, 3)})
    if not info.has_audio:
        timeline.problems.append("no audio stream: voice not analysed")
    if not info.has_video:
        timeline.media.pop("width"), timeline.media.pop("height"), timeline.media.pop("fps")
    known: list[Utterance] | None = None
    sub_file = subtitles or sidecar_subtitles(path)
    speaker_problems: list[str] = []
    models = _Models(model, device, opts, info.has_audio, speaker_problems, stages)
    if sub_file:
        known, timeline.segmentation = read_subtitles(sub_file, timeline.problems), "subtitles"
        timeline.media["subtitles"] = sub_file
    elif info.n_subtitle_streams:
        cues = stages.run("subtitles", 0.0, lambda: read_subtitles_stream(path))
        if cues:
            known, timeline.segmentation = cues_to_utterances(cues, timeline.problems), "embedded-subtitles"
    if known is not None and info.duration:
        known = _within_media(known, info.duration, timeline.problems)
    if known is None and not info.has_audio:
        known, timeline.segmentation = fixed_windows(info.duration, opts.segment.window), "windows"
        timeline.problems.append(f"no audio and no subtitles: face-only analysis of "
                                 f"{opts.segment.window:g} s windows")
    models.load()  # torch before CTranslate2 (see _Models)
    asr = None
    if known is None:
        timeline.segmentation = "asr"
        asr = stages.run("load asr", 0.0, lambda: asr_mod.load_asr(asr_model, asr_mod.resolve_device(device)))
        timeline.model["asr"] = asr_mod.asr_name(asr)
    history: list[str] = []

    def diarizer() -> Diarizer | None:
        found = models.diarizer()
        if found is not None and "diarization" not in timeline.model:
            timeline.model["diarization"] = "resemblyzer GE2E speaker embeddings + agglomerative clustering"
        return found

    predictor = models.predictor
    # Where each speaker was seen talking, kept from window to window (predictors that support it).
    faces: Any = None

    # How far the audio could be decoded: a truncated file ends before the duration it declares.
    reach = [0.0] if asr is not None else [info.duration or 0.0]
    windows = (_asr_windows(path, info.duration, asr, opts, stages, reach, diarizer) if asr is not None
               else _known_windows(path, known or [], info.has_audio, info.duration, opts, stages, reach))
    for utts, chunk, t0, regions in windows:
        if not utts:
            continue
        frac = (utts[-1].end_time or 0.0) / info.duration if info.duration else 0.0
        if asr is None and chunk is not None:
            found = diarizer()
            if found is not None:
                stages.run("speakers", frac, lambda: _label_known(found, utts, chunk, t0))
        # A predictor that decodes its utterances itself (a checkpoint, as in training) needs no frames.
        own_media = bool(getattr(predictor(), "decodes_media", False))
        frames: Any = [None] * len(utts)
        decoding: Future | None = None
        if info.has_video and not own_media:
            # Decoded in a thread while the text and voice heads run; each utterance's frames are
            # handed over as soon as the decoder is past them, so the face head can start on the
            # first utterances while later ones are still being decoded.
            stages.announce("frames", frac)
            frames = _FramesLater(len(utts), stages)
            decoding = _in_background(frames.fill(lambda: _collect_frames(path, utts, opts, timeline.problems,
                                                                          stages, frames.deliver)), "mmva-frames")
        audio = ([_slice(chunk, t0, u) for u in utts] if chunk is not None and not own_media
                 else [None] * len(utts))
        sources = [_span(path, u, info.duration) for u in utts]
        current = predictor()
        if faces is None and callable(getattr(current, "speaker_faces", None)):
            faces = current.speaker_faces()
        # Speech in each utterance, from the window's voice activity (the voice head need not look again).
        speech = _utterance_speech(utts, regions, t0) if regions is not None else None
        _predict(current, utts, audio, frames, opts, top_k, stages, frac, history, sources, faces, speech)
        if decoding is not None:  # the decoder may still be closing the file, timing or noting a problem
            decoding.result()
        for u in utts:  # the window's audio and frames are dropped here; the results stay
            u.path = path
        timeline.utterances.extend(utts)
    found_predictor = predictor()  # also when nothing was said: the JSON names the model
    timeline.problems.extend(speaker_problems)
    if info.has_audio and info.duration and reach[0] < info.duration - 1.0:
        timeline.problems.append(f"audio ends at {reach[0]:.1f} s of the {info.duration:.1f} s the file declares "
                                 f"(truncated or damaged): {reach[0]:.1f}-{info.duration:.1f} s not analysed")
    return timeline, found_predictor


class _FramesLater:
    """The frames of a window's utterances, decoded in the background: a sequence whose item ``i``
    waits until the decoder has delivered utterance ``i`` (in time order, so a reader going through
    the utterances in order works while later ones are decoded). Waiting time is summed in the
    ``wait for frames`` timing; an error of the decoding thread is raised by every item not delivered."""

    def __init__(self, n: int, stages: _Stages) -> None:
        self._items: list[Future] = [Future() for _ in range(n)]
        self._stages = stages

    def deliver(self, i: int, frames: np.ndarray | None) -> None:
        if not self._items[i].done():
            self._items[i].set_result(frames)

    def fill(self, collect: Callable[[], Any]) -> Callable[[], None]:
        """A job for the decoding thread: run ``collect``, which delivers every item (see
        :func:`_collect_frames`); its error goes to every item not delivered yet."""

        def run() -> None:
            try:
                collect()
            except BaseException as exc:
                for item in self._items:
                    if not item.done():
                        item.set_exception(exc)
                raise

        return run

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, i: int) -> np.ndarray | None:
        item = self._items[i]
        if item.done():
            return item.result()
        t0 = time.perf_counter()
        try:
            return item.result()
        finally:  # read from the face head's thread too: summed under the stages' lock, no progress call
            self._stages.add("wait for frames", time.perf_counter() - t0)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._get(j) for j in range(len(self._items))[i]]
        return self._get(range(len(self._items))[i])

    def __iter__(self) -> Iterator[np.ndarray | None]:
        return (self._get(i) for i in range(len(self._items)))


def _within_media(utts: list[Utterance], duration: float, problems: list[str]) -> list[Utterance]:
    """Cues inside the media; one starting after its end is skipped, one running past it is cut,
    each named in ``problems``."""
    from mmva.analyze.subtitles import cue_span

    kept = []
    for u in utts:
        start, end = u.start_time or 0.0, u.end_time or 0.0
        if start >= duration:
            problems.append(f"subtitle cue {cue_span(start, end, u.text)} starts after the media ends "
                            f"({duration:.3f} s); skipped")
            continue
        if end > duration + 0.5:
            problems.append(f"subtitle cue {cue_span(start, end, u.text)} runs past the media's end; "
                            f"cut at {duration:.3f} s")
            u.end_time = round(duration, 3)
        kept.append(u)
    return kept


def _read_audio(path: str, start: float, end: float | None,
                problems: list[str] | None = None) -> np.ndarray | None:
    from mmva.io.media import MediaError, read_audio

    try:
        return read_audio(path, SAMPLE_RATE, start=start or None, end=end)
    except MediaError as err:
        if problems is not None:
            problems.append(f"audio {start:.1f}-{end or 0:.1f} s: {err.reason}")
        return None


def _label_known(diarizer: Diarizer, utts: list[Utterance], chunk: np.ndarray, t0: float) -> None:
    """Speakers of known utterances (subtitle cues), from the windows inside their spans."""
    spans = [((u.start_time or 0.0) - t0, (u.end_time or 0.0) - t0) for u in utts]
    track = diarizer.track(chunk, [(max(0.0, s), min(e, len(chunk) / SAMPLE_RATE)) for s, e in spans])
    for u, (s, e) in zip(utts, spans):
        u.speaker = track.label(s, e)


def _asr_windows(path: str, duration: float, asr: Any, opts: AnalyzeOptions, stages: _Stages,
                 reach: list[float], diarizer: Callable[[], Diarizer | None] | None = None
                 ) -> Iterator[tuple[list[Utterance], np.ndarray | None, float, list[tuple[float, float]] | None]]:
    """Yield (utterances, audio chunk, chunk start, voice-activity regions relative to the chunk start)
    window by window, cutting windows at pauses.

    ``diarizer()`` gives the diarizer (None: speakers are not labelled).
    """
    t0 = 0.0
    while duration <= 0 or t0 < duration - 0.05:
        want_end = t0 + opts.window + opts.lookahead
        end = None if duration <= 0 or want_end >= duration else want_end
        frac = t0 / duration if duration else 0.0
        chunk = stages.run("audio", frac, lambda: _read_audio(path, t0, end))
        if chunk is None or chunk.size == 0:
            return
        reach[0] = max(reach[0], t0 + len(chunk) / SAMPLE_RATE)
        stamps = stages.run("vad", frac, lambda: asr_mod.speech_stamps(chunk, opts.vad))
        regions = asr_mod.stamps_to_seconds(stamps)
        cut = len(chunk) / SAMPLE_RATE
        if end is not None:  # not the last window: stop at a pause near the window's nominal end
            cut = _cut_point(chunk, regions, opts.window, opts.lookahead)
        regions = [(s, min(e, cut)) for s, e in regions if s < cut]
        part = chunk[: int(cut * SAMPLE_RATE)]
        # The whole chunk is transcribed: its voice activity is known already (no second VAD pass).
        known = stamps if part.size == chunk.size else None
        words = stages.run("speech", frac, lambda: asr_mod.transcribe_words(
            asr, part, regions, opts.language, opts.vad, stamps=known))
        speaker_of = None
        found = diarizer() if diarizer is not None and words else None
        if found is not None:
            track = stages.run("speakers", frac, lambda: found.track(part, regions))
            min_turn = found.options.min_turn
            speaker_of = lambda spans: track.word_labels(spans, min_turn)  # noqa: E731
        utts = snap_to_speech(segment_words(words, opts.segment, speaker_of), regions)
        for u in utts:
            u.start_time = round(u.start_time + t0, 3)  # type: ignore[operator]
            u.end_time = round(u.end_time + t0, 3)  # type: ignore[operator]
        yield utts, part, t0, regions
        if end is None:
            return
        t0 += cut


def _cut_point(chunk: np.ndarray, regions: list[tuple[float, float]], window: float, lookahead: float) -> float:
    """Seconds into ``chunk`` to end this window: the middle of the widest pause near ``window``."""
    lo, hi = max(1.0, window - lookahead), min(len(chunk) / SAMPLE_RATE, window + lookahead)
    best, width = None, 0.0
    for (_, e1), (s2, _) in zip(regions, regions[1:]):
        mid = (e1 + s2) / 2
        if lo <= mid <= hi and s2 - e1 > width:
            best, width = mid, s2 - e1
    if best is None and not any(s < hi and e > lo for s, e in regions):
        best = window  # silence all around the nominal end
    if best is None:  # continuous speech: the quietest 100 ms in the search range
        a, b = int(lo * SAMPLE_RATE), int(hi * SAMPLE_RATE)
        hop = SAMPLE_RATE // 10
        seg = chunk[a:b][: (b - a) // hop * hop].reshape(-1, hop)
        best = lo + (int(np.argmin(np.square(seg).mean(1))) + 0.5) / 10 if len(seg) else window
    return float(best)


def _known_windows(path: str, utts: list[Utterance], has_audio: bool, duration: float, opts: AnalyzeOptions,
                   stages: _Stages, reach: list[float]
                   ) -> Iterator[tuple[list[Utterance], np.ndarray | None, float, list[tuple[float, float]] | None]]:
    """Group known utterances (subtitles, windows) into spans of about ``opts.window`` seconds."""
    utts = [u for u in utts if duration <= 0 or (u.start_time or 0.0) < duration]
    i = 0
    while i < len(utts):
        j, start = i, utts[i].start_time or 0.0
        end = utts[i].end_time or start
        while j < len(utts) and (utts[j].end_time or 0.0) - start <= opts.window:
            end = max(end, utts[j].end_time or 0.0)
            j += 1
        j = max(j, i + 1)
        end = max(end, utts[j - 1].end_time or 0.0)
        group = utts[i:j]
        chunk = None
        if has_audio:
            frac = start / duration if duration else 0.0
            chunk = stages.run("audio", frac, lambda: _read_audio(path, start, end))
            got = start + (len(chunk) / SAMPLE_RATE if chunk is not None else 0.0)
            if got < end - 1.0:  # a short read: the file ends there
                reach[0] = min(reach[0], got)
        yield group, chunk, start, None
        i = j


def _span(path: str, u: Utterance, duration: float) -> tuple[str, float | None, float | None]:
    """The utterance's media span; None where it reaches the start or the end of the file, so an
    utterance covering a whole clip is decoded exactly as training decodes a whole clip (a cue cut
    at the media's end is rounded to the millisecond: within 1 ms counts as the end)."""
    start = u.start_time if u.start_time and u.start_time > 0 else None
    end = u.end_time if u.end_time is not None and (duration <= 0 or u.end_time < duration - 1e-3) else None
    return path, start, end


def _slice(chunk: np.ndarray, t0: float, u: Utterance) -> np.ndarray | None:
    a = max(0, int(round(((u.start_time or 0.0) - t0) * SAMPLE_RATE)))
    b = min(len(chunk), int(round(((u.end_time or 0.0) - t0) * SAMPLE_RATE)))
    return chunk[a:b].copy() if b - a >= SAMPLE_RATE // 10 else None  # copy: the chunk can be freed


class FrameCollector:
    """Keeps, for each utterance, up to k frames nearest to evenly spaced target times.

    Frames arrive in time order from a stream; memory is k frames per utterance of the window.

    >>> c = FrameCollector([(0.0, 1.0)], fps=2.0, k_max=2)
    >>> for t in (0.0, 0.5, 1.0): c.add(t, np.full((2, 2, 3), int(t * 10), np.uint8))
    >>> c.frames(0)[:, 0, 0, 0].tolist()
    [0, 5]
    """

    def __init__(self, spans: list[tuple[float, float]], fps: float, k_max: int) -> None:
        targets, owners = [], []
        for i, (s, e) in enumerate(spans):
            k = max(1, min(k_max, int(math.ceil((e - s) * fps))))
            step = (e - s) / k
            targets += [s + step * (j + 0.5) for j in range(k)]
            owners += [i] * k
        order = np.argsort(targets, kind="stable")
        self.times = np.asarray(targets, dtype=float)[order]
        self.owner = np.asarray(owners, dtype=int)[order]
        self.best: list[np.ndarray | None] = [None] * len(self.times)
        self.dist = np.full(len(self.times), np.inf)
        self.radius = 1.0 / fps + 0.05
        self.n = len(spans)

    def add(self, t: float, frame: np.ndarray) -> None:
        lo = int(np.searchsorted(self.times, t - self.radius))
        hi = int(np.searchsorted(self.times, t + self.radius, side="right"))
        for j in range(lo, hi):
            d = abs(self.times[j] - t)
            if d < self.dist[j]:
                self.dist[j], self.best[j] = d, frame

    def last_use(self) -> np.ndarray:
        """Per utterance, the latest frame time that can still change its frames."""
        last = np.full(self.n, -np.inf)
        np.maximum.at(last, self.owner, self.times + self.radius)
        return last

    def frames(self, i: int) -> np.ndarray | None:
        picked, seen = [], set()
        for j in np.flatnonzero(self.owner == i):
            f = self.best[j]
            if f is not None and id(f) not in seen:
                seen.add(id(f))
                picked.append(f)
        return np.stack(picked) if picked else None


def _collect_frames(path: str, utts: list[Utterance], opts: AnalyzeOptions,
                    problems: list[str], stages: _Stages | None = None,
                    deliver: Callable[[int, np.ndarray | None], None] | None = None) -> list[np.ndarray | None]:
    """Each utterance's face frames (None: none decoded); ``deliver(i, frames)`` is called once for
    each utterance, in order, as soon as the decoder has passed every frame it could use (the last
    ones when decoding ends); the returned list then holds None for those delivered early."""
    from mmva.io.media import MediaError, iter_frames

    spans = [(u.start_time or 0.0, u.end_time or 0.0) for u in utts]
    collector = FrameCollector(spans, opts.fps, opts.frames_per_utterance)
    start = max(0.0, min(s for s, _ in spans) - 0.1)
    end = max(e for _, e in spans) + 0.1
    done_after = np.maximum.accumulate(collector.last_use()) if deliver is not None else np.zeros(0)
    sent = 0
    t0 = time.perf_counter()
    try:
        for t, frame in iter_frames(path, fps=opts.fps, max_side=opts.max_side, start=start or None, end=end):
            collector.add(t, frame)
            while sent < len(done_after) and t > done_after[sent]:
                deliver(sent, collector.frames(sent))  # type: ignore[misc]
                sent += 1
    except MediaError as err:
        problems.append(f"frames {start:.1f}-{end:.1f} s: {err.reason}")
    if stages is not None:  # a background thread: timed here, without a progress call
        stages.add("frames", time.perf_counter() - t0)
    # Utterances already handed over are not stacked a second time (their frames are with the reader).
    out = [collector.frames(i) if i >= sent else None for i in range(len(utts))]
    if deliver is not None:
        for i in range(sent, len(out)):
            deliver(i, out[i])
    return out


FOLLOWING_TURNS = 2  # next utterances passed to a model that uses them (it keeps what it was trained on)


def _utterance_speech(utts: list[Utterance], regions: list[tuple[float, float]], t0: float) -> list[float]:
    """Seconds of voice activity (``regions``, relative to ``t0``) inside each utterance's span.

    >>> u = Utterance(text="hi", start_time=10.0, end_time=12.0)
    >>> _utterance_speech([u], [(0.5, 1.0), (1.5, 3.0)], 9.0)
    [1.5]
    """
    out = []
    for u in utts:
        s, e = (u.start_time or 0.0) - t0, (u.end_time or 0.0) - t0
        out.append(round(sum(max(0.0, min(e, re) - max(s, rs)) for rs, re in regions), 3))
    return out


def _predict(predictor: Any, utts: list[Utterance], audio: list[np.ndarray | None],
             frames: list[np.ndarray | None], opts: AnalyzeOptions, top_k: int, stages: _Stages,
             frac: float, history: list[str], sources: list[Any] | None = None, faces: Any = None,
             speech: list[float] | None = None) -> None:
    """Run the model over one window's utterances and write the predictions into them (``faces``: the
    predictor's memory of where each speaker was seen talking, one per recording; ``speech``: seconds of
    voice activity in each utterance when the pipeline measured it, passed to predictors that take it)."""
    contexts = []
    for u in utts:
        contexts.append(history[-opts.context_turns:] if opts.context_turns else [])
        if u.text:
            history.append(u.text)
    del history[:-max(1, opts.context_turns)]
    # One call per window (bounded by the window length), not per fixed-size batch: the voice head
    # normalises the utterances of one recording together, and needs them all to do so (the text
    # model batches internally by length).
    # Speakers are passed only when known, so predictor objects written before diarization still work.
    speakers = {"speakers": [u.speaker for u in utts]} if any(u.speaker for u in utts) else {}
    if speakers and faces is not None:
        speakers["speaker_faces"] = faces
    if speech is not None and "speech" in inspect.signature(predictor.predict).parameters:
        speakers["speech"] = speech
    if getattr(predictor, "uses_following", False):
        # A recorded file's transcript is known: the next utterances of the window are context too
        # (the last one of a window, every few minutes, goes without; the model was trained so).
        spoken = [u.text for u in utts]
        speakers["following"] = [[t for t in spoken[i + 1: i + 1 + FOLLOWING_TURNS] if t]
                                 for i in range(len(utts))]
    preds = stages.run("emotions", frac, lambda: predictor.predict(
        [u.text for u in utts], contexts=contexts, audio=audio, frames=frames,
        sample_rate=SAMPLE_RATE, same_speaker=True, sources=sources, **speakers))
    for u, p in zip(utts, preds):
        apply_prediction(u, p, top_k)


# -------------------------------------------------------------------------------------------------
# batches


@dataclass
class BatchResult:
    """What a batch produced: written outputs (or timelines when nothing is written) and failures."""

    outputs: dict[str, list[str]] = field(default_factory=dict)  # source -> written files
    timelines: dict[str, Timeline] = field(default_factory=dict)  # kept only when not written out
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> timeline summary
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line per failure plus a count, e.g. for the end of a CLI run."""
        done = len(self.summaries)
        lines = [f"analysed {done} file(s), {len(self.failed)} failed, in {self.seconds:.1f} s"]
        lines += [f"  failed: {reason}" if reason.startswith(src) else f"  failed: {src}: {reason}"
                  for src, reason in self.failed]
        return "\n".join(lines)


def expand_inputs(paths: list[str]) -> list[str]:
    """Files to analyse: explicit files as given; directories walked for media and standalone
    subtitle files (a subtitle beside a video of the same name belongs to that video; our own
    ``*.mmva.*`` outputs are skipped).

    >>> expand_inputs([])
    []
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if "://" in str(p) or not path.is_dir():
            out.append(str(p))
            continue
        files = sorted(f for f in path.rglob("*") if f.is_file() and ".mmva." not in f.name
                       and not any(part.startswith(".") for part in f.relative_to(path).parts))
        stems = {f.with_suffix("") for f in files if f.suffix.lower() in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS}
        for f in files:
            ext = f.suffix.lower()
            if ext in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS or (ext in SUBTITLE_EXTENSIONS
                                                                and f.with_suffix("") not in stems):
                out.append(str(f))
    # A file given twice (or inside two given folders) is analysed once.
    unique: dict[str, str] = {}
    for p in out:
        unique.setdefault(p if "://" in p else os.path.realpath(p), p)
    return list(unique.values())


def analyze_batch(paths: list[str], *, out_dir: str | None = None,
                  formats: tuple[str, ...] | list[str] = ("json",),
                  on_result: Callable[[str, Timeline | None, str | None], None] | None = None,
                  embed_video: bool = False, **kwargs: Any) -> BatchResult:
    """Analyse many files (directories expanded); a failing file is recorded and the rest go on.

    Each result is written as soon as it is ready (``out_dir``), so an interruption loses nothing
    already analysed. ``on_result(source, timeline, error)`` is called after every file.
    ``embed_video`` writes a small playable copy beside each HTML report (see :func:`write_outputs`).

    >>> result = analyze_batch(["talks/"], out_dir="out", formats=["json", "html"])   # doctest: +SKIP
    >>> print(result.summary())                                                       # doctest: +SKIP
    analysed 3 file(s), 1 failed, in 12.0 s
      failed: talks/broken.mp4: not a readable media file (...)
    """
    from mmva.analyze.writers import OutputError, check_output_dir, plan_outputs, write_outputs
    from mmva.io.media import MediaError

    t_start = time.perf_counter()
    result = BatchResult()
    files = expand_inputs(list(paths))
    if out_dir is not None:
        check_output_dir(out_dir)  # an unwritable destination fails now, not after the analysis
        roots = [str(p) for p in paths if "://" not in str(p) and Path(p).is_dir()]
        plan = plan_outputs(files, out_dir, roots)
        written: set[str] = set()
    for src in files:
        try:
            timeline = analyze(src, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a batch reports every kind of failure and goes on
            _batch_failure(result, src, str(exc) or type(exc).__name__, on_result)
            continue
        if out_dir is not None:
            try:
                folder, stem = plan[src]
                result.outputs[src] = write_outputs(timeline, folder, list(formats), stem, written=written,
                                                    embed_video=embed_video)
            except (OSError, OutputError, MediaError) as exc:  # a full disk, a lost mount: this file failed
                reason = str(exc) if isinstance(exc, OutputError) else f"cannot write outputs: {exc}"
                _batch_failure(result, src, reason, on_result)
                continue
        else:
            result.timelines[src] = timeline
        result.summaries[src] = timeline.summary
        if on_result is not None:
            on_result(src, timeline, None)
    result.seconds = time.perf_counter() - t_start
    return result


def _batch_failure(result: BatchResult, src: str, reason: str,
                   on_result: Callable[[str, Timeline | None, str | None], None] | None) -> None:
    log.debug("analysis of %s failed: %s", src, reason, exc_info=True)
    result.failed.append((src, reason))
    if on_result is not None:
        on_result(src, None, reason)
