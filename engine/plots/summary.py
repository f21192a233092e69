"""Summary figures of a run file, labelled for a battery researcher.

Conventions on every figure: the stored field ``soc`` is the Li fraction x = c/c_max,
labelled "Li fraction x (1 = lithiated)" (for a cathode, charging *lowers* x); the state
of charge is shown only where the material defines it, as SOC = (x₀ − x)/(x₀ − x₁₀₀) with
``material.x_at_0_soc`` = x₀ and ``material.x_at_100_soc`` = x₁₀₀. Protocol steps are
named by kind and C-rate ("CC charge 1C", "CV 4.3 V", "rest", "CC discharge C/2") from
the scenario stored in the run file (``/config``), never "step 1".
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssbx.engine.io.run_file import RunData, load_run  # noqa: E402
from ssbx.engine.config.protocol import Step, parse_cycle  # noqa: E402
from ssbx.engine.plots.particles import has_particles, particle_figure_path, particles_png  # noqa: E402

X_LABEL = "Li fraction x (1 = lithiated)"
_KIND_COLOR = {"CC charge": "tab:red", "CV": "tab:orange", "rest": "0.6", "CC discharge": "tab:blue"}


def central_slice(field: np.ndarray) -> np.ndarray:
    """The z-midplane of a 3D field (the field itself in 2D), indexed [x, y]."""
    return field[..., field.shape[-1] // 2] if field.ndim == 3 else field


def rate_text(c_rate: float) -> str:
    """A C-rate as a battery person writes it: 1C, 2C, 0.5C, C/20."""
    if 0 < c_rate < 0.5 and abs(1 / c_rate - round(1 / c_rate)) < 1e-9:
        return f"C/{round(1 / c_rate)}"
    return f"{c_rate:.3g}C"


def step_label(step: Step) -> str:
    """"CC charge 1C", "CC discharge C/2", "CV 4.3 V" or "rest" for one protocol step."""
    if step.mode == "cc":
        return f"CC {'charge' if step.sign > 0 else 'discharge'} {rate_text(step.c_rate)}"
    if step.mode == "cv":
        return f"CV {step.voltage_V:g} V"
    return "rest"


def _kind(step: Step) -> str:
    if step.mode == "cc":
        return "CC charge" if step.sign > 0 else "CC discharge"
    return "CV" if step.mode == "cv" else "rest"


def protocol_steps(config: dict) -> list[Step]:
    """The steps of one protocol cycle of a cell run's stored scenario."""
    return parse_cycle(list(config["protocol"]["steps"]))


def particle_protocol_label(config: dict) -> str:
    """A prescribed-flux particle run: "CC charge 1C (delithiation), 24 min"."""
    p = config["protocol"]
    charge = p.get("direction", "delithiation") == "delithiation"
    kind = "CC charge" if charge else "CC discharge"
    return (f"{kind} {rate_text(float(p['c_rate']))} ({'delithiation' if charge else 'lithiation'}), "
            f"{_duration(float(p['duration_s']))}")


def _duration(t_s: float) -> str:
    if t_s >= 7200:
        return f"{t_s / 3600:.3g} h"
    if t_s >= 120:
        return f"{t_s / 60:.3g} min"
    return f"{t_s:.3g} s"


def soc_window(config: dict) -> tuple[float, float] | None:
    """(x₀, x₁₀₀) of the material if the scenario defines its SOC window, else None."""
    m = config.get("material", {})
    if m.get("x_at_0_soc") is None or m.get("x_at_100_soc") is None:
        return None
    return float(m["x_at_0_soc"]), float(m["x_at_100_soc"])


def _soc_axis(ax, config: dict, per_unit: float = 1.0, location="right"):
    """A right-hand SOC axis for an axis that shows the Li fraction x (only with a window);
    ``per_unit``: x per unit of the plotted quantity (1 when the axis shows x itself)."""
    window = soc_window(config)
    if window is None:
        return None
    x0, x100 = window
    sec = ax.secondary_yaxis(location, functions=(lambda v: (x0 - v * per_unit) / (x0 - x100),
                                                  lambda s: (x0 - s * (x0 - x100)) / per_unit))
    sec.set_ylabel(f"SOC = (x₀ − x)/(x₀ − x₁₀₀), x₀ = {x0:g}, x₁₀₀ = {x100:g}", fontsize=8)
    return sec


def _segments(ts: dict) -> list[tuple[int, int, np.ndarray]]:
    """(cycle, step within the cycle, row indices) of each contiguous protocol step in the
    timeseries. Host-driver files count steps over all cycles; taken modulo the cycle."""
    step = ts["step_index"].astype(int)
    cycle = ts["cycle_index"].astype(int) if "cycle_index" in ts else np.zeros_like(step)
    change = np.flatnonzero((np.diff(step) != 0) | (np.diff(cycle) != 0)) + 1
    bounds = np.concatenate([[0], change, [len(step)]])
    return [(int(cycle[a]), int(step[a]), np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _scale(values: np.ndarray, unit: str, prefixes=((1e-15, "f"), (1e-12, "p"), (1e-9, "n"), (1e-6, "µ"),
                                                    (1e-3, "m"), (1.0, ""))) -> tuple[float, str]:
    """A factor and a prefixed unit that put the largest |value| between 1 and 1000."""
    top = float(np.nanmax(np.abs(values))) if np.size(values) and np.isfinite(values).any() else 1.0
    factor, prefix = prefixes[-1]
    for f, p in prefixes:
        if top < 1000 * f:
            factor, prefix = f, p
            break
    return factor, f"{prefix}{unit}"


def summary_figure(run: RunData | str | Path, png_path: str | Path, max_slices: int = 4) -> Path:
    """Write the summary PNG of a run file (particle or cell run) and return its path."""
    if not isinstance(run, RunData):
        run = load_run(run)
    fig = cell_figure(run) if "voltage_V" in run.timeseries else particle_figure(run, max_slices)
    out = _finish(fig, png_path)
    if has_particles(run.path):  # composite-cathode cell: also <run>_particles.png
        particles_png(run.path, particle_figure_path(png_path))
    return out


def cell_summary_figure(run: RunData | str | Path, png_path: str | Path) -> Path:
    """Write the summary PNG of a cell run (see :func:`cell_figure`)."""
    if not isinstance(run, RunData):
        run = load_run(run)
    return _finish(cell_figure(run), png_path)


def particle_figure(run: RunData, max_slices: int = 4):
    """The particle-run summary as a matplotlib Figure (not saved).

    Top row: the mid-plane Li fraction x at up to ``max_slices`` snapshot times.
    Bottom row: mean x vs time (with the SOC axis where the material defines it); the
    per-grain mean x at each snapshot (median and 5–95 % band) for the grain-to-grain
    spread; with mechanics, the mid-plane von Mises and hydrostatic stress at the end.
    """
    soc = run.fields["soc"]
    t_snap = run.fields["t_s"]
    pick = np.unique(np.linspace(0, len(t_snap) - 1, min(max_slices, len(t_snap))).round().astype(int))
    fig = plt.figure(figsize=(3.4 * max(len(pick), 3), 6.8), constrained_layout=True)
    ncol = max(len(pick), 3) if "von_mises_Pa" not in run.fields else max(len(pick), 4)
    grid = fig.add_gridspec(2, ncol)
    extent_um = None
    im = None
    for col, i in enumerate(pick):
        ax = fig.add_subplot(grid[0, col])
        plane = central_slice(soc[i])
        n0, n1 = plane.shape
        extent_um = [0, n0 * run.voxel_size_m * 1e6, 0, n1 * run.voxel_size_m * 1e6]
        im = ax.imshow(plane.T, origin="lower", extent=extent_um, vmin=0, vmax=1, cmap="viridis")
        where = "start" if i == 0 else ("end" if i == len(t_snap) - 1 else "")
        ax.set_title(f"{where + ', ' if where else ''}t = {_duration(float(t_snap[i]))}", fontsize=10)
        ax.set_xlabel("x (µm)")
        if col == 0:
            ax.set_ylabel("y (µm)")
    mid = "mid-plane z" if soc.ndim == 4 else "2D"
    fig.colorbar(im, ax=fig.axes, label=f"{X_LABEL}, {mid}", shrink=0.8)

    has_stress = "von_mises_Pa" in run.fields
    if has_stress:
        spans = [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, ncol)]
    else:
        half = max(1, ncol // 2)
        spans = [slice(0, half), slice(half, ncol)]
    ts = run.timeseries
    ax = fig.add_subplot(grid[1, spans[0]])
    ax.plot(ts["t_s"] / 60, ts["mean_soc"], color="k")
    ax.set_xlabel("t (min)")
    ax.set_ylabel(f"mean {X_LABEL}", fontsize=9)
    ax.set_title("mean Li fraction of the particle", fontsize=10)
    ax.grid(alpha=0.3)
    _soc_axis(ax, run.config)

    ax = fig.add_subplot(grid[1, spans[1]])
    grain = run.grains.get("mean_soc")
    if grain is not None and grain.size:
        lo, med, hi = np.percentile(grain, [5, 50, 95], axis=1)
        ax.fill_between(t_snap[: len(med)] / 60, lo, hi, alpha=0.3, label="5–95 % of grains")
        ax.plot(t_snap[: len(med)] / 60, med, "o-", label="median grain")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("t (min)")
    ax.set_ylabel("per-grain mean Li fraction x", fontsize=9)
    ax.set_title("grain-to-grain spread", fontsize=10)
    ax.grid(alpha=0.3)

    if has_stress:
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
            ax.set_title(f"{label}\nend, t = {_duration(float(t_snap[last]))}", fontsize=9)
            ax.set_xlabel("x (µm)")
    _suptitle(fig, run, particle_protocol_label(run.config))
    return fig


def _map_times(run: RunData, segments, labels: list[str], max_maps: int = 4) -> list[tuple[int, str]]:
    """Snapshots to map, with their names: the start, the end of charge (the last charging
    step before the first discharge of the first cycle), further step ends, and the end."""
    t_snap = run.fields["t_s"]
    t = run.timeseries["t_s"]
    tol = 1e-6 * max(float(t[-1]), 1.0)
    named: list[tuple[int, str]] = [(0, "start")]
    charge_end = first_discharge = None
    for cycle, k, rows in segments:
        end = float(t[rows[-1]])
        hit = np.flatnonzero(np.abs(t_snap - end) <= tol)
        if not hit.size or hit[-1] == 0:
            continue
        i = int(hit[-1])
        cyc = f" (cycle {cycle + 1})" if run.config["protocol"].get("cycles", 1) > 1 else ""
        if cycle == 0 and first_discharge is None:
            if labels[k].startswith("CC discharge"):
                first_discharge = i
            elif labels[k] != "rest":
                charge_end = i  # the last charging step (CC or CV) before the first discharge
        named.append((i, f"end of {labels[k]}{cyc}"))
    last = len(t_snap) - 1
    if named[-1][0] != last:
        named.append((last, "end"))
    # one entry per snapshot (a snapshot can end a step and the run)
    seen, unique = set(), []
    for i, name in named:
        if i not in seen:
            seen.add(i)
            unique.append((i, name))
    if len(unique) <= max_maps:
        return unique
    keep = {0, len(unique) - 1}
    if charge_end is not None:
        keep.add([i for i, _ in unique].index(charge_end))
    others = [j for j in range(1, len(unique) - 1) if j not in keep]
    others.sort(key=lambda j: "end of rest" in unique[j][1])  # step ends under current first
    keep.update(others[: max(0, max_maps - len(keep))])
    return [unique[j] for j in sorted(keep)]


def cell_figure(run: RunData, max_maps: int = 4):
    """The cell-run summary as a matplotlib Figure (not saved).

    Top: voltage and current vs time with the protocol steps shaded and named by kind
    and C-rate; voltage vs capacity for each step; M_Li(t), the Li in the particle, with
    its mean Li fraction x. Below: x–z sections through the particle of the Li fraction
    x and of the interface current density at the start, the end of charge, further step
    ends and the end of the run.
    """
    ts = run.timeseries
    steps = protocol_steps(run.config)
    labels = [step_label(s) for s in steps]
    kinds = [_kind(s) for s in steps]
    n_cycle = len(steps)
    segments = [(c, k % n_cycle, rows) for c, k, rows in _segments(ts)]
    cycles = run.config["protocol"].get("cycles", 1)

    debonding = "gap_mean_m" in ts
    fig = plt.figure(figsize=(20 if debonding else 15, 15 if debonding else 12), constrained_layout=True)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 2.4 if debonding else 1.7])
    panels = top.subplots(1, 4 if debonding else 3)
    ax_v, ax_q, ax_m = panels[:3]
    t_h = ts["t_s"] / 3600

    # voltage and current vs time, steps shaded by kind
    ax_v.plot(t_h, ts["voltage_V"], color="k", lw=1.5, label="voltage")
    fa, fa_unit = _scale(ts["current_A"], "A")
    twin = ax_v.twinx()
    twin.plot(t_h, ts["current_A"] / fa, color="tab:purple", lw=1.0, alpha=0.8)
    twin.set_ylabel(f"current ({fa_unit}), > 0 = charge", color="tab:purple")
    shown = set()
    for _, k, rows in segments:
        a, b = t_h[max(rows[0] - 1, 0)], t_h[rows[-1]]
        lab = labels[k] if labels[k] not in shown else None
        shown.add(labels[k])
        ax_v.axvspan(a, b, color=_KIND_COLOR[kinds[k]], alpha=0.15, lw=0, label=lab)
    ax_v.set_xlabel("t (h)")
    ax_v.set_ylabel("cell voltage (V vs Li/Li⁺)")
    ax_v.set_title("voltage and current; protocol steps shaded")
    ax_v.legend(fontsize=7, loc="best")
    ax_v.grid(alpha=0.3)

    # voltage vs capacity, one curve per step that passes current
    fq, fq_unit = _scale(ts["charge_Ah"] if "charge_Ah" in ts else ts["current_A"] * ts["t_s"] / 3600, "Ah")
    for cycle, k, rows in segments:
        if kinds[k] == "rest":
            continue
        t_rows = ts["t_s"][rows]
        t_prev = ts["t_s"][rows[0] - 1] if rows[0] > 0 else t_rows[0]
        dt = np.diff(np.concatenate([[t_prev], t_rows]))
        # a row's current holds until the next row (it drove that interval)
        i_prev = ts["current_A"][np.concatenate([[max(rows[0] - 1, 0)], rows[:-1]])]
        q = np.cumsum(np.abs(i_prev) * dt) / 3600
        name = labels[k] + (f" (cycle {cycle + 1})" if cycles > 1 else "")
        ax_q.plot(q / fq, ts["voltage_V"][rows], color=_KIND_COLOR[kinds[k]],
                  ls="-" if cycle % 2 == 0 else "--", label=name)
    ax_q.set_xlabel(f"capacity passed in the step ({fq_unit})")
    ax_q.set_ylabel("cell voltage (V vs Li/Li⁺)")
    ax_q.set_title("voltage vs capacity, per step")
    ax_q.legend(fontsize=7, loc="best")
    ax_q.grid(alpha=0.3)

    # M_Li(t)
    if "li_mol" in ts:
        fm, fm_unit = _scale(ts["li_mol"], "mol")
        ax_m.plot(t_h, ts["li_mol"] / fm, color="k")
        ax_m.set_ylabel(f"Li in the particle M_Li ({fm_unit})")
        x0 = float(np.nanmean(run.fields["soc"][0]))
        li0 = float(ts["li_mol"][0])
        if li0 > 0 and np.isfinite(x0):
            per = x0 / (li0 / fm)  # mean x per plotted unit of M_Li (x is M_Li / (c_max V_active))
            sec = ax_m.secondary_yaxis("right", functions=(lambda m: m * per, lambda x: x / per))
            sec.set_ylabel(f"mean {X_LABEL}", fontsize=9)
            _soc_axis(ax_m, run.config, per, location=1.25)
    ax_m.set_xlabel("t (h)")
    ax_m.set_title("M_Li(t): Li in the active material")
    ax_m.grid(alpha=0.3)
    if debonding:
        _debonding_panel(panels[3], ts, t_h)

    # maps
    picks = _map_times(run, segments, labels, max_maps)
    gid = run.geometry["grain_id"]
    mid = gid.shape[1] // 2 if gid.ndim == 3 else None
    h_um = run.voxel_size_m * 1e6
    current = run.fields.get("interface_current_A_m2")
    lim = 1.0
    if current is not None and np.isfinite(current).any():
        lim = float(np.nanmax(np.abs(current))) or 1.0
    t_snap = run.fields["t_s"]
    rows_shown = [("soc", "viridis", (0, 1)), ("interface_current_A_m2", "coolwarm", (-lim, lim))]
    if debonding and "gap_m" in run.fields:
        gmax = max(float(np.nanmax(g)) if np.isfinite(g).any() else 0.0 for g in run.fields["gap_m"])
        rows_shown.append(("gap_m", "plasma", (0, gmax * 1e9 or 1.0)))
    axes = bottom.subplots(len(rows_shown), len(picks), squeeze=False)
    for col, (i, name) in enumerate(picks):
        for row, (field, cmap, vlim) in enumerate(rows_shown):
            ax = axes[row, col]
            if field not in run.fields:
                ax.set_axis_off()
                continue
            data = run.fields[field][i] * (1e9 if field == "gap_m" else 1.0)
            plane = data[:, mid, :] if mid is not None else data
            ext = [0, plane.shape[0] * h_um, 0, plane.shape[1] * h_um]
            im = ax.imshow(plane.T, origin="lower", extent=ext, cmap=cmap, vmin=vlim[0], vmax=vlim[1])
            if row == 0:
                ax.set_title(f"{name}\nt = {_duration(float(t_snap[i]))}", fontsize=9)
            else:
                ax.set_xlabel("x (µm)")
            if col == 0:
                ax.set_ylabel("z (µm), collector at 0")
            if col == len(picks) - 1:
                bottom.colorbar(im, ax=axes[row, :].tolist(), shrink=0.9, label=_MAP_LABELS[field])
    bottom.suptitle("x–z sections through the particle (mid-plane y)", fontsize=10)
    cyc = f" × {cycles} cycles" if cycles > 1 else ""
    _suptitle(fig, run, " → ".join(labels) + cyc)
    return fig


_MAP_LABELS = {"soc": X_LABEL, "interface_current_A_m2": "interface current density (A/m²), > 0 = charge",
               "gap_m": "interface gap ⟨g_n⟩₊ (nm)"}


def _debonding_panel(ax, ts, t_h):
    """D_G_ave and D_G_max (nm) and the damaged / debonded area fractions vs time."""
    ax.plot(t_h, ts["gap_mean_m"] * 1e9, color="k", label="D_G_ave (area mean)")
    ax.plot(t_h, ts["gap_max_m"] * 1e9, color="k", ls="--", label="D_G_max")
    ax.set_xlabel("t (h)")
    ax.set_ylabel("interface gap (nm)")
    twin = ax.twinx()
    twin.plot(t_h, ts["damaged_area_fraction"], color="tab:red", lw=1.0, label="damaged (d > 0)")
    twin.plot(t_h, ts["debonded_area_fraction"], color="tab:red", ls=":", lw=1.5, label="debonded (d ≥ 0.99)")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("area fraction of the interface", color="tab:red")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
    ax.set_title("interface debonding")
    ax.grid(alpha=0.3)


def _suptitle(fig, run: RunData, protocol: str):
    status = "" if run.status == "completed" else f"  [{run.status}]"
    fig.suptitle(f"{run.config['run']['name']}{status}: {protocol}")


def _finish(fig, png_path) -> Path:
    """Save and close."""
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
