"""Diagnostics of what a recurrent model remembers: gradient norm through time, gate
statistics, memory horizon. Pure functions of (model, params, batch), jittable, used by the
trainer (config.diagnostics_every_steps) and by ablations.

Gradient through time: `recurrent.scan(probes=...)` adds a zero probe to the carry after every
step, so d loss / d probe_t = d loss / d carry_t, the gradient reaching the state at step t,
for every t from ONE backward pass. It is the gradient that training actually uses: with
truncated BPTT (model.truncation) the cut paths carry nothing.

Norm convention: for each step t, the L2 norm over the hidden units of each example's
dL/dh_t, averaged over the examples of the batch (padding rows, mask 0, excluded). Right-padded
sequences are aligned by their own last real step, and padded steps are never counted. The loss is
the batch MEAN loss, as in training, so the values scale like 1 / batch size. With
state="carry" the norm is over the whole carry: for the LSTM both h_t and c_t. That is the one
to compare cells by: an LSTM keeps its memory in c, and with a shut input gate (chrono init)
almost nothing flows back through h while dL/dc_t stays large. `make_diagnostics` (the
trainer's and the ablations' record) uses the carry.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rnn_jax import cells, models, recurrent

Batch = dict[str, Any]
LossFn = Callable[[jax.Array, Batch], jax.Array]  # (logits, batch) -> scalar loss


def default_loss(model: models.SequenceModel) -> LossFn:
  """The training loss, `models.batch_loss` (so a diagnostic differentiates what was trained)."""
  return lambda logits, batch: models.batch_loss(model, logits, batch)[0]


def zero_probes(model: models.SequenceModel, params: dict[str, Any], batch_size: int,
                time: int, dtype=jnp.float32) -> list[Any]:
  """Per layer, a zero carry [time, batch, hidden] (or {"fwd", "bwd"} of them)."""
  cell = model.recurrent_cell
  probes = []
  for layer in params["rnn"]:
    per_dir = {d: jax.tree.map(lambda c: jnp.zeros((time,) + c.shape, dtype),
                               cell.zero_carry(batch_size, cell.hidden_size(p), dtype))
               for d, p in layer.items() if d in ("fwd", "bwd")}  # Not a residual "block".
    probes.append(per_dir["fwd"] if len(per_dir) == 1 else per_dir)
  return probes


def carry_gradients(model: models.SequenceModel, params: dict[str, Any], batch: Batch, *,
                    loss_fn: LossFn | None = None) -> list[Any]:
  """dL/dcarry_t for every layer and step, from one backward pass.

  Returns per layer a carry-shaped pytree of [time, batch, hidden] arrays (or {"fwd", "bwd"}
  of them), time in each direction's processing order (the backward direction's index 0 is
  its first processed step, the last real element).
  """
  loss_fn = loss_fn or default_loss(model)
  inputs = jnp.asarray(batch["inputs"])
  batch_size, time = inputs.shape[:2]
  dtype = jax.tree.leaves(params["rnn"])[0].dtype
  probes = zero_probes(model, params, batch_size, time, dtype)

  def loss_of_probes(probes):
    logits = model.apply(params, inputs, batch.get("lengths"), probes=probes)
    return loss_fn(logits, batch)

  return jax.grad(loss_of_probes)(probes)


def gradient_norm_through_time(model: models.SequenceModel, params: dict[str, Any],
                               batch: Batch, *, per_layer: bool = False,
                               direction: str = "fwd", state: str = "h",
                               loss_fn: LossFn | None = None) -> jax.Array:
  """||dL/dh_t|| for every step t: [time] for the top layer, or [layers, time] with per_layer.

  The norm is taken over the hidden units of each example and averaged over the batch (mask
  respected); see the module docstring. With `lengths` in the batch each sequence is aligned
  to its own end before averaging: entry T-1-j holds the gradient j steps before each
  sequence's last real step, over the sequences that long (0 where none is), so a padded
  batch gives what its sequences give unpadded. `direction` "bwd" reads a bidirectional model's
  backward direction (in its processing order). `state` "h" (h is carry[0] for the LSTM) or
  "carry": ||dL/dcarry_t|| over every part of the carry (h and c for the LSTM).
  """
  if state not in ("h", "carry"):
    raise ValueError(f"state={state!r}: use 'h' (dL/dh_t) or 'carry' (h and, for the LSTM, c).")
  grads = carry_gradients(model, params, batch, loss_fn=loss_fn)
  weights = models.example_weights(batch)
  lengths = batch.get("lengths")
  norms = []
  for layer in grads:
    if isinstance(layer, dict):
      if direction not in layer:
        raise ValueError(f"direction={direction!r} is not one of {sorted(layer)}.")
      layer = layer[direction]
    elif direction != "fwd":
      raise ValueError(f"direction={direction!r} needs a bidirectional model; use 'fwd'.")
    parts = [cells.hidden_of(layer)] if state == "h" else jax.tree.leaves(layer)
    squares = sum(jnp.sum(jnp.square(d), axis=-1) for d in parts)  # d: [time, batch, hidden]
    per_example = jnp.sqrt(squares)  # [time, batch], in processing order
    norms.append(_mean_aligned_to_end(per_example, weights, lengths))
  norms = jnp.stack(norms)
  return norms if per_layer else norms[-1]


def _mean_aligned_to_end(per_example: jax.Array, weights: jax.Array,
                         lengths: jax.Array | None) -> jax.Array:
  """[time, batch] per-example norms -> [time], each sequence aligned to its own end.

  Entry T-1-j is the weighted mean over the sequences with a real step j steps before their
  last one (padding is never counted); an entry no sequence reaches is 0. Without lengths
  every sequence ends at T-1 and this is the plain weighted mean.
  """
  time = per_example.shape[0]
  if lengths is None:
    return per_example @ weights / jnp.maximum(jnp.sum(weights), 1.0)
  lengths = jnp.asarray(lengths, jnp.int32)
  source = lengths[None, :] - time + jnp.arange(time)[:, None]  # [time, batch]
  present = (source >= 0).astype(per_example.dtype) * weights[None, :]
  aligned = jnp.take_along_axis(per_example, jnp.maximum(source, 0), axis=0)
  return jnp.sum(aligned * present, axis=1) / jnp.maximum(jnp.sum(present, axis=1), 1.0)


def memory_horizon(grad_norms, fraction: float = 0.01) -> int:
  """How many steps back from the last step the gradient norm stays above
  `fraction` x its value at the last step.

  grad_norms: [time]. Returns s in [0, time - 1]: norms[T-1-j] > fraction * norms[T-1] for
  every j <= s, and s = 0 when the very next step back already falls below (or the last norm
  is 0). s = time - 1 means the gradient never fell that far within the sequence.
  """
  import numpy as np  # Host-side: the horizon is an integer for logs and tables.
  norms = np.asarray(grad_norms, np.float64)
  if norms.ndim != 1 or len(norms) == 0:
    raise ValueError(f"grad_norms must be a non-empty [time] array, got shape {norms.shape}.")
  threshold = fraction * norms[-1]
  if not norms[-1] > 0:
    return 0
  below = np.nonzero(norms[::-1] <= threshold)[0]
  return int(below[0] - 1) if len(below) else len(norms) - 1


# ----------------------------------------------------------------------------- gates

def _lstm_gates(options: dict[str, Any]):
  cifg, peephole = options.get("cifg", False), options.get("peephole", False)
  names = ("f", "g", "o") if cifg else ("i", "f", "g", "o")

  def gates(params, carry, x):
    h, c = carry
    z = dict(zip(names, jnp.split(x @ params["w_x"] + h @ params["w_h"] + params["b"],
                                  len(names), axis=-1)))
    f = jax.nn.sigmoid(z["f"] + params["w_cf"] * c if peephole else z["f"])
    i = 1.0 - f if cifg else jax.nn.sigmoid(z["i"] + params["w_ci"] * c if peephole
                                            else z["i"])
    g = jnp.tanh(z["g"])
    c_new = f * c + i * g
    o = jax.nn.sigmoid(z["o"] + params["w_co"] * c_new if peephole else z["o"])
    return {"input": i, "forget": f, "output": o, "candidate": g}
  return gates


def _gru_gates(options: dict[str, Any]):
  reset_after = options.get("reset_after", True)

  def gates(params, h, x):
    hidden = h.shape[-1]
    xr, xz, xn = jnp.split(x @ params["w_x"] + params["b"], 3, axis=-1)
    if reset_after:
      hr, hz, hn = jnp.split(h @ params["w_h"], 3, axis=-1)
      r = jax.nn.sigmoid(xr + hr)
      n = jnp.tanh(xn + r * (hn + params["b_hn"]))
    else:
      hr, hz = jnp.split(h @ params["w_h"][:, :2 * hidden], 2, axis=-1)
      r = jax.nn.sigmoid(xr + hr)
      n = jnp.tanh(xn + (r * h) @ params["w_h"][:, 2 * hidden:])
    z = jax.nn.sigmoid(xz + hz)
    return {"reset": r, "update": z, "candidate": n}
  return gates


# Gate equations re-stated from cells.py, per cell name: (options) -> gates(params, carry, x)
# -> {gate name: [batch, hidden]}. Tests check them against each cell's step.
GATE_FUNCTIONS = {"lstm": _lstm_gates, "gru": _gru_gates}
# The gates summarised (candidates are activations, not gates). For the GRU, h' = (1-z) n + z h:
# z is the fraction of the old state kept, the GRU's analogue of the LSTM forget gate.
_SUMMARISED = {"lstm": ("forget", "input", "output"), "gru": ("update", "reset")}


def gate_function(model: models.SequenceModel):
  """gates(params, carry, x) for the model's cell, or None for cells without gates.

  A linear recurrence h' = a h + b gets {"retain": |a|}, the fraction of the state kept per
  step (1 - z for minGRU, the normalised f' for minLSTM, a_t for RG-LRU, |lambda| for the
  LRU): straight from the cell's own coefficients, since they are the whole story of its
  memory."""
  linear = model.recurrent_cell.linear
  if linear is not None:
    def retain(params, carry, x):
      a, b = linear.coefficients(params, x[..., None, :])
      return {"retain": jnp.abs(jnp.broadcast_to(a, b.shape)[..., 0, :])}
    return retain
  make = GATE_FUNCTIONS.get(model.cell)
  return None if make is None else make(dict(model.cell_options))


def gate_statistics(model: models.SequenceModel, params: dict[str, Any], batch: Batch,
                    *, low: float = 0.1, high: float = 0.9) -> dict[str, jax.Array]:
  """Mean and saturated fraction (< low or > high) of each gate, per layer (forward direction).

  Re-runs the forward pass, evaluating the gate equations at every step on the carry the
  cell actually had. Averages over batch, hidden units and valid steps (steps past a sequence's
  length and rows with mask 0 excluded). Keys "layer{l}/{gate}_mean" and
  "layer{l}/{gate}_saturated". Returns {} for cells without gates (rnn, irnn) and for
  residual stacks (their layers read normalised inputs, which this does not recompute).
  """
  gates_fn = gate_function(model)
  if gates_fn is None or model.block != "plain":  # Residual blocks: inputs are normalised.
    return {}
  cell = model.recurrent_cell
  inputs = jnp.asarray(batch["inputs"])
  lengths = batch.get("lengths")
  xs = jnp.take(params["embed"], inputs, axis=0) if model.input_kind == "tokens" else inputs
  batch_size, time = xs.shape[:2]
  valid = jnp.ones((time, batch_size), xs.dtype)
  if lengths is not None:
    valid = (jnp.arange(time)[:, None] < jnp.asarray(lengths)[None, :]).astype(xs.dtype)
  valid = valid * models.example_weights(batch).astype(xs.dtype)[None, :]
  count = jnp.maximum(jnp.sum(valid), 1.0)
  stats = {}
  for index, layer in enumerate(params["rnn"]):
    p = layer["fwd"]
    carry0 = cell.zero_carry(batch_size, cell.hidden_size(p), xs.dtype)

    def body(carry, x_t, p=p):
      g = gates_fn(p, carry, x_t)
      new_carry, _ = cell.step(p, carry, x_t)
      return new_carry, g

    # Past a sequence's length the carry differs from recurrent.scan's frozen one, but those
    # steps are masked out of the statistics below.
    _, gate_seq = jax.lax.scan(body, carry0, jnp.swapaxes(xs, 0, 1))  # [time, batch, hidden]
    for name in _SUMMARISED.get(model.cell, ("retain",)):
      g = gate_seq[name]
      stats[f"layer{index}/{name}_mean"] = jnp.sum(g.mean(-1) * valid) / count
      saturated = ((g < low) | (g > high)).astype(g.dtype).mean(-1)
      stats[f"layer{index}/{name}_saturated"] = jnp.sum(saturated * valid) / count
    if index + 1 < len(params["rnn"]):  # Next layer's inputs: this layer's outputs.
      _, xs = recurrent.run_layers(cell, [layer], xs, lengths=lengths)
  return stats


# ----------------------------------------------------------------------------- for training

def make_diagnostics(model: models.SequenceModel, batch: Batch, *,
                     loss_fn: LossFn | None = None, fraction: float = 0.01
                     ) -> Callable[[Any], dict[str, Any]]:
  """A function params -> JSON-able diagnostics on the fixed `batch` (compiled once).

  The record: "grad_norm_through_time" (list, top layer, [time], of the whole carry: h and,
  for the LSTM, c), "memory_horizon" (int, at `fraction`), "grad_norm_first" /
  "grad_norm_last" (norms at the first and last step), "state": "carry", and the gate
  statistics of gated cells.
  """
  batch = {k: jnp.asarray(v) for k, v in batch.items()}

  @jax.jit
  def compute(params):
    norms = gradient_norm_through_time(model, params, batch, state="carry", loss_fn=loss_fn)
    return norms, gate_statistics(model, params, batch)

  def diagnostics(params):
    norms, gates = jax.device_get(compute(params))
    record = {"grad_norm_through_time": [float(v) for v in norms],
              "memory_horizon": memory_horizon(norms, fraction),
              "grad_norm_first": float(norms[0]), "grad_norm_last": float(norms[-1]),
              "state": "carry"}
    record.update({k: float(v) for k, v in gates.items()})
    return record

  return diagnostics
