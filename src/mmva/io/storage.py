"""Local paths and ``s3://`` URIs behind one small API (fsspec/s3fs underneath).

Credentials come from the standard AWS chain; the endpoint from ``AWS_ENDPOINT_URL`` (e.g. a moto
server in tests). Writes are atomic: readers never see a half-written file.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

import fsspec


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://...)."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path within it for a local path or URI."""
    uri = str(uri)
    options: dict[str, Any] = {}
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        options["skip_instance_cache"] = True
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts, keeping a URI's scheme."""
    base = str(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return str(Path(base, *parts))


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    if not is_remote(uri):  # object stores have no directories
        fs.makedirs(path, exist_ok=True)


def listdir(uri: str | os.PathLike) -> list[str]:
    """Names (not full paths) of the entries directly under a folder or prefix."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def open_uri(uri: str | os.PathLike, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """Open a local path or URI for reading (or non-atomic writing)."""
    fs, path = filesystem(uri)
    return fs.open(path, mode, **kwargs)


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file so that readers see either the old content or the new, never a part.

    Locally: temp file in the same folder, fsync, ``os.replace``. On S3 a single PUT is already
    atomic (an object appears only once its upload completes).
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(uri: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def upload_file_atomic(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a finished local file to a local path or URI atomically."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.put_file(str(local), path)  # S3 objects become visible only when complete
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(local, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(uri: str | os.PathLike, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def walk_files(uri: str | os.PathLike) -> Iterator[str]:
    """Every file under a folder or prefix, as full URIs/paths."""
    fs, path = filesystem(uri)
    for p in sorted(fs.find(path)):
        yield p if not is_remote(uri) else f"{str(uri).split('://')[0]}://{p}"


def local_copy(uri: str | os.PathLike, suffix: str = "") -> tuple[str, bool]:
    """A local path for a URI (downloaded to a temp file when remote). Returns (path, is_temp)."""
    if not is_remote(uri):
        return str(uri), False
    fs, path = filesystem(uri)
    fd, tmp = tempfile.mkstemp(suffix=suffix or Path(path).suffix)
    os.close(fd)
    fs.get_file(path, tmp)
    return tmp, True
