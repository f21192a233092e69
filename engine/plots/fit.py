"""Diagnostic figures of a fit (matplotlib, Agg backend): maps and loss curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _image(a: np.ndarray) -> np.ndarray:
    """A 2D view of one map: itself (2D), the mid-plane along the last axis (3D), a
    row (1D)."""
    if a.ndim == 3:
        return a[..., a.shape[-1] // 2]
    if a.ndim == 1:
        return a[:, None]
    return a


def plot_maps(measured, simulated: np.ndarray, mask: np.ndarray, png_path: str | Path,
              title: str = "") -> Path:
    """Measured | simulated | residual (simulated − measured) for each time.

    ``measured`` is a :class:`~ssbx.engine.io.measurements.MeasuredMaps`; ``simulated``
    (n_times, *image) at the fitted parameters; pixels outside ``mask`` are blank.
    Maps are indexed [first image axis, second image axis] and drawn with the first
    axis horizontal; SOC is x = c/c_max. Volumes show their mid-plane along the last axis.
    """
    n = measured.n_times
    fig, axes = plt.subplots(n, 3, figsize=(9.6, 3.0 * n), squeeze=False, constrained_layout=True)
    extent = None
    meas_all = np.where(mask, measured.maps, np.nan)
    sim_all = np.where(mask, simulated, np.nan)
    lo, hi = np.nanmin([np.nanmin(meas_all), np.nanmin(sim_all)]), np.nanmax([np.nanmax(meas_all), np.nanmax(sim_all)])
    res_all = sim_all - meas_all
    r = np.nanmax(np.abs(res_all)) or 1.0
    for k in range(n):
        meas, sim, res = (_image(a[k]) for a in (meas_all, sim_all, res_all))
        extent = [0, meas.shape[0] * measured.pixel_size_m * 1e6, 0, meas.shape[1] * measured.pixel_size_m * 1e6]
        for col, (data, label, cmap, vmin, vmax) in enumerate((
            (meas, "measured", "viridis", lo, hi),
            (sim, "simulated (fit)", "viridis", lo, hi),
            (res, "simulated − measured", "RdBu_r", -r, r),
        )):
            ax = axes[k, col]
            im = ax.imshow(data.T, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{label}, t = {measured.t_s[k]:.4g} s", fontsize=9)
            ax.set_xlabel("µm")
            fig.colorbar(im, ax=ax, shrink=0.8, label="x = c/c_max" if col < 2 else "Δx")
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_loss(history: list[dict], png_path: str | Path, truth: dict | None = None) -> Path:
    """Loss vs iteration (log scale) and each parameter's trajectory (relative to its
    start, and to ``truth`` if given)."""
    it = np.array([h["iteration"] for h in history])
    loss = np.array([h["loss"] for h in history])
    names = list(history[0]["values"])
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4), constrained_layout=True)
    axes[0].semilogy(it, np.maximum(loss, 1e-300), "k.-")
    stages = [h["stage"] for h in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1] and stages[i - 1] != "start":
            axes[0].axvline(it[i] - 0.5, color="0.6", ls="--")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss ½ mean(r²)")
    axes[0].set_title("loss")
    for name in names:
        v = np.array([h["values"].get(name, np.nan) for h in history])
        ref = truth[name] if truth and name in truth else v[0]
        axes[1].semilogy(it, v / ref, ".-", label=name)
    axes[1].axhline(1.0, color="0.5", lw=0.8)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("value / truth" if truth else "value / start")
    axes[1].legend(fontsize=8)
    axes[1].set_title("parameters")
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_uncertainty(uncertainty: dict, png_path: str | Path) -> Path:
    """Relative standard deviation per parameter (log scale), undetermined ones in red."""
    params = uncertainty["parameters"]
    names = list(params)
    rel = np.array([min(params[n]["rel_std"], 1e6) for n in names])
    colors = ["tab:green" if params[n]["determined"] else "tab:red" for n in names]
    fig, ax = plt.subplots(figsize=(4.8, 3.2), constrained_layout=True)
    ax.bar(names, rel, color=colors)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set_ylabel("relative std (Laplace)")
    ax.set_title("identifiability (red: not determined)")
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
