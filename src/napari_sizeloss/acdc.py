"""Cardiac cohorts for the paper's protocol: ACDC-layout folders and phantom cohorts.

The ACDC challenge's training set (and any folder laid out the same way) is::

    ROOT/patient001/Info.cfg                      # "ED: 1", "ES: 12", "Group: DCM", ...
    ROOT/patient001/patient001_frame01.nii.gz     # ED image, (X, Y, Z)
    ROOT/patient001/patient001_frame01_gt.nii.gz  # ED labels: 0 bg, 1 RV, 2 myo, 3 LV cavity
    ROOT/patient001/patient001_frame12.nii.gz     # ES image
    ROOT/patient001/patient001_frame12_gt.nii.gz  # ES labels

(``ROOT`` may also be the folder that holds ``training/``.) Each patient gives
two *frame volumes*, ED and ES. Splits are by patient, never by frame.

Bringing slices to the network's grid
-------------------------------------
Every slice ``(X, Y)`` is resampled to a square ``size x size`` network grid
in one of two ways (:class:`SliceGeometry`):

``"resize"`` (default, as the paper)
    stretch the slice to ``size x size`` (bilinear); the aspect ratio and the
    field of view are kept, the pixel size changes per volume. A network pixel
    covers ``(sx * X / size) * (sy * Y / size)`` mm^2.
``"spacing"``
    resample to a fixed in-plane spacing (``target_spacing`` mm, isotropic),
    then centre crop or zero-pad to ``size x size``. Anatomy keeps its true
    shape and scale; a heart outside the central window would be cut.

In both cases the geometry records the network pixel area, so bounds given
in mm^2 (the project's :class:`SizeBounds`) convert to network pixels per
volume and mean the same anatomy everywhere. Label masks are resampled as a
bilinear coverage thresholded at 0.5. Predictions go back to the *native*
grid for scoring: the foreground probability map is un-cropped / un-padded
(probability 0 outside the window), resized bilinearly to ``(X, Y)`` and
thresholded at 0.5; Dice is computed there, against the untouched label
volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalisation_params, normalise
from .nifti import load_nifti

__all__ = [
    "ACDCError",
    "CardiacVolume",
    "PreparedVolume",
    "SliceGeometry",
    "LV_CAVITY",
    "read_info_cfg",
    "find_patients",
    "load_acdc_patient",
    "load_acdc",
    "phantom_cohort",
    "split_patients",
    "slice_geometry",
    "prepare_volume",
]

#: ACDC label of the left-ventricular cavity, the paper's target.
LV_CAVITY = 3

_PATIENT_DIR = re.compile(r"^patient\d+$")

ResampleMode = Literal["resize", "spacing"]


class ACDCError(ValueError):
    """An ACDC-layout folder cannot be used; the message names the file at fault."""


# ----------------------------------------------------------------- volumes
@dataclass
class CardiacVolume:
    """One frame volume of one subject, on its native grid.

    Attributes
    ----------
    subject : str
        Patient id (``"patient001"``, ``"phantom003"``).
    phase : str
        ``"ED"`` or ``"ES"``.
    frame : int
        Frame index as in the source (1-based in ACDC, 0-based for phantoms).
    image : np.ndarray
        float32 ``(X, Y, Z)``, raw intensities.
    labels : np.ndarray
        integer ``(X, Y, Z)``, ACDC label values.
    spacing : tuple of float
        ``(sx, sy, sz)`` in mm.
    """

    subject: str
    phase: str
    frame: int
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def name(self) -> str:
        """``"<subject>_<phase>"``, e.g. ``"patient001_ED"``."""
        return f"{self.subject}_{self.phase}"


def read_info_cfg(path: Path | str) -> dict[str, str]:
    """Key/value pairs of an ACDC ``Info.cfg`` (``"ED: 1"`` -> ``{"ED": "1"}``).

    Raises
    ------
    ACDCError
        The file is missing or unreadable.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ACDCError(f"cannot read {path}: {exc.strerror or exc}") from exc
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            info[key.strip()] = value.strip()
    return info


def _frame_index(info: dict[str, str], key: str, path: Path) -> int:
    if key not in info:
        raise ACDCError(f"{path} has no '{key}:' line")
    try:
        return int(float(info[key]))
    except ValueError as exc:
        raise ACDCError(f"{path}: '{key}: {info[key]}' is not a frame number") from exc


def find_patients(root: Path | str) -> list[Path]:
    """Patient folders (``patientNNN``) of an ACDC-layout root, sorted by name.

    ``root`` may hold the patient folders directly or a ``training/`` folder
    that does.

    Raises
    ------
    ACDCError
        ``root`` is not a folder or holds no patient folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ACDCError(f"{root} is not a folder")
    for base in (root, root / "training"):
        if base.is_dir():
            found = sorted(p for p in base.iterdir() if p.is_dir() and _PATIENT_DIR.match(p.name))
            if found:
                return found
    raise ACDCError(f"{root} holds no patientNNN folder (expected the ACDC training layout)")


def _frame_file(patient_dir: Path, frame: int, suffix: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        path = patient_dir / f"{patient_dir.name}_frame{frame:02d}{suffix}{ext}"
        if path.is_file():
            return path
    raise ACDCError(f"missing {patient_dir / f'{patient_dir.name}_frame{frame:02d}{suffix}.nii.gz'}")


def load_acdc_patient(patient_dir: Path | str) -> list[CardiacVolume]:
    """The ED and ES frame volumes of one ACDC patient folder.

    Raises
    ------
    ACDCError
        Missing ``Info.cfg`` line or frame file, or an image whose shape
        differs from its ``_gt`` labels.
    NiftiError
        An unreadable NIfTI file.
    """
    patient_dir = Path(patient_dir)
    cfg = patient_dir / "Info.cfg"
    info = read_info_cfg(cfg)
    volumes = []
    for phase in ("ED", "ES"):
        frame = _frame_index(info, phase, cfg)
        image_path = _frame_file(patient_dir, frame, "")
        gt_path = _frame_file(patient_dir, frame, "_gt")
        image = load_nifti(image_path)
        gt = load_nifti(gt_path, dtype=None)
        if image.ndim != 3:
            raise ACDCError(f"{image_path} has shape {image.data.shape}; expected a 3D (X, Y, Z) frame")
        if gt.data.shape != image.data.shape:
            raise ACDCError(f"{gt_path} has shape {gt.data.shape}, its image {image.data.shape}")
        labels = np.rint(np.asarray(gt.data)).astype(np.int16)
        volumes.append(
            CardiacVolume(
                subject=patient_dir.name,
                phase=phase,
                frame=frame,
                image=np.asarray(image.data, dtype=np.float32),
                labels=labels,
                spacing=tuple(float(s) for s in image.spacing),  # type: ignore[arg-type]
            )
        )
    return volumes


def load_acdc(root: Path | str, subjects: Sequence[str] | None = None) -> dict[str, list[CardiacVolume]]:
    """All (or the named) patients of an ACDC-layout folder.

    Returns
    -------
    dict
        ``{patient id: [ED volume, ES volume]}`` in patient order.
    """
    dirs = find_patients(root)
    if subjects is not None:
        wanted = set(subjects)
        dirs = [d for d in dirs if d.name in wanted]
    return {d.name: load_acdc_patient(d) for d in dirs}


def phantom_cohort(
    n: int, seed: int = 0, shape: tuple[int, int, int, int] = (96, 84, 8, 10)
) -> dict[str, list[CardiacVolume]]:
    """A cohort of synthetic subjects in the same form as :func:`load_acdc`.

    Subject ``i`` is ``napari_sizeloss.phantom.make_cohort``'s subject ``i``;
    its ED and ES frames become the two frame volumes.

    Parameters
    ----------
    n : int
        Number of subjects.
    seed : int
        Seed of the first subject.
    shape : tuple of int
        Phantom ``(X, Y, Z, T)``.
    """
    from .phantom import make_cohort

    cohort = {}
    for i, ph in enumerate(make_cohort(n, seed=seed, shape=shape)):
        subject = f"phantom{i:03d}"
        cohort[subject] = [
            CardiacVolume(
                subject=subject,
                phase=phase,
                frame=int(frame),
                image=np.ascontiguousarray(ph.image[..., frame], dtype=np.float32),
                labels=np.ascontiguousarray(ph.labels[..., frame]).astype(np.int16),
                spacing=tuple(float(s) for s in ph.spacing),  # type: ignore[arg-type]
            )
            for phase, frame in (("ED", ph.ed_frame), ("ES", ph.es_frame))
        ]
    return cohort


def split_patients(subjects: Sequence[str], val_count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split subjects (never frames) into training and validation.

    Parameters
    ----------
    subjects : sequence of str
        Patient ids.
    val_count : int
        Number of validation patients, ``1 <= val_count < len(subjects)``.
    seed : int
        The same seed and subjects give the same split.

    Returns
    -------
    train, val : list of str
        Disjoint, each in the input order.
    """
    subjects = list(subjects)
    if len(set(subjects)) != len(subjects):
        raise ValueError("patient ids must be unique")
    if not 1 <= val_count < len(subjects):
        raise ValueError(
            f"--val-patients must be between 1 and {len(subjects) - 1} for {len(subjects)} patients; got {val_count}"
        )
    order = np.random.default_rng(seed).permutation(len(subjects))
    val_set = {subjects[i] for i in order[:val_count]}
    return [s for s in subjects if s not in val_set], [s for s in subjects if s in val_set]


# ------------------------------------------------------------- slice grid
@dataclass(frozen=True)
class SliceGeometry:
    """How one volume's ``(X, Y)`` slices map onto the ``size x size`` network grid.

    A slice is resized to ``resized = (RX, RY)`` (bilinear), then centre
    cropped or zero-padded to ``(size, size)``: ``offset = (ox, oy)`` is the
    position of the resized slice's origin in the network grid (negative:
    cropped).

    Attributes
    ----------
    native : tuple of int
        ``(X, Y)``.
    resized : tuple of int
        ``(RX, RY)``.
    size : int
        Network grid side.
    offset : tuple of int
        ``(ox, oy)``.
    pixel_spacing : tuple of float
        Network pixel size ``(mm, mm)``.
    """

    native: tuple[int, int]
    resized: tuple[int, int]
    size: int
    offset: tuple[int, int]
    pixel_spacing: tuple[float, float]

    @property
    def pixel_area_mm2(self) -> float:
        """Area of one network pixel in mm^2."""
        return float(self.pixel_spacing[0] * self.pixel_spacing[1])

    def _window(self, axis: int) -> tuple[slice, slice]:
        """(source slice in the resized axis, destination slice in the network axis)."""
        o, n, s = self.offset[axis], self.resized[axis], self.size
        lo, hi = max(0, o), min(s, o + n)
        return slice(lo - o, hi - o), slice(lo, hi)

    def to_network(self, slices: np.ndarray, *, labels: bool = False) -> np.ndarray:
        """Resample native slices onto the network grid.

        Parameters
        ----------
        slices : np.ndarray
            ``(X, Y)`` or ``(N, X, Y)``; float intensities, or a 0/1 mask when
            ``labels`` (resampled as bilinear coverage > 0.5).

        Returns
        -------
        np.ndarray
            ``(size, size)`` or ``(N, size, size)``: float32, or bool when
            ``labels``. Padding is 0 (False).
        """
        single = slices.ndim == 2
        stack = slices[None] if single else slices
        if tuple(stack.shape[1:]) != self.native:
            raise ValueError(f"slices of shape {tuple(stack.shape[1:])}, geometry expects {self.native}")
        t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
        if self.resized != self.native:
            t = F.interpolate(t, size=self.resized, mode="bilinear", align_corners=False, antialias=True)
        out = torch.zeros((t.shape[0], 1, self.size, self.size), dtype=torch.float32)
        (sx, dx), (sy, dy) = self._window(0), self._window(1)
        out[:, :, dx, dy] = t[:, :, sx, sy]
        arr = out[:, 0].numpy()
        if labels:
            arr = arr > 0.5
        return arr[0] if single else arr

    def to_native(self, probs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Bring network-grid probabilities back to the native grid.

        Parameters
        ----------
        probs : array or tensor
            ``(size, size)`` or ``(N, size, size)`` target probabilities.

        Returns
        -------
        np.ndarray
            float32 ``(X, Y)`` or ``(N, X, Y)``; 0 where the native slice fell
            outside the network window. Threshold at 0.5 for a mask.
        """
        t = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
        single = t.ndim == 2
        if single:
            t = t[None]
        if tuple(t.shape[1:]) != (self.size, self.size):
            raise ValueError(f"probabilities of shape {tuple(t.shape[1:])}, expected {(self.size, self.size)}")
        resized = torch.zeros((t.shape[0], 1, *self.resized), dtype=torch.float32)
        (sx, dx), (sy, dy) = self._window(0), self._window(1)
        resized[:, 0, sx, sy] = t[:, dx, dy]
        if self.resized != self.native:
            resized = F.interpolate(resized, size=self.native, mode="bilinear", align_corners=False, antialias=True)
        arr = resized[:, 0].numpy()
        return arr[0] if single else arr


def slice_geometry(
    native: tuple[int, int],
    spacing: tuple[float, float],
    size: int = 256,
    mode: ResampleMode = "resize",
    target_spacing: float | None = None,
) -> SliceGeometry:
    """Geometry that maps ``native`` slices of the given spacing to ``size x size``.

    Parameters
    ----------
    native : (X, Y)
        Native slice shape.
    spacing : (sx, sy)
        Native in-plane pixel size in mm.
    size : int
        Network grid side.
    mode : {"resize", "spacing"}
        See the module docstring.
    target_spacing : float, optional
        Network pixel size in mm for ``"spacing"`` mode (required there).
    """
    X, Y = (int(n) for n in native)
    sx, sy = (float(s) for s in spacing[:2])
    if size < 8:
        raise ValueError(f"network size must be >= 8; got {size}")
    if mode == "resize":
        return SliceGeometry((X, Y), (size, size), size, (0, 0), (sx * X / size, sy * Y / size))
    if mode == "spacing":
        if target_spacing is None or not target_spacing > 0:
            raise ValueError(f"'spacing' mode needs a positive target spacing in mm; got {target_spacing}")
        rx = max(1, int(round(X * sx / target_spacing)))
        ry = max(1, int(round(Y * sy / target_spacing)))
        offset = ((size - rx) // 2, (size - ry) // 2)
        return SliceGeometry((X, Y), (rx, ry), size, offset, (sx * X / rx, sy * Y / ry))
    raise ValueError(f"unknown resampling mode {mode!r}; expected 'resize' or 'spacing'")


@dataclass
class PreparedVolume:
    """A frame volume on the network grid, plus what scoring needs on the native grid.

    Attributes
    ----------
    name : str
        ``"<subject>_<phase>"``.
    subject : str
        Patient id.
    images : np.ndarray
        float32 ``(Z, size, size)``, intensities normalised per volume.
    target : np.ndarray
        bool ``(Z, size, size)``: the target label on the network grid.
    native_target : np.ndarray
        bool ``(X, Y, Z)``: the target label on the native grid (for Dice).
    geometry : SliceGeometry
        Shared by all slices of the volume.
    spacing : tuple of float
        Native ``(sx, sy, sz)`` in mm.
    """

    name: str
    subject: str
    images: np.ndarray
    target: np.ndarray
    native_target: np.ndarray
    geometry: SliceGeometry
    spacing: tuple[float, float, float]

    @property
    def present(self) -> np.ndarray:
        """bool ``(Z,)``: slices whose target is non-empty on the native grid (the image tags)."""
        return self.native_target.any(axis=(0, 1))

    def native_mask(self, probs: np.ndarray | torch.Tensor) -> np.ndarray:
        """bool ``(X, Y, Z)`` mask from network-grid probabilities ``(Z, size, size)``."""
        native = self.geometry.to_native(probs)  # (Z, X, Y)
        return np.moveaxis(native > 0.5, 0, -1)


def prepare_volume(
    volume: CardiacVolume,
    label: int = LV_CAVITY,
    size: int = 256,
    mode: ResampleMode = "resize",
    target_spacing: float | None = None,
) -> PreparedVolume:
    """Normalise a frame volume and bring its slices to the network grid.

    Parameters
    ----------
    volume : CardiacVolume
        Native frame volume.
    label : int
        Target label value (3, LV cavity, by default).
    size, mode, target_spacing
        See :func:`slice_geometry`.
    """
    geometry = slice_geometry(volume.image.shape[:2], volume.spacing[:2], size, mode, target_spacing)
    image = normalise(volume.image, normalisation_params(volume.image))
    native_target = np.asarray(volume.labels) == label
    slices = np.moveaxis(image, -1, 0)  # (Z, X, Y)
    target_slices = np.moveaxis(native_target, -1, 0)
    return PreparedVolume(
        name=volume.name,
        subject=volume.subject,
        images=geometry.to_network(slices),
        target=geometry.to_network(target_slices.astype(np.float32), labels=True),
        native_target=native_target,
        geometry=geometry,
        spacing=volume.spacing,
    )
