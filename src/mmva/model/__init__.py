"""Models: the reference multimodal model, checkpoints, the default model.

The reference model is imported on first use (``mmva.model.MultimodalSentimentAnalyzer``): importing
a submodule such as :mod:`mmva.model.text_onnx` must not pull in torch.
"""

from typing import Any

__all__ = ["MultimodalSentimentAnalyzer", "MultimodelSentimentAnalyzer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mmva.model import multimodal

        return getattr(multimodal, name)
    raise AttributeError(f"module 'mmva.model' has no attribute {name!r}")
