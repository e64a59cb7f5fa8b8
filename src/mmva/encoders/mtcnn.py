"""MTCNN face detection (Zhang et al. 2016) with the weights inside the ``facenet-pytorch`` wheel.

An optional extra: ``pip install 'mmva[faces]'`` (facenet-pytorch 2.5.3) or ``./install.sh --faces``.
Only the package's three small networks and ``detect_face`` are used; torchvision, already an mmva
dependency, supplies the non-maximum suppression. facenet-pytorch 2.6.0 has the same weights and code
but pins torch<2.3: install that one with ``--no-deps``. It finds faces the Haar cascade
misses: heads turned or tilted, small faces, dim or low-contrast frames (benchmarks/README.md, "Face
head"). :func:`mmva.encoders.face.detect_faces` uses it when ``DetectorConfig.backend`` is ``"mtcnn"``,
or ``"auto"`` and the package is installed.

Boxes come back in the Haar cascade's framing (a square about 95 % of a FER2013 image side, see
:data:`HAAR_FRAME`), so the crop margin, tracking and mouth region of :mod:`mmva.encoders.face` hold for
both detectors.

>>> from skimage.data import astronaut
>>> faces = detect(astronaut()) if available() else [((174, 65, 100, 100), 1.0, None)]
>>> len(faces), faces[0][0]   # one face: (x, y, w, h) in Haar framing, score, five points
(1, (174, 65, 100, 100))
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from typing import Any

import numpy as np

INSTALL_HINT = ("pip install 'mmva[faces]' (facenet-pytorch 2.5.3), or 'facenet-pytorch==2.6.0' with --no-deps "
                "(2.6.0 pins torch<2.3; only its MTCNN weights and detector code are used)")
# The Haar box as a function of the MTCNN box, fitted on 400 FER+ valid faces (upscaled 3x, padded) that
# both detectors found, in units of the FER2013 image side: Haar centre (0.500, 0.493), side 0.951;
# MTCNN centre (0.497, 0.511), width 0.808, height 1.060 (medians).
HAAR_FRAME = {"side_per_w": 0.951 / 0.808 / 2, "side_per_h": 0.951 / 1.060 / 2, "dy_per_h": -0.018 / 1.060}
THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults for the three stages
MIN_SCORE = 0.9  # final (O-net) score a face needs; no face-free scikit-image photo reaches it
FACTOR = 0.709  # image pyramid step


def available() -> bool:
    """Whether facenet-pytorch is installed (checked without importing it)."""
    return importlib.util.find_spec("facenet_pytorch") is not None


@lru_cache(maxsize=1)
def _nets() -> tuple[Any, Any, Any]:
    if not available():
        raise ImportError(f"the MTCNN face detector needs facenet-pytorch: {INSTALL_HINT}")
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    return PNet().eval(), RNet().eval(), ONet().eval()


_lock = threading.Lock()


def warm_up() -> None:
    """Load the networks now (about a second: facenet-pytorch's import), not on the first frame."""
    _nets()


def detect(image: np.ndarray, min_face: int = 20) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
    """Faces on one uint8 image (RGB ``(h, w, 3)`` or grey ``(h, w)``), largest first: ``(box, score,
    points)`` with the box ``(x, y, w, h)`` in Haar framing and ``points`` ``(5, 2)`` (left eye, right eye,
    nose, mouth corners; x, y). ``min_face``: the smallest face side (pixels) searched for."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 12:
        return []
    pnet, rnet, onet = _nets()
    with _lock, torch.no_grad():  # one set of networks for every thread
        # One intra-op thread: the pyramid is many small convolutions that threads do not speed up, and
        # on a busy CPU they cost 20-30x (a 320x180 frame: 111 ms on 1 thread, 3 s on 2, benchmarks/README.md).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            boxes, points = detect_face(np.ascontiguousarray(img), max(12, int(min_face)), pnet, rnet, onet,
                                        list(THRESHOLDS), FACTOR, torch.device("cpu"))
        finally:
            torch.set_num_threads(threads)
    out = []
    found = zip(np.asarray(boxes[0]).reshape(-1, 5), np.asarray(points[0]).reshape(-1, 5, 2))
    for (x1, y1, x2, y2, score), pts in found:
        if score < MIN_SCORE:
            continue
        w, h = x2 - x1, y2 - y1
        side = HAAR_FRAME["side_per_w"] * w + HAAR_FRAME["side_per_h"] * h
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + HAAR_FRAME["dy_per_h"] * h
        box = (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side)))
        out.append((box, float(score), pts.astype(np.float32)))
    return sorted(out, key=lambda f: f[0][2], reverse=True)
