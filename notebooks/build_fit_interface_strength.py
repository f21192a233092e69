"""Write notebooks/fit_interface_strength.ipynb (without outputs) with nbformat.

Run:  python notebooks/build_fit_interface_strength.py
The notebook is executed by tests/test_notebooks.py; edit this script, not the .ipynb.
"""


from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell("""\
# How strong is the particle | electrolyte interface? σc from a voltage curve

On charge an NCM particle shrinks; the cohesive interface to the solid electrolyte opens
once the normal traction reaches its strength σc, and the gap g raises the interfacial
resistance, R_int = R0 exp(g/g0). The charge voltage then climbs faster than the bulk
kinetics explain. This notebook fits σc to such a V(t) curve through the differentiable
coupled cycle (diffusion, Butler–Volmer kinetics, potentials, elasticity with cohesive
layers; `engine/inverse/voltage_fit.py`), reports its Laplace uncertainty, shows why σc
and the gap decay length g0 cannot both be fitted from V(t) alone, and shows the gap and
damage on the particle surface before (start value) and after the fit.

It runs in CI at a small size: a 2 µm particle in a 19 × 19 × 16 voxel cell, 8 steps,
float64 (the forward-mode derivatives of the coupled step are NaN in float32;
docs/interfaces.md, "Fitting the interface").

**Data term: V(t) only.** The cell fit has no SOC-map or gap-map term yet
(docs/interfaces.md, "Not yet"); the maps below are outputs of the fitted model, not data."""),
    new_code_cell("""\
import time

import jax

jax.config.update("jax_enable_x64", True)  # this notebook only: the interface fit needs float64
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.inverse.parameters import FreeParameter
from ssbx.engine.inverse.voltage_fit import CELL_PARAMETERS, fit_voltage_curve
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.solve.cell_step import initial_state
from ssbx.engine.solve.rollout import record_times, rollout, step_budget

start_clock = time.perf_counter()"""),
    new_markdown_cell("""\
## The cell and the truth

NCM111 particle (radius 2 µm, 0.5 µm voxels, 6 grains) in an LLZO/ECBD surround with a
2 µm LLZO separator and a Li anode, charged at 2C for 7 min. An isotropic chemical
expansion of 0.05 per unit x shrinks the particle enough for the interface to open
part-way through the charge. The truth: σc = 150 MPa, Gc = 0.1 J/m², g0 = 2 nm,
R0 = 1e-3 Ω m². `max_damage_increment = 1` keeps the sequence of steps the same for
every σc, so V(σc) is smooth (a step cut by the damage control is a branch change)."""),
    new_code_cell("""\
SIGMA_TRUE, G0 = 150e6, 2e-9   # Pa, m
scenario = scenario_from_dict({
    "run": {"name": "interface_strength_fit"},
    "particle": {"radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
    "material": {"name": "NCM111", "x_initial": 0.95},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "mechanics": {"enabled": True, "electrolyte_material": "LLZO", "expansion": [0.05, 0.05, 0.05], "tol": 1e-6},
    "electrochemistry": {"time_step_s": 60.0, "interface_resistance_ohm_m2": 1e-3},
    "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 7 min"]},
    "interface": {"enabled": True, "strength_Pa": SIGMA_TRUE, "fracture_energy_J_m2": 0.1,
                  "gap_decay_length_m": G0, "update_every_steps": 1, "max_damage_increment": 1.0},
})
resolved = resolve_cell(scenario, jnp.float64)
T = np.linspace(0.0, 420.0, 15)   # the measured times (s)
N_STEPS = 8                       # step budget of the rollout (60 s steps cover 420 s)
layers = resolved.geometry.cohesive.layers
print("grid", resolved.geometry.active.shape, "|", int(np.sum(resolved.geometry.active)), "active voxels |",
      len(layers.host_index[0]), "cohesive layers")"""),
    new_markdown_cell("""\
## One compiled pass for the curve, its Jacobian and the layers

`fit_voltage_curve` accepts any `curve_model` that returns V(t_m) and ∂V/∂ln θ. The model
below computes what `VoltageCurveModel` computes — the rollout of the protocol, V
interpolated at the measured times — for θ = (σc, g0), and also returns the gap and
damage of every cohesive layer at the end of the run, from the same forward-mode pass
(`jax.jvp`; one call per Jacobian column). With `hold` set it is a model of σc alone with
g0 fixed, the form the fit takes. One compile serves the synthetic data, the
identifiability analysis, the fit and the maps."""),
    new_code_cell("""\
class InterfaceCurve:
    \"\"\"V(t_m) (V) and ∂V/∂ln θ for θ = (σc, g0), plus the end-of-run gap (m) and damage of
    every cohesive layer, from one compiled jvp of the rollout; every evaluation's curve
    and layers are kept in ``self.curves[σc]``, ``self.layers[σc]`` (σc in Pa, rounded).\"\"\"

    both = ("interface_strength", "gap_decay_length")

    def __init__(self, resolved, t_s, n_steps, max_substeps):
        self.resolved, self.t_s = resolved, np.asarray(t_s, np.float64)
        self.n_steps, self.max_substeps = n_steps, max_substeps
        self.hold, self.timings, self.curves, self.layers = None, [], {}, {}
        self._pass = jax.jit(lambda th, tangent: jax.jvp(self.outputs, (th,), (tangent,)))

    @property
    def names(self):  # what fit_voltage_curve checks against its free parameters
        return self.both if self.hold is None else self.both[:1]

    def outputs(self, theta):
        r, p = self.resolved, self.resolved.params
        for name, value in zip(self.both, jnp.exp(theta)):
            p = CELL_PARAMETERS[name][1](p, value)
        state = initial_state(r.geometry, p, r.x_initial, theta.dtype)
        final, rec, valid = rollout(r.geometry, p, r.numerics, r.protocol, state, r.x_initial,
                                    self.n_steps, self.max_substeps)
        t = record_times(rec, valid)   # as engine.inverse.voltage_fit.model_voltage
        last = jnp.argmax(jnp.where(valid, t, -jnp.inf))
        t = jnp.where(valid, t, t[last] + 1.0 + jnp.arange(t.shape[0], dtype=t.dtype))
        v = jnp.where(valid, rec["voltage_V"], rec["voltage_V"][last])
        return jnp.concatenate([jnp.interp(jnp.asarray(self.t_s), t, v), final.gap, final.damage])

    def __call__(self, theta):
        t0 = time.perf_counter()
        theta = np.asarray(theta, np.float64)
        full = jnp.asarray(theta if self.hold is None else [theta[0], np.log(self.hold)])
        columns = []
        for k in range(len(self.names)):
            out, d_out = self._pass(full, jnp.eye(2)[k])
            columns.append(np.asarray(d_out[:len(self.t_s)]))
        out, key = np.asarray(out), round(float(np.exp(full[0])))
        self.curves[key], self.layers[key] = out[:len(self.t_s)], out[len(self.t_s):].reshape(2, -1)
        self.timings.append(time.perf_counter() - t0)
        return out[:len(self.t_s)], np.stack(columns, axis=1)


model = InterfaceCurve(resolved, T, N_STEPS, step_budget(resolved, 1.01))"""),
    new_markdown_cell("""\
## A synthetic measurement

V(t) at the truth with Gaussian noise of 0.5 mV. The first call compiles the pass (most of
this notebook's run time)."""),
    new_code_cell("""\
v_true, jac_true = model(np.log([SIGMA_TRUE, G0]))
print(f"compile + first pass (two Jacobian columns): {model.timings[0]:.1f} s")
SIGMA_V = 5e-4
measured = v_true + np.random.default_rng(1).normal(0.0, SIGMA_V, v_true.shape)"""),
    new_markdown_cell("""\
## Identifiability: σc and g0 move V(t) the same way

σc reaches V(t) only through the gap: before the interface opens ∂V/∂σc = 0, and later a
stronger interface (smaller gap) and a longer decay length (smaller g/g0) both lower
R_int. The two Jacobian columns at the truth are nearly proportional, so their Laplace
covariance (JᵀJ)⁻¹ σ_V² in (ln σc, ln g0) has a correlation close to −1: V(t) alone fixes
one combination of σc and g0, not both. The fit below therefore fixes g0 (a modelling
choice; no value is published for this interface) and fits σc alone, whose uncertainty
is then small. A measurement of the gap itself (e.g. from tomography) would separate
them; the cell fit has no such data term yet."""),
    new_code_cell("""\
J = jac_true / SIGMA_V
cov = np.linalg.inv(J.T @ J)
std = np.sqrt(np.diag(cov))
corr = cov[0, 1] / (std[0] * std[1])
std_alone = 1.0 / np.sqrt(J[:, 0] @ J[:, 0])
print(f"correlation of ln σc and ln g0 (Laplace, at the truth): {corr:+.5f}")
print(f"σ(ln σc) with g0 known: {std_alone:.2%};  with g0 free as well: {std[0]:.0%} (σ(ln g0) {std[1]:.0%})")

fig, ax = plt.subplots(figsize=(5.5, 3.2), constrained_layout=True)
ax.plot(T / 60, 1e3 * jac_true[:, 0], "o-", label="∂V/∂ln σc")
ax.plot(T / 60, 1e3 * jac_true[:, 1], "s--", label="∂V/∂ln g0")
ax.set(xlabel="t (min)", ylabel="mV per unit ln θ", title="sensitivities at the truth")
ax.legend()
plt.show()"""),
    new_markdown_cell("""\
## Fit σc from a start at 80 MPa (g0 held at 2 nm)

Trust-region Gauss–Newton in ln σc (`derivatives="forward"`), default bounds start/10 …
start·10 (8–800 MPa); the cohesive law's validity σc² < 2 Gc K0 is checked at the bounds."""),
    new_code_cell("""\
SIGMA_START = 80e6
model.hold = G0
fit = fit_voltage_curve(resolved, T, measured, [FreeParameter("interface_strength", SIGMA_START)],
                        n_steps=N_STEPS, sigma_V=SIGMA_V, max_iterations=20, curve_model=model)
sigma, rel = fit.values["interface_strength"], fit.relative_std["interface_strength"]
error = sigma / SIGMA_TRUE - 1
print(f"{fit.message} after {fit.evaluations} evaluations of {fit.evaluation_s:.1f} s")
print(f"σc: start {SIGMA_START / 1e6:.0f} MPa, fitted {sigma / 1e6:.2f} MPa ± {rel:.2%} (Laplace), "
      f"truth {SIGMA_TRUE / 1e6:.0f} MPa, determined: {fit.determined['interface_strength']}")
print(f"recovered interface_strength: error {100 * error:+.2f} % = {abs(error) / rel:.2f} std (std {100 * rel:.2f} %)")
print(f"rms residual {1e3 * fit.rms_V:.3f} mV (noise {1e3 * SIGMA_V:.1f} mV)")"""),
    new_markdown_cell("""\
## Fitted vs measured curve, and the residuals

The fitted curve comes from the fit's evaluation at the fitted σc (kept by the model;
no extra pass). Residuals within about ±2 σ_V with no trend: the noise, nothing left to
explain."""),
    new_code_cell("""\
v_fit = model.curves[round(sigma)]
fig, (ax, ax_r) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[2, 1], constrained_layout=True)
ax.plot(T / 60, measured, "ko", ms=4, label="measured (synthetic, σc = 150 MPa)")
ax.plot(T / 60, v_fit, "C1-", label=f"fit, σc = {sigma / 1e6:.1f} MPa")
ax.set(ylabel="V (V)", title="2C charge of the coupled cell")
ax.legend()
ax_r.axhline(0, color="0.6", lw=0.8)
ax_r.plot(T / 60, (measured - v_fit) / SIGMA_V, "C0o-", ms=4)
ax_r.set(xlabel="t (min)", ylabel="residual / σ_V")
plt.show()"""),
    new_markdown_cell("""\
## Gap and damage on the particle surface, before and after the fit

Each cohesive layer sits on a particle voxel facing the electrolyte; here at its
longitude and latitude seen from the particle centre, at the end of the 7 min charge, for
the start value (80 MPa: the interface opens earlier and wider), the fitted σc and the
truth (the same model at 150 MPa: in a real study this panel is unknown). By the end of
the charge every layer is damaged (d > 1/2 here); σc shows in how far the layers have
opened, and in the few that are not yet fully debonded."""),
    new_code_cell("""\
host = np.stack([np.asarray(i) for i in layers.host_index], axis=1).astype(float)
centre = np.argwhere(np.asarray(resolved.geometry.active)).mean(axis=0)
rel_pos = host - centre
lon = np.degrees(np.arctan2(rel_pos[:, 1], rel_pos[:, 0]))
lat = np.degrees(np.arcsin(rel_pos[:, 2] / np.linalg.norm(rel_pos, axis=1)))
panels = [("start, 80 MPa", model.layers[round(SIGMA_START)]), (f"fitted, {sigma / 1e6:.1f} MPa", model.layers[round(sigma)]),
          ("truth, 150 MPa", model.layers[round(SIGMA_TRUE)])]
gap_max = max(1e9 * p[1][0].max() for p in panels)
damage_min = min(p[1][1].min() for p in panels)   # the colour range where the damage differs
fig, axes = plt.subplots(2, 3, figsize=(11, 5.2), sharex=True, sharey=True, constrained_layout=True)
for col, (title, (gap, damage)) in enumerate(panels):
    a = axes[0, col].scatter(lon, lat, c=1e9 * gap, s=40, vmin=0, vmax=gap_max, cmap="viridis")
    b = axes[1, col].scatter(lon, lat, c=damage, s=40, vmin=damage_min, vmax=1, cmap="magma")
    axes[0, col].set_title(f"{title}\\nmean gap {1e9 * gap.mean():.2f} nm, mean damage {damage.mean():.2f}",
                           fontsize=9)
    axes[1, col].set_xlabel("longitude (°)")
axes[0, 0].set_ylabel("latitude (°)")
axes[1, 0].set_ylabel("latitude (°)")
fig.colorbar(a, ax=axes[0], label="gap (nm)")
fig.colorbar(b, ax=axes[1], label="damage d")
plt.show()
print(f"notebook run time {time.perf_counter() - start_clock:.0f} s")"""),
    new_markdown_cell("""\
## At GPU size (documented, not run in CI)

The S2 debonding cell of `examples/s2_debonding.toml` (5 µm particle, 53
grains, LLZO separator, 1C) with 0.5 µm voxels — a 31 × 31 × 45 grid, 4189 active voxels — and its
1C charge to 4.3 V sampled every 60 s. Before fitting at the S2 settings, check the sensitivity
columns as above: with Gc = 1 J/m² and GPa misfit tractions every layer debonds early and
σc barely reaches V(t) (docs/interfaces.md, "Identifiability").

```python
data = read_toml("examples/s2_debonding.toml")   # ssbx.engine.config.scenario.read_toml
data["particle"]["voxel_size_m"] = 5e-7
data["interface"]["max_damage_increment"] = 1.0   # no step cut by the damage control: V(σc) smooth
data["protocol"]["steps"] = ["charge at 1C until 4.3 V"]
scenario = scenario_from_dict(data)
resolved = resolve_cell(scenario, jnp.float64)
T, measured = ...   # the measured charge curve: times (s, every 60 s) and V
n_steps = int(T[-1] / 30.0) + 10   # 30 s steps
model = InterfaceCurve(resolved, T, n_steps, max_substeps=step_budget(resolved, 1.01))
model.hold = 10e-9
fit = fit_voltage_curve(resolved, T, measured, [FreeParameter("interface_strength", 80e6)],
                        n_steps=n_steps, sigma_V=5e-4, curve_model=model)
```

Expected cost: the compile does not depend on the grid or the number of steps (the scan
body is compiled once); each pass scales with voxels × steps, 7.5× the CI cell's grid
and about 14× its steps. Its time on a GPU has not been measured yet."""),
]


if __name__ == "__main__":
    from notebook_builder import write

    write(CELLS, "fit_interface_strength.ipynb")
