"""Who is speaking: speaker diarization over the analysis windows of one recording.

Steps (the usual embedding-clustering recipe, e.g. Wang et al. 2018, "Speaker diarization with LSTM"):

1. windows of 1.6 s every 0.4 s inside the voice-activity regions (a shorter region is one window);
2. a GE2E speaker embedding per window (:mod:`mmva.encoders.speaker`, resemblyzer's weights);
3. scikit-learn's agglomerative clustering (cosine distance, average linkage): with the number of
   speakers given, that many clusters; otherwise clusters closer than ``threshold`` merge, clusters
   with too little speech are absorbed by the nearest speaker, and the count is kept within
   ``min_speakers``/``max_speakers``;
4. each word (or subtitle cue) takes the speaker of the windows it overlaps; inside an utterance a
   change of speaker that lasts at least ``min_turn`` seconds on both sides splits it.

Long media is analysed in windows of minutes (:mod:`mmva.analyze.pipeline`); a :class:`Diarizer`
keeps the embeddings seen so far (a bounded sample) with their speakers, clusters them again with
each new window's, and maps the new clusters onto the known speakers (Hungarian matching on shared
members), so "Speaker 2" stays the same voice for the whole file.

>>> d = Diarizer(DiarizeOptions(speakers=2))              # doctest: +SKIP
>>> track = d.track(audio_16k, [(0.0, 4.2), (4.9, 9.0)])  # doctest: +SKIP
>>> track.label(5.0, 6.0)                                 # doctest: +SKIP
'Speaker 2'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

WINDOW = 1.6  # seconds: the speaker encoder's training length


@dataclass(frozen=True)
class DiarizeOptions:
    """How speakers are found. ``speakers`` fixes the count; else ``threshold`` decides, kept within
    ``min_speakers``..``max_speakers``.

    ``threshold``: cosine distance (average linkage) below which two groups of windows are one voice;
    ``min_speaker_time``: seconds of speech a voice needs to count as a speaker of its own when the
    count is automatic; ``min_turn``: seconds of speech on each side of a change of voice for an
    utterance to be split there.
    """

    speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    threshold: float = 0.3
    hop: float = 0.4
    min_region: float = 0.3  # voice regions shorter than this get no window of their own
    min_speaker_time: float = 1.5
    min_turn: float = 1.0
    max_windows: int = 3000  # past windows kept for re-clustering (a bounded, evenly spread sample)

    def __post_init__(self) -> None:
        for name in ("speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number of speakers, 1 or more; got {value!r}")
        lo, hi = self.min_speakers, self.max_speakers
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_speakers ({lo}) is more than max_speakers ({hi})")
        if self.speakers is not None and (lo is not None or hi is not None):
            raise ValueError("give either speakers or min_speakers/max_speakers, not both")
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be a cosine distance between 0 and 2; got {self.threshold}")


def speaker_name(index: int) -> str:
    """``Speaker 1``, ``Speaker 2``, ... (0-based index in order of first appearance).

    >>> speaker_name(0)
    'Speaker 1'
    """
    return f"Speaker {index + 1}"


def window_spans(regions: Sequence[tuple[float, float]], hop: float = 0.4,
                 min_region: float = 0.3) -> list[tuple[float, float]]:
    """1.6 s windows every ``hop`` seconds inside each voice region; a shorter region is one window.

    >>> window_spans([(0.0, 2.0), (3.0, 3.5), (4.0, 4.1)])
    [(0.0, 1.6), (0.4, 2.0), (3.0, 3.5)]
    """
    spans: list[tuple[float, float]] = []
    for s, e in regions:
        if e - s < min_region:
            continue
        if e - s <= WINDOW:
            spans.append((round(s, 3), round(e, 3)))
            continue
        n = int(np.ceil((e - s - WINDOW) / hop)) + 1
        starts = np.minimum(s + hop * np.arange(n), e - WINDOW)
        spans.extend((round(float(a), 3), round(float(a) + WINDOW, 3)) for a in starts)
    return spans


def cluster(embeddings: np.ndarray, options: DiarizeOptions, window_seconds: float | None = None) -> np.ndarray:
    """Cluster ids (0..k-1, in order of first appearance) of unit speaker embeddings (n, d).

    ``window_seconds``: speech each window stands for (default: ``options.hop``), for the
    minimum-speech rule.
    """
    from sklearn.cluster import AgglomerativeClustering

    n = len(embeddings)
    if n == 0:
        return np.zeros(0, int)
    if n == 1:
        return np.zeros(1, int)

    def fixed(k: int) -> np.ndarray:
        k = max(1, min(k, n))
        if k == 1:
            return np.zeros(n, int)
        return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(embeddings)

    if options.speakers is not None:
        return _first_appearance(fixed(options.speakers))
    labels = AgglomerativeClustering(n_clusters=None, distance_threshold=options.threshold, metric="cosine",
                                     linkage="average").fit_predict(embeddings)
    labels = _absorb_small(embeddings, labels, options.min_speaker_time / (window_seconds or options.hop))
    k = len(np.unique(labels))
    lo, hi = options.min_speakers or 1, options.max_speakers or n
    if not lo <= k <= hi:
        labels = fixed(min(max(k, lo), hi))
    return _first_appearance(labels)


def _absorb_small(emb: np.ndarray, labels: np.ndarray, min_windows: float) -> np.ndarray:
    """Windows of clusters with fewer than ``min_windows`` windows join the nearest large cluster."""
    ids, counts = np.unique(labels, return_counts=True)
    big = ids[counts >= min_windows]
    if len(big) == 0 or len(big) == len(ids):
        return labels
    centroids = np.stack([emb[labels == c].mean(0) for c in big])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    out = labels.copy()
    small = ~np.isin(labels, big)
    out[small] = big[np.argmax(emb[small] @ centroids.T, axis=1)]
    return out


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return np.array([order[int(lab)] for lab in labels], dtype=int)


@dataclass
class SpeakerTrack:
    """Speaker labels of the windows of one stretch of audio (times relative to that audio)."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def votes(self, start: float, end: float) -> dict[str, float]:
        """Seconds of overlap of [start, end] with the windows of each speaker."""
        out: dict[str, float] = {}
        for (s, e), lab in zip(self.spans, self.labels):
            overlap = min(e, end) - max(s, start)
            if overlap > 0:
                out[lab] = out.get(lab, 0.0) + overlap
        return out

    def label(self, start: float, end: float, reach: float = 1.0) -> str | None:
        """The speaker of [start, end]: most window overlap, else the nearest window within ``reach`` s."""
        votes = self.votes(start, end)
        if votes:
            return max(votes, key=votes.__getitem__)
        best, dist = None, reach
        for (s, e), lab in zip(self.spans, self.labels):
            d = max(s - end, start - e)
            if d <= dist:
                best, dist = lab, d
        return best

    def word_labels(self, spans: Sequence[tuple[float, float]], min_turn: float) -> list[str | None]:
        """A speaker per word of one utterance (word spans in seconds), smoothed: a run of one speaker
        shorter than ``min_turn`` seconds joins its longer neighbour, so only sustained changes split.

        >>> t = SpeakerTrack([(0.0, 1.6), (1.6, 3.2)], ["Speaker 1", "Speaker 2"])
        >>> t.word_labels([(0.1, 0.5), (0.6, 1.4), (1.7, 2.2), (2.3, 3.0)], min_turn=1.0)
        ['Speaker 1', 'Speaker 1', 'Speaker 2', 'Speaker 2']
        >>> t.word_labels([(0.1, 0.5), (0.6, 1.4), (1.7, 2.0)], min_turn=1.0)
        ['Speaker 1', 'Speaker 1', 'Speaker 1']
        """
        labels = [self.label(s, e) for s, e in spans]
        known = [lab for lab in labels if lab is not None]
        if not known:
            return labels
        for i, lab in enumerate(labels):  # unlabelled words: the previous word's speaker (else the next's)
            if lab is None:
                labels[i] = labels[i - 1] if i > 0 and labels[i - 1] is not None else next(
                    x for x in labels[i:] if x is not None)
        while True:
            runs = _runs(labels)
            if len(runs) < 2:
                return labels
            lengths = [spans[b - 1][1] - spans[a][0] for a, b, _ in runs]
            shortest = int(np.argmin(lengths))
            if lengths[shortest] >= min_turn:
                return labels
            a, b, _ = runs[shortest]
            left = lengths[shortest - 1] if shortest > 0 else -1.0
            right = lengths[shortest + 1] if shortest + 1 < len(runs) else -1.0
            into = runs[shortest - 1][2] if left >= right else runs[shortest + 1][2]
            labels[a:b] = [into] * (b - a)


def _runs(labels: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each run of equal values."""
    out: list[tuple[int, int, Any]] = []
    for i, lab in enumerate(labels):
        if out and out[-1][2] == lab:
            out[-1] = (out[-1][0], i + 1, lab)
        else:
            out.append((i, i + 1, lab))
    return out


class Diarizer:
    """Speaker labels that stay consistent across the analysis windows of one recording.

    ``encoder``: an object with ``embed_windows(audio, spans) -> (n, d)`` (default: the GE2E encoder).
    """

    def __init__(self, options: DiarizeOptions | None = None, encoder: Any = None) -> None:
        if encoder is None:
            from mmva.encoders.speaker import load_speaker_encoder

            encoder = load_speaker_encoder()
        self.options = options or DiarizeOptions()
        self.encoder = encoder
        self._emb = np.zeros((0, 0), np.float32)  # past windows kept for re-clustering
        self._ids = np.zeros(0, int)  # their speaker index
        self.n_speakers = 0

    def track(self, audio: np.ndarray, regions: Sequence[tuple[float, float]]) -> SpeakerTrack:
        """Speakers of the voice ``regions`` (seconds into ``audio``, 16 kHz mono)."""
        spans = window_spans(regions, self.options.hop, self.options.min_region)
        if not spans:
            return SpeakerTrack()
        emb = np.asarray(self.encoder.embed_windows(audio, spans), np.float32)
        ids = self._assign(emb)
        return SpeakerTrack(spans, [speaker_name(int(i)) for i in ids])

    def _assign(self, emb: np.ndarray) -> np.ndarray:
        from scipy.optimize import linear_sum_assignment

        n_old = len(self._ids)
        both = np.concatenate([self._emb, emb]) if n_old else emb
        clusters = cluster(both, self.options)
        new = clusters[n_old:]
        mapping: dict[int, int] = {}
        if n_old:
            old = clusters[:n_old]
            cids = np.unique(new)
            counts = np.array([[np.sum((old == c) & (self._ids == s)) for s in range(self.n_speakers)]
                               for c in cids])
            rows, cols = linear_sum_assignment(-counts)
            mapping = {int(cids[r]): int(c) for r, c in zip(rows, cols) if counts[r, c] > 0}
        for c in new:  # clusters with no past member are new speakers, numbered as they appear
            if int(c) not in mapping:
                mapping[int(c)] = self.n_speakers
                self.n_speakers += 1
        ids = np.array([mapping[int(c)] for c in new], dtype=int)
        self._keep(emb, ids)
        return ids

    def _keep(self, emb: np.ndarray, ids: np.ndarray) -> None:
        self._emb = np.concatenate([self._emb, emb]) if len(self._ids) else emb
        self._ids = np.concatenate([self._ids, ids])
        if len(self._ids) > self.options.max_windows:  # bound memory and clustering time on long media
            keep = np.linspace(0, len(self._ids) - 1, self.options.max_windows).round().astype(int)
            self._emb, self._ids = self._emb[keep], self._ids[keep]
