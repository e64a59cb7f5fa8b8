"""The face frames of a window reach the face head utterance by utterance while the rest is decoded."""

import threading

import numpy as np
import pytest

from mmva.analyze.pipeline import AnalyzeOptions, FrameCollector, _collect_frames, _FramesLater, _Stages
from mmva.types import Utterance
from tests.media import moving_frames, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    # 12 s at 10 fps: frame i has its bar at column i * 96 // 120, so a frame tells its time
    return str(write_video(tmp_path_factory.mktemp("frames") / "bar.mp4", moving_frames(120, 64, 96), fps=10.0))


def utterances() -> list[Utterance]:
    return [Utterance(text=f"u{i}", start_time=s, end_time=e)
            for i, (s, e) in enumerate([(0.5, 2.0), (2.5, 4.0), (6.0, 8.5), (9.0, 11.5)])]


def test_utterances_are_delivered_in_order_before_decoding_ends(video: str) -> None:
    opts = AnalyzeOptions()
    utts = utterances()
    decoded_at: list[tuple[int, float]] = []
    collector_times: list[float] = []
    problems: list[str] = []

    delivered: dict[int, np.ndarray | None] = {}

    def deliver(i: int, frames: np.ndarray | None) -> None:
        decoded_at.append((i, time_now()))
        delivered[i] = frames

    # the decoder's position when each utterance is handed over: the largest frame time added so far
    orig_add = FrameCollector.add

    def spy(self: FrameCollector, t: float, frame: np.ndarray) -> None:
        collector_times.append(t)
        orig_add(self, t, frame)

    def time_now() -> float:
        return collector_times[-1] if collector_times else -1.0

    FrameCollector.add = spy  # type: ignore[method-assign]
    try:
        returned = _collect_frames(video, utts, opts, problems, None, deliver)
    finally:
        FrameCollector.add = orig_add  # type: ignore[method-assign]
    assert not problems
    assert [i for i, _ in decoded_at] == [0, 1, 2, 3]  # each once, in order
    last = collector_times[-1]
    # the first three were handed over while the decoder was still well before the end of the span
    assert all(t < last for _, t in decoded_at[:3])
    assert decoded_at[0][1] < utts[1].end_time
    # those handed over early are not kept (nor copied) a second time in the returned list
    assert returned[:3] == [None, None, None] and returned[3] is delivered[3]
    # and the frames handed over are those of an undisturbed collection
    again = _collect_frames(video, utts, opts, [], None, None)
    for i, b in enumerate(again):
        assert delivered[i] is not None and b is not None and np.array_equal(delivered[i], b)


def test_frames_later_waits_per_item_and_raises_the_decoders_error() -> None:
    stages = _Stages(None)
    later = _FramesLater(3, stages)
    gate = threading.Event()

    def collect() -> list[np.ndarray | None]:
        later.deliver(0, np.zeros((1, 2, 2, 3), np.uint8))
        gate.wait(5)
        raise RuntimeError("decoder broke")

    raised: list[BaseException] = []

    def decoder() -> None:
        try:
            later.fill(collect)()
        except RuntimeError as exc:
            raised.append(exc)

    thread = threading.Thread(target=decoder)
    thread.start()
    assert later[0].shape == (1, 2, 2, 3)  # delivered before the decoder went on
    gate.set()
    with pytest.raises(RuntimeError, match="decoder broke"):
        later[1]
    with pytest.raises(RuntimeError, match="decoder broke"):
        list(later)
    thread.join(5)
    assert [str(e) for e in raised] == ["decoder broke"]  # and the decoding thread's own job failed too
    assert len(later) == 3 and "wait for frames" in stages.timings


def test_face_thread_of_predict_reports_the_text_error_first_and_its_own_otherwise(monkeypatch) -> None:
    """DefaultModel.predict runs the face head in a thread beside the text and voice heads."""
    from mmva.model.default import load_default_model

    model = load_default_model()
    face_done = threading.Event()

    def slow_face_error(*_a, **_k):
        face_done.wait(0.2)
        raise ValueError("face broke")

    def text_error(*_a, **_k):
        raise KeyError("text broke")

    monkeypatch.setattr(model, "_speaker_faces", slow_face_error)
    monkeypatch.setattr(model, "text_probs", text_error)
    with pytest.raises(KeyError, match="text broke"):
        model.predict(["hello"], frames=[np.zeros((1, 8, 8, 3), np.uint8)])
    monkeypatch.setattr(model, "text_probs", lambda texts, *a: [None] * len(texts))
    with pytest.raises(ValueError, match="face broke"):
        model.predict(["hello"], frames=[np.zeros((1, 8, 8, 3), np.uint8)])

