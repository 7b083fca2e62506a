"""Autosave of the user's work on one image: dots, tags, corrections, bounds.

Where
-----
* Beside the image file: ``<dir>/<name>.sizeloss.npz`` for
  ``<dir>/<name>.nii.gz`` (or ``.nii``), when that directory is writable.
* Otherwise (read-only directory, or an image with no file such as the sample
  phantom) in the user data folder: ``<data dir>/autosave/<name>-<key>.npz``,
  where ``<key>`` is a hash of the image's absolute path, or of its pixels
  when it has no file. The data folder is ``$NAPARI_SIZELOSS_DATA_DIR`` when
  set, else the platform's user data directory for ``napari-sizeloss``
  (e.g. ``~/.local/share/napari-sizeloss`` on Linux).

Each file records a fingerprint of the image (shape and a hash of a strided
sample of its voxels), so saved work is offered back only for the same image.
Writes are atomic (temporary file, then rename). :class:`AutosaveWriter`
writes them on a background thread, so a slow or network disk never holds up
the window. Qt-free and torch-free.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._atomic import publish_atomically
from .supervision import unpack_corrections

DATA_DIR_ENV = "NAPARI_SIZELOSS_DATA_DIR"
SUFFIX = ".sizeloss.npz"
FORMAT_VERSION = 1
#: Delay (ms) between a change and its autosave.
AUTOSAVE_DELAY_MS = 1000


def user_data_dir() -> Path:
    """The folder for autosaves of images that have no writable directory."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-sizeloss", appauthor=False))


def fingerprint(data: np.ndarray) -> str:
    """Shape, dtype and a hash of about 1e6 voxels sampled with a fixed stride.

    Cheap on large volumes (a few ms), and equal for the same image read twice.
    """
    arr = np.asarray(data)
    flat = arr.reshape(-1)
    stride = max(1, flat.size // 1_000_000)
    digest = hashlib.blake2b(np.ascontiguousarray(flat[::stride]).tobytes(), digest_size=12).hexdigest()
    return f"{'x'.join(str(n) for n in arr.shape)}-{arr.dtype.str}-{digest}"


def dir_writable(directory: Path) -> bool:
    """True when files can be created in ``directory``."""
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def user_autosave_path(source_path: str | None, image_name: str, image_fingerprint: str) -> Path:
    """The autosave file in the user data folder (keyed by the file's path, or by the pixels)."""
    if source_path:
        source = Path(source_path)
        key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
        return user_data_dir() / "autosave" / f"{_safe_name(_stem(source))}-{key}.npz"
    key = hashlib.sha1(image_fingerprint.encode()).hexdigest()[:12]
    return user_data_dir() / "autosave" / f"{_safe_name(image_name)}-{key}.npz"


def autosave_path(source_path: str | None, image_name: str, image_fingerprint: str) -> Path:
    """Where the work on an image is autosaved: beside its file when writable, else the user folder."""
    if source_path:
        source = Path(source_path)
        if dir_writable(source.parent):
            return source.parent / f"{_stem(source)}{SUFFIX}"
    return user_autosave_path(source_path, image_name, image_fingerprint)


def find_saved_work(source_path: str | None, image_name: str, image_fingerprint: str) -> tuple[Path, SavedWork] | None:
    """Saved work for this image (beside it first, then the user folder) whose fingerprint matches, or None."""
    candidates = [autosave_path(source_path, image_name, image_fingerprint)]
    candidates.append(user_autosave_path(source_path, image_name, image_fingerprint))
    for path in dict.fromkeys(candidates):
        work = load_work(path)
        if work is not None and work.fingerprint == image_fingerprint and not work.is_empty:
            return path, work
    return None


@dataclass
class SavedWork:
    """What the user made on one image.

    Attributes
    ----------
    fingerprint : str
        :func:`fingerprint` of the image.
    points : ndarray float (N, layer_ndim)
        Dot centres in layer data coordinates (``(t, z, y, x)`` or ``(z, y, x)``).
    kinds : list of str
        ``"target"`` / ``"background"`` per dot.
    absent : ndarray bool (Z, T)
        Slices tagged target-absent.
    corrected : ndarray bool (Z, T)
        Slices whose corrected mask is used as full supervision.
    corrections : ndarray uint8 (X, Y, n)
        The masks of the ``n = corrected.sum()`` corrected slices, in
        ``np.argwhere(corrected)`` order.
    bounds : tuple (lower, upper, unit) or None
        Slice-area bounds, unit ``"mm2"`` or ``"px"``.
    saved_at : float
        ``time.time()`` of the save.
    """

    fingerprint: str
    points: np.ndarray
    kinds: list[str]
    absent: np.ndarray
    corrected: np.ndarray
    corrections: np.ndarray
    bounds: tuple[float, float, str] | None = None
    saved_at: float = field(default_factory=time.time)

    @property
    def is_empty(self) -> bool:
        return len(self.points) == 0 and not self.absent.any() and not self.corrected.any()

    def summary(self) -> str:
        """One line for the user: what would be restored."""
        n_target = sum(k == "target" for k in self.kinds)
        parts = [f"{n_target} target dot(s)", f"{len(self.kinds) - n_target} background dot(s)"]
        if self.absent.any():
            parts.append(f"{int(self.absent.sum())} absent slice(s)")
        if self.corrected.any():
            parts.append(f"{int(self.corrected.sum())} corrected slice(s)")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved_at))
        return f"{', '.join(parts)}; saved {when}"

    def fits(self, shape_xyzt: tuple[int, int, int, int], layer_ndim: int) -> bool:
        """Whether this work can go back on an image of core shape ``(X, Y, Z, T)`` shown as a ``layer_ndim``-D layer."""
        X, Y, Z, T = shape_xyzt
        if self.absent.shape != (Z, T) or self.corrected.shape != (Z, T):
            return False
        if self.corrections.shape != (X, Y, int(self.corrected.sum())):
            return False
        return not len(self.points) or self.points.shape[1] == layer_ndim

    def corrections_volume(self) -> np.ndarray:
        """The corrections as a full uint8 ``(X, Y, Z, T)`` array, Fortran order (zeros elsewhere)."""
        return unpack_corrections(self.corrections, self.corrected)


def save_work(path: Path, work: SavedWork) -> Path:
    """Write ``work`` to ``path`` atomically; creates the folder. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lower, upper, unit = work.bounds if work.bounds is not None else (np.nan, np.nan, "")

    def write(tmp: Path) -> None:
        np.savez_compressed(
            tmp,
            version=np.int64(FORMAT_VERSION),
            fingerprint=np.str_(work.fingerprint),
            points=np.asarray(work.points, dtype=np.float64),
            kinds=np.asarray(work.kinds, dtype="U10"),
            absent=np.asarray(work.absent, dtype=bool),
            corrected=np.asarray(work.corrected, dtype=bool),
            corrections=np.asarray(work.corrections, dtype=np.uint8),
            bounds=np.asarray([lower, upper], dtype=np.float64),
            unit=np.str_(unit),
            saved_at=np.float64(work.saved_at),
        )

    publish_atomically(path, write, suffix=".npz")  # the suffix keeps numpy from appending one
    return path


def load_work(path: Path) -> SavedWork | None:
    """Read an autosave; None when missing, unreadable or of another format version."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["version"]) != FORMAT_VERSION:
                return None
            lower, upper = (float(v) for v in npz["bounds"])
            unit = str(npz["unit"])
            return SavedWork(
                fingerprint=str(npz["fingerprint"]),
                points=np.array(npz["points"], dtype=float),
                kinds=[str(k) for k in npz["kinds"]],
                absent=np.array(npz["absent"], dtype=bool),
                corrected=np.array(npz["corrected"], dtype=bool),
                corrections=np.array(npz["corrections"], dtype=np.uint8),
                bounds=None if not unit or np.isnan(lower) else (lower, upper, unit),
                saved_at=float(npz["saved_at"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_with_fallback(path: Path, work: SavedWork, fallback: Path) -> Path:
    """Save to ``path``; on a permission or I/O error save to ``fallback`` instead. Returns where it went."""
    try:
        return save_work(path, work)
    except OSError:
        if Path(fallback) == Path(path):
            raise
        return save_work(fallback, work)


class AutosaveWriter:
    """Writes autosaves one at a time on a background thread.

    An autosave compresses the corrections and syncs the file to disk:
    milliseconds on a local disk, but seconds on a slow or network one, which
    the window must not wait for. :meth:`submit` hands a snapshot of the work
    over and returns at once; the write happens on a thread of its own.

    * A save that has not started yet is replaced by a newer save of the same
      file (only the newest work matters; both submitters' futures get the
      newer save's outcome). Saves of different files keep their order.
    * The thread lives only while there is something to write, and is not a
      daemon: a write that has started finishes even when the interpreter is
      exiting, so the file is never left behind the user's last change by a
      write cut off half way (and :func:`save_work` is atomic anyway).
    * :meth:`flush` waits until everything submitted is on disk.

    The caller must not change a submitted :class:`SavedWork`'s arrays.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # path -> (work, fallback, futures), oldest first
        self._pending: dict[Path, tuple[SavedWork, Path, list[Future]]] = {}
        self._thread: threading.Thread | None = None
        self.writes = 0  # saves written (or failed) so far

    def submit(self, path: Path, work: SavedWork, fallback: Path) -> Future:
        """Queue ``work`` for :func:`write_with_fallback`; the future's result is where it went."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        path = Path(path)
        with self._cond:
            superseded = self._pending.pop(path, None)
            futures = (superseded[2] if superseded else []) + [future]
            self._pending[path] = (work, Path(fallback), futures)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="napari-sizeloss autosave")
                self._thread.start()
        return future

    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._thread = None
                    self._cond.notify_all()
                    return
                path = next(iter(self._pending))
                work, fallback, futures = self._pending.pop(path)
            try:
                written = write_with_fallback(path, work, fallback)
            except BaseException as exc:  # handed to the submitter, never lost in this thread
                outcome = (None, exc)
            else:
                outcome = (written, None)
            with self._cond:
                self.writes += 1
            for future in futures:
                if outcome[1] is None:
                    future.set_result(outcome[0])
                else:
                    future.set_exception(outcome[1])

    @property
    def busy(self) -> bool:
        """Whether a save is queued or being written."""
        with self._cond:
            return self._thread is not None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted save is written; False when ``timeout`` (seconds) ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)
