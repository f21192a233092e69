"""Composite cathode microstructures: NCM secondary particles, solid electrolyte, carbon.

Recipe (all lengths in m at the public boundary, voxel units inside):

1. **Mass → volume.** Mass ratios m_i (NCM : SE : carbon, e.g. 7:3:1) and densities
   ρ_i give solid volume fractions ``v_i = (m_i/ρ_i) / Σ_j (m_j/ρ_j)``; with a porosity
   p the box fractions are ``φ_i = (1 − p) v_i`` (see :func:`mass_to_volume_fractions`).
2. **Particles.** Radii are log-normal with the given mean and standard deviation
   (draws outside [2 voxels, 0.45 · lateral box] are redrawn) until the summed sphere
   volume reaches φ_active · V_box. Centres start uniformly random and are relaxed in
   continuous space (:func:`relax_packing`): every overlapping pair is pushed apart
   along the line of centres until no centre distance is below ``(1 − max_overlap)
   (r_i + r_j)``. Random sequential addition of equal hard spheres jams near 38 %
   (Widom, J. Chem. Phys. 44, 3888 (1966); Feder, J. Theor. Biol. 87, 237 (1980)),
   below the 50–60 % of real cathodes; collective pushes reach random close packing
   (≈ 64 % for equal spheres, higher with polydispersity), and a small allowed overlap
   (default 10 % of the radii sum) mimics particles pressed into each other. Voxels
   covered by several spheres go to the one of smallest power distance
   ``|p − c|² − r²`` (radical plane). Because spheres cut by the z faces lose volume,
   radii are rescaled by a common factor and relaxed again until the voxel fraction
   is within 0.2 % of the target.
3. **Grains.** Each particle is a Voronoi polycrystal of ``round((2 r / d_grain)³)``
   seeds uniform in its ball; grain ids of particle k start at its offset and index
   one global orientation table (uniform on SO(3)).
4. **Carbon** fills non-active voxels, either as straight fibres (random centre,
   direction uniform on the sphere, given length and diameter) or as small spheres,
   until exactly round(φ_carbon · N) voxels are carbon (the last object is cut short).
   **Pore** is placed the same way as small spheres. The **solid electrolyte** fills
   the rest.

Geometry is periodic along x and y (axes 0, 1) and cut by the faces normal to z
(axis 2, the stack direction). The same seed gives the same volume.

Densities (g/cm³, crystallographic, from lattice parameters; compacted powders are
lower, but mass ratios refer to the solid material):

* NCM811 LiNi0.8Co0.1Mn0.1O2: 4.78 — R-3m, a = 2.872 Å, c = 14.20 Å, Z = 3,
  M = 97.3 g/mol (lattice parameters of Noh et al., J. Power Sources 233, 121 (2013));
  ρ = Z M / (N_A (√3/2) a² c).
* Li6PS5Cl: 1.86 — F-43m, a = 9.85 Å, Z = 4, M = 268.4 g/mol (Deiseroth et al.,
  Angew. Chem. Int. Ed. 47, 755 (2008)). Pressed pellets reach ≈ 1.6–1.7.
* Carbon (vapour-grown carbon fibre VGCF-H, Showa Denko datasheet: true density
  2.0 g/cm³; carbon black Super C65 ≈ 1.9–2.1): 2.0.

CLI::

    ssbx composite --ratios 7:3:1 --size 128 --voxel-size 0.25e-6 --seed 0 --out comp.npy
                   [--porosity P] [--carbon fibre|particle] [--radius-mean M] [--radius-std S]
                   [--h5 comp.h5] [--tif comp.tif] [--json table.json]
    ssbx composite --load volume.tif --map 0=pore,1=active,2=SE,3=carbon --voxel-size H ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.connectivity import percolating_fraction, periodic_components
from ssbx.engine.geometry.volume import load_labels
from ssbx.engine.geometry.microstructure import (
    ACTIVE,
    CARBON,
    ECBD,
    PORE,
    SOLID_ELECTROLYTE,
    Microstructure,
    random_quaternions,
)

__all__ = [
    "DENSITY_G_CM3",
    "Composite",
    "parse_ratios",
    "mass_to_volume_fractions",
    "relax_packing",
    "generate_composite",
    "load_volume",
    "parse_label_map",
    "save_composite",
    "add_parser",
    "run",
]

DENSITY_G_CM3 = {"active": 4.78, "solid_electrolyte": 1.86, "carbon": 2.0}
PHASES = ("active", "solid_electrolyte", "carbon", "pore")
_PHASE_LABEL = {"active": ACTIVE, "solid_electrolyte": SOLID_ELECTROLYTE, "carbon": CARBON,
                "pore": PORE}
FRACTION_TOLERANCE = 0.002  # |φ_active achieved − requested| the generator aims for


# ----------------------------------------------------------------------------------
# Mass ratios
# ----------------------------------------------------------------------------------


def parse_ratios(ratios):
    """Three non-negative finite numbers (NCM : SE : carbon) from "7:3:1" or a sequence."""
    raw = ratios
    if isinstance(ratios, str):
        parts = [p.strip() for p in ratios.split(":")]
    else:
        try:
            parts = list(ratios)
        except TypeError:
            parts = [ratios]
    if len(parts) != 3:
        raise ConfigError(f"ratios = {raw!r}; valid: three non-negative numbers NCM:SE:carbon, "
                          "e.g. 7:3:1")
    out = []
    for p in parts:
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise ConfigError(f"ratios = {raw!r}: {p!r} is not a number; valid: three "
                              "non-negative numbers, e.g. 7:3:1") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"ratios = {raw!r}: {p!r}; valid: finite and >= 0")
        out.append(v)
    if out[0] <= 0 or sum(out) <= 0:
        raise ConfigError(f"ratios = {raw!r}: the NCM share must be > 0")
    return tuple(out)


def mass_to_volume_fractions(ratios, densities=None, porosity=0.0):
    """Box volume fractions {active, solid_electrolyte, carbon, pore} from mass ratios.

    ``φ_i = (1 − p) (m_i / ρ_i) / Σ_j (m_j / ρ_j)``, ``φ_pore = p``; densities default to
    :data:`DENSITY_G_CM3` (only their ratios matter, so any consistent unit works).
    """
    m = parse_ratios(ratios)
    rho = dict(DENSITY_G_CM3)
    if densities is not None:
        rho.update(densities)
    for k in ("active", "solid_electrolyte", "carbon"):
        if not (isinstance(rho[k], (int, float)) and math.isfinite(rho[k]) and rho[k] > 0):
            raise ConfigError(f"densities[{k!r}] = {rho[k]!r}; valid: a number > 0 (g/cm³)")
    p = float(porosity)
    if not (0.0 <= p < 1.0):
        raise ConfigError(f"porosity = {porosity!r}; valid range [0, 1)")
    vols = [mi / rho[k] for mi, k in zip(m, ("active", "solid_electrolyte", "carbon"))]
    total = sum(vols)
    out = {k: (1.0 - p) * v / total for k, v in zip(("active", "solid_electrolyte", "carbon"), vols)}
    out["pore"] = p
    return out


# ----------------------------------------------------------------------------------
# Result container
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Composite:
    """A composite volume: a :class:`Microstructure` plus particles and bookkeeping.

    Attributes:
        micro: labels, grain ids, orientation table, voxel size (m).
        particle_id: int32 grid, index into the particle table in active voxels, −1 elsewhere.
        particles: dict of per-particle arrays: ``centre_m`` (n, 3), ``radius_m``,
            ``volume_vox``, ``volume_m3``, ``n_grains``, ``grain_offset``.
        requested: requested box volume fractions per phase (None for loaded volumes).
        info: generation parameters and timings (JSON-serialisable).
    """

    micro: Microstructure
    particle_id: np.ndarray
    particles: dict
    requested: dict | None
    info: dict

    @property
    def labels(self):
        return self.micro.labels

    def achieved(self) -> dict:
        """Box volume fraction of each phase (voxel counts / N)."""
        n = self.labels.size
        return {k: float(np.count_nonzero(self.labels == lab)) / n for k, lab in _PHASE_LABEL.items()}

    def percolation(self) -> dict:
        """{phase: [percolates along x, y, z]} with face connectivity, x/y periodic."""
        out = {}
        masks = {k: self.labels == lab for k, lab in _PHASE_LABEL.items()}
        masks["electronic"] = masks["active"] | masks["carbon"]
        for k, mask in masks.items():
            out[k] = [bool(percolating_fraction(mask, a) > 0) for a in range(3)]
        return out

    def particle_table(self) -> list[dict]:
        p = self.particles
        return [
            {"id": i, "centre_m": [float(c) for c in p["centre_m"][i]],
             "radius_m": float(p["radius_m"][i]), "volume_vox": int(p["volume_vox"][i]),
             "volume_m3": float(p["volume_m3"][i]), "n_grains": int(p["n_grains"][i]),
             "grain_offset": int(p["grain_offset"][i])}
            for i in range(len(p["radius_m"]))
        ]

    def report(self) -> dict:
        return {
            "shape": list(self.labels.shape),
            "voxel_size_m": self.micro.voxel_size_m,
            "requested_fractions": self.requested,
            "achieved_fractions": self.achieved(),
            "percolation_xyz": self.percolation(),
            "n_particles": int(len(self.particles["radius_m"])),
            "n_grains": int(self.micro.n_grains),
            "info": self.info,
        }


# ----------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------


def _min_image(d, box, periodic):
    for a in range(3):
        if periodic[a]:
            d[..., a] -= box[a] * np.round(d[..., a] / box[a])
    return d


def relax_packing(centres, radii, box, max_overlap=0.1, periodic=(True, True, False),
                  max_iter=3000, tol=1e-3):
    """Push overlapping spheres apart until ``|c_i − c_j| ≥ (1 − max_overlap)(r_i + r_j)``.

    Each sweep finds all pairs closer than that (k-d tree, minimum image on periodic
    axes) and moves both centres along their line by the missing distance (+5 %
    overshoot), the smaller sphere by the larger share ``r_j³ / (r_i³ + r_j³)``.
    Centres stay in [0, L] on non-periodic axes (spheres may be cut by those faces).

    Returns ``(centres, worst, iterations)`` with ``worst`` the largest remaining
    violation as a fraction of ``r_i + r_j`` (≤ tol on success).
    """
    from scipy.spatial import cKDTree

    c = np.array(centres, dtype=float)
    r = np.asarray(radii, dtype=float)
    box = np.asarray(box, dtype=float)
    rmax = float(r.max()) if r.size else 0.0
    tree_box = np.where(periodic, box, box + 4 * rmax + 1.0)
    keep = 1.0 - max_overlap
    worst = 0.0

    def wrap(c):
        for a in range(3):
            c[:, a] = np.mod(c[:, a], box[a]) if periodic[a] else np.clip(c[:, a], 0, box[a])
        return c

    for it in range(1, max_iter + 1):
        c = wrap(c)
        if r.size < 2:
            return c, 0.0, it
        pairs = cKDTree(c, boxsize=tree_box).query_pairs(2 * rmax * keep, output_type="ndarray")
        if pairs.size == 0:
            return c, 0.0, it
        i, j = pairs[:, 0], pairs[:, 1]
        d = _min_image(c[i] - c[j], box, periodic)
        dist = np.linalg.norm(d, axis=1)
        need = keep * (r[i] + r[j])
        over = need - dist
        bad = over > tol * (r[i] + r[j])
        worst = float(np.max(over / (r[i] + r[j]), initial=0.0))
        if not bad.any():
            return c, max(worst, 0.0), it
        i, j, d, dist, over = i[bad], j[bad], d[bad], dist[bad], over[bad]
        u = d / np.maximum(dist, 1e-12)[:, None]
        wi = r[j] ** 3 / (r[i] ** 3 + r[j] ** 3)
        step = 1.05 * over
        np.add.at(c, i, (wi * step)[:, None] * u)
        np.add.at(c, j, -((1 - wi) * step)[:, None] * u)
    return wrap(c), worst, max_iter


def _lognormal_radii(rng, target_volume, mean, std, rmin, rmax):
    """Draw radii until Σ 4/3 π r³ ≥ target_volume (redrawing values outside [rmin, rmax])."""
    if std > 0:
        s2 = math.log1p((std / mean) ** 2)
        mu, s = math.log(mean) - 0.5 * s2, math.sqrt(s2)
    radii, total = [], 0.0
    while total < target_volume:
        batch = rng.lognormal(mu, s, 256) if std > 0 else np.full(256, mean)
        for r in batch[(batch >= rmin) & (batch <= rmax)]:
            if total >= target_volume:
                break
            radii.append(r)
            total += 4.0 / 3.0 * math.pi * r**3
        if std == 0 and not (rmin <= mean <= rmax):
            break
    return np.array(radii)


def _ball_box(centre, radius, shape):
    """Index arrays (with x/y wrap, z clipped) and displacements of a sphere's bounding box."""
    axes, disp = [], []
    for a in range(3):
        lo = math.floor(centre[a] - radius - 0.5)
        hi = math.ceil(centre[a] + radius + 0.5)
        idx = np.arange(lo, hi + 1)
        if a == 2:
            idx = idx[(idx >= 0) & (idx < shape[2])]
        disp.append(idx + 0.5 - centre[a])
        axes.append(np.mod(idx, shape[a]))
    return axes, disp


def _rasterise_particles(centres, radii, shape):
    """Particle owner per voxel (−1 none): the covering sphere of least power distance."""
    best = np.full(shape, np.inf, dtype=np.float32)
    owner = np.full(shape, -1, dtype=np.int32)
    for k, (c, r) in enumerate(zip(centres, radii)):
        (ix, iy, iz), (dx, dy, dz) = _ball_box(c, r, shape)
        if iz.size == 0:
            continue
        pw = (dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2) - r * r
        sub = np.ix_(ix, iy, iz)
        cur = best[sub]
        win = (pw <= 0) & (pw < cur)
        if win.any():
            cur = np.where(win, pw, cur)
            best[sub] = cur
            o = owner[sub]
            o[win] = k
            owner[sub] = o
    return owner


# ----------------------------------------------------------------------------------
# Carbon and pore objects
# ----------------------------------------------------------------------------------


def _ball_offsets(radius):
    n = int(math.ceil(radius + 1))
    g = np.arange(-n, n + 1)
    o = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return o[np.sum(o**2, 1) <= (radius + 1) ** 2]


def _flat(cand, shape):
    """Flat C-order index of (n, 3) voxel indices after x/y wrap (z already in range)."""
    x = np.mod(cand[:, 0], shape[0])
    y = np.mod(cand[:, 1], shape[1])
    return (x * shape[1] + y) * shape[2] + cand[:, 2]


def _fibre_voxels(rng, shape, length, radius, offsets):
    """Flat indices of the voxels of one random fibre (x/y wrapped, z clipped) and their
    axial coordinate from one end."""
    centre = rng.random(3) * np.array(shape)
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    s = np.arange(-0.5 * length, 0.5 * length + 0.5, 0.5)
    pts = centre + s[:, None] * u
    cand = (np.floor(pts)[:, None, :] + offsets[None]).reshape(-1, 3).astype(np.int64)
    rel = cand + 0.5 - centre
    t = rel @ u
    perp2 = np.sum(rel * rel, axis=1) - t * t
    ok = (np.abs(t) <= 0.5 * length) & (perp2 <= radius * radius) & (cand[:, 2] >= 0) \
        & (cand[:, 2] < shape[2])
    flat, first = np.unique(_flat(cand[ok], shape), return_index=True)
    return flat, t[ok][first] + 0.5 * length


def _sphere_voxels(rng, shape, radius, offsets):
    centre = rng.random(3) * np.array(shape)
    cand = (np.floor(centre) + offsets).astype(np.int64)
    dist = np.linalg.norm(cand + 0.5 - centre, axis=1)
    ok = (dist <= radius) & (cand[:, 2] >= 0) & (cand[:, 2] < shape[2])
    return _flat(cand[ok], shape), dist[ok]


def _fill_objects(labels, target, label, make, rng, max_tries):
    """Turn free voxels (still solid electrolyte) into ``label``, object by object, until
    exactly ``target`` voxels carry it; the last object keeps only its first voxels
    (along the fibre from one end / outward from the sphere centre). Object voxel sets
    are unique as long as objects are smaller than the box."""
    flat_labels = labels.reshape(-1)  # a view: writes go to labels
    free = flat_labels == SOLID_ELECTROLYTE
    count, objects, misses = 0, 0, 0
    for _ in range(max_tries):
        if count >= target or misses > 2000:  # 2000 objects in a row found no free voxel
            break
        vox, order = make(rng)
        ok = free[vox]
        vox, order = vox[ok], order[ok]
        if vox.size == 0:
            misses += 1
            continue
        misses = 0
        need = target - count
        if vox.size > need:
            vox = vox[np.argsort(order, kind="stable")[:need]]
        flat_labels[vox] = label
        free[vox] = False
        count += vox.size
        objects += 1
    return count, objects


# ----------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------


def _positive(name, value, unit="m"):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}; valid: a number > 0 ({unit})") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{name} = {value!r}; valid: finite and > 0 ({unit})")
    return v


def generate_composite(
    size=128,
    voxel_size_m=0.25e-6,
    ratios=(7, 3, 1),
    porosity=0.0,
    densities=None,
    radius_mean_m=2.5e-6,
    radius_std_m=0.8e-6,
    max_overlap=0.1,
    mean_grain_size_m=1.0e-6,
    carbon="fibre",
    fibre_length_m=8e-6,
    fibre_diameter_m=0.5e-6,
    carbon_particle_radius_m=0.5e-6,
    pore_radius_m=0.5e-6,
    seed=0,
    max_relax_iter=3000,
) -> Composite:
    """Generate a laterally periodic NCM / SE / carbon (/ pore) composite (module docstring).

    Args:
        size: voxels per axis (int) or (nx, ny, nz).
        voxel_size_m: voxel edge (m).
        ratios: mass ratios NCM : SE : carbon ("7:3:1" or three numbers).
        porosity: pore volume fraction in [0, 1).
        densities: overrides of :data:`DENSITY_G_CM3` (g/cm³).
        radius_mean_m, radius_std_m: log-normal particle radius distribution (m).
        max_overlap: allowed centre-distance deficit as a fraction of r_i + r_j, [0, 0.5].
        mean_grain_size_m: mean grain diameter (m) of the Voronoi primary particles.
        carbon: "fibre" (cylinders of ``fibre_length_m`` × ``fibre_diameter_m``) or
            "particle" (spheres of ``carbon_particle_radius_m``).
        pore_radius_m: radius of the pore spheres (m).
        seed: random seed.

    Raises:
        ConfigError: bad input, or an active fraction that cannot be packed (the message
            gives the fraction achieved without the overlapping particles).
    """
    t0 = time.perf_counter()
    shape = _check_shape(size)
    h = _positive("voxel_size_m", voxel_size_m)
    req = mass_to_volume_fractions(ratios, densities, porosity)
    rmean = _positive("radius_mean_m", radius_mean_m) / h
    rstd = float(radius_std_m) / h
    if not (math.isfinite(rstd) and rstd >= 0):
        raise ConfigError(f"radius_std_m = {radius_std_m!r}; valid: finite and >= 0 (m)")
    if not (0.0 <= float(max_overlap) <= 0.5):
        raise ConfigError(f"max_overlap = {max_overlap!r}; valid range [0, 0.5]")
    grain = _positive("mean_grain_size_m", mean_grain_size_m) / h
    if carbon not in ("fibre", "particle"):
        raise ConfigError(f"carbon = {carbon!r}; valid: 'fibre' or 'particle'")
    rmin, rmax = 2.0, 0.45 * min(shape[0], shape[1])
    if not rmin <= rmean <= rmax:
        raise ConfigError(f"radius_mean_m = {radius_mean_m!r} ({rmean:.3g} voxels); valid: "
                          f"{rmin * h:.3g}..{rmax * h:.3g} m (2 voxels .. 0.45 × lateral box)")
    rng = np.random.default_rng(seed)
    n_vox = int(np.prod(shape))
    box = np.array(shape, dtype=float)
    periodic = (True, True, False)

    # --- particles --------------------------------------------------------------------
    target = req["active"]
    radii = _lognormal_radii(rng, target * n_vox, rmean, rstd, rmin, rmax)
    centres = rng.random((radii.size, 3)) * box
    rounds, iters_total, worst = 0, 0, 0.0
    owner = np.full(shape, -1, np.int32)
    achieved = 0.0
    if radii.size:
        for rounds in range(1, 7):
            centres, worst, iters = relax_packing(centres, radii, box, max_overlap, periodic,
                                                  max_relax_iter)
            iters_total += iters
            if worst > 1e-3:
                _unpackable(req, ratios, porosity, centres, radii, box, max_overlap, worst,
                            iters_total, shape)
            owner = _rasterise_particles(centres, radii, shape)
            achieved = np.count_nonzero(owner >= 0) / n_vox
            if abs(achieved - target) <= FRACTION_TOLERANCE or rounds == 6:
                break
            radii = radii * (target / max(achieved, 1e-9)) ** (1.0 / 3.0)
        if abs(achieved - target) > 0.01:
            raise ConfigError(
                f"active volume fraction {target:.4f} (ratios = {ratios!r}) reached only "
                f"{achieved:.4f} after {rounds} rescaling rounds; the box ({shape}) is too small "
                "for this radius distribution: use a larger size or smaller radius_mean_m")
    t_pack = time.perf_counter() - t0

    # --- grains -----------------------------------------------------------------------
    n_part = radii.size
    vol_vox = np.bincount(owner[owner >= 0], minlength=n_part) if n_part else np.zeros(0, int)
    n_seed = np.maximum(1, np.round((2 * radii / grain) ** 3)).astype(np.int64)
    grain_id, n_grains, offsets = _assign_grains(owner, centres, radii, n_seed, box, rng)
    orientations = random_quaternions(int(n_grains.sum()), rng)

    # --- carbon and pore --------------------------------------------------------------
    labels = np.full(shape, SOLID_ELECTROLYTE, np.uint8)
    labels[owner >= 0] = ACTIVE
    n_objects = {}
    n_c = int(round(req["carbon"] * n_vox))
    if n_c:
        if carbon == "fibre":
            length = _positive("fibre_length_m", fibre_length_m) / h
            rad = 0.5 * _positive("fibre_diameter_m", fibre_diameter_m) / h
            offs = _ball_offsets(rad)
            maker = (lambda g: _fibre_voxels(g, shape, length, rad, offs))
        else:
            rad = _positive("carbon_particle_radius_m", carbon_particle_radius_m) / h
            offs = _ball_offsets(rad)
            maker = (lambda g: _sphere_voxels(g, shape, rad, offs))
        got, n_objects["carbon"] = _fill_objects(labels, n_c, CARBON, maker, rng, 50 * n_c + 1000)
        if got < n_c:
            raise ConfigError(f"carbon fraction requested {req['carbon']:.4f} could not be placed: "
                              f"only {got / n_vox:.4f} fits in the space left by the particles")
    n_p = int(round(req["pore"] * n_vox))
    if n_p:
        rad = _positive("pore_radius_m", pore_radius_m) / h
        offs = _ball_offsets(rad)
        maker = (lambda g: _sphere_voxels(g, shape, rad, offs))
        got, n_objects["pore"] = _fill_objects(labels, n_p, PORE, maker, rng, 50 * n_p + 1000)
        if got < n_p:
            raise ConfigError(f"porosity = {porosity!r} could not be placed: only {got / n_vox:.4f} "
                              "fits in the solid electrolyte left over")

    micro = Microstructure(labels=labels, grain_id=grain_id, orientations=orientations,
                           reactive_grains=np.ones(orientations.shape[0], bool),
                           voxel_size_m=h)
    particles = {
        "centre_m": centres * h,
        "radius_m": radii * h,
        "volume_vox": vol_vox.astype(np.int64),
        "volume_m3": vol_vox * h**3,
        "n_grains": n_grains,
        "grain_offset": offsets,
    }
    info = {
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else repr(seed),
        "ratios": list(parse_ratios(ratios)),
        "porosity": float(porosity),
        "densities_g_cm3": {**DENSITY_G_CM3, **(densities or {})},
        "radius_mean_m": float(radius_mean_m),
        "radius_std_m": float(radius_std_m),
        "max_overlap": float(max_overlap),
        "mean_grain_size_m": float(mean_grain_size_m),
        "carbon": carbon,
        "fibre_length_m": float(fibre_length_m),
        "fibre_diameter_m": float(fibre_diameter_m),
        "carbon_particle_radius_m": float(carbon_particle_radius_m),
        "pore_radius_m": float(pore_radius_m),
        "packing": "log-normal radii, overlap-removal relaxation (module docstring)",
        "relax_rounds": int(rounds),
        "relax_iterations": int(iters_total),
        "worst_residual_overlap": float(worst),
        "n_objects": n_objects,
        "time_packing_s": t_pack,
        "time_total_s": time.perf_counter() - t0,
    }
    return Composite(micro, grain_id_to_particle(grain_id, offsets, n_grains), particles, req, info)


def grain_id_to_particle(grain_id, offsets, n_grains):
    """Particle index per voxel from grain ids and the per-particle grain offsets."""
    out = np.full(grain_id.shape, -1, np.int32)
    act = grain_id >= 0
    if act.any() and len(offsets):
        out[act] = np.searchsorted(np.asarray(offsets), grain_id[act], side="right") - 1
    return out


def _assign_grains(owner, centres, radii, n_seed, box, rng):
    """Voronoi grains inside each particle with one global k-d tree.

    A fourth coordinate ``k · BIG`` (particle index k, BIG larger than any in-particle
    distance) keeps every voxel's nearest seed inside its own particle.
    """
    from scipy.spatial import cKDTree

    n_part = radii.size
    grain_id = np.full(owner.shape, -1, np.int32)
    if n_part == 0:
        return grain_id, np.zeros(0, np.int64), np.zeros(0, np.int64)
    big = 4.0 * float(box.max()) + 10.0
    pid = np.repeat(np.arange(n_part), n_seed)
    rel = rng.standard_normal((pid.size, 3))
    rel /= np.linalg.norm(rel, axis=1, keepdims=True)
    rel *= (radii[pid] * rng.random(pid.size) ** (1.0 / 3.0))[:, None]
    seeds4 = np.column_stack([rel, pid * big])
    idx = np.nonzero(owner >= 0)
    k = owner[idx]
    pts = np.column_stack(idx).astype(float) + 0.5 - centres[k]
    pts = _min_image(pts, box, (True, True, False))
    _, nearest = cKDTree(seeds4).query(np.column_stack([pts, k * big]), workers=-1)
    used, compact = np.unique(nearest, return_inverse=True)  # keeps particle order
    grain_id[idx] = compact.astype(np.int32)
    n_grains = np.bincount(pid[used], minlength=n_part).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_grains)[:-1]]).astype(np.int64)
    return grain_id, n_grains, offsets


def _unpackable(req, ratios, porosity, centres, radii, box, max_overlap, worst, iters, shape):
    """Raise ConfigError stating the fraction reachable without the still-overlapping spheres."""
    from scipy.spatial import cKDTree

    keep = 1.0 - max_overlap
    periodic = (True, True, False)
    tree_box = np.where(periodic, box, box + 4 * radii.max() + 1.0)
    pairs = cKDTree(centres, boxsize=tree_box).query_pairs(2 * radii.max() * keep,
                                                            output_type="ndarray")
    alive = np.ones(radii.size, bool)
    if pairs.size:
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.linalg.norm(_min_image(centres[i] - centres[j], box, periodic), axis=1)
        bad = keep * (radii[i] + radii[j]) - d > 1e-3 * (radii[i] + radii[j])
        for a, b in zip(i[bad], j[bad]):
            if alive[a] and alive[b]:
                alive[a if radii[a] < radii[b] else b] = False
    owner = _rasterise_particles(centres[alive], radii[alive], shape)
    reach = np.count_nonzero(owner >= 0) / owner.size
    raise ConfigError(
        f"active volume fraction {req['active']:.4f} (ratios = {ratios!r}, porosity = {porosity!r}) "
        f"cannot be packed: after {iters} relaxation sweeps the worst overlap still exceeds the "
        f"allowed {max_overlap:.2f} of the radii sum by {worst:.3f}; without the overlapping "
        f"particles only {reach:.4f} was achieved. Hard spheres (max_overlap 0) jam near 0.64 "
        "(random close packing); lower the NCM ratio or the porosity, widen radius_std_m or "
        "raise max_overlap (≤ 0.5)."
    )


def _check_shape(size):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        shape = (int(size),) * 3
    else:
        try:
            shape = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise ConfigError(f"size = {size!r}; valid: an int >= 8 or three ints") from None
        if len(shape) != 3 or any(int(s) != s for s in size):
            raise ConfigError(f"size = {size!r}; valid: an int >= 8 or three ints")
    if min(shape) < 8:
        raise ConfigError(f"size = {size!r}; valid: every axis >= 8 voxels")
    return shape


# ----------------------------------------------------------------------------------
# Loading segmented volumes
# ----------------------------------------------------------------------------------

_NAME_TO_LABEL = {
    "pore": PORE, "void": PORE, "active": ACTIVE, "ncm": ACTIVE, "am": ACTIVE,
    "se": SOLID_ELECTROLYTE, "solid_electrolyte": SOLID_ELECTROLYTE,
    "electrolyte": SOLID_ELECTROLYTE, "carbon": CARBON, "cb": CARBON,
    "ecbd": ECBD, "binder": ECBD,
}


def parse_label_map(text):
    """``"0=pore,1=active,2=SE,3=carbon"`` → {file value: ssbx label}."""
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in str(text).split(","):
            key, sep, name = part.partition("=")
            if not sep:
                raise ConfigError(f"--map entry {part.strip()!r}; valid: VALUE=NAME, e.g. 2=SE")
            items.append((key, name))
    out = {}
    for key, name in items:
        try:
            value = int(str(key).strip())
        except ValueError:
            raise ConfigError(f"--map value {key!r}; valid: an integer voxel value") from None
        lab = _NAME_TO_LABEL.get(str(name).strip().lower())
        if lab is None:
            raise ConfigError(f"--map name {name!r} (for value {value}); valid: "
                              f"{sorted(set(_NAME_TO_LABEL))}")
        out[value] = lab
    if not out:
        raise ConfigError(f"--map {text!r}: empty; valid e.g. 0=pore,1=active,2=SE,3=carbon")
    return out


def load_volume(path_or_array, label_map, voxel_size_m, seed=0) -> Composite:
    """A segmented volume (.npy, .tif/.tiff via :func:`ssbx.engine.geometry.volume.load_labels`, or an
    array (x, y, z)) as a :class:`Composite`.

    Every file value must appear in ``label_map``. Each face-connected active cluster
    (x/y periodic) becomes one particle with one grain of random orientation (grains
    are not resolved in segmented tomograms); its radius is the equivalent-sphere radius.
    """
    h = _positive("voxel_size_m", voxel_size_m)
    raw = np.asarray(load_labels(path_or_array) if isinstance(path_or_array, (str, Path))
                     else path_or_array)
    if raw.ndim != 3:
        raise ConfigError(f"volume.ndim = {raw.ndim}; valid: 3")
    mapping = parse_label_map(label_map)
    values = np.unique(raw)
    missing = [v for v in values.tolist() if v not in mapping]
    if missing:
        raise ConfigError(f"volume values {missing[:8]} have no entry in --map {label_map!r}; "
                          "valid: map every value present")
    lut_keys = np.array(sorted(mapping))
    lut_vals = np.array([mapping[k] for k in lut_keys], np.uint8)
    labels = lut_vals[np.searchsorted(lut_keys, raw)]
    comp, n = periodic_components(labels == ACTIVE, periodic=(True, True, False))
    pid = (comp - 1).astype(np.int32)
    rng = np.random.default_rng(seed)
    orient = random_quaternions(n, rng)
    vol = np.bincount(pid[pid >= 0], minlength=n)
    idx = np.nonzero(pid >= 0)
    centres = np.zeros((n, 3))
    if n:
        # unwrapped centroid per cluster via circular means on x/y
        for a in range(3):
            x = idx[a] + 0.5
            if a < 2:
                ang = 2 * np.pi * x / labels.shape[a]
                cs = np.bincount(pid[idx], np.cos(ang), n)
                sn = np.bincount(pid[idx], np.sin(ang), n)
                centres[:, a] = np.mod(np.arctan2(sn, cs), 2 * np.pi) * labels.shape[a] / (2 * np.pi)
            else:
                centres[:, a] = np.bincount(pid[idx], x, n) / vol
    micro = Microstructure(labels=labels, grain_id=pid.copy(), orientations=orient,
                           reactive_grains=np.ones(n, bool), voxel_size_m=h)
    particles = {
        "centre_m": centres * h,
        "radius_m": (3 * vol / (4 * np.pi)) ** (1 / 3) * h,
        "volume_vox": vol.astype(np.int64),
        "volume_m3": vol * h**3,
        "n_grains": np.ones(n, np.int64),
        "grain_offset": np.arange(n, dtype=np.int64),
    }
    src = str(path_or_array) if isinstance(path_or_array, (str, Path)) else "array"
    return Composite(micro, pid, particles, None,
                     {"source": src, "label_map": {str(k): int(v) for k, v in mapping.items()}})


# ----------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------


def save_composite(comp: Composite, path):
    """Write by extension: ``.npy`` labels (x, y, z), ``.tif`` labels (stack z, y, x, as
    :func:`ssbx.engine.geometry.volume.load_labels` reads it), ``.h5`` the geometry group of docs/file_format.md plus
    ``/geometry/particle_id`` and ``/geometry/particles/*`` and a JSON report attribute."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        np.save(p, comp.labels)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(p, np.ascontiguousarray(comp.labels.T))
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "w") as f:
            g = f.create_group("geometry")
            g.create_dataset("labels", data=comp.labels, compression="gzip")
            g.create_dataset("grain_id", data=comp.micro.grain_id, compression="gzip")
            g.create_dataset("particle_id", data=comp.particle_id, compression="gzip")
            g.create_dataset("orientations", data=comp.micro.orientations)
            g.attrs["voxel_size_m"] = comp.micro.voxel_size_m
            t = g.create_group("particles")
            for k, v in comp.particles.items():
                t.create_dataset(k, data=np.asarray(v))
            f.attrs["composite_json"] = json.dumps(comp.report())
    else:
        raise ConfigError(f"--out {str(p)!r}: unsupported extension {suffix!r}; valid: .npy, "
                          ".tif, .tiff, .h5")


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------


def add_parser(sub):
    p = sub.add_parser(
        "composite",
        help="generate (or load) an NCM / SE / carbon composite cathode volume",
        description=__doc__.split("CLI::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ratios", default="7:3:1", help="mass ratios NCM:SE:carbon (default 7:3:1)")
    p.add_argument("--porosity", type=float, default=0.0, help="pore volume fraction")
    p.add_argument("--size", type=int, nargs="+", default=[128], help="voxels per axis (1 or 3 ints)")
    p.add_argument("--voxel-size", type=float, default=0.25e-6, help="voxel edge in m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--radius-mean", type=float, default=2.5e-6, help="mean particle radius, m")
    p.add_argument("--radius-std", type=float, default=0.8e-6, help="std of the radius, m")
    p.add_argument("--max-overlap", type=float, default=0.1)
    p.add_argument("--grain-size", type=float, default=1.0e-6, help="mean grain diameter, m")
    p.add_argument("--carbon", choices=["fibre", "particle"], default="fibre")
    p.add_argument("--fibre-length", type=float, default=8e-6)
    p.add_argument("--fibre-diameter", type=float, default=0.5e-6)
    p.add_argument("--carbon-radius", type=float, default=0.5e-6)
    p.add_argument("--load", default=None, metavar="VOLUME",
                   help="load a segmented .npy/.tif instead of generating (needs --map)")
    p.add_argument("--map", default="0=pore,1=active,2=SE,3=carbon",
                   help="file value to phase, e.g. 0=pore,1=active,2=SE,3=carbon")
    p.add_argument("--out", action="append", default=[],
                   help="output file(s): .npy, .tif, .h5 (repeatable)")
    p.add_argument("--json", default=None, help="write the report and particle table as JSON")
    return p


def run(args) -> int:
    try:
        if args.load:
            comp = load_volume(args.load, args.map, args.voxel_size, seed=args.seed)
        else:
            size = args.size[0] if len(args.size) == 1 else args.size
            comp = generate_composite(
                size=size, voxel_size_m=args.voxel_size, ratios=args.ratios,
                porosity=args.porosity, radius_mean_m=args.radius_mean,
                radius_std_m=args.radius_std, max_overlap=args.max_overlap,
                mean_grain_size_m=args.grain_size, carbon=args.carbon,
                fibre_length_m=args.fibre_length, fibre_diameter_m=args.fibre_diameter,
                carbon_particle_radius_m=args.carbon_radius, seed=args.seed)
        for out in args.out:
            save_composite(comp, out)
    except ConfigError as err:
        print(f"ssbx composite: invalid input: {err}", file=sys.stderr)
        return 2
    rep = comp.report()
    print(f"ssbx composite: shape {rep['shape']}, voxel {rep['voxel_size_m']:.3g} m, "
          f"{rep['n_particles']} particles, {rep['n_grains']} grains")
    print(f"{'phase':>18} {'requested':>10} {'achieved':>10}  percolates x y z")
    for k in PHASES:
        r = rep["requested_fractions"][k] if rep["requested_fractions"] else float("nan")
        perc = " ".join("Y" if v else "n" for v in rep["percolation_xyz"][k])
        print(f"{k:>18} {r:10.4f} {rep['achieved_fractions'][k]:10.4f}  {perc}")
    print(f"{'electronic':>18} {'':>10} {'':>10}  "
          + " ".join("Y" if v else "n" for v in rep["percolation_xyz"]["electronic"]))
    if "time_total_s" in comp.info:
        print(f"generated in {comp.info['time_total_s']:.2f} s")
    if args.json:
        rep["particles"] = comp.particle_table()
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    for out in args.out:
        print(f"wrote {out}")
    return 0
