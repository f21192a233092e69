"""Debonding in cell runs (docs/interfaces.md): cohesive particle | conductor layers in the
cell's stress solve, the gap raising each face's R_int = R0 exp(g/g0), step control.

Three runs of the small cell of test_cell (one compile: σc and R0 are array leaves):
a weak interface that debonds completely on charge, a strong one that never opens, and
the same cell without interfaces."""

import numpy as np
import pytest

from test_cell import SMALL

from ssbx.kernels.constants import FARADAY
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.cell_stack import cell_microstructure
from ssbx.engine.io.run_file import load_run
from ssbx.engine.physics.interface import interface_geometry
from ssbx.engine.phases import ION_CONDUCTORS
from ssbx.engine.runs.cell_run import run_cell_device

B = 0.02  # isotropic chemical expansion per unit x (shrinks on charge)
R0 = 1e-3  # bonded interfacial resistance, Ω m² (10 Ω cm²)
G0 = 2e-9  # gap decay length, m
CELL = dict(SMALL, mechanics={"enabled": True, "electrolyte_material": "LLZO", "expansion": [B, B, B],
                              "tol": 1e-6},
            electrochemistry=dict(SMALL.get("electrochemistry", {}), interface_resistance_ohm_m2=R0))
WEAK = {"enabled": True, "strength_Pa": 20e6, "fracture_energy_J_m2": 0.01, "gap_decay_length_m": G0}
# never damages (σc ~6 × the largest interface stress here); g0 ≫ its penalty opening σ_n/K0
STRONG = dict(WEAK, strength_Pa=5e9, fracture_energy_J_m2=1e3, gap_decay_length_m=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("debonding")
    out = {}
    for name, interface in (("weak", WEAK), ("strong", STRONG), ("none", None)):
        data = dict(CELL, interface=interface) if interface else CELL
        scenario = scenario_from_dict(data)
        result = run_cell_device(scenario, folder / f"{name}.h5", progress=False)
        assert result.status == "completed", result.message
        out[name] = load_run(folder / f"{name}.h5")
    out["scenario"] = scenario
    return out


def test_a_fully_debonded_particle_opens_by_its_free_volume_change(runs):
    """A traction-free body's volume change is that of its eigenstrain: ∮ u·n dS =
    ∫ tr ε dV = ∫ tr ε* dV + ∫ tr σ/(3K) dV, and ∫ σ dV = 0 without tractions, so for a
    homogeneous bulk modulus ∮ u·n dS = 3B ∫ (x − x_ref) dV whatever the Li profile.
    Once every layer is open (d ≥ 0.99) the matrix carries no load, so the layers'
    openings add up to it: Σ_m A_m g_m = 3B h³ Σ |x − x_ref|. The staircase (layer
    areas within 2–5 % of the sphere's) and the x-dependent modulus of NCM (112–142 GPa)
    bound the agreement; measured within 4 %."""
    weak = runs["weak"]
    micro, _ = cell_microstructure(runs["scenario"])
    layers = interface_geometry(micro.active, np.isin(micro.labels, ION_CONDUCTORS))
    h = weak.voxel_size_m
    x_ref = runs["scenario"].material.x_initial
    checked = 0
    for k in range(len(weak.fields["soc"])):
        damage = weak.fields["damage"][k][layers.host_index]
        if damage.min() < 0.99:
            continue
        gap = weak.fields["gap_m"][k][layers.host_index]
        opened = np.sum(layers.area_factor * h**2 * gap)
        x = weak.fields["soc"][k][micro.active].astype(np.float64)
        free = 3 * B * h**3 * np.sum(x_ref - x)
        assert opened == pytest.approx(free, rel=0.04)
        checked += 1
    assert checked >= 2  # the end of the charge and of the CV hold


def test_damage_is_irreversible_and_the_gap_closes_on_relithiation(runs):
    ts, fields = runs["weak"].timeseries, runs["weak"].fields
    assert np.all(np.diff(ts["damaged_area_fraction"]) >= 0)
    assert np.all(np.diff(ts["debonded_area_fraction"]) >= 0)
    assert ts["debonded_area_fraction"][-1] == 1.0
    damage = np.nan_to_num(np.stack(fields["damage"]))
    assert np.all(np.diff(damage, axis=0) >= -1e-6)
    # the discharge re-lithiates the particle: it swells back and the open gap narrows
    assert ts["gap_mean_m"][-1] < 0.9 * ts["gap_mean_m"].max()


def test_the_gap_raises_the_interfacial_resistance(runs):
    """Each reactive face's R_int = R0 exp(g/g0): the mean interfacial drop R_int |i| of
    the bonded run is R0 |i|; the debonded run's is larger by the current-weighted mean of
    exp(g/g0) ≥ exp(D_G_ave/g0)·(…) and its charge voltage lies above the bonded one's."""
    weak, none = runs["weak"].timeseries, runs["none"].timeseries
    strong = runs["strong"].timeseries
    charging = (strong["step_index"] == 0) & (np.abs(strong["current_A"]) > 0)
    area = _reactive_area(runs)
    i_mean = np.abs(strong["current_A"][charging]) / area
    np.testing.assert_allclose(strong["interface_drop_V"][charging], R0 * i_mean, rtol=0.05)
    # bonded: no damage, and openings below the onset δ0 = σc/K0 (the penalty's elastic σ_n/K0)
    assert strong["damaged_area_fraction"].max() == 0.0
    assert strong["gap_max_m"].max() < STRONG["strength_Pa"] / 1e19
    cc = weak["step_index"] == 0
    open_rows = cc & (weak["gap_mean_m"] > G0)
    assert open_rows.sum() >= 3
    ratio = weak["interface_drop_V"][open_rows] / (R0 * np.abs(weak["current_A"][open_rows]) / area)
    assert np.all(ratio >= np.exp(weak["gap_mean_m"][open_rows] / G0) * 0.95)
    v_weak = np.interp(weak["t_s"][open_rows], none["t_s"], none["voltage_V"])
    assert np.all(weak["voltage_V"][open_rows] > v_weak + 0.5 * (weak["interface_drop_V"][open_rows]
                                                                 - R0 * np.abs(weak["current_A"][open_rows]) / area))


def test_bonded_limit_is_the_cell_without_interfaces_and_charge_is_conserved(runs):
    """A strong interface never opens beyond its elastic penalty opening (σ/K0 ≪ g0), so
    R_int = R0 and the cycle is the one without interfaces; and debonding keeps Li
    accounting exact: ∫ I dt = F ΔM_Li."""
    strong, none = runs["strong"].timeseries, runs["none"].timeseries
    assert len(strong["t_s"]) == len(none["t_s"])
    # the extra drop the penalty opening can cause (×10 for local current peaks), plus round-off
    i_max = np.abs(none["current_A"]).max() / _reactive_area(runs)
    bound = 10 * R0 * i_max * np.expm1(strong["gap_max_m"].max() / STRONG["gap_decay_length_m"]) + 1e-5
    np.testing.assert_allclose(strong["voltage_V"], none["voltage_V"], atol=bound)
    np.testing.assert_allclose(strong["t_s"], none["t_s"], rtol=1e-5)
    for name in ("weak", "strong"):
        ts = runs[name].timeseries
        dt = np.diff(ts["t_s"])
        charge_mol = np.sum(ts["current_A"][:-1] * dt) / FARADAY
        delta_mol = ts["li_mol"][0] - ts["li_mol"][-1]
        gross = np.sum(np.abs(ts["current_A"][:-1]) * dt) / FARADAY
        assert abs(delta_mol - charge_mol) < 1e-5 * gross


def _reactive_area(runs):
    """Total reactive face area of the cell's particle (m²), from the resolved cell."""
    from ssbx.engine.model.resolve import resolve_cell

    geometry = resolve_cell(runs["scenario"]).geometry
    return float(sum(np.sum(np.asarray(a, np.float64)) for a in geometry.face_area_m2))


@pytest.mark.parametrize("interface, words", [
    ({"strength_Pa": 0.0}, ["interface.strength_Pa = 0.0", "valid range"]),
    ({"fracture_energy_J_m2": -1.0}, ["interface.fracture_energy_J_m2 = -1.0", "valid range"]),
    ({"gap_decay_length_m": 0.0}, ["interface.gap_decay_length_m = 0.0", "valid range"]),
    ({"conductors": ["carbon"]}, ["'carbon' is not an ion conductor", "solid_electrolyte"]),
    ({"max_damage_increment": 0}, ["interface.max_damage_increment = 0", "(0, 1]"]),
])
def test_bad_interface_input_is_refused(interface, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(dict(CELL, interface=dict(WEAK, **interface)))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("change, words", [
    ({"mechanics": {"enabled": False}}, ["needs mechanics.enabled = true"]),
    ({"electrochemistry": {"interface_resistance_ohm_m2": 0.0}}, ["interface_resistance_ohm_m2 = 0.0", "> 0"]),
    ({"cell": {"enabled": False}, "protocol": {}}, ["in a particle run"]),
])
def test_debonding_without_what_it_couples_is_refused(change, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(dict(CELL, interface=WEAK, **change))
    for word in words:
        assert word in str(err.value)
