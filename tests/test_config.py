"""Scenario files: defaults, round trip, and clear errors for bad input."""

import pytest

from ssbx.engine.config.scenario import Scenario, load_scenario, scenario_from_dict
from ssbx.engine.errors import ConfigError


def test_default_example_file_equals_built_in_default(examples_dir):
    assert load_scenario(examples_dir / "default.toml") == Scenario()


def test_every_example_file_is_valid(examples_dir):
    """Scenario files load as scenarios, fit files (with a [scenario] table) as fits."""
    from ssbx.engine.config.scenario import read_toml
    from ssbx.engine.inverse.fit_file import load_fit_config

    files = sorted(examples_dir.glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        if "scenario" in read_toml(path):
            load_fit_config(path)
        else:
            load_scenario(path)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"material": {"diffusivity_m2_s": [5e-15, -1e-15, 1e-20]}}, ["diffusivity_m2_s[1]", "-1e-15", "> 0"]),
        ({"material": {"diffusivity_m2_s": [5e-15, 1e-20]}}, ["diffusivity_m2_s", "3 values"]),
        ({"particle": {"voxel_size_m": 0}}, ["particle.voxel_size_m", "0", "> 0"]),
        ({"particle": {"n_grains": 0}}, ["particle.n_grains", "0", "≥ 1"]),
        ({"particle": {"reactive_fraction": 1.2}}, ["particle.reactive_fraction", "1.2", "[0.0, 1.0]"]),
        ({"particle": {"radius": 1e-6}}, ["unknown key", "'radius'", "radius_m", "voxel_size_m"]),
        ({"physics": {}}, ["unknown section", "'physics'", "particle", "protocol"]),
        ({"material": {"name": "LCO"}}, ["material.name", "'LCO'", "NCM622"]),
        ({"protocol": {"c_rate": -1}}, ["protocol.c_rate", "-1"]),
        ({"protocol": {"direction": "sideways"}}, ["protocol.direction", "lithiation"]),
        ({"run": {"dtype": "float16"}}, ["run.dtype", "float32"]),
        ({"material": {"x_initial": 1.5}}, ["material.x_initial", "1.5"]),
        ({"particle": {"n_grains": 10, "mean_grain_size_m": 1e-6}}, ["exactly one of n_grains"]),
    ],
)
def test_bad_input_is_a_clear_error(data, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(data)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_false_unsets_optional_keys():
    s = scenario_from_dict({"particle": {"n_grains": False, "mean_grain_size_m": 2e-6}})
    assert s.particle.n_grains is None and s.particle.mean_grain_size_m == 2e-6


def test_replace_and_json_round_trip():
    import json

    s = Scenario().replace(protocol={"c_rate": 2.0})
    assert s.protocol.c_rate == 2.0
    assert scenario_from_dict(json.loads(s.to_json())) == s


def test_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[particle\nradius_m = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")
