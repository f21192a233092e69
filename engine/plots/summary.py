"""Summary figure of a run: SOC slices over time, mean SOC vs time, per-grain spread, stress."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssbx.engine.io.run_file import RunData, load_run  # noqa: E402


def central_slice(field: np.ndarray) -> np.ndarray:
    """The z-midplane of a 3D field (the field itself in 2D), indexed [x, y]."""
    return field[..., field.shape[-1] // 2] if field.ndim == 3 else field


def summary_figure(run: RunData | str | Path, png_path: str | Path, max_slices: int = 4) -> Path:
    """Write the summary PNG of a run file and return its path.

    Top row: the mid-plane SOC (x = c/c_max) at up to ``max_slices`` snapshot times.
    Bottom row: mean SOC vs time; per-grain mean SOC at each snapshot (median and
    5–95 % band) to show the grain-to-grain spread; if the run solved mechanics, the
    mid-plane von Mises and hydrostatic stress at the last snapshot.
    """
    if not isinstance(run, RunData):
        run = load_run(run)
    if "voltage_V" in run.timeseries:
        return cell_summary_figure(run, png_path)
    soc = run.fields["soc"]
    t_snap = run.fields["t_s"]
    pick = np.unique(np.linspace(0, len(t_snap) - 1, min(max_slices, len(t_snap))).round().astype(int))
    fig = plt.figure(figsize=(3.2 * len(pick), 6.4), constrained_layout=True)
    grid = fig.add_gridspec(2, len(pick))
    extent_um = None
    for col, i in enumerate(pick):
        ax = fig.add_subplot(grid[0, col])
        plane = central_slice(soc[i])
        n0, n1 = plane.shape
        extent_um = [0, n0 * run.voxel_size_m * 1e6, 0, n1 * run.voxel_size_m * 1e6]
        im = ax.imshow(plane.T, origin="lower", extent=extent_um, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"t = {t_snap[i]:.0f} s")
        ax.set_xlabel("x (µm)")
        if col == 0:
            ax.set_ylabel("y (µm)")
    fig.colorbar(im, ax=fig.axes, label="SOC x = c/c_max (mid-plane)", shrink=0.8)

    has_stress = "von_mises_Pa" in run.fields
    ncol = len(pick)
    if has_stress and ncol >= 4:
        spans = [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, ncol)]
    else:
        half = max(1, ncol // 2)
        spans = [slice(0, half), slice(half, ncol)]
    ax = fig.add_subplot(grid[1, spans[0]])
    ts = run.timeseries
    ax.plot(ts["t_s"], ts["mean_soc"], color="k")
    ax.set_xlabel("t (s)")
    ax.set_ylabel("mean SOC x")
    ax.set_title("mean SOC of the particle")
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[1, spans[1]])
    grain = run.grains.get("mean_soc")
    if grain is not None and grain.size:
        lo, med, hi = np.percentile(grain, [5, 50, 95], axis=1)
        ax.fill_between(t_snap[: len(med)], lo, hi, alpha=0.3, label="5–95 % of grains")
        ax.plot(t_snap[: len(med)], med, "o-", label="median grain")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("t (s)")
    ax.set_ylabel("per-grain mean SOC")
    ax.set_title("grain-to-grain spread")
    ax.grid(alpha=0.3)

    if has_stress and len(spans) == 4:
        last = len(run.fields["von_mises_Pa"]) - 1
        for span, name, label, cmap in (
            (spans[2], "von_mises_Pa", "von Mises (GPa)", "magma"),
            (spans[3], "hydrostatic_Pa", "hydrostatic (GPa)", "RdBu_r"),
        ):
            ax = fig.add_subplot(grid[1, span])
            plane = central_slice(run.fields[name][last]) / 1e9
            if name == "hydrostatic_Pa":
                lim = np.nanmax(np.abs(plane)) or 1.0
                im = ax.imshow(plane.T, origin="lower", extent=extent_um, cmap=cmap, vmin=-lim, vmax=lim)
            else:
                im = ax.imshow(plane.T, origin="lower", extent=extent_um, cmap=cmap)
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{label}, t = {t_snap[last]:.0f} s", fontsize=9)
            ax.set_xlabel("x (µm)")
    return _finish(fig, run, png_path)


def cell_summary_figure(run: RunData, png_path: str | Path) -> Path:
    """Cell runs: voltage and current vs time, voltage vs capacity, SOC and interface
    current density mid-planes (x–z section through the particle) at the last snapshot."""
    ts = run.timeseries
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(ts["t_s"] / 3600, ts["voltage_V"], color="k")
    ax.set_xlabel("t (h)")
    ax.set_ylabel("cell voltage (V vs Li)")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(ts["t_s"] / 3600, ts["current_A"] * 1e9, color="tab:blue", alpha=0.6)
    twin.set_ylabel("current (nA), > 0 = charge", color="tab:blue")
    ax.set_title("voltage and current")

    ax = axes[0, 1]
    step = ts["step_index"].astype(int)
    for k in np.unique(step):
        sel = step == k
        q = np.cumsum(np.abs(ts["current_A"][sel]) * np.diff(np.concatenate([[ts["t_s"][sel][0]], ts["t_s"][sel]])))
        if np.max(np.abs(ts["current_A"][sel])) < 1e-6 * np.max(np.abs(ts["current_A"])):
            continue  # rest
        ax.plot(q / 3.6e-9, ts["voltage_V"][sel], label=f"step {k + 1}")
    ax.set_xlabel("capacity in step (nAh)")
    ax.set_ylabel("voltage (V)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("voltage vs capacity")

    last = len(run.fields["t_s"]) - 1
    gid = run.geometry["grain_id"]
    mid = gid.shape[1] // 2 if gid.ndim == 3 else None
    for ax, name, label, cmap in ((axes[1, 0], "soc", "SOC x", "viridis"),
                                  (axes[1, 1], "interface_current_A_m2", "interface current (A/m²)", "coolwarm")):
        field = run.fields[name][last]
        plane = field[:, mid, :] if mid is not None else field
        h_um = run.voxel_size_m * 1e6
        ext = [0, plane.shape[0] * h_um, 0, plane.shape[1] * h_um]
        if name == "interface_current_A_m2":
            lim = np.nanmax(np.abs(plane)) if np.isfinite(plane).any() else 1.0
            im = ax.imshow(plane.T, origin="lower", extent=ext, cmap=cmap, vmin=-lim, vmax=lim)
        else:
            im = ax.imshow(plane.T, origin="lower", extent=ext, cmap=cmap, vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("z (µm), collector at 0")
        ax.set_title(f"{label}, t = {run.fields['t_s'][last]:.0f} s")
    return _finish(fig, run, png_path)


def _finish(fig, run: RunData, png_path) -> Path:
    """Title with the run name (and its status unless completed), save, close."""
    status = "" if run.status == "completed" else f"  [{run.status}]"
    fig.suptitle(f"{run.config['run']['name']}{status}")
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
