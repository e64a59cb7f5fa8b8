"""Request limits for the HTTP service: upload size, content types, time limits.

Uploads are streamed to a temporary file while their bytes are counted, so an oversized body is
refused (413) as soon as it passes the limit, before it can fill the disk; a declared
``Content-Length`` over the limit is refused before a single byte is read. Multipart bodies are
parsed incrementally with ``python-multipart`` (Starlette's ``request.form()`` would spool the whole
file first and only then let us look at its size).
"""

from __future__ import annotations

import json
import mimetypes
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

# Media the service accepts. PyAV sniffs the container from the bytes, but the analysis pipeline
# routes audio and video by file extension, so the temp file gets one from this list only (never a
# name chosen by the client as such: .srt/.txt inputs would change what the pipeline does).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".3gp")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".oga", ".opus", ".aac", ".wma")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
GENERIC_MEDIA_TYPES = ("application/octet-stream", "binary/octet-stream")
_TYPE_TO_EXTENSION = {
    "video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm", "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi", "video/avi": ".avi", "video/mpeg": ".mpg", "video/mp2t": ".ts",
    "video/3gpp": ".3gp", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
    "audio/vnd.wave": ".wav", "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/flac": ".flac",
    "audio/x-flac": ".flac", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a", "audio/aac": ".aac",
    "audio/ogg": ".ogg", "audio/opus": ".opus", "audio/webm": ".webm",
}
_CHUNK = 1 << 16
MAX_JSON_DEPTH = 32  # levels of nesting a JSON request may have (real requests use 3)


class RequestError(Exception):
    """An error answered to the client as JSON ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Limits:
    """What one request may cost.

    >>> Limits(max_upload_mb=50).max_upload_bytes
    52428800
    """

    max_upload_mb: float = 500.0  # media upload or S3 object size
    max_json_kb: float = 1024.0  # JSON request bodies (text requests, S3 URIs)
    upload_timeout_s: float = 600.0  # the whole upload must arrive within this time
    request_timeout_s: float = 300.0  # synchronous POST /invocations; longer media go to /jobs
    job_timeout_s: float = 3600.0  # one background job
    text_concurrency: int = 4  # text requests analyzed at once
    text_queue: int = 256  # text requests waiting beyond that before 503

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_kb * 1024)


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header ("" when absent)."""
    if not content_type:
        return ""
    return parse_options_header(content_type)[0].decode("latin-1").strip().lower()


def is_media_type(mtype: str) -> bool:
    return mtype.startswith(("video/", "audio/")) or mtype in GENERIC_MEDIA_TYPES


def media_suffix(mtype: str, filename: str | None = None) -> str:
    """A safe file extension for an upload, from its filename (if a media one) or its type.

    >>> media_suffix("video/mp4"), media_suffix("application/octet-stream", "talk.WAV")
    ('.mp4', '.wav')
    """
    ext = Path(filename or "").suffix.lower()
    if ext in MEDIA_EXTENSIONS:
        return ext
    if mtype in _TYPE_TO_EXTENSION:
        return _TYPE_TO_EXTENSION[mtype]
    guessed = mimetypes.guess_extension(mtype) if mtype else None
    if guessed in MEDIA_EXTENSIONS:
        return guessed
    if mtype.startswith("audio/"):
        return ".wav"
    return ".mp4"  # octet-stream or an unlisted video type: the decoder sniffs the real format


def check_declared_length(headers: Any, limit: int, what: str = "upload") -> None:
    """413 when the client declares a body over ``limit`` (before reading any of it)."""
    raw = headers.get("content-length")
    if raw is None:
        return
    try:
        declared = int(raw)
    except ValueError as exc:
        raise RequestError(400, f"invalid Content-Length header {raw!r}") from exc
    if declared > limit:
        raise RequestError(413, f"{what} of {declared} bytes is over the limit of {limit} bytes")


async def _bounded_chunks(stream: AsyncIterator[bytes], limit: int, timeout_s: float,
                          what: str) -> AsyncIterator[bytes]:
    """Yield body chunks; 413 once more than ``limit`` bytes came, 408 if the body takes over ``timeout_s``.

    The time limit covers a client that stops sending (it would otherwise hold the upload open forever).
    """
    total = 0
    deadline = time.monotonic() + timeout_s
    chunks = stream.__aiter__()
    while True:
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestError(408, f"{what} did not arrive within {timeout_s:g} s") from exc
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"{what} is over the limit of {limit} bytes; refused while streaming")
        yield chunk


async def read_json(request: Any, limits: Limits) -> Any:
    """Read a bounded JSON body; 400 with the parser's message when it is not valid JSON."""
    check_declared_length(request.headers, limits.max_json_bytes, "JSON body")
    body = bytearray()
    async for chunk in _bounded_chunks(request.stream(), limits.max_json_bytes, limits.upload_timeout_s,
                                       "JSON body"):
        body += chunk
    try:
        value = json.loads(bytes(body) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise RequestError(400, f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from exc
    check_json_value(value)
    return value


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """400 for JSON no request needs: nesting deeper than ``max_depth`` (recursive code downstream
    would raise RecursionError) or a lone UTF-16 surrogate such as ``"\\ud800"`` (valid JSON, but no
    text: UTF-8 encoders and tokenizers fail on it).

    >>> check_json_value(json.loads('{"text": "\\\\ud83d\\\\ude00"}'))  # a pair is an emoji: fine
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise RequestError(400, f"request body nests JSON deeper than {max_depth} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = ord(item[exc.start])
                raise RequestError(400, f"request body has a lone UTF-16 surrogate (\\u{bad:04x}) in a "
                                        "string; send valid Unicode text") from exc


def new_upload_path(folder: str | os.PathLike, suffix: str) -> Path:
    """A fresh, empty file in ``folder`` (created here so two uploads never share a name)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


async def save_raw_upload(request: Any, folder: str | os.PathLike, limits: Limits) -> tuple[Path, str]:
    """Stream a raw media body to a temp file in ``folder``. Returns (path, display name).

    The file is removed again if anything goes wrong; on success the caller owns it.
    """
    mtype = media_type(request.headers.get("content-type"))
    if not is_media_type(mtype):
        raise RequestError(415, f"unsupported content type {mtype or '(none)'!r}; send video/*, audio/*, "
                                "multipart/form-data, or application/json with s3_uri or text")
    check_declared_length(request.headers, limits.max_upload_bytes)
    filename = _safe_display_name(request.headers.get("x-filename") or request.query_params.get("filename"))
    path = new_upload_path(folder, media_suffix(mtype, filename))
    try:
        with open(path, "wb") as fh:
            async for chunk in _bounded_chunks(request.stream(), limits.max_upload_bytes,
                                               limits.upload_timeout_s, "upload"):
                fh.write(chunk)
        if path.stat().st_size == 0:
            raise RequestError(400, "the upload is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, filename or f"upload{path.suffix}"


def _safe_display_name(name: str | None) -> str:
    # Only ever shown back to the user; the last path component, printable, short.
    base = os.path.basename((name or "").replace("\\", "/"))
    return "".join(ch for ch in base if ch.isprintable())[:200]


class _FilePart:
    """Collects the first file field of a multipart body into a temp file (python-multipart callbacks)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = folder
        self.path: Path | None = None
        self.filename = ""
        self.mtype = ""
        self.error: RequestError | None = None
        self._headers: dict[str, str] = {}
        self._name = b""
        self._value = b""
        self._fh: Any = None
        self._done = False

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield,
                "on_header_value": self._hvalue, "on_header_end": self._hend,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers = {}

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._name.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._name, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        if self._done or b"filename" not in options:
            return  # a plain form field, or a second file: ignored
        self.filename = _safe_display_name(options[b"filename"].decode("utf-8", "replace"))
        self.mtype = media_type(self._headers.get("content-type")) or "application/octet-stream"
        if not is_media_type(self.mtype) and Path(self.filename).suffix.lower() not in MEDIA_EXTENSIONS:
            self.error = RequestError(415, f"unsupported file type {self.mtype!r} for {self.filename!r}; "
                                           "send a video or audio file")
            return
        self.path = new_upload_path(self.folder, media_suffix(self.mtype, self.filename))
        self._fh = open(self.path, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is not None:
            self._fh.write(data[start:end])

    def _end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._done = True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def save_multipart_upload(request: Any, folder: str | os.PathLike, limits: Limits) -> tuple[Path, str]:
    """Stream the first file field of a multipart/form-data body to a temp file in ``folder``."""
    check_declared_length(request.headers, limits.max_upload_bytes)
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data body without a boundary")
    part = _FilePart(folder)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        async for chunk in _bounded_chunks(request.stream(), limits.max_upload_bytes,
                                           limits.upload_timeout_s, "upload"):
            parser.write(chunk)
            if part.error:
                raise part.error
        parser.finalize()
        part.close()
        if part.error:
            raise part.error
        if part.path is None:
            raise RequestError(400, "multipart body has no file field; send the video as a file part")
        if part.path.stat().st_size == 0:
            raise RequestError(400, f"the uploaded file {part.filename!r} is empty")
    except RequestError:
        part.close()
        if part.path is not None:
            part.path.unlink(missing_ok=True)
        raise
    except BaseException as exc:
        part.close()
        if part.path is not None:
            part.path.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OSError):
            raise RequestError(400, f"malformed multipart body: {exc}") from exc
        raise
    return part.path, part.filename or f"upload{part.path.suffix}"
