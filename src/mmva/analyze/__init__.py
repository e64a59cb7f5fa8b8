"""Analyse any video, audio file, subtitle file or transcript into an emotion timeline (SPEC §3).

>>> import mmva
>>> timeline = mmva.analyze("talk.mp4")          # doctest: +SKIP
>>> timeline.summary["dominant_emotion"]         # doctest: +SKIP
'joy'
"""

from __future__ import annotations

import sys
import types
from typing import Any

from mmva.analyze.pipeline import AnalyzeOptions, BatchResult, analyze, analyze_batch, expand_inputs
from mmva.analyze.timeline import SCHEMA_VERSION, Timeline
from mmva.analyze.writers import FORMATS, get_writer, write_outputs


class _CallableModule(types.ModuleType):
    # `mmva.analyze` is both this package and the function `mmva.analyze(...)` promised by the
    # README: once the package is imported, Python binds the attribute to the package, so the
    # package itself forwards calls to the function.
    def __call__(self, *args: Any, **kwargs: Any) -> Timeline:
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["AnalyzeOptions", "BatchResult", "FORMATS", "SCHEMA_VERSION", "Timeline", "analyze", "analyze_batch",
           "expand_inputs", "get_writer", "write_outputs"]
