"""napari sample data: the synthetic cine MR phantom and its ground truth.

Layers are in napari order ``(T, Z, Y, X)`` with scale ``(dt, dz, dy, dx)``
(ms, mm) and carry the phantom's oblique affine and NIfTI header in their
metadata, exactly as if the phantom had been written to NIfTI and opened with
this plugin's reader (so the writer puts masks on the phantom's grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._reader import LayerData, layer_data_from_volume
from .nifti import NiftiVolume
from .phantom import DEFAULT_SHAPE, LABEL_LV_CAVITY, LABEL_MYOCARDIUM, LABEL_RV, make_cine_phantom

#: Names of the ground-truth label values (ACDC convention).
LABEL_NAMES = {LABEL_RV: "RV cavity", LABEL_MYOCARDIUM: "LV myocardium", LABEL_LV_CAVITY: "LV cavity"}


def cine_phantom_layers(
    shape: tuple[int, int, int, int] = DEFAULT_SHAPE, seed: int = 0, name: str = "cine phantom"
) -> list[LayerData]:
    """The phantom image and its ground truth as napari layer data.

    Parameters
    ----------
    shape : tuple of int
        ``(X, Y, Z, T)`` of the phantom (see
        :func:`napari_sizeloss.phantom.make_cine_phantom`).
    seed : int
        Subject seed.
    name : str
        Image layer name; the labels layer is ``f"{name} ground truth"``.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``[image, labels]``: float32 and uint8 ``(T, Z, Y, X)``. The labels
        layer's metadata also has ``label_names`` and ``target_label``
        (the LV cavity, 3), which the widget's bound estimate starts from.
    """
    phantom = make_cine_phantom(shape, seed=seed)
    image_nii, labels_nii = phantom.to_nifti()
    layers = []
    for data, nii, layer_name, layer_type in (
        (phantom.image, image_nii, name, "image"),
        (phantom.labels, labels_nii, f"{name} ground truth", "labels"),
    ):
        volume = NiftiVolume(data=data, affine=np.array(phantom.affine), header=nii.header.copy(), path=None)
        layers.append(layer_data_from_volume(volume, name=layer_name, layer_type=layer_type))
    labels_kwargs: dict[str, Any] = layers[1][1]
    labels_kwargs["metadata"]["label_names"] = dict(LABEL_NAMES)
    labels_kwargs["metadata"]["target_label"] = LABEL_LV_CAVITY
    labels_kwargs["opacity"] = 0.4
    labels_kwargs["visible"] = False
    return layers


def make_cine_phantom_sample() -> list[LayerData]:
    """npe2 sample-data hook ``cine_phantom``: the default-shape phantom (seed 0) and its ground truth."""
    return cine_phantom_layers()
