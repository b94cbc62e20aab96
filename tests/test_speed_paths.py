"""Speed paths against the textbook computations they replace.

- `cells.gate_projections` (see its docstring) must give the same values and the same
  gradients as splitting x @ w_x + h @ w_h + b, for every LSTM variant: the scan of the fast
  cell against a Python loop of the textbook cell, each sequence alone at its own length.
- `cells.lstm_pointwise`, the LSTM's elementwise part with its derivative written out, must
  match autodiff of the same expression in value, forward and reverse mode, and second order.
- `cells.minlstm_pointwise`, minLSTM's coefficients computed the fast way with their derivative
  written out, must match autodiff of the paper's expression the same way, in float64.
- `train.compiler_options()` must leave a training update unchanged (to float rounding).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, recurrent

TOL = dict(rtol=2e-5, atol=2e-6)


def _textbook_projections(x, h, params, num_gates):
  return jnp.split(x @ params["w_x"] + h @ params["w_h"] + params["b"], num_gates, axis=-1)


def _textbook_pointwise(z_i, z_f, z_g, z_o, c):
  c = jax.nn.sigmoid(z_f) * c + jax.nn.sigmoid(z_i) * jnp.tanh(z_g)
  return jax.nn.sigmoid(z_o) * jnp.tanh(c), c


def _textbook_lstm(cell: cells.Cell) -> cells.Cell:
  """`cell` computed the textbook way: the fused product split per gate, the elementwise part
  differentiated by autodiff, raw params inside the loop (no `prepare`)."""
  def step(params, carry, x):
    originals = cells.gate_projections, cells.lstm_pointwise
    cells.gate_projections, cells.lstm_pointwise = _textbook_projections, _textbook_pointwise
    try:
      return cell.step(params, carry, x)
    finally:
      cells.gate_projections, cells.lstm_pointwise = originals
  return dataclasses.replace(cell, step=step, prepare=None)


@pytest.mark.parametrize("num_gates", [3, 4])
def test_gate_projections_match_the_fused_product(num_gates):
  kx, kh, kp, kb = jax.random.split(jax.random.PRNGKey(0), 4)
  x, h = jax.random.normal(kx, (5, 7)), jax.random.normal(kh, (5, 3))
  params = cells.get("lstm", cifg=num_gates == 3).init(kp, 7, 3)
  params["b"] = jax.random.normal(kb, params["b"].shape)
  fast = cells.gate_projections(x, h, params, num_gates)
  reference = _textbook_projections(x, h, params, num_gates)
  assert len(fast) == num_gates
  for a, b in zip(fast, reference):
    assert a.shape == (5, 3)
    np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("options", [{}, {"peephole": True}, {"cifg": True},
                                     {"peephole": True, "cifg": True}])
@pytest.mark.parametrize("scan_options", [{}, {"remat": True}, {"truncation": 3}])
def test_lstm_scan_values_and_gradients(options, scan_options):
  cell = cells.get("lstm", **options)
  reference = _textbook_lstm(cell)
  kp, kx, kc = jax.random.split(jax.random.PRNGKey(1), 3)
  params = cell.init(kp, 6, 8)
  params["b"] = params["b"] + 0.1 * jax.random.normal(kc, params["b"].shape)
  xs = jax.random.normal(kx, (4, 9, 6))
  lengths = jnp.array([9, 5, 1, 7])

  k = scan_options.get("truncation")

  def loss(params, xs):
    (h, c), ys = recurrent.scan(cell, params, xs, lengths=lengths, **scan_options)
    return jnp.sum(ys ** 2) + jnp.sum(jnp.sin(h)) + jnp.sum(c ** 3), ys

  def loop_loss(params, xs):
    """The textbook LSTM in a Python loop, each sequence alone at its own length, the
    truncation's cuts placed by hand (0 < t < n, (n - t) % k == 0): no scan involved."""
    total, ys = 0.0, jnp.zeros(xs.shape[:2] + (8,))
    for b, n in enumerate(lengths.tolist()):
      carry = reference.zero_carry(1, 8)
      for t in range(n):
        if k is not None and 0 < t and (n - t) % k == 0:
          carry = jax.tree.map(jax.lax.stop_gradient, carry)
        carry, y = reference.step(params, carry, xs[b:b + 1, t])
        ys = ys.at[b, t].set(y[0])
        total = total + jnp.sum(y ** 2)
      total = total + jnp.sum(jnp.sin(carry[0])) + jnp.sum(carry[1] ** 3)
    return total, ys

  (fast, fast_ys), fast_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, xs)
  (ref, ref_ys), ref_grads = jax.value_and_grad(loop_loss, argnums=(0, 1), has_aux=True)(
      params, xs)
  np.testing.assert_allclose(fast, ref, **TOL)
  np.testing.assert_allclose(fast_ys, ref_ys, **TOL)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(a, b, **TOL)


def _pointwise_args(seed=0, shape=(3, 5)):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  return tuple(2.0 * jax.random.normal(k, shape) for k in keys)


def test_lstm_pointwise_values_and_derivatives_match_autodiff():
  args = _pointwise_args()
  for a, b in zip(cells.lstm_pointwise(*args), _textbook_pointwise(*args)):
    np.testing.assert_array_equal(a, b)
  cotangents = _pointwise_args(seed=1)[:2]
  _, fast_vjp = jax.vjp(cells.lstm_pointwise, *args)
  _, ref_vjp = jax.vjp(_textbook_pointwise, *args)
  for a, b in zip(fast_vjp(cotangents), ref_vjp(cotangents)):
    np.testing.assert_allclose(a, b, **TOL)
  tangents = _pointwise_args(seed=2)
  _, fast_jvp = jax.jvp(cells.lstm_pointwise, args, tangents)
  _, ref_jvp = jax.jvp(_textbook_pointwise, args, tangents)
  for a, b in zip(fast_jvp, ref_jvp):
    np.testing.assert_allclose(a, b, **TOL)


def test_lstm_pointwise_second_order_matches_autodiff():
  args = _pointwise_args(seed=3)
  def hessians(fn):
    loss = lambda *a: jnp.sum(fn(*a)[0] ** 2) + jnp.sum(jnp.sin(fn(*a)[1]))
    return jax.hessian(loss, argnums=(0, 1, 2, 3, 4))(*[a[:1, :2] for a in args])
  for a, b in zip(jax.tree.leaves(hessians(cells.lstm_pointwise)),
                  jax.tree.leaves(hessians(_textbook_pointwise)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_lstm_pointwise_passes_numerical_gradient_checks():
  from jax.test_util import check_grads
  args = _pointwise_args(seed=4, shape=(2, 3))
  check_grads(cells.lstm_pointwise, args, order=2, modes=("fwd", "rev"), eps=1e-2,
              atol=5e-2, rtol=5e-2)


def _paper_minlstm(k_f, k_i, k_h, positive, normalize):
  """Feng et al. 2024's minLSTM coefficients as the paper writes them."""
  f, i = 1.0 / (1.0 + jnp.exp(-k_f)), 1.0 / (1.0 + jnp.exp(-k_i))
  if normalize:
    f, i = f / (f + i), i / (f + i)
  g = jnp.where(k_h >= 0, k_h + 0.5, 1.0 / (1.0 + jnp.exp(-k_h))) if positive else k_h
  return f, i * g


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_minlstm_pointwise_matches_autodiff_of_the_papers_expression(positive, normalize):
  """`cells.minlstm_pointwise` (sigmoids and a division, derivative written out, a shift
  where both gates would underflow) against autodiff of the paper's expression in float64:
  values, reverse and forward mode, and second order. The inputs hold g's kink (0), gates
  near 1 (k = 20, 40: 1 - f must not round to 0), and pairs below -40 (the shifted ones;
  float64 computes the paper's expression there without underflow)."""
  fast = lambda *k: cells.minlstm_pointwise(*k, positive, normalize)
  paper = lambda *k: _paper_minlstm(*k, positive, normalize)
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.PRNGKey(7), 8)
    k_f, k_i, k_h = (3.0 * jax.random.normal(k, (4, 6), jnp.float64) for k in keys[:3])
    k_f = k_f.at[0, :4].set(jnp.array([20.0, 40.0, -60.0, -200.0]))
    k_i = k_i.at[0, :4].set(jnp.array([40.0, 3.0, -45.0, -201.5]))
    k_h = k_h.at[0, 0].set(0.0)
    args = (k_f, k_i, k_h)
    cotangents = tuple(jax.random.normal(k, (4, 6), jnp.float64) for k in keys[3:5])
    tangents = tuple(jax.random.normal(k, (4, 6), jnp.float64) for k in keys[5:8])
    for a, b in zip(fast(*args), paper(*args), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    # Autodiff of i / (f + i) where i' -> 1 loses digits (3e-10 relative at k = -60, -45
    # against mpmath; the written-out form is within 5e-16 there): hence 1e-9.
    tol = dict(rtol=1e-9, atol=1e-30)
    for a, b in zip(jax.vjp(fast, *args)[1](cotangents), jax.vjp(paper, *args)[1](cotangents),
                    strict=True):
      np.testing.assert_allclose(a, b, **tol)
    for a, b in zip(jax.jvp(fast, args, tangents)[1], jax.jvp(paper, args, tangents)[1],
                    strict=True):
      np.testing.assert_allclose(a, b, **tol)
    def hessians(fn):
      loss = lambda *k: jnp.sum(jnp.sin(fn(*k)[0])) + jnp.sum(fn(*k)[1] ** 3)
      return jax.hessian(loss, argnums=(0, 1, 2))(*[a[:1, :5] for a in args])
    for a, b in zip(jax.tree.leaves(hessians(fast)), jax.tree.leaves(hessians(paper)),
                    strict=True):
      # Second order: lax.logistic's own derivative, s (1 - s), is 0 at k = 40 where the
      # exact one is 4e-18, on either side: an absolute 1e-15 on entries of order 1.
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cpu_compiler_options_leave_the_update_unchanged(cell):
  """`train.compiler_options()` (-O1 on CPU) is a compile-time speed path: the same update.

  Not bit for bit: LLVM at -O1 rounds some elementwise math differently in the last place.
  """
  import functools

  import optax

  from rnn_jax import models, train
  if jax.default_backend() != "cpu":
    pytest.skip("compiler_options() is for the CPU backend only")
  options = train.compiler_options()
  assert options == {"xla_backend_optimization_level": 1}
  model = models.SequenceModel(cell=cell, input_kind="tokens", input_size=50, embed_size=8,
                               hidden_size=16, num_outputs=2, dropout_rate=0.2)
  tx = optax.adam(1e-2)
  step = functools.partial(train.train_step, model=model, tx=tx)
  k_in, k_len = jax.random.split(jax.random.PRNGKey(3))
  batch = {"inputs": jax.random.randint(k_in, (8, 12), 1, 50),
           "labels": jnp.arange(8) % 2,
           "lengths": jax.random.randint(k_len, (8,), 1, 13)}
  states = {}
  for name, jitted in (("default", jax.jit(step)),
                       ("options", jax.jit(step, compiler_options=options))):
    state = train.create_train_state(model, tx, seed=0)
    for _ in range(3):
      state, metrics = jitted(state, batch)
    states[name] = (state, metrics)
  for a, b in zip(jax.tree.leaves(states["default"]), jax.tree.leaves(states["options"]),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"peephole": True}, {"cifg": True},
                                     {"peephole": True, "cifg": True}])
def test_lstm_takes_raw_and_prepared_params_alike(options):
  """`Cell.prepare` (per-gate blocks, split once per sequence) changes nothing but speed:
  one step, and a whole scan given params that were prepared already (prepare runs twice)."""
  cell = cells.get("lstm", **options)
  kp, kx, kh = jax.random.split(jax.random.PRNGKey(5), 3)
  params = cell.init(kp, 6, 8)
  prepared = cell.prepare(params)
  assert isinstance(prepared["w_h"], tuple) and len(prepared["w_h"]) == cell.num_gates
  np.testing.assert_array_equal(jnp.concatenate(prepared["w_h"], axis=-1), params["w_h"])
  carry = (jax.random.normal(kh, (4, 8)), jax.random.normal(kx, (4, 8)))
  x = jax.random.normal(kx, (4, 6))
  for a, b in zip(jax.tree.leaves(cell.step(params, carry, x)),
                  jax.tree.leaves(cell.step(prepared, carry, x)), strict=True):
    np.testing.assert_array_equal(a, b)
  xs = jax.random.normal(kx, (4, 5, 6))
  for a, b in zip(jax.tree.leaves(recurrent.scan(cell, params, xs, carry)),
                  jax.tree.leaves(recurrent.scan(cell, prepared, xs, carry)), strict=True):
    np.testing.assert_array_equal(a, b)
