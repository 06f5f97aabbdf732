"""Files on disk: the one policy for every file the program writes, JSON state and gzip raw snapshots.

Every managed file (DataLayout.managed_files names them) is written the same way: atomically (temp file,
fsync, rename) or appended under the history's lock; never through a symbolic link; never onto the same
file as another managed file (device and inode compared, so hard links count); never over a file its
owner made read-only; and read back with a bounded reader.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, LoadError
from utils.history.layout import DataLayout, same_file_as

MAX_STATE_BYTES = 64 << 20  # a JSON state file larger than this is not ours: read as missing


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


class UnsafeTarget(ConfigError):
    """A managed file is a link or the same file as another managed file: refused, exit 2, untouched."""


class MisplacedTarget(LoadError):
    """A folder (or a device, pipe, socket) stands where a managed file belongs: refused, exit 1, untouched."""


def refuse_unsafe(
    path: Path, what: str, layout: DataLayout | None = None, *, kinds: bool = True
) -> os.stat_result | None:
    """The one check before writing a managed file: no link, no folder, nothing but a regular file, and not
    the same file (device and inode) as another managed file. Returns the file's stat (None when absent)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoadError(describe_os_error(exc, path, "check")) from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeTarget(
            f"{path} is a symbolic link; the {what} is never written through a link: replace the "
            "link with the file it points to (or delete it); nothing was written through it"
        )
    if kinds and stat.S_ISDIR(st.st_mode):  # the preflight (kinds=False) leaves this to the write's own failure
        raise MisplacedTarget(
            f"cannot use {path}: a folder stands where the {what} belongs: move it away; nothing was written to it"
        )
    if kinds and not stat.S_ISREG(st.st_mode):
        raise MisplacedTarget(
            f"cannot use {path}: it is not a regular file (a device, pipe or socket) where the "
            f"{what} belongs: move it away; nothing was written to it"
        )
    if layout is not None and st.st_nlink > 1:
        other = same_file_as(st, path, layout)
        if other is not None:
            raise UnsafeTarget(
                f"{path} is the same file as {other} (a hard link); the {what} is never written "
                "onto another file the pipeline manages: delete the link; nothing was written to it"
            )
    return st


def refuse_read_only_file(st: os.stat_result | None, path: Path, what: str) -> None:
    """A file its owner made read-only (or immutable) is never replaced or appended to."""
    if st is not None and not st.st_mode & 0o222:
        raise LoadError(
            f"cannot write to {path}: the {what} is read-only (make it writable with chmod u+w to let "
            "the pipeline update it); it was left as it is"
        )


def check_folder(path: Path, what: str, *, kinds: bool = True) -> None:
    """A managed folder (.state/, raw/ and its day folders) is never a link nor a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LoadError(describe_os_error(exc, path, "check")) from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeTarget(
            f"{path} is a symbolic link; the {what} is never written through a link: replace the "
            "link with a folder (or delete it); nothing was written through it"
        )
    if kinds and not stat.S_ISDIR(st.st_mode):
        raise MisplacedTarget(
            f"cannot use {path}: a file stands where the {what} belongs: move it away; nothing was written to it"
        )


def check_layout(layout: DataLayout, currencies: tuple[str, ...] = ()) -> None:
    """Every managed file and folder of a data folder, checked before a command writes anything: a symbolic link,
    or a hard link onto another managed file, is refused (UnsafeTarget, exit 2) and nothing is written. A folder
    where a file belongs is left to the write that needs it (the history's: exit 1; a side output's: exit 3)."""
    check_folder(layout.state_dir, "state folder", kinds=False)
    check_folder(layout.raw_dir, "raw answers folder", kinds=False)
    for what, path in layout.managed_files(currencies):
        refuse_unsafe(path, what, layout, kinds=False)


def append_bytes(path: Path, data: bytes, what: str, layout: DataLayout | None = None) -> None:
    """Append in one write (call under the lock), fsync; a failed write is cut back to the old length."""
    st = refuse_unsafe(path, what, layout)
    refuse_read_only_file(st, path, what)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        opened = os.fstat(fd)
        if st is not None and (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafeTarget(f"{path} changed while it was opened; the {what} was not written: run again")
        size = opened.st_size
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_bounded(path: Path, limit: int, what: str = "file") -> bytes | None:
    """A managed file's bytes, at most `limit` of them (None when missing); never through a link or from a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeTarget(
                f"{path} is a symbolic link; the {what} is never read through a link: replace the "
                "link with the file it points to (or delete it)"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise MisplacedTarget(f"cannot use {path}: it is not a regular file where the {what} belongs: move it away")
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit)


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Write a whole file under a temporary name, fsync, then rename: readers see old or new, never half.

    Never through a link, never over a folder or a file its owner made read-only (the one policy)."""
    atomic_write_chunks(path, (data,), what)


def atomic_write_chunks(
    path: Path, chunks: Iterable[bytes], what: str = "file", *, keep: Callable[[], bool] | None = None
) -> bool:
    """atomic_write_bytes for a file written a block at a time (a rewrite of a large history in bounded memory).

    `keep`, asked once every chunk is written, may say the new content is not wanted (nothing changed): the
    temporary file is then removed and `path` left untouched, bytes, mtime and inode. Returns whether it replaced."""
    refuse_read_only_file(refuse_unsafe(path, what), path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o644
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            if keep is not None and not keep():
                os.unlink(tmp)
                return False
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return True


def write_json_atomic(path: Path, value: Any, what: str = "state file") -> None:
    """Atomically replace a JSON file: indented for a person when small; a large one (the membership of 17,000
    coins) on one line, since only then does json use its C encoder (30x faster)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    if len(text) < 1 << 16:
        text = json.dumps(value, indent=1, sort_keys=True)
    atomic_write_bytes(path, text.encode() + b"\n", what)


def read_json(path: Path) -> Any | None:
    """A JSON file's value, or None when it is missing or unreadable (state is always rebuildable)."""
    try:
        data = read_bounded(path, MAX_STATE_BYTES + 1)
        if data is None or len(data) > MAX_STATE_BYTES:
            return None
        return json.loads(data)
    except (OSError, ValueError, RecursionError, ConfigError):  # RecursionError: nesting deeper than the parser goes
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
    """A raw answer as gzip JSON (reproducible bytes: no timestamp in the gzip header); payload is the JSON value,
    or its text already encoded (bytes).

    Level 6, zlib's own default: the whole market's answer (13 MB of JSON a currency) packs in half the time of
    level 9 for 4 % more bytes."""
    text = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    return gzip.compress(text, compresslevel=6, mtime=0)


def archive_raw(raw_dir: Path, fetched_at: datetime, name: str, payload: Any) -> Path:
    """Store a raw API answer as gzip JSON under raw/YYYY/MM/DD/, atomically. Returns the path."""
    path = raw_dir / raw_name(fetched_at, name)
    folder = raw_dir
    for part in (None, *path.relative_to(raw_dir).parts[:-1]):
        folder = folder / part if part else folder
        check_folder(folder, "raw answers folder")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        check_folder(folder, "raw answers folder")
    atomic_write_bytes(path, raw_bytes(payload), "raw answer")
    return path


def failure_text(exc: BaseException, path: Path | str, action: str = "write") -> str:
    """One line for a side output that could not be written: an OSError explained, a pipeline error's own words."""
    if isinstance(exc, OSError):
        return describe_os_error(exc, exc.filename or path, action)
    return str(exc) or type(exc).__name__
