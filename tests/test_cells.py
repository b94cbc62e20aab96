"""Tests for rnn_jax.cells: each step against float64 NumPy written from the published
equations (not from the JAX code), the initialisers, the registry and the carry helpers.

The references slice every gate out of the fused matrices by hand, so a gate order, a
transposition or a misplaced term in the cells cannot cancel out; `test_reference_detects_*`
check that the comparison would indeed fail for such mistakes.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells

BATCH, INPUT, HIDDEN = 4, 3, 5  # All different, so a transposed matrix cannot go unnoticed.
TOL = dict(rtol=1e-5, atol=1e-5)
STEPS = 3

# name -> (registry name, options). One entry per option the cells accept that changes the step.
CONFIGS = {
    "rnn-tanh": ("rnn", {}),
    "rnn-tanh-explicit": ("rnn", {"activation": "tanh"}),
    "rnn-relu": ("rnn", {"activation": "relu"}),
    "irnn": ("irnn", {}),
    "lstm": ("lstm", {}),
    "lstm-peephole": ("lstm", {"peephole": True}),
    "lstm-cifg": ("lstm", {"cifg": True}),
    "lstm-peephole-cifg": ("lstm", {"peephole": True, "cifg": True}),
    "gru-reset-after": ("gru", {"reset_after": True}),
    "gru-default": ("gru", {}),
    "gru-reset-before": ("gru", {"reset_after": False}),
    "mgu": ("mgu", {}),
}


def num_gates(name, options):
  if name in ("rnn", "irnn"):
    return 1
  if name == "lstm":
    return 3 if options.get("cifg") else 4
  if name == "mgu":
    return 2
  return 3


def expected_shapes(name, options, input_size=INPUT, hidden=HIDDEN):
  """The param layout, written from the cells' documented layout."""
  g = num_gates(name, options)
  shapes = {"w_x": (input_size, g * hidden), "w_h": (hidden, g * hidden), "b": (g * hidden,)}
  if name == "lstm" and options.get("peephole"):
    for peep in (("w_cf", "w_co") if options.get("cifg") else ("w_ci", "w_cf", "w_co")):
      shapes[peep] = (hidden,)
  if name == "gru" and options.get("reset_after", True):
    shapes["b_hn"] = (hidden,)
  return shapes


# ----------------------------------------------------------------------------- references

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def relu(x):
  return np.maximum(x, 0.0)


def block(matrix, index, hidden=HIDDEN):
  """The index-th hidden-size block of a fused matrix (last axis)."""
  return matrix[..., index * hidden:(index + 1) * hidden]


def ref_rnn(p, h, x, *, act, transpose_w_h=False):
  """Elman 1990: h' = act(x W_x + h W_h + b)."""
  w_h = p["w_h"].T if transpose_w_h else p["w_h"]
  return act(x @ p["w_x"] + h @ w_h + p["b"])


def ref_lstm(p, carry, x, *, peephole, cifg, order=None, output_peephole_on_old_c=False,
             input_gate_equals_forget=False):
  """LSTM with forget gate (Gers et al. 2000), peepholes (Gers and Schmidhuber 2000) and the
  coupled input-forget gate (CIFG, Greff et al. 2017), gates fused in PyTorch's order."""
  h, c = carry
  order = order or (("f", "g", "o") if cifg else ("i", "f", "g", "o"))
  pre = {gate: x @ block(p["w_x"], k) + h @ block(p["w_h"], k) + block(p["b"], k)
         for k, gate in enumerate(order)}
  f = sigmoid(pre["f"] + (p["w_cf"] * c if peephole else 0.0))
  if cifg:
    i = f if input_gate_equals_forget else 1.0 - f
  else:
    i = sigmoid(pre["i"] + (p["w_ci"] * c if peephole else 0.0))
  g = np.tanh(pre["g"])
  c_new = f * c + i * g
  c_peep = c if output_peephole_on_old_c else c_new
  o = sigmoid(pre["o"] + (p["w_co"] * c_peep if peephole else 0.0))
  return o * np.tanh(c_new), c_new


def ref_gru(p, h, x, *, reset_after, order=("r", "z", "n"), swap_update=False):
  """GRU (Cho et al. 2014). reset_after: n = tanh(x W_xn + b_n + r * (h W_hn + b_hn));
  otherwise n = tanh(x W_xn + (r * h) W_hn + b_n)."""
  k = {gate: order.index(gate) for gate in "rzn"}
  wx = {gate: block(p["w_x"], k[gate]) for gate in "rzn"}
  wh = {gate: block(p["w_h"], k[gate]) for gate in "rzn"}
  b = {gate: block(p["b"], k[gate]) for gate in "rzn"}
  r = sigmoid(x @ wx["r"] + h @ wh["r"] + b["r"])
  z = sigmoid(x @ wx["z"] + h @ wh["z"] + b["z"])
  if reset_after:
    n = np.tanh(x @ wx["n"] + b["n"] + r * (h @ wh["n"] + p.get("b_hn", 0.0)))
  else:
    n = np.tanh(x @ wx["n"] + (r * h) @ wh["n"] + b["n"])
  return z * n + (1.0 - z) * h if swap_update else (1.0 - z) * n + z * h


def ref_mgu(p, h, x):
  """MGU (Zhou et al. 2016): f = sigmoid(x W_xf + h W_hf + b_f);
  n = tanh(x W_xn + (f * h) W_hn + b_n); h' = (1 - f) * h + f * n."""
  wx = {gate: block(p["w_x"], k) for k, gate in enumerate("fn")}
  wh = {gate: block(p["w_h"], k) for k, gate in enumerate("fn")}
  b = {gate: block(p["b"], k) for k, gate in enumerate("fn")}
  f = sigmoid(x @ wx["f"] + h @ wh["f"] + b["f"])
  n = np.tanh(x @ wx["n"] + (f * h) @ wh["n"] + b["n"])
  return (1.0 - f) * h + f * n


def reference_step(name, options, p, carry, x, **variant):
  """(new carry, h) of the float64 reference."""
  if name in ("rnn", "irnn"):
    act = relu if name == "irnn" or options.get("activation") == "relu" else np.tanh
    act = variant.pop("act", act)
    h = ref_rnn(p, carry, x, act=act, **variant)
    return h, h
  if name == "lstm":
    kwargs = dict(peephole=options.get("peephole", False), cifg=options.get("cifg", False))
    kwargs.update(variant)
    h, c = ref_lstm(p, carry, x, **kwargs)
    return (h, c), h
  if name == "mgu":
    h = ref_mgu(p, carry, x)
    return h, h
  kwargs = dict(reset_after=options.get("reset_after", True))
  kwargs.update(variant)
  h = ref_gru(p, carry, x, **kwargs)
  return h, h


# ----------------------------------------------------------------------------- helpers

def random_params(rng, name, options):
  """Every param drawn at random (non-zero biases and peepholes), rounded to float32."""
  return {k: rng.normal(0.0, 0.6, shape).astype(np.float32).astype(np.float64)
          for k, shape in expected_shapes(name, options).items()}


def random_carry(rng, name):
  draw = lambda: rng.normal(0.0, 1.0, (BATCH, HIDDEN)).astype(np.float32).astype(np.float64)
  return (draw(), draw()) if name == "lstm" else draw()


def to_jax(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


@functools.lru_cache(maxsize=None)
def random_state(config, seed=0):
  """Random params, initial carry and inputs xs [STEPS, batch, input], float64."""
  name, options = CONFIGS[config]
  rng = np.random.default_rng(seed)
  p = random_params(rng, name, options)
  carry = random_carry(rng, name)
  xs = rng.normal(0.0, 1.0, (STEPS, BATCH, INPUT)).astype(np.float32).astype(np.float64)
  return p, carry, xs


@functools.lru_cache(maxsize=None)
def jax_run(config, seed=0):
  """[(carry, h)] after each of STEPS steps of the JAX cell, float32, from `random_state`."""
  name, options = CONFIGS[config]
  p, carry, xs = random_state(config, seed)
  step = jax.jit(cells.get(name, **options).step)
  params, out = to_jax(p), []
  carry = to_jax(carry)
  for x in xs:
    carry, h = step(params, carry, jnp.asarray(x, jnp.float32))
    out.append((carry, h))
  return out


def run_both(config, seed=0, **variant):
  """Per step ((jax carry, jax h), (ref carry, ref h)), both from the same random state."""
  name, options = CONFIGS[config]
  p, ref_carry, xs = random_state(config, seed)
  out = []
  for x, jax_out in zip(xs, jax_run(config, seed)):
    ref_carry, ref_h = reference_step(name, options, p, ref_carry, x, **variant)
    out.append((jax_out, (ref_carry, ref_h)))
  return out


def init(cell, seed, input_size, hidden):
  return cell.init(jax.random.key(seed), input_size, hidden)


# ----------------------------------------------------------------------------- step

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_step_matches_numpy_reference(config):
  name, _ = CONFIGS[config]
  for (jax_carry, jax_h), (ref_carry, ref_h) in run_both(config):
    assert jax_h.dtype == jnp.float32
    assert jax_h.shape == (BATCH, HIDDEN)
    np.testing.assert_allclose(np.asarray(jax_h), ref_h, **TOL)
    if name == "lstm":
      assert isinstance(jax_carry, tuple) and len(jax_carry) == 2
      np.testing.assert_allclose(np.asarray(jax_carry[0]), ref_carry[0], **TOL)
      np.testing.assert_allclose(np.asarray(jax_carry[1]), ref_carry[1], **TOL)
    else:
      np.testing.assert_allclose(np.asarray(jax_carry), ref_carry, **TOL)
    # The output is the hidden state.
    np.testing.assert_array_equal(np.asarray(cells.hidden_of(jax_carry)), np.asarray(jax_h))


@pytest.mark.parametrize("config", ["rnn-relu", "irnn"])
def test_relu_cells_exercise_both_sides_of_zero(config):
  hs = np.stack([np.asarray(h) for (_, h), _ in run_both(config)])
  assert 0.1 < np.mean(hs == 0.0) < 0.9  # Otherwise relu vs identity would go untested.


def _max_error(config, **variant):
  errors = []
  for (jax_carry, jax_h), (ref_carry, ref_h) in run_both(config, **variant):
    errors.append(np.max(np.abs(np.asarray(jax_h) - ref_h)))
    for a, b in zip(jax.tree.leaves(jax_carry), jax.tree.leaves(ref_carry)):
      errors.append(np.max(np.abs(np.asarray(a) - b)))
  return max(errors)


MISTAKES = [  # (config, a plausible bug in a cell, as a variant of the reference)
    ("rnn-tanh", dict(transpose_w_h=True)),
    ("rnn-tanh", dict(act=relu)),
    ("rnn-relu", dict(act=np.tanh)),
    ("irnn", dict(act=np.tanh)),
    ("lstm-peephole", dict(peephole=False)),
    ("lstm-peephole", dict(output_peephole_on_old_c=True)),
    ("lstm-peephole-cifg", dict(output_peephole_on_old_c=True)),
    ("lstm-peephole-cifg", dict(cifg=True, peephole=False)),
    ("lstm-cifg", dict(input_gate_equals_forget=True)),
    ("lstm-cifg", dict(order=("g", "f", "o"))),
    ("lstm-cifg", dict(order=("f", "o", "g"))),
    ("gru-reset-after", dict(reset_after=False)),
    ("gru-reset-before", dict(reset_after=True)),
    ("gru-reset-after", dict(swap_update=True)),
    ("gru-reset-before", dict(swap_update=True)),
    ("gru-reset-after", dict(order=("z", "r", "n"))),
    ("gru-reset-before", dict(order=("r", "n", "z"))),
] + [("lstm", dict(order=order))  # Every wrong LSTM gate order.
     for order in itertools.permutations("ifgo") if order != tuple("ifgo")]


def _mistake_id(config, variant):
  parts = [f"{k}={getattr(v, '__name__', v)}" for k, v in variant.items()]
  return "-".join([config] + parts).replace(" ", "").replace("'", "")


@pytest.mark.parametrize("config,variant", MISTAKES, ids=[_mistake_id(*m) for m in MISTAKES])
def test_reference_detects_mistakes(config, variant):
  """The step comparison fails when the cell and the equations differ in one of these ways."""
  assert _max_error(config, **variant) > 1e-3


# ----------------------------------------------------------------------------- init

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_init_shapes_and_dtypes(config):
  name, options = CONFIGS[config]
  cell = cells.get(name, **options)
  for input_size, hidden in ((INPUT, HIDDEN), (7, 2)):
    init = functools.partial(cell.init, input_size=input_size, hidden_size=hidden)
    params = jax.eval_shape(init, jax.random.key(0))  # Shapes without the cost of running.
    shapes = expected_shapes(name, options, input_size, hidden)
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert all(v.dtype == jnp.float32 for v in params.values())
  assert cell.num_gates == num_gates(name, options)
  assert cell.carry_size == (2 if name == "lstm" else 1)
  assert cell.name == name


@pytest.mark.parametrize("config", ["irnn", "lstm-peephole", "gru-reset-after"])
def test_init_depends_on_key_only(config):
  name, options = CONFIGS[config]
  cell = cells.get(name, **options)
  a = init(cell, 3, INPUT, HIDDEN)
  b = init(cell, 3, INPUT, HIDDEN)
  c = init(cell, 4, INPUT, HIDDEN)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["w_x"], c["w_x"])


@pytest.mark.parametrize("cifg", [False, True])
@pytest.mark.parametrize("forget_bias", [None, 0.0, 2.5, -1.0])
def test_lstm_forget_bias_lands_in_the_f_block(cifg, forget_bias):
  options = {"cifg": cifg} if forget_bias is None else {"cifg": cifg, "forget_bias": forget_bias}
  # The identity recurrent init only saves time: the bias does not depend on it.
  params = init(cells.get("lstm", recurrent_init="identity", **options), 0, INPUT, HIDDEN)
  value = 1.0 if forget_bias is None else forget_bias  # Jozefowicz et al. 2015's default.
  gates = ("f", "g", "o") if cifg else ("i", "f", "g", "o")
  for k, gate in enumerate(gates):
    expected = value if gate == "f" else 0.0
    np.testing.assert_array_equal(block(np.asarray(params["b"]), k),
                                  np.full((HIDDEN,), expected, np.float32), err_msg=gate)


@pytest.mark.parametrize("name,options,keep,shut", [
    ("lstm", {}, 1, 0), ("lstm", {"cifg": True}, 0, None),
    ("gru", {}, 1, None), ("gru", {"reset_after": False}, 1, None)])
def test_chrono_init_spreads_the_keep_gate_bias(name, options, keep, shut):
  t_max, hidden = 200, 2000
  plain = init(cells.get(name, recurrent_init="identity", **options), 0, INPUT, hidden)
  params = init(cells.get(name, recurrent_init="identity", chrono_init=t_max, **options), 0,
                INPUT, hidden)
  b = np.asarray(params["b"])
  b_keep = block(b, keep, hidden)
  # log(U(1, T_max - 1)): inside [0, log(T_max - 1)], spread over all of it (2,000 samples),
  # with the mean of log U for U ~ U(1, a): (a log a - a + 1) / (a - 1).
  assert 0.0 <= b_keep.min() < 0.5 and np.log(t_max - 1) - 0.05 < b_keep.max() <= np.log(t_max - 1)
  a = t_max - 1.0
  expected_mean = (a * np.log(a) - a + 1.0) / (a - 1.0)  # E[log U] for U ~ U(1, a).
  assert abs(b_keep.mean() - expected_mean) < 0.05
  for k in range(b.size // hidden):
    if k == shut:  # LSTM: b_i = -b_f, the input gate starts as shut as f is open.
      np.testing.assert_array_equal(block(b, k, hidden), -b_keep)
    elif k != keep:
      np.testing.assert_array_equal(block(b, k, hidden), np.zeros(hidden, np.float32),
                                    err_msg=str(k))
  for k in params:  # b_hn of the GRU, peepholes: untouched.
    if k not in ("b", "w_x", "w_h"):
      np.testing.assert_array_equal(params[k], plain[k], err_msg=k)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_chrono_init_changes_only_biases_and_follows_the_key(name):
  plain = init(cells.get(name), 0, INPUT, HIDDEN)
  chrono = init(cells.get(name, chrono_init=50), 0, INPUT, HIDDEN)
  other_key = init(cells.get(name, chrono_init=50), 1, INPUT, HIDDEN)
  for k in plain:  # Orthogonal w_h and Glorot w_x both depend on the key: same key, same draw.
    if k != "b":
      np.testing.assert_array_equal(chrono[k], plain[k], err_msg=k)
  assert not np.array_equal(chrono["b"], plain["b"])
  assert not np.array_equal(chrono["b"], other_key["b"])  # Each seed/layer its own biases.


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("bad", [1, -3, 2.5, True, float("inf"), "500"])
def test_chrono_init_rejects_bad_horizons(name, bad):
  with pytest.raises(ValueError, match="chrono_init.*(integer >= 2|must be an integer)"):
    cells.get(name, chrono_init=bad)


@pytest.mark.parametrize("config", ["rnn-tanh", "rnn-relu", "gru-reset-after",
                                    "gru-reset-before"])
def test_biases_start_at_zero(config):
  name, options = CONFIGS[config]
  params = init(cells.get(name, **options), 0, INPUT, HIDDEN)
  for k in ("b", "b_hn"):
    if k in params:
      np.testing.assert_array_equal(params[k], np.zeros_like(params[k]))


def test_peepholes_start_small_and_nonzero():
  params = init(cells.get("lstm", peephole=True, recurrent_init="identity"), 0, INPUT, 50)
  for k in ("w_ci", "w_cf", "w_co"):
    assert 0.0 < np.max(np.abs(params[k])) <= 0.1
  assert not np.array_equal(params["w_ci"], params["w_cf"])


@pytest.mark.parametrize("name,options", [("rnn", {}), ("rnn", {"recurrent_scale": 0.5}),
                                          ("lstm", {}), ("lstm", {"cifg": True}),
                                          ("gru", {}), ("gru", {"reset_after": False})])
def test_orthogonal_recurrent_blocks(name, options):
  hidden = 8
  cell = cells.get(name, **options)
  w_h = np.asarray(init(cell, 1, INPUT, hidden)["w_h"], np.float64)
  scale = options.get("recurrent_scale", 1.0)
  blocks = [block(w_h, k, hidden) for k in range(cell.num_gates)]
  for q in blocks:
    np.testing.assert_allclose(q.T @ q, scale ** 2 * np.eye(hidden), atol=1e-5)
    np.testing.assert_allclose(q @ q.T, scale ** 2 * np.eye(hidden), atol=1e-5)
    assert not np.allclose(q, scale * np.eye(hidden), atol=0.1)  # Not the identity.
  for a, b in itertools.combinations(blocks, 2):
    assert not np.allclose(a, b)  # One independent draw per gate.


@pytest.mark.parametrize("name,options,scale", [
    ("irnn", {}, 1.0), ("irnn", {"recurrent_scale": 0.5}, 0.5),
    ("rnn", {"recurrent_init": "identity"}, 1.0),
    ("rnn", {"recurrent_init": "identity", "recurrent_scale": 0.9, "activation": "relu"}, 0.9),
])
def test_identity_init(name, options, scale):
  w_h = init(cells.get(name, **options), 0, INPUT, HIDDEN)["w_h"]
  np.testing.assert_allclose(w_h, scale * np.eye(HIDDEN), rtol=0, atol=1e-7)


def test_irnn_input_weights_are_small_and_biases_zero():
  params = init(cells.get("irnn"), 0, 20, 50)
  w_x = np.asarray(params["w_x"])
  assert 0.0008 < np.std(w_x) < 0.0012  # N(0, 0.001^2) over 1000 draws.
  assert abs(np.mean(w_x)) < 1e-4
  assert np.max(np.abs(w_x)) < 0.006
  np.testing.assert_array_equal(params["b"], np.zeros((50,), np.float32))


def test_irnn_is_a_relu_rnn():
  cell = cells.get("irnn")
  assert cell.name == "irnn"
  assert dict(cell.options) == {"recurrent_scale": 1.0}
  h, _ = cell.step({"w_x": jnp.eye(2), "w_h": jnp.zeros((2, 2)), "b": jnp.zeros(2)},
                   jnp.zeros((1, 2)), jnp.array([[-1.0, 2.0]]))
  np.testing.assert_array_equal(h, [[0.0, 2.0]])


def test_uniform_recurrent_init_matches_pytorch_bound():
  hidden = 16
  w_h = np.asarray(init(cells.get("rnn", recurrent_init="uniform"), 0, INPUT,
                        hidden)["w_h"])
  bound = 1.0 / np.sqrt(hidden)
  assert np.max(np.abs(w_h)) <= bound
  assert np.max(np.abs(w_h)) > 0.9 * bound
  assert abs(np.mean(w_h)) < 0.1 * bound


@pytest.mark.parametrize("name,gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_joint_glorot_is_one_tf1_kernel_over_x_and_h(name, gates):
  hidden = 32
  params = init(cells.get(name, recurrent_init="joint_glorot"), 0, INPUT, hidden)
  kernel = np.concatenate([params["w_x"], params["w_h"]], axis=0)
  bound = np.sqrt(6.0 / (INPUT + hidden + gates * hidden))  # fan_in + fan_out of [x, h] -> gates
  assert np.max(np.abs(kernel)) <= bound
  assert np.max(np.abs(kernel)) > 0.9 * bound
  assert np.max(np.abs(params["w_x"])) > 0.5 * bound  # w_x has the same scale as w_h.
  assert abs(np.mean(kernel)) < 0.05 * bound


@pytest.mark.parametrize("name,options", [  # identity: quicker, and w_x does not depend on it.
    ("rnn", {"recurrent_init": "identity"}), ("lstm", {"recurrent_init": "identity"}),
    ("gru", {"recurrent_init": "identity"})])
def test_input_weights_glorot_uniform(name, options):
  cell = cells.get(name, **options)
  input_size, hidden = 30, 20
  w_x = np.asarray(init(cell, 0, input_size, hidden)["w_x"])
  bound = np.sqrt(6.0 / (input_size + cell.num_gates * hidden))
  assert np.max(np.abs(w_x)) <= bound
  assert np.max(np.abs(w_x)) > 0.9 * bound


@pytest.mark.parametrize("options,match", [
    ({"recurrent_init": "xavier"}, "recurrent_init 'xavier'.*orthogonal.*identity.*uniform"),
    ({"input_init": "zeros"}, "input_init 'zeros'.*glorot.*small_normal"),
])
def test_unknown_initialisers_name_the_choices(options, match):
  cell = cells.get("rnn", **options)
  with pytest.raises(ValueError, match=match):
    cell.init(jax.random.key(0), INPUT, HIDDEN)


def test_unknown_activation_names_the_choices():
  with pytest.raises(ValueError, match="'sigmoid'.*relu.*tanh"):
    cells.get("rnn", activation="sigmoid")


# ----------------------------------------------------------------------------- carries

@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_carry(config, dtype):
  name, options = CONFIGS[config]
  carry = cells.get(name, **options).zero_carry(BATCH, HIDDEN, dtype)
  leaves = list(carry) if name == "lstm" else [carry]
  assert isinstance(carry, tuple) == (name == "lstm")
  assert len(leaves) == (2 if name == "lstm" else 1)
  for leaf in leaves:
    assert leaf.shape == (BATCH, HIDDEN) and leaf.dtype == dtype
    assert not np.any(np.asarray(leaf, np.float32))


def test_zero_carry_default_dtype_is_float32():
  assert cells.get("gru").zero_carry(2, 3).dtype == jnp.float32


def test_hidden_of_and_with_hidden():
  h, c, new = jnp.ones((2, 3)), 2 * jnp.ones((2, 3)), 3 * jnp.ones((2, 3))
  assert cells.hidden_of(h) is h
  assert cells.hidden_of((h, c)) is h
  assert cells.with_hidden(h, new) is new
  replaced = cells.with_hidden((h, c), new)
  assert isinstance(replaced, tuple) and len(replaced) == 2
  assert replaced[0] is new and replaced[1] is c
  assert cells.hidden_size_of({"w_h": jnp.zeros((6, 24))}) == 6


# ----------------------------------------------------------------------------- registry

def test_registry_knows_the_cells():
  assert {"rnn", "irnn", "lstm", "gru"} <= set(cells.names())
  assert cells.names() == sorted(cells.names())


def test_unknown_cell_lists_the_known_ones():
  with pytest.raises(ValueError, match="'transformer'") as info:
    cells.get("transformer")
  for known in cells.names():
    assert known in str(info.value)


@pytest.mark.parametrize("name,bad,accepted", [
    ("lstm", "forgetbias", ["forget_bias", "peephole", "cifg", "recurrent_init", "chrono_init"]),
    ("gru", "peephole", ["reset_after", "recurrent_init", "chrono_init"]),
    ("rnn", "nonlinearity", ["activation", "recurrent_init", "recurrent_scale", "input_init"]),
    ("irnn", "activation", ["recurrent_scale"]),
])
def test_unknown_option_lists_accepted_options(name, bad, accepted):
  with pytest.raises(ValueError) as info:
    cells.get(name, **{bad: 1})
  message = str(info.value)
  assert repr(bad) in message and repr(name) in message
  for option in accepted:
    assert option in message


def test_options_of_gives_defaults():
  assert cells.options_of("lstm") == {"forget_bias": 1.0, "peephole": False, "cifg": False,
                                      "recurrent_init": "orthogonal", "chrono_init": 0}
  assert cells.options_of("gru") == {"reset_after": True, "recurrent_init": "orthogonal",
                                     "chrono_init": 0}
  with pytest.raises(ValueError, match="Known cells"):
    cells.options_of("nope")


def test_cell_records_its_options():
  cell = cells.get("lstm", forget_bias=0.5, cifg=True)
  assert dict(cell.options) == {"forget_bias": 0.5, "peephole": False, "cifg": True,
                                "recurrent_init": "orthogonal", "chrono_init": 0}


def test_register_adds_a_cell_and_refuses_duplicates(monkeypatch):
  monkeypatch.setattr(cells, "_FACTORIES", dict(cells._FACTORIES))

  @cells.register("scaled_rnn")
  def scaled_rnn(scale: float = 2.0):
    base = cells.rnn()
    return cells.Cell("scaled_rnn", 1, 1, base.init,
                      lambda p, h, x: base.step(p, h, scale * x), (("scale", scale),))

  assert "scaled_rnn" in cells.names()
  assert dict(cells.get("scaled_rnn", scale=3.0).options) == {"scale": 3.0}
  with pytest.raises(ValueError, match="already registered"):
    cells.register("lstm")(scaled_rnn)
