"""Checkpoints: round trip, atomic writes, and refusal of everything that is not our safe format."""

import os
import shlex
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sizeloss.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from napari_sizeloss.network import ENet


def _train_steps(model, optimizer, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.rand(2, 1, 24, 20, generator=gen)
        y = torch.randint(0, model.config["num_classes"], (2, 24, 20), generator=gen)
        torch.manual_seed(seed)  # same dropout masks for twin models
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = ENet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train_steps(model, optimizer, 2)
    return model, optimizer


def _saved(tmp_path, model=None, **kwargs) -> Path:
    return save_checkpoint(tmp_path / "model.ckpt", model if model is not None else ENet(), **kwargs)


def _rewrite(path: Path, edit) -> None:
    """Load a checkpoint's raw dict (safely), apply ``edit`` and save it again with torch."""
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


# ------------------------------------------------------------------ round trip
def test_round_trip_restores_outputs_and_optimizer(tmp_path, trained):
    model, optimizer = trained
    path = save_checkpoint(
        tmp_path / "model.ckpt",
        model,
        optimizer=optimizer,
        normalisation={"low": np.float32(12.5), "high": 880},
        bounds={"lower": 100.0, "upper": float("inf"), "unit": "px", "per_slice": np.array([1.5, 2.0])},
        metadata={"roi": (3, 40, 5, 50), "steps": np.int64(2), "note": None, "config": {"lr": 1e-3, "augment": True}},
    )
    assert path == tmp_path / "model.ckpt"
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == model.config
    assert ckpt.normalisation == {"low": 12.5, "high": 880.0}
    assert ckpt.bounds == {"lower": 100.0, "upper": float("inf"), "unit": "px", "per_slice": [1.5, 2.0]}
    assert ckpt.metadata == {"roi": [3, 40, 5, 50], "steps": 2, "note": None, "config": {"lr": 1e-3, "augment": True}}
    assert type(ckpt.metadata["steps"]) is int

    restored = build_model(ckpt)
    assert not restored.training
    model.eval()
    x = torch.rand(3, 1, 37, 53)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))

    # Adam: same step counts and moments; one more identical step keeps the twins equal
    opt2 = torch.optim.Adam(restored.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.optimizer_state)
    steps = [float(s["step"]) for s in opt2.state_dict()["state"].values()]
    assert len(steps) == len(list(model.parameters())) and set(steps) == {2.0}
    for a, b in zip(optimizer.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    _train_steps(model, optimizer, 1, seed=5)
    _train_steps(restored, opt2, 1, seed=5)
    for p, q in zip(model.parameters(), restored.parameters()):
        assert torch.equal(p, q)


def test_file_is_plain_torch_loadable_with_weights_only(tmp_path, trained):
    model, optimizer = trained
    path = _saved(tmp_path, model, optimizer=optimizer)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT == "napari-sizeloss-checkpoint"
    assert raw["version"] == FORMAT_VERSION == 1
    assert raw["model"] == {"name": "ENet", "config": model.config}
    assert set(raw["state_dict"]) == set(model.state_dict())


def test_other_architectures_round_trip(tmp_path):
    model = ENet(in_channels=3, num_classes=4, dropout=0.2)
    ckpt = load_checkpoint(_saved(tmp_path, model))
    rebuilt = build_model(ckpt)
    assert rebuilt.config == model.config
    assert ckpt.optimizer_state is None and ckpt.normalisation is None and ckpt.bounds is None
    assert ckpt.metadata == {}


def test_channels_last_model_is_stored_in_the_standard_layout(tmp_path):
    model = ENet().to(memory_format=torch.channels_last).eval()
    ckpt = load_checkpoint(_saved(tmp_path, model))
    assert all(t.is_contiguous() for t in ckpt.state_dict.values())
    x = torch.rand(1, 1, 16, 24)
    with torch.no_grad():
        assert torch.allclose(build_model(ckpt)(x), model(x), atol=1e-6)


# ------------------------------------------------------------------ safe and atomic writing
def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_replaces_the_file(tmp_path):
    first = ENet(num_classes=2)
    second = ENet(num_classes=3)
    path = _saved(tmp_path, first)
    _saved(tmp_path, second)
    assert load_checkpoint(path).model_config["num_classes"] == 3
    assert _listing(tmp_path) == ["model.ckpt"]


def test_new_file_gets_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="it is a directory"):
        save_checkpoint(tmp_path, ENet())
    assert _listing(tmp_path) == []


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "model.ckpt", ENet())
    assert _listing(tmp_path) == []


def test_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "file" / "model.ckpt", ENet())


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    """Simulated (tests may run as root, who may write anywhere)."""

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(CheckpointError, match=r"model.ckpt: permission denied"):
        _saved(tmp_path)
    monkeypatch.undo()
    assert _listing(tmp_path) == []


def test_failure_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(path, ENet(num_classes=3))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["model.ckpt"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metadata": {"model": ENet}}, r"metadata\['model'\] holds a type"),
        ({"metadata": {"t": torch.ones(2)}}, r"metadata\['t'\] holds a Tensor"),
        ({"metadata": {1: "x"}}, "non-string key"),
        ({"bounds": ["not", "a", "dict"]}, "bounds must be a dict"),
        ({"normalisation": {"low": "zero"}}, "normalisation must map names to numbers"),
        ({"normalisation": {"low": float("nan")}}, "must be finite"),
    ],
)
def test_values_that_cannot_be_stored_safely_are_refused(tmp_path, kwargs, match):
    with pytest.raises(CheckpointError, match=match):
        _saved(tmp_path, **kwargs)
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------ refusing files
class _Hostile:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickle_is_refused_without_running(tmp_path, legacy):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "evil": _Hostile(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert "is not a napari-sizeloss checkpoint" in message and "disallowed objects" in message
    assert not marker.exists()

    # control: the file really is hostile (an unsafe load runs the payload)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_hostile_plain_pickle_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(_Hostile(marker)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="is not a napari-sizeloss checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()
    assert [str(w.message) for w in caught] == []  # the refusal is the only thing the user sees


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*absent.ckpt: file not found"):
        load_checkpoint(tmp_path / "absent.ckpt")


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="it is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("cut", [0, 100, 0.5, -30])
def test_truncated_file_is_refused(tmp_path, cut):
    path = _saved(tmp_path)
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="is not a napari-sizeloss checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="is not a napari-sizeloss checkpoint"):
        load_checkpoint(path)
    path.write_text("a text file\n")
    with pytest.raises(CheckpointError, match="is not a napari-sizeloss checkpoint"):
        load_checkpoint(path)


def test_corrupt_weights_are_detected(tmp_path):
    """Flipped bytes inside a tensor record still unzip; the checksum catches them."""
    path = _saved(tmp_path)
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
    data = bytearray(path.read_bytes())
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    start = header + 30 + name_len + extra_len + info.file_size // 2
    data[start : start + 16] = bytes(255 - b for b in data[start : start + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: its weights do not match their checksum"):
        load_checkpoint(path)


def test_bare_state_dict_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(ENet().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"is not a napari-sizeloss checkpoint \(a bare state_dict\)"):
        load_checkpoint(path)


def test_other_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"epoch": 3, "format": "somebody-else"}, path)
    with pytest.raises(CheckpointError, match="no napari-sizeloss format tag"):
        load_checkpoint(path)


@pytest.mark.parametrize("version, match", [(2, "version 2 .written by a newer"), (0, "version 0"), ("1", "version '1'")])
def test_other_format_version_is_refused(tmp_path, version, match):
    path = _saved(tmp_path)
    _rewrite(path, lambda raw: raw.__setitem__("version", version))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_unknown_config_keys_are_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda raw: raw["model"]["config"].update(width=2, depth=5))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) 'depth', 'width'"):
        load_checkpoint(path)


def test_config_with_wrong_types_is_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda raw: raw["model"]["config"].update(num_classes="2"))
    with pytest.raises(CheckpointError, match="num_classes must be an integer"):
        load_checkpoint(path)


def test_unknown_model_name_is_refused(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, lambda raw: raw["model"].update(name="UNet"))
    with pytest.raises(CheckpointError, match="known model"):
        load_checkpoint(path)


# ------------------------------------------------------------------ build_model
def test_weights_for_other_classes_than_the_config_says(tmp_path):
    path = _saved(tmp_path, ENet(num_classes=3))
    _rewrite(path, lambda raw: raw["model"]["config"].update(num_classes=2))
    ckpt = load_checkpoint(path)  # readable ...
    with pytest.raises(CheckpointError, match=r"model.ckpt is for a model with 3 classes, but its config says 2"):
        build_model(ckpt)  # ... but does not fit its own config


def test_weights_for_other_input_channels():
    ckpt = Checkpoint(model_config=ENet().config, state_dict=ENet(in_channels=3).state_dict(), source="x.ckpt")
    with pytest.raises(CheckpointError, match="is for a model with 3 input channel"):
        build_model(ckpt)


def test_missing_and_unexpected_weights():
    state = ENet().state_dict()
    state.pop("stage2.0.out_act.weight")
    state["extra.weight"] = torch.ones(1)
    ckpt = Checkpoint(model_config=ENet().config, state_dict=state, source="x.ckpt")
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) missing .*'stage2.0.out_act.weight'.*1 unexpected"):
        build_model(ckpt)


def test_wrong_shape_elsewhere():
    state = ENet().state_dict()
    state["stage1.0.out_act.weight"] = torch.ones(3)
    ckpt = Checkpoint(model_config=ENet().config, state_dict=state, source="x.ckpt")
    with pytest.raises(CheckpointError, match=r"'stage1.0.out_act.weight' has shape \(3,\), the model needs \(64,\)"):
        build_model(ckpt)


def test_invalid_config_values():
    ckpt = Checkpoint(model_config={"num_classes": 0}, state_dict={}, source="x.ckpt")
    with pytest.raises(CheckpointError, match="invalid model config"):
        build_model(ckpt)
