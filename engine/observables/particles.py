"""Per-particle observables of a multi-particle (composite-cathode) cell.

A *particle* is one id of the ``particle_id`` grid that the cell geometry carries
(engine.geometry.cell_stack.composite_cell_microstructure): the generator's secondary
particle for a generated composite (one id per generated sphere, even where it overlaps
a neighbour), or one face-connected active cluster (x/y periodic) of a loaded volume.
Li diffuses across contacts between touching particles (the stepper does not block
particle boundaries), so a particle's Li content changes by its own interface current
and by what it exchanges with the particles it touches.

Per particle p with voxels V_p (h the voxel edge, x = c/c_max):

* SOC ``soc`` = mean x over V_p (the Li fraction, 1 = lithiated, as the ``soc`` field);
* Li content ``li_mol`` = c_max h³ Σ_{V_p} x;
* current ``current_A`` = Σ_{V_p} I_v, the Butler–Volmer current of its active | ion
  conductor faces (A, > 0 = delithiation, as the cell current);
* charge polarisation ``polarisation_m`` = r_c − r_g, the offset of the centroid of
  the local charge state s = 1 − x (r_c = Σ s r / Σ s) from the geometric centroid
  r_g = Σ r / |V_p|; zero for a uniform particle, it points towards the region that
  has given up most Li. It condenses into one vector per particle the sub-particle
  state-of-charge heterogeneity that 3D TXM-XANES maps of the Ni oxidation state show
  (e.g. Nat. Commun. 8, 14309 (2017), doi:10.1038/ncomms14309); the definition is
  ssbx's (docs/composite_cells.md). Coordinates are unwrapped laterally around the particle's
  reference centre (minimum image), so particles cut by the periodic x/y faces are
  whole;
* size ``equivalent_radius_m`` = (3 |V_p| h³ / 4π)^(1/3) and depth ``depth_m`` = the
  distance of r_g from the cathode | separator plane (0 at the separator, the cathode
  thickness at the collector).

Pearson's r (:func:`pearson`) of the particles' SOC change against size and depth summarises
whether small / near-separator particles charge first (the inter-particle SOC
distribution measured particle by particle by Kröger et al., J. Power Sources,
231204 (2022), doi:10.1016/j.jpowsour.2022.231204). Projections of x as a
transmission X-ray microscope sees them use the thickness-weighted mean of
engine.observables.observation.project.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssbx.engine.observables.observation import project

#: names of the per-particle time series (one row per record, one column per particle)
SERIES = ("soc", "li_mol", "current_A", "polarisation_m", "polarisation_norm")


@dataclasses.dataclass(frozen=True)
class ParticleSet:
    """Fixed per-particle geometry of a cell.

    Attributes:
        particle_id: int32 grid, −1 outside the particles.
        voxel_size_m: h (m).
        index: per particle, flat voxel indices (a tuple of arrays).
        rel_m: per particle, (n_p, 3) voxel-centre positions relative to the reference
            centre, unwrapped laterally (m).
        n_voxels, volume_m3, equivalent_radius_m, depth_m: (n,) arrays.
        centroid_m: (n, 3) geometric centroid (m, in the cell frame, may lie outside
            the box for a particle cut by a periodic face).
        cathode_thickness_m: the cathode's extent along z (m).
    """

    particle_id: np.ndarray
    voxel_size_m: float
    index: tuple
    rel_m: tuple
    reference_m: np.ndarray
    n_voxels: np.ndarray
    volume_m3: np.ndarray
    equivalent_radius_m: np.ndarray
    centroid_m: np.ndarray
    depth_m: np.ndarray
    cathode_thickness_m: float

    @property
    def n(self) -> int:
        return len(self.index)

    @classmethod
    def build(cls, particle_id: np.ndarray, voxel_size_m: float, reference_m: np.ndarray,
              cathode_voxels: int) -> "ParticleSet":
        """``reference_m``: (n, 3) a point inside or near each particle (the generator's
        centre) around which lateral coordinates are unwrapped; ``cathode_voxels``: the
        cathode's thickness along z (the separator starts there)."""
        pid = np.asarray(particle_id)
        h = float(voxel_size_m)
        n = int(np.asarray(reference_m).shape[0])
        box = np.array(pid.shape, float) * h
        flat = pid.reshape(-1)
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat[flat >= 0], minlength=n)
        start = int(np.count_nonzero(flat < 0))
        index, rel = [], []
        centroid = np.full((n, 3), np.nan)
        for p in range(n):
            idx = order[start:start + counts[p]]
            start += counts[p]
            r = (np.stack(np.unravel_index(idx, pid.shape), axis=1) + 0.5) * h - reference_m[p]
            r[:, :2] -= box[:2] * np.round(r[:, :2] / box[:2])  # minimum image along x, y
            index.append(idx)
            rel.append(r)
            if counts[p]:
                centroid[p] = reference_m[p] + r.mean(axis=0)
        thickness = cathode_voxels * h
        volume = counts * h**3
        return cls(pid, h, tuple(index), tuple(rel), np.asarray(reference_m, float), counts.astype(np.int64),
                   volume, (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0), centroid,
                   thickness - centroid[:, 2], thickness)

    def values(self, x: np.ndarray, voxel_current: np.ndarray, c_max_mol_m3: float) -> dict:
        """Per-particle SOC, Li content (mol), current (A) and charge polarisation (m and
        relative to the equivalent radius) of the fields ``x`` and ``voxel_current``
        (module docstring). Particles without voxels give NaN."""
        xf = np.asarray(x, np.float64).reshape(-1)
        cur = np.asarray(voxel_current, np.float64).reshape(-1)
        n = self.n
        out = {name: np.full(n, np.nan) for name in ("soc", "li_mol", "current_A", "polarisation_norm")}
        out["polarisation_m"] = np.full((n, 3), np.nan)
        for p, (idx, r) in enumerate(zip(self.index, self.rel_m)):
            if idx.size == 0:
                continue
            xp = xf[idx]
            out["soc"][p] = xp.mean()
            out["li_mol"][p] = c_max_mol_m3 * self.voxel_size_m**3 * xp.sum()
            out["current_A"][p] = cur[idx].sum()
            s = 1.0 - xp
            total = s.sum()
            if total > 0:
                offset = (s[:, None] * r).sum(axis=0) / total - r.mean(axis=0)
            else:
                offset = np.zeros(3)
            out["polarisation_m"][p] = offset
            out["polarisation_norm"][p] = np.linalg.norm(offset) / self.equivalent_radius_m[p]
        return out

    def table(self) -> dict:
        """The fixed per-particle table (written under /particles/table)."""
        return {"n_voxels": self.n_voxels, "volume_m3": self.volume_m3,
                "equivalent_radius_m": self.equivalent_radius_m, "centroid_m": self.centroid_m,
                "depth_m": self.depth_m, "reference_centre_m": self.reference_m}


def pearson(a, b) -> float:
    """Pearson's correlation coefficient r of the finite pairs of ``a`` and ``b``
    (NaN with fewer than three pairs or a constant variable)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if not den > 0:
        return float("nan")
    return float(np.sum(da * db) / den)


#: the Pearson coefficients of :func:`correlations` (also stored per row)
PEARSON = ("pearson_soc_change_vs_radius", "pearson_soc_change_vs_depth", "pearson_polarisation_vs_radius",
           "pearson_polarisation_vs_depth")


def correlations(pset: ParticleSet, values: dict, soc_initial) -> dict:
    """Pearson r of the particles' SOC change (``soc_initial`` − x̄_p, > 0 = charged;
    ``soc_initial`` per particle, the first row's x̄_p, so that round-off of the means
    does not pass for a spread) and of their relative polarisation against equivalent
    radius and depth, with the arrays they come from (JSON-serialisable lists; NaN
    where undefined)."""
    delta = np.asarray(soc_initial, np.float64) - np.asarray(values["soc"], np.float64)
    pol = np.asarray(values["polarisation_norm"], np.float64)
    radius, depth = pset.equivalent_radius_m, pset.depth_m
    return {
        "n_particles": int(pset.n),
        "pearson_soc_change_vs_radius": pearson(delta, radius),
        "pearson_soc_change_vs_depth": pearson(delta, depth),
        "pearson_polarisation_vs_radius": pearson(pol, radius),
        "pearson_polarisation_vs_depth": pearson(pol, depth),
        "equivalent_radius_m": [float(v) for v in radius],
        "depth_m": [float(v) for v in depth],
        "soc": [float(v) for v in values["soc"]],
        "soc_change": [float(v) for v in delta],
        "polarisation_norm": [float(v) for v in pol],
    }


def txm_projections(x: np.ndarray, active: np.ndarray) -> dict:
    """Projections of x through the cathode as a TXM sees them (thickness-weighted mean
    of the active material along the beam, engine.observables.observation.project):
    ``txm_top`` beam along z (the electrode seen from the separator, (nx, ny)) and
    ``txm_side`` beam along x (a cross-section view, (ny, nz)); NaN where no active
    material lies on the ray."""
    # float32 images (the fields' storage precision; also keeps JAX in its default mode quiet)
    xa = np.where(active, np.asarray(x, np.float32), np.float32(0.0))
    a = np.asarray(active, np.float32)
    out = {}
    for name, axis in (("txm_top", 2), ("txm_side", 0)):
        image = np.asarray(project(xa, a, axis), np.float64)
        out[name] = np.where(a.sum(axis=axis) > 0, image, np.nan)
    return out
