"""Reference thermodynamics of the Lennard-Jones fluid: tail corrections and the JZG equation of state.

All quantities are in Lennard-Jones reduced units of the solvent: lengths in sigma, densities
``rho* = N sigma^3 / V``, temperatures ``T* = k_B T / epsilon``, energies and chemical potentials in
epsilon, pressures in ``epsilon / sigma^3``. Divide an energy by ``T*`` to get it in kT.

The excess chemical potential ``mu_ex`` of a Lennard-Jones fluid is the solvation free energy of one of
its own particles, so :func:`jzg_excess_chemical_potential` is the reference for ``lj_fluid`` in the
repository's ``systems/lj_fluids.py``; that system is truncated (not shifted) at a cutoff, so compare
``mu_ex(truncated) + lj_tail_correction_mu(...)`` with the full-potential value.

Examples
--------
>>> round(float(jzg_excess_chemical_potential(0.8, 1.2) / 1.2), 4)  # mu_ex / kT at rho* = 0.8, T* = 1.2
-0.6077
"""

__all__ = [
    "lj_tail_correction_energy",
    "lj_tail_correction_mu",
    "jzg_excess_helmholtz",
    "jzg_pressure",
    "jzg_excess_internal_energy",
    "jzg_excess_chemical_potential",
]

import numpy as np

from ..errors import InvalidInputError

# Johnson, Zollweg & Gubbins, Mol. Phys. 78, 591 (1993), doi:10.1080/00268979300100411, Table 10: the 32
# parameters x_1..x_32 of their modified Benedict-Webb-Rubin equation and gamma = 3. Transcribed from
# usnistgov/teqp, include/teqp/models/mie/lennardjones/johnson.hpp (class LJ126Johnson1993, commit
# 1b62ed19), and checked digit for digit against 3ki5tj/zcom, lj/lj.0.c (lj_eos3d), which types them
# independently. (One other public copy has x_13 = 2.0840122999434647e1, an extra "9": a typo.)
_X = (
    None,  # 1-based, as in the paper
    0.8623085097507421, 2.976218765822098, -8.402230115796038, 0.1054136629203555,
    -0.8564583828174598, 1.582759470107601, 0.7639421948305453, 1.753173414312048,
    2.798291772190376e3, -4.8394220260857657e-2, 0.9963265197721935, -3.698000291272493e1,
    2.084012299434647e1, 8.305402124717285e1, -9.574799715203068e2, -1.477746229234994e2,
    6.398607852471505e1, 1.603993673294834e1, 6.805916615864377e1, -2.791293578795945e3,
    -6.245128304568454, -8.116836104958410e3, 1.488735559561229e1, -1.059346754655084e4,
    -1.131607632802822e2, -8.867771540418822e3, -3.986982844450543e1, -4.689270299917261e3,
    2.593535277438717e2, -2.694523589434903e3, -7.218487631550215e2, 1.721802063863269e2,
)
_GAMMA = 3.0

# JZG Tables 5 and 6 as (parameter index, power of T*): a_i(T) = sum x_k T^p, b_i(T) likewise.
_A_TERMS = (
    ((1, 1.0), (2, 0.5), (3, 0.0), (4, -1.0), (5, -2.0)),
    ((6, 1.0), (7, 0.0), (8, -1.0), (9, -2.0)),
    ((10, 1.0), (11, 0.0), (12, -1.0)),
    ((13, 0.0),),
    ((14, -1.0), (15, -2.0)),
    ((16, -1.0),),
    ((17, -1.0), (18, -2.0)),
    ((19, -2.0),),
)
_B_TERMS = (
    ((20, -2.0), (21, -3.0)),
    ((22, -2.0), (23, -4.0)),
    ((24, -2.0), (25, -3.0)),
    ((26, -2.0), (27, -4.0)),
    ((28, -2.0), (29, -3.0)),
    ((30, -2.0), (31, -3.0), (32, -4.0)),
)


def _reduced(value, name, allow_zero):
    array = np.asarray(value, dtype=np.float64) if not isinstance(value, (bool, np.bool_)) else None
    if array is None or not np.all(np.isfinite(array)) or np.any(array < 0) or (not allow_zero and np.any(array == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be a finite reduced (Lennard-Jones units) number {bound}, got {value!r}.")
    return array


def lj_tail_correction_energy(density, cutoff, sigma=1.0, epsilon=1.0):
    """Long-range correction to the potential energy per particle of a truncated Lennard-Jones fluid.

    .. math:: u_\\text{tail} = \\frac{8}{3} \\pi \\rho^* \\epsilon \\sigma^3
              \\left[\\frac{1}{3} \\left(\\frac{\\sigma}{r_c}\\right)^9 - \\left(\\frac{\\sigma}{r_c}\\right)^3\\right]

    i.e. ``(rho/2) * integral_{r_c}^inf 4 pi r^2 u(r) dr`` with ``g(r) = 1`` beyond the cutoff (Frenkel &
    Smit, *Understanding Molecular Simulation*, 2nd ed. 2002, Sec. 3.2.2; Allen & Tildesley, *Computer
    Simulation of Liquids*, 2nd ed. 2017, Sec. 2.8). It is what OpenMM's ``NonbondedForce`` adds per
    particle with ``setUseDispersionCorrection(True)`` in a one-component fluid.

    Parameters
    ----------
    density : float or array_like
        rho* = N sigma^3 / V of the solvent.
    cutoff : float or array_like
        r_c in solvent sigma.
    sigma, epsilon : float, optional
        Pair parameters in solvent units (default 1: the solvent itself).

    Returns
    -------
    float or numpy.ndarray
        In units of the solvent epsilon.

    Examples
    --------
    >>> round(float(lj_tail_correction_energy(0.8, 2.5)), 4)
    -0.4283
    """
    rho = _reduced(density, "density", allow_zero=True)
    rc = _reduced(cutoff, "cutoff", allow_zero=False)
    s = _reduced(sigma, "sigma", allow_zero=False)
    e = _reduced(epsilon, "epsilon", allow_zero=True)
    x3 = (s / rc) ** 3
    return 8.0 / 3.0 * np.pi * rho * e * s**3 * (x3**3 / 3.0 - x3)


def lj_tail_correction_mu(density, cutoff, sigma=1.0, epsilon=1.0):
    """Long-range correction to the excess chemical potential of a truncated (not shifted) Lennard-Jones fluid.

    .. math:: \\mu_\\text{tail} = \\frac{16}{3} \\pi \\rho^* \\epsilon \\sigma^3
              \\left[\\frac{1}{3} \\left(\\frac{\\sigma}{r_c}\\right)^9 - \\left(\\frac{\\sigma}{r_c}\\right)^3\\right]

    Inserting one particle adds its interaction with every neighbour beyond ``r_c``:
    ``rho * integral_{r_c}^inf 4 pi r^2 u(r) dr`` with ``g(r) = 1``, twice the energy tail per particle
    (:func:`lj_tail_correction_energy`), which shares each pair between two particles (Frenkel & Smit,
    2002, Sec. 3.2.2 and 7.2.1). For a truncated-and-shifted potential the shift adds a further term; this
    function is for truncation only, the way OpenMM's ``CutoffPeriodic`` computes Lennard-Jones.

    For a solute B in a solvent A pass the cross parameters ``sigma = sigma_AB``, ``epsilon = epsilon_AB``
    (in solvent units) and the solvent density.

    Parameters
    ----------
    density : float or array_like
        rho* of the solvent.
    cutoff : float or array_like
        r_c in solvent sigma.
    sigma, epsilon : float, optional
        Pair parameters in solvent units (default 1: a solvent particle).

    Returns
    -------
    float or numpy.ndarray
        ``mu_full - mu_truncated`` in units of the solvent epsilon (negative: the tail is attractive).

    Examples
    --------
    >>> round(float(lj_tail_correction_mu(0.8, 2.5)), 4)
    -0.8567
    >>> bool(lj_tail_correction_mu(0.8, 2.5) == 2 * lj_tail_correction_energy(0.8, 2.5))
    True
    """
    return 2.0 * lj_tail_correction_energy(density, cutoff, sigma, epsilon)


def _coefficients(terms, temperature, internal_energy=False):
    # a(T) = sum x T^p; the matching coefficient of the internal energy, a - T da/dT, is sum (1 - p) x T^p.
    return [sum((1.0 - p if internal_energy else 1.0) * _X[k] * temperature**p for k, p in group) for group in terms]


def _g_integrals(rho):
    # G_1 = (1 - F)/(2 gamma), G_k = -(F rho^(2(k-1)) - 2 (k-1) G_{k-1})/(2 gamma), F = exp(-gamma rho^2) (JZG Table 7):
    # G_k = integral_0^rho F(r) r^(2k-1) dr.
    F = np.exp(-_GAMMA * rho**2)
    G = [(1.0 - F) / (2.0 * _GAMMA)]
    for k in range(2, 7):
        G.append(-(F * rho ** (2 * (k - 1)) - 2.0 * (k - 1) * G[-1]) / (2.0 * _GAMMA))
    return F, G


def _state(density, temperature):
    rho = _reduced(density, "density", allow_zero=True)
    T = _reduced(temperature, "temperature", allow_zero=False)
    return rho, T


def jzg_excess_helmholtz(density, temperature):
    """Excess Helmholtz free energy per particle of the full Lennard-Jones fluid, JZG equation of state.

    .. math:: \\frac{A_\\text{ex}}{N\\epsilon} = \\sum_{i=1}^{8} \\frac{a_i(T^*)\\,\\rho^{*i}}{i}
              + \\sum_{i=1}^{6} b_i(T^*)\\,G_i(\\rho^*)

    (Johnson, Zollweg & Gubbins, Mol. Phys. 78, 591 (1993), doi:10.1080/00268979300100411, Eq. 5 and
    Tables 5-7, with their 32 parameters and gamma = 3). Fitted to simulations of the full (untruncated or
    tail-corrected) potential for 0.7 <= T* <= 6; less accurate near the critical point (T* ~ 1.31,
    rho* ~ 0.31) and inside the two-phase region, where it is a smooth interpolation, not a fluid state.

    Parameters
    ----------
    density : float or array_like
        rho*.
    temperature : float or array_like
        T*.

    Returns
    -------
    float or numpy.ndarray
        A_ex / (N epsilon); divide by T* for units of kT.

    Examples
    --------
    >>> round(float(jzg_excess_helmholtz(0.8, 1.2)), 4)
    -1.985
    """
    rho, T = _state(density, temperature)
    a = _coefficients(_A_TERMS, T)
    b = _coefficients(_B_TERMS, T)
    _, G = _g_integrals(rho)
    return sum(a[i] * rho ** (i + 1) / (i + 1) for i in range(8)) + sum(b[i] * G[i] for i in range(6))


def jzg_pressure(density, temperature):
    """Pressure of the full Lennard-Jones fluid from the JZG equation of state, in epsilon / sigma^3.

    .. math:: P^* = \\rho^* T^* + \\sum_{i=1}^{8} a_i \\rho^{*\\,i+1} + F \\sum_{i=1}^{6} b_i \\rho^{*\\,2i+1},
              \\qquad F = e^{-\\gamma \\rho^{*2}}

    (JZG 1993, Eq. 7), which is ``rho*^2 d(A_ex/N)/d rho* + rho* T*``. The compressibility factor is
    ``Z = P* / (rho* T*)``.

    Examples
    --------
    >>> round(float(jzg_pressure(0.8, 1.2)), 4)
    1.9646
    """
    rho, T = _state(density, temperature)
    a = _coefficients(_A_TERMS, T)
    b = _coefficients(_B_TERMS, T)
    F = np.exp(-_GAMMA * rho**2)
    return rho * T + sum(a[i] * rho ** (i + 2) for i in range(8)) + F * sum(b[i] * rho ** (2 * i + 3) for i in range(6))


def jzg_excess_internal_energy(density, temperature):
    """Excess (potential) energy per particle of the full Lennard-Jones fluid, JZG equation of state.

    ``U_ex / N = d(beta A_ex/N)/d beta = A_ex/N - T* d(A_ex/N)/dT*`` (JZG 1993, Eq. 9 with Tables 8-9),
    evaluated term by term: a term ``x T*^p`` of a coefficient contributes ``(1 - p) x T*^p``.

    Returns
    -------
    float or numpy.ndarray
        U_ex / (N epsilon).

    Examples
    --------
    >>> round(float(jzg_excess_internal_energy(0.8, 1.2)), 4)
    -5.3584
    """
    rho, T = _state(density, temperature)
    c = _coefficients(_A_TERMS, T, internal_energy=True)
    d = _coefficients(_B_TERMS, T, internal_energy=True)
    _, G = _g_integrals(rho)
    return sum(c[i] * rho ** (i + 1) / (i + 1) for i in range(8)) + sum(d[i] * G[i] for i in range(6))


def jzg_excess_chemical_potential(density, temperature):
    """Excess chemical potential of the full Lennard-Jones fluid from the JZG equation of state.

    Derivation (reduced units, epsilon = sigma = k_B = 1). With ``a(rho, T) = A_ex / N`` the excess
    Helmholtz free energy per particle (:func:`jzg_excess_helmholtz`) and ``A_ex = N a(N/V, T)``,

    .. math:: \\mu_\\text{ex} = \\left(\\frac{\\partial A_\\text{ex}}{\\partial N}\\right)_{V,T}
              = a + \\rho \\frac{\\partial a}{\\partial \\rho}
              = \\frac{\\partial (\\rho a)}{\\partial \\rho}.

    The excess pressure is ``P - rho T = rho^2 da/drho`` (JZG's Eq. 7 is exactly this derivative of their
    Eq. 5), so ``rho da/drho = P/rho - T`` and

    .. math:: \\mu_\\text{ex}/\\epsilon = A_\\text{ex}/(N\\epsilon) + P^*/\\rho^* - T^*,
              \\qquad \\beta \\mu_\\text{ex} = \\beta A_\\text{ex}/N + Z - 1,

    with ``P*`` in epsilon/sigma^3 and ``Z = P*/(rho* T*)``. The two forms are the same equation in units
    of epsilon and of kT: mixing them (adding ``Z - 1`` to ``A_ex/(N epsilon)``) is wrong by a factor
    ``T*`` on the pressure term.

    Parameters
    ----------
    density : float or array_like
        rho*.
    temperature : float or array_like
        T*.

    Returns
    -------
    float or numpy.ndarray
        mu_ex / epsilon of the full (untruncated) potential; ``/ T*`` gives mu_ex / kT. For a fluid
        truncated (not shifted) at ``r_c``, ``mu_ex(truncated) ~= mu_ex(full) - lj_tail_correction_mu(rho, r_c)``.

    Examples
    --------
    >>> round(float(jzg_excess_chemical_potential(0.8, 1.2)), 4)
    -0.7292
    >>> import numpy as np
    >>> np.round(jzg_excess_chemical_potential([1e-9, 0.5], 2.0), 4)
    array([-0.    , -0.5311])
    """
    rho, T = _state(density, temperature)
    excess_pressure_over_rho = np.divide(jzg_pressure(rho, T) - rho * T, rho, out=np.zeros(np.broadcast(rho, T).shape), where=rho > 0)
    return jzg_excess_helmholtz(rho, T) + excess_pressure_over_rho
