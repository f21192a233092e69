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

* ``"NCM622"`` — the multi-species, multi-reaction (MSMR) thermodynamic model of
  Verbrugge et al., J. Electrochem. Soc. 164, E3243 (2017), Table 1, NMC622 parameters
  (four galleries j with standard potential U0_j, site fraction X_j, ideality ω_j;
  Σ X_j = 1). The four parameter triples were checked against two independent
  transcriptions of Table 1 (the PyBaMM "MSMR_example_set" and a MATLAB MSMR class);
  the fit itself was not re-derived here. U(x) is the inverse of the explicit x(U),
  see :func:`msmr_fraction` / :func:`msmr_potential`. Valid range: x over 3.3–4.4 V.

  Normalisation caveat: the MSMR x is the filled fraction of the host sites of the fit
  (Σ X_j = 1), not Li per formula unit. ssbx uses it with x = c / c_max and, by
  default, the lattice c_max of ``engine/materials/active.py`` (the fit gives none). With that
  choice 4.3 V sits at x ≈ 0.13, i.e. ≈ 240 mAh/g removed, more than the ≈ 180–200
  mAh/g NCM622 delivers up to 4.3 V. This suggests the fit's host-site basis is the
  accessible capacity (≈ 0.8 of the lattice value). To match a measured capacity, set
  ``material.c_max_mol_m3`` to the accessible site concentration.

:func:`tabulated_ocv` turns digitised (x, U) data (e.g. a half-cell GITT curve) into a
monotone piecewise-linear OCVModel, and :func:`msmr_ocv` builds an OCVModel from any
MSMR parameter table.

Stoichiometry window (``windowed_ocv``): measured OCVs are tabulated against the
stoichiometry of the cell they were measured in, whose 0 % and 100 % SOC ends are not
the lattice's x = 1 and x = 0. Battery models therefore state the electrode's
accessible window, the lattice Li fraction at 0 % SOC (x_0, discharged) and at 100 %
SOC (x_100, charged). PyBaMM parameter sets keep the fit's own stoichiometry c / c_max
(with a c_max that belongs to the fit) and state the window as the stoichiometry
limits of their electrode state-of-health solver (y_0, y_100 for the positive
electrode). With the lattice c_max the equivalent is to map the fit's own window
linearly onto the lattice window, which is what this does. The
fit's own window is its stated range: x_max of the OCVModel is its 0 % SOC end and
x_min its 100 % SOC end, so

    U_window(x) = U(θ),  θ = x_min + (x − x_100) (x_max − x_min) / (x_0 − x_100),

which gives U_window(x_100) = U(x_min) and U_window(x_0) = U(x_max) exactly. The map is
affine and increasing, so U_window stays decreasing and differentiable; outside
[x_100, x_0] it extrapolates the fit like U itself does. ``get_ocv`` accepts the name
built by :func:`windowed_ocv_name` (a plain string, so it can stay a static field of
the solver's parameter pytree).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .constants import FARADAY, GAS_CONSTANT

__all__ = ["OCVModel", "ocv_ncm811_chen2020", "ocv_ncm111_wu2012", "get_ocv", "available_ocv",
           "tabulated_ocv", "windowed_ocv", "windowed_ocv_name", "msmr_fraction", "msmr_potential", "msmr_ocv",
           "NCM622_MSMR_VERBRUGGE2017"]


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


# ----------------------------------------------------------------------------------
# MSMR (multi-species, multi-reaction) thermodynamics
# ----------------------------------------------------------------------------------

#: NMC622 gallery parameters (U0_j in V, X_j, ω_j) of Verbrugge et al., J. Electrochem.
#: Soc. 164, E3243 (2017), Table 1, fitted at 25 °C.
NCM622_MSMR_VERBRUGGE2017 = (
    (3.62274, 0.13442, 0.96710),
    (3.72645, 0.32460, 1.39712),
    (3.90575, 0.21118, 3.50500),
    (4.22955, 0.32980, 5.52757),
)


def _msmr_arrays(galleries):
    table = np.asarray(galleries, dtype=float)
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
        raise ValueError(
            f"MSMR galleries shape = {table.shape}; valid: (n, 3) rows of (U0_V, X, omega)"
        )
    if not np.all(np.isfinite(table)):
        raise ValueError("MSMR galleries contain NaN or Inf; valid: finite numbers")
    if np.any(table[:, 1] <= 0) or np.any(table[:, 2] <= 0):
        raise ValueError(
            f"MSMR X_j = {table[:, 1].tolist()}, omega_j = {table[:, 2].tolist()}; valid: all > 0"
        )
    return table[:, 0], table[:, 1], table[:, 2]


def msmr_fraction(u, galleries, temperature_K=298.15):
    """Li site fraction x(U) of the MSMR model (Verbrugge et al. 2017, their Eq. 2–3).

    x(U) = Σ_j X_j / (1 + exp(f (U − U0_j) / ω_j)),  f = F / (R T),

    with U in V vs Li/Li⁺. Strictly decreasing in U, from Σ X_j (U → −∞) to 0.
    """
    return _msmr_fraction_and_slope(u, galleries, temperature_K)[0]


def _msmr_fraction_and_slope(u, galleries, temperature_K):
    """x(U) and dx/dU = −Σ_j X_j (f/ω_j) s_j (1 − s_j), s_j the gallery occupancy."""
    u0, big_x, omega = (jnp.asarray(a) for a in _msmr_arrays(galleries))
    f = FARADAY / (GAS_CONSTANT * temperature_K)
    occupancy = jax.nn.sigmoid(-f * (jnp.asarray(u)[..., None] - u0) / omega)
    return (jnp.sum(big_x * occupancy, axis=-1),
            -jnp.sum(big_x * (f / omega) * occupancy * (1 - occupancy), axis=-1))


def msmr_potential(x, galleries, temperature_K=298.15, bracket_V=(2.0, 5.5), bisections=40):
    """Invert the MSMR model: U such that x(U) = x (V vs Li/Li⁺).

    Bisection on the monotone x(U) inside ``bracket_V`` (without gradients), then two
    Newton steps that carry the derivative, so dU/dx = 1 / x'(U) exactly as the implicit
    function theorem gives and jax.grad/jacfwd work. x outside (x(U_hi), x(U_lo)) returns
    the bracket ends. Cost: ``bisections`` + 2 evaluations of x(U) per point.
    """
    x = jnp.asarray(x)
    lo0 = jnp.full_like(x, bracket_V[0])
    hi0 = jnp.full_like(x, bracket_V[1])
    x_const = jax.lax.stop_gradient(x)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_high = msmr_fraction(mid, galleries, temperature_K) < x_const  # U too high
        return jnp.where(too_high, lo, mid), jnp.where(too_high, mid, hi)

    lo, hi = jax.lax.fori_loop(0, bisections, bisect, (lo0, hi0))
    u = jax.lax.stop_gradient(0.5 * (lo + hi))
    for _ in range(2):
        fraction, slope = _msmr_fraction_and_slope(u, galleries, temperature_K)
        u = jnp.clip(u - (fraction - x) / slope, bracket_V[0], bracket_V[1])
    return u


def msmr_ocv(galleries, c_max_mol_m3, name="msmr", reference="user MSMR parameters",
             temperature_K=298.15, window_V=(3.0, 4.4)):
    """OCVModel from an MSMR gallery table ((U0_V, X, ω) rows).

    The valid x range is the one spanned by ``window_V`` (upper potential → x_min).
    """
    _msmr_arrays(galleries)
    if not c_max_mol_m3 > 0:
        raise ValueError(f"c_max_mol_m3 = {c_max_mol_m3}; valid: > 0")
    if not window_V[0] < window_V[1]:
        raise ValueError(f"window_V = {window_V}; valid: lower < upper potential")
    table = tuple(tuple(float(v) for v in row) for row in galleries)
    with jax.enable_x64(True):  # float64 metadata, whatever precision the caller runs in
        x_lo, x_hi = (float(msmr_fraction(v, table, temperature_K)) for v in window_V[::-1])
    return OCVModel(
        name, lambda x: msmr_potential(x, table, temperature_K), float(c_max_mol_m3),
        x_lo, x_hi, reference,
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
    "NCM622": msmr_ocv(
        NCM622_MSMR_VERBRUGGE2017,
        49214.0,
        name="NCM622",
        window_V=(3.3, 4.4),
        reference="Verbrugge et al., J. Electrochem. Soc. 164, E3243 (2017), Table 1: NMC622 "
        "MSMR parameters at 25 C; c_max from the NCM622 lattice (engine/materials/active.py)",
    ),
}

_ALIASES = {
    "NMC811": "NCM811",
    "NCM811_CHEN2020": "NCM811",
    "NMC111": "NCM111",
    "NCM333": "NCM111",
    "NMC333": "NCM111",
    "NCM111_WU2012": "NCM111",
    "NMC622": "NCM622",
    "NCM622_VERBRUGGE2017": "NCM622",
}


def available_ocv():
    """Registry names accepted by :func:`get_ocv` (aliases not listed)."""
    return tuple(sorted(_REGISTRY))


def windowed_ocv(model, x_at_0_soc, x_at_100_soc):
    """``model`` re-expressed on the lattice Li fraction x = c / c_max of an electrode
    whose accessible window runs from x_at_0_soc (0 % SOC, discharged) down to
    x_at_100_soc (100 % SOC, charged); see the module docstring for the map.

    Raises:
        ValueError: window ends outside [0, 1] or not x_at_100_soc < x_at_0_soc.
    """
    x0, x100 = float(x_at_0_soc), float(x_at_100_soc)
    for field, value in (("x_at_0_soc", x0), ("x_at_100_soc", x100)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{field} = {value!r}; valid range: [0, 1]")
    if not x100 < x0:
        raise ValueError(
            f"x_at_100_soc = {x100!r}, x_at_0_soc = {x0!r}; valid: x_at_100_soc < x_at_0_soc "
            "(charging removes Li)"
        )
    theta_100, theta_0 = model.x_min, model.x_max
    slope = (theta_0 - theta_100) / (x0 - x100)
    fn = model.fn

    def u(x):
        return fn(theta_100 + (jnp.asarray(x) - x100) * slope)

    return OCVModel(
        windowed_ocv_name(model.name, x0, x100), u, model.c_max_mol_m3, x100, x0,
        f"{model.reference}; own window [{theta_100}, {theta_0}] mapped onto lattice x "
        f"[{x100}, {x0}] (100 % / 0 % SOC)",
    )


def windowed_ocv_name(name, x_at_0_soc=None, x_at_100_soc=None):
    """The registry name of ``name`` on the window [x_at_100_soc, x_at_0_soc]; the plain
    name when both are None. ``get_ocv`` resolves it."""
    if x_at_0_soc is None and x_at_100_soc is None:
        return str(name)
    if x_at_0_soc is None or x_at_100_soc is None:
        raise ValueError(
            f"x_at_0_soc = {x_at_0_soc!r}, x_at_100_soc = {x_at_100_soc!r}; valid: both given or both None"
        )
    return f"{name}|x_at_0_soc={float(x_at_0_soc)!r}|x_at_100_soc={float(x_at_100_soc)!r}"


@functools.lru_cache(maxsize=64)
def _get_windowed(spec):
    base, *fields = spec.split("|")
    values = dict(f.split("=", 1) for f in fields)
    if set(values) != {"x_at_0_soc", "x_at_100_soc"}:
        raise ValueError(
            f"ocv name = {spec!r}: a windowed name needs x_at_0_soc and x_at_100_soc "
            "(build it with windowed_ocv_name)"
        )
    return windowed_ocv(get_ocv(base), float(values["x_at_0_soc"]), float(values["x_at_100_soc"]))


def get_ocv(name):
    """Look up an open-circuit potential by name (case-insensitive), or a windowed one
    by a name from :func:`windowed_ocv_name`.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if "|" in str(name):
        return _get_windowed(str(name))
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
