"""The decoded form of one utterance's media, shared by every encoder's ``prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DecodedClip:
    """What the decoder hands to the encoders for one utterance.

    ``frames`` are RGB uint8 ``(t, h, w, 3)`` sampled across the utterance (None: no video stream or
    no decodable frame); ``frame_times`` their timestamps in seconds; ``audio`` is float32 mono in
    [-1, 1] at ``sample_rate`` (None: no audio stream). ``problems`` lists what went wrong while
    decoding (e.g. "no audio stream"), so datasets can report them.
    """

    text: str = ""
    frames: np.ndarray | None = None  # (t, h, w, 3) uint8
    frame_times: np.ndarray | None = None  # (t,) seconds
    audio: np.ndarray | None = None  # (n,) float32
    sample_rate: int = 16000
    source: str = ""
    problems: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)  # previous utterances of the dialogue, oldest first

    @property
    def has_video(self) -> bool:
        return self.frames is not None and len(self.frames) > 0

    @property
    def has_audio(self) -> bool:
        return self.audio is not None and self.audio.size > 0

    @property
    def has_text(self) -> bool:
        return bool(self.text and self.text.strip())
