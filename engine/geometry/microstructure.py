"""Voxel microstructures: polycrystalline secondary particles of Voronoi grains.

A :class:`Microstructure` holds what every later stage needs: voxel labels (uint8,
docs/physics.md §1 codes), grain ids (int32, −1 outside the active phase), one orientation
quaternion per grain, which grains are reactive at the particle surface, and the voxel
size in metres. Arrays use axis 0 = x, 1 = y, 2 = z.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssbx.engine.errors import ConfigError

from ssbx.engine.phases import (  # noqa: F401  (re-exported: geometry users read them here)
    ACTIVE, CARBON, COLLECTOR, ECBD, ION_CONDUCTORS, LABEL_BY_NAME, LABEL_NAMES, LI_METAL, PORE,
    SOLID_ELECTROLYTE,
)


@dataclasses.dataclass(frozen=True)
class Microstructure:
    """A labelled voxel volume with grains.

    Attributes:
        labels: (nx, ny[, nz]) uint8 phase labels.
        grain_id: int32 grid, grain index into ``orientations`` in active voxels, −1
            elsewhere.
        orientations: (n_grains, 4) unit quaternions (w, x, y, z), crystal -> sample.
        reactive_grains: (n_grains,) bool; a reactive grain exchanges Li through its
            faces with the ion conductor. Grains not at the surface are marked
            reactive too (they have no such faces, so it does not matter).
        voxel_size_m: voxel edge length, m.
    """

    labels: np.ndarray
    grain_id: np.ndarray
    orientations: np.ndarray
    reactive_grains: np.ndarray
    voxel_size_m: float

    def __post_init__(self):
        if self.labels.shape != self.grain_id.shape:
            raise ConfigError(
                f"grain_id shape {self.grain_id.shape} must equal labels shape {self.labels.shape}"
            )
        if self.labels.ndim not in (2, 3):
            raise ConfigError(f"labels.ndim = {self.labels.ndim}: valid values are 2 or 3")
        if not self.voxel_size_m > 0:
            raise ConfigError(f"voxel_size_m = {self.voxel_size_m!r}: must be > 0")
        n = self.orientations.shape[0]
        if self.orientations.shape != (n, 4):
            raise ConfigError(f"orientations shape {self.orientations.shape}: expected (n_grains, 4)")
        if self.reactive_grains.shape != (n,):
            raise ConfigError(
                f"reactive_grains shape {self.reactive_grains.shape}: expected ({n},)"
            )
        if self.grain_id.max(initial=-1) >= n:
            raise ConfigError(
                f"grain_id max {self.grain_id.max()} exceeds the orientation table ({n} grains)"
            )

    @property
    def ndim(self) -> int:
        return self.labels.ndim

    @property
    def n_grains(self) -> int:
        return self.orientations.shape[0]

    @property
    def active(self) -> np.ndarray:
        return self.grain_id >= 0

    def reactive_face_count(self) -> np.ndarray:
        """Per voxel, the number of faces between a reactive active voxel and an ion conductor.

        Faces on the outer box boundary never count.
        """
        active = self.active
        reactive = active & self.reactive_grains[np.maximum(self.grain_id, 0)]
        ionic = np.isin(self.labels, ION_CONDUCTORS)
        count = np.zeros(self.labels.shape, dtype=np.int32)
        for axis in range(self.ndim):
            for step in (1, -1):
                neighbour = _neighbour(ionic, axis, step)
                count += reactive & neighbour
        return count

    def reactive_area_faces(self, smoothing_voxels: float = 1.5) -> np.ndarray:
        """Per voxel, the true reactive surface area it represents, in units of h².

        A staircase surface exposes |n_x| + |n_y| + |n_z| (≥ 1, up to √3) face areas per
        unit area of the smooth surface it approximates, so a flux spread uniformly
        over voxel faces would be √3 times denser where the surface runs diagonally to
        the grid than where it is aligned. Each voxel's face count is therefore divided
        by ‖n̂‖₁, with the unit outward normal n̂ taken from the gradient of the active
        indicator smoothed by a Gaussian of ``smoothing_voxels`` (0 disables the
        correction). Grid-aligned flat faces keep their exact area.
        """
        count = self.reactive_face_count().astype(np.float64)
        if smoothing_voxels <= 0 or not count.any():
            return count
        smooth = _gaussian_smooth(self.active.astype(np.float64), smoothing_voxels)
        grad = np.stack(np.gradient(smooth), axis=0)
        norm2 = np.sqrt(np.sum(grad**2, axis=0))
        norm1 = np.sum(np.abs(grad), axis=0)
        ratio = np.where(norm2 > 1e-12, norm1 / np.maximum(norm2, 1e-300), 1.0)
        return count / np.clip(ratio, 1.0, np.sqrt(self.ndim))

    def surface_grains(self) -> np.ndarray:
        """(n_grains,) bool: grains with at least one face on an ion conductor."""
        active = self.active
        ionic = np.isin(self.labels, ION_CONDUCTORS)
        touching = np.zeros(self.labels.shape, dtype=bool)
        for axis in range(self.ndim):
            for step in (1, -1):
                touching |= active & _neighbour(ionic, axis, step)
        ids = np.unique(self.grain_id[touching])
        out = np.zeros(self.n_grains, dtype=bool)
        out[ids] = True
        return out

    def active_volume_m3(self) -> float:
        return float(self.active.sum()) * self.voxel_size_m**self.ndim


def _neighbour(a: np.ndarray, axis: int, step: int) -> np.ndarray:
    """a at i+step along axis; False beyond the box."""
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if step == 1:
        src[axis], dst[axis] = slice(1, None), slice(None, -1)
    else:
        src[axis], dst[axis] = slice(None, -1), slice(1, None)
    out[tuple(dst)] = a[tuple(src)]
    return out


def _gaussian_smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian filter (reflecting edges)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = a
    for axis in range(a.ndim):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return out


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit quaternions uniform on SO(3).

    A 4-D standard normal vector normalised to unit length is uniform on S³, and the
    double cover S³ -> SO(3) maps the uniform measure to the Haar measure
    (Shoemake, Graphics Gems III, 1992).
    """
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)  # canonical sign, w >= 0
    return q


def _grain_count(radius_vox: float, ndim: int, n_grains, mean_grain_size_vox) -> int:
    if n_grains is not None:
        return int(n_grains)
    # equivalent-sphere (disc) diameter of the mean grain
    if ndim == 3:
        return max(1, round((2 * radius_vox / mean_grain_size_vox) ** 3))
    return max(1, round((2 * radius_vox / mean_grain_size_vox) ** 2))


def polycrystalline_particle(
    radius_m: float,
    voxel_size_m: float,
    n_grains: int | None = None,
    mean_grain_size_m: float | None = None,
    grain_size_spread: float = 0.0,
    reactive_fraction: float = 1.0,
    surrounding_label: int = ECBD,
    margin_voxels: int = 2,
    ndim: int = 3,
    seed: int = 0,
    match_volume: bool = False,
) -> Microstructure:
    """A spherical (3D) or disc-shaped (2D) secondary particle of Voronoi grains.

    Grain seeds are placed uniformly in the particle; each voxel belongs to the seed of
    smallest power distance |p − s_i|² − w_i (a Laguerre tessellation; with all
    w_i = 0 this is the Poisson–Voronoi tessellation). With ``grain_size_spread`` = s
    > 0, seed radii r_i are log-normal with coefficient of variation s and w_i = r_i²,
    so grain sizes spread out. Orientations are uniform on SO(3).

    Of the surface grains (those touching the surrounding ion conductor), exactly
    round(reactive_fraction · n_surface), chosen at random, are reactive: 0.667
    reproduces the partial-contact case of docs/physics.md S1.

    Args:
        radius_m: particle radius, m.
        voxel_size_m: voxel edge, m.
        n_grains: number of grain seeds (give this or ``mean_grain_size_m``). Seeds that
            win no voxel are dropped, so the final count can be slightly lower.
        mean_grain_size_m: mean equivalent grain diameter, m.
        grain_size_spread: coefficient of variation of the seed radii, ≥ 0.
        reactive_fraction: fraction of surface grains that react, in [0, 1].
        surrounding_label: label of the phase around the particle (default ECBD).
        margin_voxels: voxels of surrounding phase between the particle and the box
            faces, ≥ 1.
        ndim: 3 (sphere) or 2 (disc).
        seed: random seed; the same seed gives the same microstructure.
        match_volume: False (default): the active voxels are those whose centre lies
            within radius_m (the digitised sphere; its volume is off by a surface term,
            +5.4 % for a 5 µm sphere at 1 µm voxels). True: the N = round(V / h^ndim)
            voxel centres nearest the particle centre, V = 4/3 π r³ (π r² in 2D), so
            the active volume equals the sphere's within half a voxel. The voxel
            centres lie on shells of equal distance; ties at the last shell are broken
            by a seeded random order, so the shape stays a sphere up to one partial
            shell. Grains are assigned as before (same seeds, same power diagram).
    """
    _check_positive("radius_m", radius_m)
    _check_positive("voxel_size_m", voxel_size_m)
    if ndim not in (2, 3):
        raise ConfigError(f"ndim = {ndim!r}: valid values are 2 or 3")
    if n_grains is None and mean_grain_size_m is None:
        raise ConfigError("give either n_grains or mean_grain_size_m")
    if n_grains is not None and mean_grain_size_m is not None:
        raise ConfigError("give only one of n_grains and mean_grain_size_m, not both")
    if n_grains is not None and (int(n_grains) != n_grains or n_grains < 1):
        raise ConfigError(f"n_grains = {n_grains!r}: must be an integer ≥ 1")
    if mean_grain_size_m is not None:
        _check_positive("mean_grain_size_m", mean_grain_size_m)
    if not grain_size_spread >= 0:
        raise ConfigError(f"grain_size_spread = {grain_size_spread!r}: must be ≥ 0")
    if not 0.0 <= reactive_fraction <= 1.0:
        raise ConfigError(f"reactive_fraction = {reactive_fraction!r}: valid range is [0, 1]")
    if surrounding_label not in LABEL_NAMES or surrounding_label == ACTIVE:
        raise ConfigError(
            f"surrounding_label = {surrounding_label!r}: valid labels are "
            f"{ {k: v for k, v in LABEL_NAMES.items() if k != ACTIVE} }"
        )
    if int(margin_voxels) != margin_voxels or margin_voxels < 1:
        raise ConfigError(f"margin_voxels = {margin_voxels!r}: must be an integer ≥ 1")

    radius_vox = radius_m / voxel_size_m
    if radius_vox < 2:
        raise ConfigError(
            f"radius_m / voxel_size_m = {radius_vox:.3g}: the particle must span at least "
            "2 voxels in radius; use a smaller voxel_size_m"
        )
    rng = np.random.default_rng(seed)
    n_seeds = _grain_count(
        radius_vox, ndim, n_grains, None if mean_grain_size_m is None else mean_grain_size_m / voxel_size_m
    )

    n = 2 * math.ceil(radius_vox) + 2 * int(margin_voxels)
    centre = 0.5 * n
    axes = [np.arange(n) + 0.5 - centre for _ in range(ndim)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # voxel centres
    dist2 = np.sum(coords**2, axis=-1)
    if match_volume:
        inside = _volume_matched_ball(dist2, radius_vox, ndim, np.random.default_rng([seed, 1]))
    else:
        inside = dist2 <= radius_vox**2

    seeds = _uniform_in_ball(n_seeds, radius_vox, ndim, rng)
    if grain_size_spread > 0:
        sigma2 = math.log1p(grain_size_spread**2)
        radii = rng.lognormal(-0.5 * sigma2, math.sqrt(sigma2), n_seeds)
        mean_spacing = radius_vox / n_seeds ** (1.0 / ndim)
        weights = (radii * mean_spacing) ** 2
    else:
        weights = np.zeros(n_seeds)

    points = coords[inside]
    owner = _power_assignment(points, seeds, weights)
    used, compact = np.unique(owner, return_inverse=True)
    grain_id = np.full((n,) * ndim, -1, dtype=np.int32)
    grain_id[inside] = compact.astype(np.int32)
    n_final = used.size

    labels = np.full((n,) * ndim, surrounding_label, dtype=np.uint8)
    labels[inside] = ACTIVE
    orientations = random_quaternions(n_final, rng)

    micro = Microstructure(
        labels=labels,
        grain_id=grain_id,
        orientations=orientations,
        reactive_grains=np.ones(n_final, dtype=bool),
        voxel_size_m=float(voxel_size_m),
    )
    if reactive_fraction < 1.0:
        surface = np.flatnonzero(micro.surface_grains())
        n_keep = round(reactive_fraction * surface.size)
        unreactive = rng.permutation(surface)[n_keep:]
        reactive = np.ones(n_final, dtype=bool)
        reactive[unreactive] = False
        micro = dataclasses.replace(micro, reactive_grains=reactive)
    return micro


def _volume_matched_ball(dist2: np.ndarray, radius_vox: float, ndim: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Mask of the round(V / h^ndim) voxel centres nearest the centre (V the ball's volume
    in voxel units). On a grid of voxel centres at half-integer coordinates the squared
    distances differ by multiples of 1/4 (3D: Σ(k + ½)² = integer + 3/4), so a
    tie-breaking jitter in [0, 1/8) changes no order between distinct shells."""
    volume = 4.0 / 3.0 * math.pi * radius_vox**3 if ndim == 3 else math.pi * radius_vox**2
    n_target = int(round(volume))
    key = dist2.reshape(-1) + 0.125 * rng.random(dist2.size)
    order = np.argpartition(key, n_target - 1)[:n_target]
    mask = np.zeros(dist2.size, dtype=bool)
    mask[order] = True
    return mask.reshape(dist2.shape)


def _check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} = {value!r}: must be a finite number > 0")


def _uniform_in_ball(n: int, radius: float, ndim: int, rng: np.random.Generator) -> np.ndarray:
    direction = rng.standard_normal((n, ndim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = radius * rng.random(n) ** (1.0 / ndim)
    return direction * r[:, None]


def _power_assignment(points: np.ndarray, seeds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Index of the seed with the smallest power distance |p − s|² − w (Laguerre cells).

    Exact nearest-neighbour search one dimension up: with W = max w, the lifted seed
    (s, √(W − w)) and point (p, 0) are |p − s|² + W − w apart, so the nearest lifted
    seed owns p in the power diagram (Aurenhammer, SIAM J. Comput. 16, 78 (1987)). A k-d
    tree makes this O(N log n) rather than O(N n): a 256³ box with 6400 grains takes
    seconds instead of minutes.
    """
    from scipy.spatial import cKDTree

    lifted = np.column_stack([seeds, np.sqrt(np.max(weights) - weights)])
    _, owner = cKDTree(lifted).query(np.column_stack([points, np.zeros(len(points))]), workers=-1)
    return np.asarray(owner, dtype=np.int64)


def build_microstructure(scenario, surrounding: str | None = None,
                         margin_voxels: int | None = None) -> Microstructure:
    """The scenario's polycrystalline particle (``[particle]`` section).

    ``surrounding`` and ``margin_voxels`` override the section's values (the cell
    stack embeds the particle in ECBD with the cell's composite margin).
    """
    p = scenario.particle
    surrounding = p.surrounding if surrounding is None else surrounding
    return polycrystalline_particle(
        radius_m=p.radius_m,
        voxel_size_m=p.voxel_size_m,
        n_grains=p.n_grains,
        mean_grain_size_m=p.mean_grain_size_m,
        grain_size_spread=p.grain_size_spread,
        reactive_fraction=p.reactive_fraction,
        surrounding_label=LABEL_BY_NAME.get(surrounding, ECBD),
        margin_voxels=p.margin_voxels if margin_voxels is None else margin_voxels,
        ndim=p.ndim,
        seed=p.seed,
        match_volume=p.match_sphere_volume,
    )
