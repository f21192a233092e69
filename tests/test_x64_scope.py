"""A float64 scenario runs in 64-bit JAX without leaving 64-bit switched on afterwards.

``api.run``/``api.resume`` (and ``ssbx run``, which calls them) used to flip
``jax_enable_x64`` for the whole process, so every later run in a notebook or a test
session silently became float64. They now run inside ``jax.enable_x64(True)`` and give
back the caller's setting: when it was off, when it was on, and after the run raised.
One real run (a 2-D particle of 1 µm, one minute); the other cases swap the driver for a
probe that records the precision it was called in.
"""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine import api
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.runs import particle_run

TINY = {"particle": {"radius_m": 1e-6, "n_grains": 5, "ndim": 2}, "protocol": {"duration_s": 60.0}}


def _scenario(dtype):
    return Scenario().replace(run={"dtype": dtype}, **TINY)


def test_float64_run_is_float64_inside_and_restores_x64_off(tmp_path, monkeypatch):
    seen = {}
    original = particle_run.run_scenario

    def probe(scenario, out, **kw):
        seen["x64"] = bool(jax.config.jax_enable_x64)
        seen["default_float"] = jnp.asarray(1.0).dtype
        return original(scenario, out, **kw)

    monkeypatch.setattr(particle_run, "run_scenario", probe)
    assert not jax.config.jax_enable_x64
    result = api.run(_scenario("float64"), tmp_path / "f64.h5", summary_png=False)
    assert result.status == "completed"
    assert seen == {"x64": True, "default_float": jnp.float64}
    with h5py.File(tmp_path / "f64.h5", "r") as f:
        assert f["fields/soc"].dtype == np.float64
    assert not jax.config.jax_enable_x64  # the caller's 32-bit setting is back
    assert jnp.asarray(1.0).dtype == jnp.float32


class _Stop(Exception):
    pass


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("raised", [None, KeyboardInterrupt, _Stop])
def test_run_restores_callers_x64_setting(tmp_path, monkeypatch, before, raised):
    seen = []

    def probe(scenario, out, **kw):
        seen.append(bool(jax.config.jax_enable_x64))
        if raised is not None:
            raise raised()
        return particle_run.RunResult(out, "completed", "", 60.0, 1, 60.0)

    monkeypatch.setattr(particle_run, "run_scenario", probe)
    with jax.enable_x64(before):
        for dtype in ("float64", "float32"):
            if raised is None:
                api.run(_scenario(dtype), tmp_path / f"{dtype}.h5", summary_png=False)
            else:
                with pytest.raises(raised):
                    api.run(_scenario(dtype), tmp_path / f"{dtype}.h5", summary_png=False)
            assert jax.config.jax_enable_x64 == before
    # float64 always runs in 64-bit; float32 runs in whatever the caller had
    assert seen == [True, before]


@pytest.mark.parametrize("before", [False, True])
def test_resume_restores_callers_x64_setting(tmp_path, monkeypatch, before):
    from ssbx.engine.io import restart

    seen = []
    monkeypatch.setattr(restart, "resume_scenario", lambda path: (_scenario("float64"), None))

    def probe(path, scenario, **kw):
        seen.append(bool(jax.config.jax_enable_x64))
        raise KeyboardInterrupt

    monkeypatch.setattr(particle_run, "resume_particle", probe)
    with jax.enable_x64(before):
        with pytest.raises(KeyboardInterrupt):
            api.resume(tmp_path / "run.h5", summary_png=False)
        assert jax.config.jax_enable_x64 == before
    assert seen == [True]
