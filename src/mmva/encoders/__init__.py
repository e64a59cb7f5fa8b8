"""Encoders per modality, behind one registry."""

from mmva.encoders.base import Encoder, create_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "create_encoder", "list_encoders", "register_encoder"]
