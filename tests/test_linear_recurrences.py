"""The linear recurrences (minGRU, minLSTM, RG-LRU, LRU), their scans and the residual block.

References written from the equations, not from rnn_jax's code: a float64 NumPy loop for
h_t = a_t h_{t-1} + b_t; the float64 NumPy cell steps of test_scan_intersections (the
papers' equations) inside a NumPy residual block, each sequence run alone at its own length;
and two implementations written elsewhere: minGRU-pytorch (minGRU, minLSTM) and the Griffin
authors' RG-LRU layer (reference_recurrentgemma.py).
The scan options where these cells meet lengths, reverse, truncation, remat and probes are in
test_scan_intersections' grid; here: long sequences, the block, initialisations, the
training engine (devices, dropout, vmapped seeds, the language model) and clear errors.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rnn_jax import ablate, cells, data, diagnostics, lm, models, recurrent, train

from test_ablate import _final_params, _sweep
from test_engine import _final_state, _lm_config, _streams
from test_scan_intersections import _np_step
from test_train import latest_params, run, tiny_config
from test_train_intersections import params_after_training_in_modes

LINEAR = ("mingru", "minlstm", "rglru", "lru")
MODES = ("sequential", "chunked", "parallel")
SLOW = pytest.mark.slow  # Kept out of the default run for its time; CI runs them too.


# ----------------------------------------------------------------------------- linear_scan

def _np_linear(a, b, h0):
  h, out = h0.copy(), np.zeros_like(b)
  for t in range(len(a)):
    h = a[t] * h + b[t]
    out[t] = h
  return out


def _a_shape(shape, constant):
  """a's shape: one a per step and sequence, or (constant) one per unit, [1, 1, state], the
  same at every step (the LRU's lambda), which `linear_scan` broadcasts itself."""
  return (1, 1) + shape[2:] if constant else shape


CONSTANT_A = pytest.mark.parametrize("constant", [False, True], ids=["a_per_step", "constant_a"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("time", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@CONSTANT_A
def test_linear_scan_matches_a_float64_loop(mode, time, complex_, constant):
  """Every mode, any T (also T = 1, 2 and T not a multiple of the chunk), real and complex
  coefficients, a per step or constant; a_t spans (0, 1) with exact zeros (resets) and values
  near 1 (long memory), so products over 1,000 steps underflow in some units and not in
  others."""
  rng = np.random.default_rng(time)
  shape = (time, 3, 5)
  a = rng.uniform(0.0, 1.0, _a_shape(shape, constant)) ** 0.05  # Mostly near 1 ...
  a[rng.random(a.shape) < 0.02] = 0.0                            # ... with some resets.
  b = rng.standard_normal(shape)
  h0 = rng.standard_normal(shape[1:])
  if complex_:
    a = a * np.exp(1j * rng.uniform(0, 2 * np.pi, a.shape))
    b = b + 1j * rng.standard_normal(shape)
    h0 = h0 + 1j * rng.standard_normal(shape[1:])
  want = _np_linear(np.broadcast_to(a, shape), b, h0)
  dtype = jnp.complex64 if complex_ else jnp.float32
  got = recurrent.linear_scan(jnp.asarray(a, dtype), jnp.asarray(b, dtype),
                              jnp.asarray(h0, dtype), mode)
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-5 * scale)


def _np_linear_tangent(a, h0, hs, da, db, dh0):
  """dh_t = a_t dh_{t-1} + da_t h_{t-1} + db_t: h_t = a_t h_{t-1} + b_t differentiated by hand."""
  h_prev = np.concatenate([h0[None], hs[:-1]])
  return _np_linear(a, da * h_prev + db, dh0)


def _np_linear_cotangents(a, h0, hs, ct):
  """The adjoint loop, backwards from the last step: g_t = ct_t + a_{t+1} g_{t+1}; then
  d/da_t = g_t h_{t-1}, d/db_t = g_t, d/dh0 = a_0 g_0 (no conjugation: JAX's VJP of a
  holomorphic function is the transposed Jacobian)."""
  g, carry = np.zeros_like(ct), np.zeros_like(ct[0])
  for t in reversed(range(len(a))):
    g[t] = ct[t] + carry
    carry = a[t] * g[t]
  h_prev = np.concatenate([h0[None], hs[:-1]])
  return g * h_prev, g, carry


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("time", [1, 7, 300])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@CONSTANT_A
def test_linear_scan_derivatives_match_float64_loops(mode, time, complex_, constant):
  """Forward (JVP) and reverse (VJP) derivatives in every mode, real and complex, a per step
  or constant, against the hand-differentiated float64 loops above, whose tangent loop is
  itself checked against a central finite difference of `_np_linear`. Resets (a = 0) and
  values near 1 as above. A constant a's cotangent is the sum of the per-step ones."""
  rng = np.random.default_rng(time + 1)
  shape = (time, 3, 5)
  def draw(size):
    x = rng.standard_normal(size)
    return x + 1j * rng.standard_normal(size) if complex_ else x
  a = rng.uniform(0.0, 1.0, _a_shape(shape, constant)) ** 0.05
  a[rng.random(a.shape) < 0.02] = 0.0
  if complex_:
    a = a * np.exp(1j * rng.uniform(0, 2 * np.pi, a.shape))
  b, h0, da, db, dh0, ct = (draw(shape), draw(shape[1:]), draw(a.shape), draw(shape),
                            draw(shape[1:]), draw(shape))
  a_steps, da_steps = np.broadcast_to(a, shape), np.broadcast_to(da, shape)
  hs = _np_linear(a_steps, b, h0)
  want_tangent = _np_linear_tangent(a_steps, h0, hs, da_steps, db, dh0)
  eps = 1e-6
  finite_difference = (_np_linear(a_steps + eps * da_steps, b + eps * db, h0 + eps * dh0)
                       - _np_linear(a_steps - eps * da_steps, b - eps * db, h0 - eps * dh0)
                       ) / (2 * eps)
  np.testing.assert_allclose(want_tangent, finite_difference, rtol=1e-6,
                             atol=1e-6 * np.abs(want_tangent).max())
  want_cotangents = list(_np_linear_cotangents(a_steps, h0, hs, ct))
  if constant:  # One a for every step and sequence: its cotangent sums theirs.
    want_cotangents[0] = want_cotangents[0].sum(axis=(0, 1), keepdims=True)
  # The adjoint loop is the transpose of the tangent loop: <ct, J v> = <J^T ct, v>.
  np.testing.assert_allclose(
      np.sum(ct * want_tangent),
      sum(np.sum(c * v) for c, v in zip(want_cotangents, (da, db, dh0))), rtol=1e-9)

  dtype = jnp.complex64 if complex_ else jnp.float32
  cast = lambda *xs: [jnp.asarray(x, dtype) for x in xs]
  scan = jax.jit(lambda a, b, h0: recurrent.linear_scan(a, b, h0, mode))
  _, got_tangent = jax.jvp(scan, cast(a, b, h0), cast(da, db, dh0))
  _, vjp = jax.vjp(scan, *cast(a, b, h0))
  got_cotangents = vjp(*cast(ct))
  for got, want in [(got_tangent, want_tangent), *zip(got_cotangents, want_cotangents)]:
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4,
                               atol=2e-5 * np.abs(want).max())
  # Derivatives come from the rule that follows the recurrence, not from autodiff of the loop.
  assert "custom_jvp_call" in str(jax.make_jaxpr(scan)(*cast(a, b, h0)))


@pytest.mark.parametrize("mode", MODES)
@CONSTANT_A
def test_linear_scan_second_derivatives_match_an_unrolled_loop(mode, constant):
  """Hessian-vector products (forward over reverse) against autodiff of the recurrence
  written as a plain Python loop, unrolled (no lax.scan, no custom rule); a per step or
  constant."""
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  a = jax.nn.sigmoid(jax.random.normal(keys[0], _a_shape((20, 3, 4), constant)))
  b, v = (jax.random.normal(k, (20, 3, 4)) for k in keys[1:3])
  h0 = jax.random.normal(keys[3], (3, 4))

  def unrolled(a, b, h0):
    h, out = h0, []
    for t in range(len(b)):
      h = a[0 if constant else t] * h + b[t]
      out.append(h)
    return jnp.stack(out)

  def hvp(scan):
    grad = jax.grad(lambda a, b: jnp.sum(jnp.sin(scan(a, b, h0))), argnums=(0, 1))
    return jax.jvp(grad, (a, b), (v[:len(a), :a.shape[1]], v))[1]
  for got, want in zip(hvp(lambda a, b, h0: recurrent.linear_scan(a, b, h0, mode)),
                       hvp(unrolled)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("time", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("restarts", [False, True], ids=["", "restarts"])
def test_log_linear_scan_matches_a_float64_loop(time, restarts):
  """The log-space form from log a, log b: a_t in (0, 1] from near 1 to 1e-12 (so log a spans
  0 to -28 and a*_t reaches about -30 per 100 steps), b_t > 0 over 12 orders of magnitude,
  h0 of either sign; restarts (truncation's cuts) read a given state instead of h_{t-1}.
  The form's float32 error grows with |a*_t| (exp of a difference of two large sums): each
  entry must stay within a few ulp per unit of its segment's |a*_t|, relative to the sum of
  the magnitudes of its terms (h0's and each b's; they cannot cancel in the log form)."""
  rng = np.random.default_rng(time)
  shape = (time, 3, 5)
  a = rng.uniform(0.0, 1.0, shape) ** 0.05
  a[rng.random(shape) < 0.01] = 1e-12
  b = np.exp(rng.uniform(-14.0, 14.0, shape))
  h0 = rng.standard_normal(shape[1:])
  resets = restart_states = None
  want_a, want_b = a.copy(), b.copy()
  if restarts:
    resets = rng.random(shape[:2] + (1,)) < 0.05
    restart_states = rng.standard_normal(shape)
    want_b = np.where(resets, a * restart_states + b, b)
    want_a = np.where(resets, 0.0, a)
    resets, restart_states = jnp.asarray(resets), jnp.asarray(restart_states, jnp.float32)
  want = _np_linear(want_a, want_b, h0)
  got = recurrent.log_linear_scan(jnp.log(jnp.asarray(a, jnp.float32)),
                                  jnp.log(jnp.asarray(b, jnp.float32)),
                                  jnp.asarray(h0, jnp.float32), resets, restart_states)
  scale = _np_linear(want_a, np.abs(want_b) if not restarts else np.where(
      resets, a * np.abs(restart_states) + b, b), np.abs(h0))
  a_star, total = np.zeros_like(a), np.zeros(shape[1:])
  for t in range(time):  # The segment's sum of log a: restarts start a new one.
    total = np.log(a[t]) + (1.0 if not restarts else np.where(resets[t], 0.0, 1.0)) * total
    a_star[t] = total
  rtol = 2e-5 + 1e-6 * np.abs(a_star)  # 1e-6 ~ 8 float32 ulp per unit of |a*_t|.
  error = np.abs(np.asarray(got) - want)
  assert np.all(error <= rtol * scale), (
      f"max error / scale {np.max(error / scale):.2e} at max |a*| {np.abs(a_star).max():.0f}")


@pytest.mark.parametrize("name", [pytest.param("mingru", marks=SLOW), "minlstm"])
def test_log_mode_derivatives_stay_accurate_over_a_long_untruncated_sequence(name):
  """T = 784, full BPTT, a read-out of the last state: autodiff of the log-space formula
  cancels large terms (its gradient was off by 1e-2 here); the derivatives follow the
  recurrence instead, so reverse and forward mode agree with the sequential scan (itself
  pinned to float64 by the grid) to the log form's own value error."""
  cell = cells.get(name)
  params = cell.init(jax.random.key(0), 1, 16)
  xs = jax.random.normal(jax.random.key(1), (8, 784, 1))
  weights = jax.random.normal(jax.random.key(2), (8, 16))

  def loss(params, mode):
    carry, _ = recurrent.scan(cell, params, xs, scan_mode=mode)
    return jnp.sum(weights * carry)

  for mode in ("sequential", "log"):
    grad = jax.jit(jax.grad(loss), static_argnums=1)(params, mode)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, jvp = jax.jvp(lambda p: loss(p, mode), (params,), (tangent,))
    if mode == "sequential":
      want_grad, want_jvp = grad, jvp
  for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()))
  np.testing.assert_allclose(jvp, want_jvp, rtol=1e-4)


@pytest.mark.parametrize("name", [pytest.param("mingru", marks=SLOW), "minlstm", "rglru", "lru"])
def test_modes_agree_on_a_long_padded_batch_with_truncation(name):
  """T = 600, lengths down to 1, reverse, truncation k = 50, a loss on every output and the
  final carry: values and gradients of every whole-sequence mode equal the cell's step run in
  a loop ("step", which the grid pins to the NumPy equations)."""
  cell = cells.get(name)
  params = cell.init(jax.random.key(0), 6, 8)
  xs = jax.random.normal(jax.random.key(1), (4, 600, 6))
  lengths = jnp.array([600, 417, 50, 1])
  weights = jax.random.normal(jax.random.key(2), (4, 600, 8))

  def loss(params, mode):
    carry, ys = recurrent.scan(cell, params, xs, lengths=lengths, reverse=True, truncation=50,
                               scan_mode=mode)
    return jnp.sum(weights * ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

  modes = MODES + ("log",) * (cell.linear.log_coefficients is not None)
  results = {mode: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, mode)
             for mode in ("step",) + modes}
  want_value, want_grad = results["step"]
  for mode in modes:
    value, grad = results[mode]
    np.testing.assert_allclose(value, want_value, rtol=1e-5, err_msg=mode)
    for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
      np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * float(jnp.abs(w).max()),
                                 err_msg=mode)


# ----------------------------------------------------------------------------- initialisation

def test_lru_starts_on_its_ring_with_normalised_inputs():
  cell = cells.get("lru", r_min=0.5, r_max=0.9, max_phase=math.pi / 4)
  params = cell.init(jax.random.key(0), 3, 512)
  lam = np.exp(-np.exp(np.asarray(params["nu_log"])) + 1j * np.exp(
      np.asarray(params["theta_log"])))
  assert 0.5 - 1e-6 <= np.abs(lam).min() and np.abs(lam).max() <= 0.9 + 1e-6
  assert np.angle(lam).min() >= 0 and np.angle(lam).max() <= math.pi / 4 + 1e-6
  # Uniform on the ring's area: |lambda|^2 ~ U(r_min^2, r_max^2).
  assert abs(np.mean(np.abs(lam) ** 2) - (0.25 + 0.81) / 2) < 0.03
  np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - np.abs(lam) ** 2),
                             rtol=1e-5)


def test_rglru_decay_starts_in_its_ring():
  params = cells.get("rglru", r_min=0.9, r_max=0.999).init(jax.random.key(0), 3, 512)
  a = 1 / (1 + np.exp(-np.asarray(params["lambda"], np.float64)))
  assert 0.9 - 1e-5 <= a.min() and a.max() <= 0.999 + 1e-5


@pytest.mark.parametrize("mode", MODES + ("step",))
@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=SLOW)],
                         ids=["forward", "reverse"])  # Reverse: also in the scan grid.
def test_rglru_equals_recurrentgemmas_layer(mode, reverse):
  """Values and every gradient against the Griffin authors' own RG-LRU layer (RecurrentGemma,
  tests/reference_recurrentgemma.py), float64, each sequence run alone at its own length
  (reversed for `reverse`) from a carried state, with decays up to within 1e-8 of 1, where
  sqrt(1 - a^2)'s capped derivative takes over.

  The layer feeds its input itself where the cell projects u = x W_u + b_u, so both are
  functions of the same free parameters: the layer reads x' = x W_u + b_u (gates
  k_r = x' A_r + b_r, k_i = x' A_i + b_i), the cell reads x with
  w_x = [W_u A_r | W_u A_i | W_u] and b = [b_u A_r + b_r | b_u A_i + b_i | b_u]; the
  gradients of every free parameter are compared. RecurrentGemma also skips the normalisation at a document's first token
  (segment_pos 0); the cell follows the paper's equation at every step, so the reference
  runs with no segment start inside the sequence."""
  from reference_recurrentgemma import RGLRU

  batch, time, width = 3, 37, 8
  lengths = np.array([37, 20, 1])
  with jax.enable_x64(True):
    layer = RGLRU(width=width, num_heads=1)
    keys = jax.random.split(jax.random.key(0), 9)
    xs = jax.random.normal(keys[0], (batch, time, width), jnp.float64)
    h0 = jax.random.normal(keys[1], (batch, width), jnp.float64)
    weights = jax.random.normal(keys[2], (batch, time, width), jnp.float64)
    normal = lambda key, *shape: jax.random.normal(key, shape, jnp.float64) / math.sqrt(width)
    free = {"w_u": normal(keys[3], width, width), "b_u": normal(keys[4], width),
            "a_r": normal(keys[5], width, width), "b_r": normal(keys[6], width),
            "a_i": normal(keys[7], width, width), "b_i": normal(keys[8], width),
            # Decays from a ~ 0.02 (a_param 0.5) to within 1e-8 of 1 (a_param -25): there
            # 1 - a^2 < 1 / (4 * 1000^2) and both sides cap sqrt's derivative at 1000.
            "a_param": jnp.linspace(0.5, -25.0, width)}

    def ours(free, xs, h0):
      params = {"w_x": jnp.concatenate([free["w_u"] @ free["a_r"], free["w_u"] @ free["a_i"],
                                        free["w_u"]], axis=1),
                "b": jnp.concatenate([free["b_u"] @ free["a_r"] + free["b_r"],
                                      free["b_u"] @ free["a_i"] + free["b_i"], free["b_u"]]),
                "lambda": -free["a_param"]}  # sigmoid(L)^c = exp(-c softplus(-L)).
      final, ys = recurrent.scan(cells.get("rglru"), params, xs, h0,
                                 lengths=jnp.asarray(lengths), reverse=reverse, scan_mode=mode)
      return jnp.sum(ys * weights) + jnp.sum(final * weights[:, 0]), (final, ys)

    def theirs(free, xs, h0):
      """Each sequence alone: its first `length` steps, reversed for `reverse`."""
      variables = {"params": {"a_param": free["a_param"],
                              "a_gate": {"w": free["a_r"][None], "b": free["b_r"][None]},
                              "input_gate": {"w": free["a_i"][None], "b": free["b_i"][None]}}}
      loss, finals, ys = 0.0, [], []
      for i, length in enumerate(lengths):
        x = xs[i:i + 1, :length] @ free["w_u"] + free["b_u"]
        x = x[:, ::-1] if reverse else x
        y, last = layer.apply(variables, x, jnp.ones((1, length), jnp.int32), h0[i:i + 1])
        y = y[:, ::-1] if reverse else y
        loss += jnp.sum(y[0] * weights[i, :length]) + jnp.sum(last[0] * weights[i, 0])
        finals.append(last[0])
        ys.append(jnp.pad(y[0], ((0, time - length), (0, 0))))
      return loss, (jnp.stack(finals), jnp.stack(ys))

    (_, got), got_grads = jax.value_and_grad(ours, (0, 1, 2), has_aux=True)(free, xs, h0)
    (_, want), want_grads = jax.value_and_grad(theirs, (0, 1, 2), has_aux=True)(free, xs, h0)
    # The reference forms 1 - a^2 as 1 - exp(2 log a), the cell as -expm1(2 log a): where
    # 1 - a^2 ~ 1e-8 the reference's own rounding is ~1e-8 of it, ~1e-11 in the outputs.
    # Past each length the inputs reach nothing in either (the reference never sees them).
    paths, got_leaves = _leaves_with_paths((got, got_grads))
    want_paths, want_leaves = _leaves_with_paths((want, want_grads))
    assert paths == want_paths
    for path, g, w in zip(paths, got_leaves, want_leaves):
      np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=path)
    # The cap is reached: some unit's 1 - a^2 is below 1 / (4 * 1000^2) at some step.
    k_r = (xs @ free["w_u"] + free["b_u"]) @ free["a_r"] + free["b_r"]
    log_a = -8.0 * jax.nn.sigmoid(k_r) * jax.nn.softplus(free["a_param"])
    assert float(jnp.min(-jnp.expm1(2 * log_a))) < 2.5e-7


def _leaves_with_paths(tree) -> tuple[list[str], list[np.ndarray]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return [jax.tree_util.keystr(k) for k, _ in leaves], [np.asarray(v) for _, v in leaves]


@pytest.mark.parametrize("mode", MODES + ("log", "step"))
@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=SLOW)],
                         ids=["forward", "reverse"])  # Reverse: also in the scan grid.
@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_cells_equal_the_mingru_pytorch_package(name, mode, reverse):
  """Values and gradients (inputs, weights, biases, initial state) against minGRU-pytorch, an
  implementation of Feng et al. 2024 in PyTorch written elsewhere (its log-space Heinsen
  scan, and its step form for a sequence of one), float64, each sequence run alone at its own
  length (reversed for `reverse`) from a carried positive state. Its projection has no bias:
  a forward hook adds the cell's to the projection's output."""
  torch = pytest.importorskip("torch")
  package = pytest.importorskip("minGRU_pytorch.minLSTM")
  from minGRU_pytorch import minGRU

  batch, time, width = 3, 37, 6
  lengths = np.array([37, 20, 1])
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((batch, time, width))
  weights = rng.standard_normal((batch, time, width))
  h0 = rng.uniform(0.5, 2.0, (batch, width))
  cell = cells.get(name)
  gates = 2 if name == "mingru" else 3
  w_x = rng.standard_normal((width, gates * width)) / np.sqrt(width)
  b = rng.standard_normal(gates * width)

  # The cell's gate blocks (z, h~ / f, i, h~) in the package's order (h~, z / h~, f, i): the
  # last block first, i.e. the gate axis rolled by one block; rolled back for its gradients.
  to_package = lambda v: np.roll(v, width, axis=-1)
  from_package = lambda v: np.roll(v, -width, axis=-1)

  with jax.enable_x64(True):
    def loss(params, xs, h0):
      final, ys = recurrent.scan(cell, params, xs, h0, lengths=jnp.asarray(lengths),
                                 reverse=reverse, scan_mode=mode)
      return jnp.sum(ys * weights) + jnp.sum(final * weights[:, 0]), (final, ys)

    (_, (final, ys)), (g_params, g_xs, g_h0) = jax.value_and_grad(
        loss, argnums=(0, 1, 2), has_aux=True)({"w_x": w_x, "b": b}, xs, h0)
    # To NumPy here: outside enable_x64, jnp arithmetic would round them to float32.
    final, ys, g_xs, g_h0 = map(np.asarray, (final, ys, g_xs, g_h0))
    g_w, g_b = np.asarray(g_params["w_x"]), np.asarray(g_params["b"])

  layer = (minGRU if name == "mingru" else package.minLSTM)(width).double()
  fused = layer.to_hidden_and_gate if name == "mingru" else layer.to_hidden_and_f_i_gate
  with torch.no_grad():
    fused.weight.copy_(torch.from_numpy(to_package(w_x).T))
  t_b = torch.from_numpy(to_package(b)).requires_grad_(True)
  fused.register_forward_hook(lambda module, inputs, output: output + t_b)
  t_xs = torch.from_numpy(xs).requires_grad_(True)
  t_h0 = torch.from_numpy(h0).requires_grad_(True)
  total, want_final, want_ys = 0.0, [], np.zeros_like(ys)
  for i, length in enumerate(lengths):
    x = t_xs[i:i + 1, :length]
    x = x.flip(1) if reverse else x
    prev = t_h0[i:i + 1, None]
    if name == "minlstm" and length > 1:
      prev = prev - 0.5  # Its log-space form passes a carried state through g (v + 0.5 here).
    y, last = layer(x, prev, return_next_prev_hidden=True)
    y = y.flip(1) if reverse else y
    total = total + (y[0] * torch.from_numpy(weights[i, :length])).sum()
    total = total + (last[0, 0] * torch.from_numpy(weights[i, 0])).sum()
    want_ys[i, :length] = y[0].detach().numpy()
    want_final.append(last[0, 0].detach().numpy())
  total.backward()

  np.testing.assert_allclose(ys, want_ys, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(final, np.stack(want_final), rtol=1e-9, atol=1e-12)
  # Past each length the inputs reach nothing in either (the package never sees them).
  np.testing.assert_allclose(g_xs, t_xs.grad.numpy(), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(g_w, from_package(fused.weight.grad.numpy().T), rtol=1e-9,
                             atol=1e-12)
  np.testing.assert_allclose(g_b, from_package(t_b.grad.numpy()), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(g_h0, t_h0.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_chrono_init_gives_the_min_cells_long_memories():
  """mingru's retain 1 - z and minlstm's normalised f' start near 1 with chrono init."""
  x = jnp.zeros((1, 1, 4))
  for name in ("mingru", "minlstm"):
    plain = cells.get(name).init(jax.random.key(0), 4, 256)
    chrono = cells.get(name, chrono_init=1000).init(jax.random.key(0), 4, 256)
    a_plain = cells.get(name).linear.coefficients(plain, x)[0]
    a_chrono = cells.get(name).linear.coefficients(chrono, x)[0]
    np.testing.assert_allclose(a_plain, 0.5, atol=1e-6)
    assert float(jnp.median(a_chrono)) > 0.99, name


@pytest.mark.parametrize("name,options,message", [
    ("lru", {"r_min": 0.9, "r_max": 0.5}, "0 <= r_min < r_max < 1"),
    ("lru", {"r_max": 1.0}, "0 <= r_min < r_max < 1"),
    ("lru", {"max_phase": 0.0}, "max_phase"),
    ("rglru", {"r_min": -0.1}, "0 <= r_min < r_max < 1"),
    ("mingru", {"chrono_init": 1}, "chrono_init=1"),
])
def test_bad_cell_options_say_what_to_use(name, options, message):
  with pytest.raises(ValueError, match=message):
    cells.get(name, **options)


def test_positive_candidate_is_the_papers_g():
  v = jnp.array([-3.0, -0.5, 0.0, 0.5, 3.0])
  np.testing.assert_allclose(cells.positive_candidate(v),
                             [1 / (1 + np.exp(3.0)), 1 / (1 + np.exp(0.5)), 0.5, 1.0, 3.5],
                             rtol=1e-6)


def test_rglru_gradient_stays_finite_where_a_reaches_1():
  """sqrt(1 - a^2) at a = 1 (r = 0): its derivative is capped, so the gradient is finite."""
  cell = cells.get("rglru")
  params = cell.init(jax.random.key(0), 2, 4)
  params["b"] = params["b"].at[:4].set(-1e4)  # r = sigmoid(-1e4) = 0: a_t = 1 exactly.
  xs = jnp.ones((1, 5, 2))
  grad = jax.grad(lambda p: recurrent.scan(cell, p, xs)[1].sum())(params)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grad))


# ----------------------------------------------------------------------------- residual block

def _np_rms(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _np_gelu(x):  # jax.nn.gelu's default, the tanh approximation.
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_cell_run(cell_id, p, xs):
  """One sequence xs [L, in] through a cell from the zero carry: outputs [L, hidden]."""
  cell = cells.get(cell_id)
  parts = len(jax.tree.leaves(cell.zero_carry(1, 1)))
  hidden = cell.hidden_size(p)
  carry = tuple(np.zeros((1, hidden)) for _ in range(parts))
  carry = carry if parts > 1 else carry[0]
  ys = []
  for x in xs:
    carry, y = _np_step(cell_id, p, carry, x[None], np.ones((1, hidden)))
    ys.append(y[0])
  return np.stack(ys)


def _np_model(model, params, xs, n):
  """The residual stack and head, float64, on one sequence's n real steps."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  h = xs[:n]
  for layer in p["rnn"]:
    block = layer["block"]
    if "w_in" in block:
      h = h @ block["w_in"]
    normed = _np_rms(h, block["norm"])
    r = _np_cell_run(model.cell, layer["fwd"], normed)
    if "bwd" in layer:
      r = np.concatenate([r, _np_cell_run(model.cell, layer["bwd"], normed[::-1])[::-1]], -1)
      r = r @ block["w_mix"]
    h = h + r
    m = _np_rms(h, block["mlp_norm"])
    h = h + (_np_gelu(m @ block["w_gate"]) * (m @ block["w_up"])) @ block["w_down"]
    if "out_norm" in block:
      h = _np_rms(h, block["out_norm"])
  pooled = h[n - 1] if model.readout == "last" else h.mean(0)
  return pooled @ p["head"]["w"] + p["head"]["b"], h


@pytest.mark.parametrize("cell", [pytest.param("mingru", marks=SLOW), "lru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_residual_stack_matches_each_sequence_alone(cell, bidirectional):
  """Two residual layers (any cell, classic ones included), padding full of garbage: the
  logits and every real step's output are the NumPy block's on that sequence alone; outputs
  past a length and the gradient reaching the padding are exactly 0."""
  model = models.SequenceModel(cell=cell, input_size=3, hidden_size=6, num_layers=2,
                               num_outputs=4, block="residual", bidirectional=bidirectional,
                               readout="mean" if bidirectional else "last")
  params = jax.tree.map(lambda v: v + 0.05, model.init(jax.random.key(0)))
  lengths = np.array([7, 4, 1])
  xs = np.asarray(jax.random.normal(jax.random.key(1), (3, 7, 3)))
  garbage = np.where(np.arange(7)[None, :, None] < lengths[:, None, None], xs, 1e3)
  logits = model.apply(params, jnp.asarray(garbage, jnp.float32), jnp.asarray(lengths))
  _, outputs = model.features(params, jnp.asarray(garbage, jnp.float32), jnp.asarray(lengths))
  for b, n in enumerate(lengths):
    want_logits, want_h = _np_model(model, params, xs[b].astype(np.float64), n)
    np.testing.assert_allclose(logits[b], want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[b, :n], want_h, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(outputs[b, n:]) == 0.0)
  grad = jax.grad(lambda x: model.apply(params, x, jnp.asarray(lengths)).sum())(
      jnp.asarray(garbage, jnp.float32))
  for b, n in enumerate(lengths):
    assert np.all(np.asarray(grad[b, n:]) == 0.0)
    assert np.abs(np.asarray(grad[b, :n])).max() > 0


def test_bidirectional_residual_last_readout_is_refused():
  with pytest.raises(ValueError, match="use readout 'mean'"):
    models.SequenceModel(cell="mingru", block="residual", bidirectional=True, readout="last")


@pytest.mark.parametrize("overrides,message", [
    ({"cell": "lstm", "scan_mode": "parallel"}, "needs a cell whose recurrence is linear"),
    ({"cell": "mingru", "scan_mode": "fast"}, "scan_mode=.fast. is not one of"),
    ({"cell": "mingru", "recurrent_dropout_rate": 0.2}, "nothing for recurrent dropout"),
    ({"cell": "mingru", "block": "resnet"}, "block=.resnet. is not one of"),
    ({"cell": "lru", "cell_options": {"r_max": 1.5}}, "0 <= r_min < r_max < 1"),
    ({"cell": "rglru", "scan_mode": "log"}, "needs a_t, b_t > 0: minGRU and minLSTM"),
    ({"cell": "mingru", "cell_options": {"positive": False}, "scan_mode": "log"},
     "with options {'positive': False, 'chrono_init': 0} can be negative"),
])
def test_config_errors_for_the_new_options_are_clear(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    run(tiny_config(**overrides), tmp_path)
  assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cell,block,scan_mode", [
    ("mingru", "residual", "chunked"), pytest.param("minlstm", "plain", "parallel", marks=SLOW),
    pytest.param("rglru", "residual", "sequential", marks=SLOW), ("lru", "residual", "auto"),
    pytest.param("gru", "residual", "auto", marks=SLOW),
    pytest.param("mingru", "plain", "log", marks=SLOW)])
def test_a_config_trains_and_resumes(tmp_path, cell, block, scan_mode):
  """launch's path end to end on mock data: train, evaluate, resume to a longer budget."""
  config = tiny_config(cell=cell, block=block, scan_mode=scan_mode, num_epochs=1)
  first = run(config, tmp_path)
  assert np.isfinite(first["test_loss"]) and first["epochs"] == 1
  config.num_epochs = 2
  second = run(config, tmp_path)
  assert second["epochs"] == 2 and second["resumed_from_step"] == first["steps"] > 0
  assert second["steps"] == 2 * first["steps"] and np.isfinite(second["test_loss"])


@SLOW
def test_scan_mode_is_how_not_what_a_run_resumes_in_another(tmp_path):
  """scan_mode changes how the same function is computed: a run may resume in another
  mode, and its parameters match a run trained in one mode throughout (to float rounding)."""
  first = tiny_config(cell="lru", block="residual", scan_mode="parallel", num_epochs=1)
  run(first, tmp_path / "switched")
  run(tiny_config(cell="lru", block="residual", scan_mode="sequential", num_epochs=2),
      tmp_path / "switched")
  run(tiny_config(cell="lru", block="residual", scan_mode="parallel", num_epochs=2),
      tmp_path / "straight")
  a = latest_params(tmp_path / "switched", first)
  b = latest_params(tmp_path / "straight", first)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@SLOW  # The engine's own check of devices with dropout (test_train_intersections) stays.
@pytest.mark.parametrize("cell,modes", [("mingru", ("sharded", "pmap")),
                                        ("rglru", ("sharded", "pmap"))])
def test_jit_sharded_and_pmap_agree_with_dropout_on(cell, modes):
  """A residual stack of linear recurrences with dropout on 4 devices: the ways to use them
  train the same parameters, and dropout does act."""
  assert jax.device_count() == 4
  config = tiny_config(cell=cell, block="residual", batch_size=32, dropout_rate=0.3,
                       num_layers=2, variational_dropout=True)
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config)
  batches = [b for _, b in zip(range(3), task.train_batches(0))]
  model = train.build_model(config, task)
  results = params_after_training_in_modes(config, model, batches, ("jit",) + modes)
  results["no dropout"] = params_after_training_in_modes(
      config, dataclasses.replace(model, dropout_rate=0.0), batches, ("jit",))["jit"]
  assert not np.allclose(results["jit"]["head"]["w"], results["no dropout"]["head"]["w"],
                         atol=1e-4)
  for mode in modes:
    for a, b in zip(jax.tree.leaves(results["jit"]), jax.tree.leaves(results[mode])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)


# ----------------------------------------------------------------------------- language model

@pytest.mark.parametrize("cell,block,scan_mode", [("mingru", "residual", "chunked"),
                                                  ("lru", "plain", "parallel"),
                                                  ("rglru", "residual", "sequential")])
def test_lm_windows_with_carried_state_equal_one_long_pass(cell, block, scan_mode):
  """The language model reads a stream in windows, each starting from the last's final
  carries: two windows of 5 give the outputs of one pass over all 10 tokens."""
  model = lm.build_model(_lm_config(cell=cell, block=block, scan_mode=scan_mode,
                                    num_layers=2))
  params = model.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 2, 16)
  _, whole = model.features(params, tokens, initial_carries=lm.zero_carries(model, 3))
  carries, first = model.features(params, tokens[:, :5],
                                  initial_carries=lm.zero_carries(model, 3))
  _, second = model.features(params, tokens[:, 5:], initial_carries=carries)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)


def test_lm_of_linear_recurrences_resumes_mid_epoch_exactly(tmp_path):
  """As for the classic cells: stopped at window 23 of 59 and extended, the run ends with the
  parameters of one that never stopped (its carries come back from the checkpoint)."""
  streams = _streams()
  whole = _lm_config(max_steps=59, cell="minlstm", block="residual")
  lm.train_lm(whole, str(tmp_path / "whole"), streams=streams)
  lm.train_lm(_lm_config(max_steps=23, cell="minlstm", block="residual"),
              str(tmp_path / "resumed"), streams=streams)
  summary = lm.train_lm(whole, str(tmp_path / "resumed"), streams=streams)
  assert summary["resumed_from_step"] == 23 and summary["steps"] == 59
  (a, _), (b, _) = (_final_state(str(tmp_path / d), whole) for d in ("whole", "resumed"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_minlstm_normalisation_is_finite_where_both_gates_underflow():
  """f / (f + i) with f = i = 0 in float32 would be 0 / 0: it is the limit,
  1 / (1 + exp(k_i - k_f)), and so is its gradient's."""
  cell = cells.get("minlstm")
  params = cell.init(jax.random.key(0), 2, 3)
  params["b"] = params["b"].at[:6].set(jnp.array([-200.0, -200.0, -300.0, -201.0, -200.0,
                                                  -300.0]))
  a, b = cell.linear.coefficients(params, jnp.zeros((1, 1, 2)))
  np.testing.assert_allclose(a[0, 0], [1 / (1 + np.exp(-1.0)), 0.5, 0.5], rtol=1e-6)
  assert bool(jnp.isfinite(b).all())
  grad_b = jax.grad(lambda p: jnp.sum(cell.linear.coefficients(p, jnp.zeros((1, 1, 2)))[0]
                                      [..., 0]))(params)["b"]
  limit = np.exp(-1.0) / (1 + np.exp(-1.0)) ** 2  # d/dk_f of 1 / (1 + exp(k_i - k_f)).
  np.testing.assert_allclose(np.asarray(grad_b)[[0, 3]], [limit, -limit], rtol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, pytest.param(True, marks=SLOW)])
def test_gradient_diagnostics_of_a_residual_stack(bidirectional):
  """dL/dh_t through the recurrences of a residual stack (the probes live in each layer's
  recurrence, next to the block's params): one entry per step, finite, zero past a length."""
  model = models.SequenceModel(cell="lru", input_size=3, hidden_size=5, num_layers=2,
                               block="residual", bidirectional=bidirectional, readout="mean")
  params = model.init(jax.random.key(0))
  batch = {"inputs": jax.random.normal(jax.random.key(1), (4, 9, 3)),
           "labels": jnp.array([0, 1, 2, 3]), "lengths": jnp.array([9, 6, 3, 9])}
  grads = diagnostics.carry_gradients(model, params, batch)
  top = grads[-1]["fwd"] if bidirectional else grads[-1]
  h = np.asarray(cells.hidden_of(top))  # [time, batch, hidden]
  assert h.shape == (9, 4, 5) and np.isfinite(h).all()
  assert np.all(h[3:, 2] == 0.0) and np.abs(h[:3, 2]).max() > 0
  norms = diagnostics.gradient_norm_through_time(model, params, batch)
  assert norms.shape == (9,) and bool(jnp.isfinite(norms).all())


# ----------------------------------------------------------------------------- sweeps

@SLOW
def test_vmapped_seeds_of_a_residual_lru_equal_a_run_on_its_own(tmp_path):
  """A sweep's seeds train together under jax.vmap: seed 1 of a residual LRU stack (with
  dropout) ends with the parameters train_and_evaluate gives it alone; the final diagnostics
  (gradient through time, retain statistics not for residual stacks) are written."""
  sweep = _sweep({"cell": ["lru"], "block": ["residual"], "num_layers": [2]})
  workdir = str(tmp_path / "sweep")
  ablate.run_sweep(sweep, workdir)
  (name, overrides), = ablate.settings(sweep)
  config = ablate.run_config(sweep.base, overrides, 1)
  train.train_and_evaluate(config, str(tmp_path / "alone"))
  got, got_step = _final_params(config, ablate.run_dir(workdir, name, 1))
  want, want_step = _final_params(config, str(tmp_path / "alone"))
  assert got_step == want_step > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
  with open(f"{ablate.run_dir(workdir, name, 0)}/diagnostics.json") as f:
    assert len(json.load(f)["grad_norm_through_time"]) == 10


@SLOW
def test_lru_with_dropout_trains_alike_on_one_and_four_devices():
  """The LRU (complex state) with dropout: one device, a batch sharded over 4 and pmap over 4
  train the same parameters."""
  assert jax.device_count() == 4
  config = tiny_config(cell="lru", block="residual", batch_size=32, dropout_rate=0.3,
                       num_layers=2)
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config)
  batches = [b for _, b in zip(range(3), task.train_batches(0))]
  results = params_after_training_in_modes(config, train.build_model(config, task), batches)
  for mode in ("sharded", "pmap"):
    for a, b in zip(jax.tree.leaves(results["jit"]), jax.tree.leaves(results[mode])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)
