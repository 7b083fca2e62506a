"""Helpers for the widget tests: user-like clicks and navigation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _MouseEvent:
    """What napari's mouse callbacks read from a vispy mouse event."""

    type: str
    position: tuple
    dims_displayed: list
    is_dragging: bool = False
    modifiers: list = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    handled: bool = False


def click(viewer, layer, y: float, x: float) -> None:
    """Click at data position ``(y, x)`` of the slice shown, through napari's mouse callbacks.

    The layer must be the active layer in an input mode ("add" for points):
    this is the code path a real click on the canvas takes.
    """
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    world = np.array(viewer.dims.point, dtype=float)
    offset = len(world) - layer.ndim
    world[offset + layer.ndim - 2] = layer.translate[-2] + y * layer.scale[-2]
    world[offset + layer.ndim - 1] = layer.translate[-1] + x * layer.scale[-1]
    displayed = list(viewer.dims.displayed)
    for kind, callbacks in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        event = ReadOnlyWrapper(_MouseEvent(kind, tuple(world), displayed), exceptions=("handled",))
        callbacks(layer, event)


def show_slice(viewer, image_layer, z: int, t: int = 0) -> None:
    """Move the viewer to slice ``z`` of frame ``t`` of ``image_layer`` (T, Z, Y, X)."""
    viewer.dims.set_point(0, image_layer.translate[0] + t * image_layer.scale[0])
    viewer.dims.set_point(1, image_layer.translate[1] + z * image_layer.scale[1])


def lv_centre(labels_layer, z: int, t: int, label: int = 3) -> tuple[int, int]:
    """``(y, x)`` of the pixel deepest inside ``label`` on slice ``z`` of frame ``t`` (a sure target click)."""
    from scipy import ndimage as ndi

    mask = np.asarray(labels_layer.data[t, z]) == label
    depth = ndi.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(y), int(x)
