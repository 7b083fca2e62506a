"""Write a file so that readers see the old one or the new one, never a torn one.

Shared by the NIfTI writer, the checkpoint writer and the widget's autosave.
Qt-free, torch-free.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def publish_atomically(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a new file beside ``path``, sync it, then rename it over ``path``.

    ``tmp`` is ``.NAME.<random>.tmp<suffix>`` in ``path``'s folder, created
    with ``O_EXCL`` (never another file's name) and mode 0o666 so the umask
    applies as for any new file. On any error (``write``'s included) the
    temporary file is removed, ``path`` is untouched, and the error is raised
    unchanged for the caller to word.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as fobj:
            os.fsync(fobj.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
