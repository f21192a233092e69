"""Write notebooks/inverse_contact.ipynb (without outputs) with nbformat.

Run:  python notebooks/build_inverse_contact.py
The notebook is executed by tests/test_notebooks.py; edit this script, not the .ipynb.
"""


from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell("""\
# Which surface grains are in contact with the electrolyte?

In a composite cathode only part of a secondary particle's surface touches the solid
electrolyte (the partial-contact question of the polycrystal literature: 66.7 % of the
surface grains reactive instead of 100 %). Under a prescribed current the grains in
contact take all of it, so they empty faster, and the SOC maps show where they are. This
notebook recovers the reactive mask — one weight per surface grain — from SOC projections
at three times, by gradient descent through the differentiable particle simulator, and
reports which grains the maps cannot classify.

It runs in CI at a small size (a 1 µm particle on a 14³ grid). Method and measured accuracy
on a 24³, 60-grain particle: docs/inverse_contact.md."""),
    new_code_cell("""\
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.inverse.reactive_contact import (ContactProblem, fit_reactive_contact, make_contact_setup,
                                                  synthetic_contact_maps)
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.engine.plots.contact import plot_contact_fit

out = Path(tempfile.mkdtemp(prefix="ssbx_contact_"))"""),
    new_markdown_cell("""\
## The particle and the truth

A Voronoi polycrystal of 12 grains with random orientations (known to the fit, e.g. from
tomography and EBSD), NCM622 diffusivities D1 = D2 = 5e-15 m²/s, D3 = 1e-20 m²/s, delithiated
at 10C from x = 0.95. The truth: two thirds of its surface grains are in contact
(`reactive_fraction = 2/3`, chosen by the generator). The fit knows the total current but
not where it enters."""),
    new_code_cell("""\
micro = polycrystalline_particle(0.5e-6, 1e-7, n_grains=12, reactive_fraction=2 / 3, seed=0)
operators = [ObservationOperator("projection", beam_axis=2, min_thickness_voxels=2)]
setup = make_contact_setup(micro, [5e-15, 5e-15, 1e-20], 49214.0, x_initial=0.95, c_rate=10.0, sign=-1,
                           t_s=[10.0, 20.0, 30.0], operators=operators)
truth = micro.reactive_grains
print("grid", micro.labels.shape, "|", setup.n_surface, "surface grains,",
      int(truth[setup.surface_grains].sum()), "of them reactive |", setup.n_steps, "steps")"""),
    new_markdown_cell("""\
## A synthetic measurement

Projections along z at 10, 20 and 30 s with Gaussian noise σ = 0.005. The reactive grains
empty from their surface; the blocked ones only through their neighbours."""),
    new_code_cell("""\
measured = synthetic_contact_maps(setup, truth, noise_std=0.005, seed=1)
m = measured[0]
fig, axes = plt.subplots(1, 3, figsize=(9.6, 3), constrained_layout=True)
for ax, t, image in zip(axes, m.t_s, m.maps):
    im = ax.imshow(image.T, origin="lower", vmin=np.nanmin(m.maps), vmax=np.nanmax(m.maps))
    ax.set_title(f"measured projection, t = {t:.0f} s", fontsize=9)
fig.colorbar(im, ax=axes, label="x = c/c_max")
plt.show()"""),
    new_markdown_cell("""\
## Fit: a relaxed mask that conserves the current

Each surface grain g gets a weight w_g = sigmoid(s_g) in (0, 1) multiplying its reactive
surface; the prescribed current is redistributed over the weighted surface, so every mask
carries the same total current. All weights start at 1/2 (no preference). L-BFGS on the
logits runs in stages of a rising binarity penalty λ · mean w(1 − w) (λ = 0, 0.1, 1): the
first stage lets the data place the weights, the later ones push them to 0 or 1. A grain
is reactive when w > 1/2, and *determined* when its Gauss–Newton standard deviation
satisfies 2 std < 1/2."""),
    new_code_cell("""\
problem = ContactProblem(setup, measured)
fit = fit_reactive_contact(problem, true_reactive=truth, iterations_per_stage=25)
print(f"loss {fit.history[0]['loss']:.4g} -> data loss {fit.data_loss:.4g} (noise level ≈ 0.5), "
      f"{len(fit.history) - 1} iterations")
print(f"classified correctly: {fit.accuracy:.0%} of {setup.n_surface} surface grains; "
      f"determined: {int(fit.determined.sum())}, of which correct: {fit.determined_accuracy:.0%}")
print(f"Li flow applied {fit.li_flow_mol_s:.5g} mol/s, carried by the fitted flux {fit.li_flow_fitted_mol_s:.5g}")
print("grain  weight  reactive  truth  std    determined")
for row in fit.table():
    print(f"{row['grain_id']:5d}  {row['weight']:.3f}  {str(row['reactive']):>8s}  {str(row['true_reactive']):>5s}"
          f"  {row['std']:.3f}  {row['determined']}")"""),
    new_markdown_cell("""\
The fitted flux carries exactly the applied current (the relaxation conserves it by
construction), the weights end nearly binary, and the classification matches the truth.
The figure shows every surface voxel at its longitude and latitude seen from the
particle's centre, coloured by the fitted weight, the true mask and the outcome
(undetermined grains grey), and below it the residual maps: noise, nothing left to
explain."""),
    new_code_cell("""\
display(Image(plot_contact_fit(setup, fit, measured, out / "contact.png")))"""),
    new_markdown_cell("""\
## From a fit file

`ssbx fit examples/fit_contact.toml --make-synthetic` runs the same study on a 24³,
60-grain particle from the command line and writes `fit_result.json` (this table),
`loss_history.csv` and `contact_fit.png`.

## At GPU size (documented, not run in CI)

The S1 particle of docs/physics.md (56³ grid, 400 grains, 196 surface grains, 1C, maps at
240/480/720 s, 612 steps) costs 3.2 s per loss + gradient on a 2-core CPU
(benchmarks/reactive_contact_inversion.py); a fit of ~100 L-BFGS iterations and the
Gauss–Newton analysis (one forward-mode pass per surface grain) belong on a GPU:

```python
micro = polycrystalline_particle(5e-6, 2e-7, n_grains=400, reactive_fraction=2 / 3, seed=0)   # 56³
ops = [ObservationOperator("projection", beam_axis=a, min_thickness_voxels=2) for a in (2, 0)]
setup = make_contact_setup(micro, [5e-15, 5e-15, 1e-20], 49214.0, x_initial=0.95, c_rate=1.0, sign=-1,
                           t_s=[240.0, 480.0, 720.0], operators=ops)
fit = fit_reactive_contact(ContactProblem(setup, measured), iterations_per_stage=40)
```

This S1 case has not been timed on a GPU. The 64³ case of `benchmarks/inverse_cost.py`
(20 grains, 207 steps, projections along z) costs **0.009 s** per loss + gradient of the
contact weights on an NVIDIA H200 (2026-12-04), against 0.46 s on the 2-core CPU."""),
]


if __name__ == "__main__":
    from notebook_builder import write

    write(CELLS, "inverse_contact.ipynb")
