"""Tests for rnn_jax.interop: PyTorch's nn.RNN / nn.LSTM / nn.GRU and rnn_jax stacks compute
the same function once converted, the round trips, and the errors.

The comparisons with PyTorch run where torch is installed (requirements-dev.txt pins a CPU
build); the rest needs NumPy only.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, interop, recurrent

BATCH, TIME, INPUT, HIDDEN, LAYERS = 3, 7, 5, 6, 2
TOL = dict(rtol=1e-5, atol=1e-5)

# name -> (torch class, its kwargs, rnn_jax cell name, cell options)
MODULES = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}, "rnn", {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, "rnn", {"activation": "relu"}),
    "lstm": ("LSTM", {}, "lstm", {}),
    "gru": ("GRU", {}, "gru", {}),
}


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def make_module(torch, kind, bidirectional, *, bias=True, seed=0):
  """A float64 two-layer module with every param drawn from U(-0.5, 0.5)."""
  cls, kwargs, _, _ = MODULES[kind]
  torch.manual_seed(seed)
  module = getattr(torch.nn, cls)(INPUT, HIDDEN, num_layers=LAYERS, bias=bias, batch_first=True,
                                  bidirectional=bidirectional, **kwargs).double()
  with torch.no_grad():
    for param in module.parameters():
      param.uniform_(-0.5, 0.5)
  return module


def numpy_state_dict(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def random_inputs(kind, bidirectional, seed=1):
  """xs [batch, time, input] and PyTorch-layout initial states [layers*directions, batch, H]."""
  rng = np.random.default_rng(seed)
  rows = LAYERS * (2 if bidirectional else 1)
  xs = rng.normal(size=(BATCH, TIME, INPUT))
  h0 = rng.normal(size=(rows, BATCH, HIDDEN))
  c0 = rng.normal(size=(rows, BATCH, HIDDEN)) if kind == "lstm" else None
  # Rounded to float32 so that both sides start from the very same numbers.
  round32 = lambda a: None if a is None else a.astype(np.float32).astype(np.float64)
  return round32(xs), round32(h0), round32(c0)


def run_torch(torch, module, xs, h0=None, c0=None):
  """(ys [batch, time, D*H], h_n [L*D, batch, H], c_n or None) from the PyTorch module."""
  with torch.no_grad():
    state = None
    if h0 is not None:
      state = torch.from_numpy(h0)
      if c0 is not None:
        state = (state, torch.from_numpy(c0))
    ys, final = module(torch.from_numpy(xs), state)
  if isinstance(final, tuple):
    return ys.numpy(), final[0].numpy(), final[1].numpy()
  return ys.numpy(), final.numpy(), None


def run_rnn_jax(cell, layers, xs, h0=None, c0=None):
  """The same as `run_torch`, with `recurrent.run_layers`, translating the states' layout."""
  directions = ("fwd", "bwd") if "bwd" in layers[0] else ("fwd",)
  num_directions = len(directions)
  initial = None
  if h0 is not None:
    def carry(row):
      h = jnp.asarray(h0[row], jnp.float32)
      return (h, jnp.asarray(c0[row], jnp.float32)) if c0 is not None else h
    initial = []
    for layer in range(len(layers)):
      per_direction = {d: carry(layer * num_directions + k) for k, d in enumerate(directions)}
      initial.append(per_direction["fwd"] if num_directions == 1 else per_direction)
  run = jax.jit(functools.partial(recurrent.run_layers, cell))  # One compile, not one per op.
  finals, ys = run(layers, jnp.asarray(xs, jnp.float32), initial_carries=initial)
  rows = []  # PyTorch's h_n order: layer 0 fwd, layer 0 bwd, layer 1 fwd, ...
  for final in finals:
    rows.extend([final] if num_directions == 1 else [final[d] for d in directions])
  h_n = np.stack([np.asarray(cells.hidden_of(r)) for r in rows])
  c_n = np.stack([np.asarray(r[1]) for r in rows]) if isinstance(rows[0], tuple) else None
  return np.asarray(ys), h_n, c_n


def assert_same_outputs(got, want):
  ys, h_n, c_n = got
  want_ys, want_h, want_c = want
  assert ys.shape == want_ys.shape
  np.testing.assert_allclose(ys, want_ys, **TOL)
  np.testing.assert_allclose(h_n, want_h, **TOL)
  if want_c is not None:
    np.testing.assert_allclose(c_n, want_c, **TOL)


# ----------------------------------------------------------------------------- vs PyTorch

@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_converted_params_compute_what_torch_computes(torch, kind, bidirectional):
  module = make_module(torch, kind, bidirectional)
  _, _, cell_name, options = MODULES[kind]
  layers = interop.from_torch(numpy_state_dict(module), cell_name)
  assert len(layers) == LAYERS
  assert all(set(layer) == ({"fwd", "bwd"} if bidirectional else {"fwd"}) for layer in layers)
  xs, h0, c0 = random_inputs(kind, bidirectional)
  want = run_torch(torch, module, xs, h0, c0)
  assert want[0].shape == (BATCH, TIME, HIDDEN * (2 if bidirectional else 1))
  assert_same_outputs(run_rnn_jax(cells.get(cell_name, **options), layers, xs, h0, c0), want)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_zero_initial_state_matches_torch_default(torch, kind):
  module = make_module(torch, kind, True, seed=2)
  _, _, cell_name, options = MODULES[kind]
  layers = interop.from_torch(numpy_state_dict(module), cell_name)
  xs, _, _ = random_inputs(kind, True, seed=3)
  assert_same_outputs(run_rnn_jax(cells.get(cell_name, **options), layers, xs),
                      run_torch(torch, module, xs))


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_bias_false_converts_to_zero_biases(torch, kind):
  module = make_module(torch, kind, False, bias=False, seed=4)
  state_dict = numpy_state_dict(module)
  assert not any(k.startswith("bias") for k in state_dict)
  _, _, cell_name, options = MODULES[kind]
  layers = interop.from_torch(state_dict, cell_name)
  for layer in layers:
    assert not np.any(layer["fwd"]["b"])
    if kind == "gru":
      assert not np.any(layer["fwd"]["b_hn"])
  xs, h0, c0 = random_inputs(kind, False, seed=5)
  assert_same_outputs(run_rnn_jax(cells.get(cell_name, **options), layers, xs, h0, c0),
                      run_torch(torch, module, xs, h0, c0))


def test_relu_rnn_runs_as_irnn(torch):
  module = make_module(torch, "rnn_relu", False, seed=6)
  layers = interop.from_torch(numpy_state_dict(module), "irnn")
  xs, h0, _ = random_inputs("rnn_relu", False, seed=7)
  assert_same_outputs(run_rnn_jax(cells.get("irnn"), layers, xs, h0),
                      run_torch(torch, module, xs, h0))


def test_accepts_torch_tensors_directly(torch):
  module = make_module(torch, "gru", False)
  from_tensors = interop.from_torch(module.state_dict(), "gru")
  from_numpy = interop.from_torch(numpy_state_dict(module), "gru")
  jax.tree.map(np.testing.assert_array_equal, from_tensors, from_numpy)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_torch_to_params_to_torch_keeps_the_function(torch, kind, bidirectional):
  module = make_module(torch, kind, bidirectional, seed=8)
  _, _, cell_name, _ = MODULES[kind]
  state_dict = interop.to_torch(interop.from_torch(numpy_state_dict(module), cell_name),
                                cell_name)
  assert list(state_dict) == list(module.state_dict())  # Same keys, in PyTorch's order.
  again = make_module(torch, kind, bidirectional, seed=9)
  again.load_state_dict({k: torch.from_numpy(v).double() for k, v in state_dict.items()},
                        strict=True)
  xs, h0, c0 = random_inputs(kind, bidirectional, seed=10)
  # The params went through float32: a float32-sized difference only.
  assert_same_outputs(run_torch(torch, again, xs, h0, c0), run_torch(torch, module, xs, h0, c0))
  for key in state_dict:  # Weights unchanged; the bias sum kept, its split moved to bias_ih.
    if key.startswith("weight"):
      np.testing.assert_allclose(state_dict[key], module.state_dict()[key].numpy(), rtol=1e-7)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_to_torch_loads_into_the_module_and_matches_rnn_jax(torch, kind):
  _, _, cell_name, options = MODULES[kind]
  cell = cells.get(cell_name, **options)
  layers = _random_layers(cell_name, bidirectional=True)
  module = make_module(torch, kind, True)
  module.load_state_dict({k: torch.from_numpy(v).double()
                          for k, v in interop.to_torch(layers, cell_name).items()})
  xs, h0, c0 = random_inputs(kind, True, seed=11)
  assert_same_outputs(run_rnn_jax(cell, layers, xs, h0, c0), run_torch(torch, module, xs, h0, c0))


# ----------------------------------------------------------------------------- round trips

def _random_layers(cell_name, bidirectional, num_layers=LAYERS, seed=0, **options):
  """Stack params of the documented layout, every entry (biases too) drawn at random."""
  cell = cells.get(cell_name, **options)
  rng = np.random.default_rng(seed)
  layers, size = [], INPUT
  for _ in range(num_layers):
    layer = {}
    for direction in (("fwd", "bwd") if bidirectional else ("fwd",)):
      shapes = {"w_x": (size, cell.num_gates * HIDDEN), "w_h": (HIDDEN, cell.num_gates * HIDDEN),
                "b": (cell.num_gates * HIDDEN,)}
      if options.get("peephole"):
        shapes.update({k: (HIDDEN,) for k in ("w_ci", "w_cf", "w_co")[int(cell.num_gates == 3):]})
      if cell_name == "gru" and options.get("reset_after", True):
        shapes["b_hn"] = (HIDDEN,)
      layer[direction] = {k: jnp.asarray(rng.uniform(-0.5, 0.5, shape), jnp.float32)
                          for k, shape in shapes.items()}
    layers.append(layer)
    size = HIDDEN * len(layer)
  return layers


@pytest.mark.parametrize("cell_name,options", [("rnn", {}), ("lstm", {}), ("gru", {}),
                                               ("lstm", {"peephole": True, "cifg": True}),
                                               ("gru", {"reset_after": False})])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layout_is_the_one_of_recurrent_init_layers(cell_name, options, bidirectional):
  """What from_torch returns (and _random_layers draws) is what the stack runs on."""
  cell = cells.get(cell_name, **options)
  init = functools.partial(recurrent.init_layers, cell=cell, input_size=INPUT,
                           hidden_size=HIDDEN, num_layers=3, bidirectional=bidirectional)
  want = jax.eval_shape(init, jax.random.key(0))
  got = _random_layers(cell_name, bidirectional, 3, **options)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), got) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), want)
  if not options:
    converted = interop.from_torch(interop.to_torch(got, cell_name), cell_name)
    assert jax.tree.structure(converted) == jax.tree.structure(want)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell_name", ["rnn", "irnn", "lstm", "gru"])
def test_params_to_torch_to_params_is_exact(cell_name, bidirectional, num_layers):
  layers = _random_layers(cell_name, bidirectional, num_layers)
  state_dict = interop.to_torch(layers, cell_name)
  directions = ("", "_reverse") if bidirectional else ("",)
  gates = {"rnn": 1, "irnn": 1, "lstm": 4, "gru": 3}[cell_name]
  for layer in range(num_layers):
    size = INPUT if layer == 0 else HIDDEN * len(directions)
    for suffix in directions:
      assert state_dict[f"weight_ih_l{layer}{suffix}"].shape == (gates * HIDDEN, size)
      assert state_dict[f"weight_hh_l{layer}{suffix}"].shape == (gates * HIDDEN, HIDDEN)
      assert state_dict[f"bias_ih_l{layer}{suffix}"].shape == (gates * HIDDEN,)
      hh = state_dict[f"bias_hh_l{layer}{suffix}"]
      # Documented split: all of b in bias_ih; bias_hh zero except the gru's b_hn block.
      assert not np.any(hh[:2 * HIDDEN] if cell_name == "gru" else hh)
  assert len(state_dict) == 4 * num_layers * len(directions)
  assert all(v.dtype == np.float32 and v.flags.writeable and v.flags.c_contiguous
             for v in state_dict.values())
  back = interop.from_torch(state_dict, cell_name)
  assert len(back) == num_layers
  for layer, layer_back in zip(layers, back):
    assert set(layer) == set(layer_back)
    for d in layer:
      assert set(layer[d]) == set(layer_back[d])
      for name in layer[d]:
        assert layer_back[d][name].dtype == jnp.float32
        np.testing.assert_array_equal(layer_back[d][name], layer[d][name], err_msg=name)


def test_gru_bias_mapping():
  sd = interop.to_torch(_random_layers("gru", False, 1), "gru")
  rng = np.random.default_rng(0)
  sd["bias_ih_l0"] = rng.normal(size=3 * HIDDEN)
  sd["bias_hh_l0"] = rng.normal(size=3 * HIDDEN)
  params = interop.from_torch(sd, "gru", num_layers=1, bidirectional=False)[0]["fwd"]
  h = HIDDEN
  want_b = np.concatenate([sd["bias_ih_l0"][:2 * h] + sd["bias_hh_l0"][:2 * h],
                           sd["bias_ih_l0"][2 * h:]])
  np.testing.assert_allclose(params["b"], want_b, rtol=1e-6)
  np.testing.assert_allclose(params["b_hn"], sd["bias_hh_l0"][2 * h:], rtol=1e-6)
  np.testing.assert_allclose(params["w_x"], sd["weight_ih_l0"].T, rtol=1e-6)
  np.testing.assert_allclose(params["w_h"], sd["weight_hh_l0"].T, rtol=1e-6)


def test_lstm_bias_is_the_sum():
  sd = interop.to_torch(_random_layers("lstm", False, 1), "lstm")
  sd["bias_hh_l0"] = np.arange(4 * HIDDEN, dtype=np.float32)
  params = interop.from_torch(sd, "lstm")[0]["fwd"]
  np.testing.assert_allclose(params["b"], sd["bias_ih_l0"] + sd["bias_hh_l0"], rtol=1e-6)


def test_dtype_option():
  sd = interop.to_torch(_random_layers("rnn", False, 1), "rnn")
  params = interop.from_torch(sd, "rnn", dtype=jnp.bfloat16)[0]["fwd"]
  assert all(v.dtype == jnp.bfloat16 for v in params.values())
  assert all(v.dtype == np.float64 for v in interop.to_torch([{"fwd": params}], "rnn",
                                                             dtype=np.dtype("float64")).values())


# ----------------------------------------------------------------------------- errors

@pytest.fixture
def lstm_dict():
  return interop.to_torch(_random_layers("lstm", True), "lstm")


@pytest.mark.parametrize("key,match", [
    ("foo", "Unknown key 'foo'"),
    ("weight_hr_l0", "proj_size"),
    ("lstm.weight_ih_l0", "prefix"),
    ("weight_ih_l0_backward", "weight_ih_l0_backward"),
])
def test_unknown_keys_are_named(lstm_dict, key, match):
  lstm_dict[key] = np.zeros((3,))
  with pytest.raises(ValueError, match=match):
    interop.from_torch(lstm_dict, "lstm")


@pytest.mark.parametrize("key", ["weight_hh_l1", "weight_ih_l0_reverse", "bias_hh_l1_reverse",
                                 "bias_ih_l0"])
def test_missing_keys_are_named(lstm_dict, key):
  del lstm_dict[key]
  with pytest.raises(ValueError, match=f"Missing key.*'{key}'"):
    interop.from_torch(lstm_dict, "lstm")


def test_layers_and_directions_given_must_match_the_keys(lstm_dict):
  with pytest.raises(ValueError, match="Unexpected key.*'weight_ih_l1'.*num_layers=1"):
    interop.from_torch(lstm_dict, "lstm", num_layers=1)
  with pytest.raises(ValueError, match="Unexpected key.*_reverse.*bidirectional=False"):
    interop.from_torch(lstm_dict, "lstm", bidirectional=False)
  with pytest.raises(ValueError, match="Missing key.*'weight_ih_l2'"):
    interop.from_torch(lstm_dict, "lstm", num_layers=3)
  uni = interop.to_torch(_random_layers("gru", False), "gru")
  with pytest.raises(ValueError, match="Missing key.*'weight_ih_l0_reverse'"):
    interop.from_torch(uni, "gru", bidirectional=True)
  assert len(interop.from_torch(lstm_dict, "lstm", num_layers=2, bidirectional=True)) == 2


@pytest.mark.parametrize("cell_name", ["gru", "rnn"])
def test_wrong_cell_name_is_a_shape_error(lstm_dict, cell_name):
  with pytest.raises(ValueError, match="'weight_hh_l0' has shape \\(24, 6\\).*nn.LSTM 'lstm'"):
    interop.from_torch(lstm_dict, cell_name)


@pytest.mark.parametrize("key,shape", [("weight_ih_l1", (24, 6)), ("weight_hh_l1_reverse", (24, 5)),
                                       ("bias_ih_l0", (23,)), ("weight_ih_l0", (24,))])
def test_shape_mismatch_names_the_key(lstm_dict, key, shape):
  lstm_dict[key] = np.zeros(shape)
  with pytest.raises(ValueError, match=f"'{key}' has shape"):
    interop.from_torch(lstm_dict, "lstm")


@pytest.mark.parametrize("cell_name,options,match", [
    ("lstm", {"peephole": True}, "peephole=True.*no PyTorch equivalent"),
    ("lstm", {"cifg": True}, "cifg=True.*no PyTorch equivalent"),
    ("gru", {"reset_after": False}, "reset_after=False has no PyTorch equivalent"),
    ("lstm", {"peepholes": True}, "no option"),
])
def test_cells_torch_has_no_equivalent_of_raise(lstm_dict, cell_name, options, match):
  with pytest.raises(ValueError, match=match):
    interop.from_torch(lstm_dict, cell_name, cell_options=options)


def test_unknown_cell_and_bad_input():
  with pytest.raises(ValueError, match="'transformer'.*rnn, irnn, lstm, gru"):
    interop.from_torch({}, "transformer")
  with pytest.raises(ValueError, match="empty"):
    interop.from_torch({}, "rnn")
  with pytest.raises(ValueError, match="mapping"):
    interop.from_torch([("weight_ih_l0", np.zeros((6, 5)))], "rnn")
  with pytest.raises(ValueError, match="transformer"):
    interop.to_torch(_random_layers("rnn", False), "transformer")


@pytest.mark.parametrize("cell_name,options,match", [
    ("lstm", {"peephole": True}, "Peephole"),
    ("lstm", {"cifg": True}, "CIFG"),
    ("gru", {"reset_after": False}, "reset_before"),
])
def test_to_torch_refuses_params_torch_cannot_hold(cell_name, options, match):
  layers = _random_layers(cell_name, False, **options)
  with pytest.raises(ValueError, match=match):
    interop.to_torch(layers, cell_name)


def test_to_torch_checks_the_stack():
  with pytest.raises(ValueError, match="empty"):
    interop.to_torch([], "rnn")
  mixed = _random_layers("rnn", True)
  del mixed[1]["bwd"]
  with pytest.raises(ValueError, match=r"Layer 1 has directions \['fwd'\]"):
    interop.to_torch(mixed, "rnn")
  with pytest.raises(ValueError, match=r"layers\[0\]\['fwd'\] has params"):
    interop.to_torch(_random_layers("lstm", False), "gru")  # No b_hn.
  with pytest.raises(ValueError, match=r"layers\[0\]\['fwd'\] has shapes"):
    interop.to_torch([{"fwd": {"w_x": np.zeros((5, 18)), "w_h": np.zeros((6, 18)),
                               "b": np.zeros(18)}}], "lstm")  # gru-sized matrices.


def test_the_library_does_not_import_torch():
  source = pathlib.Path(interop.__file__).read_text()
  imported = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      imported.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported.add(node.module.split(".")[0])
  assert "torch" not in imported
  assert imported <= {"__future__", "re", "typing", "jax", "numpy", "rnn_jax"}
