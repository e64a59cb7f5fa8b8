"""Encoders per modality, behind one registry.

The registry (and torch with it) loads on first use, so that importing a light submodule such as
``mmva.encoders.weights`` (the CLI does, to report missing weights) costs no torch import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Encoder", "create_encoder", "list_encoders", "register_encoder"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mmva.encoders import base

        return getattr(base, name)
    raise AttributeError(f"module 'mmva.encoders' has no attribute {name!r}")
