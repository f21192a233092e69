"""Default NCM stiffness (engine/materials/elastic.py): isotropic, x-dependent secondary-
particle moduli of Xu et al., JES 164, A3333 (2017); the unsourced hexagonal tensor
stays selectable by name."""

import numpy as np
import pytest

from ssbx.engine.config.scenario import ConfigError, Scenario
from ssbx.engine.physics.mechanics import voigt_moduli
from ssbx.engine.materials.elastic import (
    MECHANICS_MATERIALS,
    NCM622_EXPANSION,
    ElasticParameterError,
    get_mechanics_material,
    isotropic_intercalation_material,
)


def _e_nu_from_compliance(c):
    """E and ν of an isotropic Voigt stiffness by inverting it: S11 = 1/E, S12 = −ν/E."""
    s = np.linalg.inv(np.asarray(c, np.float64))
    return 1.0 / s[0, 0], -s[0, 1] / s[0, 0]


def test_default_ncm_is_the_xu2017_isotropic_material():
    ncm = get_mechanics_material("NCM")
    assert ncm is get_mechanics_material("NCM_xu2017")
    assert Scenario().mechanics.active_material == "NCM"
    assert not ncm.anisotropic and tuple(ncm.expansion) == NCM622_EXPANSION
    assert "A3333" in ncm.source


@pytest.mark.parametrize("x, youngs_gpa", [(0.0, 112.0), (1.0, 142.0), (0.5, 127.0), (0.25, 119.5)])
def test_isotropic_tensor_gives_e_and_nu_back(x, youngs_gpa):
    """C(x) = (1 − x) C0 + x C1 (the solver's interpolation) is C(E(x), ν) with E linear
    in x: at fixed ν the isotropic C is proportional to E. Compliance inversion and the
    Voigt bulk/shear moduli K = E / (3 (1 − 2ν)), G = E / (2 (1 + ν)) both return them."""
    ncm = get_mechanics_material("NCM")
    c = (1 - x) * np.asarray(ncm.stiffness_delithiated) + x * np.asarray(ncm.stiffness_lithiated)
    e, nu = _e_nu_from_compliance(c)
    assert e == pytest.approx(youngs_gpa * 1e9, rel=1e-12)
    assert nu == pytest.approx(0.3, rel=1e-12)
    bulk, shear = voigt_moduli(c)
    assert bulk == pytest.approx(youngs_gpa * 1e9 / (3 * (1 - 2 * 0.3)), rel=1e-12)
    assert shear == pytest.approx(youngs_gpa * 1e9 / (2 * 1.3), rel=1e-12)
    # isotropic: rotation-invariant, C44 = (C11 − C12) / 2
    assert c[3, 3] == pytest.approx(0.5 * (c[0, 0] - c[0, 1]), rel=1e-12)


def test_hexagonal_placeholder_stays_selectable_and_flagged():
    hexagonal = get_mechanics_material("NCM_hexagonal_placeholder")
    assert hexagonal.anisotropic and "PLACEHOLDER" in hexagonal.source
    c1 = np.asarray(hexagonal.stiffness_lithiated)
    assert c1[0, 0] == 280e9 and c1[2, 2] == 230e9  # transversely isotropic: C11 ≠ C33
    scenario = Scenario().replace(mechanics={"active_material": "NCM_hexagonal_placeholder"})
    assert scenario.mechanics.active_material == "NCM_hexagonal_placeholder"
    with pytest.raises(ConfigError, match="NCM_hexagonal_placeholder"):  # listed as valid
        Scenario().replace(mechanics={"active_material": "NCM_cubic"})


def test_isotropic_intercalation_material_validates():
    with pytest.raises(ElasticParameterError, match="must be finite and > 0"):
        isotropic_intercalation_material("bad", -1e9, 100e9, 0.3, (0, 0, 0))
    with pytest.raises(ElasticParameterError):
        isotropic_intercalation_material("bad", 100e9, 100e9, 0.5, (0, 0, 0))
    with pytest.raises(ElasticParameterError, match="expansion"):
        isotropic_intercalation_material("bad", 100e9, 100e9, 0.3, (0, 0))
    assert set(MECHANICS_MATERIALS) >= {"NCM", "NCM_xu2017", "NCM_hexagonal_placeholder"}
