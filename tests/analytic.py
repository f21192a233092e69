"""Analytic reference solutions used by the tests (independent of ssbx code)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq


def tan_roots(n: int) -> np.ndarray:
    """First n positive roots of α cot α = 1 (i.e. tan α = α), one in each (kπ, kπ + π/2)."""
    roots = []
    for k in range(1, n + 1):
        lo, hi = k * np.pi + 1e-12, k * np.pi + np.pi / 2 - 1e-12
        roots.append(brentq(lambda a: np.sin(a) - a * np.cos(a), lo, hi))
    return np.array(roots)


def sphere_constant_influx(r, t, a, diffusivity, influx, n_terms=200):
    """Concentration rise c − c0 in a sphere of radius a under a constant influx F0.

    Crank, *The Mathematics of Diffusion* (2nd ed., 1975), §6.3, eq. (6.44):

        c − c0 = (F0 a / D) [ 3Dt/a² + r²/(2a²) − 3/10
                 − (2a/r) Σ_n exp(−D α_n² t/a²) sin(α_n r/a) / (α_n² sin α_n) ],

    α_n the positive roots of α cot α = 1. ``influx`` F0 is the flux density into the
    sphere (concentration units × m/s). ``r`` may be 0 (limit sin(αr/a)·a/r → α).
    """
    r = np.asarray(r, dtype=float)
    alpha = tan_roots(n_terms)
    rho = r / a
    tau = diffusivity * t / a**2
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(
            rho[..., None] > 1e-12,
            np.sin(alpha * rho[..., None]) / np.maximum(rho[..., None], 1e-300),
            alpha,
        )
    series = np.sum(np.exp(-alpha**2 * tau) * ratio / (alpha**2 * np.sin(alpha)), axis=-1)
    return (influx * a / diffusivity) * (3 * tau + 0.5 * rho**2 - 0.3 - 2 * series)
