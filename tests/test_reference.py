"""Sanity checks of the NumPy oracle itself (tests/reference.py), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.reference import AdaBeliefOracle, BeliefOracle, rho_t


def test_first_two_steps_by_hand_real_and_complex():
  b1, b2, eps = 0.9, 0.999, 1e-8
  oracle = BeliefOracle(
    [np.zeros(()), np.zeros((), np.complex64)], b1=b1, b2=b2, eps=eps, eps_root=0.0
  )

  # Step 1, real g = 2: m1 = 0.2, s1 = 0.001 * 1.8^2, m_hat = 2, s_hat = 3.24.
  # Complex g = 1 + 1j: g - m1 = 0.9 (1 + 1j), |.|^2 = 1.62, s_hat = 1.62.
  u_real, u_cplx = oracle.direction([np.array(2.0), np.array(1.0 + 1.0j)])
  assert oracle.states[0].mu == pytest.approx(0.2, rel=1e-15)
  assert oracle.states[0].nu == pytest.approx(0.00324, rel=1e-14)
  assert u_real == pytest.approx(2.0 / (1.8 + eps), rel=1e-14)
  assert oracle.states[1].nu.dtype == np.float64
  assert u_cplx.dtype == np.complex128
  np.testing.assert_allclose(u_cplx, (1 + 1j) / (0.9 * math.sqrt(2) + eps), rtol=1e-14)

  # Step 2, real g = -1: m2 = 0.18 - 0.1 = 0.08, g - m2 = -1.08,
  # s2 = 0.999 * 0.00324 + 0.001 * 1.1664 = 0.00440316.
  u_real, _ = oracle.direction([np.array(-1.0), np.array(0.0j)])
  assert oracle.states[0].mu == pytest.approx(0.08, rel=1e-14)
  assert oracle.states[0].nu == pytest.approx(0.00440316, rel=1e-14)
  m_hat = 0.08 / (1 - 0.9**2)
  s_hat = 0.00440316 / (1 - 0.999**2)
  assert u_real == pytest.approx(m_hat / (math.sqrt(s_hat) + eps), rel=1e-13)


@pytest.mark.parametrize('degenerate_to_sgd', [True, False])
def test_rectify_first_step_is_sgd_or_zero(degenerate_to_sgd):
  assert rho_t(0.999, 1) == pytest.approx(1.0, rel=1e-12)
  g = np.array([3.0, -0.5, 0.0])
  oracle = BeliefOracle([g], rectify=True, degenerate_to_sgd=degenerate_to_sgd)
  (u,) = oracle.direction([g])
  # m_hat = (1 - b1) g / (1 - b1) = g.
  expected = g if degenerate_to_sgd else np.zeros_like(g)
  np.testing.assert_allclose(u, expected, rtol=1e-14, atol=0)


def test_amsgrad_uses_running_max():
  b1, b2, eps = 0.9, 0.999, 1e-8
  oracle = BeliefOracle([np.zeros(())], b1=b1, b2=b2, eps=eps, eps_root=0.0, amsgrad=True)
  oracle.direction([np.array(10.0)])  # s1 = 0.001 * 81 = 0.081
  assert oracle.states[0].nu_max == pytest.approx(0.081, rel=1e-14)
  # g2 = 1: m2 = 0.9 + 0.1 = 1.0, g - m2 = 0, s2 = 0.999 * 0.081 < s1.
  (u,) = oracle.direction([np.array(1.0)])
  assert oracle.states[0].nu == pytest.approx(0.999 * 0.081, rel=1e-14)
  assert oracle.states[0].nu_max == pytest.approx(0.081, rel=1e-14)
  m_hat = 1.0 / (1 - 0.9**2)
  s_hat = 0.081 / (1 - 0.999**2)  # the max, not s2
  assert u == pytest.approx(m_hat / (math.sqrt(s_hat) + eps), rel=1e-13)


def test_nesterov_first_step():
  b1, b2, eps, g = 0.9, 0.999, 1e-8, -4.0
  oracle = BeliefOracle([np.zeros(())], b1=b1, b2=b2, eps=eps, eps_root=0.0, nesterov=True)
  (u,) = oracle.direction([np.array(g)])
  # m1 = (1 - b1) g; m_hat = b1 (1 - b1) g / (1 - b1^2) + g = g (1 + b1 / (1 + b1)).
  # s_hat = (b1 g)^2, so sqrt(s_hat) = |b1 g| = 3.6.
  m_hat = g * (1 + b1 / (1 + b1))
  assert u == pytest.approx(m_hat / (3.6 + eps), rel=1e-14)


@pytest.mark.parametrize('mode', ['decoupled', 'fixed', 'l2'])
def test_weight_decay_modes_first_step(mode):
  # p = 1.5, g = 2, eps = eps_root = 0: u1 = m_hat / |b1 g| = 1 / b1 = 10/9,
  # also for 'l2' (g' = g + wd p gives the same u1 at step 1).
  lr, wd, p = 0.1, 0.01, 1.5
  params = [np.array(p), np.array(p)]
  opt = AdaBeliefOracle(
    params,
    learning_rate=lambda k: lr * (k + 1),
    weight_decay=wd,
    weight_decay_mode=mode,
    weight_decay_mask=[True, False],
    eps=0.0,
    eps_root=0.0,
  )
  new, deltas = opt.step(params, [np.array(2.0), np.array(2.0)])
  u = 10.0 / 9.0
  expected = {'decoupled': -lr * (u + wd * p), 'fixed': -lr * u - wd * p, 'l2': -lr * u}[mode]
  assert deltas[0] == pytest.approx(expected, rel=1e-14)
  assert deltas[1] == pytest.approx(-lr * u, rel=1e-14)  # masked out: no decay
  assert new[0] == pytest.approx(p + expected, rel=1e-14)
