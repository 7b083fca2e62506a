"""napari-sizeloss: weakly supervised segmentation of cine MR with size constraints.

A Qt-free core (network, losses, bounds, weak labels, phantom, NIfTI I/O,
trainer) and a thin napari plugin over it. Importing this package is cheap:
the names below load their (torch-based) modules on first use::

    from napari_sizeloss import SizeBounds, TrainingSession, size_penalty
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ENet": "network",
    "partial_cross_entropy": "losses",
    "size_penalty": "losses",
    "log_barrier_penalty": "losses",
    "volume_size_penalty": "losses",
    "SizeBounds": "bounds",
    "BoundsError": "bounds",
    "bounds_from_annotation": "bounds",
    "widen_to_admit": "bounds",
    "keep_connected": "connectivity",
    "dice_2d": "metrics",
    "dice_3d": "metrics",
    "erosion_weak_labels": "weak_labels",
    "click_seeds": "weak_labels",
    "make_cine_phantom": "phantom",
    "load_nifti": "nifti",
    "save_mask": "nifti",
    "TrainConfig": "trainer",
    "TrainingSession": "trainer",
    "Predictor": "trainer",
    "train": "trainer",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sizeloss' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
