"""mmva.serve: the HTTP service (SageMaker inference contract, background jobs, web page).

>>> from mmva.serve import ServeSettings, create_app
>>> app = create_app(ServeSettings(work_dir="/tmp/mmva-serve-doc"))  # doctest: +SKIP
"""

from __future__ import annotations

from mmva.serve.app import ServeSettings, create_app
from mmva.serve.jobs import JobInput, JobManager
from mmva.serve.limits import Limits, RequestError

__all__ = ["JobInput", "JobManager", "Limits", "RequestError", "ServeSettings", "create_app"]
