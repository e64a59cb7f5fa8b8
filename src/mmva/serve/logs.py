"""Structured logs for the service: one JSON object per line, with the request id of the request at hand.

Every request gets an id (the client's ``X-Request-ID`` when it sends a sane one, else a new one),
echoed in the ``X-Request-ID`` response header and carried by every log line written while the
request is served, and by the log lines of the job it started, so an operator can follow one request
from the access line through each analysis stage to its end.

Example::

    configure_json_logging("info")          # mmva serve does this unless --log-format text
    logging.getLogger("mmva.serve").info("model loaded", extra={"event": "model_loaded", "seconds": 3.2})
    # {"ts": "2026-...Z", "level": "info", "logger": "mmva.serve", "message": "model loaded",
    #  "event": "model_loaded", "seconds": 3.2}
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

REQUEST_ID_HEADER = "X-Request-ID"
_request_id: ContextVar[str | None] = ContextVar("mmva_request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client's id is echoed only if it cannot forge log lines
# Attributes every LogRecord has: anything else on a record came through ``extra=`` and is logged.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def new_request_id(offered: str | None = None) -> str:
    """The client's id when it is short and plain, else a fresh random one."""
    return offered if offered and _SANE_ID.match(offered) else uuid.uuid4().hex[:16]


def current_request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> object:
    """Make ``request_id`` current; returns the token :func:`reset_request_id` takes."""
    return _request_id.set(request_id)


def reset_request_id(token: object) -> None:
    _request_id.reset(token)  # type: ignore[arg-type]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ``extra`` fields, the request id."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if "request_id" not in out and current_request_id():
            out["request_id"] = current_request_id()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_json_logging(level: str = "info") -> None:
    """Send every log record (mmva's and uvicorn's) to stderr as JSON lines, at ``level`` and above
    for mmva's loggers (uvicorn's follow its own ``log_level``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    asked = logging.getLevelName(level.upper())  # an int for a known name ("trace" is uvicorn's only)
    root.setLevel(min(logging.INFO, asked if isinstance(asked, int) else logging.DEBUG))
