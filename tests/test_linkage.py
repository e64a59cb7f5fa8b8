"""The NumPy average linkage and silhouette used by diarization equal scikit-learn's."""

import numpy as np
import pytest

from mmva.analyze.linkage import average_linkage, cosine_distances, cut, silhouette_score

sklearn_cluster = pytest.importorskip("sklearn.cluster")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the numbering of the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def speakers(rng: np.random.Generator, n: int, k: int, d: int = 256, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around k random centres, like speaker embeddings of k voices."""
    centres = rng.normal(size=(k, d))
    x = centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed,n,k", [(0, 12, 2), (1, 60, 3), (2, 200, 5), (3, 7, 1), (4, 400, 8)])
def test_cuts_equal_scikit_learn(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x = speakers(rng, n, k)
    tree = average_linkage(x)
    assert np.all(np.diff(tree.distance) >= -1e-12)  # average linkage merges at rising distances
    for clusters in range(1, min(n, 10) + 1):
        ref = sklearn_cluster.AgglomerativeClustering(n_clusters=clusters, metric="cosine",
                                                      linkage="average").fit_predict(x)
        ours = cut(tree, n_clusters=clusters)
        assert len(set(ours.tolist())) == clusters
        assert same_partition(ours, ref), (clusters, ours, ref)
    for threshold in (0.1, 0.3, 0.5, 0.8):
        ref = sklearn_cluster.AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                                      linkage="average").fit_predict(x)
        assert same_partition(cut(tree, distance_threshold=threshold), ref), threshold


@pytest.mark.parametrize("seed", range(4))
def test_silhouette_equals_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = speakers(rng, 50, 4)
    labels = rng.integers(0, 4, 50)
    labels[:2] = [5, 6]  # two clusters of one point (silhouette 0 there)
    d = cosine_distances(x)
    assert silhouette_score(d, labels) == pytest.approx(
        sklearn_metrics.silhouette_score(x, labels, metric="cosine"), abs=1e-9)


def test_edge_cases() -> None:
    assert cut(average_linkage(np.zeros((0, 4))), n_clusters=1).tolist() == []
    assert cut(average_linkage(np.ones((1, 4))), n_clusters=3).tolist() == [0]
    same = np.tile([[1.0, 2.0, 3.0]], (5, 1))  # identical voices: one cluster at any threshold
    assert cut(average_linkage(same), distance_threshold=1e-6).tolist() == [0] * 5
    with pytest.raises(ValueError):
        cut(average_linkage(same), n_clusters=2, distance_threshold=0.3)
    with pytest.raises(ValueError):
        silhouette_score(cosine_distances(same), np.zeros(5, int))


def test_as_many_points_as_the_diarizer_keeps() -> None:
    """The diarizer re-clusters up to 2,000 kept segments per analysis window of long media."""
    x = speakers(np.random.default_rng(5), 2000, 6, spread=0.9)
    tree = average_linkage(x)
    ref = sklearn_cluster.AgglomerativeClustering(n_clusters=6, metric="cosine", linkage="average").fit_predict(x)
    assert same_partition(cut(tree, n_clusters=6), ref)
