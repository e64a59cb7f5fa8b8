"""The live analysis core (mmva.analyze.stream) on generated speech: the same utterances as
`mmva analyze` on the same audio, context from earlier utterances only, bounded memory."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmva.analyze.stream import Finished, LiveAnalyzer, LiveOptions, Partial, media_chunks, run_live
from tests.media import face_frames, silence, speak, write_video, write_wav

FIRST, SECOND = "I am so happy to see you today.", "This is terrible, I hate it."
CHUNK = 1600  # 100 ms: what a browser or a microphone callback delivers


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


TIE = 0.05  # probability gap under which two emotions count as tied


def assert_same_utterances(live: list[dict[str, Any]], offline: list[dict[str, Any]], time_tol: float = 0.35) -> None:
    """Live and offline agree within stated tolerances: same count, edges within ``time_tol`` s,
    the same words (case and punctuation aside, 80% similar), the same top emotion (or a near-tie)."""
    assert len(live) == len(offline), ([u["text"] for u in live], [u["text"] for u in offline])
    for a, b in zip(live, offline):
        assert abs(a["start_time"] - b["start_time"]) <= time_tol and abs(a["end_time"] - b["end_time"]) <= time_tol, (a, b)
        assert difflib.SequenceMatcher(None, words(a["text"]), words(b["text"])).ratio() >= 0.8, (a["text"], b["text"])
        # The same top emotion, unless the two are a near-tie (live cuts the audio a few tens of ms
        # apart from offline, which moves the voice part by a little): then within TIE of each other.
        top_a, top_b = a["emotions"][0]["label"], b["emotions"][0]["label"]
        pa, pb = a["emotion_probs"], b["emotion_probs"]  # all seven classes
        assert top_a == top_b or (pa[top_a] - pa[top_b] <= TIE and pb[top_b] - pb[top_a] <= TIE), (
            a["text"], a["emotions"], b["emotions"])
        assert a["modalities"] == b["modalities"]
        assert set(b) - {"speaker"} <= set(a)  # every field analyze gives (speaker: diarization only)


@pytest.fixture(scope="module")
def two_sentences() -> np.ndarray:
    return np.concatenate([silence(0.5), speak(FIRST), silence(1.0), speak(SECOND), silence(1.0)])


class Recording:
    """The real default model, remembering the contexts it was given."""

    def __init__(self) -> None:
        from mmva.model.predictor import load_predictor

        self.model = load_predictor()
        self.contexts: list[list[str]] = []

    def predict(self, texts: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        self.contexts += [list(c) for c in kwargs["contexts"]]
        return self.model.predict(texts, **kwargs)

    def describe(self) -> dict[str, Any]:
        return self.model.describe()


def test_live_gives_the_utterances_of_analyze(two_sentences: np.ndarray, tmp_path: Path) -> None:
    import mmva
    from mmva.analyze.timeline import utterance_to_dict

    wav = write_wav(tmp_path / "two.wav", two_sentences)
    offline = mmva.analyze(str(wav), diarize=False).to_dict()["utterances"]
    model = Recording()
    live = LiveAnalyzer(model)
    pcm = (two_sentences * 32767).astype("<i2").tobytes()
    events = []
    for i in range(0, len(pcm), 2 * CHUNK):
        events += live.feed_audio(pcm[i:i + 2 * CHUNK])
        assert live.buffered_seconds <= live.options.max_utterance + 1.0
    events += live.finish()
    finished = [e for e in events if isinstance(e, Finished)]
    assert [e.index for e in finished] == list(range(len(finished)))
    assert_same_utterances([utterance_to_dict(e.utterance) for e in finished], offline)
    # The first utterance was finished before the second began: it came out during the stream.
    first_at = events.index(finished[0])
    assert any(isinstance(e, Partial) and "terrible" in e.text.lower() for e in events[first_at:])
    assert model.contexts == [[], [finished[0].utterance.text]]  # earlier utterances only


def test_memory_stays_bounded_and_long_speech_is_cut(two_sentences: np.ndarray) -> None:
    opts = LiveOptions(max_utterance=2.0, partial_every=0)
    live = LiveAnalyzer(options=opts)
    talk = np.concatenate([speak("I went to the market and I bought apples and pears and plums and cherries")] * 2)
    face = face_frames(1, 320)[0]
    finished: list[Finished] = []
    bound = opts.max_utterance + opts.pause + opts.step + opts.preroll + 0.1
    for source in (talk, silence(60.0)):  # a minute of nothing after the speech
        for i in range(0, len(source), CHUNK):
            live.feed_frame(live.time, face)  # 10 frames a second offered
            finished += [e for e in live.feed_audio(source[i:i + CHUNK]) if isinstance(e, Finished)]
            assert live.buffered_seconds <= bound
            assert live.buffered_frames <= (bound + 3) * 2 * opts.fps
    assert live.buffered_seconds <= opts.preroll + opts.step + 0.01
    assert live.buffered_frames <= (1.0 + opts.preroll + opts.step) * 2 * opts.fps + 1  # the last second or so
    assert len(finished) >= 3 and all("video" in e.utterance.modalities for e in finished)
    assert all(e.utterance.end_time - e.utterance.start_time <= opts.max_utterance + 0.5 for e in finished)
    assert live.finish() == []


def test_run_live_reads_a_video_file(tmp_path: Path) -> None:
    audio = np.concatenate([silence(0.3), speak(FIRST), silence(0.8)])
    video = write_video(tmp_path / "talk.mp4", face_frames(int(len(audio) / 16000 * 10) + 1, 96), fps=10, audio=audio)
    chunks = list(media_chunks(str(video)))
    kinds = {k for k, _, _ in chunks}
    assert kinds == {"audio", "frame"}
    times = [t for k, t, _ in chunks if k == "frame"]
    assert all(b - a >= 0.5 - 1e-6 for a, b in zip(times, times[1:]))  # 2 frames a second
    seen: list[Any] = []
    timeline = run_live(iter(chunks), LiveAnalyzer(), on_event=seen.append, source="talk.mp4")
    assert [words(u.text) for u in timeline.utterances] == [words(FIRST)]
    assert timeline.utterances[0].modalities[:2] == ["text", "audio"]
    assert timeline.to_dict()["segmentation"] == "live" and timeline.duration == pytest.approx(len(audio) / 16000, abs=0.1)
    assert any(isinstance(e, Finished) for e in seen)


def test_microphone_through_sounddevice() -> None:
    from mmva.analyze.stream import microphone_chunks

    try:
        import sounddevice as sd
    except (ImportError, OSError):  # not installed, or PortAudio missing: the error says what to install
        with pytest.raises(RuntimeError, match=r"mmva\[live\]"):
            next(microphone_chunks())
        pytest.skip("mmva[live] (sounddevice with PortAudio) is not installed")
    try:
        sd.query_devices(kind="input")
    except Exception as exc:  # noqa: BLE001 - PortAudio without an input device
        pytest.skip(f"no microphone here: {exc}")
    chunks = microphone_chunks()
    kind, t, block = next(chunks)
    chunks.close()
    assert kind == "audio" and t == 0.0 and block.dtype == np.int16
