"""Entry point of the "Size-constrained segmentation" dock widget (see ``napari.yaml``).

napari builds the widget from the class named in the manifest and passes the
viewer as ``napari_viewer``. npe2 imports this module only when the widget is
opened, and nothing it imports pulls in torch: torch is imported when a model
is first trained, loaded or used (in a worker thread), so neither napari's
start-up nor opening the widget waits for it.
"""

from __future__ import annotations

from ._qt.widget import SizeLossWidget

__all__ = ["SizeLossWidget"]
