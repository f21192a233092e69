"""Elastic constants, chemical expansion and phase tables for the mechanics solver.

Units: stiffness in Pa (6×6 Voigt matrices, engineering shear), expansion
coefficients dimensionless per unit normalized Li content x = c/c_max.

Sign convention of the chemical expansion
-----------------------------------------
ε* = R diag(β1, β2, β3) Rᵀ (x − x_ref) with β given **per unit increase of x**
(lithiation), crystal axes [100], [010], [001] (c axis = [001]). The NCM622 set
β = (+0.028, +0.028, −0.040) therefore means: on *delithiation* (x decreases) the
a axes contract (ε*_aa = 0.028 Δx < 0) and the c axis expands
(ε*_cc = −0.040 Δx > 0), as stated in docs/physics.md §5 (c-axis collapse at very high
delithiation is not captured by a constant β). x_ref is the Li content of the
stress-free reference state (typically the initial, as-assembled state).

Sources (each value also in the material's ``source``)
------------------------------------------------------
* NCM, default ``"NCM"`` (= ``"NCM_xu2017"``): isotropic, x-dependent stiffness from
  measured secondary-particle moduli. Xu, Sun, de Vasconcelos & Zhao, "Mechanical and
  structural degradation of LiNixMnyCozO2 cathode in Li-ion batteries: an experimental
  study", J. Electrochem. Soc. 164, A3333 (2017): nanoindentation of NMC532 secondary
  particles in the electrode, E ≈ 142 GPa lithiated (pristine) and ≈ 112 GPa at full
  charge. E(x = 1) = 142 GPa, E(x = 0) = 112 GPa, linear in x in between (the solver
  interpolates C linearly, and at fixed ν C is proportional to E). ν = 0.3, the value
  the paper's Oliver–Pharr reduction assumed. NOT VERIFIED in the paper itself (it
  could not be retrieved in this session): 142 and 112 GPa are the values quoted in
  issue #12; a third-party transcription gives 142.5 ± 11.3 GPa for pristine NMC532
  secondary particles (Berkovich tip, Oliver–Pharr, ν = 0.3 assumed), consistent
  with 142. The paper's "full charge" is the charged electrode (cut-off voltage), not
  x = 0; putting its modulus at x = 0 is this code's approximation. A secondary
  particle's modulus includes grain boundaries and porosity, which is what a voxel
  grain of a coarse S2 particle stands for; for resolved primary grains the
  single-crystal tensor is the right input (not yet sourced, see below).
  Chemical expansion β = (0.028, 0.028, −0.040) per unit x (NCM622 study, docs/physics.md
  S1), rotated per grain as before: an isotropic stiffness with an anisotropic β.
* NCM, alternative ``"NCM_hexagonal_placeholder"`` (transversely isotropic about c):
  elastic constants **UNSOURCED PLACEHOLDERS** — literature-plausible values, not
  transcribed from a table: DFT studies of layered LiMO2 / NCM (Sun & Zhao,
  J. Phys. Chem. C 121, 6002 (2017); Liu et al., PRX Energy 3, 013012 (2024), which
  reports that the moduli fall with Ni content and that Mn stiffens the lattice)
  give in-plane C11 of a few hundred GPa, a softer c axis (C33 < C11), and a strong
  softening of C33 / C44 on delithiation (weakened interlayer bonding). The exact
  numbers of those tables could not be retrieved; replace the two tuples below with
  them and keep the citation. Select it with
  ``mechanics.active_material = "NCM_hexagonal_placeholder"``.
* LLZO (cubic garnet Li7La3Zr2O12, isotropic): E = 149.8 GPa (resonant ultrasound,
  3 % porosity), ν = 0.257 — Ni, Case, Sakamoto et al., J. Mater. Sci. 47, 7978
  (2012), "Room temperature elastic moduli and Vickers hardness of hot-pressed LLZO
  cubic garnet". The paper's moduli G = 59.6 GPa and B = 102.8 GPa give
  ν = (3B − 2G) / (2(3B + G)) = 0.257 and E = 9BG / (3B + G) = 149.8 GPa, so E and ν
  are consistent with it.
* Li6PS5Cl (argyrodite, isotropic): E = 28 GPa, ν = 0.27 as used for the SE in
  docs/physics.md scenario S3. E matches nanoindentation of dense Li6PS5Cl (28 ± 1.8 GPa,
  Ning et al., Nature 2023, as quoted by later work; not read in the original).
  ν = 0.27 is the spec's value. The DFT alternative of Deng et al., J. Electrochem.
  Soc. 163, A67 (2016) is E = 22.1 GPa, ν = 0.37 (B = 28.7, G = 8.1 GPa); porous
  pellets are much softer, so sweep E for a specific separator.
* Carbon (additive, isotropic): E = 20 GPa, ν = 0.25 — **placeholder** for a porous
  carbon-black/fibre aggregate; expose and sweep. For scale: nanoindentation of a
  carbon-black/PVDF binder domain gives E ≈ 1.8 GPa (Xu et al., J. Electrochem. Soc.
  164, A3333 (2017)).
* ECBD (homogenised SE + carbon, isotropic): E = 25 GPa, ν = 0.27 — **placeholder**
  close to the sulfide SE that dominates it by volume.
* Li metal: E = 7.82 GPa, ν = 0.381 (G = 2.83 GPa), polycrystalline Li by ultrasound,
  Masias et al., J. Mater. Sci. 54, 2585 (2019). Li creeps at sub-MPa stresses (yield
  ≈ 0.8 MPa in the same study); the elastic model ignores that.
* Al current collector: E = 70 GPa, ν = 0.33 (handbook value for Al alloys).
* Pore: zero stiffness (the kernel adds a floor, see ssbx.kernels.elasticity).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.kernels.stiffness import (
    ElasticParameterError,
    _is_concrete,
    check_stiffness_table,
    grain_expansion_table,
    grain_stiffness_table,
    hexagonal_stiffness,
    isotropic_stiffness,
)

GPA = 1.0e9

#: Voxel labels of the design (uint8).
LABELS = {
    0: "pore",
    1: "active",
    2: "solid_electrolyte",
    3: "carbon",
    4: "ecbd",
    5: "li_metal",
    6: "collector",
}
N_LABELS = len(LABELS)


@dataclasses.dataclass(frozen=True)
class ElasticMaterial:
    """Elastic constants of one phase (crystal frame for anisotropic phases).

    Attributes:
        name: material name.
        stiffness_delithiated: (6, 6) Voigt stiffness at x = 0, Pa.
        stiffness_lithiated: (6, 6) Voigt stiffness at x = 1, Pa (same as the
            delithiated one for phases that do not intercalate).
        expansion: (3,) principal chemical expansion per unit x along crystal
            [100], [010], [001] (zero for phases without chemical strain).
        anisotropic: True if the stiffness / expansion must be rotated per grain.
        source: citation string.
    """

    name: str
    stiffness_delithiated: Any
    stiffness_lithiated: Any
    expansion: Any = (0.0, 0.0, 0.0)
    anisotropic: bool = False
    source: str = ""


def isotropic_material(name, youngs_modulus_pa, poisson_ratio, source=""):
    """Isotropic, x-independent material without chemical strain.

    Raises ElasticParameterError for E ≤ 0 or ν outside (−1, 0.5).
    """
    c = isotropic_stiffness(youngs_modulus_pa, poisson_ratio)  # validates concrete E, ν
    if _is_concrete(youngs_modulus_pa) and _is_concrete(poisson_ratio):
        e, nu = float(youngs_modulus_pa), float(poisson_ratio)
        lam, mu = e * nu / ((1 + nu) * (1 - 2 * nu)), e / (2 * (1 + nu))
        c = np.zeros((6, 6))
        c[:3, :3] = lam
        c[np.arange(3), np.arange(3)] = lam + 2 * mu
        c[np.arange(3, 6), np.arange(3, 6)] = mu  # float64 even without jax x64
    return ElasticMaterial(name, c, c, (0.0, 0.0, 0.0), False, source)


def _isotropic_np(e, nu):
    lam, mu = e * nu / ((1 + nu) * (1 - 2 * nu)), e / (2 * (1 + nu))
    c = np.zeros((6, 6))
    c[:3, :3] = lam
    c[np.arange(3), np.arange(3)] = lam + 2 * mu
    c[np.arange(3, 6), np.arange(3, 6)] = mu
    return c


def isotropic_intercalation_material(name, youngs_delithiated_pa, youngs_lithiated_pa,
                                     poisson_ratio, expansion, source=""):
    """Isotropic stiffness that depends on x, with an anisotropic chemical expansion.

    C(x) = (1 − x) C(E_0, ν) + x C(E_1, ν) as for :func:`hexagonal_material` (the solver
    interpolates the two tables); at fixed ν that is E(x) = E_0 + x (E_1 − E_0). The
    expansion (β1, β2, β3) is per crystal axis and still rotated per grain.

    Raises ElasticParameterError for E ≤ 0 or ν outside (−1, 0.5).
    """
    for e in (youngs_delithiated_pa, youngs_lithiated_pa):
        isotropic_stiffness(e, poisson_ratio)  # validates concrete E, ν
    if len(expansion) != 3:
        raise ElasticParameterError(
            f"{name}.expansion: {len(expansion)} values given; expected (β1, β2, β3)"
        )
    concrete = all(_is_concrete(v) for v in (youngs_delithiated_pa, youngs_lithiated_pa,
                                             poisson_ratio))
    make = (lambda e: _isotropic_np(float(e), float(poisson_ratio))) if concrete else (
        lambda e: isotropic_stiffness(e, poisson_ratio))
    return ElasticMaterial(
        name, make(youngs_delithiated_pa), make(youngs_lithiated_pa),
        tuple(expansion) if _is_concrete(expansion) else expansion, False, source,
    )


def _hexagonal_np(c11, c12, c13, c33, c44):
    c = np.zeros((6, 6))
    c[0, 0] = c[1, 1] = c11
    c[2, 2] = c33
    c[0, 1] = c[1, 0] = c12
    c[0, 2] = c[2, 0] = c[1, 2] = c[2, 1] = c13
    c[3, 3] = c[4, 4] = c44
    c[5, 5] = 0.5 * (c11 - c12)
    return c


def hexagonal_material(name, constants_delithiated_pa, constants_lithiated_pa, expansion,
                       source=""):
    """Transversely isotropic intercalation material.

    Args:
        constants_*_pa: (C11, C12, C13, C33, C44) in Pa, c axis = crystal [001].
        expansion: (β1, β2, β3) per unit x (see module docstring for the sign).

    Raises ElasticParameterError if a set is not positive definite
    (C11 > |C12|, (C11 + C12) C33 > 2 C13², C44 > 0).
    """
    for label, consts in (("delithiated", constants_delithiated_pa),
                          ("lithiated", constants_lithiated_pa)):
        if len(consts) != 5:
            raise ElasticParameterError(
                f"{name}.{label}: {len(consts)} constants given; expected 5 "
                "(C11, C12, C13, C33, C44) in Pa"
            )
        if _is_concrete(consts):
            check_stiffness_table(
                _hexagonal_np(*consts)[None], f"{name}.{label} stiffness",
                allow_zero=False,
            )
    if len(expansion) != 3:
        raise ElasticParameterError(
            f"{name}.expansion: {len(expansion)} values given; expected (β1, β2, β3)"
        )
    concrete = _is_concrete(constants_delithiated_pa) and _is_concrete(constants_lithiated_pa)
    make = _hexagonal_np if concrete else hexagonal_stiffness
    return ElasticMaterial(
        name,
        make(*constants_delithiated_pa),
        make(*constants_lithiated_pa),
        tuple(expansion) if _is_concrete(expansion) else expansion,
        True,
        source,
    )


#: NCM secondary-particle Young's moduli (Pa) and Poisson ratio, Xu et al., JES 164,
#: A3333 (2017), NMC532 (values as quoted in issue #12; see the module docstring).
NCM_YOUNGS_LITHIATED_PA = 142e9
NCM_YOUNGS_DELITHIATED_PA = 112e9
NCM_POISSON_RATIO = 0.3
#: NCM elastic constants (C11, C12, C13, C33, C44) in Pa: UNSOURCED PLACEHOLDERS (module doc).
NCM_CONSTANTS_LITHIATED_PA = (280e9, 100e9, 70e9, 230e9, 70e9)
NCM_CONSTANTS_DELITHIATED_PA = (250e9, 90e9, 40e9, 110e9, 30e9)
#: NCM622 chemical expansion per unit x (docs/physics.md S1); + = expands on lithiation.
NCM622_EXPANSION = (0.028, 0.028, -0.040)

_NCM_XU2017_SOURCE = (
    "isotropic E(x): 142 GPa at x = 1, 112 GPa at x = 0, nu = 0.3: NMC532 secondary "
    "particles, Xu et al., JES 164, A3333 (2017) (values as quoted in issue #12, not "
    "verified in the paper); expansion: NCM622 study of docs/physics.md S1"
)
_NCM_SOURCE = (
    "UNSOURCED PLACEHOLDER elastic constants, to be replaced by the tables of "
    "Sun & Zhao, JPCC 121, 6002 (2017) / Liu et al., PRX Energy 3, 013012 (2024); "
    "expansion: NCM622 study of docs/physics.md S1"
)

_NCM_XU2017 = isotropic_intercalation_material(
    "NCM_xu2017", NCM_YOUNGS_DELITHIATED_PA, NCM_YOUNGS_LITHIATED_PA, NCM_POISSON_RATIO,
    NCM622_EXPANSION, _NCM_XU2017_SOURCE,
)

MECHANICS_MATERIALS: dict[str, ElasticMaterial] = {
    "NCM": _NCM_XU2017,  # the default active material
    "NCM_xu2017": _NCM_XU2017,
    "NCM_hexagonal_placeholder": hexagonal_material(
        "NCM_hexagonal_placeholder", NCM_CONSTANTS_DELITHIATED_PA, NCM_CONSTANTS_LITHIATED_PA,
        NCM622_EXPANSION, _NCM_SOURCE,
    ),
    "LLZO": isotropic_material(
        "LLZO", 149.8e9, 0.257, "Ni et al., J. Mater. Sci. 47, 7978 (2012)"
    ),
    "Li6PS5Cl": isotropic_material(
        "Li6PS5Cl", 28e9, 0.27,
        "docs/physics.md S3 (E = 28 GPa, nu = 0.27); E as nanoindentation (Ning et al. 2023); "
        "DFT alternative Deng et al., JES 163, A67 (2016): E = 22.1 GPa, nu = 0.37",
    ),
    "carbon": isotropic_material("carbon", 20e9, 0.25, "placeholder, to be swept"),
    "ECBD": isotropic_material("ECBD", 25e9, 0.27, "placeholder close to sulfide SE"),
    "Li": isotropic_material(
        "Li", 7.82e9, 0.381, "Masias et al., J. Mater. Sci. 54, 2585 (2019)"
    ),
    "Al": isotropic_material("Al", 70e9, 0.33, "handbook value, Al alloys"),
    "pore": ElasticMaterial("pore", np.zeros((6, 6)), np.zeros((6, 6)), (0.0, 0.0, 0.0),
                            False, "void"),
}

#: Default material per voxel label.
DEFAULT_LABEL_MATERIALS = {
    0: "pore",
    1: "NCM",
    2: "Li6PS5Cl",
    3: "carbon",
    4: "ECBD",
    5: "Li",
    6: "Al",
}


def get_mechanics_material(name_or_material) -> ElasticMaterial:
    """Look up a material by name (case-insensitive); ElasticMaterial passes through."""
    if isinstance(name_or_material, ElasticMaterial):
        return name_or_material
    lookup = {k.lower(): v for k, v in MECHANICS_MATERIALS.items()}
    key = str(name_or_material).lower()
    if key not in lookup:
        raise ElasticParameterError(
            f"mechanics material = {name_or_material!r}: unknown; valid names are "
            f"{sorted(MECHANICS_MATERIALS)} (or pass an ElasticMaterial)"
        )
    return lookup[key]


class PhaseTables(NamedTuple):
    """Inputs of :func:`ssbx.kernels.elasticity.solve_elasticity`.

    phase_index: int32 grid; grain g of the active material -> g, any other label L
        -> n_grains + L.
    table0, table1: (n_grains + 7, 6, 6) sample-frame Voigt stiffness at x = 0 / 1, Pa.
    expansion: (n_grains + 7, 6) sample-frame chemical expansion per unit x
        (tensor components xx, yy, zz, yz, xz, xy).
    """

    phase_index: Any
    table0: Any
    table1: Any
    expansion: Any


def build_phase_tables(labels, grain_id, quaternions, materials: Mapping | None = None):
    """Map (labels, grain ids, orientations, materials) to the elasticity phase tables.

    Every active voxel (label 1) indexes the rotated tables of its grain:
    C_g = rotate(C_NCM, R(q_g)), β_g = R(q_g) diag(β) R(q_g)ᵀ; voxels of any other
    label L index a shared isotropic entry n_grains + L. The tables are built with
    jax.numpy, so gradients flow to the material constants and β when an
    ElasticMaterial with traced values is passed.

    Args:
        labels: uint8 grid (axis 0 = x), values 0..6 (see LABELS).
        grain_id: int32 grid, ≥ 0 on active voxels (−1 elsewhere is fine).
        quaternions: (n_grains, 4) unit quaternions (w, x, y, z), crystal -> sample.
        materials: optional {label: material name or ElasticMaterial} overriding
            DEFAULT_LABEL_MATERIALS for some labels.

    Returns:
        PhaseTables.

    Raises:
        ElasticParameterError for shape mismatches, labels outside 0..6, active
        voxels without a valid grain id, zero quaternions, unknown material names
        or unknown label keys. (An isotropic material for label 1 is accepted and
        simply not rotated.)
    """
    labels_a = jnp.asarray(labels)
    gid = jnp.asarray(grain_id)
    q = jnp.asarray(quaternions)
    if labels_a.shape != gid.shape:
        raise ElasticParameterError(
            f"grain_id: shape {gid.shape} must equal labels shape {labels_a.shape}"
        )
    if q.ndim != 2 or q.shape[1] != 4:
        raise ElasticParameterError(
            f"quaternions: shape {q.shape} must be (n_grains, 4) (w, x, y, z)"
        )
    n_grains = q.shape[0]
    mats = dict(DEFAULT_LABEL_MATERIALS)
    if materials is not None:
        for key, val in materials.items():
            if key not in LABELS:
                raise ElasticParameterError(
                    f"materials key = {key!r}: not a voxel label; valid labels are "
                    f"{sorted(LABELS)} ({LABELS})"
                )
            mats[key] = val
    mats = {k: get_mechanics_material(v) for k, v in mats.items()}

    if _is_concrete(labels_a):
        lab_np = np.asarray(labels_a)
        bad = lab_np[(lab_np < 0) | (lab_np >= N_LABELS)]
        if bad.size:
            raise ElasticParameterError(
                f"labels: value {int(bad.flat[0])} outside the valid range 0..{N_LABELS - 1}"
            )
        if _is_concrete(gid):
            g_np = np.asarray(gid)
            act = lab_np == 1
            if act.any():
                ga = g_np[act]
                if ga.min() < 0 or ga.max() >= n_grains:
                    raise ElasticParameterError(
                        f"grain_id: active voxels carry ids in [{int(ga.min())}, "
                        f"{int(ga.max())}]; valid range is [0, {n_grains - 1}] "
                        f"(n_grains = {n_grains})"
                    )
        if _is_concrete(q) and n_grains:
            norms = np.linalg.norm(np.asarray(q), axis=1)
            if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
                raise ElasticParameterError(
                    "quaternions: every row must be finite and non-zero"
                )

    active = mats[1]
    if n_grains:
        if active.anisotropic:
            g0 = grain_stiffness_table(q, active.stiffness_delithiated)
            g1 = grain_stiffness_table(q, active.stiffness_lithiated)
        else:
            g0 = jnp.broadcast_to(jnp.asarray(active.stiffness_delithiated), (n_grains, 6, 6))
            g1 = jnp.broadcast_to(jnp.asarray(active.stiffness_lithiated), (n_grains, 6, 6))
        ge = grain_expansion_table(q, jnp.asarray(active.expansion, dtype=g0.dtype))
    else:
        g0 = g1 = jnp.zeros((0, 6, 6))
        ge = jnp.zeros((0, 6))
    l0, l1, le = [], [], []
    for lab in range(N_LABELS):
        m = mats[lab]
        l0.append(jnp.asarray(m.stiffness_delithiated, dtype=g0.dtype))
        l1.append(jnp.asarray(m.stiffness_lithiated, dtype=g0.dtype))
        # shared (unrotated) label entries: expansion taken in the sample frame
        e = jnp.asarray(m.expansion, dtype=g0.dtype)
        le.append(jnp.stack([e[0], e[1], e[2], 0 * e[0], 0 * e[0], 0 * e[0]]))
    table0 = jnp.concatenate([g0, jnp.stack(l0)])
    table1 = jnp.concatenate([g1, jnp.stack(l1)])
    expansion = jnp.concatenate([ge, jnp.stack(le)])
    phase_index = jnp.where(
        labels_a == 1, jnp.maximum(gid, 0), n_grains + labels_a.astype(jnp.int32)
    ).astype(jnp.int32)
    return PhaseTables(phase_index, table0, table1, expansion)


def check_material_name(field: str, name: str) -> None:
    try:
        get_mechanics_material(name)
    except ValueError as err:
        raise ConfigError(
            f"{field} = {name!r}: unknown mechanics material; valid names are {sorted(MECHANICS_MATERIALS)}"
        ) from err
