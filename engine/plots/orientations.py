"""Pole figure of fitted vs true grain c axes (matplotlib, Agg backend).

The c axis of a transversely isotropic grain is an axis (±c), so every axis is drawn
by its representative on the upper hemisphere (c_z ≥ 0) and projected onto the unit
disc by the Lambert azimuthal equal-area projection about +z (Lambert 1772; the
standard "equal-area net" of texture analysis, e.g. Kocks, Tomé & Wenk, *Texture and
Anisotropy*, 1998, ch. 2):

    (X, Y) = (c_x, c_y) / √(1 + c_z),

which maps the pole c = e_z to the centre and the equator c_z = 0 to the unit circle,
and keeps areas (a uniform texture fills the disc uniformly). Axes near the equator
may appear at opposite sides of the rim for fitted and true (both are the same axis);
the connecting line is then omitted.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def equal_area(c: np.ndarray) -> np.ndarray:
    """(n, 2) Lambert equal-area coordinates of the upper-hemisphere representatives of
    the (n, 3) axes ``c`` (any length)."""
    c = np.asarray(c, np.float64)
    c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    c = np.where(c[:, 2:3] < 0, -c, c)
    return c[:, :2] / np.sqrt(1.0 + c[:, 2:3])


def plot_pole_figure(fitted: np.ndarray, png_path: str | Path, true: np.ndarray | None = None,
                     determined: np.ndarray | None = None, labels: bool = True, title: str = "") -> Path:
    """Pole figure (upper hemisphere, equal area, viewed down +z) of grain c axes.

    Args:
        fitted: (n, 3) fitted axes.
        png_path: output PNG.
        true: optional (n, 3) true axes; drawn as open circles joined to the fitted ones.
        determined: optional (n,) bool; undetermined grains are drawn grey.
        labels: write the grain index beside each fitted axis (coloured) and each true
            axis (black, below left), so pairs split across the rim can be matched.
        title: figure title.
    """
    fitted = np.asarray(fitted, np.float64)
    n = fitted.shape[0]
    det = np.ones(n, bool) if determined is None else np.asarray(determined, bool)
    fig, ax = plt.subplots(figsize=(5.6, 5.6), constrained_layout=True)
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(t), np.sin(t), color="k", lw=1)
    for polar_deg in (30, 60):  # circles of constant angle from +z
        r = np.sqrt(2) * np.sin(np.radians(polar_deg) / 2)
        ax.plot(r * np.cos(t), r * np.sin(t), color="0.85", lw=0.6)
    ax.plot([-1, 1], [0, 0], color="0.85", lw=0.6)
    ax.plot([0, 0], [-1, 1], color="0.85", lw=0.6)
    ax.text(1.04, 0, "x", va="center")
    ax.text(0, 1.04, "y", ha="center")
    pf = equal_area(fitted)
    if true is not None:
        true = np.asarray(true, np.float64)
        # align the sign of each fitted axis with the truth: same axis, drawn on the same side
        aligned = np.where(np.sum(fitted * true, axis=1, keepdims=True) < 0, -fitted, fitted)
        t_up = np.where(true[:, 2:3] < 0, -true, true)
        a_up = np.where(np.sum(aligned * t_up, axis=1, keepdims=True) < 0, -aligned, aligned)
        pt = equal_area(t_up)
        for g in range(n):
            if a_up[g, 2] >= 0:  # both on the upper hemisphere: join them
                ax.plot([pt[g, 0], pf[g, 0]], [pt[g, 1], pf[g, 1]], color="C0" if det[g] else "0.6", lw=0.8)
        ax.scatter(pt[:, 0], pt[:, 1], s=46, facecolors="none", edgecolors="k", label="true")
        if labels:
            for g in range(n):
                ax.annotate(str(g), pt[g], xytext=(-9, -9), textcoords="offset points", fontsize=6, color="k")
    ax.scatter(pf[det, 0], pf[det, 1], s=30, marker="x", color="C3", label="fitted (determined)")
    if (~det).any():
        ax.scatter(pf[~det, 0], pf[~det, 1], s=30, marker="x", color="0.55", label="fitted (undetermined)")
    if labels:
        for g in range(n):
            ax.annotate(str(g), pf[g], xytext=(3, 3), textcoords="offset points", fontsize=7,
                        color="C3" if det[g] else "0.55")
    ax.set_xlim(-1.12, 1.12)
    ax.set_ylim(-1.12, 1.12)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="lower left", fontsize=8, frameon=False, bbox_to_anchor=(-0.02, -0.04))
    ax.set_title(title or "c axes, upper hemisphere, equal-area projection (grey circles: 30°, 60° from z)",
                 fontsize=9)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def plot_orientation_residuals(problem, fit, png_path: str | Path, title: str = "") -> Path:
    """Residual maps (simulated − measured, SOC units) of an orientation fit: one row per
    measurement (beam axis), one column per time; pixels outside the fit mask blank.

    Args:
        problem: the :class:`~ssbx.engine.inverse.orientations.OrientationProblem`.
        fit: its :class:`~ssbx.engine.inverse.orientations.OrientationFit` (``fit.u``).
        png_path: output PNG.
    """
    simulated = problem.simulated_maps(fit.u)
    n_rows = len(problem.measurements)
    n_times = len(problem.setup.t_s)
    fig, axes = plt.subplots(n_rows, n_times, figsize=(3.2 * n_times, 2.9 * n_rows), squeeze=False,
                             constrained_layout=True)
    for b, (op, meas, mask, sim) in enumerate(zip(problem.operators, problem.measurements, problem.masks,
                                                  simulated)):
        res = np.where(mask, sim - meas.maps, np.nan)
        r = float(np.nanmax(np.abs(res))) if np.isfinite(res).any() else 1.0
        for k in range(n_times):
            ax = axes[b, k]
            image = res[k]
            if image.ndim == 3:  # a volume: its mid-plane normal to z
                image = image[:, :, image.shape[2] // 2]
            elif image.ndim == 1:
                image = image[:, None]
            im = ax.imshow(image.T, origin="lower", cmap="RdBu_r", vmin=-r, vmax=r)
            where = f"beam axis {'xyz'[op.beam_axis]}" if op.kind == "projection" else "volume (mid-slice)"
            ax.set_title(f"{where}: sim − meas, t = {problem.setup.t_s[k]:.4g} s", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8, label="Δx")
    fig.suptitle(title or f"residuals of the orientation fit (½ mean (r/σ)² = {fit.loss:.3g})", fontsize=9)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
