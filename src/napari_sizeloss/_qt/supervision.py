"""Slice tags and corrections of one image (Qt-free, torch-free).

``absent`` and ``corrected`` are bool ``(Z, T)``; ``corrections`` is uint8 0/1
``(X, Y, Z, T)`` and only meaningful where ``corrected``. These go to the
trainer as ``absent=``, ``corrections=`` and ``corrected=``.

``corrections`` is kept in Fortran order, so that each ``(X, Y)`` slice is
one contiguous block: writing or reading a corrected slice touches 64 KiB of
a 256x256 cine's 16 MiB instead of every page of it. Only the corrected
slices travel (:func:`pack_corrections`): to a training round, and to the
autosave file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Supervision:
    """Target-absent tags and corrected slices of one ``(X, Y, Z, T)`` volume."""

    absent: np.ndarray
    corrected: np.ndarray
    corrections: np.ndarray

    @classmethod
    def empty(cls, shape_xyzt: tuple[int, int, int, int]) -> "Supervision":
        X, Y, Z, T = shape_xyzt
        return cls(
            absent=np.zeros((Z, T), dtype=bool),
            corrected=np.zeros((Z, T), dtype=bool),
            corrections=np.zeros((X, Y, Z, T), dtype=np.uint8, order="F"),
        )

    def tag_absent(self, z_first: int, z_last: int, t: int | None, absent: bool, present: np.ndarray) -> list[tuple[int, int]]:
        """Tag slices ``z_first..z_last`` (inclusive) of frame ``t`` (every frame when None).

        As :meth:`tag_cells` on that block of slice-frames.
        """
        Z, T = self.absent.shape
        z0, z1 = max(0, min(z_first, z_last)), min(Z - 1, max(z_first, z_last))
        cells = np.zeros((Z, T), dtype=bool)
        if t is None:
            cells[z0:z1 + 1, :] = True
        else:
            cells[z0:z1 + 1, int(t)] = True
        return self.tag_cells(cells, absent, present)

    def tag_cells(self, cells: np.ndarray, absent: bool, present: np.ndarray) -> list[tuple[int, int]]:
        """Tag the slice-frames ``cells`` (bool ``(Z, T)``) target-absent (``absent``) or clear their tag.

        Slices with target dots (``present``, bool ``(Z, T)``) cannot be
        tagged absent; they are left as they are and returned.

        Returns
        -------
        list of (z, t)
            Slices skipped because they hold target dots.
        """
        cells = np.asarray(cells, dtype=bool)
        if cells.shape != self.absent.shape:
            raise ValueError(f"cells {cells.shape} and tags {self.absent.shape} differ in shape")
        skipped = cells & present if absent else np.zeros_like(cells)
        self.absent[cells & ~skipped] = absent
        return [(int(z), int(t)) for z, t in zip(*np.nonzero(skipped))]

    def clear_tags(self) -> None:
        self.absent[:] = False

    def use_corrections(self, mask: np.ndarray, slices: np.ndarray) -> int:
        """Take ``mask`` (0/1 ``(X, Y, Z, T)``) on ``slices`` (bool ``(Z, T)``) as full supervision.

        Returns the number of slices added or updated.
        """
        for z, t in np.argwhere(slices):
            self.corrections[:, :, z, t] = mask[:, :, z, t] > 0
        self.corrected |= slices
        return int(slices.sum())

    def packed_corrections(self) -> np.ndarray:
        """The corrected slices' masks, uint8 ``(X, Y, n)`` in ``np.argwhere(corrected)`` order (a copy)."""
        return pack_corrections(self.corrections, self.corrected)

    def clear_corrections(self) -> None:
        self.corrections[:, :, self.corrected] = 0
        self.corrected[:] = False


def pack_corrections(corrections: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    """``(X, Y, n)`` uint8: the ``corrected`` slices (bool ``(Z, T)``) of a ``(X, Y, Z, T)`` array, in ``argwhere`` order."""
    return np.ascontiguousarray(corrections[:, :, np.asarray(corrected, dtype=bool)], dtype=np.uint8)


def unpack_corrections(packed: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_corrections`: uint8 ``(X, Y, Z, T)``, Fortran order, zeros off ``corrected``."""
    corrected = np.asarray(corrected, dtype=bool)
    if packed.ndim != 3 or packed.shape[2] != int(corrected.sum()):
        raise ValueError(
            f"{packed.shape[2] if packed.ndim == 3 else packed.shape} corrected slice masks for "
            f"{int(corrected.sum())} corrected slices"
        )
    volume = np.zeros(packed.shape[:2] + corrected.shape, dtype=np.uint8, order="F")
    volume[:, :, corrected] = packed
    return volume
