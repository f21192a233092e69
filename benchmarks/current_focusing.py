"""Scenario S3: 2D cell-scale current focusing with Li plating (docs/current_focusing.md).

Four cases on the 420 × 250 µm cell (Li | 100 µm Li6PS5Cl | five rows of 10 µm particles),
charging at 100 A/m² for 60 s: all particles active; the central third inactive; both
outer thirds inactive (only the central third active); all active with one elliptical
Li protrusion (20 µm long, 10 µm wide) into the separator at x = 210 µm.

Usage::

    python benchmarks/current_focusing.py [--voxel-um 2.0]

Writes benchmarks/results/current_focusing_<device>.json and .png (φ_e, |j|, plating current
density along the anode and von Mises stress in the SE per case).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, device_slug  # noqa: E402

CASES = {
    "all_active": dict(inactive="none"),
    "centre_inactive": dict(inactive="center", inactive_fraction=1.0 / 3.0),
    "sides_inactive": dict(inactive="sides", inactive_fraction=2.0 / 3.0),
    "protrusion": dict(inactive="none", protrusions=[[210.0, 20.0, 5.0]]),
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxel-um", type=float, default=2.0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from ssbx.engine.runs import current_focusing as cf

    info = device_info()
    out = dict(device=info, voxel_um=args.voxel_um, cases={})
    fields_all = {}
    for name, geo in CASES.items():
        t0 = time.perf_counter()
        fields, summary, _ = cf.run_focusing({**geo, "voxel_um": args.voxel_um}, cf.make_params())
        summary["wall_s"] = time.perf_counter() - t0
        out["cases"][name] = dict(geometry=geo, **summary)
        fields_all[name] = fields
        print(name, json.dumps({k: summary[k] for k in ("plating_peak_to_mean", "plating_min_to_mean",
                                                          "von_mises_max_SE_Pa", "wall_s")}))
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"current_focusing_{device_slug(info)}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2))
    _figure(fields_all, stem.with_suffix(".png"))
    print(stem.with_suffix(".json"), stem.with_suffix(".png"))


def _figure(fields_all, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(fields_all)
    fig, axes = plt.subplots(4, n, figsize=(4.2 * n, 12), constrained_layout=True)
    for col, (name, f) in enumerate(fields_all.items()):
        x = f["x_um"]
        h = x[1] - x[0]
        ext = [0, x[-1] + h / 2, 0, f["labels"].shape[1] * h]
        j = np.hypot(*f["current_density"])
        for row, (data, label) in enumerate([(f["phi_e"] * 1e3, "φ_e (mV)"), (j, "|j| (A/m²)"),
                                             (f["von_mises_Pa"] / 1e6, "von Mises (MPa)")]):
            ax = axes[[0, 1, 3][row], col]
            im = ax.imshow(data.T, origin="lower", extent=ext, aspect="equal", cmap="viridis",
                           vmax=np.nanpercentile(data, 99.5) if row else None)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("x (µm)")
            ax.set_ylabel("z, stack (µm)")
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax = axes[2, col]
        ax.plot(x, f["plating_current_density"])
        ax.axhline(100.0, color="k", lw=0.5, ls="--")
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("plating current density (A/m²)")
        ax2 = ax.twinx()
        ax2.plot(x, f["plated_thickness_m"] * 1e6, alpha=0)
        ax2.set_ylabel("plated Li after 60 s (µm)")
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
