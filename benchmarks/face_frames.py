"""Talking-head frames where face detectors fail: real face photos turned, tilted and made small in a
1280x720 frame (bench_heads.py face). The faces are real (``skimage.data.astronaut()`` and one neutral
JAFFE image per subject); the turns are not: a "turned head" is the flat photo rotated about its
vertical axis (a perspective warp), which shortens the face like a real turn but shows no profile.

Each frame knows where its face is (the source's Haar box, carried through the same warp), so a
detection counts as found when its centre lies in that box and its side is within 0.5x-2x of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FRAME = (720, 1280)  # h, w
# (name, face width in the 1280x720 frame (px), in-plane roll (deg), turn about the vertical axis (deg))
CONDITIONS: tuple[tuple[str, int, float, float], ...] = (
    ("frontal 160 px", 160, 0, 0),
    ("small 96 px", 96, 0, 0), ("small 64 px", 64, 0, 0), ("small 48 px", 48, 0, 0),
    ("small 32 px", 32, 0, 0),
    ("tilted 20°", 160, 20, 0), ("tilted 35°", 160, 35, 0), ("tilted 50°", 160, 50, 0),
    ("turned 30°", 160, 0, 30), ("turned 50°", 160, 0, 50), ("turned 65°", 160, 0, 65),
    ("turned 40° tilted 20°, 64 px", 64, 20, 40),
)


@dataclass
class Frame:
    image: np.ndarray  # (720, 1280, 3) RGB uint8
    truth: tuple[float, float, float]  # face centre x, y and side (px)
    condition: str
    source: str


def _background(seed: int) -> np.ndarray:
    from skimage import data

    scene = (data.coffee(), data.rocket(), data.immunohistochemistry())[seed % 3]
    bg = cv2.resize(scene, FRAME[::-1], interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(bg, (0, 0), 2)  # out of focus, as behind a speaker


def sources(jaffe: str | None) -> list[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """(name, RGB photo, Haar face box) for the astronaut and one neutral image per JAFFE subject."""
    from skimage.data import astronaut

    from mmva.encoders.face import DetectorConfig, detect_faces

    out = []
    photos = [("astronaut", astronaut())]
    if jaffe:
        j = np.load(jaffe, allow_pickle=False)
        for subj in sorted(set(j["subject"].tolist())):
            k = np.where((j["subject"] == subj) & (j["emotion"] == "neutral"))[0][0]
            photos.append((f"jaffe-{subj}", np.repeat(j["images"][k][..., None], 3, axis=2)))
    for name, img in photos:
        boxes = detect_faces(img, DetectorConfig(backend="haar"))
        if boxes:
            out.append((name, img, boxes[0]))
    return out


def _turn(patch: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The patch rotated ``deg`` about its vertical axis (pinhole camera at 2.5 patch widths), and
    the 3x3 homography used."""
    h, w = patch.shape[:2]
    f = 2.5 * w
    a = math.radians(deg)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]], np.float32)
    out = []
    for x, y in corners:
        xr, zr = x * math.cos(a), f + x * math.sin(a)
        out.append([f * xr / zr + w / 2, f * y / zr + h / 2])
    m = cv2.getPerspectiveTransform(corners + np.float32([w / 2, h / 2]), np.float32(out))
    return cv2.warpPerspective(patch, m, (w, h), borderMode=cv2.BORDER_CONSTANT), m


def make_frames(jaffe: str | None, seed: int = 0) -> list[Frame]:
    """One frame per (source, condition), the face at a random place in a blurred real scene."""
    rng = np.random.default_rng(seed)
    frames = []
    for si, (name, img, (bx, by, bw, bh)) in enumerate(sources(jaffe)):
        # a square around the head: twice the face box, edge pixels repeated beyond the photo
        side = 2 * bw
        cx, cy = bx + bw / 2, by + bh / 2
        pad = side
        big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        x0, y0 = int(cx - side / 2) + pad, int(cy - side / 2) + pad
        patch = big[y0:y0 + side, x0:x0 + side]
        for ci, (cond, face_w, roll, turn) in enumerate(CONDITIONS):
            scale = face_w / bw
            size = max(8, int(round(side * scale)))
            p = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            alpha = np.zeros((size, size), np.float32)
            cv2.circle(alpha, (size // 2, size // 2), int(size * 0.42), 1.0, -1)
            alpha = cv2.GaussianBlur(alpha, (0, 0), max(1, size * 0.04))
            truth_side = face_w
            if turn:
                p, _ = _turn(p, turn)
                a, _ = _turn((alpha * 255).astype(np.uint8), turn)
                alpha = a.astype(np.float32) / 255
                truth_side = face_w * math.cos(math.radians(turn)) ** 0.5  # shorter across, as tall
            if roll:
                m = cv2.getRotationMatrix2D((size / 2, size / 2), roll, 1.0)
                p = cv2.warpAffine(p, m, (size, size), borderMode=cv2.BORDER_REFLECT)
                alpha = cv2.warpAffine(alpha, m, (size, size))
            frame = _background(si + ci).astype(np.float32)
            fx = int(rng.integers(0, FRAME[1] - size))
            fy = int(rng.integers(0, FRAME[0] - size))
            region = frame[fy:fy + size, fx:fx + size]
            region[:] = region * (1 - alpha[..., None]) + p.astype(np.float32) * alpha[..., None]
            frames.append(Frame(frame.astype(np.uint8), (fx + size / 2, fy + size / 2, truth_side), cond, name))
    return frames


def hit(boxes: list[tuple[int, int, int, int]], truth: tuple[float, float, float], scale: float = 1.0) -> bool:
    """Whether a box (in a frame resized by ``scale``) is the true face: centre inside it, side 0.5x-2x."""
    tx, ty, ts = (v * scale for v in truth)
    for x, y, w, h in boxes:
        cx, cy = x + w / 2, y + h / 2
        if abs(cx - tx) <= ts / 2 and abs(cy - ty) <= ts / 2 and 0.5 * ts <= w <= 2 * ts:
            return True
    return False
