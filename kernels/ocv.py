"""Open-circuit potentials U(x) of layered NCM cathodes, V vs Li/Li⁺.

x = c / c_max is the normalised Li content of the active material (x → 1: lithiated,
discharged; x small: delithiated, charged), so every U(x) here decreases with x.

Each entry of the registry is an :class:`OCVModel` holding the function, the c_max it
was published with (or derived for, as stated) and the x range over which it is
meant to be used. Outside that range the formulas still evaluate (nothing is clamped)
but are extrapolations; callers that need a hard limit check ``x_min``/``x_max``.

Available (``get_ocv(name)``, case-insensitive; "NMC" spellings are aliases):

* ``"NCM811"`` — Chen et al., J. Electrochem. Soc. 167, 080534 (2020), positive
  electrode (LG M50 cell, NMC 811) OCP fit (their Eq. for U_p, a linear term plus three
  tanh terms fitted to GITT pseudo-OCP data); c_max = 63104 mol/m³ (same paper).
* ``"NCM111"`` — the LiNi1/3Mn1/3Co1/3O2 fit of Wu et al., J. Electrochem. Soc. 159,
  A438 (2012), "High rate capability of Li(Ni1/3Mn1/3Co1/3)O2 electrode for Li-ion
  batteries" (cubic polynomial plus an exponential term for the steep end at x → 1).
  The coefficients were checked against two independent re-uses of that fit (a
  MOOSE electrochemistry example labelled "OCP_cathode_NMC111" and a MATLAB P2D code);
  the equation number in the original paper has not been verified here. c_max is not
  part of that fit: 49,450 mol/m³ is derived here from the crystallographic density
  of LiNi1/3Mn1/3Co1/3O2 (≈ 4.77 g/cm³) and its molar mass (96.46 g/mol); override it
  for a specific material.

Not provided: NCM622. No published analytic NCM622 OCP fit could be verified while
writing this module (the fits that circulate under "NMC" names in open parameter sets
are NMC532, NMC811, LiNiCoO2 or LiCoO2 fits); rather than ship a mislabelled curve,
``get_ocv("NCM622")`` raises ``ValueError``. :func:`tabulated_ocv` turns digitised
(x, U) data (e.g. a half-cell GITT curve) into a monotone piecewise-linear OCVModel.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["OCVModel", "ocv_ncm811_chen2020", "ocv_ncm111_wu2012", "get_ocv", "available_ocv",
           "tabulated_ocv"]


class OCVModel(NamedTuple):
    """An open-circuit potential U(x) with its metadata.

    Attributes:
        name: registry name.
        fn: U(x) in V vs Li/Li⁺, x = c/c_max (jnp-traceable, elementwise).
        c_max_mol_m3: maximum Li concentration (mol/m³).
        x_min, x_max: range of x over which the fit is meant to be used.
        reference: source of the fit and the values.
    """

    name: str
    fn: Callable
    c_max_mol_m3: float
    x_min: float
    x_max: float
    reference: str

    def __call__(self, x):
        return self.fn(x)


def ocv_ncm811_chen2020(x):
    """NMC811 OCP of Chen et al., J. Electrochem. Soc. 167, 080534 (2020) (V vs Li/Li⁺).

    U(x) = −0.8090 x + 4.4875 − 0.0428 tanh(18.5138 (x − 0.5542))
           − 17.7326 tanh(15.7890 (x − 0.3117)) + 17.5842 tanh(15.9308 (x − 0.3120))

    Fitted to the GITT pseudo-OCP of the LG M50 positive electrode; the cell uses the
    stoichiometry window x ≈ 0.27 (4.2 V charged) to ≈ 0.91 (2.5 V discharged). The
    two large tanh terms nearly cancel; evaluate in float32 only to ~1 mV accuracy.
    """
    x = jnp.asarray(x)
    return (
        -0.8090 * x
        + 4.4875
        - 0.0428 * jnp.tanh(18.5138 * (x - 0.5542))
        - 17.7326 * jnp.tanh(15.7890 * (x - 0.3117))
        + 17.5842 * jnp.tanh(15.9308 * (x - 0.3120))
    )


def ocv_ncm111_wu2012(x):
    """LiNi1/3Mn1/3Co1/3O2 OCP fit of Wu et al., J. Electrochem. Soc. 159, A438 (2012).

    U(x) = 6.0826 − 6.9922 x + 7.1062 x² − 2.5947 x³ − 5.4549e−5 exp(124.23 x − 114.2593)

    (V vs Li/Li⁺). Use for 0.35 ≤ x ≤ 0.99 (≈ 4.39 V down to ≈ 3.3 V); below 0.35 the
    polynomial rises to unphysical values (6.08 V at x = 0) and the exponential makes
    U plunge as x → 1.
    """
    x = jnp.asarray(x)
    return (
        6.0826
        - 6.9922 * x
        + 7.1062 * x**2
        - 2.5947 * x**3
        - 5.4549e-5 * jnp.exp(124.23 * x - 114.2593)
    )


_REGISTRY = {
    "NCM811": OCVModel(
        "NCM811",
        ocv_ncm811_chen2020,
        63104.0,
        0.2661,
        0.9084,
        "Chen et al., J. Electrochem. Soc. 167, 080534 (2020): positive-electrode OCP fit "
        "and c_max = 63104 mol/m3 (LG M50, NMC 811)",
    ),
    "NCM111": OCVModel(
        "NCM111",
        ocv_ncm111_wu2012,
        49450.0,
        0.35,
        0.99,
        "Wu et al., J. Electrochem. Soc. 159, A438 (2012): LiNi1/3Mn1/3Co1/3O2 OCP fit; "
        "c_max derived from density 4.77 g/cm3 and M = 96.46 g/mol (not from the paper)",
    ),
}

_ALIASES = {
    "NMC811": "NCM811",
    "NCM811_CHEN2020": "NCM811",
    "NMC111": "NCM111",
    "NCM333": "NCM111",
    "NMC333": "NCM111",
    "NCM111_WU2012": "NCM111",
}


def available_ocv():
    """Registry names accepted by :func:`get_ocv` (aliases not listed)."""
    return tuple(sorted(_REGISTRY))


def get_ocv(name):
    """Look up an open-circuit potential by name (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).strip().upper().replace("-", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(
            f"ocv name = {name!r} is unknown; valid names: {', '.join(available_ocv())} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return _REGISTRY[key]


def tabulated_ocv(x_data, u_data, c_max_mol_m3, name="tabulated", reference="user data"):
    """Piecewise-linear OCVModel from measured points (e.g. digitised GITT data).

    Args:
        x_data: increasing x values (at least 2, within [0, 1]).
        u_data: U at those x (V vs Li/Li⁺), strictly decreasing.
        c_max_mol_m3: maximum concentration (mol/m³, > 0).

    Outside [x_data[0], x_data[-1]] U is held at the end values (documented clamp).

    Raises:
        ValueError: non-monotone or malformed data, naming the field.
    """
    xd = np.asarray(x_data, float)
    ud = np.asarray(u_data, float)
    if xd.ndim != 1 or xd.shape != ud.shape or xd.size < 2:
        raise ValueError(
            f"x_data/u_data shapes = {xd.shape}/{ud.shape}; valid: equal 1-D shapes, length >= 2"
        )
    if not (np.all(np.isfinite(xd)) and np.all(np.isfinite(ud))):
        raise ValueError("x_data/u_data contain NaN or Inf; valid: finite numbers")
    if np.any(np.diff(xd) <= 0) or xd[0] < 0 or xd[-1] > 1:
        raise ValueError(
            f"x_data = [{xd[0]}, ..., {xd[-1]}]; valid: strictly increasing within [0, 1]"
        )
    if np.any(np.diff(ud) >= 0):
        raise ValueError("u_data must be strictly decreasing in x (thermodynamic stability)")
    if not c_max_mol_m3 > 0:
        raise ValueError(f"c_max_mol_m3 = {c_max_mol_m3}; valid: > 0")
    xj = jnp.asarray(xd)
    uj = jnp.asarray(ud)
    return OCVModel(
        name, lambda x: jnp.interp(jnp.asarray(x), xj, uj), float(c_max_mol_m3),
        float(xd[0]), float(xd[-1]), reference,
    )
