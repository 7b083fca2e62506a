"""The prediction layer's content: what the model wrote, and what the user edited.

:class:`PredictionTracker` writes model predictions into a napari Labels layer
and keeps a copy of what it wrote (the *baseline*). A slice whose layer
content differs from the baseline was edited by the user (brush, eraser,
fill); such slices are never overwritten by later predictions, and "Use
corrections" turns them into full supervision. Slices already used as
corrections show the correction, not the model.

Arrays: the layer is in napari order (``(T, Z, Y, X)`` or ``(Z, Y, X)``);
masks come in the core order ``(X, Y, Z, T)``; slice indices are ``(z, t)``.
No Qt, no torch.
"""

from __future__ import annotations

import numpy as np

from .layers import VolumeGeometry


class PredictionTracker:
    """Model output in a Labels layer, with edit detection.

    Parameters
    ----------
    layer : napari.layers.Labels
        Holds the prediction (label 1 = target), shape ``geometry.layer_shape``.
    geometry : VolumeGeometry
    """

    def __init__(self, layer, geometry: VolumeGeometry) -> None:
        self.layer = layer
        self.geometry = geometry
        self.baseline = np.array(layer.data, dtype=np.uint8, copy=True)
        self.has_prediction = bool(self.baseline.any())

    # --------------------------------------------------------------- views
    def _slice_index(self, z: int, t: int) -> tuple[int, ...]:
        return (t, z) if self.geometry.layer_ndim == 4 else (z,)

    def _zt(self, per_slice: np.ndarray) -> np.ndarray:
        """Layer-order per-slice array (``(T, Z)`` or ``(Z,)``) -> ``(Z, T)``."""
        return per_slice.T if self.geometry.layer_ndim == 4 else per_slice[:, None]

    def _slices(self, data: np.ndarray) -> np.ndarray:
        """A layer-order array as a stack of its 2D slices, ``(T * Z or Z, Y, X)`` (a view)."""
        return np.asarray(data).reshape(-1, *data.shape[-2:])

    def _per_slice(self, values, dtype) -> np.ndarray:
        """Per-slice ``values`` in layer order, as ``(Z, T)``."""
        flat = np.fromiter(values, dtype=dtype, count=int(np.prod(self.baseline.shape[:-2])))
        return self._zt(flat.reshape(self.baseline.shape[:-2]))

    # Slice by slice, not with volume-wide comparisons: those made 16 MB temporaries
    # on a 256x256x10x25 cine and took 30-40 ms each of the GUI thread.
    def edited(self) -> np.ndarray:
        """bool ``(Z, T)``: slices whose layer content differs from what the model wrote."""
        pairs = zip(self._slices(self.layer.data), self._slices(self.baseline))
        return self._per_slice((not np.array_equal(now, wrote) for now, wrote in pairs), bool)

    def sizes_px(self) -> np.ndarray:
        """float ``(Z, T)``: target pixels (label > 0) per slice, as the layer shows them now."""
        return self._per_slice((np.count_nonzero(s > 0) for s in self._slices(self.layer.data)), np.float64)

    def slice_size_px(self, z: int, t: int) -> float:
        return float((np.asarray(self.layer.data)[self._slice_index(z, t)] > 0).sum())

    def mask_core(self, slices: np.ndarray) -> np.ndarray:
        """The layer's ``slices`` (bool ``(Z, T)``) as 0/1 uint8 ``(X, Y, Z, T)``; other slices are 0.

        What Use corrections reads, without converting the whole volume.
        """
        data = np.asarray(self.layer.data)
        out = np.zeros(self.geometry.shape, dtype=np.uint8, order="F")  # a slice is contiguous: few pages touched
        for z, t in np.argwhere(slices):
            out[:, :, z, t] = data[self._slice_index(int(z), int(t))].T > 0
        return out

    # -------------------------------------------------------------- writes
    def write_slice(self, z: int, t: int, mask_xy: np.ndarray, protected: np.ndarray | None = None) -> bool:
        """Show the model's mask ``(X, Y)`` on slice ``(z, t)`` unless it was edited or is protected.

        Returns True when the layer changed.
        """
        if protected is not None and protected[z, t]:
            return False
        index = self._slice_index(z, t)
        data = self.layer.data
        if not np.array_equal(data[index], self.baseline[index]):
            return False  # the user edited this slice: keep their work
        new = np.asarray(mask_xy, dtype=np.uint8).T
        self.has_prediction = True
        if np.array_equal(data[index], new):
            return False
        data[index] = new
        self.baseline[index] = new
        self.layer.refresh()
        return True

    def write_volume(self, mask: np.ndarray, protected: np.ndarray | None = None) -> np.ndarray:
        """Show a whole ``(X, Y, Z, T)`` prediction, except on edited and protected slices.

        Returns
        -------
        ndarray bool (Z, T)
            The slices that were kept (edited or protected).
        """
        keep = self.edited()
        if protected is not None:
            keep = keep | protected
        new = self.geometry.to_layer(np.asarray(mask, dtype=np.uint8))
        data = self.layer.data
        write = ~keep
        sel = write.T if self.geometry.layer_ndim == 4 else write[:, 0]  # layer order: (T, Z) or (Z,)
        for index in zip(*np.nonzero(sel)):  # slice by slice: no volume-sized temporaries
            data[index] = new[index]
            self.baseline[index] = new[index]
        self.has_prediction = True
        self.layer.refresh()
        return keep

    def show_corrections(self, corrections: np.ndarray, corrected: np.ndarray) -> None:
        """Put the corrected masks (``(X, Y, Z, T)``) on the ``corrected`` slices and accept them as baseline."""
        data = self.layer.data
        for z, t in np.argwhere(corrected):
            index = self._slice_index(int(z), int(t))
            data[index] = corrections[:, :, z, t].T
            self.baseline[index] = data[index]
        if corrected.any():
            self.has_prediction = True
            self.layer.refresh()

    def accept(self, slices: np.ndarray) -> None:
        """Make the layer's current content of ``slices`` (bool ``(Z, T)``) the baseline."""
        data = np.asarray(self.layer.data)
        for z, t in np.argwhere(slices):
            index = self._slice_index(int(z), int(t))
            self.baseline[index] = data[index]
