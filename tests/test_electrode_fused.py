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
