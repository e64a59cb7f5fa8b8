"""Models: the reference multimodal model, checkpoints, the default model."""

from mmva.model.multimodal import MultimodalSentimentAnalyzer, MultimodelSentimentAnalyzer

__all__ = ["MultimodalSentimentAnalyzer", "MultimodelSentimentAnalyzer"]
