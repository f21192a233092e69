"""Active-material parameter sets for Li transport (SI units).

Each entry gives the maximum Li concentration c_max and default principal
diffusivities (D1, D2, D3) along the crystal axes [100], [010], [001] of the layered
R-3m lattice (D1 = D2 in the Li layer, D3 across it).

Sources
-------
* NCM811: c_max = 63104 mol/m³, Chen et al., J. Electrochem. Soc. 167, 080534 (2020).
  Diffusivities: the in-plane value of the NCM622 study below is reused; Chen 2020
  fitted an isotropic 4e-15 m²/s, close to it.
* NCM622: D = (5e-15, 5e-15, 1e-20) m²/s from the single-particle NCM622 study of
  docs/physics.md scenario S1. c_max = ρ/M from the R-3m cell: a = 2.868 Å, c = 14.21 Å,
  Z = 3 formula units, giving 3 / (N_A · (√3/2) a² c) = 49 214 mol/m³ (lattice
  parameters as reported for LiNi0.6Co0.2Mn0.2O2 by Noh et al., J. Power Sources 233,
  121 (2013); re-derive if you use another composition).
* NCM111: D = (1e-14, 1e-14, 1e-20) m²/s, docs/physics.md scenario S2. c_max from the
  R-3m cell a = 2.860 Å, c = 14.23 Å (Noh et al. 2013, x = 1/3): 49 420 mol/m³.

Electronic conductivity of the active material vs Li fraction x
(``ELECTRONIC_CONDUCTIVITY_LAWS``, tables of (x, σ in S/m) interpolated in log σ):

* ``"amin_chiang_2016"``: Li(1−y)Ni1/3Mn1/3Co1/3O2 (NMC333) measured by DC
  polarisation and impedance, Amin & Chiang, J. Electrochem. Soc. 163, A1512 (2016):
  σ_e rises "from ∼10⁻⁷ S cm⁻¹ to ∼10⁻² S cm⁻¹" as y goes from 0 to 0.75, i.e.
  10⁻⁵ S/m at x = 1 and 1 S/m at x = 0.25 (held beyond). Only these end points, as
  stated in the abstract, enter the table; the measured curve between them is not
  reproduced (log-linear in between is this code's assumption).
"""

from __future__ import annotations

import dataclasses
import math

from ssbx.engine.errors import ConfigError

from ssbx.kernels.constants import AVOGADRO


def layered_oxide_c_max(a_angstrom: float, c_angstrom: float, formula_units: int = 3) -> float:
    """Li sites per volume of a hexagonal R-3m cell, mol/m³: Z / (N_A (√3/2) a² c)."""
    volume_m3 = (math.sqrt(3) / 2) * (a_angstrom * 1e-10) ** 2 * (c_angstrom * 1e-10)
    return formula_units / (AVOGADRO * volume_m3)


@dataclasses.dataclass(frozen=True)
class ActiveMaterial:
    name: str
    c_max_mol_m3: float
    diffusivity_m2_s: tuple[float, float, float]
    source: str


ACTIVE_MATERIALS = {
    "NCM811": ActiveMaterial(
        "NCM811", 63104.0, (5e-15, 5e-15, 1e-20), "Chen et al., JES 167, 080534 (2020)"
    ),
    "NCM622": ActiveMaterial(
        "NCM622",
        round(layered_oxide_c_max(2.868, 14.21), 0),
        (5e-15, 5e-15, 1e-20),
        "docs/physics.md S1; c_max from Noh et al., JPS 233, 121 (2013) lattice",
    ),
    "NCM111": ActiveMaterial(
        "NCM111",
        round(layered_oxide_c_max(2.860, 14.23), 0),
        (1e-14, 1e-14, 1e-20),
        "docs/physics.md S2; c_max from Noh et al., JPS 233, 121 (2013) lattice",
    ),
}


ELECTRONIC_CONDUCTIVITY_LAWS = {
    "amin_chiang_2016": ((0.25, 1.0), (1.0, 1e-5)),
}


def get_active_material(name: str) -> ActiveMaterial:
    """Look up an active material by name (case-insensitive)."""
    key = str(name).upper()
    if key not in ACTIVE_MATERIALS:
        raise ConfigError(
            f"material.name = {name!r}: unknown active material; valid names are "
            f"{sorted(ACTIVE_MATERIALS)}"
        )
    return ACTIVE_MATERIALS[key]
