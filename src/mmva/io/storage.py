"""Local paths and ``s3://`` URIs behind one small API (fsspec/s3fs underneath).

Credentials come from the standard AWS chain; the endpoint from ``AWS_ENDPOINT_URL`` (e.g. a moto
server in tests). Writes are atomic: readers never see a half-written file.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import fsspec


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, memory://...)."""
    return "://" in str(uri) and not str(uri).startswith("file://")


_FS_CACHE: dict[tuple[Any, ...], fsspec.AbstractFileSystem] = {}


def _s3_cache_key(endpoint: str | None) -> tuple[Any, ...]:
    # Everything that changes which server or identity a client talks to, and the process id: an
    # s3fs instance is bound to its process's event-loop thread and does not survive a fork.
    env = os.environ
    return ("s3", endpoint, env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
            env.get("AWS_SESSION_TOKEN"), env.get("AWS_PROFILE"), env.get("AWS_DEFAULT_REGION"),
            env.get("AWS_REGION"), os.getpid())


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path within it for a local path or URI.

    S3 filesystems are reused per endpoint, credentials and process: creating an S3 client costs
    about as much as a small request, so a fresh one per call made every ``exists`` several times
    slower. Directory listings are never cached, so files written by other processes are seen.
    """
    import fsspec  # imported here: 0.16 s that a cold `mmva analyze-text` never needs

    uri = str(uri)
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        key = _s3_cache_key(endpoint)
        fs = _FS_CACHE.get(key)
        if fs is None:
            options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
            if endpoint:
                options["client_kwargs"] = {"endpoint_url": endpoint}
            fs = fsspec.filesystem("s3", **options)
            _FS_CACHE[key] = fs
        return fs, fs._strip_protocol(uri)
    fs, path = fsspec.core.url_to_fs(uri)
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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe to do from several threads.
_UMASK = _read_umask()


def write_atomic(uri: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> str:
    """Run ``write(tmp_path)``, then make the finished file appear at ``uri`` in one step.

    Locally the temp file sits in the target folder (same filesystem), is fsynced (unless
    ``fsync=False``) and renamed with ``os.replace``; remotely it is uploaded with one PUT once
    complete (an S3 object appears only whole). A crash, ``kill -9`` or a full disk during ``write``
    leaves any previous file untouched and no temp file behind. Without fsync a killed process still
    leaves the old file or the new one; only a power cut can tear it.

    >>> write_atomic("/tmp/mmva-doc/a.txt", lambda tmp: Path(tmp).write_text("hi"))
    '/tmp/mmva-doc/a.txt'
    """
    uri = str(uri)
    if is_remote(uri):
        fd, tmp = tempfile.mkstemp(suffix=Path(uri).suffix)
        os.close(fd)
        try:
            write(tmp)
            fs, path = filesystem(uri)
            fs.put_file(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return uri
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        try:  # a rewrite keeps the file's permissions; a new file gets the usual ones (mkstemp makes 0600)
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return uri


def write_bytes_atomic(uri: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write a whole file so that readers see either the old content or the new, never a part
    (see :func:`write_atomic`; on S3 a single PUT of ``data``)."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)
        return
    write_atomic(uri, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync)


def write_text_atomic(uri: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def upload_file_atomic(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a finished local file to a local path or URI atomically."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.put_file(str(local), path)  # S3 objects become visible only when complete
        return
    write_atomic(uri, lambda tmp: shutil.copyfile(local, tmp))


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


def _same_file(src_fs: Any, src: str, dst_fs: Any, dst: str) -> bool:
    """Cheap "already copied?" test: same size, and same MD5 where S3 gives one (single-part ETag)."""
    try:
        a, b = src_fs.info(src), dst_fs.info(dst)
    except FileNotFoundError:
        return False
    if a.get("size") != b.get("size"):
        return False
    tags = [str(i.get("ETag", "")).strip('"') for i in (a, b)]
    known = [t for t in tags if t and "-" not in t]
    if len(known) == 1:  # one side local: hash it
        import hashlib

        local_fs, local = (src_fs, src) if not tags[0] else (dst_fs, dst)
        return hashlib.md5(local_fs.cat_file(local)).hexdigest() == known[0]
    if len(known) == 2:
        return known[0] == known[1]
    return a.get("mtime", 0) <= b.get("mtime", 0) if "mtime" in a and "mtime" in b else False


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, only_changed: bool = False) -> int:
    """Copy every file under ``src`` to the same relative path under ``dst`` (local or URI, either way).

    Each file is written atomically (temp + rename locally, one PUT on S3). With ``only_changed``
    files that are already there unchanged are skipped, which makes it a cheap periodic sync (e.g.
    a local TensorBoard folder to S3). Returns the number of files copied.

    >>> # copy_tree("corpus/", "s3://bucket/corpus")
    """
    src_fs, src_root = filesystem(src)
    dst_fs, _ = filesystem(dst)
    if not src_fs.exists(src_root):
        raise FileNotFoundError(f"{src}: no such folder")
    copied = 0
    for path in sorted(src_fs.find(src_root)):
        rel = posixpath.relpath(path, src_root) if is_remote(src) else os.path.relpath(path, src_root)
        target = join(dst, *rel.replace(os.sep, "/").split("/"))
        if only_changed and _same_file(src_fs, path, dst_fs, filesystem(target)[1]):
            continue
        if is_remote(src):
            local, _ = local_copy(f"{str(src).split('://')[0]}://{path}")
            try:
                upload_file_atomic(local, target)
            finally:
                os.unlink(local)
        else:
            upload_file_atomic(path, target)
        copied += 1
    return copied
