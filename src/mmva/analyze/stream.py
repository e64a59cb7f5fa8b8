"""Live analysis: feed audio as it is captured (and frames, optionally) and get each utterance as it ends.

:class:`LiveAnalyzer` is the streaming form of :func:`mmva.analyze.pipeline.analyze` for a microphone,
a webcam or any stream that is read as it plays:

1. audio chunks (16 kHz mono PCM, any size) go into a buffer that holds only the utterance being
   spoken; every ``step`` seconds the Silero voice-activity detector (the one ``analyze`` uses) runs
   over that buffer;
2. an utterance closes when ``pause`` seconds of silence follow the speech (``analyze`` cuts at the
   same pause), or when it reaches ``max_utterance`` seconds (cut at its widest pause);
3. the closed stretch is transcribed by the same Whisper model with word times and grouped into
   utterances by the same rules (:func:`~mmva.analyze.segment.segment_words`, sentence ends and
   pauses, edges snapped to the speech regions), then the model predicts each one from its words,
   its audio and up to 4 frames across it, with the previous utterances' text as context (never a
   later one): the same fields as ``mmva analyze`` (:func:`~mmva.analyze.timeline.apply_prediction`);
4. while an utterance is being spoken, a partial transcript is made every ``partial_every`` seconds
   of new speech, when the caller says there is time for it.

Memory is bounded whatever the length of the input: the audio of one utterance (at most
``max_utterance`` plus the pause), the frames of the same span at ``2 * fps`` per second, and the
last ``context_turns`` texts. Finished utterances are handed out, never kept.

Times are seconds of stream (audio fed so far); frames carry times on the same clock.

>>> live = LiveAnalyzer()                                           # doctest: +SKIP
>>> for chunk in microphone_chunks():                               # doctest: +SKIP
...     for event in live.feed_audio(chunk):
...         print(event.to_dict())
>>> live.finish()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

import numpy as np

from mmva.analyze import asr as asr_mod
from mmva.analyze.segment import SegmentOptions, segment_words, snap_to_speech
from mmva.analyze.timeline import apply_prediction, utterance_to_dict
from mmva.types import Utterance

if TYPE_CHECKING:
    from mmva.analyze.timeline import Timeline

log = logging.getLogger("mmva")

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class LiveOptions:
    """How the live analysis segments and what it keeps (defaults match ``mmva analyze``)."""

    pause: float = 0.6  # seconds of silence that end an utterance (analyze's SegmentOptions.pause)
    max_utterance: float = 15.0  # longest stretch before it is cut at its widest pause
    step: float = 0.25  # seconds of new audio between voice-activity checks
    partial_every: float = 1.0  # seconds of new speech between partial transcripts (0: none)
    preroll: float = 0.3  # audio kept before detected speech (the VAD starts a little late)
    context_turns: int = 3  # previous utterances given to the text model
    fps: float = 2.0  # face frames kept per second (analyze decodes 2 per second)
    max_side: int = 320  # frames are shrunk to this longer side, as analyze decodes them
    frames_per_utterance: int = 4
    top_k: int = 3
    language: str | None = None
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    vad: asr_mod.VadOptions = field(default_factory=asr_mod.VadOptions)


@dataclass
class Partial:
    """The words heard so far in the utterance being spoken (may change until it finishes)."""

    text: str
    start_time: float
    end_time: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "partial", "start_time": round(self.start_time, 3), "end_time": round(self.end_time, 3),
                "text": self.text}


@dataclass
class Finished:
    """A finished, analysed utterance. ``delay``: wall seconds from the arrival of the audio at its
    end to this event (includes the pause that closed it); ``index``: its number in the stream."""

    utterance: Utterance
    index: int
    delay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "utterance", "index": self.index,
                "delay": None if self.delay is None else round(self.delay, 3),
                "utterance": utterance_to_dict(self.utterance)}


Event = Union[Partial, Finished]


def pcm_to_float(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1] from int16 little-endian PCM bytes or an int16/float array.

    >>> pcm_to_float(b"\\x00\\x40\\x00\\xc0").tolist()
    [0.5, -0.5]
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) % 2:
            raise ValueError("16-bit PCM needs an even number of bytes")
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    arr = np.asarray(data)
    if arr.dtype == np.int16:
        return arr.astype(np.float32).reshape(-1) / 32768.0
    return arr.astype(np.float32).reshape(-1)


class LiveAnalyzer:
    """Streaming analysis of one speaker's audio (and optional frames) into finished utterances.

    ``model``: a predictor object or what :func:`mmva.model.predictor.load_predictor` takes (None: the
    shipped model); ``asr_model``: a faster-whisper model object or name (None: Whisper tiny.en).
    Not thread-safe: one thread feeds one analyzer (the model and ASR it uses may be shared).

    >>> live = LiveAnalyzer()                                          # doctest: +SKIP
    >>> events = live.feed_audio(pcm_bytes) + live.finish()            # doctest: +SKIP
    >>> [e.utterance.text for e in events if isinstance(e, Finished)]  # doctest: +SKIP
    ['I am so happy to see you today.']
    """

    def __init__(self, model: Any = None, *, asr_model: Any = None, device: str = "cpu",
                 options: LiveOptions | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        from mmva.analyze.pipeline import _load_predictor

        self.options = options or LiveOptions()
        self.predictor = _load_predictor(model, device)
        self.asr = (asr_model if asr_model is not None and not isinstance(asr_model, str)
                    else asr_mod.load_asr(asr_model, asr_mod.resolve_device(device)))
        self.clock = clock
        self._buf = np.zeros(0, np.float32)
        self._buf_t0 = 0.0  # stream time of _buf[0]
        self._fed = 0  # samples fed in all
        self._unchecked = 0  # samples fed since the last voice-activity check
        self._arrivals: deque[tuple[float, float]] = deque()  # (stream time at a chunk's end, wall time)
        self._frames: deque[tuple[float, np.ndarray]] = deque()
        self._history: deque[str] = deque(maxlen=max(1, self.options.context_turns))
        self._partial_from = 0.0  # speech end (stream time) covered by the last partial
        self._count = 0

    def warm_up(self) -> None:
        """Load the model's heads and run the recogniser once, so the first utterance is not late."""
        if hasattr(self.predictor, "warm_up"):
            self.predictor.warm_up()
        if not getattr(self.asr, "_mmva_warm", False):
            rng = np.random.default_rng(0)
            _transcribe_text(self.asr, (0.01 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32),
                             self.options.language)
            self.asr._mmva_warm = True

    # -- state ------------------------------------------------------------------------------------

    @property
    def time(self) -> float:
        """Seconds of audio fed so far."""
        return self._fed / SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio held (the utterance being spoken); bounded by ``max_utterance`` + pause."""
        return len(self._buf) / SAMPLE_RATE

    @property
    def buffered_frames(self) -> int:
        return len(self._frames)

    @property
    def utterances_emitted(self) -> int:
        return self._count

    def describe(self) -> dict[str, Any]:
        """The ``model`` block of a live timeline (the predictor's, plus the ASR model)."""
        from mmva.analyze.pipeline import _model_info

        return {**_model_info(self.predictor), "asr": asr_mod.asr_name(self.asr)}

    # -- input ------------------------------------------------------------------------------------

    def feed_audio(self, pcm: bytes | np.ndarray, *, partials: bool = True,
                   received_at: float | None = None) -> list[Event]:
        """Add audio (16 kHz mono: int16 PCM bytes or array, or float32); returns the events it finished.

        ``partials=False`` skips partial transcripts (a caller that has fallen behind real time);
        ``received_at``: when the chunk arrived (``clock`` time), for a caller that queues chunks
        before feeding them, so that ``delay`` counts the wait in the queue too.
        """
        audio = pcm_to_float(pcm)
        if audio.size == 0:
            return []
        self._buf = np.concatenate([self._buf, audio])
        self._fed += audio.size
        self._unchecked += audio.size
        self._arrivals.append((self.time, self.clock() if received_at is None else received_at))
        if self._unchecked < self.options.step * SAMPLE_RATE:
            return []
        self._unchecked = 0
        return self._check(final=False, partials=partials)

    def feed_frame(self, t: float, frame: np.ndarray) -> None:
        """Add an RGB frame (h, w, 3 uint8) seen at stream time ``t``; frames closer than
        ``1 / (2 fps)`` to the previous one kept are dropped, and old ones are dropped as the
        utterances they could belong to finish."""
        if self._frames and t - self._frames[-1][0] < 0.5 / self.options.fps:
            return
        if t < self._buf_t0 - 1.0:
            return  # belongs to audio already analysed
        self._frames.append((float(t), _shrink(np.asarray(frame), self.options.max_side)))
        limit = int(math.ceil((self.options.max_utterance + self.options.pause + 2.0) * 2 * self.options.fps))
        while len(self._frames) > limit:
            self._frames.popleft()

    def finish(self) -> list[Finished]:
        """End of input: analyse whatever speech is still open."""
        events = self._check(final=True, partials=False)
        self._buf = np.zeros(0, np.float32)
        return [e for e in events if isinstance(e, Finished)]

    # -- segmentation -----------------------------------------------------------------------------

    def _check(self, final: bool, partials: bool) -> list[Event]:
        opts = self.options
        events: list[Event] = []
        while self._buf.size:
            regions = asr_mod.speech_regions(self._buf, opts.vad)
            length = len(self._buf) / SAMPLE_RATE
            if not regions:
                if final:
                    self._drop(length)
                else:
                    self._drop(max(0.0, length - opts.preroll))
                break
            if regions[0][0] > opts.preroll + 0.05:  # leading silence: keep only the pre-roll
                self._drop(regions[0][0] - opts.preroll)
                continue
            cut = _pause_after(regions, length, opts.pause)
            if cut is None and regions[-1][1] - regions[0][0] >= opts.max_utterance:
                cut = _widest_gap(regions, length)
            if cut is None and final:
                cut = length
            if cut is None:
                if partials and opts.partial_every > 0:
                    events.extend(self._partial(regions))
                break
            events.extend(self._close(cut, regions))
        return events

    def _drop(self, seconds: float) -> None:
        n = min(len(self._buf), int(round(seconds * SAMPLE_RATE)))
        if n <= 0:
            return
        self._buf = self._buf[n:].copy()
        self._buf_t0 += n / SAMPLE_RATE
        while self._arrivals and self._arrivals[0][0] < self._buf_t0 - 5.0:
            self._arrivals.popleft()
        while self._frames and self._frames[0][0] < self._buf_t0 - 1.0:
            self._frames.popleft()

    def _partial(self, regions: list[tuple[float, float]]) -> list[Event]:
        end = regions[-1][1]
        if self._buf_t0 + end - self._partial_from < self.options.partial_every:
            return []
        self._partial_from = self._buf_t0 + end
        start = regions[0][0]
        text = _transcribe_text(self.asr, self._buf[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)],
                                self.options.language)
        return [Partial(text, self._buf_t0 + start, self._buf_t0 + end)] if text else []

    def _close(self, cut: float, regions: list[tuple[float, float]]) -> list[Event]:
        """Transcribe, segment and analyse the buffer's first ``cut`` seconds, then drop them."""
        opts = self.options
        n = min(len(self._buf), max(1, int(round(cut * SAMPLE_RATE))))
        audio, t0 = self._buf[:n], self._buf_t0
        inside = [(s, min(e, cut)) for s, e in regions if s < cut]
        words = asr_mod.transcribe_words(self.asr, audio, inside, opts.language, opts.vad)
        utts = snap_to_speech(segment_words(words, opts.segment), inside)
        for u in utts:
            u.start_time = round((u.start_time or 0.0) + t0, 3)
            u.end_time = round((u.end_time or 0.0) + t0, 3)
        events: list[Event] = []
        if utts:
            self._predict(utts, audio, t0)
            for u in utts:
                events.append(Finished(u, self._count, self._delay(u.end_time or 0.0)))
                self._count += 1
        self._drop(n / SAMPLE_RATE)
        self._partial_from = self._buf_t0
        return events

    def _predict(self, utts: list[Utterance], audio: np.ndarray, t0: float) -> None:
        from mmva.analyze.pipeline import FrameCollector, _slice

        opts = self.options
        contexts = []
        for u in utts:  # context: earlier utterances only, as analyze gives it
            contexts.append(list(self._history)[-opts.context_turns:] if opts.context_turns else [])
            if u.text:
                self._history.append(u.text)
        clips = [_slice(audio, t0, u) for u in utts]
        frames: list[np.ndarray | None] = [None] * len(utts)
        if self._frames:
            spans = [(u.start_time or 0.0, u.end_time or 0.0) for u in utts]
            collector = FrameCollector(spans, opts.fps, opts.frames_per_utterance)
            for t, frame in self._frames:
                collector.add(t, frame)
            frames = [collector.frames(i) for i in range(len(utts))]
        preds = self.predictor.predict([u.text for u in utts], contexts=contexts, audio=clips, frames=frames,
                                       sample_rate=SAMPLE_RATE, same_speaker=True)
        for u, p in zip(utts, preds):
            apply_prediction(u, p, opts.top_k)

    def _delay(self, end_time: float) -> float | None:
        for t, wall in self._arrivals:
            if t >= end_time:
                return max(0.0, self.clock() - wall)
        return None


def _pause_after(regions: list[tuple[float, float]], length: float, pause: float) -> float | None:
    """Where the first pause of at least ``pause`` seconds after speech starts (None: still talking)."""
    for (_, e1), (s2, _) in zip(regions, regions[1:]):
        if s2 - e1 >= pause:
            return e1 + min(0.2, (s2 - e1) / 2)  # a little of the pause: Whisper hears the last word end
    if length - regions[-1][1] >= pause:
        return min(length, regions[-1][1] + 0.2)
    return None


def _widest_gap(regions: list[tuple[float, float]], length: float) -> float:
    """The middle of the widest pause between speech regions, or the end when there is none."""
    gaps = [((s2 - e1), (e1 + s2) / 2) for (_, e1), (s2, _) in zip(regions, regions[1:])]
    return max(gaps)[1] if gaps else length


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    import cv2

    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _transcribe_text(model: Any, audio: np.ndarray, language: str | None) -> str:
    """Plain text of ``audio`` (no word times: a partial transcript only needs the words)."""
    if audio.size < SAMPLE_RATE // 5:
        return ""
    if language is None and getattr(model.model, "is_multilingual", False) is False:
        language = "en"
    lock = getattr(model, "_mmva_lock", None) or threading.Lock()
    with lock:
        segments, _ = model.transcribe(np.asarray(audio, np.float32), language=language, beam_size=1,
                                       without_timestamps=True, condition_on_previous_text=False)
        return " ".join(" ".join(s.text for s in segments).split())


def decode_jpeg(data: bytes, max_side: int = 320) -> np.ndarray:
    """RGB uint8 frame from JPEG (or PNG) bytes; ValueError when they are not an image."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG or PNG image")
    return _shrink(np.ascontiguousarray(bgr[:, :, ::-1]), max_side)


# -------------------------------------------------------------------------------------------------
# sources: a file or stream read as it plays, or the microphone

Chunk = tuple[str, float, np.ndarray]  # ("audio" | "frame", stream time in seconds, data)
STREAM_SCHEMES = ("http://", "https://", "rtsp://", "rtmp://", "rtp://", "udp://", "tcp://", "srt://")


def media_chunks(source: str, chunk_seconds: float = 0.1, fps: float = 2.0, max_side: int = 320,
                 frames: bool = True) -> Iterator[Chunk]:
    """Audio chunks (16 kHz float32) and frames (RGB, ``fps`` per second) of any file or URL PyAV
    opens, in the order they are decoded; the file is never read whole.

    >>> next(media_chunks("talk.mp4"))[0]                             # doctest: +SKIP
    'audio'
    """
    import av

    from mmva.io import media

    with _open_source(source) as container:
        a, v = media._audio_stream(container), media._video_stream(container) if frames else None
        if a is None:
            raise media.MediaError(source, "no audio stream: live analysis follows speech")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        size = 0
        fed = 0  # samples given out
        next_frame = 0.0
        rotation = None
        for packet in container.demux(*[s for s in (a, v) if s is not None]):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue  # a damaged packet: the stream goes on
            for frame in decoded:
                if packet.stream is v:
                    t = float(frame.time) if frame.time is not None else fed / SAMPLE_RATE
                    if t + 1e-6 < next_frame:
                        continue
                    next_frame = t + 1.0 / fps
                    rotation = media._rotation(frame, v) if rotation is None else rotation
                    yield "frame", t, media._to_rgb(frame, rotation, max_side)
                    continue
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1).astype(np.float32))
                    size += pending[-1].size
                while size >= chunk_seconds * SAMPLE_RATE:
                    joined = np.concatenate(pending)
                    n = int(chunk_seconds * SAMPLE_RATE)
                    yield "audio", fed / SAMPLE_RATE, joined[:n]
                    fed += n
                    pending, size = [joined[n:]], joined.size - n
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().reshape(-1).astype(np.float32))
        rest = np.concatenate(pending) if pending else np.zeros(0, np.float32)
        if rest.size:
            yield "audio", fed / SAMPLE_RATE, rest


@contextmanager
def _open_source(source: str) -> Iterator[Any]:
    """A local path or storage URI (through :mod:`mmva.io.media`), or a network stream URL."""
    from mmva.io import media

    if not source.lower().startswith(STREAM_SCHEMES):
        with media._open(source) as container:
            yield container
        return
    import av

    try:
        container = av.open(source, "r", metadata_errors="ignore", timeout=(10.0, 30.0))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise media.MediaError(source, f"cannot open the stream: {media._short(exc)}") from None
    try:
        yield container
    finally:
        container.close()


def microphone_chunks(chunk_seconds: float = 0.1, device: int | str | None = None) -> Iterator[Chunk]:
    """Audio chunks from a microphone (the default input device) through ``sounddevice``, until the
    caller stops iterating. Needs ``pip install 'mmva[live]'`` (and the PortAudio library)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but PortAudio is not
        raise RuntimeError(f"the microphone needs sounddevice and PortAudio: pip install 'mmva[live]' "
                           f"({type(exc).__name__}: {exc})") from exc
    blocks: queue.Queue = queue.Queue()

    def on_block(data: np.ndarray, frames: int, t: Any, status: Any) -> None:
        blocks.put(data[:, 0].copy())

    fed = 0
    with sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", device=device,
                        blocksize=int(chunk_seconds * SAMPLE_RATE), callback=on_block):
        while True:
            block = blocks.get()
            yield "audio", fed / SAMPLE_RATE, block
            fed += block.size


def run_live(chunks: Iterable[Chunk], live: LiveAnalyzer, *, realtime: bool = False,
             on_event: Callable[[Event], None] | None = None, source: str = "live") -> "Timeline":
    """Feed ``chunks`` (from :func:`media_chunks` or :func:`microphone_chunks`) to ``live`` and
    return the finished utterances as a timeline; ``on_event`` sees every event as it happens.

    ``realtime=True`` paces the chunks by their times, as if captured now (a file read as it
    plays); otherwise they go as fast as the analysis takes them. A KeyboardInterrupt ends the
    input: the open utterance is still analysed.

    >>> run_live(media_chunks("talk.mp4"), LiveAnalyzer(), realtime=True, on_event=print)  # doctest: +SKIP
    """
    from mmva.analyze.timeline import Timeline

    timeline = Timeline(source=source, segmentation="live", model=live.describe())
    started = time.monotonic()

    def handle(events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Finished):
                timeline.utterances.append(event.utterance)
            if on_event is not None:
                on_event(event)

    try:
        for kind, t, data in chunks:
            if realtime:
                ahead = started + t - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if kind == "frame":
                live.feed_frame(t, data)
            else:
                handle(live.feed_audio(data))
    except KeyboardInterrupt:
        pass
    handle(live.finish())
    timeline.duration = round(live.time, 3)
    return timeline
