"""Particles stacked along the cell's stack axis (``cell.particles_along_stack``, the S2
two-particle variant): geometry, per-particle bookkeeping, and the depth effect of the
binder's ionic resistance."""

import h5py
import numpy as np
import pytest

from test_cell import SMALL

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.cell_stack import cell_microstructure
from ssbx.kernels.constants import FARADAY

# isotropic D and no mechanics: the two copies differ only in their grain ids and
# orientations, which then change nothing, so any difference between them is position
STACKED = dict(SMALL, cell=dict(SMALL["cell"], particles_along_stack=2, particle_spacing_m=5e-6),
               material=dict(SMALL["material"], diffusivity_m2_s=[1e-14, 1e-14, 1e-14]),
               protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 3 min"]},
               numerics={"chunk_steps": 1})  # a per-particle row at every step


def test_stacked_geometry_keeps_the_cross_section():
    single_micro, single = cell_microstructure(scenario_from_dict(SMALL))
    micro, info = cell_microstructure(scenario_from_dict(STACKED))
    h = micro.voxel_size_m
    assert micro.labels.shape[:2] == single_micro.labels.shape[:2]  # one particle's cross-section
    assert info["composite_voxels"] == single["composite_voxels"] + round(5e-6 / h)
    pid = info["particles"]["particle_id"]
    counts = np.bincount(pid[pid >= 0])
    assert len(counts) == 2 and counts[0] == counts[1] == int((single_micro.grain_id >= 0).sum())
    assert np.array_equal(pid >= 0, micro.grain_id >= 0)
    centres = info["particles"]["table"]["centre_m"]
    assert centres[1][2] - centres[0][2] == pytest.approx(5e-6)
    assert info["capacity_Ah"] == pytest.approx(2 * single["capacity_Ah"], rel=1e-12)


def test_particle_nearer_the_separator_delithiates_first(tmp_path):
    """Li⁺ reaches the particle next to the separator through less binder (ionic 0.02 S/m
    against 10 S/m electronic), so it carries more of the current and ends at a lower
    SOC; each particle's ΔM_Li is its own ∫I_p dt/F and the currents add up to the cell's."""
    from ssbx.engine.runs.cell_run import run_cell_device

    out = tmp_path / "stacked.h5"
    result = run_cell_device(scenario_from_dict(STACKED), out, progress=False)
    assert result.status == "completed", result.message
    with h5py.File(out) as f:
        soc = f["particles/soc"][...]
        li = f["particles/li_mol"][...]
        current = f["particles/current_A"][...]
        t = f["particles/t_s"][...]
        depth = f["particles/table/depth_m"][...]
        cell_t, cell_i = f["timeseries/t_s"][...], f["timeseries/current_A"][...]
    near, far = np.argmin(depth), np.argmax(depth)
    assert soc[-1, far] - soc[-1, near] > 2e-4
    # one row per step; a row's current is the one that drove the step ending there
    dt = np.diff(t)
    assert np.all(dt >= 0) and dt.sum() > 0
    # (float32 fields: x to 6e-8 of ~0.9, i.e. ~5e-7 of a step's change)
    np.testing.assert_allclose(np.diff(li, axis=0), -current[1:] * dt[:, None] / FARADAY, rtol=1e-5)
    moving = dt > 0
    np.testing.assert_allclose(current[1:][moving].sum(axis=1), cell_i[np.searchsorted(cell_t, t[1:][moving]) - 1],
                               rtol=1e-6)


def test_overlapping_stack_refused():
    with pytest.raises(ConfigError, match="at least 2 · particle.radius_m"):
        scenario_from_dict(dict(STACKED, cell=dict(STACKED["cell"], particle_spacing_m=3e-6)))
