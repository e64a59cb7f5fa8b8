"""mmva: the Multimodal Video Analyzer.

>>> import mmva
>>> mmva.EMOTIONS[3]
'joy'
"""

from __future__ import annotations

from typing import Any

from mmva.labels import EMOTIONS, SENTIMENTS

__version__ = "0.1.0"

# Heavy parts (torch models, analysis pipeline) load on first use so `import mmva` stays fast.
_LAZY = {
    "MultimodalSentimentAnalyzer": "mmva.model.multimodal",
    "MultimodelSentimentAnalyzer": "mmva.model.multimodal",
    "load_config": "mmva.config",
    "Utterance": "mmva.types",
    "load_model": "mmva.model.checkpoint",
    "analyze": "mmva.analyze.pipeline",
    "analyze_text": "mmva.model.predictor",
    "load_predictor": "mmva.model.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmva' has no attribute {name!r}")


__all__ = ["EMOTIONS", "SENTIMENTS", "__version__", *_LAZY]
