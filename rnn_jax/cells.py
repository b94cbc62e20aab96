"""Recurrent cells as pure functions, and the registry that names them.

A cell is a pair of pure functions:

    init(key, input_size, hidden_size) -> params
    step(params, carry, x_t) -> (carry, h_t)        x_t, h_t: [batch, features]

Params are plain dicts of arrays with the gate matrices fused, gates in PyTorch's order so
weights port one to one (see `rnn_jax.interop`):

    w_x [input, G*hidden]    w_h [hidden, G*hidden]    b [G*hidden]

(`x @ w_x`: these are the transposes of PyTorch's `weight_ih` / `weight_hh`). The carry is an
array `[batch, hidden]`, or for the LSTM the tuple `(h, c)`; `h` is always `carry[0]` when the
carry is a tuple (see `hidden_of`).

Configs pick a cell by name: `get("lstm", forget_bias=0.0)`. To add a cell, write its factory
in this file (or anywhere) and decorate it with `@register("name")`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # jax.Array [batch, hidden] or a tuple of them whose first element is h.


@dataclasses.dataclass(frozen=True)
class Cell:
  """A recurrent cell: pure `init` and `step`, and the shape of its carry.

  Attributes:
    name: registry name, e.g. "lstm".
    num_gates: G, the number of hidden-size blocks fused in `w_x`, `w_h` and `b`.
    carry_size: how many [batch, hidden] arrays the carry holds (1, or 2 for the LSTM).
    init: (key, input_size, hidden_size) -> params.
    step: (params, carry, x_t [batch, input], h_mask=None) -> (carry, h_t [batch, hidden]).
      h_mask [batch, hidden], when given, multiplies h where it enters the recurrent matmuls
      only (variational recurrent dropout), never the state that is carried on: a GRU's
      z * h must see the unmasked h, or the state is rescaled by 1/(1-p) at every step.
    options: the options the cell was built with (for logs and summaries).
    prepare: params -> params in the form `step` reads fastest, which `step` also accepts;
      `recurrent.scan` calls it once per sequence, outside the loop over time (the LSTM
      splits its fused matrices into per-gate blocks here). Applying it twice is harmless.
      None: params as they are. `dataclasses.replace(cell, step=...)` keeps it: a new step
      must read the prepared form too, or pass `prepare=None`.
  """
  name: str
  num_gates: int
  carry_size: int
  init: Callable[[jax.Array, int, int], Params]
  step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
  options: tuple[tuple[str, Any], ...] = ()
  prepare: Callable[[Params], Params] | None = None

  def zero_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32) -> Carry:
    """The all-zeros initial carry: [batch, hidden], or a tuple of them."""
    zeros = [jnp.zeros((batch_size, hidden_size), dtype) for _ in range(self.carry_size)]
    return zeros[0] if self.carry_size == 1 else tuple(zeros)


def hidden_of(carry: Carry) -> jax.Array:
  """The hidden state h [batch, hidden] inside a carry."""
  return carry[0] if isinstance(carry, tuple) else carry


def with_hidden(carry: Carry, h: jax.Array) -> Carry:
  """`carry` with its hidden state replaced by `h` (the rest, e.g. the LSTM cell, kept)."""
  return (h,) + tuple(carry[1:]) if isinstance(carry, tuple) else h


def hidden_size_of(params: Params) -> int:
  w_h = params["w_h"]
  return (w_h[0] if isinstance(w_h, tuple) else w_h).shape[0]  # Fused, or per gate (prepare).


# ----------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[..., Cell]] = {}


def register(name: str) -> Callable[[Callable[..., Cell]], Callable[..., Cell]]:
  """Decorator: make a cell factory `(**options) -> Cell` available as `get(name)`."""
  def decorate(factory):
    if name in _FACTORIES:
      raise ValueError(f"A cell named {name!r} is already registered.")
    _FACTORIES[name] = factory
    return factory
  return decorate


def names() -> list[str]:
  """The registered cell names, sorted."""
  return sorted(_FACTORIES)


def get(name: str, **options: Any) -> Cell:
  """The cell registered as `name`, built with `options` (see each factory's docstring)."""
  if name not in _FACTORIES:
    raise ValueError(f"Unknown cell {name!r}. Known cells: {', '.join(names())}. "
                     "Set config.cell to one of them, or register a new cell with "
                     "@rnn_jax.cells.register.")
  factory = _FACTORIES[name]
  accepted = inspect.signature(factory).parameters
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"Cell {name!r} has no option(s) {unknown}. Its options are: "
                     f"{', '.join(accepted) or 'none'}.")
  errors = option_type_errors(name, options)
  if errors:
    raise ValueError(" ".join(errors))
  return factory(**options)


def option_type_errors(name: str, options: dict[str, Any]) -> list[str]:
  """Each option must have the type of its default (a float option also takes an int)."""
  errors = []
  defaults = {k: p.default for k, p in inspect.signature(_FACTORIES[name]).parameters.items()}
  for option, value in sorted(options.items()):
    default = defaults.get(option, inspect.Parameter.empty)
    if isinstance(default, bool):
      ok, kind = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
      ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and float(value).is_integer())
      kind = "an integer"
    elif isinstance(default, float):
      ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
      kind = "a finite number"
    elif isinstance(default, str):
      ok, kind = isinstance(value, str), "a string"
    else:
      continue  # No default to compare with: the cell checks it.
    if not ok:
      errors.append(f"cell_options.{option} of cell {name!r} must be {kind} (default "
                    f"{default!r}), got {value!r}.")
  return errors


def options_of(cell_name: str) -> dict[str, Any]:
  """The options of a registered cell and their defaults."""
  get(cell_name)  # Raises the helpful error for unknown names.
  sig = inspect.signature(_FACTORIES[cell_name])
  return {k: p.default for k, p in sig.parameters.items()}


# ----------------------------------------------------------------------------- initialisers

def _recurrent_weights(key, hidden: int, num_gates: int, kind: str, scale: float) -> jax.Array:
  """w_h [hidden, G*hidden], one [hidden, hidden] block per gate."""
  keys = jax.random.split(key, num_gates)
  if kind == "orthogonal":
    blocks = [jax.nn.initializers.orthogonal(scale)(k, (hidden, hidden)) for k in keys]
  elif kind == "identity":
    blocks = [scale * jnp.eye(hidden) for _ in keys]
  elif kind == "uniform":  # PyTorch's default: U(-1/sqrt(hidden), 1/sqrt(hidden)).
    bound = scale / hidden ** 0.5
    blocks = [jax.random.uniform(k, (hidden, hidden), minval=-bound, maxval=bound) for k in keys]
  else:
    raise ValueError(f"Unknown recurrent_init {kind!r}; use 'orthogonal', 'identity', "
                     "'uniform' or 'joint_glorot'.")
  return jnp.concatenate(blocks, axis=1)


def _input_weights(key, input_size: int, width: int, kind: str = "glorot") -> jax.Array:
  """w_x [input, width]; Glorot-uniform over the fused matrix, as Keras does."""
  if kind == "glorot":
    return jax.nn.initializers.glorot_uniform()(key, (input_size, width))
  if kind == "small_normal":  # Le et al. 2015 (IRNN): N(0, 0.001^2).
    return 0.001 * jax.random.normal(key, (input_size, width))
  raise ValueError(f"Unknown input_init {kind!r}; use 'glorot' or 'small_normal'.")


def _dense_params(key, input_size, hidden, num_gates, recurrent_init="orthogonal",
                  recurrent_scale=1.0, input_init="glorot") -> Params:
  for name, value in (("input_size", input_size), ("hidden_size", hidden)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
  kx, kh = jax.random.split(key)
  if recurrent_init == "joint_glorot":
    # TF1's BasicRNNCell / LSTMCell default: one Glorot-uniform kernel over the concatenated
    # [x, h], of which w_x and w_h are the row blocks. For reproducing TF1 notebooks.
    kernel = jax.nn.initializers.glorot_uniform()(kh, (input_size + hidden, num_gates * hidden))
    return {"w_x": kernel[:input_size], "w_h": recurrent_scale * kernel[input_size:],
            "b": jnp.zeros((num_gates * hidden,))}
  return {
      "w_x": _input_weights(kx, input_size, num_gates * hidden, input_init),
      "w_h": _recurrent_weights(kh, hidden, num_gates, recurrent_init, recurrent_scale),
      "b": jnp.zeros((num_gates * hidden,)),
  }


def _check_chrono(max_horizon: int) -> None:
  if (isinstance(max_horizon, bool) or not isinstance(max_horizon, (int, float))
      or not float(max_horizon).is_integer() or max_horizon < 2):
    raise ValueError(f"chrono_init={max_horizon!r}: it is the longest dependency (in steps) "
                     "the gates should start able to hold; use an integer >= 2, or 0 for off.")


def chrono_bias(key: jax.Array, hidden_size: int, max_horizon: int) -> jax.Array:
  """Chrono initialisation (Tallec and Ollivier 2018): b ~ log(U(1, max_horizon - 1)) [hidden].

  A gate sigmoid(b) that keeps the state (LSTM forget gate, GRU update gate) then lets unit j
  remember for about 1 / (1 - sigmoid(b_j)) = exp(b_j) + 1 steps at the start of training: the
  time scales are uniform over [2, max_horizon], so most units start with long memories,
  instead of all being a few steps (~3.7 for the LSTM's forget_bias 1, 2 for a zero bias),
  and from the first update the gradient reaches dependencies up to ~max_horizon steps back.
  """
  _check_chrono(max_horizon)
  return jnp.log(jax.random.uniform(key, (hidden_size,), minval=1.0,
                                    maxval=float(max_horizon - 1)))


# ----------------------------------------------------------------------------- cells

# ----------------------------------------------------------------------------- precision

LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def matmul(a: jax.Array, w: jax.Array) -> jax.Array:
  """`a @ w` for every matmul of a cell: in the weights' dtype, accumulated and returned in
  float32 when the weights are low-precision (bfloat16 or float16).

  Mixed precision is just that: `recurrent.scan(..., compute_dtype=jnp.bfloat16)` casts the
  weight matrices (`cast_weights`), and each matmul then runs on the fast low-precision
  units with a float32 result, while biases, gates, the carry and every
  elementwise state update stay float32. Float32 (or float64) weights give exactly `a @ w`.
  """
  if w.dtype not in LOW_PRECISION:
    return a @ w
  return jnp.matmul(a.astype(w.dtype), w, preferred_element_type=jnp.float32)


def cast_weights(params: Params, dtype: Any) -> Params:
  """`params` with every weight matrix (a 2-D leaf whose name starts with "w_", also inside
  the per-gate tuples of `split_gates`) cast to `dtype`; biases and peepholes unchanged.
  None: `params` as they are."""
  if dtype is None:
    return params
  def cast(path, leaf):
    name = next((getattr(k, "key", None) for k in path if isinstance(getattr(k, "key", None),
                                                                     str)), "")
    return leaf.astype(dtype) if name.startswith("w_") and jnp.ndim(leaf) == 2 else leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def split_gates(params: Params, num_gates: int) -> Params:
  """`params` with `w_x`, `w_h` and `b` as tuples of their G per-gate column blocks."""
  if isinstance(params["w_x"], tuple):  # Already split.
    return params
  return {**params, **{name: tuple(jnp.split(params[name], num_gates, axis=-1))
                       for name in ("w_x", "w_h", "b")}}


def gate_projections(x: jax.Array, h: jax.Array, params: Params,
                     num_gates: int) -> list[jax.Array]:
  """The G gate blocks of x @ w_x + h @ w_h + b, each [batch, hidden], one gate at a time.

  The same function (up to float rounding) as splitting the fused product, computed as two
  matmuls per gate on column blocks of the fused weights: why, because on CPU the small
  independent per-gate products run concurrently and beat one fused product at hidden 128
  (docs/performance.md has the measurements; `python -m benchmarks.speed` repeats them).

  `params` raw or already through `split_gates`. Split inside the scan's loop, the backward
  pass would join the per-gate weight gradients at every step; `recurrent.scan` therefore
  splits once per sequence (`Cell.prepare`).
  """
  params = split_gates(params, num_gates)
  return [matmul(x, w_x) + matmul(h, w_h) + b
          for w_x, w_h, b in zip(params["w_x"], params["w_h"], params["b"])]


_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@register("rnn")
def rnn(activation: str = "tanh", recurrent_init: str = "orthogonal",
        recurrent_scale: float = 1.0, input_init: str = "glorot") -> Cell:
  """Vanilla (Elman) RNN, TF's `BasicRNNCell`, PyTorch's `nn.RNN`.

      h' = act(x W_x + h W_h + b)         act = tanh (default) or relu

  Options: `activation`; `recurrent_init` "orthogonal" (default), "identity" (IRNN),
  "uniform" (PyTorch's default) or "joint_glorot" (TF1's default: one Glorot-uniform kernel
  over [x, h]); `recurrent_scale` multiplies it; `input_init`.
  """
  if activation not in _ACTIVATIONS:
    raise ValueError(f"Unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)}.")
  act = _ACTIVATIONS[activation]

  def init(key, input_size, hidden_size):
    return _dense_params(key, input_size, hidden_size, 1, recurrent_init, recurrent_scale,
                         input_init)

  def step(params, h, x, h_mask=None):
    h_in = h if h_mask is None else h * h_mask
    h = act(matmul(x, params["w_x"]) + matmul(h_in, params["w_h"]) + params["b"])
    return h, h

  return Cell("rnn", 1, 1, init, step,
              (("activation", activation), ("recurrent_init", recurrent_init),
               ("recurrent_scale", recurrent_scale), ("input_init", input_init)))


@register("irnn")
def irnn(recurrent_scale: float = 1.0) -> Cell:
  """IRNN (Le, Jaitly and Hinton 2015): a ReLU RNN started at the identity.

      h' = relu(x W_x + h W_h + b),   W_h = recurrent_scale * I,  W_x ~ N(0, 0.001^2),  b = 0
  """
  cell = rnn(activation="relu", recurrent_init="identity", recurrent_scale=recurrent_scale,
             input_init="small_normal")
  return dataclasses.replace(cell, name="irnn", options=(("recurrent_scale", recurrent_scale),))


@jax.custom_jvp
def lstm_pointwise(z_i: jax.Array, z_f: jax.Array, z_g: jax.Array, z_o: jax.Array,
                   c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The LSTM's elementwise part, (h', c'), all [batch, hidden]:

      c' = sigmoid(z_f) * c + sigmoid(z_i) * tanh(z_g)        h' = sigmoid(z_o) * tanh(c')

  Its derivative is written out (`_lstm_pointwise_jvp`) as six coefficients, which are all
  that reverse mode keeps from this part for the backward pass: the compiled LSTM training
  step stores 7 [batch, hidden] arrays per time step (those six and h for the weight
  gradient) where autodiff of the expression stored 12 (five of them twice), which makes the
  step faster (docs/performance.md). A custom JVP rather than a custom VJP, so forward mode
  and higher derivatives still work.
  """
  c = jax.nn.sigmoid(z_f) * c + jax.nn.sigmoid(z_i) * jnp.tanh(z_g)
  return jax.nn.sigmoid(z_o) * jnp.tanh(c), c


@lstm_pointwise.defjvp
def _lstm_pointwise_jvp(primals, tangents):
  z_i, z_f, z_g, z_o, c = primals
  dz_i, dz_f, dz_g, dz_o, dc = tangents
  i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
  new_c = f * c + i * g
  tanh_c = jnp.tanh(new_c)
  d_new_c = (f * dc + (c * f * (1 - f)) * dz_f + (g * i * (1 - i)) * dz_i
             + (i * (1 - g * g)) * dz_g)
  d_h = (o * (1 - tanh_c * tanh_c)) * d_new_c + (tanh_c * o * (1 - o)) * dz_o
  return (o * tanh_c, new_c), (d_h, d_new_c)


@register("lstm")
def lstm(forget_bias: float = 1.0, peephole: bool = False, cifg: bool = False,
         recurrent_init: str = "orthogonal", chrono_init: int = 0) -> Cell:
  """LSTM (Hochreiter and Schmidhuber 1997; Gers et al. 2000), PyTorch's gate order i, f, g, o.

      i, f, g, o = split(x W_x + h W_h + b)
      i = sigmoid(i + w_ci * c)        f = sigmoid(f + w_cf * c)        g = tanh(g)
      c' = f * c + i * g
      o = sigmoid(o + w_co * c')       h' = o * tanh(c')

  Carry (h, c). Options, after Greff et al. 2017 ("LSTM: A Search Space Odyssey"):
  - `forget_bias`: initial value of the forget-gate bias (1.0, Jozefowicz et al. 2015);
  - `peephole`: the `w_c*` terms above, extra params `w_ci`, `w_cf`, `w_co` [hidden]
    (without it they are absent, as in PyTorch);
  - `cifg`: coupled input and forget gate, i = 1 - f. The input gate then has no weights:
    the fused matrices hold G=3 blocks in the order f, g, o;
  - `chrono_init`: T_max >= 2 starts b_f ~ log(U(1, T_max - 1)) and b_i = -b_f instead of
    `forget_bias` (Tallec and Ollivier 2018; see `chrono_bias`), for dependencies ~T_max
    steps long.
  """
  if chrono_init:
    _check_chrono(chrono_init)  # Reject a bad T_max when the config is read, not at init.
  gates = ("f", "g", "o") if cifg else ("i", "f", "g", "o")
  num_gates = len(gates)
  f_index = gates.index("f")

  def init(key, input_size, hidden_size):
    kd, kp = jax.random.split(key)
    params = _dense_params(kd, input_size, hidden_size, num_gates, recurrent_init)
    b_f = (chrono_bias(jax.random.fold_in(key, 1), hidden_size, chrono_init) if chrono_init
           else forget_bias)
    params["b"] = params["b"].at[f_index * hidden_size:(f_index + 1) * hidden_size].set(b_f)
    if chrono_init and not cifg:  # b_i = -b_f: the input gate starts as shut as f is open.
      params["b"] = params["b"].at[:hidden_size].set(-b_f)
    if peephole:
      peeps = ("w_cf", "w_co") if cifg else ("w_ci", "w_cf", "w_co")
      for name, k in zip(peeps, jax.random.split(kp, len(peeps))):
        # Small uniform start, as in Gers et al.; zero would also train.
        params[name] = jax.random.uniform(k, (hidden_size,), minval=-0.1, maxval=0.1)
    return params

  def step(params, carry, x, h_mask=None):
    h, c = carry
    h_in = h if h_mask is None else h * h_mask
    z = dict(zip(gates, gate_projections(x, h_in, params, num_gates)))
    if not (peephole or cifg):  # The common LSTM, with its derivative written out.
      h, c = lstm_pointwise(z["i"], z["f"], z["g"], z["o"], c)
      return (h, c), h
    f_pre = z["f"] + params["w_cf"] * c if peephole else z["f"]
    f = jax.nn.sigmoid(f_pre)
    if cifg:
      i = 1.0 - f
    else:
      i = jax.nn.sigmoid(z["i"] + params["w_ci"] * c if peephole else z["i"])
    c = f * c + i * jnp.tanh(z["g"])
    o = jax.nn.sigmoid(z["o"] + params["w_co"] * c if peephole else z["o"])
    h = o * jnp.tanh(c)
    return (h, c), h

  return Cell("lstm", num_gates, 2, init, step,
              (("forget_bias", forget_bias), ("peephole", peephole), ("cifg", cifg),
               ("recurrent_init", recurrent_init), ("chrono_init", chrono_init)),
              prepare=functools.partial(split_gates, num_gates=num_gates))


@register("gru")
def gru(reset_after: bool = True, recurrent_init: str = "orthogonal",
        chrono_init: int = 0) -> Cell:
  """GRU (Cho et al. 2014), PyTorch's gate order r, z, n.

  Default, "reset after" (PyTorch, cuDNN, Keras `reset_after=True`); extra param b_hn [hidden]:

      r = sigmoid(x W_xr + h W_hr + b_r)
      z = sigmoid(x W_xz + h W_hz + b_z)
      n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))
      h' = (1 - z) * n + z * h

  `reset_after=False` gives Chung et al. 2014's "reset before" form (no b_hn):

      n = tanh(x W_xn + (r * h) W_hn + b_n)

  `chrono_init`: T_max >= 2 starts the update-gate bias b_z ~ log(U(1, T_max - 1)) (z keeps h,
  as the LSTM's f keeps c; Tallec and Ollivier 2018, see `chrono_bias`); 0 = zero biases.
  """
  if chrono_init:
    _check_chrono(chrono_init)  # Reject a bad T_max when the config is read, not at init.

  def init(key, input_size, hidden_size):
    params = _dense_params(key, input_size, hidden_size, 3, recurrent_init)
    if chrono_init:
      params["b"] = params["b"].at[hidden_size:2 * hidden_size].set(
          chrono_bias(jax.random.fold_in(key, 1), hidden_size, chrono_init))
    if reset_after:
      params["b_hn"] = jnp.zeros((hidden_size,))
    return params

  def step(params, h, x, h_mask=None):
    hidden = h.shape[-1]
    h_in = h if h_mask is None else h * h_mask  # Matmul inputs only; z * h keeps h itself.
    xr, xz, xn = jnp.split(matmul(x, params["w_x"]) + params["b"], 3, axis=-1)
    if reset_after:
      hr, hz, hn = jnp.split(matmul(h_in, params["w_h"]), 3, axis=-1)
      r = jax.nn.sigmoid(xr + hr)
      z = jax.nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + r * (hn + params["b_hn"]))
    else:
      hr, hz = jnp.split(matmul(h_in, params["w_h"][:, :2 * hidden]), 2, axis=-1)
      r = jax.nn.sigmoid(xr + hr)
      z = jax.nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + matmul(r * h_in, params["w_h"][:, 2 * hidden:]))
    h = (1.0 - z) * n + z * h
    return h, h

  return Cell("gru", 3, 1, init, step,
              (("reset_after", reset_after), ("recurrent_init", recurrent_init),
               ("chrono_init", chrono_init)))


@register("mgu")
def mgu(recurrent_init: str = "orthogonal") -> Cell:
  """Minimal gated unit (Zhou et al. 2016): one forget gate, gates f, n.

      f = sigmoid(x W_xf + h W_hf + b_f)
      n = tanh(x W_xn + (f * h) W_hn + b_n)
      h' = (1 - f) * h + f * n
  """
  def init(key, input_size, hidden_size):
    return _dense_params(key, input_size, hidden_size, 2, recurrent_init)

  def step(params, h, x, h_mask=None):
    hidden = h.shape[-1]
    h_in = h if h_mask is None else h * h_mask  # Matmul inputs only; (1 - f) * h keeps h.
    xf, xn = jnp.split(matmul(x, params["w_x"]) + params["b"], 2, axis=-1)
    f = jax.nn.sigmoid(xf + matmul(h_in, params["w_h"][:, :hidden]))
    n = jnp.tanh(xn + matmul(f * h_in, params["w_h"][:, hidden:]))
    h = (1.0 - f) * h + f * n
    return h, h

  return Cell("mgu", 2, 1, init, step, (("recurrent_init", recurrent_init),))


@register("rnn_miswired_pair")
def rnn_miswired_pair() -> Cell:
  """Two tanh cells wired as a well-known IMDB notebook wires them (not a stack).

  The notebook's loop calls its second cell as `cell1(word, state0)`: it reads the word
  embedding (not the first cell's output) and the first cell's NEW state as its state, and
  its own state is never fed back. So, per step:

      s' = tanh(x W_0 + s U_0 + b_0)           (the first cell: a plain tanh RNN)
      y' = tanh(x W_1 + s' U_1 + b_1)          (the second cell: no recurrence of its own)

  and the classifier reads the last y. Carry (y, s), y first so that it is the output that
  `hidden_of` and the read-out see; the previous y is never read. Params fused as the other
  cells': w_x = [W_0 | W_1], w_h = [U_0 | U_1], b = [b_0 | b_1]; initialised like two Keras
  `SimpleRNNCell`s (Glorot-uniform W per cell, orthogonal U, zero b). A proper 2-layer stack
  is `cell='rnn', num_layers=2` (configs/imdb_stacked_rnn_seed.py); this one exists to
  reproduce what the notebook computed (configs/imdb_notebook_rnn_seed.py).
  """
  def init(key, input_size, hidden_size):
    params = _dense_params(key, input_size, hidden_size, 2)
    k0, k1 = jax.random.split(jax.random.fold_in(key, 1))
    params["w_x"] = jnp.concatenate([_input_weights(k, input_size, hidden_size)
                                     for k in (k0, k1)], axis=1)  # Glorot per cell.
    return params

  def step(params, carry, x, h_mask=None):
    _, s = carry
    hidden = s.shape[-1]
    w_x0, w_x1 = params["w_x"][:, :hidden], params["w_x"][:, hidden:]
    w_h0, w_h1 = params["w_h"][:, :hidden], params["w_h"][:, hidden:]
    b0, b1 = params["b"][:hidden], params["b"][hidden:]
    s_in = s if h_mask is None else s * h_mask
    s = jnp.tanh(matmul(x, w_x0) + matmul(s_in, w_h0) + b0)
    y = jnp.tanh(matmul(x, w_x1) + matmul(s if h_mask is None else s * h_mask, w_h1) + b1)
    return (y, s), y

  return Cell("rnn_miswired_pair", 2, 2, init, step)
