"""A private scratch folder for an S3 history's local copies (CSV copy, index, status, charts).

Per user and mode 0700: $XDG_CACHE_HOME/crypto-history, else ~/.cache/crypto-history, checked before use
(a real folder, not a link, owned by this user); when neither can be used (a read-only home, as on AWS
Lambda), a fresh folder from tempfile.mkdtemp. Never a fixed name in the shared temp folder, which
another local user could create first or point elsewhere with a link.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from utils.errors import ConfigError

log = logging.getLogger(__name__)

APP = "crypto-history"


def cache_base(env: Mapping[str, str]) -> Path | None:
    """$XDG_CACHE_HOME (when absolute, as the spec asks), else ~/.cache; None when there is no home."""
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    home = env.get("HOME", "").strip()
    return Path(home) / ".cache" if home and Path(home).is_absolute() else None


def check_private(path: Path) -> None:
    """A folder this user owns, not a link, not open to others (tightened to 0700 when it is). Raises ConfigError."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"the scratch folder {path} is a symbolic link; the pipeline never writes through one: "
            "delete the link (or set XDG_CACHE_HOME to a folder of your own)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the scratch folder {path} is not a folder: move it away")
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"the scratch folder {path} belongs to another user (uid {st.st_uid}): delete it, or set "
            "XDG_CACHE_HOME to a folder of your own"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def private_scratch(env: Mapping[str, str]) -> Path:
    """This user's scratch root for S3 histories, created with mode 0700 and checked. Raises ConfigError."""
    base = cache_base(env)
    if base is not None:
        root = base / APP
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                root.mkdir(mode=0o700)
            except FileExistsError:
                pass
            check_private(root)
            return root
        except OSError as exc:
            log.debug("cannot use %s as the scratch folder (%s); using a fresh temporary folder", root, exc)
    return Path(tempfile.mkdtemp(prefix=f"{APP}-"))  # mode 0700, a new name each time
