"""Cell cycling (engine/runs/host_cell.py, kernels/electrode.py): exact series resistance,
charge conservation, protocol handling and failure messages."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.geometry import cell_stack
from ssbx.engine.runs import host_cell as cellmod
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError, SimulationDiverged
from ssbx.engine.io.run_file import load_run
from ssbx.kernels.constants import FARADAY
from ssbx.engine.config.protocol import parse_protocol, parse_step
from ssbx.engine.materials.active import ELECTRONIC_CONDUCTIVITY_LAWS
from ssbx.engine.geometry.microstructure import ACTIVE, CARBON, ION_CONDUCTORS, LI_METAL, SOLID_ELECTROLYTE
from ssbx.engine.solve import cell_step as stepmod
from ssbx.engine.runs.cell_run import run_cell_device
from ssbx.engine.model.resolve import resolve_cell
from ssbx.kernels.conduction import log_interpolated_conductivity
from ssbx.kernels.electrode import interface_faces, solve_coupled


def _slab(n=12, k=5, h=1e-6, sigma_s=3.0, sigma_e=0.05, g=40.0):
    """Columns (2×2 lateral, periodic) of electron conductor for z < k and ion conductor
    above, joined by a planar interface of linear kinetics I = g A (φ_s − φ_e)."""
    shape = (2, 2, n)
    z = np.arange(n)[None, None, :] * np.ones(shape)
    active = z < k
    s = jnp.asarray(np.where(active, sigma_s, 0.0))
    e = jnp.asarray(np.where(active, 0.0, sigma_e))
    faces = interface_faces(active, ~active, stack_axis=2)
    area = h * h
    conductance = tuple(jnp.where(m, g * area, 0.0) for m in faces.masks)
    offset = tuple(jnp.zeros(shape) for _ in faces.masks)
    total_area = 4 * area
    # the interface conductance joins the centres of the two voxels beside the face
    resistance = ((k - 0.5) * h / (sigma_s * total_area) + 1 / (g * total_area)
                  + (n - k - 0.5) * h / (sigma_e * total_area))
    return s, e, h, faces, conductance, offset, resistance


def test_series_resistance_of_a_layered_column_is_exact(x64):
    """Galvanostatic: V − φ_anode = I (L_s/σ_s + 1/g + L_e/σ_e)/A; potentiostatic: the
    inverse. The collector and anode are half a voxel outside the first/last centres,
    and the kinetic conductance joins the voxel centres on both sides of the interface
    (the engine adds those two half-voxel resistances to R_int)."""
    s, e, h, faces, g, c, resistance = _slab()
    current, phi_anode = 2e-9, 0.01
    sol = solve_coupled(s, e, h, faces, g, c, phi_anode, stack_axis=2, current=current, rtol=1e-12)
    assert float(sol.voltage) == pytest.approx(phi_anode + current * resistance, rel=1e-9)
    assert float(sol.current) == pytest.approx(current, rel=1e-9)
    sol_v = solve_coupled(s, e, h, faces, g, c, phi_anode, stack_axis=2, voltage=0.2, rtol=1e-12)
    assert float(sol_v.current) == pytest.approx((0.2 - phi_anode) / resistance, rel=1e-9)


def test_coupled_solve_is_differentiable(x64):
    """d V / d σ_e from the implicit adjoint equals the analytic derivative of the series
    resistance."""
    _, e, h, faces, g, c, _ = _slab()
    n, k = 12, 5

    def voltage(sigma_e_value):
        s, _, _, _, _, _, _ = _slab()
        e = jnp.where(jnp.asarray(np.arange(n)[None, None, :] * np.ones((2, 2, n))) < k, 0.0, sigma_e_value)
        return solve_coupled(s, e, h, faces, g, c, 0.0, stack_axis=2, current=2e-9, rtol=1e-12).voltage

    grad = jax.grad(voltage)(0.05)
    exact = -2e-9 * (n - k - 0.5) * h / (4 * h * h) / 0.05**2
    assert float(grad) == pytest.approx(exact, rel=1e-6)


def test_log_interpolated_conductivity(x64):
    """Exact at the table points, geometric mean half-way, held outside the table, and
    dσ/dx = σ ln(σ₂/σ₁)/(x₂ − x₁) inside a segment."""
    xs, sig = (0.25, 0.6, 1.0), (1.0, 3e-3, 1e-5)
    law = lambda x: log_interpolated_conductivity(x, xs, sig)  # noqa: E731
    np.testing.assert_allclose(law(jnp.asarray(xs)), sig, rtol=1e-12)
    assert float(law(0.8)) == pytest.approx(np.sqrt(3e-3 * 1e-5), rel=1e-12)
    assert float(law(0.1)) == pytest.approx(1.0) and float(law(1.0)) == pytest.approx(1e-5)
    x = 0.4
    assert float(jax.grad(law)(x)) == pytest.approx(float(law(x)) * np.log(3e-3 / 1.0) / 0.35, rel=1e-10)


def test_x_dependent_conductivity_column_resistance(x64):
    """An active column whose Li fraction falls linearly from the collector to the
    interface, with σ(x) of Amin & Chiang (2016): the voltage is I times the series sum
    h/(2σ_0) + Σ_j (h/2σ_j + h/2σ_(j+1)) + 1/g + L_e/σ_e over the cross-section."""
    n, k, h, g_kin, sigma_e = 12, 5, 1e-6, 40.0, 0.05
    s, e, _, faces, g, c, _ = _slab(n, k, h, 1.0, sigma_e, g_kin)
    x_col = np.linspace(0.95, 0.3, k)
    x = np.zeros((2, 2, n))
    x[..., :k] = x_col
    law = ELECTRONIC_CONDUCTIVITY_LAWS["amin_chiang_2016"]
    sigma_col = np.asarray(log_interpolated_conductivity(jnp.asarray(x_col), *law))
    s = jnp.where(jnp.asarray(x) > 0, log_interpolated_conductivity(jnp.asarray(x), *law), 0.0)
    area = 4 * h * h
    r_s = (np.sum(h / sigma_col) - 0.5 * h / sigma_col[-1]) / area
    resistance = r_s + 1 / (g_kin * area) + (n - k - 0.5) * h / (sigma_e * area)
    current = 2e-9
    sol = solve_coupled(s, e, h, faces, g, c, 0.0, stack_axis=2, current=current, rtol=1e-13, maxiter=2000)
    assert float(sol.voltage) == pytest.approx(current * resistance, rel=1e-8)
    assert r_s > 0.5 * resistance  # the poorly conducting lithiated end dominates the drop


def test_carbon_and_electrolyte_phases_in_a_series_column(x64):
    """Collector | 3 carbon | 2 active ‖ 7 solid electrolyte | anode, conductivities
    from the labels (cell.phase_conductivities): V = I [3h/σ_C + 1.5h/σ_A + 1/g +
    6.5h/σ_SE]/A, since a face between two voxels has the harmonic-mean conductance
    (a carbon|active face adds h/2σ_C + h/2σ_A) and only the active|SE face reacts."""
    n, h, g_kin, current = 12, 1e-6, 40.0, 2e-9
    sig_c, sig_a, sig_se = 50.0, 0.5, 0.04
    labels = np.full((2, 2, n), SOLID_ELECTROLYTE, np.uint8)
    labels[..., :3] = CARBON
    labels[..., 3:5] = ACTIVE
    ec = scenario_from_dict(dict(SMALL, electrochemistry={
        "carbon_electronic_S_m": sig_c, "active_electronic_S_m": sig_a, "separator_ionic_S_m": sig_se})).electrochemistry
    sigma_s, sigma_e = cell_stack.phase_conductivities(labels, ec)
    assert set(np.unique(sigma_s)) == {0.0, sig_a, sig_c} and set(np.unique(sigma_e)) == {0.0, sig_se}
    faces = interface_faces(labels == ACTIVE, np.isin(labels, ION_CONDUCTORS), stack_axis=2)
    area = 4 * h * h
    conductance = tuple(jnp.where(m, g_kin * h * h, 0.0) for m in faces.masks)
    offset = tuple(jnp.zeros(labels.shape) for _ in faces.masks)
    resistance = (3 * h / sig_c + 1.5 * h / sig_a + 1 / g_kin + (n - 5 - 0.5) * h / sig_se) / area
    sol = solve_coupled(jnp.asarray(sigma_s), jnp.asarray(sigma_e), h, faces, conductance, offset, 0.0,
                        stack_axis=2, current=current, rtol=1e-13, maxiter=2000)
    assert float(sol.voltage) == pytest.approx(current * resistance, rel=1e-9)
    labels[0, 0, -1] = LI_METAL
    with pytest.raises(ConfigError, match=r"1 voxels are labelled 'li_metal' \(5\)"):
        cell_stack.phase_conductivities(labels, ec)


SMALL = {
    "run": {"name": "small_cell"},
    "particle": {"radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
    "material": {"name": "NCM111", "x_initial": 0.95},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "electrochemistry": {"time_step_s": 60.0},
    "mechanics": {"enabled": False},
    "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 10 min",
                                              "hold 3.95 V until C/2 or 4 min", "rest 2 min",
                                              "discharge at 2C until 3.0 V or 5 min"]},
}


#: SMALL with the stress solved at its snapshots (LLZO separator, no stack pressure)
SMALL_STRESS = dict(SMALL, mechanics={"enabled": True, "electrolyte_material": "LLZO"})


# small_run (SMALL_STRESS cycled once per session by the device stepper): tests/conftest.py


def test_charge_conservation(small_run):
    """∫ I dt = F ΔM_Li to 1e-4 relative (M_Li summed from the stored fields). A row's
    current holds until the next row (it drove that interval's diffusion)."""
    _, run = small_run
    ts = run.timeseries
    dt = np.diff(ts["t_s"])
    charge_C = np.sum(ts["current_A"][:-1] * dt)
    assert charge_C / 3600 == pytest.approx(ts["charge_Ah"][-1], rel=1e-9)
    assert np.ptp(ts["current_A"]) > 0
    li = [np.nansum(f.astype(np.float64)) for f in run.fields["soc"]]
    c_max = scenario_from_dict(SMALL).material.resolved_c_max()
    delta_mol = (li[0] - li[-1]) * c_max * run.voxel_size_m**3
    gross = np.sum(np.abs(ts["current_A"][:-1]) * dt) / FARADAY
    assert abs(delta_mol - charge_C / FARADAY) < 1e-4 * gross


def test_protocol_steps_and_outputs(small_run):
    result, run = small_run
    ts = run.timeseries
    with h5py.File(run.path) as f:
        one_c = f["geometry"].attrs["capacity_1C_A"]
    assert result.status == "completed"
    steps = ts["step_index"].astype(int)
    assert list(np.unique(steps)) == [0, 1, 2, 3]
    charge, hold, rest, discharge = (steps == 0), (steps == 1), (steps == 2), (steps == 3)
    assert np.all(ts["current_A"][charge] > 0) and np.all(ts["current_A"][discharge] < 0)
    # zero within float32 round-off of the superposition (the applied current is met to ~1e-5)
    assert np.all(np.abs(ts["current_A"][rest]) < 1e-4 * ts["current_A"][charge].max())
    np.testing.assert_allclose(ts["current_A"][charge], 2 * one_c, rtol=1e-4)  # 2C
    np.testing.assert_allclose(ts["current_A"][discharge], -2 * one_c, rtol=1e-4)
    assert ts["t_s"][charge][-1] == pytest.approx(600.0)  # the 10 min cap (4.3 V not reached)
    assert ts["voltage_V"][charge][-1] > ts["voltage_V"][charge][0]  # charging raises V
    # CV: the voltage is held, the current decays monotonically to the C/2 cut-off
    np.testing.assert_allclose(ts["voltage_V"][hold], 3.95, atol=1e-4)
    i_hold = ts["current_A"][hold]
    assert np.all(i_hold > 0) and np.all(np.diff(i_hold) < 0)
    # the cut-off is located: the last record is on C/2 (within the tolerance), the one
    # before above it
    assert 0.5 * one_c <= i_hold[-1] <= 0.5 * one_c * (1 + 1e-3) < i_hold[-2]
    # relaxation during rest: the voltage falls back towards the OCV
    assert ts["voltage_V"][rest][-1] < ts["voltage_V"][hold][-1]
    with h5py.File(run.path) as f:
        ce = f["cycles/coulombic_efficiency"][()]
    assert ce.shape == (1,) and 0 < ce[0] < 1  # 5 min of discharge return less than was charged
    for name in ("soc", "phi_s_V", "phi_e_V", "interface_current_A_m2"):
        assert run.fields[name].shape[0] == 5  # initial + end of each step
    assert np.all(ts["bv_residual"][1:] < 1e-2)


def test_cell_run_writes_stress_in_every_solid_phase(small_run):
    """The run file of SMALL_STRESS: the stress-free start (x = x_ref everywhere, no
    stack pressure) has no stress; after the charge the particle has shrunk (Δx < 0,
    tr β > 0) inside the binder that holds it, so its mean hydrostatic stress is
    tensile, and the fields cover the electrolyte too."""
    _, run = small_run
    f, snaps = run.fields, run.snapshots
    assert f["von_mises_Pa"].shape == f["soc"].shape
    # none at the start beyond float32 round-off of the GPa-scale operator (70 Pa with the
    # isotropic x-dependent NCM stiffness, < 1 Pa with the hexagonal placeholder)
    scale = snaps["von_mises_max_Pa"][1]
    assert scale > 1e8
    assert np.nanmax(f["von_mises_Pa"][0]) < 1e-6 * scale
    assert snaps["von_mises_max_Pa"][0] < 1e-6 * scale
    active = np.isfinite(f["soc"][1])
    hydro = f["hydrostatic_Pa"][1]
    assert np.mean(hydro[active]) > 1e7
    assert np.isfinite(f["von_mises_Pa"][1]).all()  # no pores in this cell: every voxel is solid
    assert snaps["electrolyte_von_mises_max_Pa"][1] > 1e6
    assert snaps["von_mises_max_Pa"][1] == pytest.approx(np.max(f["von_mises_Pa"][1][active]), rel=1e-6)


def test_lithium_dependent_active_conductivity_run(tmp_path, x64):
    """With σ_s(x) of Amin & Chiang (2016) in the particle: the stored σ_s equals the law
    at the stored Li fraction, delithiation raises it, and the cell solve at a uniform x
    is the constant-σ solve at σ(x) (the law is what enters the potentials)."""
    law_name = "amin_chiang_2016"
    data = dict(SMALL, electrochemistry={"time_step_s": 60.0, "active_electronic_S_m": law_name},
                protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 3 min"]})
    scenario = scenario_from_dict(data)
    out = tmp_path / "law.h5"
    run_cell_device(scenario, out, progress=False, dtype=jnp.float64)
    run = load_run(out)
    soc, sig = run.fields["soc"][-1], run.fields["sigma_s_S_m"][-1]
    active = np.isfinite(soc)
    expected = np.asarray(log_interpolated_conductivity(jnp.asarray(soc[active]),
                                                        *ELECTRONIC_CONDUCTIVITY_LAWS[law_name]))
    # fields are stored in float32: δx ~ 6e-8 moves σ by d ln σ/dx · δx ≈ 15 · 6e-8
    np.testing.assert_allclose(sig[active], expected, rtol=1e-5)
    assert np.nanmax(sig[active]) > np.nanmax(run.fields["sigma_s_S_m"][0][active])

    x0 = 0.9
    const = scenario.replace(electrochemistry={
        "active_electronic_S_m": float(log_interpolated_conductivity(x0, *ELECTRONIC_CONDUCTIVITY_LAWS[law_name]))})
    volts = []
    for sc in (scenario, const):
        r = resolve_cell(sc, jnp.float64)
        x = jnp.where(r.geometry.active, x0, 0.0)
        zero = jnp.zeros_like(x)
        derived = stepmod.derive(r.geometry, r.params, r.numerics)
        sol = stepmod.potentials(r.geometry, r.params, r.numerics, derived, x, zero, zero,
                                 jnp.zeros((2, 2) + x.shape), 3.7, False, 1e-10, 1e-10)
        volts.append(float(sol.voltage))
    assert volts[0] == pytest.approx(volts[1], abs=1e-9)


def test_nan_stops_with_step_and_time(tmp_path):
    """A potential solve that returns NaN on the third step: the run stops there, names
    the protocol step and time, and the file keeps the two good steps."""

    def poisoned(geometry, params, numerics, protocol, derived, state, x_initial):
        def solve(*args, **kwargs):
            sol = stepmod.potentials(*args, **kwargs)
            return sol._replace(voltage=jnp.where(state.n_taken == 2, jnp.nan, sol.voltage))

        return stepmod.cell_step(geometry, params, numerics, protocol, derived, state, x_initial, solve=solve)

    out = tmp_path / "nan.h5"
    with pytest.raises(SimulationDiverged, match=r"step 1 \('charge at 2C until 4.3 V or 10 min'\) at t = ") as err:
        run_cell_device(scenario_from_dict(SMALL), out, progress=False, step=poisoned)
    assert "V = nan" in str(err.value)
    t_fail = float(str(err.value).split("at t = ")[1].split(" s")[0])
    with h5py.File(out) as f:
        assert f.attrs["status"] == "diverged"
        t = f["timeseries/t_s"][()]
        assert t.shape[0] == 2  # the two good solves (t = 0 and after one step) are kept
        step = SMALL["electrochemistry"]["time_step_s"]
        assert t[0] == 0 and t[1] < t_fail <= t[1] + step + 1e-3  # the third solve (message: 6 digits)


def test_protocol_parser():
    s = parse_step("charge at C/10 until 4.3 V or 2 h")
    assert (s.mode, s.sign, s.c_rate, s.voltage_V, s.max_duration_s) == ("cc", 1.0, 0.1, 4.3, 7200.0)
    s = parse_step("hold 4.25 V until C/20")
    assert (s.mode, s.voltage_V, s.c_rate) == ("cv", 4.25, 0.05)
    assert parse_step("rest 10 min").max_duration_s == 600
    assert len(parse_protocol(["charge at 1C until 4.3 V", "discharge at 1C until 3 V"], cycles=3)) == 6


@pytest.mark.parametrize(
    "steps, words",
    [
        (["charge at 0C until 4.3 V"], ["C-rate must be a finite number > 0"]),
        (["charge at 1C until 3.0 V", "discharge at 1C until 4.3 V"], ["lower cut-off 4.3 V", "upper cut-off 3.0 V"]),
        (["charge at 1C"], ["not a protocol step", "charge at 1C until 4.3 V"]),
        (["hold 4.3 V"], ["protocol.steps[0]", "not a protocol step"]),
        ([], ["needs steps"]),
    ],
)
def test_bad_protocols(steps, words):
    data = dict(SMALL, protocol={"kind": "cycling", "steps": steps})
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(data)
    for word in words:
        assert word in str(err.value)


def test_user_capacity_sets_the_c_rate_and_the_area(tmp_path):
    """With cell.capacity_Ah given, 1C is that capacity per hour, and the cross-section
    is that capacity over the areal capacity (one number for both)."""
    data = dict(SMALL, cell=dict(SMALL["cell"], capacity_Ah=2e-11),
                protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 1 min"]})
    out = tmp_path / "user_c.h5"
    run_cell_device(scenario_from_dict(data), out, progress=False)
    run = load_run(out)
    np.testing.assert_allclose(run.timeseries["current_A"], 4e-11, rtol=1e-4)
    with h5py.File(out) as f:
        area = f["geometry"].attrs["cell_area_m2"]
    lateral = run.geometry["labels"].shape[0]
    expected = 2e-11 * 1e3 / (SMALL["cell"]["areal_capacity_mAh_cm2"] * 1e4)  # m²
    assert lateral == round(np.sqrt(expected) / run.voxel_size_m)
    assert area == pytest.approx((lateral * run.voxel_size_m) ** 2)
    with pytest.raises(ConfigError, match="cell.capacity_Ah = -1"):
        scenario_from_dict(dict(SMALL, cell=dict(SMALL["cell"], capacity_Ah=-1)))


@pytest.mark.parametrize(
    "value, words",
    [
        ("copper", ["active_electronic_S_m = 'copper'", "amin_chiang_2016"]),
        ([[0.2, 1.0]], ["at least two points"]),
        ([[0.5, 1.0], [0.2, 1e-3]], ["must increase strictly"]),
        ([[0.2, 1.0], [1.2, 1e-3]], ["[1][0] (Li fraction) = 1.2", "[0.0, 1.0]"]),
        ([[0.2, 1.0], [0.9, -1e-3]], ["[1][1] (S/m) = -0.001", "> 0"]),
        ([[0.2, 1.0], [0.9]], ["[1] = [0.9]", "pair"]),
        (-0.1, ["active_electronic_S_m = -0.1", "> 0"]),
    ],
)
def test_bad_active_conductivity(value, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(dict(SMALL, electrochemistry={"active_electronic_S_m": value}))
    for word in words:
        assert word in str(err.value)


def test_bad_cell_inputs():
    with pytest.raises(ConfigError, match="electrochemistry.ocv = 'LCO'"):
        scenario_from_dict(dict(SMALL, electrochemistry={"ocv": "LCO"}))
    with pytest.raises(ConfigError, match="needs a cell"):
        scenario_from_dict(dict(SMALL, cell={"enabled": False}))
    with pytest.raises(ConfigError, match="electrochemistry.ecbd_ionic_S_m = -1"):
        scenario_from_dict(dict(SMALL, electrochemistry={"ecbd_ionic_S_m": -1}))
    big = scenario_from_dict(dict(SMALL, cell=dict(SMALL["cell"], areal_capacity_mAh_cm2=5.0)))
    with pytest.raises(ConfigError, match="cell.areal_capacity_mAh_cm2 = 5.0"):
        cell_stack.cell_microstructure(big)


def _compare_first_step(new, old):
    """The device stepper against the legacy host loop up to the first cut-off, where
    both take the same steps. The device stepper records each solve at its own time
    t_j (V, I and M_Li of one state); the host loop wrote the solve at t_j with the end
    time t_(j+1) of the step it drove and M_Li after it. So new V_j, I_j = old V_j, I_j
    (V to 1e-4 V, I to 1e-5) and new t, M_Li, charge at j + 1 = old at j (1e-5).
    Returns the number of rows compared."""
    a, b = new.timeseries, old.timeseries
    m = int(np.sum(b["step_index"] == 0))
    same = np.isclose(a["t_s"][1:m + 1], b["t_s"][:m], rtol=1e-5, atol=0)
    n = int(np.argmin(same)) if not same.all() else m
    assert n >= 0.8 * m, (n, m)  # only the last steps before a cut-off may differ
    np.testing.assert_allclose(a["voltage_V"][:n], b["voltage_V"][:n], atol=1e-4)
    scale = np.max(np.abs(b["current_A"]))
    np.testing.assert_allclose(a["current_A"][:n], b["current_A"][:n], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(a["li_mol"][1:n + 1], b["li_mol"][:n], rtol=1e-5)
    np.testing.assert_allclose(a["charge_Ah"][1:n + 1], b["charge_Ah"][:n], rtol=1e-5)
    return n


def test_device_stepper_matches_the_host_loop(small_run, tmp_path):
    """SMALL through the legacy host loop of engine/runs/host_cell.py and through engine.solve.
    The first protocol step (2C for 10 min, a time cap) is the same in both, to float32
    round-off (measured ≈ 3e-7 V), and so is the field at its end. The CV step's
    current cut-off is where they part: the host loop ends it after the step that
    crossed C/2 (up to a whole step late), the device stepper on it (within
    numerics.cutoff_tolerance). The host loop runs these two steps only (SMALL's rest and
    discharge, which nothing here compares, would only cost time)."""
    out = tmp_path / "host.h5"
    first_two = dict(SMALL["protocol"], steps=SMALL["protocol"]["steps"][:2])
    cellmod.run_cell(scenario_from_dict(dict(SMALL, protocol=first_two)), out, progress=False)
    new, old = small_run[1], load_run(out)
    n = _compare_first_step(new, old)
    assert n == int(np.sum(old.timeseries["step_index"] == 0))  # the whole time-capped step
    np.testing.assert_allclose(new.fields["soc"][1], old.fields["soc"][1], atol=1e-5)
    with h5py.File(new.path) as f:
        one_c = f["geometry"].attrs["capacity_1C_A"]
    i_new = new.timeseries["current_A"][new.timeseries["step_index"] == 1]
    i_old = old.timeseries["current_A"][old.timeseries["step_index"] == 1]
    assert 0.5 * one_c <= i_new[-1] <= 0.5 * one_c * (1 + 1e-3)
    assert i_old[-1] < 0.5 * one_c * (1 - 1e-3)  # the host loop went past it
