"""The LSTM's one-matmul projection ([x, h] @ [w_x; w_h]) against the two-matmul reference.

`cells.joint_projection` is a speed path (see its docstring): it must give the same values and
the same gradients as x @ w_x + h @ w_h, for every LSTM variant, through a whole scan.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, recurrent

TOL = dict(rtol=2e-5, atol=2e-6)


def _two_matmul_lstm(cell: cells.Cell) -> cells.Cell:
  """`cell` with joint_projection replaced by the textbook x @ w_x + h @ w_h."""
  def step(params, carry, x):
    original = cells.joint_projection
    cells.joint_projection = lambda x, h, p: x @ p["w_x"] + h @ p["w_h"]
    try:
      return cell.step(params, carry, x)
    finally:
      cells.joint_projection = original
  return dataclasses.replace(cell, step=step)


def test_joint_projection_matches_two_matmuls():
  kx, kh, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  x, h = jax.random.normal(kx, (5, 7)), jax.random.normal(kh, (5, 3))
  params = cells.get("lstm").init(kp, 7, 3)
  np.testing.assert_allclose(cells.joint_projection(x, h, params),
                             x @ params["w_x"] + h @ params["w_h"], **TOL)


@pytest.mark.parametrize("options", [{}, {"peephole": True}, {"cifg": True},
                                     {"peephole": True, "cifg": True}])
def test_lstm_scan_values_and_gradients(options):
  cell = cells.get("lstm", **options)
  reference = _two_matmul_lstm(cell)
  kp, kx, kc = jax.random.split(jax.random.PRNGKey(1), 3)
  params = cell.init(kp, 6, 8)
  params["b"] = params["b"] + 0.1 * jax.random.normal(kc, params["b"].shape)
  xs = jax.random.normal(kx, (4, 9, 6))
  lengths = jnp.array([9, 5, 1, 7])

  def loss(cell, params, xs):
    (h, c), ys = recurrent.scan(cell, params, xs, lengths=lengths)
    return jnp.sum(ys ** 2) + jnp.sum(jnp.sin(h)) + jnp.sum(c ** 3), ys

  (fast, fast_ys), fast_grads = jax.value_and_grad(
      lambda p, x: loss(cell, p, x), argnums=(0, 1), has_aux=True)(params, xs)
  (ref, ref_ys), ref_grads = jax.value_and_grad(
      lambda p, x: loss(reference, p, x), argnums=(0, 1), has_aux=True)(params, xs)
  np.testing.assert_allclose(fast, ref, **TOL)
  np.testing.assert_allclose(fast_ys, ref_ys, **TOL)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, **TOL)
