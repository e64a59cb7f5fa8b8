"""One utterance type for training labels and analysis results (house style rule 6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Utterance:
    """A stretch of speech, with its source, optional labels and optional predictions.

    Training rows fill ``emotion``/``sentiment``; ``mmva analyze`` fills ``emotions``/``sentiments``
    (best first, ``[{"label", "confidence"}]``) and ``modalities``.
    """

    text: str = ""
    start_time: float | None = None  # seconds from the start of `path`
    end_time: float | None = None
    path: str | None = None  # media file (local or s3://); None for text-only rows
    uid: str = ""  # unique id within a corpus, e.g. "dev/dia3_utt1"
    speaker: str | None = None
    dialogue_id: str | None = None
    utterance_id: int | None = None
    emotion: str | None = None  # gold label
    sentiment: str | None = None
    emotions: list[dict[str, Any]] = field(default_factory=list)  # predictions, best first
    sentiments: list[dict[str, Any]] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)  # modalities used for the prediction
    per_modality: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; empty optional fields are dropped."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
