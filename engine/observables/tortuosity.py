"""Effective conductivity and tortuosity factor of a labelled voxel volume.

For a label volume (axis 0 = x, 1 = y, 2 = z) and a conductivity per label, the
steady potential problem ∇·(σ∇φ) = 0 is solved with :mod:`ssbx.kernels.conduction`
along one axis with a unit potential drop (φ = 1 V on the low face, 0 V on the high
face, half a voxel outside the first/last voxel centres) and no-flux lateral faces.
The current I through the sample (mean over the two Dirichlet faces and every
interior plane, which agree to the solver tolerance) gives

    σ_eff = I L / (A ΔV)                          (S/m)

with L the length along the axis and A the cross-section. The tortuosity factor
follows the TauFactor convention (Cooper et al., SoftwareX 5, 203 (2016))::

    τ = ε σ_bulk / σ_eff

where ε is the volume fraction of conducting voxels (σ > 0, including dead ends and
isolated clusters, as in TauFactor) and σ_bulk the intrinsic conductivity of the
conducting phase. With one conducting label σ_bulk is its conductivity. With several,
the default is their volume-weighted mean, so that ε σ_bulk is the arithmetic mean of
σ over the whole volume (the Wiener upper bound); then τ ≥ 1 always, with τ = 1 for
straight channels/laminates parallel to the axis. A non-percolating volume gives
σ_eff = 0 and τ = inf.

CLI (``ssbx tortuosity``)::

    ssbx tortuosity FILE --phase ionic|electronic --axis x|y|z|all
                    [--voxel-size-m H] [--sigma LABEL=S_PER_M ...] [--float64] [--json OUT]
                    [--solver auto|lean|reference] [--criterion flux|residual|both]
                    [--flux-tol T] [--rtol R] [--preconditioner P] [--maxiter N]
                    [--compile-cache DIR]

The default (float32) solver is the low-memory one of :mod:`.tortuosity_lean`
(float32; for a binary volume one uint8 field holds the mask and the diagonal; XLA's count
22 B/voxel with Jacobi and 38 with multigrid, peak RSS 27–39 and 41–107 B/voxel measured,
against ≈ 120 for the reference solver; CG preconditioned by
a multigrid V-cycle from 10⁶ voxels on (on a CPU; Jacobi on a GPU, where multigrid is not
yet measured) and by Jacobi below, stopped when the plane currents agree to
``--flux-tol``); its JSON output carries τ's convergence history. ``--float64`` uses the
reference solver (FFT-preconditioned CG to ``--rtol``). See docs/tortuosity.md.

FILE is a NumPy ``.npy`` label array (axes x, y, z as stored) or a TIFF stack
(``.tif``/``.tiff``, read with tifffile; a stack is stored page-major (z, y, x) and is
transposed here to (x, y, z); a single 2D page (y, x) becomes (x, y)). Without
``--sigma`` every voxel of the chosen phase gets σ = 1 S/m (geometric tortuosity);
``--sigma`` sets or overrides single labels, e.g. ``--sigma 1=1e-3 --sigma 3=1e3``.
Phases: ionic = {2 solid electrolyte, 4 ECBD}; electronic = {1 active, 3 carbon, 4 ECBD,
5 Li metal, 6 current collector}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.volume import check_labels, load_labels
from ssbx.engine.geometry.microstructure import (
    ACTIVE,
    CARBON,
    COLLECTOR,
    ECBD,
    LABEL_NAMES,
    LI_METAL,
    SOLID_ELECTROLYTE,
)

__all__ = [
    "TransportResult",
    "effective_conductivity",
    "tortuosity",
    "load_labels",
    "PHASE_LABELS",
    "add_parser",
    "run",
    "main",
]

MAX_LABEL = max(LABEL_NAMES)
PHASE_LABELS = {
    "ionic": (SOLID_ELECTROLYTE, ECBD),
    "electronic": (ACTIVE, CARBON, ECBD, LI_METAL, COLLECTOR),
}
_AXIS_NAMES = {"x": 0, "y": 1, "z": 2}


@dataclasses.dataclass(frozen=True)
class TransportResult:
    """Effective transport along one axis (SI units)."""

    axis: int
    effective_conductivity_S_m: float
    volume_fraction: float
    bulk_conductivity_S_m: float
    tortuosity: float
    current_A: float
    iterations: int
    residual: float
    converged: bool
    flux_imbalance: float  # max |I_plane − I_mean| / |I_mean| over all planes
    solver: str = "reference"
    criterion: str = "residual"
    # τ's convergence (lean solver): τ, the plane-current spread and the relative residual
    # every ``check_every`` iterations, starting at the initial guess (iteration 0)
    history_iterations: tuple = ()
    history_tau: tuple = ()
    history_spread: tuple = ()
    history_residual: tuple = ()

    def as_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------




def _check_conductivities(conductivity_by_label):
    if not hasattr(conductivity_by_label, "items"):
        raise ConfigError(
            f"conductivity_by_label = {conductivity_by_label!r}; valid: a mapping label -> S/m"
        )
    table = np.zeros(MAX_LABEL + 1)
    for key, value in conductivity_by_label.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise ConfigError(
                f"conductivity_by_label key = {key!r}; valid: integer labels 0..{MAX_LABEL}"
            ) from None
        if label != key and not (isinstance(key, str) and key.strip().isdigit()):
            raise ConfigError(
                f"conductivity_by_label key = {key!r}; valid: integer labels 0..{MAX_LABEL}"
            )
        if not 0 <= label <= MAX_LABEL:
            raise ConfigError(
                f"conductivity_by_label key = {label}; valid range 0..{MAX_LABEL}"
            )
        try:
            sigma = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"conductivity_by_label[{label}] = {value!r}; valid: a number >= 0 (S/m)"
            ) from None
        if not math.isfinite(sigma) or sigma < 0:
            raise ConfigError(
                f"conductivity_by_label[{label}] = {sigma}; valid: finite and >= 0 (S/m)"
            )
        table[label] = sigma
    return table


def _check_axis(axis, ndim):
    if isinstance(axis, str):
        key = axis.strip().lower()
        if key not in _AXIS_NAMES:
            raise ConfigError(f"axis = {axis!r}; valid: x, y, z or 0..{ndim - 1}")
        axis = _AXIS_NAMES[key]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis < ndim:
        raise ConfigError(f"axis = {axis!r}; valid: 0..{ndim - 1} (or x, y, z) for a {ndim}D volume")
    return int(axis)


def _check_voxel_size(voxel_size_m):
    try:
        h = float(voxel_size_m)
    except (TypeError, ValueError):
        raise ConfigError(f"voxel_size_m = {voxel_size_m!r}; valid: a number > 0 (m)") from None
    if not math.isfinite(h) or h <= 0:
        raise ConfigError(f"voxel_size_m = {h}; valid: finite and > 0 (m)")
    return h


# ----------------------------------------------------------------------------------
# Computation
# ----------------------------------------------------------------------------------


def _solve_axis(sigma_np, h, axis, rtol, maxiter, preconditioner, float64, lateral="noflux"):
    import jax
    import jax.numpy as jnp

    from ssbx.kernels.conduction import boundary_currents, plane_currents, solve_potential

    with jax.enable_x64(bool(float64)):
        dtype = jnp.float64 if float64 else jnp.float32
        sigma = jnp.asarray(sigma_np, dtype)
        sol = solve_potential(
            sigma, h, axis=axis, value_lo=1.0, value_hi=0.0, lateral=lateral,
            rtol=rtol, maxiter=maxiter, preconditioner=preconditioner,
        )
        i_lo, i_hi = boundary_currents(sol.phi, sigma, h, axis=axis, value_lo=1.0, value_hi=0.0,
                                       connected=sol.connected)
        planes = plane_currents(sol.phi, sigma, h, axis=axis, connected=sol.connected)
        currents = np.concatenate([[float(i_lo)], np.asarray(planes, float), [-float(i_hi)]])
        return currents, int(sol.iterations), float(sol.residual), bool(sol.converged)


def _transport(labels, conductivity_by_label, voxel_size_m, axis, bulk_conductivity, rtol,
               maxiter, preconditioner, float64, lateral="noflux", solver="auto",
               criterion="flux", flux_tol=1e-2, check_every=10):
    solver = _check_solver(solver, float64, lateral)
    if solver == "lean":
        from ssbx.engine.observables.tortuosity_lean import lean_transport

        return lean_transport(labels, conductivity_by_label, voxel_size_m, axis,
                              bulk_conductivity, rtol=rtol, maxiter=maxiter,
                              preconditioner=preconditioner, lateral=lateral,
                              criterion=criterion, flux_tol=flux_tol, check_every=check_every)
    if preconditioner is None:
        preconditioner = "fft"
    lab = check_labels(labels)
    table = _check_conductivities(conductivity_by_label)
    h = _check_voxel_size(voxel_size_m)
    ax = _check_axis(axis, lab.ndim)
    sigma = table[lab]
    conducting = sigma > 0
    eps = float(conducting.mean())
    if bulk_conductivity is None:
        sigma_bulk = float(sigma[conducting].mean()) if eps > 0 else 0.0
    else:
        sigma_bulk = float(bulk_conductivity)
        if not math.isfinite(sigma_bulk) or sigma_bulk <= 0:
            raise ConfigError(f"bulk_conductivity = {bulk_conductivity}; valid: finite and > 0 (S/m)")

    n = lab.shape[ax]
    area = float(np.prod([lab.shape[a] for a in range(lab.ndim) if a != ax])) * h ** (lab.ndim - 1)
    length = n * h
    if eps == 0:
        return TransportResult(ax, 0.0, 0.0, sigma_bulk, math.inf, 0.0, 0, 0.0, True, 0.0)
    # Normalise by the largest conductivity for the solve (results scale linearly).
    smax = float(sigma.max())
    currents, iters, resid, conv = _solve_axis(sigma / smax, h, ax, rtol, maxiter,
                                               preconditioner, float64, lateral)
    currents = currents * smax
    i_mean = float(currents.mean())
    imbalance = float(np.max(np.abs(currents - i_mean)) / abs(i_mean)) if i_mean != 0 else 0.0
    sigma_eff = max(i_mean, 0.0) * length / (area * 1.0)
    tau = eps * sigma_bulk / sigma_eff if sigma_eff > 0 else math.inf
    # 2D volumes: I is per unit depth (A/m) and the cross-section is a length (m).
    return TransportResult(ax, sigma_eff, eps, sigma_bulk, tau, i_mean, iters, resid, conv,
                           imbalance)


def _check_solver(solver, float64, lateral):
    if solver not in ("auto", "lean", "reference"):
        raise ConfigError(f"solver = {solver!r}; valid: 'auto', 'lean', 'reference'")
    if lateral not in ("noflux", "periodic"):
        raise ConfigError(f"lateral = {lateral!r}; valid: 'noflux', 'periodic'")
    if solver == "auto":
        return "reference" if float64 else "lean"
    if solver == "lean" and float64:
        raise ConfigError("solver = 'lean' with float64 = True; valid: the lean solver is "
                          "float32 only (use solver = 'reference' for float64)")
    return solver


def effective_conductivity(labels, conductivity_by_label, voxel_size_m, axis=0, *, rtol=1e-6,
                           maxiter=5000, preconditioner=None, float64=False, solver="auto",
                           criterion="flux", flux_tol=1e-2):
    """Effective conductivity σ_eff (S/m) of a labelled volume along ``axis``.

    Args:
        labels: 2D or 3D integer array of voxel labels 0..6 (axis 0 = x).
        conductivity_by_label: mapping label -> σ (S/m, ≥ 0); labels not listed do not
            conduct.
        voxel_size_m: voxel edge length (m, > 0). σ_eff does not depend on it.
        axis: 0/1/2 or "x"/"y"/"z".
        rtol, maxiter, preconditioner: passed to the conduction solver (preconditioner
            default: "multigrid" for the lean solver on a CPU from 10⁶ voxels on, "jacobi" below and on a GPU;
            "fft" for the reference one).
        float64: solve in float64 (default float32).
        solver: "auto" (default: "lean" in float32, "reference" in float64), "lean"
            (:mod:`ssbx.kernels.transport_lean`, flux criterion, τ history) or
            "reference" (:func:`ssbx.kernels.conduction.solve_potential`, residual
            criterion only).
        criterion, flux_tol: lean solver only: stop on "flux" (default; plane-current
            spread and relative change of σ_eff ≤ flux_tol, default 1e-2 as TauFactor),
            "residual" (rtol) or "both".

    Raises:
        ConfigError (a ValueError): bad labels, conductivities, voxel size or axis.
    """
    return _transport(labels, conductivity_by_label, voxel_size_m, axis, None, rtol, maxiter,
                      preconditioner, float64, solver=solver, criterion=criterion,
                      flux_tol=flux_tol).effective_conductivity_S_m


def tortuosity(labels, conductivity_by_label, voxel_size_m, axis=0, *, bulk_conductivity=None,
               rtol=1e-6, maxiter=5000, preconditioner=None, float64=False, lateral="noflux",
               solver="auto", criterion="flux", flux_tol=1e-2, check_every=10):
    """Tortuosity factor τ = ε σ_bulk / σ_eff along ``axis`` (TauFactor convention).

    Same arguments as :func:`effective_conductivity`, plus ``bulk_conductivity``
    (S/m; default: volume-weighted mean σ of the conducting voxels, see module
    docstring). Returns a :class:`TransportResult` with σ_eff, ε, σ_bulk, τ, the
    current, solver iterations/residual and the plane-to-plane current imbalance.
    ``lateral="periodic"`` wraps the faces of the other axes (laterally periodic
    composites); the default "noflux" seals them. ``solver``, ``criterion``,
    ``flux_tol``: see :func:`effective_conductivity`; ``check_every``: iterations between
    checks of the lean solver's criterion and entries of τ's convergence history.
    """
    return _transport(labels, conductivity_by_label, voxel_size_m, axis, bulk_conductivity,
                      rtol, maxiter, preconditioner, float64, lateral, solver, criterion,
                      flux_tol, check_every)


# ----------------------------------------------------------------------------------
# File input
# ----------------------------------------------------------------------------------




# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------


def _parse_sigma(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--sigma {item!r}: expected LABEL=S_PER_M, e.g. --sigma 2=0.2")
        try:
            label = int(key.strip())
        except ValueError:
            raise ConfigError(f"--sigma {item!r}: label {key!r}; valid: integer 0..{MAX_LABEL}") from None
        try:
            out[label] = float(value)
        except ValueError:
            raise ConfigError(f"--sigma {item!r}: value {value!r}; valid: a number >= 0 (S/m)") from None
    return out


def add_parser(sub):
    """Register ``tortuosity`` on an argparse subparsers object; returns the parser."""
    p = sub.add_parser(
        "tortuosity",
        help="effective conductivity and tortuosity factor of a label volume",
        description=__doc__.split("CLI (``ssbx tortuosity``)")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _fill_parser(p)
    return p


def _fill_parser(p):
    p.add_argument("file", help="label volume: .npy (x, y, z) or .tif/.tiff stack (z, y, x)")
    p.add_argument("--phase", choices=sorted(PHASE_LABELS), default="ionic",
                   help="which conducting phase (default: ionic)")
    p.add_argument("--axis", choices=["x", "y", "z", "all"], default="all",
                   help="transport direction (default: all axes of the volume)")
    p.add_argument("--voxel-size-m", type=float, default=1e-6,
                   help="voxel edge length in m (reported; sigma_eff does not depend on it)")
    p.add_argument("--sigma", action="append", default=[], metavar="LABEL=S_PER_M",
                   help="conductivity of one label in S/m (repeatable); default 1 S/m for the "
                        "phase's labels")
    p.add_argument("--float64", action="store_true", help="solve in float64")
    p.add_argument("--rtol", type=float, default=1e-6, help="solver relative tolerance")
    p.add_argument("--solver", choices=["auto", "lean", "reference"], default="auto",
                   help="lean: float32, multigrid or Jacobi PCG, flux criterion (default unless "
                        "--float64); reference: the FFT-preconditioned conduction solver")
    p.add_argument("--criterion", choices=["flux", "residual", "both"], default="flux",
                   help="lean solver's stopping rule (default flux: plane-current spread and "
                        "change of sigma_eff <= --flux-tol)")
    p.add_argument("--flux-tol", type=float, default=1e-2,
                   help="flux criterion tolerance (default 1e-2, as TauFactor's conv_crit)")
    p.add_argument("--preconditioner", default=None,
                   choices=["jacobi", "multigrid", "fft", "none"],
                   help="lean: multigrid (CPU default from 1e6 voxels) | jacobi (default below and on a GPU); "
                        "reference: fft (default) | multigrid | jacobi | none")
    p.add_argument("--maxiter", type=int, default=20000, help="iteration cap (default 20000)")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="enable JAX's persistent compilation cache in DIR (later runs on the "
                        "same shapes skip compilation)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    return p


def run(args) -> int:
    """Execute the parsed ``tortuosity`` command; returns the exit code."""
    try:
        _check_solver_options(args)
        labels = check_labels(load_labels(args.file))
        table = {label: 1.0 for label in PHASE_LABELS[args.phase]}
        table.update(_parse_sigma(args.sigma))
        axes = list(range(labels.ndim)) if args.axis == "all" else [_check_axis(args.axis, labels.ndim)]
        if args.compile_cache:
            import jax

            jax.config.update("jax_compilation_cache_dir", str(args.compile_cache))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        results = [
            tortuosity(labels, table, args.voxel_size_m, ax, rtol=args.rtol, float64=args.float64,
                       solver=args.solver, criterion=args.criterion, flux_tol=args.flux_tol,
                       preconditioner=args.preconditioner, maxiter=args.maxiter)
            for ax in axes
        ]
    except ConfigError as err:
        print(f"ssbx tortuosity: invalid input: {err}", file=sys.stderr)
        return 2
    names = "xyz"
    print(f"ssbx tortuosity: {args.file}  shape {labels.shape}  phase {args.phase}  "
          f"sigma {table} S/m")
    print(f"{'axis':>4} {'eps':>8} {'sigma_eff [S/m]':>16} {'tau':>10} {'iters':>6} {'converged':>9}")
    for r in results:
        print(f"{names[r.axis]:>4} {r.volume_fraction:8.4f} {r.effective_conductivity_S_m:16.6g} "
              f"{r.tortuosity:10.5g} {r.iterations:6d} {str(r.converged):>9}")
    if args.json:
        payload = {
            "file": str(args.file),
            "shape": list(labels.shape),
            "phase": args.phase,
            "voxel_size_m": args.voxel_size_m,
            "conductivity_by_label_S_m": {str(k): v for k, v in table.items()},
            "results": {names[r.axis]: r.as_dict() for r in results},
        }
        payload["converged"] = all(r.converged for r in results)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    if not all(r.converged for r in results):
        print("ssbx tortuosity: not converged: the solver did not reach the tolerance; the values above "
              "are not results", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return 0


EXIT_NOT_CONVERGED = 5  # docs/errors_and_files.md


def _check_solver_options(args) -> None:
    """Refuse solver options that would make a "result" without solving (rtol = nan stops at 0 iterations)."""
    import math

    if not (math.isfinite(args.rtol) and 0 < args.rtol < 1):
        raise ConfigError(f"--rtol {args.rtol!r}: valid range is (0, 1)")
    if not (math.isfinite(args.flux_tol) and 0 < args.flux_tol < 1):
        raise ConfigError(f"--flux-tol {args.flux_tol!r}: valid range is (0, 1)")
    if args.maxiter < 1:
        raise ConfigError(f"--maxiter {args.maxiter!r}: valid: an integer >= 1")
    if not (math.isfinite(args.voxel_size_m) and args.voxel_size_m > 0):
        raise ConfigError(f"--voxel-size-m {args.voxel_size_m!r}: must be a finite number > 0")
    if args.json:
        from ssbx.engine.safe_files import check_writable_folder

        check_writable_folder(Path(args.json), "--json")


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m ssbx.engine.observables.tortuosity FILE ...``."""
    p = argparse.ArgumentParser(prog="ssbx tortuosity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _fill_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
