"""File-system helpers shared by the atomic writers."""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

_LOCK = threading.Lock()


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 minus the process umask (usually 0o644).

    ``tempfile.mkstemp`` creates files readable by their owner only (0o600); an atomic writer that renames
    such a file into place would leave results, weights and reports unreadable to anyone else.
    """
    with _LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def publish_mode(tmp: str | os.PathLike) -> None:
    """Give a ``mkstemp`` temporary file the ordinary new-file mode before it is renamed into place."""
    os.chmod(tmp, default_file_mode())


@contextmanager
def atomic_target(path: str | os.PathLike, *, fsync: bool = False):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on any error removed.

    A crash never leaves a half-written file at ``path``. With ``fsync`` the file's data reach the disk before
    the rename (a node failure right after it then cannot leave an empty file under the final name).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        publish_mode(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
