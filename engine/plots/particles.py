"""The per-particle figure of a composite-cathode cell run (``<run>_particles.png``).

Reads the groups written by engine/runs/particle_output.py (docs/file_format.md):
per-particle Li fraction and current against time (coloured by depth below the
separator), the particles' SOC change and charge polarisation against their size and
depth with Pearson's r, and the TXM-like projections of x at the end of the run (beam
along z, the electrode seen from the separator; beam along x, a cross-section).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssbx.engine.io.run_file import open_run_file  # noqa: E402

X_LABEL = "Li fraction x (1 = lithiated)"


def has_particles(path) -> bool:
    """Whether the run file holds per-particle output (a composite-cathode cell)."""
    with h5py.File(path, "r") as f:
        return "particles" in f and "soc" in f["particles"]


def particle_figure_path(png_path) -> Path:
    """``run.png`` → ``run_particles.png``."""
    p = Path(png_path)
    return p.with_name(p.stem + "_particles.png")


def particles_png(run_path, png_path) -> Path:
    """Write the per-particle PNG of the run file ``run_path`` and return its path."""
    with open_run_file(run_path) as f:
        g = f["particles"]
        t = g["t_s"][...]
        soc, cur, pol = g["soc"][...], g["current_A"][...], g["polarisation_norm"][...]
        depth = g["table/depth_m"][...]
        radius = g["table/equivalent_radius_m"][...]
        corr = json.loads(g.attrs.get("correlations_json", "{}"))
        h = float(f["geometry"].attrs["voxel_size_m"])
        top = f["txm/top"][-1] if "txm/top" in f else None
        side = f["txm/side"][-1] if "txm/side" in f else None
    fig, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    span = max(float(np.nanmax(depth)), 1e-30) if np.isfinite(depth).any() else 1.0
    colours = [cmap(float(d) / span) if np.isfinite(d) else "0.5" for d in depth]
    order = np.argsort(t, kind="stable")
    for p in range(soc.shape[1]):
        axes[0, 0].plot(t[order] / 60, soc[order, p], color=colours[p], lw=1)
        axes[0, 1].plot(t[order] / 60, cur[order, p] * 1e9, color=colours[p], lw=1)
    axes[0, 0].set(xlabel="t (min)", ylabel=f"particle mean {X_LABEL}", title="per-particle Li fraction")
    axes[0, 1].set(xlabel="t (min)", ylabel="particle current (nA, > 0 = delithiation)",
                   title="per-particle current (colour: depth)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, span * 1e6))
    fig.colorbar(sm, ax=axes[0, 1], label="depth below separator (µm)")
    delta = soc[order[0]] - soc[order[-1]]  # Li removed since the first row
    last_pol = pol[order[-1]]
    for ax, xs, name, key in ((axes[0, 2], radius * 1e6, "equivalent radius (µm)", "radius"),
                              (axes[1, 0], depth * 1e6, "depth below separator (µm)", "depth")):
        ax.scatter(xs, delta, s=18, color="tab:red", label="Li removed x̄(0) − x̄")
        ax2 = ax.twinx()
        ax2.scatter(xs, last_pol, s=14, marker="^", color="tab:blue", label="polarisation |Δr|/r")
        ax2.set_ylabel("charge polarisation |r_c − r_g| / r_eq", color="tab:blue")
        r1 = corr.get(f"pearson_soc_change_vs_{key}", float("nan"))
        r2 = corr.get(f"pearson_polarisation_vs_{key}", float("nan"))
        ax.set(xlabel=name, ylabel="Li removed: particle mean x, start − end",
               title=f"Pearson r: Li removed {r1:.2f}, polarisation {r2:.2f}")
    for ax, image, title, labels in ((axes[1, 1], top, "TXM projection, beam ∥ z (end)", ("x (µm)", "y (µm)")),
                                     (axes[1, 2], side, "TXM projection, beam ∥ x (end)", ("y (µm)", "z (µm)"))):
        if image is None:
            ax.set_axis_off()
            continue
        extent = [0, image.shape[0] * h * 1e6, 0, image.shape[1] * h * 1e6]
        im = ax.imshow(image.T, origin="lower", extent=extent, cmap="viridis")
        ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
        fig.colorbar(im, ax=ax, label=f"projected {X_LABEL}", shrink=0.8)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
