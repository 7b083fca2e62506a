"""Fixtures for the widget tests: a viewer with a small phantom and the widget opened through the manifest.

Run with ``xvfb-run -a python -m pytest tests/_qt -q`` (napari needs an X
server for its OpenGL canvas).
"""

from __future__ import annotations

import pytest

from napari_sizeloss._qt import autosave
from napari_sizeloss._sample_data import cine_phantom_layers

#: Small enough that a training step takes a few tens of ms on one CPU thread.
SMALL_SHAPE = (64, 56, 4, 3)
PLUGIN = "napari-sizeloss"
WIDGET = "Size-constrained segmentation"


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    """Autosaves of in-memory images go to a temporary folder, never to the user's."""
    folder = tmp_path / "userdata"
    monkeypatch.setenv(autosave.DATA_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def small_phantom():
    """Layer data of a (64, 56, 4, 3) phantom: [image, ground truth], napari order (T, Z, Y, X)."""
    return cine_phantom_layers(shape=SMALL_SHAPE, seed=0)


def add_layers(viewer, layer_data):
    """Add layer-data tuples as napari's reader / sample loader would."""
    added = []
    for data, kwargs, layer_type in layer_data:
        added.append(getattr(viewer, f"add_{layer_type}")(data.copy(), **kwargs))
    return added


@pytest.fixture
def viewer(make_napari_viewer, small_phantom):
    v = make_napari_viewer()
    add_layers(v, small_phantom)
    return v


def open_widget(viewer):
    """Open the dock widget the way the Plugins menu does (through the manifest)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


@pytest.fixture
def widget(viewer, qtbot):
    return open_widget(viewer)
