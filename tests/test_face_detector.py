"""Face detector choice: Haar always, MTCNN (facenet-pytorch, the optional mmva[faces] extra) when installed.

The MTCNN tests run on a real face photo (``skimage.data.astronaut()``) tilted and placed small in a
wide frame, written to H.264 and decoded as ``mmva analyze`` decodes it; they skip when facenet-pytorch
is not installed.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mmva.encoders import mtcnn
from mmva.encoders.face import DetectorConfig, detect_and_classify, detect_faces, resolve_detector
from tests.media import face_photo, write_video

needs_mtcnn = pytest.mark.skipif(not mtcnn.available(), reason="facenet-pytorch not installed (mmva[faces])")


def _tilted_frames(n: int = 3, degrees: float = 40.0) -> np.ndarray:
    """The astronaut's head (a 200 px photo, the face about 90 px of it) tilted by ``degrees`` in a
    640x360 grey-blue scene, drifting right by 4 px a frame."""
    face = face_photo(200)
    m = cv2.getRotationMatrix2D((100, 100), degrees, 1.0)
    face = cv2.warpAffine(face, m, (200, 200), borderMode=cv2.BORDER_REFLECT)
    frames = np.zeros((n, 360, 640, 3), np.uint8)
    frames[...] = (70, 80, 100)
    for i in range(n):
        frames[i, 80:280, 360 + 4 * i:560 + 4 * i] = face
    return frames


def test_unknown_detector_is_named() -> None:
    with pytest.raises(ValueError, match="'dlib'.*auto, mtcnn, haar"):
        resolve_detector("dlib")


def test_without_facenet_auto_is_haar_and_mtcnn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mtcnn, "available", lambda: False)  # as on a plain install
    assert resolve_detector("auto") == "haar"
    with pytest.raises(ImportError, match=r"mmva\[faces\]"):
        resolve_detector("mtcnn")
    result = detect_and_classify(face_photo(128))
    assert result is not None and result.detector == "haar"


@needs_mtcnn
def test_auto_is_mtcnn_when_installed() -> None:
    assert resolve_detector("auto") == "mtcnn"
    result = detect_and_classify(face_photo(128))
    assert result is not None and result.detector == "mtcnn" and result.top() == "joy"


@needs_mtcnn
def test_mtcnn_finds_a_tilted_face_in_video_that_haar_misses(tmp_path) -> None:
    from mmva.analyze.pipeline import AnalyzeOptions
    from mmva.io.media import iter_frames

    path = write_video(tmp_path / "tilted.mp4", _tilted_frames(4), fps=2.0)
    opts = AnalyzeOptions()  # decoded as `mmva analyze` decodes: 320x180 here
    frames = np.stack([f for _, f in iter_frames(str(path), fps=opts.fps, max_side=opts.max_side)])
    assert frames.shape[1:] == (180, 320, 3)
    assert detect_and_classify(frames, detector="haar") is None
    result = detect_and_classify(frames, detector="mtcnn")
    assert result is not None and result.n_frames_with_face == len(frames)
    for x, y, w, h in result.boxes:  # on the face: its centre near (230 + drift, 90), about 45 px across
        assert abs(x + w / 2 - 233) < 15 and abs(y + h / 2 - 90) < 15 and 25 < w < 70


@needs_mtcnn
def test_mtcnn_box_has_the_haar_framing() -> None:
    """Both detectors give about the same box on a frontal face, so crops (and the mouth region) match."""
    img = face_photo(256)
    (hx, hy, hw, _), (mx, my, mw, _) = detect_faces(img, DetectorConfig(backend="haar"))[0], \
        detect_faces(img, DetectorConfig(backend="mtcnn"))[0]
    assert abs(mw / hw - 1) < 0.15
    assert abs((mx + mw / 2) - (hx + hw / 2)) < 0.1 * hw and abs((my + mw / 2) - (hy + hw / 2)) < 0.1 * hw


@needs_mtcnn
def test_mtcnn_finds_no_face_in_a_face_free_photo() -> None:
    from skimage import data

    for photo in (data.coffee(), data.rocket(), data.chelsea()):
        assert detect_and_classify(photo, detector="mtcnn") is None


def test_analyze_cli_rejects_an_unknown_detector() -> None:
    from typer.testing import CliRunner

    from mmva.cli import app

    res = CliRunner().invoke(app, ["analyze", "--sample", "--face-detector", "dlib"])
    assert res.exit_code == 2
    assert "dlib" in res.output and "haar" in res.output


def test_a_checkpoint_keeps_its_haar_detector(tmp_path) -> None:
    from mmva.model.predictor import load_predictor

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"")
    with pytest.raises(ValueError, match="Haar"):
        load_predictor(str(fake), face_detector="mtcnn")
    # "auto" is whatever the model has: for a checkpoint that is its Haar detector, not an error
    # (the file here is empty, so loading it fails on the file, not on the detector).
    with pytest.raises(Exception) as err:
        load_predictor(str(fake), face_detector="auto")
    assert "Haar" not in str(err.value)


@pytest.mark.parametrize("command", [["batch", "in", "--out", "out"], ["serve"], ["live", "talk.mp4"]])
@pytest.mark.parametrize("from_env", [False, True])
def test_batch_serve_and_live_reject_an_unknown_detector_before_loading(command, from_env, tmp_path,
                                                                         monkeypatch) -> None:
    from typer.testing import CliRunner

    import mmva.model.default
    import mmva.model.predictor
    from mmva.cli import app

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(mmva.model.predictor, "load_predictor", no_loading)
    monkeypatch.setattr(mmva.model.default, "load_default_model", no_loading)
    monkeypatch.chdir(tmp_path)
    args, env = ([*command], {"MMVA_FACE_DETECTOR": "dlib"}) if from_env else ([*command, "--face-detector", "dlib"], {})
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 2, res.output
    assert "dlib" in res.output and "haar" in res.output
    assert not (tmp_path / "out").exists()  # batch did not start


def test_batch_worker_and_service_find_faces_with_the_chosen_detector(tmp_path) -> None:
    from mmva.analyze.batch import BatchOptions, BatchWorker
    from mmva.serve.app import ServeSettings, Service

    worker = BatchWorker(BatchOptions(face_detector="haar"))
    assert worker.predictor.face_detector == "haar"
    assert worker.predictor.describe()["face_detector"] == "haar"
    service = Service(ServeSettings(work_dir=str(tmp_path / "work"), face_detector="haar"))
    service.load_model()
    try:
        assert service.ready and service.model_info["face_detector"] == "haar"
    finally:
        service.jobs.shutdown()
    # An unset detector stays auto (MTCNN when installed, else Haar), as in mmva analyze.
    assert BatchWorker(BatchOptions()).predictor.face_detector == "auto"
