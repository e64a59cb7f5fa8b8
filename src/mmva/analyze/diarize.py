"""Who is speaking: speaker diarization over the analysis windows of one recording.

Steps (the usual embedding-clustering recipe, e.g. Wang et al. 2018, "Speaker diarization with LSTM"):

1. windows of 1.6 s every 0.8 s inside the voice-activity regions (a shorter region is one window);
2. a GE2E speaker embedding per window (:mod:`mmva.encoders.speaker`, resemblyzer's weights);
3. segments: up to 3 consecutive windows of one region (about 3 s), their embeddings averaged (a
   voice varies with what is said and how; the average is steadier than one window);
4. agglomerative clustering of the segments (cosine distance, average linkage; :mod:`mmva.analyze.linkage`,
   the same result as scikit-learn's without its import cost): with
   the number of speakers given, that many clusters; otherwise clusters closer than ``threshold``
   merge, clusters with too little speech are absorbed by the nearest speaker, and the count is
   kept within ``min_speakers``/``max_speakers``;
5. each window takes the speaker whose centroid is nearest; each word (or subtitle cue) the speaker
   of the windows it overlaps; inside an utterance a change of speaker that lasts at least
   ``min_turn`` seconds on both sides splits it.

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
    hop: float = 0.8
    segment_windows: int = 3  # consecutive windows of one region averaged into one clustering unit
    min_region: float = 0.3  # voice regions shorter than this get no window of their own
    min_speaker_time: float = 1.5
    min_turn: float = 1.0
    max_segments: int = 2000  # past segments kept for re-clustering (a bounded, evenly spread sample)

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


def window_spans(regions: Sequence[tuple[float, float]], hop: float = 0.8,
                 min_region: float = 0.3) -> list[tuple[float, float]]:
    """1.6 s windows every ``hop`` seconds inside each voice region; a shorter region is one window.

    >>> window_spans([(0.0, 2.0), (3.0, 3.5), (4.0, 4.1)])
    [(0.0, 1.6), (0.4, 2.0), (3.0, 3.5)]
    """
    return [span for span, _ in _windows(regions, hop, min_region)]


def _windows(regions: Sequence[tuple[float, float]], hop: float,
             min_region: float) -> list[tuple[tuple[float, float], int]]:
    """(window span, index of its region) for :func:`window_spans`."""
    out: list[tuple[tuple[float, float], int]] = []
    for r, (s, e) in enumerate(regions):
        if e - s < min_region:
            continue
        if e - s <= WINDOW:
            out.append(((round(s, 3), round(e, 3)), r))
            continue
        n = int(np.ceil((e - s - WINDOW) / hop)) + 1
        starts = np.minimum(s + hop * np.arange(n), e - WINDOW)
        out.extend(((round(float(a), 3), round(float(a) + WINDOW, 3)), r) for a in starts)
    return out


def _segments(regions_of: Sequence[int], size: int, emb: np.ndarray | None = None,
              max_distance: float = 2.0) -> list[list[int]]:
    """Window indices grouped into runs of at most ``size`` consecutive windows of one region; a run
    also ends where the next window is farther than ``max_distance`` (cosine) from the run's mean,
    so a change of voice inside one region starts a new run.

    >>> _segments([0, 0, 0, 0, 1, 2, 2], 3)
    [[0, 1, 2], [3], [4], [5, 6]]
    """
    out: list[list[int]] = []
    for i, r in enumerate(regions_of):
        if out and regions_of[out[-1][0]] == r and len(out[-1]) < size:
            if emb is None or 1.0 - float(_unit(emb[out[-1]].mean(0)) @ emb[i]) <= max_distance:
                out[-1].append(i)
                continue
        out.append([i])
    return out


def cluster(embeddings: np.ndarray, options: DiarizeOptions, seconds: np.ndarray | None = None,
            several: bool | None = None) -> np.ndarray:
    """Cluster ids (0..k-1, in order of first appearance) of unit speaker embeddings (n, d).

    ``seconds``: speech each embedding stands for (default: ``options.hop`` each), for the
    minimum-speech rule. ``several``: whether more than one voice is heard, when the caller knows
    better (from finer windows); None decides from ``embeddings`` with ``options.threshold``.
    """
    from mmva.analyze.linkage import average_linkage, cut

    n = len(embeddings)
    if n == 0:
        return np.zeros(0, int)
    if n == 1:
        return np.zeros(1, int)
    tree = average_linkage(embeddings)

    def fixed(k: int) -> np.ndarray:  # numbered in order of first appearance by cut()
        return cut(tree, n_clusters=max(1, min(k, n)))

    if options.speakers is not None:
        return fixed(options.speakers)
    weight = np.full(n, options.hop) if seconds is None else np.asarray(seconds, float)
    if several is None:
        several = count_voices(embeddings, options, weight, tree) > 1
    k = 2 if several else 1
    labels = np.zeros(n, int)
    lo, hi = options.min_speakers or 1, min(options.max_speakers or MAX_AUTO, n)
    if k > 1 or lo > 1:
        # More than one voice: how many is decided by the silhouette of each cut, which depends
        # less on one distance threshold than the threshold cut itself.
        k, labels = _best_by_silhouette(tree.distances, max(2, lo), max(2, hi), fixed)
    elif not lo <= k <= hi:
        labels = fixed(min(max(k, lo), hi))
    return labels


MAX_AUTO = 8  # the most speakers found automatically (without --speakers or --max-speakers)


def count_voices(embeddings: np.ndarray, options: DiarizeOptions, seconds: np.ndarray, tree: Any = None) -> int:
    """Voices in ``embeddings`` by the distance threshold (average linkage), clusters with less than
    ``min_speaker_time`` of speech not counted (``tree``: their :func:`~mmva.analyze.linkage.average_linkage`
    when the caller has it)."""
    from mmva.analyze.linkage import average_linkage, cut

    if len(embeddings) < 2:
        return len(embeddings)
    labels = cut(tree if tree is not None else average_linkage(embeddings), distance_threshold=options.threshold)
    return len(np.unique(_absorb_small(embeddings, labels, seconds, options.min_speaker_time)))


def _best_by_silhouette(distances: np.ndarray, lo: int, hi: int, fixed: Any) -> tuple[int, np.ndarray]:
    """The cut (``fixed(k)``, k in lo..hi) with the best silhouette on the points' ``distances``."""
    from mmva.analyze.linkage import silhouette_score

    best: tuple[float, int, np.ndarray] | None = None
    for k in range(lo, max(lo, hi) + 1):
        labels = fixed(k)
        if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(distances):
            score = -1.0
        else:
            score = silhouette_score(distances, labels)
        if best is None or score > best[0]:
            best = (score, k, labels)
    assert best is not None
    return best[1], best[2]


def _absorb_small(emb: np.ndarray, labels: np.ndarray, seconds: np.ndarray, min_seconds: float) -> np.ndarray:
    """Members of clusters with less than ``min_seconds`` of speech join the nearest large cluster."""
    ids = np.unique(labels)
    big = np.array([c for c in ids if seconds[labels == c].sum() >= min_seconds], dtype=labels.dtype)
    if len(big) == 0 or len(big) == len(ids):
        return labels
    centroids = np.stack([emb[labels == c].mean(0) for c in big])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    out = labels.copy()
    small = ~np.isin(labels, big)
    out[small] = big[np.argmax(emb[small] @ centroids.T, axis=1)]
    return out


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
        self._seconds = np.zeros(0)  # the speech each stands for
        self.n_speakers = 0

    def warm_up(self) -> None:
        """Embed one second of a tone: the first call's imports and set-up (the mel filters, the
        LSTM) happen here, e.g. in a loading thread, not on the first recording."""
        tone = (0.1 * np.sin(2 * np.pi * 160 * np.arange(16000) / 16000)).astype(np.float32)
        self.encoder.embed_windows(tone, [(0.0, 1.0)])

    def track(self, audio: np.ndarray, regions: Sequence[tuple[float, float]]) -> SpeakerTrack:
        """Speakers of the voice ``regions`` (seconds into ``audio``, 16 kHz mono)."""
        opts = self.options
        windows = _windows(regions, opts.hop, opts.min_region)
        if not windows:
            return SpeakerTrack()
        spans = [span for span, _ in windows]
        emb = np.asarray(self.encoder.embed_windows(audio, spans), np.float32)  # (w, d)
        groups = _segments([r for _, r in windows], opts.segment_windows, emb, opts.threshold)
        seg = _unit(np.stack([emb[g].mean(0) for g in groups]))  # (s, d)
        seconds = np.array([spans[g[-1]][1] - spans[g[0]][0] for g in groups])
        # Whether several voices are heard is judged on the windows: segments that straddle a change
        # of voice blur the difference.
        several = self.n_speakers > 1 or count_voices(emb, opts, np.full(len(emb), opts.hop)) > 1
        seg_ids = self._assign(seg, seconds, several)
        # Each window: the nearest centroid among the speakers of this audio (finer than segments,
        # so a change of voice inside a long region is seen).
        present = np.unique(seg_ids)
        centroids = _unit(np.stack([seg[seg_ids == i].mean(0) for i in present]))
        ids = present[np.argmax(emb @ centroids.T, axis=1)] if len(present) > 1 else np.full(len(emb), present[0])
        return SpeakerTrack(spans, [speaker_name(int(i)) for i in ids])

    def _assign(self, emb: np.ndarray, seconds: np.ndarray, several: bool | None = None) -> np.ndarray:
        n_old = len(self._ids)
        both = np.concatenate([self._emb, emb]) if n_old else emb
        clusters = cluster(both, self.options, np.concatenate([self._seconds, seconds]) if n_old else seconds,
                           several)
        new = clusters[n_old:]
        mapping: dict[int, int] = {}
        if n_old:
            from scipy.optimize import linear_sum_assignment  # only from the second window on (0.4 s to import)

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
        self._keep(emb, ids, seconds)
        return ids

    def _keep(self, emb: np.ndarray, ids: np.ndarray, seconds: np.ndarray) -> None:
        n_old = len(self._ids)
        self._emb = np.concatenate([self._emb, emb]) if n_old else emb
        self._seconds = np.concatenate([self._seconds, seconds]) if n_old else seconds
        self._ids = np.concatenate([self._ids, ids])
        if len(self._ids) > self.options.max_segments:  # bound memory and clustering time on long media
            keep = np.linspace(0, len(self._ids) - 1, self.options.max_segments).round().astype(int)
            self._emb, self._ids, self._seconds = self._emb[keep], self._ids[keep], self._seconds[keep]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-8)
