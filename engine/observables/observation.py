"""Observation operators: what an instrument sees of a simulated SOC field.

All operators are pure ``jax.numpy`` functions of the simulated field x = c/c_max
(normalised Li content, the ``soc`` field), linear in x for a fixed geometry, and
differentiable (reverse and forward mode). Array axis 0, 1, 2 is x, y, z, as
everywhere in ssbx.

Two ways of seeing a particle are modelled:

* **volume** (nano-tomography, 3D XANES): the SOC at the simulation voxel size, or
  block-averaged over ``factor``^d voxels to a coarser voxel. The block average is
  weighted by the active indicator a (1 in active voxels, 0 elsewhere),

      X_B = Σ_{i∈B} a_i x_i / Σ_{i∈B} a_i ,

  i.e. the mean Li content of the active material inside the coarse voxel B (a
  partial-volume voxel at the particle edge reports the SOC of the material it
  contains, not a mix with empty space).

* **projection** (TXM-XANES): a 2D map along a beam axis b. XANES measures the
  absorption edge position averaged over the material the ray crosses, so a pixel
  reports the thickness-weighted mean of x through the particle,

      P(p) = Σ_{rays r ∈ p} Σ_{i ∈ r} a_i x_i  /  Σ_{rays r ∈ p} Σ_{i ∈ r} a_i ,

  the sum of x over active voxels along the ray divided by the number of active
  voxels along it (summed over the ``factor``^(d−1) rays of a coarse pixel).
  Numerator and thickness are binned (and shifted) separately before the ratio, so
  coarse pixels are path-length weighted as the absorption is.

A known sub-pixel registration shift of the measured maps relative to the simulation
grid is applied to the simulated numerator and thickness images (in coarse pixels,
periodic wrap, since the particle sits inside a margin of empty voxels). Two
differentiable interpolants are offered: ``"linear"`` (separable linear
interpolation, whose adjoint is the shift by −s) and ``"fourier"`` (multiplication of
the DFT by exp(−2πi k s / n), the exact band-limited shift; unitary). Both reduce to
``np.roll`` for integer shifts.

Pixels seen through too little material are unreliable (the ratio divides by a small
thickness, and the registration there is most uncertain): :func:`observation_mask`
keeps pixels whose mean active thickness is at least ``min_thickness_voxels``
(projection) or whose active fraction is at least ``min_active_fraction`` (volume).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError

AXIS_NAMES = {"x": 0, "y": 1, "z": 2}
KINDS = ("projection", "volume")
SHIFT_METHODS = ("linear", "fourier")


def parse_axis(value, ndim: int = 3, field: str = "beam_axis") -> int:
    """Beam axis as an array axis: 0/1/2 or "x"/"y"/"z"."""
    if isinstance(value, str) and value.lower() in AXIS_NAMES:
        axis = AXIS_NAMES[value.lower()]
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        axis = int(value)
    else:
        axis = -1
    if not 0 <= axis < ndim:
        valid = [k for k, v in AXIS_NAMES.items() if v < ndim]
        raise ConfigError(
            f"{field} = {value!r}: valid values are {valid} or the array axes 0..{ndim - 1}"
        )
    return axis


def _safe_divide(num, den):
    """num/den where den > 0, else 0, with finite gradients everywhere (double-where)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def block_sum(field, factor: int):
    """Sum over non-overlapping blocks of ``factor`` along every axis.

    The shape must be divisible by ``factor`` (:class:`ConfigError` otherwise).
    Linear; its adjoint spreads each block value back to its voxels.
    """
    factor = _check_factor(factor)
    if factor == 1:
        return field
    shape = field.shape
    for axis, n in enumerate(shape):
        if n % factor:
            raise ConfigError(
                f"block factor = {factor}: grid axis {axis} has {n} voxels, not a multiple of "
                f"{factor}; valid factors divide every axis of {tuple(shape)}"
            )
    split = []
    for n in shape:
        split += [n // factor, factor]
    return jnp.sum(field.reshape(split), axis=tuple(range(1, 2 * len(shape), 2)))


def block_average(field, factor: int, weights=None):
    """Block mean over ``factor``^d voxels, optionally weighted.

    Without weights: X_B = (1/factor^d) Σ_{i∈B} x_i, which conserves the mean exactly.
    With weights w ≥ 0 (e.g. the active indicator): X_B = Σ w x / Σ w per block (0 where
    a block has no weight), which conserves the weighted total Σ_B W_B X_B = Σ_i w_i x_i.
    """
    if weights is None:
        return block_sum(field, factor) / float(_check_factor(factor)) ** field.ndim
    return _safe_divide(block_sum(weights * field, factor), block_sum(weights, factor))


def project(field, active, axis: int):
    """Thickness-weighted mean of x along ``axis``: Σ a x / Σ a (0 where no material).

    Args:
        field: (nx, ny[, nz]) SOC x.
        active: same shape, 1 in active voxels, 0 elsewhere (bool or float).
        axis: beam axis (array axis).
    """
    a = jnp.asarray(active, field.dtype)
    return _safe_divide(jnp.sum(a * field, axis=axis), jnp.sum(a, axis=axis))


def shift_image(image, shift_px, method: str = "linear"):
    """Translate ``image`` by ``shift_px`` pixels per axis (periodic wrap).

    out(i) = image(i − s). ``"linear"``: separable linear interpolation,
    out = (1 − f) roll(image, ⌊s⌋) + f roll(image, ⌊s⌋ + 1) with f = s − ⌊s⌋ per axis;
    its adjoint is the shift by −s. ``"fourier"``: out = IDFT(DFT(image) · exp(−2πi k s / n))
    (real part), the band-limited shift. For integer s both equal ``np.roll(image, s)``.
    The shift is a known registration (static floats); the result is linear in image.
    """
    shift = tuple(float(s) for s in np.broadcast_to(np.asarray(shift_px, float), (image.ndim,)))
    if method not in SHIFT_METHODS:
        raise ConfigError(f"shift_method = {method!r}: valid values are {list(SHIFT_METHODS)}")
    if not any(shift):
        return image
    if method == "linear":
        out = image
        for axis, s in enumerate(shift):
            if s == 0:
                continue
            s0 = math.floor(s)
            f = s - s0
            rolled = jnp.roll(out, s0, axis=axis)
            out = rolled if f == 0 else (1 - f) * rolled + f * jnp.roll(out, s0 + 1, axis=axis)
        return out
    spectrum = jnp.fft.fftn(image)
    phase = 0.0
    for axis, s in enumerate(shift):
        n = image.shape[axis]
        k = np.fft.fftfreq(n)  # cycles per pixel
        shape = [1] * image.ndim
        shape[axis] = n
        phase = phase + (k * s).reshape(shape)
    return jnp.real(jnp.fft.ifftn(spectrum * jnp.exp(-2j * jnp.pi * phase))).astype(image.dtype)


def _check_factor(factor) -> int:
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"block factor = {factor!r}: must be an integer ≥ 1")
    return int(factor)


@dataclasses.dataclass(frozen=True)
class ObservationOperator:
    """How a simulated SOC field maps to a measured map.

    Attributes:
        kind: ``"projection"`` (2D map along ``beam_axis``) or ``"volume"``.
        beam_axis: projection axis (0, 1, 2 = x, y, z); ignored for volumes.
        factor: measured pixel size / simulation voxel size (integer ≥ 1).
        shift_px: known shift of the measurement relative to the simulation, in
            measured pixels, one value per image axis (or a scalar for all).
        shift_method: ``"linear"`` or ``"fourier"`` (see :func:`shift_image`).
        min_thickness_voxels: projection pixels whose mean active thickness (in
            simulation voxels) is below this are masked as unreliable.
        min_active_fraction: volume pixels with a smaller active fraction are masked.
    """

    kind: str = "projection"
    beam_axis: int = 2
    factor: int = 1
    shift_px: tuple = ()
    shift_method: str = "linear"
    min_thickness_voxels: float = 1.0
    min_active_fraction: float = 0.5

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"measurement.kind = {self.kind!r}: valid values are {list(KINDS)}")
        _check_factor(self.factor)
        if self.shift_method not in SHIFT_METHODS:
            raise ConfigError(
                f"measurement.shift_method = {self.shift_method!r}: valid values are {list(SHIFT_METHODS)}"
            )
        if not (self.min_thickness_voxels >= 0):
            raise ConfigError(
                f"measurement.min_thickness_voxels = {self.min_thickness_voxels!r}: must be ≥ 0"
            )
        if not (0 <= self.min_active_fraction <= 1):
            raise ConfigError(
                f"measurement.min_active_fraction = {self.min_active_fraction!r}: valid range is [0, 1]"
            )

    def image_shape(self, grid_shape) -> tuple[int, ...]:
        """Shape of one observed map for a simulation grid of ``grid_shape``."""
        shape = list(grid_shape)
        if self.kind == "projection":
            parse_axis(self.beam_axis, len(shape), "measurement.beam_axis")
            del shape[self.beam_axis]
        for axis, n in enumerate(shape):
            if n % self.factor:
                raise ConfigError(
                    f"measurement pixel factor = {self.factor}: image axis {axis} of the simulation "
                    f"has {n} voxels, not a multiple of {self.factor}; choose a pixel size that is "
                    "a divisor multiple of the voxel size or change the particle margin"
                )
        return tuple(n // self.factor for n in shape)

    def _numerator_and_weight(self, field, active):
        a = jnp.asarray(active, field.dtype)
        if self.kind == "projection":
            num, weight = jnp.sum(a * field, axis=self.beam_axis), jnp.sum(a, axis=self.beam_axis)
        else:
            num, weight = a * field, a
        num, weight = block_sum(num, self.factor), block_sum(weight, self.factor)
        if self.shift_px is not None and len(np.atleast_1d(self.shift_px)):
            num = shift_image(num, self.shift_px, self.shift_method)
            weight = shift_image(weight, self.shift_px, self.shift_method)
        return num, weight

    def __call__(self, field, active):
        """The observed map of one SOC field (shape :meth:`image_shape`)."""
        num, weight = self._numerator_and_weight(field, active)
        return _safe_divide(num, weight)

    def ray_sum(self, field) -> np.ndarray:
        """Σ of ``field`` over what one pixel sees (its rays and bin, or its block), in
        numpy, without registration shift; for the active mask, the voxels of material
        behind each pixel."""
        f = np.asarray(field, np.float64)
        if self.kind == "projection":
            f = f.sum(axis=self.beam_axis)
        k = self.factor
        if k > 1:
            split = []
            for n in f.shape:
                split += [n // k, k]
            f = f.reshape(split).sum(axis=tuple(range(1, 2 * f.ndim, 2)))
        return f

    def mask(self, active) -> np.ndarray:
        """Reliable pixels (bool numpy array of shape :meth:`image_shape`)."""
        active = np.asarray(active, np.float64)
        shape = self.image_shape(active.shape)
        _, weight = self._numerator_and_weight(jnp.zeros(active.shape, jnp.float32), active)
        weight = np.asarray(weight, np.float64)
        ndim_image = len(shape)
        per_pixel = weight / float(self.factor) ** ndim_image  # mean over the block's rays/voxels
        if self.kind == "projection":
            return per_pixel >= max(self.min_thickness_voxels, 1e-6)
        return per_pixel >= max(self.min_active_fraction, 1e-6)
