"""File-system helpers shared by the atomic writers."""

from __future__ import annotations

import os
import threading

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
