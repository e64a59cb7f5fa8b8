"""Label sets shared by every part of mmva (SPEC: ids are the positions in these tuples)."""

from __future__ import annotations

from typing import Any

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
MODALITIES: tuple[str, ...] = ("text", "video", "audio")

EMOTION_TO_ID = {name: i for i, name in enumerate(EMOTIONS)}
SENTIMENT_TO_ID = {name: i for i, name in enumerate(SENTIMENTS)}

# Common spellings seen in other corpora, mapped onto MELD's names.
_EMOTION_ALIASES = {
    "angry": "anger", "happy": "joy", "happiness": "joy", "sad": "sadness", "fearful": "fear",
    "disgusted": "disgust", "surprised": "surprise", "calm": "neutral", "ps": "surprise",
}
_SENTIMENT_ALIASES = {"neg": "negative", "pos": "positive", "neu": "neutral"}


def softmax(z: Any, axis: int = -1) -> Any:
    """Probabilities from logits over ``axis``, in float64 (one copy for the text, voice, face and
    evaluation code). Written out rather than taken from scipy.special, whose import alone costs ~0.8 s
    of every cold command here; numpy is imported inside so this module stays import-free.

    >>> softmax([0.0, 0.0]).tolist()
    [0.5, 0.5]
    """
    import numpy as np

    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def emotion_id(label: str) -> int:
    """Id of an emotion label (case-insensitive, common aliases accepted).

    >>> emotion_id("Joy")
    3
    """
    key = label.strip().lower()
    key = _EMOTION_ALIASES.get(key, key)
    if key not in EMOTION_TO_ID:
        raise ValueError(f"unknown emotion label {label!r}; expected one of {', '.join(EMOTIONS)}")
    return EMOTION_TO_ID[key]


def sentiment_id(label: str) -> int:
    """Id of a sentiment label (case-insensitive).

    >>> sentiment_id("positive")
    2
    """
    key = label.strip().lower()
    key = _SENTIMENT_ALIASES.get(key, key)
    if key not in SENTIMENT_TO_ID:
        raise ValueError(f"unknown sentiment label {label!r}; expected one of {', '.join(SENTIMENTS)}")
    return SENTIMENT_TO_ID[key]


def sentiment_of_emotion(emotion: str) -> str:
    """MELD's coarse mapping, used when a corpus has emotions but no sentiment column."""
    if emotion in ("anger", "disgust", "fear", "sadness"):
        return "negative"
    if emotion == "joy":
        return "positive"
    return "neutral"
