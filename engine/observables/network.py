"""Conductive-network analysis of a composite cathode label volume.

Axes 0, 1, 2 = x, y, z; x and y are periodic (lateral), z is the stack axis.
Labels follow docs/physics.md §1 (0 pore, 1 active, 2 SE, 3 carbon, 4 ECBD, 5 Li, 6 collector).

What is computed (all SI):

* **Percolation** (:func:`percolating_fraction`): face-connected clusters
  (``scipy.ndimage.label``), clusters that touch across a periodic face merged. A phase
  percolates along axis a if a cluster touches both faces normal to a (for that test
  axis a itself is not wrapped). Percolating fraction = voxels of the phase in such
  clusters / voxels of the phase.
* **Effective conductivity and tortuosity** along x, y, z through
  :func:`ssbx.engine.observables.tortuosity.tortuosity` (TauFactor τ; along z the x/y faces are
  periodic, along x or y the side faces are no-flux because z must not wrap):
  electronic with σ(active) and σ(carbon), ionic with σ(SE). τ = ∞ when nothing
  percolates; this is a result, not an error.
* **Specific interface area** (m²/m³ of box) of active|SE and active|carbon, twice:
  (i) face count × h² / V (over-estimates a curved surface by ⟨|n_x|+|n_y|+|n_z|⟩, 1.5
  on a sphere); (ii) smoothed indicator, co-area formula: the area of phase X is
  ``A_X = ∫ |∇(G_s * χ_X)| dV`` (G_s a Gaussian of s voxels), and of the interface
  between X and Y ``A_XY = (A_X + A_Y − A_{X∪Y}) / 2``.
* **Diffusion distances**: for every active voxel, the Euclidean distance (m) between
  voxel centres to the nearest *contact voxel* — an active voxel with a face on an
  ion conductor (SE, ECBD) for d_ion, on an electron conductor (carbon, ECBD,
  collector) for d_e (``scipy.ndimage.distance_transform_edt``; x/y periodic by wrap
  padding of half the box). No contact at all → ∞.
* **Transport-impedance index** per particle p (seconds)::

      Z_p = ⟨d_ion²⟩_p / D_Li + ⟨d_e²⟩_p / D_e,   D_e = σ_e,NCM R T / (F² c_max)

  the first term is the solid-diffusion time over the distance Li must travel to the
  nearest SE contact (D_Li default 1e-14 m²/s, docs/physics.md S2); the second is the same
  time for electrons that must reach the nearest carbon contact through NCM, with the
  electronic conductivity turned into a diffusivity by the Nernst–Einstein relation at
  carrier concentration c_max (a convention chosen so both terms share units; default
  σ_e,NCM = 1e-3 S/m, c_max = 49 000 mol/m³, T = 298.15 K give D_e ≈ 5e-15 m²/s).
  Z_p = ∞ for a particle without carbon contact. Particles: ``particle_id`` if given,
  otherwise face-connected active clusters.

CLI::

    ssbx analyze VOLUME [--map 0=pore,1=active,2=SE,3=carbon] [--voxel-size H]
                 [--sigma-se S] [--sigma-carbon S] [--sigma-active S] [--axes xyz]
                 [--json OUT.json] [--png PREFIX]

VOLUME: an ``.h5`` written by ``ssbx composite`` (labels, particle ids, voxel size
read from it) or an ``.npy`` / ``.tif`` label volume (with ``--map`` when its values
are not ssbx labels).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ssbx.kernels.constants import FARADAY, GAS_CONSTANT

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.connectivity import percolating_fraction, periodic_components
from ssbx.engine.geometry.volume import check_labels
from ssbx.engine.geometry.microstructure import ACTIVE, CARBON, COLLECTOR, ECBD, SOLID_ELECTROLYTE

__all__ = [
    "periodic_components",
    "percolating_fraction",
    "interface_areas",
    "diffusion_distances",
    "particle_impedance",
    "analyze",
    "add_parser",
    "run",
]

F, R = FARADAY, GAS_CONSTANT  # C/mol, J/(mol K): the one set in kernels/constants.py
ION_LABELS = (SOLID_ELECTROLYTE, ECBD)
ELECTRON_LABELS = (CARBON, ECBD, COLLECTOR)

# Intrinsic conductivities (S/m) used by the benchmark and CLI defaults:
#  Li6PS5Cl 0.2 S/m = 2 mS/cm (room temperature, cold-pressed; 1–3 mS/cm reported, e.g.
#   Kraft et al., J. Am. Chem. Soc. 139, 10909 (2017));
#  carbon fibre (VGCF) 1e3 S/m = 10 S/cm, within the 1–100 S/cm of docs/physics.md §6 (a
#   compacted powder; a single fibre conducts better);
#  NCM811 electronic 1e-3 S/m = 1e-5 S/cm, the lithiated (discharged) end of the
#   10⁻⁵–10⁻² S/cm range of docs/physics.md §6; it rises by orders of magnitude on
#   delithiation (Ruess et al., J. Electrochem. Soc. 167, 020533 (2020)).
DEFAULT_SIGMA_S_M = {"solid_electrolyte": 0.2, "carbon": 1.0e3, "active": 1.0e-3}


# ----------------------------------------------------------------------------------
# Connectivity
# ----------------------------------------------------------------------------------






# ----------------------------------------------------------------------------------
# Interfaces
# ----------------------------------------------------------------------------------


def _shift(a, axis, step, periodic):
    """a at i+step along axis; wrap if periodic, else False/0 beyond the box."""
    if periodic:
        return np.roll(a, -step, axis=axis)
    out = np.zeros_like(a)
    n = a.shape[axis]
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if step == 1:
        src[axis], dst[axis] = slice(1, n), slice(0, n - 1)
    else:
        src[axis], dst[axis] = slice(0, n - 1), slice(1, n)
    out[tuple(dst)] = a[tuple(src)]
    return out


def face_count(a, b, periodic=(True, True, False)):
    """Number of voxel faces with ``a`` on one side and ``b`` on the other."""
    n = 0
    for ax in range(a.ndim):
        nb = _shift(b, ax, 1, periodic[ax])
        na = _shift(a, ax, 1, periodic[ax])
        n += np.count_nonzero(a & nb) + np.count_nonzero(b & na)
    return int(n)


def smoothed_area(mask, smoothing_voxels=1.0, periodic=(True, True, False)):
    """Surface area (voxel² units) of ``mask``: ∫|∇(G_s * χ)| dV (co-area formula)."""
    from scipy import ndimage

    modes = ["wrap" if p else "nearest" for p in periodic[: mask.ndim]]
    u = ndimage.gaussian_filter(np.asarray(mask, np.float64), smoothing_voxels, mode=modes)
    g2 = np.zeros_like(u)
    for ax in range(u.ndim):
        if periodic[ax]:
            d = 0.5 * (np.roll(u, -1, ax) - np.roll(u, 1, ax))
        else:
            d = np.gradient(u, axis=ax)
        g2 += d * d
    return float(np.sqrt(g2).sum())


def interface_areas(labels, voxel_size_m, smoothing_voxels=1.0, periodic=(True, True, False)):
    """Specific interface areas (m²/m³ of box) active|SE and active|carbon, face count
    and smoothed estimate (module docstring)."""
    lab = np.asarray(labels)
    h = float(voxel_size_m)
    vol = lab.size * h**3
    act = lab == ACTIVE
    out = {}
    for name, other in (("active_se", np.isin(lab, ION_LABELS)), ("active_carbon", lab == CARBON)):
        faces = face_count(act, other, periodic)
        a_x = smoothed_area(act, smoothing_voxels, periodic)
        a_y = smoothed_area(other, smoothing_voxels, periodic)
        a_xy = smoothed_area(act | other, smoothing_voxels, periodic)
        out[name] = {
            "faces": faces,
            "face_count_m2_per_m3": faces * h**2 / vol,
            "smoothed_m2_per_m3": max(0.5 * (a_x + a_y - a_xy), 0.0) * h**2 / vol,
        }
    return out


# ----------------------------------------------------------------------------------
# Diffusion distances
# ----------------------------------------------------------------------------------


def contact_voxels(labels, partner_labels, periodic=(True, True, False)):
    """Active voxels with at least one face on a voxel whose label is in partner_labels."""
    lab = np.asarray(labels)
    act = lab == ACTIVE
    other = np.isin(lab, partner_labels)
    touch = np.zeros_like(act)
    for ax in range(lab.ndim):
        for step in (1, -1):
            touch |= _shift(other, ax, step, periodic[ax])
    return act & touch


def _edt_periodic(targets, periodic):
    """Distance (voxels) from every voxel to the nearest True voxel of ``targets``."""
    from scipy import ndimage

    if not targets.any():
        return np.full(targets.shape, np.inf)
    pad = [(targets.shape[a] // 2,) * 2 if periodic[a] else (0, 0) for a in range(targets.ndim)]
    big = np.pad(targets, pad, mode="wrap") if any(p[0] for p in pad) else targets
    d = ndimage.distance_transform_edt(~big)
    sl = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, targets.shape))
    return d[sl]


def diffusion_distances(labels, voxel_size_m, periodic=(True, True, False)):
    """``(d_ion, d_e)`` in m: per active voxel the distance to the nearest active|ion-
    conductor and active|electron-conductor contact voxel; NaN outside the active phase."""
    lab = np.asarray(labels)
    h = float(voxel_size_m)
    act = lab == ACTIVE
    out = []
    for partners in (ION_LABELS, ELECTRON_LABELS):
        d = _edt_periodic(contact_voxels(lab, partners, periodic), periodic) * h
        out.append(np.where(act, d, np.nan))
    return out[0], out[1]


def particle_impedance(d_ion, d_e, particle_id, D_li=1e-14, sigma_e_ncm=1e-3, c_max=4.9e4,
                       T=298.15):
    """Per-particle rms distances and impedance index Z_p (s); see module docstring."""
    pid = np.asarray(particle_id)
    n = int(pid.max()) + 1 if pid.size and pid.max() >= 0 else 0
    D_e = sigma_e_ncm * R * T / (F**2 * c_max)
    sel = pid >= 0
    k = pid[sel]
    vol = np.bincount(k, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        di2 = np.bincount(k, d_ion[sel] ** 2, minlength=n) / vol
        de2 = np.bincount(k, d_e[sel] ** 2, minlength=n) / vol
    z_ion = di2 / D_li
    z_e = de2 / D_e
    return {
        "volume_vox": vol.astype(int),
        "rms_d_ion_m": np.sqrt(di2),
        "rms_d_e_m": np.sqrt(de2),
        "Z_ion_s": z_ion,
        "Z_e_s": z_e,
        "Z_s": z_ion + z_e,
        "D_li_m2_s": D_li,
        "D_e_m2_s": D_e,
    }


# ----------------------------------------------------------------------------------
# Full analysis
# ----------------------------------------------------------------------------------


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else (None if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def json_ready(obj):
    """Replace ±inf/NaN (not valid JSON) by "inf"/"-inf"/None, recursively; arrays to lists."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def analyze(labels, voxel_size_m, particle_id=None, sigma=None, axes=(0, 1, 2),
            transport=True, D_li=1e-14, float64=False):
    """All network metrics of a label volume as a JSON-ready dict, plus the arrays
    ``d_ion``, ``d_e`` and the per-particle table under key ``"_arrays"``.

    Args:
        labels: (nx, ny, nz) labels.
        voxel_size_m: voxel edge (m).
        particle_id: optional int grid (−1 outside particles).
        sigma: {"solid_electrolyte", "carbon", "active"} → S/m (defaults
            :data:`DEFAULT_SIGMA_S_M`).
        axes: transport directions to solve.
        transport: solve the conduction problems (the slow part).
    """
    from ssbx.engine.observables.tortuosity import tortuosity

    lab = check_labels(labels).astype(np.uint8)
    if lab.ndim != 3:
        raise ConfigError(f"labels.ndim = {lab.ndim}; valid: 3")
    h = float(voxel_size_m)
    sig = dict(DEFAULT_SIGMA_S_M)
    if sigma:
        unknown = set(sigma) - set(sig)
        if unknown:
            raise ConfigError(f"sigma keys {sorted(unknown)}; valid: {sorted(sig)}")
        sig.update(sigma)
    n = lab.size
    phases = {"active": lab == ACTIVE, "solid_electrolyte": lab == SOLID_ELECTROLYTE,
              "carbon": lab == CARBON, "pore": lab == 0}
    phases["electronic"] = phases["active"] | phases["carbon"]
    result = {
        "shape": list(lab.shape),
        "voxel_size_m": h,
        "volume_fractions": {k: float(np.count_nonzero(v)) / n for k, v in phases.items()},
        "percolating_fraction": {k: [percolating_fraction(v, a) for a in range(3)]
                                 for k, v in phases.items()},
        "conductivity_S_m": sig,
    }
    if transport:
        tables = {
            "electronic": {ACTIVE: sig["active"], CARBON: sig["carbon"]},
            "ionic": {SOLID_ELECTROLYTE: sig["solid_electrolyte"]},
        }
        tr = {}
        for name, table in tables.items():
            tr[name] = {}
            conducting = np.isin(lab, [k for k, v in table.items() if v > 0])
            for a in axes:
                entry = {"volume_fraction": float(conducting.mean())}
                # Decide percolation from geometry: a solve of a non-percolating volume
                # returns round-off currents, not an exact zero.
                # Along z the x/y faces wrap (the composite is laterally periodic); along
                # x or y the solver has one lateral mode for both other axes, and z must
                # not wrap, so the side faces are sealed.
                lateral = "periodic" if a == 2 else "noflux"
                wrap = (True, True, False) if a == 2 else (False, False, False)
                entry["lateral"] = lateral
                if percolating_fraction(conducting, a, periodic=wrap) == 0:
                    entry.update(sigma_eff_S_m=0.0, tortuosity="inf", converged=True,
                                 iterations=0, percolates=False)
                else:
                    r = tortuosity(lab, table, h, a, float64=float64, lateral=lateral)
                    entry.update(sigma_eff_S_m=r.effective_conductivity_S_m,
                                 tortuosity=_finite(r.tortuosity), converged=r.converged,
                                 iterations=r.iterations, percolates=True)
                tr[name]["xyz"[a]] = entry
        result["transport"] = tr
        result["not_percolating"] = [f"{name} along {ax}" for name, d in tr.items()
                                     for ax, v in d.items() if not v["percolates"]]
    result["interface_areas"] = interface_areas(lab, h)
    d_ion, d_e = diffusion_distances(lab, h)
    act = lab == ACTIVE
    if particle_id is None:
        comp, _ = periodic_components(act)
        particle_id = comp.astype(np.int32) - 1
    imp = particle_impedance(d_ion, d_e, particle_id, D_li=D_li)
    di, de = d_ion[act], d_e[act]

    def stats(x):
        ok = np.isfinite(x)
        if not ok.any():
            return {"mean_m": None, "max_m": None, "p90_m": None,
                    "fraction_unreachable": 1.0 if x.size else None}
        y = x[ok]
        return {"mean_m": float(y.mean()), "max_m": float(y.max()),
                "p90_m": float(np.percentile(y, 90)),
                "fraction_unreachable": float(1.0 - ok.mean())}

    result["diffusion_distance"] = {"ion": stats(di), "electron": stats(de)}
    keep = imp["volume_vox"] > 0
    z = imp["Z_s"][keep]
    result["impedance_index"] = {
        "definition": "Z_p = <d_ion^2>_p/D_Li + <d_e^2>_p/D_e, D_e = sigma_e,NCM R T/(F^2 c_max)",
        "D_li_m2_s": imp["D_li_m2_s"], "D_e_m2_s": imp["D_e_m2_s"],
        "n_particles": int(keep.sum()),
        "median_Z_s": _finite(np.median(z)) if z.size else None,
        "median_Z_ion_s": _finite(np.median(imp["Z_ion_s"][keep])) if z.size else None,
        "fraction_particles_without_carbon_contact": float(np.mean(~np.isfinite(z))) if z.size else None,
    }
    result["_arrays"] = {"d_ion": d_ion, "d_e": d_e, "particle_id": particle_id, "particles": imp}
    return result


def write_figures(result, labels, prefix):
    """PNG histograms of d_ion, d_e and maps of both on the mid-z slice; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = result["_arrays"]
    act = np.asarray(labels) == ACTIVE
    um = 1e6
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for x, name in ((arr["d_ion"], "to SE (ionic)"), (arr["d_e"], "to carbon (electronic)")):
        v = x[act]
        v = v[np.isfinite(v)]
        if v.size:
            ax[0].hist(v * um, bins=40, histtype="step", density=True, label=name)
    ax[0].set_xlabel("diffusion distance (µm)")
    ax[0].set_ylabel("probability density")
    ax[0].legend()
    k = labels.shape[2] // 2
    for a, x, name in ((ax[1], arr["d_ion"], "d_ion"), (ax[2], arr["d_e"], "d_e")):
        img = np.where(np.isfinite(x[:, :, k]), x[:, :, k] * um, np.nan)
        im = a.imshow(img.T, origin="lower", cmap="viridis")
        a.set_title(f"{name} (µm), z slice {k}")
        a.set_xlabel("x (voxel)")
        a.set_ylabel("y (voxel)")
        fig.colorbar(im, ax=a, shrink=0.8)
    fig.tight_layout()
    path = Path(f"{prefix}_distances.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------


def _load(path, label_map, voxel_size):
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        if not p.is_file():
            raise ConfigError(f"VOLUME = {str(p)!r} does not exist")
        with h5py.File(p, "r") as f:
            if "geometry/labels" not in f:
                raise ConfigError(f"VOLUME = {str(p)!r} has no /geometry/labels")
            g = f["geometry"]
            labels = g["labels"][...]
            pid = g["particle_id"][...] if "particle_id" in g else None
            h = float(g.attrs.get("voxel_size_m", voxel_size or 0)) or voxel_size
        return labels, pid, h
    from ssbx.engine.geometry.composite import load_volume

    comp = load_volume(p, label_map, voxel_size or 1e-6)
    return comp.labels, comp.particle_id, comp.micro.voxel_size_m


def add_parser(sub):
    p = sub.add_parser(
        "analyze",
        help="conductive-network analysis of a composite volume",
        description=__doc__.split("CLI::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("volume", help=".h5 from ssbx composite, or .npy/.tif labels")
    p.add_argument("--map", default="0=pore,1=active,2=SE,3=carbon",
                   help="file value to phase for .npy/.tif (default: ssbx labels)")
    p.add_argument("--voxel-size", type=float, default=None, help="voxel edge in m (.npy/.tif)")
    p.add_argument("--sigma-se", type=float, default=DEFAULT_SIGMA_S_M["solid_electrolyte"])
    p.add_argument("--sigma-carbon", type=float, default=DEFAULT_SIGMA_S_M["carbon"])
    p.add_argument("--sigma-active", type=float, default=DEFAULT_SIGMA_S_M["active"])
    p.add_argument("--axes", default="xyz", help="transport axes, e.g. z or xyz")
    p.add_argument("--no-transport", action="store_true", help="skip the conduction solves")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--png", default=None, metavar="PREFIX", help="write PREFIX_distances.png")
    return p


def _print_summary(name, res):
    print(f"ssbx analyze: {name}  shape {res['shape']}  voxel {res['voxel_size_m']:.3g} m")
    print(f"{'phase':>18} {'fraction':>9}  percolating fraction x / y / z")
    for k, v in res["volume_fractions"].items():
        pf = " / ".join(f"{x:.3f}" for x in res["percolating_fraction"][k])
        print(f"{k:>18} {v:9.4f}  {pf}")
    for name_, d in res.get("transport", {}).items():
        for ax, e in d.items():
            print(f"{name_:>10} {ax}: sigma_eff {e['sigma_eff_S_m']:.4g} S/m  tau {e['tortuosity']}")
    for k, v in res["interface_areas"].items():
        print(f"{k:>14}: {v['smoothed_m2_per_m3']:.4g} m2/m3 (smoothed), "
              f"{v['face_count_m2_per_m3']:.4g} (face count)")
    for k, v in res["diffusion_distance"].items():
        if v and v["mean_m"] is not None:
            print(f"distance to {k} contact: mean {v['mean_m']:.3g} m, p90 {v['p90_m']:.3g} m, "
                  f"unreachable {v['fraction_unreachable']:.3f}")
        else:
            print(f"distance to {k} contact: no contact")
    z = res["impedance_index"]
    print(f"impedance index: median Z {z['median_Z_s']} s over {z['n_particles']} particles; "
          f"without carbon contact {z['fraction_particles_without_carbon_contact']}")


def run(args) -> int:
    try:
        labels, pid, h = _load(args.volume, args.map, args.voxel_size)
        axes = []
        for c in args.axes:
            if c not in "xyz":
                raise ConfigError(f"--axes {args.axes!r}; valid: letters from xyz")
            axes.append("xyz".index(c))
        res = analyze(labels, h, pid, sigma={"solid_electrolyte": args.sigma_se,
                                             "carbon": args.sigma_carbon,
                                             "active": args.sigma_active},
                      axes=tuple(axes), transport=not args.no_transport)
    except ConfigError as err:
        print(f"ssbx analyze: invalid input: {err}", file=sys.stderr)
        return 2
    arrays = res.pop("_arrays")
    _print_summary(args.volume, res)
    if args.json:
        res["particles"] = arrays["particles"]
        Path(args.json).write_text(json.dumps(json_ready(res), indent=1) + "\n")
        del res["particles"]
    if args.png:
        res["_arrays"] = arrays
        for path in write_figures(res, labels, args.png):
            print(f"wrote {path}", file=sys.stderr)
    return 0
