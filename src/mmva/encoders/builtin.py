"""Importing this module registers every encoder that ships with mmva."""

from mmva.encoders import reference  # noqa: F401

# Optional encoders register themselves when their module imports cleanly.
for _module in ("mmva.encoders.text", "mmva.encoders.face_xception", "mmva.encoders.prosody"):
    try:
        __import__(_module)
    except ModuleNotFoundError as _exc:  # module not written yet or optional dependency missing
        if _exc.name not in (_module,) and not str(_exc.name or "").startswith("mmva"):
            raise
