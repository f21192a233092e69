"""Figure of a reactive-contact fit (engine/inverse/reactive_contact.py): the surface
mask, fitted vs true, as a longitude–latitude map of the particle surface, and the
residual maps of every projection at every time (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def surface_coordinates(setup):
    """Longitude and latitude (degrees) of the candidate surface voxels, and their grain ids.

    Directions are taken from the centroid of the active voxels; latitude is measured
    from the x–y plane towards +z, longitude from +x towards +y. 2D particles get
    latitude 0.
    """
    faces = np.asarray(setup.geometry.face_count) > 0
    gid = np.asarray(setup.geometry.grain_id)
    idx = np.argwhere(faces).astype(np.float64)
    centre = np.argwhere(setup.active).mean(axis=0)
    d = idx - centre
    lon = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    if d.shape[1] == 3:
        lat = np.degrees(np.arctan2(d[:, 2], np.hypot(d[:, 0], d[:, 1])))
    else:
        lat = np.zeros(len(d))
    return lon, lat, gid[faces]


def plot_contact_fit(setup, fit, measured, png_path: str | Path, title: str = "") -> Path:
    """Surface maps (fitted w, true mask, classification) and residual maps.

    Args:
        setup: the :class:`~ssbx.engine.inverse.reactive_contact.ContactSetup`.
        fit: the :class:`~ssbx.engine.inverse.reactive_contact.ContactFit`.
        measured: the measurements (one MeasuredMaps per operator), for the residuals.
        png_path: output file.

    Top row: every candidate surface voxel at its longitude/latitude, coloured by the
    fitted weight of its grain, by the true mask (if known), and by the outcome
    (correct, wrong, undetermined by the Gauss–Newton analysis). Below: for each
    projection, simulated − measured at each time (SOC units), pixels outside the
    fit mask blank.
    """
    lon, lat, gid = surface_coordinates(setup)
    row_of = {int(g): i for i, g in enumerate(fit.grain_id)}
    rows = np.array([row_of.get(int(g), -1) for g in gid])
    keep = rows >= 0
    lon, lat, rows = lon[keep], lat[keep], rows[keep]
    n_times = len(setup.t_s)
    n_ops = len(setup.operators)
    ncols = max(3, n_times)
    fig, axes = plt.subplots(1 + n_ops, ncols, figsize=(3.4 * ncols, 2.9 * (1 + n_ops)), squeeze=False,
                             constrained_layout=True)
    size = max(6.0, 6000.0 / max(len(lon), 1))
    ax = axes[0, 0]
    sc = ax.scatter(lon, lat, c=fit.weight[rows], cmap="viridis", vmin=0, vmax=1, s=size, marker="s")
    fig.colorbar(sc, ax=ax, shrink=0.8, label="fitted weight w")
    ax.set_title("fitted contact weight", fontsize=9)
    ax = axes[0, 1]
    if fit.true_reactive is not None:
        sc = ax.scatter(lon, lat, c=fit.true_reactive[rows].astype(float), cmap="viridis", vmin=0, vmax=1,
                        s=size, marker="s")
        ax.set_title("true mask (1 = reactive)", fontsize=9)
    else:
        ax.set_title("true mask: not given", fontsize=9)
    ax = axes[0, 2]
    outcome = np.full(len(rows), 0.5)
    labels = ["undetermined", "wrong", "correct"]
    if fit.true_reactive is not None:
        right = fit.reactive == fit.true_reactive
        outcome = np.where(right[rows], 2.0, 1.0)
    else:
        outcome = np.full(len(rows), 2.0)
        labels[2] = "determined"
    if fit.determined is not None:
        outcome = np.where(fit.determined[rows], outcome, 0.0)
    cmap = matplotlib.colors.ListedColormap(["0.75", "tab:red", "tab:green"])
    ax.scatter(lon, lat, c=outcome, cmap=cmap, vmin=-0.5, vmax=2.5, s=size, marker="s")
    handles = [matplotlib.patches.Patch(color=c, label=lab) for c, lab in zip(("0.75", "tab:red", "tab:green"), labels)]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    acc = "" if fit.accuracy is None else f": {100 * fit.accuracy:.0f} % correct"
    ax.set_title(f"classification{acc}", fontsize=9)
    for ax in axes[0, :3]:
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
    for ax in axes[0, 3:]:
        ax.axis("off")
    for b, (op, meas, sim) in enumerate(zip(setup.operators, measured, fit.simulated)):
        mask = meas.mask & op.mask(setup.active)[None]
        res = np.where(mask, sim - meas.maps, np.nan)
        r = float(np.nanmax(np.abs(res))) if np.isfinite(res).any() else 1.0
        for k in range(ncols):
            ax = axes[1 + b, k]
            if k >= n_times:
                ax.axis("off")
                continue
            image = res[k] if res[k].ndim == 2 else res[k][:, None]
            im = ax.imshow(image.T, origin="lower", cmap="RdBu_r", vmin=-r, vmax=r)
            ax.set_title(f"beam axis {'xyz'[op.beam_axis]}: sim − meas, t = {setup.t_s[k]:.4g} s", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8, label="Δx")
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
