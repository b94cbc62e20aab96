"""Mixed precision (`compute_dtype`): bfloat16 matmuls with float32 accumulation, everything
else float32. Each cell against its float32 run, with the scan's options; the carry does not
drift; a training step matches the float32 one; the LSTM's written-out derivative holds."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from rnn_jax import cells, models, recurrent, train

CELLS = ["rnn", "irnn", "lstm", "gru", "mgu", "rnn_miswired_pair", "mingru", "minlstm", "lru",
         "rglru"]
TOLERANCE = 3e-2  # bfloat16 keeps 8 bits: ~0.4% per rounding, a few roundings per step.


def _data(time=100, batch=8, features=16, scale=1.0):
  xs = scale * jax.random.normal(jax.random.PRNGKey(1), (batch, time, features))
  return xs


@pytest.mark.parametrize("name", CELLS)
def test_each_cell_in_bfloat16_stays_within_bfloat16_tolerance_over_100_steps(name):
  cell = cells.get(name)
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  xs = _data()
  final32, ys32 = recurrent.scan(cell, params, xs)
  final16, ys16 = recurrent.scan(cell, params, xs, compute_dtype=jnp.bfloat16)
  assert ys16.dtype == jnp.float32
  assert all(c.dtype == jnp.float32 for c in jax.tree.leaves(final16))
  np.testing.assert_allclose(ys16, ys32, atol=TOLERANCE)
  for a, b in zip(jax.tree.leaves(final16), jax.tree.leaves(final32)):
    np.testing.assert_allclose(a, b, atol=TOLERANCE)
  assert float(jnp.max(jnp.abs(ys16 - ys32))) > 0  # The matmuls did run in bfloat16.


def test_the_lru_in_bfloat16_rounds_its_matrices_as_stored_and_scales_in_float32():
  """Mixed precision rounds the weight matrices (and the matmuls' inputs) to bfloat16 and
  nothing else: the LRU's gamma scales x B in float32 after the matmul, so its gradient stays
  float32 too. The state after 50 steps against the float64 loop of the LRU's equations
  (test_scan_intersections) fed the bfloat16-rounded inputs and B: float32 agreement, where
  rounding gamma * B instead would be ~1e-3 off."""
  from test_scan_intersections import _np_linear_step  # pylint: disable=g-import-not-at-top
  cell = cells.get("lru")
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  xs = _data(time=50, batch=4)
  (_, s_re, s_im), _ = recurrent.scan(cell, params, xs, compute_dtype=jnp.bfloat16)
  rounded = lambda v: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float64)
  p = {k: rounded(v) if k.startswith("w_") else np.asarray(v, np.float64)
       for k, v in params.items()}
  for b, x in enumerate(rounded(xs)):
    carry = (None, np.zeros(32), np.zeros(32))
    for x_t in x:
      carry, _ = _np_linear_step("lru", {}, p, carry, x_t)
    scale = np.abs(carry[1:]).max()
    np.testing.assert_allclose(s_re[b], carry[1], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(s_im[b], carry[2], rtol=0, atol=1e-5 * scale)


def _bfloat16_carry(cell):
  """The same cell with its carry rounded to bfloat16 after every step: the drift that
  mixed precision must not have."""
  def step(params, carry, x, h_mask=None):
    carry, y = cell.step(params, carry, x, h_mask)
    return jax.tree.map(lambda c: c.astype(jnp.bfloat16).astype(jnp.float32), carry), y
  return dataclasses.replace(cell, step=step)


def test_the_lstm_cell_state_integrates_in_float32():
  """Zero weights and a forget gate near 1: c grows by sigmoid(b_i) tanh(b_g) ~ 0.0025 per
  step, exactly, from the biases alone. In bfloat16 those increments fall below the spacing of
  c within a few dozen steps; the mixed-precision state keeps every one of them."""
  cell = cells.get("lstm")
  params = cell.init(jax.random.PRNGKey(0), 4, 8)
  params = {"w_x": jnp.zeros_like(params["w_x"]), "w_h": jnp.zeros_like(params["w_h"]),
            "b": jnp.concatenate([jnp.full(8, -6.0), jnp.full(8, 8.0), jnp.full(8, 1.0),
                                  jnp.full(8, 0.0)])}
  xs = jnp.ones((2, 100, 4))
  (_, c32), _ = recurrent.scan(cell, params, xs)
  (_, c16), _ = recurrent.scan(cell, params, xs, compute_dtype=jnp.bfloat16)
  (_, drifted), _ = recurrent.scan(_bfloat16_carry(cell), params, xs,
                                   compute_dtype=jnp.bfloat16)
  np.testing.assert_allclose(c16, c32, rtol=1e-6)
  i, g, f = 1 / (1 + np.exp(6.0)), np.tanh(1.0), 1 / (1 + np.exp(-8.0))
  expected = i * g * (1 - f ** 100) / (1 - f)  # c_t = f c_{t-1} + i g, from c_0 = 0.
  np.testing.assert_allclose(c32, expected, rtol=1e-5)
  assert float(jnp.max(jnp.abs(drifted - c32) / c32)) > 0.01  # What the test guards against.


@pytest.mark.parametrize("name", ["gru", "mgu"])
def test_a_slowly_updated_state_does_not_drift(name):
  """A gate that keeps 99% of the state each step: the final state of the mixed-precision run
  stays within 0.5% of float32's, where a bfloat16 carry loses more than that."""
  cell = cells.get(name)
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  keep = slice(32, 64) if name == "gru" else slice(0, 32)  # GRU's z, MGU's f (-> 1 - f).
  params["b"] = params["b"].at[keep].set(5.0 if name == "gru" else -5.0)
  xs = _data(scale=0.1)
  h32, _ = recurrent.scan(cell, params, xs)
  h16, _ = recurrent.scan(cell, params, xs, compute_dtype=jnp.bfloat16)
  drifted, _ = recurrent.scan(_bfloat16_carry(cell), params, xs, compute_dtype=jnp.bfloat16)
  scale = float(jnp.max(jnp.abs(h32)))
  assert float(jnp.max(jnp.abs(h16 - h32))) < 0.005 * scale
  assert float(jnp.max(jnp.abs(drifted - h32))) > 0.005 * scale


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("truncation,remat", [(None, False), (7, False), (None, True), (7, True)])
def test_bfloat16_with_lengths_reverse_truncation_and_remat(name, reverse, truncation, remat):
  """Values and gradients of every option combination within tolerance of float32's; the
  padding stays exactly zero and the truncated gradient is zero where float32's is."""
  cell = cells.get(name)
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  xs = _data(time=30)
  lengths = jnp.array([30, 25, 17, 9, 30, 1, 12, 30])
  options = dict(lengths=lengths, reverse=reverse, truncation=truncation, remat=remat)

  def loss(p, dtype, xs):
    final, ys = recurrent.scan(cell, p, xs, compute_dtype=dtype, **options)
    return jnp.sum(cells.hidden_of(final) ** 2) + jnp.sum(ys[:, ::3] ** 2), ys

  (l32, ys32), g32 = jax.value_and_grad(loss, has_aux=True)(params, None, xs)
  (l16, ys16), g16 = jax.value_and_grad(loss, has_aux=True)(params, jnp.bfloat16, xs)
  padded = jnp.arange(30)[None, :] >= lengths[:, None]
  assert float(jnp.max(jnp.abs(jnp.where(padded[..., None], ys16, 0.0)))) == 0.0
  np.testing.assert_allclose(ys16, ys32, atol=TOLERANCE)
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, atol=5e-2 * float(jnp.max(jnp.abs(b))) + 1e-6)
  # Truncation cuts the same paths: d loss / d x_0 of a sequence longer than the window.
  gx32 = jax.grad(lambda x: loss(params, None, x)[0])(xs)
  gx16 = jax.grad(lambda x: loss(params, jnp.bfloat16, x)[0])(xs)
  cut32, cut16 = (np.all(np.asarray(g) == 0, axis=-1) for g in (gx32, gx16))  # [batch, time]
  np.testing.assert_array_equal(cut16, cut32)


def test_the_lstm_derivative_in_bfloat16_matches_autodiff_of_the_plain_expression():
  """The written-out derivative of `cells.lstm_pointwise` against autodiff of the textbook
  LSTM, both with bfloat16 matmuls: the same to float32 rounding."""
  cell = cells.get("lstm")

  def plain_step(params, carry, x, h_mask=None):
    h, c = carry
    z = cells.matmul(x, params["w_x"]) + cells.matmul(h, params["w_h"]) + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  plain = dataclasses.replace(cell, step=plain_step, prepare=None)
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  xs = _data(time=40)

  def loss(c, p):
    final, ys = recurrent.scan(c, p, xs, compute_dtype=jnp.bfloat16)
    return jnp.sum(ys ** 2) + jnp.sum(final[1] ** 2)

  ours, reference = jax.grad(lambda p: loss(cell, p))(params), jax.grad(
      lambda p: loss(plain, p))(params)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("kind", ["features", pytest.param("tokens", marks=pytest.mark.slow)])
def test_a_bfloat16_training_step_matches_the_float32_step(kind):
  """The real train step (dropout, lengths, a bidirectional 2-layer stack), with SGD at rate 1
  so that each update is minus the gradient: the bfloat16 update points where float32's does
  (cosine > 0.999, norms within 2%), the loss agrees, and params stay float32."""
  common = dict(cell="lstm", input_kind=kind, input_size=50 if kind == "tokens" else 12,
                embed_size=8, hidden_size=32, num_layers=2, bidirectional=True,
                num_outputs=5, dropout_rate=0.2)
  rng = np.random.default_rng(0)
  batch = {"labels": rng.integers(0, 5, 16).astype(np.int32),
           "lengths": rng.integers(1, 21, 16).astype(np.int32)}
  batch["inputs"] = (rng.integers(1, 50, (16, 20)).astype(np.int32) if kind == "tokens"
                     else rng.normal(size=(16, 20, 12)).astype(np.float32))
  tx = optax.sgd(1.0)
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = models.SequenceModel(compute_dtype=dtype, **common)
    state = train.create_train_state(model, tx, seed=0)
    new, metrics = jax.jit(lambda s, b, model=model: train.train_step(s, b, model=model, tx=tx))(
        state, batch)
    update = jax.tree.map(jnp.subtract, new.params, state.params)
    results[dtype] = (new, metrics, np.concatenate([np.ravel(u) for u in jax.tree.leaves(update)]))
  (_, m32, u32), (s16, m16, u16) = results["float32"], results["bfloat16"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(s16.params))
  assert int(s16.nonfinite_steps) == 0 and np.all(np.isfinite(u16))
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=1e-2)
  assert np.dot(u16, u32) / (np.linalg.norm(u16) * np.linalg.norm(u32)) > 0.999
  np.testing.assert_allclose(np.linalg.norm(u16), np.linalg.norm(u32), rtol=2e-2)


def test_a_bad_compute_dtype_is_named():
  cell = cells.get("gru")
  params = cell.init(jax.random.PRNGKey(0), 4, 8)
  with pytest.raises(ValueError, match="compute_dtype must be one of float32, bfloat16"):
    recurrent.scan(cell, params, jnp.ones((2, 3, 4)), compute_dtype="int8")
  config = base.get_config()
  config.compute_dtype = "bf16"
  with pytest.raises(ValueError, match="compute_dtype"):
    train.validate(config)


def test_a_bfloat16_config_trains_end_to_end(tmp_path):
  config = base.get_config(runlocal=True)
  config.update(dataset="adding", cell="gru", compute_dtype="bfloat16")
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 8 and np.isfinite(summary["test_loss"])
  assert summary["config"]["compute_dtype"] == "bfloat16"


@pytest.mark.slow
def test_bfloat16_with_dropout_gives_the_same_update_on_1_and_4_devices():
  """jit, sharded and pmap over 4 fake devices with bfloat16 matmuls and dropout: the same
  update (SGD at rate 1, so the update is minus the gradient) up to bfloat16 rounding of the
  per-device partial gradients."""
  assert jax.device_count() == 4
  model = models.SequenceModel(cell="gru", input_kind="features", input_size=12, hidden_size=32,
                               num_layers=2, num_outputs=5, dropout_rate=0.3,
                               recurrent_dropout_rate=0.3, compute_dtype="bfloat16")
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.normal(size=(32, 15, 12)).astype(np.float32),
           "labels": rng.integers(0, 5, 32).astype(np.int32),
           "lengths": rng.integers(1, 16, 32).astype(np.int32)}
  tx = optax.sgd(1.0)
  updates = {}
  for mode in ("jit", "sharded", "pmap"):
    runner = train.Runner(mode, model, tx)
    start = jax.device_get(train.create_train_state(model, tx, seed=0))  # Kept: donated below.
    state, _ = runner.train(runner.put_state(start), batch)
    update = jax.tree.map(jnp.subtract, runner.get_state(state).params, start.params)
    updates[mode] = np.concatenate([np.ravel(u) for u in jax.tree.leaves(update)])
  for mode in ("sharded", "pmap"):
    a, b = updates["jit"], updates[mode]
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9999, mode
    np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a), rtol=1e-3, err_msg=mode)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_the_backward_pass_stacks_no_bfloat16_arrays_over_time(name):
  """What the scan keeps for the backward pass, it stacks over time with a
  dynamic-update-slice at every step. XLA:CPU has no native bfloat16 one and converts the
  whole [T, ...] stack at each step instead (O(T^2)); `cells.matmul` therefore keeps its
  float32 input, so no instruction in a loop of the compiled training step may produce a
  bfloat16 array with T leading. Read from the compiled HLO (benchmarks/lstm_profile.py)."""
  from benchmarks import common, lstm_profile
  steps = 23  # A length no other dimension here has.
  model = models.SequenceModel(cell=name, input_kind="features", input_size=5, hidden_size=16,
                               num_outputs=3, compute_dtype="bfloat16")
  batch = {"inputs": jax.device_put(np.ones((4, steps, 5), np.float32)),
           "labels": jax.device_put(np.zeros((4,), np.int32))}
  runner, _, _ = common.jit_runner(model, batch)
  text = runner.compiled(batch).as_text()
  instructions = lstm_profile.parse_hlo(text)
  executed = lstm_profile.loop_instructions(instructions)
  assert executed, "no loop found in the compiled step"
  in_loops = set(executed).union(*(lstm_profile.fused_instructions(instructions, name)
                                   for name in executed))
  stacked = [name for name in in_loops if instructions[name][2][:1] == (steps,)
             and re.search(rf"%{re.escape(name)} = bf16\[", text)]
  assert not stacked, f"bfloat16 stacks over time inside the loops: {stacked}"


def test_bfloat16_matmul_keeps_forward_mode():
  """The rematerialised low-precision matmul still has a JVP (forward mode, Hessians)."""
  w = jax.random.normal(jax.random.PRNGKey(0), (6, 4)).astype(jnp.bfloat16)
  a = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  da = jax.random.normal(jax.random.PRNGKey(2), (3, 6))
  _, tangent = jax.jvp(lambda a: cells.matmul(a, w), (a,), (da,))
  expected = np.asarray(da.astype(jnp.bfloat16), np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(tangent, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recomputing_the_cast_gives_the_gradient_of_the_plain_expression(name, monkeypatch):
  """Keeping the float32 input and casting again in the backward pass changes what is stored,
  not a single bit of the gradient: against autodiff of the plain cast-then-matmul."""
  cell = cells.get(name)
  params = cell.init(jax.random.PRNGKey(0), 16, 32)
  xs = _data(time=40)
  lengths = jnp.array([40, 31, 7, 40, 1, 22, 40, 13])

  def loss(params):
    _, ys = recurrent.scan(cell, params, xs, lengths=lengths, truncation=9,
                           compute_dtype=jnp.bfloat16)
    return jnp.sum(ys ** 2)

  rematerialised = jax.jit(jax.grad(loss))(params)
  monkeypatch.setattr(cells, "_low_precision_matmul", lambda a, w: jnp.matmul(
      a.astype(w.dtype), w, preferred_element_type=jnp.float32))
  plain = jax.jit(jax.grad(loss))(params)
  for a, b in zip(jax.tree.leaves(rematerialised), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_of_a_sequence_flattens_its_leading_axes(dtype):
  """`cells.matmul` on [time, batch, in]: the values of a float64 product (to the precision
  of `dtype`), and every dot in its weight gradient a 2-D matrix product, which XLA:CPU runs
  several times faster than a dot that contracts the time and batch axes together."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((7, 3, 16))
  w = rng.standard_normal((16, 8)) / 4
  got = cells.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(w, dtype))
  assert got.shape == (7, 3, 8) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.einsum("tbd,dh->tbh", a, w),
                             atol=1e-5 if dtype == jnp.float32 else TOLERANCE * 4)

  def loss(w, a):
    return jnp.sum(jnp.sin(cells.matmul(a, w)))
  jaxpr = jax.make_jaxpr(jax.grad(loss))(jnp.asarray(w, dtype), jnp.asarray(a, jnp.float32))
  dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
  assert len(dots) == 2  # The product and its weight gradient (a has no gradient here).
  for dot in dots:
    assert [v.aval.ndim for v in dot.invars] == [2, 2], dot
  assert cells.matmul(jnp.ones((7, 3, 16)), jnp.ones(16)).shape == (7, 3)  # As `a @ w`.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_affine_matches_float64_and_takes_the_bias_gradient_as_a_product(dtype):
  """`cells.affine` (a whole sequence's projection with a bias): values, JVP and VJP against
  float64 formulas (to the precision of `dtype`), and the bias's gradient a matrix-vector
  product, not a sum over [time, batch]: XLA:CPU runs that reduction several times slower."""
  rng = np.random.default_rng(1)
  a, w, b = rng.standard_normal((7, 3, 16)), rng.standard_normal((16, 8)) / 4, rng.standard_normal(8)
  ct, da, dw, db = (rng.standard_normal(s) for s in [(7, 3, 8), a.shape, w.shape, b.shape])
  tol = dict(atol=1e-5, rtol=1e-5) if dtype == jnp.float32 else dict(atol=3e-2, rtol=1e-2)
  args = (jnp.asarray(a, jnp.float32), jnp.asarray(w, dtype), jnp.asarray(b, jnp.float32))
  tangents = (jnp.asarray(da, jnp.float32), jnp.asarray(dw, dtype), jnp.asarray(db, jnp.float32))
  out, tangent = jax.jvp(cells.affine, args, tangents)
  np.testing.assert_allclose(out, np.einsum("tbd,dh->tbh", a, w) + b, **tol)
  np.testing.assert_allclose(tangent, np.einsum("tbd,dh->tbh", da, w)
                             + np.einsum("tbd,dh->tbh", a, dw) + db, **tol)
  _, vjp = jax.vjp(cells.affine, *args)
  got_a, got_w, got_b = vjp(jnp.asarray(ct, jnp.float32))
  np.testing.assert_allclose(got_a, np.einsum("tbh,dh->tbd", ct, w), **tol)
  np.testing.assert_allclose(np.asarray(got_w, np.float32), np.einsum("tbd,tbh->dh", a, ct),
                             atol=1e-4 if dtype == jnp.float32 else 0.1, rtol=1e-2)
  np.testing.assert_allclose(got_b, ct.sum((0, 1)), atol=1e-5, rtol=1e-5)

  def loss(w, b, a):  # a is data: no gradient, and no product with its zero tangent.
    return jnp.sum(jnp.sin(cells.affine(a, w, b)))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*args[1:], args[0])
  names = [e.primitive.name for e in _equations(jaxpr.jaxpr)]
  assert names.count("dot_general") == 3, names  # The product, dW, and db as ones @ cotangent.
  bias_sums = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "reduce_sum"
               and e.outvars[0].aval.shape == b.shape]
  assert not bias_sums, bias_sums


@pytest.mark.parametrize("a_shape,w_shape,b_shape", [
    ((5, 4), (4, 3), (3,)),            # One step's [batch, in].
    ((2, 5, 4), (4, 3), (5, 3)),       # A bias that broadcasts over time only.
    ((2, 5, 4), (4,), ()),             # A weight vector and a scalar bias, as `a @ w + b`.
])
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("bfloat16", "bfloat16")])
def test_affine_gradients_of_each_argument_alone(a_shape, w_shape, b_shape, dtypes):
  """Each of a, w, b differentiated alone (the others symbolic zeros in the JVP) and all
  together, for shapes and dtypes beyond the cells' [time, batch, in] @ [in, out] + [out]:
  the tangent has the output's dtype and every gradient equals float64 formulas."""
  w_dtype, b_dtype = (jnp.dtype(d) for d in dtypes)
  rng = np.random.default_rng(2)
  a, w, b = (rng.standard_normal(s) for s in (a_shape, w_shape, b_shape))
  ct = rng.standard_normal(np.broadcast_shapes(np.shape(a @ w), b_shape))
  args = (jnp.asarray(a, jnp.float32), jnp.asarray(w, w_dtype), jnp.asarray(b, b_dtype))
  # Float64 references from the args as rounded to their dtypes.
  a64, w64, b64 = (np.asarray(x, np.float64) for x in args)
  rows = lambda x: x.reshape(-1, x.shape[-1])  # Every leading axis flattened.
  want = {0: ct @ w64.T if w64.ndim == 2 else ct[..., None] * w64,
          1: rows(a64).T @ rows(ct) if w64.ndim == 2 else rows(a64 * ct[..., None]).sum(0),
          2: ct.reshape((-1,) + b_shape).sum(0)}
  loose = w_dtype == jnp.bfloat16
  for argnums in [(0,), (1,), (2,), (0, 1, 2)]:
    def loss(*xs):
      full = list(args)
      for i, x in zip(argnums, xs):
        full[i] = x
      out = cells.affine(*full)
      assert out.dtype == jnp.float32
      return jnp.sum(out * jnp.asarray(ct, jnp.float32))
    grads = jax.grad(loss, argnums=tuple(range(len(argnums))))(*(args[i] for i in argnums))
    for i, got in zip(argnums, grads):
      assert got.dtype == args[i].dtype and got.shape == args[i].shape, (i, got)
      np.testing.assert_allclose(np.asarray(got, np.float64), want[i],
                                 rtol=5e-2 if loose else 1e-5, atol=0.2 if loose else 1e-5,
                                 err_msg=f"argument {i} of {argnums}")


def _equations(jaxpr):
  """Every equation of a jaxpr, also those inside sub-jaxprs (jit, checkpoint)."""
  for equation in jaxpr.eqns:
    yield equation
    for param in equation.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)  # Jaxpr, Closed.
        if hasattr(inner, "eqns"):
          yield from _equations(inner)
