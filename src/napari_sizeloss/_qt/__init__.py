"""Qt and napari widget code of napari-sizeloss (the core never imports this package).

Modules: ``widget`` (the dock widget that ties the panels together),
``layers`` (the image's geometry and its seeds / prediction layers),
``seeds``, ``bounds_panel``, ``tags``, ``settings``, ``loss_plot``,
``size_table``, ``autosave`` and ``jobs`` (the generators run in napari thread
workers). None of them imports torch at import time.
"""
