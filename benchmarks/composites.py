"""Three NCM811 : Li6PS5Cl : carbon-fibre composites (docs/physics.md S4): 7:3:1, 7:3:0, 7:3:0.3.

For each mass ratio: generate a laterally periodic composite (engine.geometry.composite), then
run the network analysis (engine.observables.network): effective electronic and ionic conductivity
and tortuosity along x, y, z, percolation, interface areas, diffusion distances and the
per-particle impedance index. Also times the generation of a 256³ composite.

Intrinsic conductivities (S/m; sources in engine/observables/network.py DEFAULT_SIGMA_S_M):
Li6PS5Cl 0.2 (2 mS/cm), carbon fibre 1e3 (10 S/cm), NCM811 electronic 1e-3 (1e-5 S/cm).

Usage::

    python benchmarks/composites.py [--size 96] [--voxel-size 0.25e-6] [--no-256]

Writes benchmarks/results/composites_<device>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, device_slug  # noqa: E402

from ssbx.engine.geometry.composite import generate_composite  # noqa: E402
from ssbx.engine.geometry.microstructure import ACTIVE  # noqa: E402
from ssbx.engine.observables.network import analyze, json_ready  # noqa: E402

RECIPES = {
    "7:3:1": "Li+-deficient (carbon-rich)",
    "7:3:0": "e--deficient (no carbon)",
    "7:3:0.3": "balanced",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--voxel-size", type=float, default=0.25e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-256", action="store_true", help="skip the 256³ generation timing")
    args = p.parse_args(argv)

    info = device_info()
    slug = device_slug(info)
    out = {"device": info, "size": args.size, "voxel_size_m": args.voxel_size,
           "seed": args.seed, "composites": {}}
    volumes = {}
    for ratio, role in RECIPES.items():
        t0 = time.perf_counter()
        comp = generate_composite(size=args.size, voxel_size_m=args.voxel_size, ratios=ratio,
                                  seed=args.seed)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = analyze(comp.labels, args.voxel_size, comp.particle_id)
        t_an = time.perf_counter() - t0
        arrays = res.pop("_arrays")
        res["requested_fractions"] = comp.requested
        res["achieved_fractions"] = comp.achieved()
        res["n_particles"] = len(comp.particles["radius_m"])
        res["role"] = role
        res["time_generate_s"] = t_gen
        res["time_analyze_s"] = t_an
        out["composites"][ratio] = res
        volumes[ratio] = (comp, arrays)
        tr = res["transport"]
        print(f"{ratio:>8} ({role}): phi_active {res['achieved_fractions']['active']:.4f} "
              f"(req {comp.requested['active']:.4f}); sigma_e "
              + " ".join(f"{tr['electronic'][a]['sigma_eff_S_m']:.3g}" for a in "xyz")
              + " S/m; sigma_ion "
              + " ".join(f"{tr['ionic'][a]['sigma_eff_S_m']:.3g}" for a in "xyz")
              + f" S/m; gen {t_gen:.1f} s, analyze {t_an:.1f} s", flush=True)

    if not args.no_256:
        t0 = time.perf_counter()
        big = generate_composite(size=256, voxel_size_m=args.voxel_size, ratios="7:3:1",
                                 seed=args.seed)
        t_big = time.perf_counter() - t0
        out["generate_256"] = {"time_s": t_big, "achieved_fractions": big.achieved(),
                               "requested_fractions": big.requested,
                               "n_particles": len(big.particles["radius_m"]),
                               "n_grains": int(big.micro.n_grains)}
        print(f"256³ 7:3:1 generated in {t_big:.1f} s", flush=True)
        del big

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"composites_{slug}.json"
    path.write_text(json.dumps(json_ready(out), indent=1) + "\n")
    figure(volumes, out, RESULTS / f"composites_{slug}.png")
    print(f"wrote {path}")


def figure(volumes, out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["white", "tab:orange", "tab:blue", "black"])
    fig, ax = plt.subplots(2, 3, figsize=(13, 8))
    for k, (ratio, (comp, arrays)) in enumerate(volumes.items()):
        sl = comp.labels[:, :, comp.labels.shape[2] // 2].astype(float)
        ax[0, k].imshow(sl.T, origin="lower", cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        ax[0, k].set_title(f"{ratio}: mid-z slice\n(orange NCM, blue SE, black carbon)")
        ax[0, k].set_xticks([])
        ax[0, k].set_yticks([])
        act = comp.labels == ACTIVE
        for x, name in ((arrays["d_ion"], "d_ion (to SE)"), (arrays["d_e"], "d_e (to carbon)")):
            v = x[act]
            v = v[np.isfinite(v)] * 1e6
            if v.size:
                ax[1, k].hist(v, bins=40, histtype="step", density=True, label=name)
        ax[1, k].set_xlabel("distance from active voxel to contact (µm)")
        ax[1, k].set_title(f"{ratio}: diffusion distances")
        ax[1, k].legend(fontsize=8)
    fig.suptitle("NCM811 : Li6PS5Cl : carbon fibre composites "
                 f"({out['size']}³ voxels of {out['voxel_size_m'] * 1e6:.2f} µm)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ratios = list(out["composites"])
    se = [np.mean([out["composites"][r]["transport"]["electronic"][a]["sigma_eff_S_m"]
                   for a in "xyz"]) for r in ratios]
    si = [np.mean([out["composites"][r]["transport"]["ionic"][a]["sigma_eff_S_m"]
                   for a in "xyz"]) for r in ratios]
    xx = np.arange(len(ratios))
    ax.bar(xx - 0.2, se, 0.4, label="electronic σ_eff")
    ax.bar(xx + 0.2, si, 0.4, label="ionic σ_eff")
    ax.set_yscale("log")
    ax.set_xticks(xx, ratios)
    ax.set_ylabel("effective conductivity (S/m), mean of x, y, z")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path.with_name(path.stem + "_sigma.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
