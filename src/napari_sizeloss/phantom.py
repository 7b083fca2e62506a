"""A synthetic short-axis cine MR phantom: the project's embedded default data.

``make_cine_phantom`` renders a beating heart in a stack of oblique
short-axis slices, with the look of a balanced SSFP cine (bright blood, dark-grey
myocardium, bright fat, dark lungs) and ACDC-style labels:

====  ==============================================================
0     background (everything else, RV free wall included)
1     right-ventricle (RV) cavity
2     left-ventricle (LV) myocardium
3     LV cavity, papillary muscles included (as ACDC labels them)
====  ==============================================================

Arrays are ``(X, Y, Z, T)``: voxel ``i, j, k`` of the affine and frame ``t``.
Slice ``z = 0`` is the base, ``z = Z - 1`` the apex; frame ``ed_frame = 0`` is
end-diastole and ``es_frame`` (about ``0.35 * T``) end-systole.

How it is made, in physical units (mm) so that any shape gives the same
anatomy:

* The LV cavity is half an ellipsoid along the long axis (widest at the base),
  the epicardium a wider one; myocardial area is conserved per slice, so the
  wall thickens as the cavity shrinks. Contraction is radial and longitudinal
  and follows a smooth periodic curve (zero at ED, one at ES).
* The RV cavity is an ellipse beside the LV minus the LV epicardium: a
  crescent, smaller toward the apex and absent in apical slices.
* One to three papillary muscles are small dark discs inside the LV cavity.
* Static anatomy: body ellipse with a subcutaneous fat layer and a chest-wall
  muscle layer, two lungs, a liver that enters the apical slices, spine and
  descending aorta; pericardial fat and a thin RV free wall.
* Partial volume: every structure has a signed distance; its voxel coverage is
  a linear ramp one pixel wide across the edge (wider where the structure
  changes within the slice thickness), before noise.
* A smooth multiplicative bias field (coil sensitivity) and Rician noise
  (magnitude of a complex Gaussian).
* A double-oblique affine with the given anisotropic spacing and a non-zero
  origin.

Every size, position, intensity, angle and timing is drawn per ``seed``, so a
cohort of seeds differs like a cohort of subjects. Only numpy is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABEL_BACKGROUND = 0
LABEL_RV = 1
LABEL_MYOCARDIUM = 2
LABEL_LV_CAVITY = 3

DEFAULT_SHAPE = (192, 168, 10, 20)
#: Field of view (mm) along X and Y, and the long-axis coverage of the slice
#: stack (mm): with the default shape the spacing is (1.5625, 1.5625, 8.0).
FIELD_OF_VIEW_MM = (300.0, 262.5, 80.0)

_FAR = np.float32(1e6)  # signed distance of an absent structure (mm)


@dataclass
class CinePhantom:
    """One synthetic subject: a cine short-axis stack and its labels.

    Attributes
    ----------
    image : np.ndarray
        float32 ``(X, Y, Z, T)``, arbitrary MR units (blood about 300-700).
    labels : np.ndarray
        uint8 ``(X, Y, Z, T)``: 0 background, 1 RV cavity, 2 LV myocardium,
        3 LV cavity (papillary muscles included).
    affine : np.ndarray
        float64 ``(4, 4)`` voxel-to-scanner (mm); its first three column norms
        are ``spacing``.
    spacing : tuple of float
        ``(sx, sy, sz)`` in mm.
    frame_time_ms : float
        Time between frames (ms).
    ed_frame, es_frame : int
        End-diastolic and end-systolic frame indices.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    frame_time_ms: float
    ed_frame: int
    es_frame: int

    def to_nifti(self):
        """The image and the labels as NIfTI-1 images.

        Returns
        -------
        image, labels : nibabel.Nifti1Image
            float32 and uint8 ``(X, Y, Z, T)`` with the phantom's affine as
            both qform and sform (code 1, scanner), units mm and ms, and zooms
            ``(sx, sy, sz, frame_time_ms)``.
        """
        import nibabel as nib

        zooms = (*(float(s) for s in self.spacing), float(self.frame_time_ms))
        out = []
        for data, dtype in ((self.image, np.float32), (self.labels, np.uint8)):
            img = nib.Nifti1Image(np.asarray(data, dtype=dtype), self.affine)
            img.header.set_data_dtype(dtype)
            img.header.set_xyzt_units("mm", "msec")
            img.header.set_zooms(zooms[: data.ndim])
            img.set_qform(self.affine, code=1)
            img.set_sform(self.affine, code=1)
            out.append(img)
        return out[0], out[1]


# ---------------------------------------------------------------- parameters
@dataclass(frozen=True)
class _Subject:
    """Per-subject parameters (mm, radians, fractions of blood signal)."""

    # heart, in the in-plane frame centred on the image centre
    centre: tuple[float, float]
    tilt: tuple[float, float]  # in-plane shift of the LV axis per mm along it
    theta: float  # direction LV -> RV
    cavity_radius: float  # at the widest plane, ED
    cavity_aspect: float
    cavity_length: float  # widest plane to cavity apex, ED
    base_offset: float  # long-axis position of slice 0
    wall: float
    apex_wall: float
    radial_ratio: float  # ES / ED cavity radius
    long_ratio: float  # ES / ED cavity length
    obliteration_radius: float  # cavities narrower than this are not labelled
    rv_a: float  # RV ellipse semi-axis toward the LV
    rv_b: float
    rv_crescent: float  # crescent width as a fraction of rv_a
    rv_length_ratio: float
    rv_ratio: float  # ES / ED RV scale
    rv_wall: float
    fat: float
    motion: float  # in-plane heart translation at ES (mm)
    pm_angles: tuple[float, ...]
    pm_radii: tuple[float, ...]
    pm_gaps: tuple[float, ...]
    es_phase: float
    rr_ms: float
    # static anatomy
    anterior: float  # direction of the anterior chest wall
    body_axes: tuple[float, float]  # left-right, antero-posterior
    body_shift: tuple[float, float]  # posterior, rightward (from the heart)
    skin_fat: float
    chest_muscle: float
    lungs: tuple[tuple[float, ...], tuple[float, ...]]
    liver: tuple[float, ...]
    spine: tuple[float, float]
    aorta: tuple[float, float, float]
    # signal
    blood: float
    tissue: dict
    noise: float  # sigma / blood
    bias_strength: float
    bias_coeffs: tuple[float, ...]
    # geometry of the stack in the scanner
    angles: tuple[float, float, float]
    isocentre_offset: tuple[float, float, float]


def _draw_subject(rng: np.random.Generator) -> _Subject:
    """Draw one subject's parameters; the order of draws is fixed."""
    u = rng.uniform
    cavity_radius = u(21.0, 33.0)
    wall = u(6.5, 10.0)
    n_pm = int(rng.integers(1, 4))
    pm_angles = tuple(np.pi + s * u(0.6, 1.2) for s in (1.0, -1.0, 0.0)[:n_pm])
    pm_radii = tuple(u(3.5, 5.5) for _ in range(n_pm))
    pm_gaps = tuple(u(1.5, 2.5) for _ in range(n_pm))
    theta = 0.75 * np.pi + u(-0.35, 0.35)
    sign = rng.choice([-1.0, 1.0], size=2)
    return _Subject(
        centre=(u(-15.0, 15.0), u(-15.0, 15.0)),
        tilt=(u(-0.12, 0.12), u(-0.12, 0.12)),
        theta=theta,
        cavity_radius=cavity_radius,
        cavity_aspect=u(0.0, 0.08),
        cavity_length=u(72.0, 88.0),
        base_offset=u(1.0, 6.0),
        wall=wall,
        apex_wall=u(5.0, 8.0),
        radial_ratio=u(0.62, 0.78),
        long_ratio=u(0.82, 0.92),
        obliteration_radius=u(8.0, 9.5),
        rv_a=(cavity_radius + wall) * u(0.7, 0.95),
        rv_b=(cavity_radius + wall) * u(1.2, 1.5),
        rv_crescent=u(0.5, 0.75),
        rv_length_ratio=u(0.62, 0.8),
        rv_ratio=u(0.72, 0.82),
        rv_wall=u(2.5, 4.0),
        fat=u(1.5, 4.0),
        motion=u(0.0, 2.5),
        pm_angles=pm_angles,
        pm_radii=pm_radii,
        pm_gaps=pm_gaps,
        es_phase=u(0.32, 0.38),
        rr_ms=u(750.0, 1100.0),
        anterior=theta - u(1.0, 1.4),
        body_axes=(u(128.0, 148.0), u(92.0, 108.0)),
        body_shift=(u(10.0, 30.0), u(10.0, 30.0)),
        skin_fat=u(7.0, 16.0),
        chest_muscle=u(7.0, 12.0),
        lungs=(
            (u(50.0, 62.0), u(-15.0, 5.0), u(40.0, 52.0), u(62.0, 78.0)),
            (u(62.0, 78.0), u(-10.0, 10.0), u(40.0, 52.0), u(62.0, 78.0)),
        ),
        liver=(u(45.0, 60.0), u(130.0, 145.0), u(55.0, 70.0), u(85.0, 100.0), u(55.0, 70.0)),
        spine=(u(28.0, 38.0), u(13.0, 17.0)),
        aorta=(u(22.0, 30.0), u(12.0, 22.0), u(9.0, 12.5)),
        blood=u(300.0, 700.0),
        tissue={
            "myocardium": u(0.22, 0.32),
            "papillary": u(0.24, 0.34),
            "rv_blood": u(0.88, 1.0),
            "fat": u(0.75, 0.95),
            "muscle": u(0.2, 0.3),
            "mediastinum": u(0.32, 0.45),
            "lung": u(0.03, 0.08),
            "liver": u(0.3, 0.42),
            "spine": u(0.4, 0.55),
            "aorta": u(0.8, 0.95),
        },
        noise=1.0 / u(18.0, 35.0),
        bias_strength=u(0.15, 0.3),
        bias_coeffs=tuple(rng.normal(size=6)),
        angles=(sign[0] * u(20.0, 45.0), sign[1] * u(20.0, 45.0), u(-15.0, 15.0)),
        isocentre_offset=(u(-30.0, 30.0), u(-40.0, 0.0), u(-20.0, 40.0)),
    )


# ------------------------------------------------------------------ geometry
def _contraction(n_frames: int, es_frame: int) -> np.ndarray:
    """Contraction state per frame, float64 ``(T,)``: 0 at ED (frame 0), 1 at ES.

    Half-cosine systole from frame 0 to ``es_frame`` and half-cosine diastole
    back to frame ``T`` (= frame 0 of the next beat): smooth and periodic.
    """
    if n_frames < 2:
        return np.zeros(n_frames)
    phase = np.arange(n_frames) / n_frames
    p_es = es_frame / n_frames
    systole = 0.5 * (1.0 - np.cos(np.pi * phase / p_es))
    diastole = 0.5 * (1.0 + np.cos(np.pi * (phase - p_es) / (1.0 - p_es)))
    return np.where(phase <= p_es, systole, diastole)


def _half_ellipsoid(radius, length, position) -> np.ndarray:
    """Radius (mm) of a half ellipsoid of base ``radius`` and ``length`` at ``position`` (mm)."""
    frac = np.asarray(position) / np.maximum(length, 1e-6)
    return radius * np.sqrt(np.clip(1.0 - frac**2, 0.0, None))


def _lv_radii(sub: _Subject, position: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cavity and epicardial radii (mm), ``(Z, T)``, at long-axis ``position`` (Z,) and contraction ``c`` (T,).

    The myocardial cross-section of each slice is that of end-diastole, so the
    wall thickens as the cavity shrinks.
    """
    pos = position[:, None]
    radius = sub.cavity_radius * (1.0 - c * (1.0 - sub.radial_ratio))
    length = sub.cavity_length * (1.0 - c * (1.0 - sub.long_ratio))
    cavity = _half_ellipsoid(radius[None, :], length[None, :], pos)
    cavity_ed = _half_ellipsoid(sub.cavity_radius, sub.cavity_length, pos)
    epi_ed = _half_ellipsoid(sub.cavity_radius + sub.wall, sub.cavity_length + sub.apex_wall, pos)
    myocardium = np.clip(epi_ed**2 - cavity_ed**2, 0.0, None)
    return cavity, np.sqrt(cavity**2 + myocardium)


def _ellipse_distance(u, v, a, b) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to the ellipse ``(u/a)^2 + (v/b)^2 = 1``.

    ``(rho - 1) / |grad rho|`` with ``rho`` the ellipse radius: exact for a
    circle, first-order accurate near the boundary of an ellipse.
    """
    a = np.maximum(a, 1e-3)
    b = np.maximum(b, 1e-3)
    un = u / a
    vn = v / b
    rho2 = un * un + vn * vn
    grad2 = (un * un) / (a * a) + (vn * vn) / (b * b)
    k2 = np.maximum(grad2 / np.maximum(rho2, 1e-12), 1.0 / np.maximum(a, b) ** 2)
    return (np.sqrt(rho2) - 1.0) / np.sqrt(k2)


def _coverage(distance, width) -> np.ndarray:
    """Partial-volume coverage in [0, 1] of a voxel whose centre is ``distance`` mm from an edge."""
    return np.clip(0.5 - distance / width, 0.0, 1.0)


def _paint(image: np.ndarray, coverage: np.ndarray, value) -> np.ndarray:
    """Composite ``value`` over ``image`` with the given coverage (in place when shapes allow)."""
    image += coverage * (value - image)
    return image


def _direction(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles (degrees) about x, y and z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(sub: _Subject, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel-to-scanner affine: oblique rotation, ``spacing`` column norms, stack centred near the isocentre."""
    linear = _rotation(sub.angles) @ np.diag(spacing)
    centre_voxel = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(sub.isocentre_offset) - linear @ centre_voxel
    return affine


# ----------------------------------------------------------------- rendering
def _static_anatomy(sub: _Subject, u, v, position, spacing) -> np.ndarray:
    """Noise-free signal of everything but the heart, float32 ``(X, Y, Z)``, blood = 1.

    ``u`` ``(X, 1, 1)`` and ``v`` ``(1, Y, 1)`` are in-plane coordinates (mm)
    from the image centre, ``position`` ``(1, 1, Z)`` the long-axis position
    of each slice (mm).
    """
    t = sub.tissue
    width = np.float32(np.sqrt(spacing[0] * spacing[1]))
    heart = np.array(sub.centre)
    anterior = _direction(sub.anterior)
    right = np.array([-anterior[1], anterior[0]])
    if right @ _direction(sub.theta) < 0:  # the RV lies to the patient's right
        right = -right

    def local(centre):  # components along ``right`` and ``anterior`` (mm)
        du, dv = u - centre[0], v - centre[1]
        return du * right[0] + dv * right[1], du * anterior[0] + dv * anterior[1]

    body_centre = heart - anterior * sub.body_shift[0] + right * sub.body_shift[1]
    bu, bv = local(body_centre)
    d_body = _ellipse_distance(bu, bv, *sub.body_axes)
    image = np.zeros(np.broadcast_shapes(u.shape, v.shape, position.shape), dtype=np.float32)
    image = _paint(image, _coverage(d_body, width), t["fat"])
    d_muscle = d_body + sub.skin_fat
    image = _paint(image, _coverage(d_muscle, width), t["muscle"])
    inner = _coverage(d_muscle + sub.chest_muscle, width)
    image = _paint(image, inner, t["mediastinum"])

    for sign, (dist, back, half_lr, half_ap) in zip((-1.0, 1.0), sub.lungs):
        centre = heart + sign * right * dist - anterior * back
        lu, lv = local(centre)
        image = _paint(image, inner * _coverage(_ellipse_distance(lu, lv, half_lr, half_ap), width), t["lung"])

    # the liver lies posterior and to the right, and rises toward the apical slices
    rightward, depth0, rise, half_lr, half_ap = sub.liver
    depth = depth0 - rise * position / FIELD_OF_VIEW_MM[2]
    lu, lv = local(heart + right * rightward)
    d_liver = _ellipse_distance(lu, lv + depth, half_lr, half_ap)
    image = _paint(image, inner * _coverage(d_liver, width), t["liver"])

    spine_centre = body_centre - anterior * (sub.body_axes[1] - sub.spine[0])
    su, sv = u - spine_centre[0], v - spine_centre[1]
    image = _paint(image, _coverage(np.sqrt(su * su + sv * sv) - sub.spine[1], width), t["spine"])
    aorta_centre = spine_centre + anterior * sub.aorta[0] - right * sub.aorta[1]
    au, av = u - aorta_centre[0], v - aorta_centre[1]
    image = _paint(image, _coverage(np.sqrt(au * au + av * av) - sub.aorta[2], width), t["aorta"])
    return image


def _heart_extent(sub: _Subject, stack_depth: float) -> float:
    """Half-side (mm) of a square around the LV centre that holds the whole heart in every slice and frame.

    ``stack_depth`` is the largest long-axis position of a slice (mm); the LV
    axis drifts in-plane by ``tilt`` per mm along it.
    """
    epi = sub.cavity_radius + sub.wall
    reach = max(epi + sub.rv_crescent * sub.rv_a, sub.rv_b) + sub.rv_wall + sub.fat
    drift = max(abs(sub.tilt[0]), abs(sub.tilt[1])) * min(stack_depth, sub.cavity_length + sub.apex_wall)
    return reach + sub.motion + drift + 8.0


def _render_heart(sub, background, u, v, position, c, spacing):
    """Composite the heart over ``background`` ``(x, y, Z, 1)``; returns signal ``(x, y, Z, T)`` and labels.

    ``u`` ``(x, 1, 1, 1)``, ``v`` ``(1, y, 1, 1)``: in-plane coordinates (mm)
    of the crop; ``position`` ``(Z,)`` long-axis positions (mm); ``c``
    ``(T,)`` contraction.
    """
    t = sub.tissue
    f32 = np.float32
    width = np.sqrt(spacing[0] * spacing[1])
    half_slab = spacing[2] / 2.0

    cavity, epi = _lv_radii(sub, position, c)
    cav_lo, epi_lo = _lv_radii(sub, position - half_slab, c)
    cav_hi, epi_hi = _lv_radii(sub, position + half_slab, c)
    # partial volume across the slice thickness widens the edge ramp
    w_cav = np.sqrt(width**2 + (0.5 * np.abs(cav_hi - cav_lo)) ** 2)
    w_epi = np.sqrt(width**2 + (0.5 * np.abs(epi_hi - epi_lo)) ** 2)
    present = cavity >= sub.obliteration_radius

    rv_scale = _half_ellipsoid(1.0, sub.rv_length_ratio * sub.cavity_length, position)[:, None] * (
        1.0 - c * (1.0 - sub.rv_ratio)
    )[None, :]
    rv_a, rv_b = sub.rv_a * rv_scale, sub.rv_b * rv_scale
    e = sub.cavity_aspect
    epi_a, epi_b = epi * (1 + e / 2), epi / (1 + e / 2)
    rv_shift = epi_a + rv_a * (sub.rv_crescent - 1.0)

    def zt(x):  # (Z, T) -> (1, 1, Z, T) float32
        return np.asarray(x, dtype=f32)[None, None]

    axis = _direction(sub.theta)
    pos = position[:, None]
    cu = sub.centre[0] + sub.tilt[0] * pos + sub.motion * c[None, :] * -axis[0]
    cv = sub.centre[1] + sub.tilt[1] * pos + sub.motion * c[None, :] * -axis[1]
    du, dv = u - zt(cu), v - zt(cv)
    hu = du * f32(axis[0]) + dv * f32(axis[1])  # toward the RV
    hv = dv * f32(axis[0]) - du * f32(axis[1])

    d_cav = _ellipse_distance(hu, hv, zt(cavity * (1 + e)), zt(cavity / (1 + e)))
    d_cav = np.where(zt(present), d_cav, _FAR)
    d_epi = _ellipse_distance(hu, hv, zt(epi_a), zt(epi_b))
    d_rv = _ellipse_distance(hu - zt(rv_shift), hv, zt(rv_a), zt(rv_b))
    d_rv = np.where(zt(rv_scale > 0), d_rv, _FAR)

    image = np.broadcast_to(background, d_epi.shape).copy()
    pericardial_fat = np.maximum(
        _coverage(d_epi - zt(sub.fat), width), _coverage(d_rv - zt(sub.rv_wall + sub.fat), width)
    )
    image = _paint(image, pericardial_fat, t["fat"])
    image = _paint(image, _coverage(d_rv - zt(sub.rv_wall), width), t["myocardium"])
    image = _paint(image, _coverage(d_rv, width), t["rv_blood"])
    image = _paint(image, _coverage(d_epi, zt(w_epi)), t["myocardium"])
    image = _paint(image, _coverage(d_cav, zt(w_cav)), 1.0)

    # papillary muscles: discs near the free wall, mid-ventricle, inside the cavity
    bump = np.clip(np.sin(np.pi * (pos / sub.cavity_length - 0.08) / 0.7), 0.0, None)
    inner_radius = cavity / (1 + e)
    for angle, radius, gap in zip(sub.pm_angles, sub.pm_radii, sub.pm_gaps):
        r_pm = radius * bump * (1.0 + 0.25 * c[None, :])
        centre_dist = inner_radius - r_pm - gap
        valid = present & (r_pm >= 1.0) & (centre_dist >= 0.3 * inner_radius)
        pu, pv = centre_dist * np.cos(angle), centre_dist * np.sin(angle)
        qu, qv = hu - zt(pu), hv - zt(pv)
        d_pm = np.where(zt(valid), np.sqrt(qu * qu + qv * qv) - zt(r_pm), _FAR)
        image = _paint(image, _coverage(d_pm, width), t["papillary"])

    labels = np.zeros(d_epi.shape, dtype=np.uint8)
    labels[d_rv < 0] = LABEL_RV
    labels[d_epi < 0] = LABEL_MYOCARDIUM
    labels[d_cav < 0] = LABEL_LV_CAVITY
    return image, labels


def _bias_field(sub: _Subject, u, v, position, strength: float) -> np.ndarray:
    """Smooth multiplicative coil sensitivity, float32 ``(X, Y, Z)``, ``exp`` of a quadratic in (u, v, z).

    The log-field reaches ``+-strength`` at its extreme over the field of view.
    """
    un = u / (FIELD_OF_VIEW_MM[0] / 2)
    vn = v / (FIELD_OF_VIEW_MM[1] / 2)
    zn = position / FIELD_OF_VIEW_MM[2]
    g = sub.bias_coeffs
    log_field = g[0] * un + g[1] * vn + 0.5 * (g[2] * un * un + g[3] * vn * vn + g[4] * un * vn + g[5] * zn)
    log_field = log_field - log_field.mean()
    peak = np.abs(log_field).max()
    if peak > 0:
        log_field = log_field * (strength / peak)
    return np.exp(log_field).astype(np.float32)


def _check_shape(shape) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"phantom shape must be (X, Y, Z, T) integers; got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 1 or min(dims[:2]) < 8:
        raise ValueError(f"phantom shape must be (X, Y, Z, T) with X, Y >= 8 and Z, T >= 1; got {shape!r}")
    return dims


def make_cine_phantom(
    shape: tuple[int, int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    spacing: tuple[float, float, float] | None = None,
    *,
    noise: float | None = None,
    bias: float | None = None,
) -> CinePhantom:
    """Render one synthetic cine short-axis subject.

    Parameters
    ----------
    shape : tuple of int
        ``(X, Y, Z, T)``; the default ``(192, 168, 10, 20)``.
    seed : int
        Subject: every anatomical, signal and geometric parameter is drawn
        from ``np.random.default_rng(seed)``; the same seed gives identical
        arrays.
    spacing : tuple of float, optional
        ``(sx, sy, sz)`` in mm. By default the shape is fitted to a
        300 x 262.5 mm field of view and an 80 mm stack (base to apex), so
        any shape shows the same anatomy; the default shape gives
        ``(1.5625, 1.5625, 8.0)``. An explicit spacing changes the field of
        view instead.
    noise : float, optional
        Rician noise level as sigma / blood signal; default drawn per subject
        (1/35 to 1/18); 0 gives a noise-free image.
    bias : float, optional
        Bias field strength: the log-field's extreme over the field of view;
        default drawn per subject (0.15 to 0.3); 0 disables it.

    Returns
    -------
    CinePhantom
        With ``ed_frame = 0`` and ``es_frame`` near ``0.35 * T``.
    """
    X, Y, Z, T = _check_shape(shape)
    if spacing is None:
        spacing = (FIELD_OF_VIEW_MM[0] / X, FIELD_OF_VIEW_MM[1] / Y, FIELD_OF_VIEW_MM[2] / Z)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be three positive sizes in mm; got {spacing!r}")
    rng = np.random.default_rng(seed)
    sub = _draw_subject(rng)
    noise_level = sub.noise if noise is None else float(noise)
    bias_strength = sub.bias_strength if bias is None else float(bias)

    es_frame = int(np.clip(round(sub.es_phase * T), 1, T - 1)) if T > 1 else 0
    c = _contraction(T, es_frame)
    position = sub.base_offset + np.arange(Z) * spacing[2]
    u = ((np.arange(X) - (X - 1) / 2) * spacing[0]).astype(np.float32)
    v = ((np.arange(Y) - (Y - 1) / 2) * spacing[1]).astype(np.float32)
    pos3 = position.astype(np.float32)[None, None, :]

    static = _static_anatomy(sub, u[:, None, None], v[None, :, None], pos3, spacing)
    image = np.repeat(static[..., None], T, axis=3)
    labels = np.zeros((X, Y, Z, T), dtype=np.uint8)

    extent = _heart_extent(sub, float(position.max()))
    box = []
    for coord, centre, step in ((u, sub.centre[0], spacing[0]), (v, sub.centre[1], spacing[1])):
        lo = int(np.searchsorted(coord, centre - extent))
        hi = int(np.searchsorted(coord, centre + extent)) + 1
        box.append(slice(max(lo - 1, 0), min(hi, len(coord))))
    sx_, sy_ = box
    heart, heart_labels = _render_heart(
        sub, static[sx_, sy_, :, None], u[sx_, None, None, None], v[None, sy_, None, None], position, c, spacing
    )
    image[sx_, sy_] = heart
    labels[sx_, sy_] = heart_labels

    signal = sub.blood * image
    if bias_strength:
        signal *= _bias_field(sub, u[:, None, None], v[None, :, None], pos3, bias_strength)[..., None]
    if noise_level:
        sigma = np.float32(noise_level * sub.blood)
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        signal = np.sqrt(real * real + imag * imag)

    return CinePhantom(
        image=signal.astype(np.float32, copy=False),
        labels=labels,
        affine=_affine(sub, (X, Y, Z), spacing),
        spacing=spacing,
        frame_time_ms=sub.rr_ms / T,
        ed_frame=0,
        es_frame=es_frame,
    )


def make_cohort(n: int, seed: int = 0, shape: tuple[int, int, int, int] = DEFAULT_SHAPE, **kwargs) -> list[CinePhantom]:
    """``n`` distinct subjects: subject ``i`` is ``make_cine_phantom(shape, seed=seed + i, **kwargs)``."""
    if n < 0:
        raise ValueError(f"cohort size must be >= 0; got {n}")
    return [make_cine_phantom(shape, seed=seed + i, **kwargs) for i in range(n)]
