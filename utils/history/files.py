"""Files on disk: atomic writes, JSON state and gzip raw snapshots."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.errors import LoadError


def describe_os_error(exc: OSError, path: Path | str, action: str) -> str:
    """One line naming the file, what failed and what to do."""
    advice = {
        errno.ENOSPC: "the disk is full: free some space and run again",
        errno.EDQUOT: "the disk quota is exhausted: free some space and run again",
        errno.EFBIG: "the file size limit was reached: raise the limit or free space",
        errno.EROFS: "the file system is read-only: choose another --data-dir",
        errno.EACCES: "permission denied: fix the folder's permissions or choose another --data-dir",
        errno.EPERM: "permission denied: fix the folder's permissions or choose another --data-dir",
        errno.ENOENT: "the folder does not exist: create it or choose another --data-dir",
        errno.EISDIR: "a folder stands where a file belongs: move it away",
        errno.ENOTDIR: "a file stands where a folder belongs: move it away",
    }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return f"cannot {action} {path}: {advice}"


def fsync_dir(path: Path) -> None:
    """Make a rename inside a folder durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a whole file under a temporary name, fsync, then rename: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o644
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any) -> None:
    """Atomically replace a JSON file."""
    atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")


def read_json(path: Path) -> Any | None:
    """A JSON file's value, or None when it is missing or unreadable (state is always rebuildable)."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return None


def ensure_dir(path: Path) -> None:
    """Create a folder (and parents), turning failure into a LoadError that says why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoadError(describe_os_error(exc, path, "create folder")) from None
    if not path.is_dir():
        raise LoadError(f"cannot use {path}: it is not a folder")


def raw_name(fetched_at: datetime, name: str) -> str:
    """Where a raw answer goes, relative to the raw folder: YYYY/MM/DD/<time>Z_<name>.json.gz."""
    moment = fetched_at.astimezone(timezone.utc)
    return f"{moment:%Y}/{moment:%m}/{moment:%d}/{moment:%Y%m%dT%H%M%S%f}Z_{name}.json.gz"


def raw_bytes(payload: Any) -> bytes:
    """A raw answer as gzip JSON (reproducible bytes: no timestamp in the gzip header)."""
    return gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), mtime=0)


def archive_raw(raw_dir: Path, fetched_at: datetime, name: str, payload: Any) -> Path:
    """Store a raw API answer as gzip JSON under raw/YYYY/MM/DD/, atomically. Returns the path."""
    path = raw_dir / raw_name(fetched_at, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, raw_bytes(payload))
    return path
