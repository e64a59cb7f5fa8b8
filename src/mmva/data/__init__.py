"""Corpora (MELD recipe, generic manifests), the utterance dataset and the generated test corpus.

>>> from mmva.data import load_corpus, UtteranceDataset, collate_batch   # doctest: +SKIP
>>> corpus = load_corpus("data/meld", "dev")                             # doctest: +SKIP
"""

from mmva.data.corpus import Corpus, SkipReport, add_context, load_corpus
from mmva.data.meld import CorpusError, fix_text, parse_timestamp, read_meld_csv
from mmva.data.manifest import read_manifest

__all__ = [
    "Corpus", "CorpusError", "SkipReport", "UtteranceDataset", "add_context", "collate_batch", "fix_text",
    "load_corpus", "make_corpus", "parse_timestamp", "read_manifest", "read_meld_csv",
]


def __getattr__(name: str):
    # torch-heavy (dataset) and PyAV-heavy (synth) parts load on first use: reading a CSV stays light
    if name in ("UtteranceDataset", "collate_batch"):
        from mmva.data import dataset

        return getattr(dataset, name)
    if name == "make_corpus":
        from mmva.data.synth import make_corpus

        return make_corpus
    raise AttributeError(f"module 'mmva.data' has no attribute {name!r}")
