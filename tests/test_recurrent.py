"""The scan against plain Python loops: lengths, reverse, bidirectional, stacks, TBPTT, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnn_jax import cells, recurrent

CELLS = [("rnn", {}), ("irnn", {}), ("lstm", {}), ("lstm", {"peephole": True}),
         ("gru", {}), ("gru", {"reset_after": False})]
BATCH, TIME, INPUT, HIDDEN = 3, 7, 4, 5


def _setup(name, options, seed=0, input_size=INPUT):
  cell = cells.get(name, **options)
  kp, kx = jax.random.split(jax.random.key(seed))
  params = cell.init(kp, input_size, HIDDEN)
  # Non-zero biases so that padding would leak if masking were wrong.
  params = jax.tree.map(lambda p: p + 0.1, params)
  xs = jax.random.normal(kx, (BATCH, TIME, input_size))
  return cell, params, xs


def _loop(cell, params, xs, carry=None):
  """Reference: the step in a plain Python loop over time."""
  if carry is None:
    carry = cell.zero_carry(xs.shape[0], HIDDEN)
  ys = []
  for t in range(xs.shape[1]):
    carry, y = cell.step(params, carry, xs[:, t])
    ys.append(y)
  return carry, jnp.stack(ys, axis=1)


def _assert_tree_close(a, b, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("name,options", CELLS)
def test_scan_matches_python_loop(name, options):
  cell, params, xs = _setup(name, options)
  carry0 = jax.tree.map(lambda z: z + 0.3, cell.zero_carry(BATCH, HIDDEN))
  got = recurrent.scan(cell, params, xs, carry0)
  _assert_tree_close(got, _loop(cell, params, xs, carry0))
  assert got[1].shape == (BATCH, TIME, HIDDEN)


@pytest.mark.parametrize("name,options", CELLS)
def test_lengths_match_unpadded_sequences(name, options):
  cell, params, xs = _setup(name, options)
  lengths = jnp.array([TIME, 4, 1])
  # Garbage in the padding must not matter.
  steps = jnp.arange(TIME)[None, :, None] < lengths[:, None, None]
  noisy = jnp.where(steps, xs, 1e3)
  carry, ys = recurrent.scan(cell, params, noisy, lengths=lengths)
  for b, n in enumerate(lengths.tolist()):
    ref_carry, ref_ys = _loop(cell, params, xs[b:b + 1, :n])
    _assert_tree_close(jax.tree.map(lambda c: c[b:b + 1], carry), ref_carry)
    np.testing.assert_allclose(ys[b, :n], ref_ys[0], atol=1e-6, rtol=1e-5)
    assert np.all(np.asarray(ys[b, n:]) == 0.0)


@pytest.mark.parametrize("name,options", [("lstm", {}), ("gru", {})])
def test_reverse_with_lengths_reads_from_last_real_step(name, options):
  cell, params, xs = _setup(name, options)
  lengths = jnp.array([TIME, 5, 2])
  carry, ys = recurrent.scan(cell, params, xs, lengths=lengths, reverse=True)
  for b, n in enumerate(lengths.tolist()):
    ref_carry, ref_ys = _loop(cell, params, xs[b:b + 1, :n][:, ::-1])
    _assert_tree_close(jax.tree.map(lambda c: c[b:b + 1], carry), ref_carry)
    np.testing.assert_allclose(ys[b, :n], ref_ys[0, ::-1], atol=1e-6, rtol=1e-5)
    assert np.all(np.asarray(ys[b, n:]) == 0.0)


def test_reverse_padded_is_an_involution():
  xs = jnp.arange(2 * 5).reshape(2, 5, 1)
  lengths = jnp.array([5, 3])
  flipped = recurrent.reverse_padded(xs, lengths)
  np.testing.assert_array_equal(flipped[1, :, 0], [7, 6, 5, 8, 9])
  np.testing.assert_array_equal(recurrent.reverse_padded(flipped, lengths), xs)


@pytest.mark.parametrize("name,options", [("rnn", {}), ("lstm", {}), ("gru", {})])
def test_bidirectional_stack_with_padding(name, options):
  cell = cells.get(name, **options)
  layers = recurrent.init_layers(jax.random.key(1), cell, INPUT, HIDDEN, num_layers=2,
                                 bidirectional=True)
  xs = jax.random.normal(jax.random.key(2), (BATCH, TIME, INPUT))
  lengths = jnp.array([TIME, 3, 6])
  finals, ys = recurrent.run_layers(cell, layers, xs, lengths=lengths)
  assert ys.shape == (BATCH, TIME, 2 * HIDDEN)
  for b, n in enumerate(lengths.tolist()):
    seq = xs[b:b + 1, :n]
    for layer in layers:  # Reference: unpadded, explicit flips, layer by layer.
      _, fwd = _loop(cell, layer["fwd"], seq)
      bwd_carry, bwd = _loop(cell, layer["bwd"], seq[:, ::-1])
      seq = jnp.concatenate([fwd, bwd[:, ::-1]], axis=-1)
    np.testing.assert_allclose(ys[b, :n], seq[0], atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(ys[b, n:]) == 0.0)
    _assert_tree_close(jax.tree.map(lambda c: c[b:b + 1], finals[-1]["bwd"]), bwd_carry,
                       atol=1e-5)


def test_stack_matches_layer_by_layer_loop():
  cell = cells.get("gru")
  layers = recurrent.init_layers(jax.random.key(3), cell, INPUT, HIDDEN, num_layers=3)
  xs = jax.random.normal(jax.random.key(4), (BATCH, TIME, INPUT))
  finals, ys = recurrent.run_layers(cell, layers, xs)
  seq = xs
  for layer, final in zip(layers, finals):
    carry, seq = _loop(cell, layer["fwd"], seq)
    _assert_tree_close(final, carry)
  np.testing.assert_allclose(ys, seq, atol=1e-6)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("name,options", CELLS)
def test_check_grads(name, options):
  cell = cells.get(name, **options)
  params = cell.init(jax.random.key(0), 2, 3)
  # Random, not initial, params: IRNN's zero bias and tiny input weights put ReLU
  # pre-activations within the finite-difference step of the kink.
  leaves, tree = jax.tree.flatten(params)
  noise = [0.5 * jax.random.normal(k, l.shape)
           for k, l in zip(jax.random.split(jax.random.key(7), len(leaves)), leaves)]
  params = jax.tree.unflatten(tree, [l + n for l, n in zip(leaves, noise)])
  xs = jax.random.normal(jax.random.key(1), (2, 4, 2))
  lengths = jnp.array([4, 2])

  def f(params, xs):
    return recurrent.scan(cell, params, xs, lengths=lengths)[1]

  with jax.enable_x64():
    params64, xs64 = jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs))
    check_grads(f, (params64, xs64), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def _tbptt_reference(cell, params, xs, k, lengths=None):
  """Per-step loss sum(y_t^2) plus sum(sin(final carry)), each sequence alone at its own
  length, with stop_gradient on the carry entering step t whenever 0 < t < length and
  (length - t) % k == 0: an explicit loop, written independently of `truncation_cuts`."""
  batch, time = xs.shape[:2]
  total = 0.0
  for b in range(batch):
    n = time if lengths is None else int(lengths[b])
    carry = cell.zero_carry(1, HIDDEN)
    for t in range(n):
      if t > 0 and (n - t) % k == 0:
        carry = jax.tree.map(jax.lax.stop_gradient, carry)
      carry, y = cell.step(params, carry, xs[b:b + 1, t])
      total = total + jnp.sum(y ** 2)
    total = total + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))
  return total


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k", [1, 3, 6])  # 6: k < T but >= the padded lengths 5 and 3.
@pytest.mark.parametrize("with_lengths", [False, True])
def test_truncated_bptt_matches_explicit_reference(name, k, with_lengths):
  cell, params, xs = _setup(name, {})
  lengths = jnp.array([TIME, 5, 3]) if with_lengths else None

  def loss(params, xs, truncation=k):
    carry, ys = recurrent.scan(cell, params, xs, lengths=lengths, truncation=truncation)
    return jnp.sum(ys ** 2) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

  got = jax.grad(loss, argnums=(0, 1))(params, xs)
  want = jax.grad(lambda p, x: _tbptt_reference(cell, p, x, k, lengths), argnums=(0, 1))(
      params, xs)
  _assert_tree_close(got, want, atol=1e-5)
  full = jax.grad(lambda p: loss(p, xs, None))(params)
  if k < TIME // 2:  # Cuts in every sequence: the truncation must change something.
    assert not np.allclose(got[0]["w_h"], full["w_h"])


def test_final_step_loss_reaches_back_exactly_k_steps():
  cell, params, xs = _setup("lstm", {})
  k = 3

  def last_loss(xs):
    _, ys = recurrent.scan(cell, params, xs, truncation=k)
    return jnp.sum(ys[:, -1])

  dx = jax.grad(last_loss)(xs)
  reached = np.abs(np.asarray(dx)).sum(axis=(0, 2)) > 0
  np.testing.assert_array_equal(reached, [False] * (TIME - k) + [True] * k)


def test_truncation_leaves_the_forward_pass_unchanged():
  cell, params, xs = _setup("gru", {})
  np.testing.assert_array_equal(recurrent.scan(cell, params, xs, truncation=2)[1],
                                recurrent.scan(cell, params, xs)[1])


def test_remat_and_unroll_compute_the_same_function():
  cell, params, xs = _setup("lstm", {})

  def loss(params, **kw):
    return jnp.sum(jnp.sin(recurrent.scan(cell, params, xs, **kw)[1]))

  base = jax.grad(loss)(params)
  _assert_tree_close(jax.grad(lambda p: loss(p, remat=True))(params), base)
  _assert_tree_close(jax.grad(lambda p: loss(p, unroll=3))(params), base)


def test_vmap_over_params_matches_separate_runs():
  cell = cells.get("gru")
  stacked = jax.vmap(lambda k: cell.init(k, INPUT, HIDDEN))(jax.random.split(jax.random.key(0), 2))
  xs = jax.random.normal(jax.random.key(1), (BATCH, TIME, INPUT))
  ys = jax.vmap(lambda p: recurrent.scan(cell, p, xs)[1])(stacked)
  for i in range(2):
    one = jax.tree.map(lambda a: a[i], stacked)
    np.testing.assert_allclose(ys[i], recurrent.scan(cell, one, xs)[1], atol=1e-6)


def test_probes_give_the_gradient_with_respect_to_each_carry():
  cell, params, xs = _setup("rnn", {})
  probes = jnp.zeros((TIME, BATCH, HIDDEN))

  def loss(probes):
    return jnp.sum(recurrent.scan(cell, params, xs, probes=probes)[1][:, -1] ** 2)

  got = jax.grad(loss)(probes)
  # Reference: dL/dh_t by perturbing h_t in the Python loop (the loss reads the last output).
  def loop_loss(deltas):
    carry = cell.zero_carry(BATCH, HIDDEN)
    for t in range(TIME):
      carry, _ = cell.step(params, carry, xs[:, t])
      carry = carry + deltas[t]  # h_t perturbed: seen by the next step and as the output.
    return jnp.sum(carry ** 2)
  np.testing.assert_allclose(got, jax.grad(loop_loss)(probes), atol=1e-6)


# ----------------------------------------------------------------------------- dropout

def test_dropout_same_key_same_result_and_eval_is_identity():
  cell = cells.get("lstm")
  layers = recurrent.init_layers(jax.random.key(0), cell, INPUT, HIDDEN, num_layers=2)
  xs = jax.random.normal(jax.random.key(1), (BATCH, TIME, INPUT))
  kw = dict(dropout_rate=0.3, recurrent_dropout_rate=0.3)
  a = recurrent.run_layers(cell, layers, xs, key=jax.random.key(5), **kw)[1]
  b = recurrent.run_layers(cell, layers, xs, key=jax.random.key(5), **kw)[1]
  c = recurrent.run_layers(cell, layers, xs, key=jax.random.key(6), **kw)[1]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  no_key = recurrent.run_layers(cell, layers, xs, key=None, **kw)[1]
  plain = recurrent.run_layers(cell, layers, xs)[1]
  np.testing.assert_array_equal(no_key, plain)


def test_variational_masks_are_constant_over_time():
  x = jnp.ones((4, 50, 8))
  dropped = recurrent.dropout(jax.random.key(0), x, 0.5, shared_axes=(1,))
  zeros = np.asarray(dropped == 0)
  assert zeros.any() and not zeros.all()
  assert (zeros == zeros[:, :1]).all()  # Same mask at every step.
  per_step = np.asarray(recurrent.dropout(jax.random.key(0), x, 0.5) == 0)
  assert not (per_step == per_step[:, :1]).all()
  np.testing.assert_allclose(np.asarray(dropped)[~zeros], 2.0)  # Inverted scaling.


def test_recurrent_dropout_is_one_mask_reused_at_every_step():
  cell, params, xs = _setup("gru", {})
  mask = recurrent.dropout(jax.random.key(3), jnp.ones((BATCH, HIDDEN)), 0.5)
  _, ys = recurrent.scan(cell, params, xs, recurrent_mask=mask)
  carry, ref = cell.zero_carry(BATCH, HIDDEN), []
  for t in range(TIME):
    carry, y = cell.step(params, carry, xs[:, t], h_mask=mask)
    ref.append(y)
  np.testing.assert_allclose(ys, jnp.stack(ref, 1), atol=1e-6)


@pytest.mark.parametrize("name,options", [c for c in CELLS + [("mgu", {})]
                                          if c[0] not in ("rnn", "irnn")])
def test_recurrent_mask_reaches_only_the_recurrent_matmuls(name, options):
  """With W_h = 0 the mask has nothing to act on: the state the gated cells carry past W_h
  (the LSTM's c, the GRU's and MGU's h in z * h) is never masked. (The plain RNN carries
  nothing past W_h; tests/test_scan_intersections.py checks every cell's masked step against
  NumPy.)"""
  cell, params, xs = _setup(name, options)
  params = {**params, "w_h": jnp.zeros_like(params["w_h"])}
  mask = recurrent.dropout(jax.random.key(3), jnp.ones((BATCH, HIDDEN)), 0.5)
  masked = recurrent.scan(cell, params, xs, recurrent_mask=mask)
  plain = recurrent.scan(cell, params, xs)
  # Equal up to float reassociation (XLA fuses the two programs differently).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), masked, plain)


@pytest.mark.parametrize("name", ["gru", "mgu"])
def test_recurrent_dropout_keeps_gru_state_bounded_over_long_sequences(name):
  """h is a convex mix of tanh(.) and h, so |h| <= 1 however long; scaling the carried h by
  1/(1-p) each step (the mask on the state) made it grow like (1/(1-p))^t."""
  cell = cells.get(name)
  kp, kx = jax.random.split(jax.random.key(0))
  params = cell.init(kp, INPUT, HIDDEN)
  xs = jax.random.normal(kx, (BATCH, 300, INPUT))
  mask = recurrent.dropout(jax.random.key(1), jnp.ones((BATCH, HIDDEN)), 0.5)
  _, ys = recurrent.scan(cell, params, xs, recurrent_mask=mask)
  assert float(jnp.max(jnp.abs(ys))) <= 1.0


def test_masked_gru_matches_a_numpy_reference():
  """Keras/Gal semantics: h * mask in r, z and n's matmuls; z * h with the unmasked h."""
  cell, params, xs = _setup("gru", {})
  mask = recurrent.dropout(jax.random.key(3), jnp.ones((BATCH, HIDDEN)), 0.5)
  _, ys = recurrent.scan(cell, params, xs, recurrent_mask=mask)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m, x = np.asarray(mask, np.float64), np.asarray(xs, np.float64)
  sig = lambda v: 1.0 / (1.0 + np.exp(-v))
  h, ref = np.zeros((BATCH, HIDDEN)), []
  w_xr, w_xz, w_xn = np.split(p["w_x"], 3, axis=1)
  w_hr, w_hz, w_hn = np.split(p["w_h"], 3, axis=1)
  b_r, b_z, b_n = np.split(p["b"], 3)
  for t in range(TIME):
    hm = h * m
    r = sig(x[:, t] @ w_xr + b_r + hm @ w_hr)
    z = sig(x[:, t] @ w_xz + b_z + hm @ w_hz)
    n = np.tanh(x[:, t] @ w_xn + b_n + r * (hm @ w_hn + p["b_hn"]))
    h = (1 - z) * n + z * h
    ref.append(h)
  np.testing.assert_allclose(ys, np.stack(ref, 1), atol=1e-5)


def test_bad_truncation_is_a_clear_error():
  cell, params, xs = _setup("rnn", {})
  with pytest.raises(ValueError, match="truncation"):
    recurrent.scan(cell, params, xs, truncation=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"lengths": jnp.array([TIME + 1, 2, 3])}, r"lengths must be in \[0, time = 7\].*max 8"),
    ({"lengths": jnp.array([-1, 2, 3])}, r"lengths must be in \[0, time = 7\].*min -1"),
    ({"lengths": jnp.array([1.0, 2.0, 3.0])}, "lengths must be integers"),
    ({"lengths": jnp.array([1, 2])}, r"lengths must be \[batch\] = \[3\]"),
    ({"truncation": 2.5}, "truncation must be None or an integer"),
    ({"truncation": True}, "truncation must be None or an integer"),
    ({"unroll": 0}, "unroll must be an integer >= 1"),
    ({"carry": jnp.zeros((2, HIDDEN))}, r"carry must hold \[batch, hidden\] = \[3, 5\]"),
    ({"recurrent_mask": jnp.ones((BATCH, 2))}, r"recurrent_mask must hold \[batch, hidden\]"),
])
@pytest.mark.parametrize("reverse", [False, True])
def test_bad_scan_arguments_are_named(kwargs, message, reverse):
  """Each raises at the call, naming the argument and what it must be (lengths > T used to
  give NaN silently with reverse=True)."""
  cell, params, xs = _setup("gru", {})
  with pytest.raises(ValueError, match=message):
    recurrent.scan(cell, params, xs, reverse=reverse, **kwargs)


def test_bad_inputs_rank_cell_option_type_and_hidden_size_are_named():
  cell, params, xs = _setup("lstm", {})
  with pytest.raises(ValueError, match=r"xs must be \[batch, time, features\], got shape"):
    recurrent.scan(cell, params, xs[:, :, 0])
  with pytest.raises(ValueError, match="forget_bias of cell 'lstm' must be a finite number"):
    cells.get("lstm", forget_bias="1.0")
  with pytest.raises(ValueError, match="hidden_size must be an integer >= 1, got 0"):
    cell.init(jax.random.key(0), INPUT, 0)
