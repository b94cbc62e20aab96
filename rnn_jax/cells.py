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


NO_RECURRENT_MATMUL = ("This cell's gates read the input only: h enters no matmul, so there is "
                       "nothing for recurrent dropout to mask. Set recurrent_dropout_rate to 0 "
                       "(dropout_rate still applies to inputs and outputs).")


def _state_is_carry(carry):
  return carry


def _output_is_state(params, h, x):
  return h, h


@dataclasses.dataclass(frozen=True)
class LinearRecurrence:
  """A recurrence linear in its state, with coefficients that read the input only:

      h_t = a_t * h_{t-1} + b_t        (elementwise; a_t, b_t functions of x_t alone)

  so a whole sequence is one batched input projection and then a scan of products and sums,
  which `recurrent.scan` evaluates sequentially, in chunks or with `lax.associative_scan`
  (O(log T) depth) instead of running `step` T times.

  Attributes:
    coefficients: (params, xs [..., time, input]) -> (a, b), each [..., time, state]; real,
      or complex (the LRU). An a that is the same at every step and in every sequence may
      come as [1, ..., 1, state] (the LRU's lambda), which the scan reads as a constant.
    state: carry -> h [..., state], the state inside a carry; linear in the carry. Default:
      the carry is the state.
    emit: (params, h [..., state], x [..., input]) -> (carry, y): the carry and the output
      once the state is h; elementwise over the leading axes (so it also takes a time axis).
      Default: both are h.
    log_coefficients: for cells whose a_t, b_t are positive for every input, (params, xs) ->
      (log a, log b), computed without taking the log of a rounded product (scan_mode "log",
      the log-space form of Feng et al. 2024); None otherwise.
  """
  coefficients: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]]
  state: Callable[[Any], jax.Array] = _state_is_carry
  emit: Callable[[Params, jax.Array, jax.Array], tuple[Any, jax.Array]] = _output_is_state
  log_coefficients: Callable[[Params, jax.Array], tuple[jax.Array, jax.Array]] | None = None

  def step(self, params: Params, carry: Any, x: jax.Array,
           h_mask: jax.Array | None = None) -> tuple[Any, jax.Array]:
    """One step, `Cell.step`'s contract: the same coefficients for a one-step sequence."""
    if h_mask is not None:
      raise ValueError(NO_RECURRENT_MATMUL)
    a, b = self.coefficients(params, x[..., None, :])
    return self.emit(params, a[..., 0, :] * self.state(carry) + b[..., 0, :], x)


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
    linear: for cells whose recurrence is linear in the state with coefficients from the
      input only (h_t = a_t * h_{t-1} + b_t), the whole-sequence form that `recurrent.scan`
      evaluates without running `step` in a loop (see `LinearRecurrence`); None otherwise.
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
  linear: LinearRecurrence | None = None

  def hidden_size(self, params: Params) -> int:
    """The width of h (and of every carry part), read off `params`."""
    if "w_h" in params:
      return hidden_size_of(params)
    w_x = params["w_x"]
    return sum(w.shape[-1] for w in w_x) if isinstance(w_x, tuple) else (
        w_x.shape[-1] // self.num_gates)

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


def _check_sizes(input_size, hidden_size) -> None:
  for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _dense_params(key, input_size, hidden, num_gates, recurrent_init="orthogonal",
                  recurrent_scale=1.0, input_init="glorot") -> Params:
  _check_sizes(input_size, hidden)
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

  `a` may have any number of leading axes ([time, batch, in] for a whole sequence's
  projection); against a weight matrix they are flattened into one first, because XLA:CPU
  runs the weight gradient of a dot that contracts two axes (time and batch) several times
  slower than the same product on the flattened matrix (docs/performance.md).
  """
  if a.ndim > 2 and w.ndim == 2:
    return matmul(a.reshape(-1, a.shape[-1]), w).reshape(a.shape[:-1] + w.shape[1:])
  if w.dtype not in LOW_PRECISION:
    return a @ w
  return _low_precision_matmul(a, w)


@jax.custom_jvp
def affine(a: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """`matmul(a, w) + b`: a whole sequence's input projection, a [time, batch, in] @ w [in, out]
  + b [out] -> [time, batch, out], with the bias's gradient computed as a matrix product.

  The bias's gradient sums the output's cotangent over every leading axis. XLA:CPU runs that
  sum over a whole sequence ([T*B, out]) as a tree of windowed reductions, several times
  slower than the same sums taken as ones[1, T*B] @ cotangent (docs/performance.md), so the
  JVP writes the bias's tangent as ones[T*B, 1] @ db[1, out], which reverse mode transposes
  into that product (at full float32 precision on every backend). Values are those of
  `matmul(a, w) + b`; a bias of any other shape is broadcast as `+` would.
  """
  return matmul(a, w) + b


@functools.partial(affine.defjvp, symbolic_zeros=True)
def _affine_jvp(primals, tangents):
  a, w, b = primals
  da, dw, db = tangents
  out = affine(a, w, b)
  terms = []  # Only the perturbed ones: no product with a zero tangent (the data's, usually).
  if not isinstance(da, jax.custom_derivatives.SymbolicZero):
    terms.append(matmul(da, w))
  if not isinstance(dw, jax.custom_derivatives.SymbolicZero):
    terms.append(matmul(a, dw))
  if not isinstance(db, jax.custom_derivatives.SymbolicZero):
    db = db.astype(out.dtype)
    if db.shape == out.shape[-1:] and out.ndim > 1:
      ones = jnp.ones((math.prod(out.shape[:-1]), 1), out.dtype)
      terms.append(jnp.matmul(ones, db.reshape(1, -1), precision=jax.lax.Precision.HIGHEST
                              ).reshape(out.shape))
    else:
      terms.append(jnp.broadcast_to(db, out.shape))
  tangent = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)
  return out, tangent.astype(out.dtype)


@jax.checkpoint
def _low_precision_matmul(a: jax.Array, w: jax.Array) -> jax.Array:
  # Rematerialised so that the backward pass keeps `a` as it came (float32) and casts it
  # again, instead of keeping its low-precision copy. Inside a scan those kept values are
  # stacked over time with a dynamic-update-slice at every step, and XLA:CPU has no native
  # bfloat16 one: it converts the whole [T, ...] stack to float32 and back at each step,
  # O(T^2) work that made bfloat16 steps several times slower than float32 on CPU
  # (docs/performance.md; `python -m benchmarks.lstm_profile --compute-dtype bfloat16` shows
  # it). The cast is all that is recomputed; the matmul's result is not needed by its own
  # gradient.
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



# ----------------------------------------------------------------------------- linear recurrences
#
# Cells whose gates read only the input, so the recurrence is linear in the state and a whole
# sequence is evaluated at once (`Cell.linear`; `recurrent.scan`'s scan_mode). Each is one
# `coefficients` function (a_t, b_t from the inputs) and an `emit` (carry and output from h).


def positive_candidate(v: jax.Array) -> jax.Array:
  """g(v) = v + 0.5 for v >= 0, sigmoid(v) below (Feng et al. 2024): continuous, positive,
  so minGRU/minLSTM states started at h_0 >= 0 stay positive (their log-space form needs it)."""
  return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_positive_candidate(v: jax.Array) -> jax.Array:
  """log g(v), as log(v + 0.5) and log sigmoid(v) = -softplus(-v): no log of an underflow."""
  return jnp.where(v >= 0, jnp.log(jnp.maximum(v, 0.0) + 0.5), -jax.nn.softplus(-v))


def _candidate_and_slope(v: jax.Array, positive: bool) -> tuple[jax.Array, jax.Array]:
  """g(v) and g'(v): `positive_candidate` and its slope (1 from 0 up, sigmoid' below), or the
  identity and 1."""
  if not positive:
    return v, jnp.ones_like(v)
  s = jax.nn.sigmoid(v)  # The same sigmoid as positive_candidate's: XLA computes it once.
  return positive_candidate(v), jnp.where(v >= 0, 1.0, s * (1.0 - s))


def _minlstm_gates(k_f: jax.Array, k_i: jax.Array, normalize: bool) -> tuple[jax.Array, ...]:
  """(f', i', 1 - f, 1 - i): minLSTM's gates from their pre-activations, normalised
  (f' = f / (f + i), i' = i / (f + i)) or not, and the complements of f and i.

  Below -40 a sigmoid is exp(k) to the last bit of float64 (the next term is exp(2 k)), so
  where both pre-activations are below it, both are shifted up by the same amount first: the
  ratio is unchanged, and no longer 0 / 0 where f and i would underflow to 0.
  """
  if normalize:
    top = jnp.maximum(k_f, k_i)
    shift = jnp.where(top < -40.0, -40.0 - top, 0.0)
    k_f, k_i = k_f + shift, k_i + shift
  f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
  not_f, not_i = jax.nn.sigmoid(-k_f), jax.nn.sigmoid(-k_i)  # Exact where f, i round to 1.
  if not normalize:
    return f, i, not_f, not_i
  total = 1.0 / (f + i)
  return f * total, i * total, not_f, not_i


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def minlstm_pointwise(k_f: jax.Array, k_i: jax.Array, k_h: jax.Array, positive: bool,
                      normalize: bool) -> tuple[jax.Array, jax.Array]:
  """minLSTM's coefficients a = f', b = i' * g(k_h) from its projections [..., hidden]
  (`minlstm`'s equations; `_minlstm_gates`).

  Its derivative is written out (`_minlstm_pointwise_jvp`), as `lstm_pointwise`'s: the
  normalised gates' is f' i' ((1 - f) dk_f - (1 - i) dk_i), so reverse mode keeps a few
  coefficients instead of every intermediate of the expression, and computing the gates as
  sigmoids and one division, not from their logs, makes the training step faster
  (docs/performance.md). A custom JVP, so forward mode and higher derivatives still work.
  """
  f, i, _, _ = _minlstm_gates(k_f, k_i, normalize)
  return f, i * _candidate_and_slope(k_h, positive)[0]


@minlstm_pointwise.defjvp
def _minlstm_pointwise_jvp(positive, normalize, primals, tangents):
  (k_f, k_i, k_h), (dk_f, dk_i, dk_h) = primals, tangents
  f, i, not_f, not_i = _minlstm_gates(k_f, k_i, normalize)
  g, slope = _candidate_and_slope(k_h, positive)
  if normalize:  # i' = 1 - f'.
    df = (f * i) * (not_f * dk_f - not_i * dk_i)
    di = -df
  else:
    df, di = (f * not_f) * dk_f, (i * not_i) * dk_i
  return (f, i * g), (df, g * di + (i * slope) * dk_h)


def _input_gate_params(key, input_size: int, hidden_size: int, num_gates: int) -> Params:
  """w_x [input, G*hidden] (Glorot), b [G*hidden] zeros: every gate from x alone."""
  _check_sizes(input_size, hidden_size)
  return {"w_x": _input_weights(key, input_size, num_gates * hidden_size),
          "b": jnp.zeros((num_gates * hidden_size,))}


def _linear_cell(name: str, num_gates: int, carry_size: int, init, linear: LinearRecurrence,
                 options: tuple[tuple[str, Any], ...]) -> Cell:
  return Cell(name, num_gates, carry_size, init, linear.step, options, linear=linear)


@register("mingru")
def mingru(positive: bool = True, chrono_init: int = 0) -> Cell:
  """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"), gates z, h~ from x only:

      z = sigmoid(x W_xz + b_z)        h~ = g(x W_xh + b_h)
      h' = (1 - z) * h + z * h~        i.e. a_t = 1 - z_t, b_t = z_t * h~_t

  `positive`: g = `positive_candidate` (the paper's form for its log-space scan, scan_mode
  "log"; h stays > 0); False: g = identity (the plain form). `chrono_init`: T_max >= 2 starts
  b_z = -log(U(1, T_max - 1)), so unit j keeps its state for ~exp(-b_z) + 1 steps
  (Tallec and Ollivier 2018); 0 = zero biases.
  """
  if chrono_init:
    _check_chrono(chrono_init)
  candidate = positive_candidate if positive else (lambda v: v)

  def init(key, input_size, hidden_size):
    params = _input_gate_params(key, input_size, hidden_size, 2)
    if chrono_init:
      params["b"] = params["b"].at[:hidden_size].set(
          -chrono_bias(jax.random.fold_in(key, 1), hidden_size, chrono_init))
    return params

  def coefficients(params, xs):
    k_z, k_h = jnp.split(affine(xs, params["w_x"], params["b"]), 2, axis=-1)
    z = jax.nn.sigmoid(k_z)
    return 1.0 - z, z * candidate(k_h)

  def log_coefficients(params, xs):  # log(1 - z) = -softplus(k_z), log z = -softplus(-k_z).
    k_z, k_h = jnp.split(affine(xs, params["w_x"], params["b"]), 2, axis=-1)
    return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_positive_candidate(k_h)

  linear = LinearRecurrence(coefficients,
                            log_coefficients=log_coefficients if positive else None)
  return _linear_cell("mingru", 2, 1, init, linear,
                      (("positive", positive), ("chrono_init", chrono_init)))


@register("minlstm")
def minlstm(positive: bool = True, normalize: bool = True, chrono_init: int = 0) -> Cell:
  """minLSTM (Feng et al. 2024), gates f, i, h~ from x only:

      f = sigmoid(x W_xf + b_f)     i = sigmoid(x W_xi + b_i)     h~ = g(x W_xh + b_h)
      f', i' = f / (f + i), i / (f + i)          (`normalize`; else f' = f, i' = i)
      h' = f' * h + i' * h~

  The normalisation makes the state's scale independent of time (the paper's choice).
  `positive`: g as in `mingru`. `chrono_init`: T_max >= 2 starts b_f ~ log(U(1, T_max - 1))
  and b_i = -b_f (as the LSTM's chrono init); 0 = zero biases.
  """
  if chrono_init:
    _check_chrono(chrono_init)

  def init(key, input_size, hidden_size):
    params = _input_gate_params(key, input_size, hidden_size, 3)
    if chrono_init:
      b_f = chrono_bias(jax.random.fold_in(key, 1), hidden_size, chrono_init)
      params["b"] = params["b"].at[:2 * hidden_size].set(jnp.concatenate([b_f, -b_f]))
    return params

  def coefficients(params, xs):
    k_f, k_i, k_h = jnp.split(affine(xs, params["w_x"], params["b"]), 3, axis=-1)
    return minlstm_pointwise(k_f, k_i, k_h, positive, normalize)

  def log_coefficients(params, xs):
    k_f, k_i, k_h = jnp.split(affine(xs, params["w_x"], params["b"]), 3, axis=-1)
    log_f, log_i = -jax.nn.softplus(-k_f), -jax.nn.softplus(-k_i)
    if normalize:  # log f' = log f - log(f + i), log i' alike.
      log_sum = jnp.logaddexp(log_f, log_i)
      log_f, log_i = log_f - log_sum, log_i - log_sum
    return log_f, log_i + log_positive_candidate(k_h)

  linear = LinearRecurrence(coefficients,
                            log_coefficients=log_coefficients if positive else None)
  return _linear_cell("minlstm", 3, 1, init, linear,
                      (("positive", positive), ("normalize", normalize),
                       ("chrono_init", chrono_init)))


def _check_radii(r_min: float, r_max: float) -> None:
  if not 0.0 <= r_min < r_max < 1.0:
    raise ValueError(f"r_min={r_min}, r_max={r_max}: the eigenvalues' moduli are drawn from "
                     "the ring r_min <= |lambda| <= r_max; use 0 <= r_min < r_max < 1 "
                     "(e.g. 0.9 and 0.999 for long memories).")


@jax.custom_jvp
def sqrt_bounded_derivative(v: jax.Array) -> jax.Array:
  """sqrt(v), whose derivative is capped at 1000 (as in RecurrentGemma): at v -> 0, i.e.
  a_t -> 1, the exact 1 / (2 sqrt(v)) would blow up the RG-LRU's gradient."""
  return jnp.sqrt(v)


@sqrt_bounded_derivative.defjvp
def _sqrt_bounded_derivative_jvp(primals, tangents):
  (v,), (dv,) = primals, tangents
  return jnp.sqrt(v), dv / (2.0 * jnp.sqrt(jnp.maximum(v, 2.5e-7)))  # <= 1000 dv.


@register("rglru")
def rglru(c: float = 8.0, r_min: float = 0.9, r_max: float = 0.999) -> Cell:
  """RG-LRU (De et al. 2024, "Griffin"; RecurrentGemma), gates r, i and input u from x only:

      r = sigmoid(x W_xr + b_r)      i = sigmoid(x W_xi + b_i)      u = x W_xu + b_u
      a_t = sigmoid(Lambda)^(c r)    (log a_t = -c r softplus(-Lambda), computed so)
      h' = a_t * h + sqrt(1 - a_t^2) * (i * u)

  The paper feeds the block's input x itself where u stands; projecting it here lets the cell
  take any input width (a residual block of width = hidden can learn W_xu ~ I). `Lambda`
  [hidden] starts with sigmoid(Lambda)^2 ~ U(r_min^2, r_max^2) (RecurrentGemma's ring
  initialisation); `c` = 8 as in the paper. sqrt's derivative is capped
  (`sqrt_bounded_derivative`). With W_xu = I and b_u = 0 this is RecurrentGemma's one-head
  RG-LRU layer, except that RecurrentGemma feeds a document's first token unnormalised (its
  segment_pos = 0 reset) where this cell applies the paper's equation at every step.
  """
  _check_radii(r_min, r_max)

  def init(key, input_size, hidden_size):
    kx, ka = jax.random.split(key)
    params = _input_gate_params(kx, input_size, hidden_size, 3)
    a = jnp.sqrt(jax.random.uniform(ka, (hidden_size,), minval=r_min ** 2, maxval=r_max ** 2))
    params["lambda"] = jnp.log(a) - jnp.log1p(-a)  # sigmoid^-1(a)
    return params

  def coefficients(params, xs):
    k_r, k_i, u = jnp.split(affine(xs, params["w_x"], params["b"]), 3, axis=-1)
    log_a = -c * jax.nn.sigmoid(k_r) * jax.nn.softplus(-params["lambda"])
    scale = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a))  # sqrt(1 - a^2), accurately.
    return jnp.exp(log_a), scale * jax.nn.sigmoid(k_i) * u

  return _linear_cell("rglru", 3, 1, init, LinearRecurrence(coefficients),
                      (("c", c), ("r_min", r_min), ("r_max", r_max)))


@register("lru")
def lru(r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 6.283) -> Cell:
  """LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences"):
  a complex diagonal linear recurrence and a real read-out,

      lambda = exp(-exp(nu_log) + i exp(theta_log))            [hidden], complex
      s' = lambda * s + exp(gamma_log) * (x B)                  s complex, B = B_re + i B_im
      y = Re(s C) + x D                                          C = C_re + i C_im

  `nu_log`, `theta_log` start on the ring r_min <= |lambda| <= r_max with phases in
  [0, max_phase] (the paper's initialisation); `gamma_log` = log sqrt(1 - |lambda|^2) (the
  paper's normalisation, trained). The state size is `hidden`. D is a dense [input, hidden]
  matrix (the paper's diagonal D needs input = hidden). Params: w_x = [B_re | B_im]
  [input, 2*hidden], w_c_re, w_c_im [hidden, hidden], w_d [input, hidden] and the three
  [hidden] vectors. Carry (y, Re s, Im s): y first, so `hidden_of` reads the output.
  """
  _check_radii(r_min, r_max)
  if not 0.0 < max_phase <= 2 * math.pi + 1e-3:
    raise ValueError(f"max_phase={max_phase}: the eigenvalues' phases are drawn from "
                     "[0, max_phase]; use a value in (0, 2 pi].")

  def init(key, input_size, hidden_size):
    _check_sizes(input_size, hidden_size)
    ku, kp, kb, kc, kd = jax.random.split(key, 5)
    u = jax.random.uniform(ku, (hidden_size,))
    nu_log = jnp.log(-0.5 * jnp.log(u * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = jnp.log(max_phase * jax.random.uniform(kp, (hidden_size,)))
    modulus = jnp.exp(-jnp.exp(nu_log))
    c_re, c_im = jax.random.normal(kc, (2, hidden_size, hidden_size)) / math.sqrt(hidden_size)
    return {
        "w_x": jax.random.normal(kb, (input_size, 2 * hidden_size)) / math.sqrt(2 * input_size),
        "nu_log": nu_log, "theta_log": theta_log,
        "gamma_log": jnp.log(jnp.sqrt(1.0 - modulus ** 2)),
        "w_c_re": c_re, "w_c_im": c_im,
        "w_d": jax.random.normal(kd, (input_size, hidden_size)) / math.sqrt(input_size),
    }

  def coefficients(params, xs):
    gamma = jnp.tile(jnp.exp(params["gamma_log"]), 2)
    if params["w_x"].dtype in LOW_PRECISION:  # Scale the float32 product, as every elementwise
      bx = gamma * matmul(xs, params["w_x"])  # factor in mixed precision: B is rounded as stored.
    else:  # Scale B's columns: the same numbers, and gamma's gradient sums over B's input rows,
      bx = matmul(xs, params["w_x"] * gamma)  # not over every step of every sequence.
    bx_re, bx_im = jnp.split(bx, 2, axis=-1)
    lam = jnp.exp(-jnp.exp(params["nu_log"]) + 1j * jnp.exp(params["theta_log"]))
    return lam.reshape((1,) * (xs.ndim - 1) + lam.shape), jax.lax.complex(bx_re, bx_im)

  def state(carry):
    return jax.lax.complex(carry[1], carry[2])

  def emit(params, s, x):
    y = (matmul(s.real, params["w_c_re"]) - matmul(s.imag, params["w_c_im"])
         + matmul(x, params["w_d"]))
    return (y, s.real, s.imag), y

  return _linear_cell("lru", 2, 3, init, LinearRecurrence(coefficients, state, emit),
                      (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)))
