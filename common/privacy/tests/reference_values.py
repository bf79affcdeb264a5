#!/usr/bin/env python3
"""Reference values for the unit tests of `fedcrime-privacy`'s `rdp` module.

This script is NOT run by the test suite: it documents where every literal in
the `#[cfg(test)] mod tests` of `common/privacy/src/rdp.rs` comes from, so that
anyone can regenerate them. Its output was pasted into the tests.

Setup (a throw-away virtual environment; Opacus is installed without its torch
dependency because only its pure numpy/scipy RDP analysis file is used, loaded
by path so that `opacus/__init__.py`, which imports torch, is never run):

    python3 -m venv /tmp/dpref
    /tmp/dpref/bin/pip install dp-accounting==0.6.0      # pulls numpy, scipy, mpmath
    /tmp/dpref/bin/pip install --no-deps opacus==1.6.0
    /tmp/dpref/bin/python common/privacy/tests/reference_values.py

Versions used for the literals in the tests: dp-accounting 0.6.0, opacus
1.6.0, numpy 2.4.6, scipy 1.17.1, mpmath 1.4.1, Python 3.11.7.

Two RDP references, and why both
--------------------------------
For integer orders (and for q = 1) every implementation agrees. For
*fractional* orders they do not:

* Opacus 1.6.0 (`_compute_log_a_for_frac_alpha`) and TF Privacy's original
  `rdp_accountant.py` sum the two series of Mironov, Talwar & Zhang (2019,
  Sec. 3.3) with the *signs* of the generalised binomial coefficients
  C(alpha, i) (negative for some i > alpha). This is exact: it matches the
  numerical integral of A_alpha computed with mpmath (section [mp]) to ~1e-11.
* dp-accounting 0.6.0 (`_compute_log_a_frac`, also on its GitHub main branch)
  computes log C(alpha, i) with `gammaln`, i.e. log|C(alpha, i)|, and adds
  every term. That over-estimates A_alpha (e.g. q=0.01, z=2.5, alpha=1.5:
  +3.2 %), and where the series of magnitudes has not converged within 1000
  terms it returns inf and drops the order (common for q ~ 0.5). Its epsilon
  is therefore a valid but looser upper bound: for the federated case
  q=10/21, z=0.5, T=100 it reports 200.36 where the exact RDP gives 139.72.

fedcrime implements the exact (signed) series. The tests compare with
  - Opacus 1.6.0's accountant (its RDP and its conversion, over its
    DEFAULT_ALPHAS): the primary end-to-end reference, section [opacus];
  - "exact RDP at dp-accounting's default orders": Opacus's `compute_rdp` at
    `DEFAULT_RDP_ORDERS`, converted with dp-accounting's `compute_epsilon`
    (the exact counterpart of dp-accounting's `RdpAccountant()`), section
    [eps] column `exact`;
  - dp-accounting's own `RdpAccountant()`, section [eps] column `dp_acc`:
    equal where no fractional order matters, otherwise larger than ours.

Sections of the output (same names as the test functions that use them):
  [rdp]        one-step RDP at (q, z, order): mpmath integral, Opacus, dp-accounting
  [mp]         dp-accounting's own `test_compute_log_a_equals_mp` parameters:
               mpmath integral, Opacus, dp-accounting
  [eps]        T steps, default orders of dp-accounting, delta: `exact` and `dp_acc`
  [hetero]     two different steps composed
  [opacus]     Opacus 1.6.0: `compute_rdp(q=, noise_multiplier=, steps=,
               orders=RDPAccountant.DEFAULT_ALPHAS)` then
               `get_privacy_spent(orders=, rdp=, delta=)` (exactly what
               `RDPAccountant.get_privacy_spent` does)
  [pld]        dp-accounting `PLDAccountant(value_discretization_interval=1e-5)`
               (pessimistic estimate, the default): an upper bound on the
               *exact* epsilon of the mechanism, which RDP must never undercut
  [calibrate]  smallest z with epsilon <= target: `scipy.optimize.brentq`
               (xtol=1e-12) on the `exact` epsilon, and dp-accounting's
               `calibrate_dp_mechanism(RdpAccountant, ...)` for comparison
  [published]  re-computation of values published in TF Privacy's tests and
               in the docstring of Opacus's analysis/rdp.py
  [erfc]       log(erfc(x)) by mpmath at 40 digits (for the private log_erfc)
"""

import importlib.util
import math
import os

import dp_accounting
import mpmath
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib


def poisson_gaussian(q, z):
    return dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))


def rdp_eps(q, z, steps, delta, orders=None):
    acc = rdp_lib.RdpAccountant(orders)
    acc.compose(dp_event.SelfComposedDpEvent(poisson_gaussian(q, z), steps))
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


def load_opacus_rdp():
    """opacus/accountants/analysis/rdp.py, loaded without importing torch.

    `find_spec` locates the top-level package without executing its
    `__init__.py` (which imports torch); the analysis file itself only needs
    numpy and scipy.
    """
    root = os.path.dirname(importlib.util.find_spec("opacus").origin)
    path = os.path.join(root, "accountants", "analysis", "rdp.py")
    mod_spec = importlib.util.spec_from_file_location("opacus_rdp_analysis", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def log_a_mp(q, sigma, alpha):
    """log A_alpha by numerical integration (from dp-accounting's own test)."""
    mpmath.mp.dps = 50

    def mu0(x):
        return mpmath.npdf(x, mu=0, sigma=sigma)

    def ratio(x):
        return (1 - q) + q * mpmath.exp((2 * x - 1) / (2 * sigma**2))

    a, _ = mpmath.quad(lambda x: mu0(x) * ratio(x) ** alpha,
                       (-mpmath.inf, mpmath.inf), error=True, maxdegree=10)
    return float(mpmath.log(a))


EPS_CASES = [
    # (label, q, z, steps, delta)
    ("abadi_mnist", 0.01, 1.1, 10_000, 1e-5),
    ("tfp_mnist_tutorial", 256 / 60000, 1.1, 60 * 235, 1e-5),
    ("q0.1_z1_T100", 0.1, 1.0, 100, 1e-5),
    ("full_batch_gaussian", 1.0, 1.0, 1, 1e-5),
    ("q0.2_z0.8_T50", 0.2, 0.8, 50, 1e-5),
] + [
    (f"fed_q{qn}_z{z}_T{t}", q, z, t, 1e-5)
    for qn, q in (("10/21", 10 / 21), ("1", 1.0))
    for z in (0.5, 1.0, 2.0)
    for t in (10, 50, 100)
]

RDP_CASES = [
    # (q, z, order): fractional orders 1.5 and 2.5, and integer ones
    (0.01, 1.1, 1.5), (0.01, 1.1, 2.5), (0.1, 1.0, 1.5), (0.1, 1.0, 2.5),
    (0.2, 0.8, 1.5), (0.2, 0.8, 2.5), (10 / 21, 1.0, 1.5), (10 / 21, 0.5, 2.5),
    (0.01, 1.1, 2.0), (0.01, 1.1, 32.0), (0.01, 1.1, 1024.0), (0.1, 1.0, 10.9),
    (10 / 21, 2.0, 63.0), (256 / 60000, 1.1, 256.0),
]

# The parameters of dp-accounting's `test_compute_log_a_equals_mp`.
MP_CASES = [
    (1e-7, 0.1, 1.01), (1e-6, 0.1, 256), (1e-5, 0.1, 256.1), (1e-6, 1, 27),
    (1e-4, 1.0, 1.5), (1e-3, 1.0, 2), (0.01, 10, 20), (0.1, 100, 20.5),
    (0.99, 0.1, 256), (0.999, 100, 256.1),
]

PLD_CASES = [
    ("abadi_mnist", 0.01, 1.1, 10_000, 1e-5),
    ("q0.1_z1_T100", 0.1, 1.0, 100, 1e-5),
    ("q0.2_z0.8_T50", 0.2, 0.8, 50, 1e-5),
    ("fed_q10/21_z1_T50", 10 / 21, 1.0, 50, 1e-5),
    ("fed_q1_z2_T100", 1.0, 2.0, 100, 1e-5),
]

CALIBRATE_CASES = [
    # (q, steps, delta, target_epsilon)
    (0.01, 10_000, 1e-5, 2.0),
    (10 / 21, 50, 1e-5, 8.0),
    (1.0, 100, 1e-5, 10.0),
]


def exact_eps(opacus_rdp, q, z, steps, delta, orders=None):
    """Exact-series RDP (Opacus) at dp-accounting's orders, dp-accounting conversion."""
    orders = rdp_lib.DEFAULT_RDP_ORDERS if orders is None else orders
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders)
    eps, order = rdp_lib.compute_epsilon(orders, rdp, delta)
    return float(eps), float(order)


def main():
    opacus_rdp = load_opacus_rdp()

    print("[rdp]  q z order: mp, opacus, dp_accounting")
    for q, z, a in RDP_CASES:
        mp = log_a_mp(q, z, a) / (a - 1)
        op = float(opacus_rdp._compute_rdp(q, z, a))
        dp = float(rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, z, [a])[0])
        print(f"  ({q!r}, {z!r}, {a!r}, {mp!r}, {op!r}, {dp!r}),")

    print("[mp]  q z order: mp, opacus, dp_accounting")
    for q, z, a in MP_CASES:
        mp = log_a_mp(q, z, a) / (a - 1)
        op = float(opacus_rdp._compute_rdp(q, z, a))
        dp = float(rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, z, [a])[0])
        print(f"  ({q!r}, {z!r}, {a!r}, {mp!r}, {op!r}, {dp!r}),")

    print("[eps]  label q z T delta: exact (eps, order), dp_acc (eps, order)")
    for label, q, z, t, d in EPS_CASES:
        ex = exact_eps(opacus_rdp, q, z, t, d)
        dp = rdp_eps(q, z, t, d)
        print(f"  {label}: ({q!r}, {z!r}, {t}, {d!r}, {ex[0]!r}, {ex[1]!r}, {dp[0]!r}, {dp[1]!r}),")

    print("[hetero]  (10/21, z=1.0) x40 then (1.0, z=2.0) x10, delta=1e-5: exact, dp_acc")
    orders = rdp_lib.DEFAULT_RDP_ORDERS
    rdp = (opacus_rdp.compute_rdp(q=10 / 21, noise_multiplier=1.0, steps=40, orders=orders)
           + opacus_rdp.compute_rdp(q=1.0, noise_multiplier=2.0, steps=10, orders=orders))
    print(f"  exact {tuple(float(v) for v in rdp_lib.compute_epsilon(orders, rdp, 1e-5))!r}")
    acc = rdp_lib.RdpAccountant()
    acc.compose(dp_event.SelfComposedDpEvent(poisson_gaussian(10 / 21, 1.0), 40))
    acc.compose(dp_event.SelfComposedDpEvent(poisson_gaussian(1.0, 2.0), 10))
    print(f"  dp_acc {tuple(float(v) for v in acc.get_epsilon_and_optimal_order(1e-5))!r}")

    print("[opacus]  label: eps, order over RDPAccountant.DEFAULT_ALPHAS")
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    for label, q, z, t, d in EPS_CASES:
        rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=t, orders=alphas)
        eps, order = opacus_rdp.get_privacy_spent(orders=alphas, rdp=rdp, delta=d)
        print(f"  {label}: ({q!r}, {z!r}, {t}, {d!r}, {float(eps)!r}, {float(order)!r}),")

    print("[pld]  PLDAccountant(value_discretization_interval=1e-5), pessimistic")
    for label, q, z, t, d in PLD_CASES:
        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-5)
        acc.compose(dp_event.SelfComposedDpEvent(poisson_gaussian(q, z), t))
        print(f"  {label}: ({q!r}, {z!r}, {t}, {d!r}, {float(acc.get_epsilon(d))!r}),")

    print("[calibrate]  q T delta target: brentq on exact eps, dp-accounting calibrate")
    from scipy import optimize
    for q, t, d, target in CALIBRATE_CASES:
        z_exact = optimize.brentq(
            lambda z: exact_eps(opacus_rdp, q, z, t, d)[0] - target, 0.05, 100.0, xtol=1e-12)
        z_dp = dp_accounting.calibrate_dp_mechanism(
            rdp_lib.RdpAccountant,
            lambda z, q=q, t=t: dp_event.SelfComposedDpEvent(poisson_gaussian(q, z), t),
            target, d, tol=1e-9)
        print(f"  ({q!r}, {t}, {d!r}, {target!r}, {float(z_exact)!r}, {float(z_dp)!r}),")

    print("[published]  TF Privacy compute_dp_sgd_privacy_test.py (orders of its lib)")
    tfp_orders = ([1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5]
                  + list(range(5, 64)) + [128, 256, 512])
    for n, b, z, epochs, d in [(60000, 150, 1.3, 15, 1e-5),
                               (100000, 100, 1.0, 30, 1e-7),
                               (100000000, 1024, 0.1, 10, 1e-7)]:
        q = b / n
        steps = int(math.ceil(epochs * n / b))
        print(f"  n={n} batch={b} z={z} epochs={epochs} delta={d}: q={q!r} steps={steps}"
              f" dp_acc={rdp_eps(q, z, steps, d, tfp_orders)!r}"
              f" exact={exact_eps(opacus_rdp, q, z, steps, d, tfp_orders)!r}")
    print("  rdp_accountant_test.py compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100]):")
    print("    opacus", [float(v) for v in opacus_rdp.compute_rdp(
        q=0.01, noise_multiplier=2.5, steps=50, orders=[1.5, 2.5, 5, 50, 100])])
    print("    dp_acc", [float(v) * 50 for v in rdp_lib._compute_rdp_poisson_subsampled_gaussian(
        0.01, 2.5, [1.5, 2.5, 5, 50, 100])])
    print("  compute_rdp(0.1, 2, 10, 5):",
          float(opacus_rdp.compute_rdp(q=0.1, noise_multiplier=2, steps=10, orders=[5])[0]))
    orders = range(2, 33)
    rdp = sum(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=t, orders=orders)
              for q, z, t in [(1e-5, 1.0, 10), (1e-4, 3.0, 4)])
    print("  opacus docstring [(1e-5, 1.0, 10), (1e-4, 3.0, 4)], orders 2..32, delta 1e-5:",
          tuple(float(v) for v in opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)))

    print("[erfc]  x, log(erfc(x)) (mpmath, 40 digits)")
    mpmath.mp.dps = 40
    for x in [-30.0, -5.0, -2.0, -1.0, -0.5, 0.0, 1e-5, 0.1, 0.5, 1.0, 1.5, 1.99, 2.0,
              2.01, 3.0, 5.0, 10.0, 27.0, 100.0, 1e4, 1e10]:
        print(f"  ({x!r}, {float(mpmath.log(mpmath.erfc(x)))!r}),")


if __name__ == "__main__":
    main()
