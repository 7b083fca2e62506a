"""napari-sizeloss: weakly supervised segmentation of cine MR with size constraints.

A Qt-free core (network, losses, bounds, weak labels, phantom, NIfTI I/O,
trainer) and a thin napari plugin over it. Importing this package is cheap: the
torch-based modules load on first use.
"""

__version__ = "0.1.0"
