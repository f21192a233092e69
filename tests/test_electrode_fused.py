"""The device stepper's coupled solve (kernels.electrode.solve_coupled, fused=True: both
galvanostatic right-hand sides in one precondition-first CG loop) against the exact
series resistance of a layered column, the two-loop solve it replaces, and the implicit
derivative; and its warm start (a converged warm start costs no CG iteration)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.kernels.electrode import solve_coupled

from test_cell import _slab


def test_fused_solve_gives_the_exact_series_resistance(x64):
    """V − φ_anode = I R (galvanostatic) and I = (V − φ_anode)/R (potentiostatic), R the
    series resistance of test_cell._slab, to 1e-9; the same fields as the two-loop solve."""
    s, e, h, faces, g, c, resistance = _slab()
    current, phi_anode = 2e-9, 0.01
    opts = dict(stack_axis=2, rtol=1e-12)
    fused = solve_coupled(s, e, h, faces, g, c, phi_anode, current=current, fused=True, **opts)
    assert float(fused.voltage) == pytest.approx(phi_anode + current * resistance, rel=1e-9)
    assert float(fused.current) == pytest.approx(current, rel=1e-9)
    assert float(fused.residual) < 1e-10
    loops = solve_coupled(s, e, h, faces, g, c, phi_anode, current=current, **opts)
    scale = float(jnp.max(jnp.abs(loops.phi_e)))
    np.testing.assert_allclose(fused.phi_e, loops.phi_e, atol=1e-9 * scale)
    np.testing.assert_allclose(fused.warm, loops.warm, atol=1e-9 * float(jnp.max(jnp.abs(loops.warm))))
    by_v = solve_coupled(s, e, h, faces, g, c, phi_anode, voltage=0.2, fused=True, **opts)
    assert float(by_v.current) == pytest.approx((0.2 - phi_anode) / resistance, rel=1e-9)
    # restarted from its own converged superposition fields, CG has nothing left to do
    again = solve_coupled(s, e, h, faces, g, c, phi_anode, current=current, fused=True, warm_start=fused.warm,
                          **opts)
    assert int(fused.iterations) > 0 and int(again.iterations) == 0
    assert float(again.voltage) == pytest.approx(float(fused.voltage), rel=1e-9)


def test_fused_solve_is_differentiable(x64):
    """d V / d σ_e through lax.custom_linear_solve of the fused solve equals the analytic
    derivative of the series resistance (as test_cell does for the two-loop solve)."""
    n, k = 12, 5

    def voltage(sigma_e_value):
        s, _, h, faces, g, c, _ = _slab()
        e = jnp.where(jnp.asarray(np.arange(n)[None, None, :] * np.ones((2, 2, n))) < k, 0.0, sigma_e_value)
        return solve_coupled(s, e, h, faces, g, c, 0.0, stack_axis=2, current=2e-9, rtol=1e-12, fused=True).voltage

    h = 1e-6
    exact = -2e-9 * (n - k - 0.5) * h / (4 * h * h) / 0.05**2
    assert float(jax.grad(voltage)(0.05)) == pytest.approx(exact, rel=1e-6)


def test_collector_voltage_meets_the_solver_tolerance_on_the_s2_cell(examples_dir, x64):
    """Two Newton iterations of the S2 example's first step (1 µm voxels): the second
    linearised system is solved from the first one's solution (warm start), as the
    stepper does. Its galvanostatic V at the default float32 settings (rtol 1e-6) is
    within 5e-5 V of a float64 solve at rtol 1e-10. Before the unit system was lifted,
    φ¹'s residual was measured against the collector term g_b (≈ 1e5 × the interface
    conductances): the warm start met the tolerance with φ¹ of the first system, no CG
    iteration was spent on it, and V erred by 2.4e-4 V here."""
    from ssbx.engine.config.scenario import load_scenario
    from ssbx.engine.model.resolve import resolve_cell
    from ssbx.engine.solve import cell_step as cs
    from ssbx.kernels.electrode import face_potential_drop

    scenario = load_scenario(examples_dir / "ncm111_llzo_single_particle.toml").replace(mechanics={"enabled": False})
    volts = {}
    for dtype, rtol in ((jnp.float32, 1e-6), (jnp.float64, 1e-10)):
        r = resolve_cell(scenario.replace(run={"dtype": dtype.__name__}), dtype=dtype)
        geo, par, num = r.geometry, r.params, r.numerics
        assert num.rtol == 1e-6  # the default
        state = cs.initial_state(geo, par, r.x_initial, dtype=dtype)
        faces = geo.interface()
        derived = cs.derive(geo, par, num)

        @jax.jit
        def newton_iteration(phi_s, phi_e, warm):
            s, e = cs.electronic_conductivity(geo, par, state.x), cs.ionic_conductivity(geo, par)
            inv = lambda a: jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), 0.0)  # noqa: E731
            g, c, _ = cs._linearised_kinetics(geo, par, derived, state.x, inv(s), inv(e),
                                              face_potential_drop(phi_s, phi_e, faces), state.v_ref)
            return solve_coupled(s, e, geo.voxel_size_m, faces, g, c, 0.0, current=par.one_c_A,
                                 stack_axis=geo.stack_axis, rtol=rtol, fused=True, warm_start=warm)

        first = newton_iteration(state.phi_s, state.phi_e, state.warm)
        second = newton_iteration(first.phi_s, first.phi_e, first.warm)
        volts[dtype] = float(second.voltage)
    assert abs(volts[jnp.float32] - volts[jnp.float64]) < 5e-5
