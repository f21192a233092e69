"""Low-memory tortuosity solve (the ``solver="lean"`` path of :mod:`.tortuosity`).

Same problem, definitions and result as :func:`ssbx.engine.observables.tortuosity.tortuosity`
(TauFactor convention, Cooper et al., SoftwareX 5, 203 (2016)): τ = ε σ_bulk / σ_eff.
What differs is how it is computed, to keep the memory and the time down (measured: docs/tortuosity.md):

* the host never builds float64 fields: ε and σ_bulk come from a histogram of the labels,
  the connectivity of the conducting voxels to the Dirichlet faces from
  ``scipy.ndimage.label`` (6-connectivity; labels joined across the wrap faces for
  ``lateral="periodic"``), and a binary volume (one conductivity) goes to the solver as a
  1-byte mask;
* the transport axis is moved to axis 0 (a copy of the 1- or 4-byte field), so that one
  compiled solver serves every axis of a cubic volume;
* the solve is :func:`ssbx.kernels.transport_lean.lean_transport_solve` (float32 PCG,
  face conductances on the fly, flux-uniformity or residual criterion, σ_eff history).
"""

from __future__ import annotations

import math

import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.volume import check_labels

__all__ = ["lean_transport", "connected_mask", "MULTIGRID_MIN_VOXELS", "default_preconditioner"]

# default preconditioner on a CPU: multigrid PCG from this many voxels on (about 100³),
# Jacobi below, where Jacobi's cheaper compilation outweighs its extra iterations. On a GPU
# the default stays Jacobi, the path measured there (21 B/voxel, docs/tortuosity.md);
# multigrid has not run on a GPU yet and needs about 1.7× the memory on the CPU (XLA's
# count: 38 against 22 B/voxel)
MULTIGRID_MIN_VOXELS = 1_000_000


def default_preconditioner(n_voxels: int, platform: str | None = None) -> str:
    """"multigrid" on a CPU for volumes of at least MULTIGRID_MIN_VOXELS, else "jacobi"
    (``platform``: JAX's default backend when None)."""
    if platform is None:
        import jax

        platform = jax.default_backend()
    return "multigrid" if platform == "cpu" and n_voxels >= MULTIGRID_MIN_VOXELS else "jacobi"


def connected_mask(conducting, periodic=False):
    """Conducting voxels connected (through faces) to the first or last layer along axis 0.

    Args:
        conducting: bool array (n0, n1[, n2]).
        periodic: the lateral axes wrap (faces between index 0 and n−1 connect).

    Returns:
        bool array of the same shape.
    """
    from scipy import ndimage

    lab, count = ndimage.label(conducting)
    if count == 0:
        return np.zeros(conducting.shape, bool)
    parent = np.arange(count + 1)
    if periodic:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components

        pairs = []
        for a in range(1, conducting.ndim):
            lo = np.take(lab, 0, axis=a).ravel()
            hi = np.take(lab, -1, axis=a).ravel()
            both = (lo > 0) & (hi > 0)
            pairs.append(np.stack([lo[both], hi[both]]))
        pairs = np.concatenate(pairs, axis=1)
        graph = sp.coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])),
                              shape=(count + 1, count + 1))
        _, parent = connected_components(graph, directed=False)
    keep = np.zeros(parent.max() + 1, bool)
    keep[parent[np.unique(lab[0])]] = True
    keep[parent[np.unique(lab[-1])]] = True
    keep[parent[0]] = False  # background
    seed = keep[parent]
    seed[0] = False
    return seed[lab]


def lean_transport(labels, conductivity_by_label, voxel_size_m, axis, bulk_conductivity, *,
                   rtol=1e-6, maxiter=5000, preconditioner=None, lateral="noflux",
                   criterion="flux", flux_tol=1e-2, check_every=10):
    """:class:`~ssbx.engine.observables.tortuosity.TransportResult` from the lean solver."""
    import jax.numpy as jnp

    from ssbx.engine.observables.tortuosity import (
        TransportResult,
        _check_axis,
        _check_conductivities,
        _check_voxel_size,
    )
    from ssbx.kernels.transport_lean import lean_transport_solve

    # labels are 0..MAX_LABEL (< 256): keep them as 1 byte, not check_labels' int64 copy
    # (8 B/voxel held through the solve; measured in docs/tortuosity.md)
    lab = check_labels(labels).astype(np.uint8)
    table = _check_conductivities(conductivity_by_label)
    h = _check_voxel_size(voxel_size_m)
    ax = _check_axis(axis, lab.ndim)
    if preconditioner is None:  # measured crossover on the 2-core CPU: docs/tortuosity.md
        preconditioner = default_preconditioner(lab.size)
    if preconditioner not in ("jacobi", "multigrid"):
        raise ConfigError(f"preconditioner = {preconditioner!r}; valid for the lean solver: "
                          "'jacobi', 'multigrid'")
    if criterion not in ("flux", "residual", "both"):
        raise ConfigError(f"criterion = {criterion!r}; valid: 'flux', 'residual', 'both'")
    for name, v in (("rtol", rtol), ("flux_tol", flux_tol)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v < 1):
            raise ConfigError(f"{name} = {v!r}; valid range (0, 1)")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ConfigError(f"maxiter = {maxiter!r}; valid: an integer >= 1")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ConfigError(f"check_every = {check_every!r}; valid: an integer >= 1")
    check_every = min(check_every, maxiter)

    counts = np.bincount(lab.ravel(), minlength=table.size)[: table.size]
    conducting_labels = table > 0
    n_total = lab.size
    n_cond = int(counts[conducting_labels].sum())
    eps = n_cond / n_total
    if bulk_conductivity is None:
        sigma_bulk = float((counts * table).sum() / n_cond) if n_cond else 0.0
    else:
        sigma_bulk = float(bulk_conductivity)
        if not math.isfinite(sigma_bulk) or sigma_bulk <= 0:
            raise ConfigError(f"bulk_conductivity = {bulk_conductivity}; valid: finite and > 0 (S/m)")
    n = lab.shape[ax]
    n_lat = n_total // n
    if n_cond == 0:
        return TransportResult(ax, 0.0, 0.0, sigma_bulk, math.inf, 0.0, 0, 0.0, True, 0.0,
                               "lean", criterion)

    moved = np.ascontiguousarray(np.moveaxis(lab, ax, 0))
    periodic = lateral == "periodic"
    live = connected_mask(conducting_labels[moved], periodic)
    smax = float(table.max())
    values = np.unique(table[conducting_labels])
    binary = values.size == 1
    if binary:
        s = live.astype(np.uint8)
    else:
        s = np.where(live, (table / smax).astype(np.float32)[moved], np.float32(0))
    ndim = lab.ndim
    del moved, live, lab
    s_dev = jnp.asarray(s)
    del s
    sol = lean_transport_solve(s_dev, rtol=float(rtol), flux_tol=float(flux_tol),
                               periodic=periodic, binary=binary,
                               preconditioner=preconditioner, criterion=criterion,
                               check_every=check_every, maxiter=maxiter)
    del s_dev
    currents = np.asarray(sol.currents, float)
    i_mean_s = float(currents.mean())
    # physical current: I = h · max σ · I' (A in 3D, A/m in 2D)
    i_mean = i_mean_s * h * smax
    imbalance = float(np.max(np.abs(currents - i_mean_s)) / abs(i_mean_s)) if i_mean_s else 0.0
    area = n_lat * h ** (ndim - 1)
    sigma_eff = max(i_mean, 0.0) * n * h / area
    tau = eps * sigma_bulk / sigma_eff if sigma_eff > 0 else math.inf
    hist = np.asarray(sol.history, float)
    keep = np.isfinite(hist)
    ratio = hist[keep]
    hist_tau = tuple(float(eps * sigma_bulk / (r * smax)) if r > 0 else math.inf for r in ratio)
    iters = tuple(int(i) * check_every for i in np.flatnonzero(keep))
    return TransportResult(
        ax, sigma_eff, eps, sigma_bulk, tau, i_mean, int(sol.iterations), float(sol.residual),
        bool(sol.converged), imbalance, "lean", criterion, iters, hist_tau,
        tuple(float(v) for v in np.asarray(sol.spread_history, float)[keep]),
        tuple(float(v) for v in np.asarray(sol.residual_history, float)[keep]),
    )
