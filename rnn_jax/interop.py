"""PyTorch `nn.RNN` / `nn.LSTM` / `nn.GRU` state dicts <-> rnn_jax stack params.

Weights trained in PyTorch can be evaluated here and the other way round, and PyTorch serves
as an independent reference for the cells. This file needs NumPy only, never torch: a state
dict is taken as a mapping of anything `np.asarray` accepts (CPU tensors included), and given
back as NumPy arrays (`torch.from_numpy` each value to load it).

The stack params are those of `rnn_jax.recurrent`: a list with one entry per layer, each
`{"fwd": cell_params}` or `{"fwd": cell_params, "bwd": cell_params}`. PyTorch's keys are
`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, with a `_reverse` suffix
for the backward direction. Both libraries use the same gate order (rnn 1 block; lstm i, f, g,
o; gru r, z, n) and feed layer k+1 the concatenation [forward, backward] of layer k's outputs.

    w_x = weight_ih.T                 w_h = weight_hh.T
    rnn, lstm:  b = bias_ih + bias_hh
    gru:        b[:2H] = bias_ih[:2H] + bias_hh[:2H],  b[2H:] = bias_ih[2H:],  b_hn = bias_hh[2H:]

PyTorch has no peephole or CIFG LSTM and only the "reset after" GRU, so those convert in
neither direction.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from rnn_jax import cells as cells_lib

# The cells PyTorch has, and how many hidden-size blocks its fused matrices hold.
_NUM_GATES = {"rnn": 1, "irnn": 1, "lstm": 4, "gru": 3}
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_DIRECTIONS = {"fwd": "", "bwd": "_reverse"}


def _check_cell(cell_name: str, cell_options: Mapping[str, Any] | None) -> int:
  """Validates the cell against what PyTorch can express; returns its number of gates."""
  if cell_name not in _NUM_GATES:
    raise ValueError(f"No PyTorch equivalent for cell {cell_name!r}. Convertible cells: "
                     f"{', '.join(_NUM_GATES)} (nn.RNN -> 'rnn' or 'irnn', nn.LSTM -> 'lstm', "
                     "nn.GRU -> 'gru').")
  options = dict(cells_lib.get(cell_name, **dict(cell_options or {})).options)
  if cell_name == "lstm" and (options["peephole"] or options["cifg"]):
    raise ValueError(f"An LSTM with peephole={options['peephole']}, cifg={options['cifg']} "
                     "has no PyTorch equivalent: nn.LSTM has neither peepholes nor a coupled "
                     "input-forget gate. Use cell_options peephole=False, cifg=False.")
  if cell_name == "gru" and not options["reset_after"]:
    raise ValueError("A GRU with reset_after=False has no PyTorch equivalent: nn.GRU applies "
                     "the reset gate after the recurrent matmul. Use reset_after=True.")
  return _NUM_GATES[cell_name]


def _parse_keys(state_dict: Mapping[str, Any]) -> dict[tuple[str, int, str], str]:
  """{(kind, layer, direction): key} for every key; raises on keys PyTorch RNNs don't have."""
  parsed = {}
  for key in state_dict:
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None:
      hint = ""
      if isinstance(key, str) and key.startswith("weight_hr"):
        hint = (" It holds an LSTM projection (nn.LSTM proj_size > 0), which rnn_jax has no "
                "equivalent of.")
      elif isinstance(key, str) and _KEY.match(key.rsplit(".", 1)[-1]):
        hint = (" It looks like a key of a parent module: pass the RNN's own state dict "
                "(module.rnn.state_dict()), or strip the prefix.")
      raise ValueError(f"Unknown key {key!r} in the state dict. Expected keys of the form "
                       "weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>, each "
                       f"optionally with the suffix _reverse.{hint}")
    kind, layer, reverse = match.groups()
    parsed[(kind, int(layer), "bwd" if reverse else "fwd")] = key
  return parsed


def _array(state_dict, key: str, expected: tuple[int, ...], what: str) -> np.ndarray:
  value = np.asarray(state_dict[key])
  if value.shape != expected:
    raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected {expected} ({what}). "
                     "Check that cell_name matches the PyTorch module (nn.RNN 'rnn', nn.LSTM "
                     "'lstm', nn.GRU 'gru') and that all layers come from one module.")
  return value


def from_torch(state_dict: Mapping[str, Any], cell_name: str, *, num_layers: int | None = None,
               bidirectional: bool | None = None,
               cell_options: Mapping[str, Any] | None = None,
               dtype: Any = jnp.float32) -> list[dict[str, dict[str, Any]]]:
  """Stack params from the state dict of a PyTorch `nn.RNN`, `nn.LSTM` or `nn.GRU`.

  Args:
    state_dict: {key: array-like}, e.g. `{k: v.numpy() for k, v in module.state_dict().items()}`
      (keys `weight_ih_l0`, ..., `_reverse` for the backward direction). With `bias=False` the
      dict has no bias keys and the biases are zero; otherwise every bias key must be present.
    cell_name: "rnn" or "irnn" for nn.RNN, "lstm" for nn.LSTM, "gru" for nn.GRU. The state dict
      does not record nn.RNN's nonlinearity: pick the cell to run the params with yourself, e.g.
      `cells.get("rnn", activation="relu")` for `nonlinearity="relu"`.
    num_layers, bidirectional: inferred from the keys when None; when given, the keys must match.
    cell_options: the options the params are meant for, checked to have a PyTorch equivalent
      (peephole / cifg LSTMs and reset_before GRUs have none and raise).
    dtype: of the returned arrays.

  Returns:
    One {"fwd": params} or {"fwd": params, "bwd": params} dict per layer, as
    `rnn_jax.recurrent.init_layers` makes: params {"w_x" [in, G*H], "w_h" [H, G*H],
    "b" [G*H]} (plus "b_hn" [H] for the gru).

  Raises:
    ValueError naming the key, for unknown or missing keys and wrong shapes.
  """
  num_gates = _check_cell(cell_name, cell_options)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"state_dict must be a mapping of key -> array, got {type(state_dict)}.")
  parsed = _parse_keys(state_dict)
  if not parsed:
    raise ValueError("The state dict is empty: expected keys weight_ih_l0, weight_hh_l0, ...")
  found_layers = 1 + max(layer for _, layer, _ in parsed)
  found_bidirectional = any(direction == "bwd" for _, _, direction in parsed)
  num_layers = found_layers if num_layers is None else num_layers
  bidirectional = found_bidirectional if bidirectional is None else bidirectional
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
  directions = ("fwd", "bwd") if bidirectional else ("fwd",)
  expected = {(kind, layer, direction)
              for kind in _KINDS for layer in range(num_layers) for direction in directions}
  has_bias = any(kind.startswith("bias") for kind, _, _ in parsed)
  if not has_bias:  # nn.RNN(bias=False): no bias keys at all.
    expected = {e for e in expected if e[0].startswith("weight")}
  unexpected = sorted(parsed[e] for e in set(parsed) - expected)
  if unexpected:
    raise ValueError(f"Unexpected key(s) {unexpected} for num_layers={num_layers}, "
                     f"bidirectional={bidirectional}. Leave num_layers and bidirectional as None "
                     "to infer them from the keys.")
  missing = sorted(_torch_key(kind, layer, direction)
                   for kind, layer, direction in expected - set(parsed))
  if missing:
    raise ValueError(f"Missing key(s) {missing} in the state dict for num_layers={num_layers}, "
                     f"bidirectional={bidirectional}. A state dict either has all bias keys "
                     "or none (bias=False).")

  first = parsed[("weight_hh", 0, "fwd")]
  hh_shape = np.shape(state_dict[first])
  if len(hh_shape) != 2 or hh_shape[0] != num_gates * hh_shape[1]:
    raise ValueError(f"{first!r} has shape {tuple(hh_shape)}, expected ({num_gates}*hidden, "
                     f"hidden) for cell {cell_name!r} ({num_gates} gate block(s)). Check that "
                     "cell_name matches the PyTorch module (nn.RNN 'rnn', nn.LSTM 'lstm', "
                     "nn.GRU 'gru').")
  hidden = hh_shape[1]
  width = num_gates * hidden
  input_size = np.shape(state_dict[parsed[("weight_ih", 0, "fwd")]])
  input_size = input_size[1] if len(input_size) == 2 else -1

  layers = []
  for layer in range(num_layers):
    size = input_size if layer == 0 else hidden * len(directions)
    entry = {}
    for direction in directions:
      key = {kind: parsed.get((kind, layer, direction)) for kind in _KINDS}
      w_ih = _array(state_dict, key["weight_ih"], (width, size),
                    "[gates*hidden, input]" if layer == 0 else
                    "[gates*hidden, hidden*directions] above the first layer")
      w_hh = _array(state_dict, key["weight_hh"], (width, hidden), "[gates*hidden, hidden]")
      if has_bias:
        b_ih = _array(state_dict, key["bias_ih"], (width,), "[gates*hidden]")
        b_hh = _array(state_dict, key["bias_hh"], (width,), "[gates*hidden]")
      else:
        b_ih = b_hh = np.zeros((width,), w_hh.dtype)
      # Summing in float64 keeps b exact when bias_hh is zero (as to_torch writes it).
      b_ih, b_hh = b_ih.astype(np.float64), b_hh.astype(np.float64)
      params = {"w_x": w_ih.T, "w_h": w_hh.T}
      if cell_name == "gru":
        params["b"] = np.concatenate([b_ih[:2 * hidden] + b_hh[:2 * hidden], b_ih[2 * hidden:]])
        params["b_hn"] = b_hh[2 * hidden:]
      else:
        params["b"] = b_ih + b_hh
      entry[direction] = {name: jnp.asarray(np.ascontiguousarray(value), dtype)
                          for name, value in params.items()}
    layers.append(entry)
  return layers


def _torch_key(kind: str, layer: int, direction: str) -> str:
  return f"{kind}_l{layer}{_DIRECTIONS[direction]}"


def to_torch(layers: Sequence[Mapping[str, Mapping[str, Any]]], cell_name: str, *,
             dtype: Any = None) -> dict[str, np.ndarray]:
  """The PyTorch state dict of stack params (inverse of `from_torch`).

  PyTorch splits each bias in two where rnn_jax has one, so this writes `bias_ih = b` and
  `bias_hh = 0` (for the gru: `bias_ih = b`, `bias_hh = [0, 0, b_hn]`). Hence
  params -> torch -> params is exact, while torch -> params -> torch preserves the function
  (the outputs) but not how the bias was split between `bias_ih` and `bias_hh`.

  Args:
    layers: one {"fwd": params} or {"fwd": params, "bwd": params} dict per layer
      (`rnn_jax.recurrent.init_layers`, or `from_torch`).
    cell_name: "rnn", "irnn", "lstm" or "gru"; peephole and CIFG LSTM params and reset_before
      GRU params (no "b_hn") have no PyTorch equivalent and raise.
    dtype: of the returned arrays; None keeps the params' dtype.

  Returns:
    {key: np.ndarray} with PyTorch's keys, in nn.RNN's order; load it with
    `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.
  """
  num_gates = _check_cell(cell_name, None)
  expected_names = {"w_x", "w_h", "b"} | ({"b_hn"} if cell_name == "gru" else set())
  layers = list(layers)
  if not layers:
    raise ValueError("layers is empty: expected one {'fwd': params[, 'bwd': params]} per layer.")
  bidirectional = "bwd" in layers[0]
  directions = ("fwd", "bwd") if bidirectional else ("fwd",)
  state_dict = {}
  for layer, entry in enumerate(layers):
    if set(entry) != set(directions):
      raise ValueError(f"Layer {layer} has directions {sorted(entry)}, expected "
                       f"{list(directions)} (as layer 0): PyTorch stacks are uniformly "
                       "bidirectional or not.")
    for direction in directions:
      params = entry[direction]
      where = f"layers[{layer}][{direction!r}]"
      names = set(params)
      if names != expected_names:
        extra = sorted(names - expected_names)
        hint = ""
        if any(n.startswith("w_c") for n in extra):
          hint = " Peephole LSTM weights have no PyTorch equivalent."
        elif cell_name == "gru" and "b_hn" not in names:
          hint = (" Without b_hn these are reset_before GRU params, which have no PyTorch "
                  "equivalent (nn.GRU resets after the recurrent matmul).")
        raise ValueError(f"{where} has params {sorted(names)}, expected "
                         f"{sorted(expected_names)} for cell {cell_name!r}.{hint}")
      w_x, w_h, b = (np.asarray(params[n]) for n in ("w_x", "w_h", "b"))
      hidden = w_h.shape[0] if w_h.ndim == 2 else -1
      width = num_gates * hidden
      if w_h.shape != (hidden, width) or w_x.ndim != 2 or w_x.shape[1] != width \
          or b.shape != (width,):
        raise ValueError(f"{where} has shapes w_x {w_x.shape}, w_h {w_h.shape}, b {b.shape}; "
                         f"expected w_x [input, {num_gates}*hidden], w_h [hidden, "
                         f"{num_gates}*hidden], b [{num_gates}*hidden] for cell {cell_name!r} "
                         "(a CIFG LSTM has 3 gate blocks and no PyTorch equivalent).")
      if cell_name == "gru":
        b_hn = np.asarray(params["b_hn"])
        if b_hn.shape != (hidden,):
          raise ValueError(f"{where}['b_hn'] has shape {b_hn.shape}, expected ({hidden},).")
        b_hh = np.concatenate([np.zeros((2 * hidden,), b.dtype), b_hn.astype(b.dtype)])
      else:
        b_hh = np.zeros_like(b)
      out_dtype = w_x.dtype if dtype is None else dtype
      values = {"weight_ih": w_x.T, "weight_hh": w_h.T, "bias_ih": b, "bias_hh": b_hh}
      for kind in _KINDS:
        # Copies: contiguous and writable, so torch.from_numpy takes them without complaint.
        state_dict[_torch_key(kind, layer, direction)] = np.array(values[kind], out_dtype,
                                                                  order="C", copy=True)
  return state_dict
