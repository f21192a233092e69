"""Symmetric-tensor notation and per-grain stiffness tables for the elasticity kernel.

Notation
--------
Symmetric second-order tensors (strain, stress, eigenstrain) are stored as six
*tensor components* in the order

    (xx, yy, zz, yz, xz, xy)        (index 0..5, "Voigt order")

with true tensor components everywhere at the public boundary (a shear strain is
ε_xy, not the engineering shear γ_xy = 2 ε_xy). Fourth-order stiffness tensors are
accepted and returned as the usual 6×6 *Voigt* matrix (σ_V = C_V γ_V with
engineering shears), because that is how tables in the literature are written
(C11, C12, C13, C33, C44, ...).

Inside the kernels everything is converted to *Mandel* notation: a symmetric tensor
becomes v_M = (t_xx, t_yy, t_zz, √2 t_yz, √2 t_xz, √2 t_xy), and a stiffness becomes
C_M = W C_V W with W = diag(1, 1, 1, √2, √2, √2). In Mandel notation the double
contraction is the Euclidean dot product (ε : σ = ε_M · σ_M), C_M is a symmetric
6×6 matrix whose eigenvalues are the stiffness eigenvalues, and a rotation of the
frame acts as an orthogonal 6×6 matrix Q(R): C_M' = Q C_M Qᵀ (Mehrabadi & Cowin,
Q. J. Mech. Appl. Math. 43, 15 (1990)). This keeps the CG operator of the elasticity
solver symmetric without any special weights.

Rotations follow :mod:`ssbx.kernels.rotations`: R maps crystal to sample frame, so a
crystal-frame tensor T_c becomes T = R T_c Rᵀ and a stiffness
C_ijkl = R_ia R_jb R_kc R_ld C^c_abcd.

All functions are pure and jit-able; the ``check_*`` validators work on concrete
(numpy-convertible) values and are skipped by the callers for traced values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .rotations import HIGHEST, quaternion_to_matrix

#: Component order of symmetric tensors (Voigt order).
COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")
#: (i, j) index pairs of the six components.
PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
SQRT2 = math.sqrt(2.0)
_MANDEL_W = np.array([1.0, 1.0, 1.0, SQRT2, SQRT2, SQRT2])


class ElasticParameterError(ValueError):
    """Invalid elastic input; the message names the field, the value and the valid range."""


# ----------------------------------------------------------------------------------
# notation changes
# ----------------------------------------------------------------------------------


def mandel_weights(dtype=None):
    """W = (1, 1, 1, √2, √2, √2) as a jnp array."""
    return jnp.asarray(_MANDEL_W, dtype=dtype)


def voigt_to_mandel_stiffness(c_voigt):
    """6×6 Voigt stiffness (engineering shear) -> Mandel stiffness, C_M = W C_V W."""
    c_voigt = jnp.asarray(c_voigt)
    w = mandel_weights(c_voigt.dtype)
    return c_voigt * w[:, None] * w[None, :]


def mandel_to_voigt_stiffness(c_mandel):
    """Inverse of :func:`voigt_to_mandel_stiffness`."""
    c_mandel = jnp.asarray(c_mandel)
    w = mandel_weights(c_mandel.dtype)
    return c_mandel / (w[:, None] * w[None, :])


def components_to_mandel(v, axis=0):
    """Tensor components (xx, yy, zz, yz, xz, xy) along ``axis`` -> Mandel vector."""
    v = jnp.asarray(v)
    shape = [1] * v.ndim
    shape[axis] = 6
    return v * mandel_weights(v.dtype).reshape(shape)


def mandel_to_components(v, axis=0):
    """Mandel vector along ``axis`` -> tensor components (xx, yy, zz, yz, xz, xy)."""
    v = jnp.asarray(v)
    shape = [1] * v.ndim
    shape[axis] = 6
    return v / mandel_weights(v.dtype).reshape(shape)


def components_to_tensor(v, axis=0):
    """Six tensor components along ``axis`` -> full symmetric (..., 3, 3) tensors.

    The component axis is removed and two trailing axes of size 3 are appended,
    e.g. a (6, nx, ny, nz) stress field becomes (nx, ny, nz, 3, 3).
    """
    v = jnp.moveaxis(jnp.asarray(v), axis, -1)
    xx, yy, zz, yz, xz, xy = (v[..., k] for k in range(6))
    rows = [
        jnp.stack([xx, xy, xz], axis=-1),
        jnp.stack([xy, yy, yz], axis=-1),
        jnp.stack([xz, yz, zz], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def tensor_to_components(t, axis=0):
    """Full (..., 3, 3) tensors -> six components placed at ``axis`` (symmetrised)."""
    t = jnp.asarray(t)
    comps = [0.5 * (t[..., i, j] + t[..., j, i]) for i, j in PAIRS]
    return jnp.moveaxis(jnp.stack(comps, axis=-1), -1, axis)


def mandel_rotation(rotations):
    """Orthogonal 6×6 matrices Q(R) with (R T Rᵀ)_M = Q T_M for symmetric T.

    Built column by column: column J is the Mandel vector of R B_J Rᵀ, where B_J is
    the symmetric tensor whose Mandel vector is the J-th unit vector.

    Args:
        rotations: (..., 3, 3) rotation matrices.

    Returns:
        (..., 6, 6) orthogonal matrices.
    """
    rotations = jnp.asarray(rotations)
    basis = np.zeros((6, 3, 3))
    for k, (i, j) in enumerate(PAIRS):
        if i == j:
            basis[k, i, i] = 1.0
        else:
            basis[k, i, j] = basis[k, j, i] = 1.0 / SQRT2
    basis = jnp.asarray(basis, dtype=rotations.dtype)
    rotated = jnp.einsum("...ia,kab,...jb->...kij", rotations, basis, rotations, precision=HIGHEST)
    # Mandel vector of each rotated basis tensor: diagonal, then √2 × off-diagonal
    cols = jnp.stack(
        [
            rotated[..., 0, 0],
            rotated[..., 1, 1],
            rotated[..., 2, 2],
            SQRT2 * rotated[..., 1, 2],
            SQRT2 * rotated[..., 0, 2],
            SQRT2 * rotated[..., 0, 1],
        ],
        axis=-1,
    )  # (..., k=column, row)
    return jnp.swapaxes(cols, -1, -2)


def rotate_stiffness(c_voigt, rotations):
    """Rotate 6×6 Voigt stiffness matrices from the crystal to the sample frame.

    C_ijkl = R_ia R_jb R_kc R_ld C^c_abcd, evaluated as C_M = Q C^c_M Qᵀ in Mandel
    notation (:func:`mandel_rotation`).

    Args:
        c_voigt: (6, 6) or (n, 6, 6) crystal-frame Voigt stiffness (any unit).
        rotations: (n, 3, 3) rotation matrices (crystal -> sample).

    Returns:
        (n, 6, 6) sample-frame Voigt stiffness in the unit of ``c_voigt``.
    """
    rotations = jnp.asarray(rotations)
    q = mandel_rotation(rotations)
    c_m = voigt_to_mandel_stiffness(jnp.broadcast_to(jnp.asarray(c_voigt), q.shape))
    return mandel_to_voigt_stiffness(jnp.einsum("nij,njk,nlk->nil", q, c_m, q, precision=HIGHEST))


# ----------------------------------------------------------------------------------
# constitutive matrices
# ----------------------------------------------------------------------------------


def lame_stiffness(lam, mu):
    """Isotropic Voigt stiffness from Lamé constants λ, μ (unit of λ, μ).

    C_ijkl = λ δ_ij δ_kl + μ (δ_ik δ_jl + δ_il δ_jk): C11 = λ + 2μ, C12 = λ, C44 = μ.
    """
    lam = jnp.asarray(lam)
    mu = jnp.asarray(mu)
    dtype = jnp.result_type(lam, mu, float)
    normal = jnp.full((3, 3), 1.0, dtype) * lam + 2.0 * mu * jnp.eye(3, dtype=dtype)
    c = jnp.zeros((6, 6), dtype)
    c = c.at[:3, :3].set(normal)
    return c.at[3:, 3:].set(mu * jnp.eye(3, dtype=dtype))


def isotropic_stiffness(youngs_modulus, poisson_ratio):
    """Isotropic Voigt stiffness from Young's modulus E (Pa) and Poisson ratio ν.

    λ = E ν / ((1 + ν)(1 − 2ν)), μ = E / (2 (1 + ν)). Concrete inputs are checked:
    E > 0 and −1 < ν < 0.5 (positive definiteness); otherwise ElasticParameterError.
    """
    if _is_concrete(youngs_modulus) and _is_concrete(poisson_ratio):
        e = float(np.asarray(youngs_modulus))
        nu = float(np.asarray(poisson_ratio))
        if not (np.isfinite(e) and e > 0):
            raise ElasticParameterError(
                f"youngs_modulus = {e!r} Pa: must be finite and > 0"
            )
        if not (-1.0 < nu < 0.5):
            raise ElasticParameterError(
                f"poisson_ratio = {nu!r}: must lie in the open interval (-1, 0.5)"
            )
    e = jnp.asarray(youngs_modulus, dtype=jnp.result_type(youngs_modulus, float))
    nu = jnp.asarray(poisson_ratio, dtype=e.dtype)
    lam = e * nu / ((1 + nu) * (1 - 2 * nu))
    mu = e / (2 * (1 + nu))
    return lame_stiffness(lam, mu)


def hexagonal_stiffness(c11, c12, c13, c33, c44):
    """Transversely isotropic (hexagonal) Voigt stiffness with the symmetry axis = crystal z.

    Non-zero entries: C11 = C22, C12, C13 = C23, C33, C44 = C55 and
    C66 = (C11 − C12)/2 (Nye, *Physical Properties of Crystals*, 1985, ch. VIII).
    For the layered R-3m oxides the trigonal C14 is neglected (it is small in DFT
    tables and usually dropped in continuum models), which makes the crystal
    transversely isotropic about its c axis = crystal [001].
    """
    vals = [jnp.asarray(v) for v in (c11, c12, c13, c33, c44)]
    dtype = jnp.result_type(*vals, float)
    c11, c12, c13, c33, c44 = (v.astype(dtype) for v in vals)
    c = jnp.zeros((6, 6), dtype)
    c = c.at[0, 0].set(c11).at[1, 1].set(c11).at[2, 2].set(c33)
    c = c.at[0, 1].set(c12).at[1, 0].set(c12)
    c = c.at[0, 2].set(c13).at[2, 0].set(c13).at[1, 2].set(c13).at[2, 1].set(c13)
    c = c.at[3, 3].set(c44).at[4, 4].set(c44).at[5, 5].set(0.5 * (c11 - c12))
    return c


def isotropic_moduli(c_voigt):
    """Bulk and shear moduli (K, G) of the isotropic projection of a stiffness.

    With the projectors J = (1/3) 1⊗1 and K = I − J (Mandel notation),
    3K = J :: C and 2G = (K :: C) / 5, i.e. the Voigt averages
    K = (C11+C22+C33 + 2(C12+C13+C23))/9 and
    G = (C11+C22+C33 − C12−C13−C23 + 3(C44+C55+C66))/15.

    Args:
        c_voigt: (..., 6, 6) Voigt stiffness.

    Returns:
        (K, G) arrays of shape (...), unit of ``c_voigt``.
    """
    c = jnp.asarray(c_voigt)
    normal = c[..., :3, :3]
    diag_n = jnp.trace(normal, axis1=-2, axis2=-1)
    all_n = jnp.sum(normal, axis=(-2, -1))
    shear = c[..., 3, 3] + c[..., 4, 4] + c[..., 5, 5]
    bulk = all_n / 9.0
    g = (diag_n - 0.5 * (all_n - diag_n) + 3.0 * shear) / 15.0
    return bulk, g


# ----------------------------------------------------------------------------------
# per-grain tables
# ----------------------------------------------------------------------------------


def grain_stiffness_table(quaternions, c_crystal_voigt):
    """Sample-frame stiffness of every grain: (n, 6, 6) = rotate(C_crystal, R(q_g)).

    Args:
        quaternions: (n, 4) unit quaternions (w, x, y, z), crystal -> sample.
        c_crystal_voigt: (6, 6) crystal-frame Voigt stiffness (Pa).
    """
    return rotate_stiffness(c_crystal_voigt, quaternion_to_matrix(quaternions))


def grain_expansion_table(quaternions, beta):
    """Sample-frame chemical expansion tensors β_g = R diag(β1, β2, β3) Rᵀ per grain.

    The chemical eigenstrain of grain g is ε* = β_g (x − x_ref) (docs/physics.md §5).

    Args:
        quaternions: (n, 4) unit quaternions.
        beta: (3,) principal expansion per unit normalized Li content along the
            crystal axes [100], [010], [001] (dimensionless).

    Returns:
        (n, 6) tensor components (xx, yy, zz, yz, xz, xy).
    """
    r = quaternion_to_matrix(quaternions)
    beta = jnp.broadcast_to(jnp.asarray(beta, dtype=r.dtype), r.shape[:-1])
    t = jnp.einsum("nik,nk,njk->nij", r, beta, r, precision=HIGHEST)
    return tensor_to_components(t, axis=-1)


# ----------------------------------------------------------------------------------
# validation (concrete values only)
# ----------------------------------------------------------------------------------


def _is_concrete(value) -> bool:
    """True if ``value`` holds concrete numbers (not a JAX tracer)."""
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        np.asarray(value)
    except Exception:  # noqa: BLE001 - anything that cannot be materialised
        return False
    return True


def check_stiffness_table(table, name="stiffness_table", allow_zero=True, rtol=1e-6):
    """Validate a (n, 6, 6) Voigt stiffness table (Pa); no-op for traced values.

    Each entry must be finite, symmetric and positive definite. With
    ``allow_zero`` an all-zero entry (a pore / void phase) is accepted.

    Raises:
        ElasticParameterError naming the entry, the offending value and the rule.
    """
    if not _is_concrete(table):
        return
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 3 or t.shape[1:] != (6, 6):
        raise ElasticParameterError(
            f"{name}: shape {t.shape} is not (n_phases, 6, 6) Voigt stiffness"
        )
    if not np.all(np.isfinite(t)):
        bad = int(np.argwhere(~np.isfinite(t))[0][0])
        raise ElasticParameterError(f"{name}[{bad}]: contains NaN/Inf; must be finite")
    for k in range(t.shape[0]):
        c = t[k]
        scale = np.max(np.abs(c))
        if scale == 0.0:
            if allow_zero:
                continue
            raise ElasticParameterError(f"{name}[{k}]: all zeros; must be positive definite")
        asym = np.max(np.abs(c - c.T))
        if asym > rtol * scale:
            raise ElasticParameterError(
                f"{name}[{k}]: not symmetric (max |C - Cᵀ| = {asym:.3g} Pa); "
                "a stiffness matrix must satisfy C_IJ = C_JI"
            )
        eig = np.linalg.eigvalsh(voigt_to_mandel_np(0.5 * (c + c.T)))
        if eig.min() <= rtol * eig.max():
            raise ElasticParameterError(
                f"{name}[{k}]: not positive definite (smallest eigenvalue "
                f"{eig.min():.4g} Pa, largest {eig.max():.4g} Pa); valid: all "
                "eigenvalues > 0 (use an all-zero entry for a pore)"
            )


def voigt_to_mandel_np(c):
    """numpy version of :func:`voigt_to_mandel_stiffness` (for validation)."""
    return np.asarray(c) * _MANDEL_W[:, None] * _MANDEL_W[None, :]
