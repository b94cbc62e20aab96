"""Running cells over sequences: the scan, truncated BPTT, stacks, bidirectional layers, dropout.

Everything is batch-major at the boundary (`xs` [batch, time, features]) and time-major only
inside `jax.lax.scan`. All functions are pure, jittable, vmappable and differentiable.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import cells as cells_lib
from rnn_jax.cells import Carry, Cell, Params

LayerParams = dict[str, Params]  # {"fwd": params} or {"fwd": params, "bwd": params}


def reverse_padded(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """Reverses each sequence's valid part in time, leaving its right padding in place.

  xs [batch, time, ...], lengths [batch] or None (all full length). An involution: applying it
  twice gives `xs` back. This is how a backward layer reads a right-padded sequence from its last
  real element rather than from the padding.
  """
  if lengths is None:
    return jnp.flip(xs, axis=1)
  time = xs.shape[1]
  t = jnp.arange(time)[None, :]
  lengths = lengths[:, None]
  index = jnp.where(t < lengths, lengths - 1 - t, t)  # [batch, time]
  index = index.reshape(index.shape + (1,) * (xs.ndim - 2))
  return jnp.take_along_axis(xs, index, axis=1)


def truncation_cuts(time: int, truncation: int | None,
                    lengths: jax.Array | None = None) -> jax.Array | None:
  """Where truncated BPTT stops the gradient: bool [time] or [time, batch], or None for none.

  A cut before step t when 0 < t < length and (length - t) % k == 0: windows of k steps
  aligned to the end of each sequence, so the last step's loss reaches back exactly k steps
  and every step's loss back to the start of its window. Cuts lie only inside a sequence's
  real steps: a cut in its padding would stop the gradient of the frozen final carry.
  """
  if truncation is None or truncation >= time:
    return None
  if truncation < 1:
    raise ValueError(f"truncation must be a positive number of steps or None, got {truncation}.")
  t = jnp.arange(time)
  if lengths is None:
    return (t > 0) & ((time - t) % truncation == 0)
  t, lengths = t[:, None], lengths[None, :]
  return (t > 0) & (t < lengths) & ((lengths - t) % truncation == 0)


def scan(cell: Cell, params: Params, xs: jax.Array, carry: Carry | None = None, *,
         lengths: jax.Array | None = None, reverse: bool = False,
         truncation: int | None = None, unroll: int = 1, remat: bool = False,
         recurrent_mask: jax.Array | None = None,
         probes: Carry | None = None, compute_dtype: Any = None,
         scan_mode: str = "auto") -> tuple[Carry, jax.Array]:
  """Runs `cell` over `xs`. Returns (final_carry, ys).

  Args:
    cell, params: the cell and its params.
    xs: [batch, time, features] inputs.
    carry: initial carry (zeros when None).
    lengths: [batch] int, for right-padded sequences: past its length a sequence's carry is
      frozen (the final carry is the one after its last real step) and its outputs are zero, so
      nothing depends on the padding.
    reverse: run from the last real element of each sequence to the first; `ys` stay aligned with
      `xs` (ys[:, t] is the output for input t).
    truncation: k for truncated BPTT: the gradient through the carry is cut so that each step's
      loss reaches back to the start of its k-step window, windows aligned to the end of the
      sequence (the last step's loss reaches back exactly k steps). The forward pass is
      unchanged. None or k >= time: full BPTT, bit for bit.
    unroll: `lax.scan`'s unroll factor (of the loop over `cell.step`).
    remat: rematerialise each step in the backward pass (`jax.checkpoint`): only the carries are
      stored, so activation memory per step drops to the carry's size, at some extra compute.
    recurrent_mask: [batch, hidden] multiplier for h where it enters the recurrent matmuls
      (variational recurrent dropout, Gal and Ghahramani 2016, as Keras applies it): passed to
      `cell.step(..., h_mask=...)`; the carried state (GRU's z * h, the LSTM cell) is unmasked.
    probes: a carry-shaped pytree of [time, batch, hidden] arrays added to the carry after each
      step (its h part also to the step's output, which is h). Pass zeros and differentiate
      with respect to them to get dL/d carry_t for every t in one backward pass (see
      `rnn_jax.diagnostics`). Time-major, in processing order. Only a sequence's real steps
      are probed: past its length a probe is ignored (its gradient is 0).
    compute_dtype: None or float32 (everything float32), or bfloat16 / float16: mixed
      precision. The weight matrices are cast to it and every matmul runs in it with float32
      accumulation and result (`cells.matmul`); biases, gates, the carry and every elementwise
      update stay float32, so the state does not drift; the gradient reaches the float32
      params and is summed over time steps in float32.
    scan_mode: how a cell with a linear recurrence (`cell.linear`: minGRU, minLSTM, LRU,
      RG-LRU) is evaluated; every mode computes the same function (to float rounding) and
      supports every option above. "sequential": a `lax.scan` over the precomputed
      coefficients, "chunked": exact two-level scan (within chunks of ~sqrt(T) steps, then
      across them: ~2 sqrt(T) loop iterations), "parallel": `lax.associative_scan`, depth
      O(log T), "log": the log-space form of Feng et al. 2024 (`log_linear_scan`; minGRU
      and minLSTM with positive coefficients; its float32 error grows with the summed log
      decay), "step": `cell.step` in the loop like every other cell. "auto": "parallel" on
      GPU and TPU, "sequential" on CPU (the fastest there, see docs/performance.md). Cells
      without `linear` always run "step" ("auto" or "step").

  Returns:
    final_carry, and ys [batch, time, hidden].
  """
  _check_scan_arguments(xs, lengths, truncation, unroll)
  compute_dtype = check_compute_dtype(compute_dtype)
  scan_mode = resolve_scan_mode(cell, scan_mode)
  batch, time = xs.shape[:2]
  if lengths is not None:
    lengths = jnp.asarray(lengths, jnp.int32)
  hidden = cell.hidden_size(params)
  if carry is None:
    carry = cell.zero_carry(batch, hidden, xs.dtype)
  for name, value in (("carry", carry), ("recurrent_mask", recurrent_mask)):
    shapes = [tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(value)]
    if any(shape != (batch, hidden) for shape in shapes):
      raise ValueError(f"{name} must hold [batch, hidden] = [{batch}, {hidden}] arrays, got "
                       f"shapes {shapes}.")
  if reverse:
    xs = reverse_padded(xs, lengths)
  cuts = truncation_cuts(time, truncation, lengths)
  if cell.prepare is not None:  # Once per sequence, not once per step inside the loop.
    params = cell.prepare(params)
  if scan_mode != "step":
    if recurrent_mask is not None:
      raise ValueError(cells_lib.NO_RECURRENT_MATMUL)
    run = functools.partial(_scan_linear, cell.linear, scan_mode=scan_mode,
                            compute_dtype=compute_dtype)
    if remat:  # Keep only the inputs; recompute coefficients, states and outputs backwards.
      run = jax.checkpoint(run)
    carry, ys = run(params, xs, carry, lengths, cuts, probes)
    return carry, (reverse_padded(ys, lengths) if reverse else ys)

  def body(carry, inputs):
    x_t, t, cut_t, probe_t = inputs
    # Inside the step, not once before the loop: the weights enter the loop as float32, so the
    # gradient summed over time steps accumulates in float32 (a bfloat16 loop invariant would
    # accumulate it in bfloat16). XLA hoists the forward cast out of the loop.
    step_params = cells_lib.cast_weights(params, compute_dtype)
    if cut_t is not None:
      cut = cut_t if cut_t.ndim == 0 else cut_t[:, None]
      carry = jax.tree.map(lambda c: jnp.where(cut, jax.lax.stop_gradient(c), c), carry)
    if recurrent_mask is None:
      new_carry, y = cell.step(step_params, carry, x_t)
    else:  # The cell masks h where it enters its matmuls, not the carried state.
      new_carry, y = cell.step(step_params, carry, x_t, h_mask=recurrent_mask)
    if probe_t is not None:  # Before the padding mask: a padded step's probe has no effect.
      new_carry = jax.tree.map(jnp.add, new_carry, probe_t)
      # The step's output is h as well: perturb it alike, so the probe's gradient also holds
      # the paths through the output (next layer, per-step readouts), i.e. all of dL/dh_t.
      y = y + cells_lib.hidden_of(probe_t)
    if lengths is not None:
      valid = (t < lengths)[:, None]
      new_carry = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new_carry, carry)
      y = jnp.where(valid, y, jnp.zeros_like(y))
    return new_carry, y

  if remat:
    body = jax.checkpoint(body)
  inputs = (jnp.swapaxes(xs, 0, 1), jnp.arange(time), cuts, probes)
  carry, ys = jax.lax.scan(body, carry, inputs, unroll=unroll)
  ys = jnp.swapaxes(ys, 0, 1)
  if reverse:
    ys = reverse_padded(ys, lengths)
  return carry, ys


SCAN_MODES = ("auto", "step", "sequential", "chunked", "parallel", "log")


def check_scan_mode(cell: Cell, scan_mode: str) -> None:
  """ValueError for an unknown mode, or a linear-recurrence mode with a classic cell. Starts
  no JAX backend (configs are checked before `jax.distributed.initialize`)."""
  if scan_mode not in SCAN_MODES:
    raise ValueError(f"scan_mode must be one of {', '.join(SCAN_MODES)}, got {scan_mode!r}.")
  if cell.linear is None:
    if scan_mode not in ("auto", "step"):
      raise ValueError(f"scan_mode={scan_mode!r} needs a cell whose recurrence is linear in "
                       f"its state (mingru, minlstm, lru, rglru); cell {cell.name!r} runs its "
                       "step in a loop: use scan_mode 'auto' or 'step'.")
  elif scan_mode == "log" and cell.linear.log_coefficients is None:
    raise ValueError(f"scan_mode='log' evaluates log h_t from log a_t and log b_t, so it needs "
                     f"a_t, b_t > 0: minGRU and minLSTM with positive=True (their default); "
                     f"cell {cell.name!r} with options {dict(cell.options)} can be negative or "
                     "complex. Use 'sequential', 'chunked' or 'parallel'.")


def resolve_scan_mode(cell: Cell, scan_mode: str) -> str:
  """The evaluation `scan` uses for `cell`: "step" for cells without a linear recurrence;
  for those with one, `scan_mode`, where "auto" is "parallel" on accelerators and
  "sequential" on CPU (where it measured fastest: docs/performance.md)."""
  check_scan_mode(cell, scan_mode)
  if cell.linear is None:
    return "step"
  if scan_mode == "auto":
    return "sequential" if jax.default_backend() == "cpu" else "parallel"
  return scan_mode


def linear_scan(a: jax.Array, b: jax.Array, h0: jax.Array, mode: str = "parallel"
                ) -> jax.Array:
  """h_t = a_t * h_{t-1} + b_t for t = 0..T-1 from h_{-1} = h0: [time, ...] -> [time, ...].

  a, b [time, batch, state] (time-major), h0 [batch, state]; real or complex; a may also be
  [1, 1, state], the same at every step and in every sequence (read as a constant, never
  materialised per step in "sequential" mode). "sequential":
  one `lax.scan` step per t. "parallel": `lax.associative_scan` on the pairs (a, b), whose
  composition (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2). "chunked": chunks of k ~ sqrt(T)
  steps scanned side by side (k iterations), then one scan across the chunks' ends (T/k
  iterations), then h = local + (product of a within the chunk) * (the chunk's start): no
  division, so it is exact where a_t underflows to 0.

  Derivatives follow the recurrence itself (`_linear_scan_jvp`): the same scan, in the same
  mode, on the tangents.
  """
  return _linear_scan(a, b, h0, mode)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _linear_scan(a, b, h0, mode):
  return _evaluate_linear_scan(a, b, h0, mode)


@_linear_scan.defjvp
def _linear_scan_jvp(mode, primals, tangents):
  """dh_t = a_t dh_{t-1} + (da_t h_{t-1} + db_t): the same linear scan on tangents, which
  reverse mode transposes (in "sequential" mode: one reverse `lax.scan` of the cotangents,
  with da and db formed outside the loop). Autodiff of the scan body instead stacks h_{t-1}
  inside the forward loop and emits da_t and db_t from inside the backward loop, more memory
  traffic per step for the same numbers. The tangent scan is `_linear_scan` again, so
  higher derivatives follow the same rule."""
  a, b, h0 = primals
  da, db, dh0 = tangents
  hs = _evaluate_linear_scan(a, b, h0, mode)
  return hs, _linear_scan(a, da * _states_before(hs, h0) + db, dh0, mode)


def _states_before(hs: jax.Array, h0: jax.Array) -> jax.Array:
  """The state each step reads, h_{t-1} for t = 0..T-1: [h0, h_0, ..., h_{T-2}], from the
  states hs [time, batch, state] and h0 [batch, state] (or any shape that broadcasts to it)."""
  return jnp.concatenate([jnp.broadcast_to(h0, hs.shape[1:])[None], hs[:-1]])


def _evaluate_linear_scan(a, b, h0, mode):
  """`linear_scan`'s values in `mode` (checked here), differentiated by `_linear_scan_jvp`."""
  if mode == "sequential":
    if _time_invariant(a, b):
      def body(h, b_t):
        h = a[0] * h + b_t
        return h, h
      return jax.lax.scan(body, h0, b)[1]
    def body(h, ab):
      h = ab[0] * h + ab[1]
      return h, h
    return jax.lax.scan(body, h0, (a, b))[1]
  a = jnp.broadcast_to(a, b.shape)
  b = b.at[0].add(a[0] * h0)
  if mode == "parallel":
    def compose(left, right):
      return left[0] * right[0], right[0] * left[1] + right[1]
    return jax.lax.associative_scan(compose, (a, b), axis=0)[1]
  if mode != "chunked":
    raise ValueError(f"Unknown linear scan mode {mode!r}; use 'sequential', 'chunked' or "
                     "'parallel'.")
  time = a.shape[0]
  k = max(1, int(round(math.sqrt(time))))
  chunks = -(-time // k)
  pad = [(0, chunks * k - time)] + [(0, 0)] * (a.ndim - 1)
  a = jnp.pad(a, pad, constant_values=1).reshape((chunks, k) + a.shape[1:])
  b = jnp.pad(b, pad).reshape((chunks, k) + b.shape[1:])

  def within(carry, ab):  # All chunks at once, one step of each.
    prod, h = carry
    prod, h = ab[0] * prod, ab[0] * h + ab[1]
    return (prod, h), (prod, h)
  start = (jnp.ones_like(a[:, 0]), jnp.zeros_like(b[:, 0]))
  _, (prods, local) = jax.lax.scan(within, start, (jnp.swapaxes(a, 0, 1),
                                                   jnp.swapaxes(b, 0, 1)))  # [k, chunks, ...]

  def across(h, ends):  # h: the state before the chunk (0 before the first: h0 is in b).
    return ends[0] * h + ends[1], h
  _, starts = jax.lax.scan(across, jnp.zeros_like(b[0, 0]), (prods[-1], local[-1]))
  hs = local + prods * starts[None]
  return jnp.swapaxes(hs, 0, 1).reshape((chunks * k,) + hs.shape[2:])[:time]


def _time_invariant(a: jax.Array, b: jax.Array) -> bool:
  """Whether a [1, ...] is the same at every step of b [time, ...] (the LRU's lambda): the
  scan then reads it as a constant instead of a [time, batch, state] array."""
  return a.shape[0] == 1 and b.shape[0] > 1


LOG_ZERO = -1e30  # log 0 in log_linear_scan: exp(LOG_ZERO + x) is exactly 0 for any real x.


def _segmented_cumulative(op, values: jax.Array, starts: jax.Array) -> jax.Array:
  """Inclusive cumulative `op` along axis 0 that restarts wherever `starts` [time, ...] is
  True: out_t = values_s op ... op values_t, s the last start <= t. `lax.associative_scan`
  (depth O(log T)) of the pairs (value, start), a segmented scan (Blelloch 1990)."""
  starts = jnp.broadcast_to(starts, values.shape)

  def combine(left, right):
    return jnp.where(right[1], right[0], op(left[0], right[0])), left[1] | right[1]
  return jax.lax.associative_scan(combine, (values, starts), axis=0)[0]


def log_linear_scan(log_a: jax.Array, log_b: jax.Array, h0: jax.Array,
                    restarts: jax.Array | None = None,
                    restart_states: jax.Array | None = None) -> jax.Array:
  """h_t = a_t * h_{t-1} + b_t from log a_t and log b_t (a_t, b_t > 0), in the log-space
  parallel form of Feng et al. 2024 (after Heinsen 2023): [time, ...] -> [time, ...],

      a*_t = sum_{k<=t} log a_k
      h_t = exp(a*_t) h0 + exp(a*_t + logcumsumexp_{k<=t}(log b_k - a*_k))

  two cumulative reductions of depth O(log T); no product of many a_k is formed in linear
  space, so none underflows before the end. h0 enters in linear space (any sign, or 0). Its
  precision falls with |a*|: exp(a*_t - a*_k) comes from two large sums, so the relative
  error is a few ulp per unit of |a*_t| (docs/cells.md). Derivatives do not go through that
  form (whose autodiff cancels terms and loses far more): they follow the recurrence itself,
  dh_t = a_t dh_{t-1} + a_t h_{t-1} dlog a_t + b_t dlog b_t, a `linear_scan` (parallel).

  `restarts` [time, ...] bool: where True, step t reads `restart_states[t]` instead of h_{t-1}
  (h_t = a_t r_t + b_t); both sums restart there. Truncated BPTT passes the gradient-free
  previous states, so the same window semantics hold as in `linear_scan`.
  b_t = 0 (padding) is log b_t = `LOG_ZERO`: finite, since the gradient of
  logaddexp(-inf, -inf) is NaN.
  """
  if restarts is None:
    return _log_scan(log_a, log_b, h0)
  return _log_scan_restarting(log_a, log_b, h0, restarts, restart_states)


@jax.custom_jvp
def _log_scan(log_a, log_b, h0):
  # Not lax.cumlogsumexp: far slower on XLA:CPU than an associative scan of logaddexp
  # (docs/performance.md).
  a_star = jax.lax.associative_scan(jnp.add, log_a, axis=0)
  log_sums = jax.lax.associative_scan(jnp.logaddexp, log_b - a_star, axis=0)
  return jnp.exp(a_star) * h0 + jnp.exp(a_star + log_sums)


@jax.custom_jvp
def _log_scan_restarting(log_a, log_b, h0, restarts, restart_states):
  starts = restarts | (jnp.arange(log_a.shape[0]) == 0).reshape(
      (-1,) + (1,) * (log_a.ndim - 1))
  states = jnp.where(restarts, restart_states, h0)  # The state each segment starts from ...
  first = lambda left, right: left
  states = _segmented_cumulative(first, states, starts)  # ... at each of its steps.
  a_star = _segmented_cumulative(jnp.add, log_a, starts)
  log_sums = _segmented_cumulative(jnp.logaddexp, log_b - a_star, starts)
  return jnp.exp(a_star) * states + jnp.exp(a_star + log_sums)


def _log_scan_tangent(hs, log_a, log_b, h0, restarts, restart_states, d_log_a, d_log_b, d_h0,
                      d_restart_states):
  """The tangent of h along the recurrence: dh_t = a'_t dh_{t-1} + x_t with a'_t = 0 at a
  restart, x_t = a_t p_t dlog a_t + b_t dlog b_t (+ a_t dr_t at a restart), p_t the state
  step t reads. Linear in the tangents, so reverse mode transposes it: the gradient is as
  accurate as `linear_scan`'s."""
  a = jnp.exp(log_a)
  prev = _states_before(hs, h0)
  if restarts is not None:
    prev = jnp.where(restarts, restart_states, prev)
  x = a * prev * d_log_a + jnp.exp(log_b) * d_log_b
  if restarts is not None:
    x = x + jnp.where(restarts, a * d_restart_states, jnp.zeros_like(x))
    a = jnp.where(restarts, jnp.zeros_like(a), a)
  return linear_scan(a, x, d_h0, "parallel")


@_log_scan.defjvp
def _log_scan_jvp(primals, tangents):
  hs = _log_scan(*primals)
  return hs, _log_scan_tangent(hs, *primals, None, None, *tangents, None)


@_log_scan_restarting.defjvp
def _log_scan_restarting_jvp(primals, tangents):
  hs = _log_scan_restarting(*primals)
  d_log_a, d_log_b, d_h0, _, d_restart_states = tangents
  return hs, _log_scan_tangent(hs, *primals, d_log_a, d_log_b, d_h0, d_restart_states)


def _scan_linear(linear: cells_lib.LinearRecurrence, params: Params, xs: jax.Array,
                 carry: Carry, lengths: jax.Array | None, cuts: jax.Array | None,
                 probes: Carry | None, *, scan_mode: str, compute_dtype: Any
                 ) -> tuple[Carry, jax.Array]:
  """`scan` for a linear recurrence, the whole sequence at once: xs [batch, time, input] in
  processing order (already reversed) -> (final carry, ys [batch, time, hidden]).

  Every option of `scan` becomes a change of the coefficients, so the same evaluation serves
  them all: past a sequence's length a_t = 1, b_t = 0 (the state freezes); a probe on the
  state adds to b_t; a truncation cut before step t (h_t = a_t sg(h_{t-1}) + b_t) becomes
  a_t = 0, b_t = a_t h_{t-1} + b_t with h_{t-1} from a first, gradient-free pass. Scan mode
  "log" makes the same changes in log space (`_log_states`).
  """
  batch, time = xs.shape[:2]
  weights = cells_lib.cast_weights(params, compute_dtype)  # Once: one matmul for all steps.
  xs = jnp.swapaxes(xs, 0, 1)  # Time-major before the projection: xs is the narrowest array.
  h0 = linear.state(carry)
  valid = cut = None
  if lengths is not None:
    valid = (jnp.arange(time)[:, None] < lengths[None, :])[..., None]  # [time, batch, 1]
  if cuts is not None:
    cut = (cuts[:, None] if cuts.ndim == 1 else cuts)[..., None]  # [time, batch or 1, 1]
  if scan_mode == "log":
    hs = _log_states(linear, weights, xs, h0, valid, cut, probes)
  else:
    a, b = linear.coefficients(weights, xs)                # [time, batch, state]
    if probes is not None:
      b = b + linear.state(probes)
    if valid is not None:
      a, b = jnp.where(valid, a, jnp.ones_like(a)), jnp.where(valid, b, jnp.zeros_like(b))
    if cut is not None:
      h_prev = jax.lax.stop_gradient(_states_before(linear_scan(a, b, h0, scan_mode), h0))
      a, b = jnp.where(cut, jnp.zeros_like(a), a), jnp.where(cut, a * h_prev + b, b)
    hs = linear_scan(a, b, h0, scan_mode)                  # [time, batch, state]
  if probes is not None:  # A step's output sees its state before the step's probe.
    hs = hs - linear.state(probes)
  carries, ys = linear.emit(weights, hs, xs)
  if probes is not None:
    carries = jax.tree.map(jnp.add, carries, probes)
    ys = ys + cells_lib.hidden_of(probes)
  if lengths is None:
    final = jax.tree.map(lambda c: c[-1], carries)
  else:
    last = jnp.clip(lengths - 1, 0, time - 1)
    final = jax.tree.map(
        lambda c, c0: jnp.where((lengths > 0)[:, None], c[last, jnp.arange(batch)], c0),
        carries, carry)
    ys = jnp.where(valid, ys, jnp.zeros_like(ys))
  return final, jnp.swapaxes(ys, 0, 1)


def _log_states(linear: cells_lib.LinearRecurrence, weights: Params, xs: jax.Array,
                h0: jax.Array, valid: jax.Array | None, cut: jax.Array | None,
                probes: Carry | None) -> jax.Array:
  """The states [time, batch, state] of `_scan_linear` in scan_mode "log": the same changes of
  the coefficients, in log space (past a length log a = 0 and log b = `LOG_ZERO`; a cut
  restarts both sums from the gradient-free previous state). A probe may be negative, so its
  part of the state goes through `linear_scan`, and by linearity adds to the rest."""
  log_a, log_b = linear.log_coefficients(weights, xs)    # [time, batch, state]
  if valid is not None:
    log_a = jnp.where(valid, log_a, jnp.zeros_like(log_a))
    log_b = jnp.where(valid, log_b, jnp.full_like(log_b, LOG_ZERO))

  def states(restarts, restart_states):
    hs = log_linear_scan(log_a, log_b, h0, restarts, restart_states)
    if probes is None:
      return hs
    # Past a length a = 1: a padded step's probe reaches only states that are never read.
    a, p = jnp.exp(log_a), linear.state(probes)
    if restarts is not None:  # The probes' part before a cut is in restart_states.
      a = jnp.where(restarts, jnp.zeros_like(a), a)
    return hs + linear_scan(a, p, jnp.zeros_like(h0), "parallel")

  if cut is None:
    return states(None, None)
  h_prev = jax.lax.stop_gradient(_states_before(states(None, None), h0))
  return states(cut, h_prev)


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_dtype(compute_dtype: Any) -> Any:
  """None for float32 (or None), else the low-precision dtype; ValueError for anything else."""
  if compute_dtype is None:
    return None
  try:
    name = jnp.dtype(compute_dtype).name
  except TypeError:
    name = None
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} or None, got "
                     f"{compute_dtype!r}.")
  return None if name == "float32" else jnp.dtype(name)


def _check_scan_arguments(xs, lengths, truncation, unroll) -> None:
  """Wrong shapes and values raise here, naming the argument, not deep inside the loop."""
  if jnp.ndim(xs) != 3:
    raise ValueError(f"xs must be [batch, time, features], got shape {tuple(jnp.shape(xs))}.")
  batch, time = xs.shape[:2]
  if truncation is not None and (isinstance(truncation, bool) or not isinstance(
      truncation, (int, np.integer)) or truncation < 1):
    raise ValueError(f"truncation must be None or an integer number of steps >= 1, got "
                     f"{truncation!r}.")
  if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
    raise ValueError(f"unroll must be an integer >= 1, got {unroll!r}.")
  if lengths is None:
    return
  if jnp.shape(lengths) != (batch,):
    raise ValueError(f"lengths must be [batch] = [{batch}], got shape "
                     f"{tuple(jnp.shape(lengths))}.")
  if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
    raise ValueError(f"lengths must be integers (steps), got dtype {jnp.result_type(lengths)}.")
  if isinstance(lengths, jax.core.Tracer):
    return  # Values unknown while tracing; the input pipeline's batches are checked on host.
  values = np.asarray(lengths)
  if values.min(initial=0) < 0 or values.max(initial=0) > time:
    raise ValueError(f"lengths must be in [0, time = {time}], got min {values.min()} and max "
                     f"{values.max()}.")


# ----------------------------------------------------------------------------- dropout

def example_keys(key: jax.Array, batch_size: int, offset: jax.Array | int = 0) -> jax.Array:
  """One PRNG key per example, [batch]: example i of the batch gets fold_in(key, offset + i).

  Dropout draws every example's masks from its own key, so a mask depends on the example's
  index in the global batch and not on how the batch is split: a device holding rows
  [offset, offset + batch_size) of it (pmap) draws exactly what one device holding the whole
  batch draws for those rows. A [batch] array of keys (already one per example) is returned
  as it is. Keys may be typed (`jax.random.key`) or raw uint32 (`jax.random.PRNGKey`).
  """
  if _is_per_example(key):
    if key.shape[0] != batch_size:
      raise ValueError(f"Got {key.shape[0]} per-example keys for a batch of {batch_size}.")
    return key
  index = jnp.asarray(offset, jnp.uint32) + jnp.arange(batch_size, dtype=jnp.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def split_keys(keys: jax.Array, num: int) -> list[jax.Array]:
  """[batch] per-example keys -> `num` independent [batch] per-example keys."""
  split = jax.vmap(lambda k: jax.random.split(k, num))(keys)  # [batch, num, ...]
  return [split[:, i] for i in range(num)]


def _is_per_example(key: jax.Array) -> bool:
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim == (1 if typed else 2)


def dropout(key: jax.Array | None, x: jax.Array, rate: float, *,
            shared_axes: Sequence[int] = ()) -> jax.Array:
  """Inverted dropout on x [batch, ...]. `shared_axes` (of x, > 0) share one mask along them
  (e.g. time, for variational dropout).

  `key`: one key, or [batch] per-example keys (see `example_keys`); either way each example's
  mask comes from its own key, so it does not depend on the rest of the batch. With
  `rate == 0` or `key is None` (evaluation) this is the identity.
  """
  if key is None or rate == 0.0:
    return x
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}.")
  if 0 in shared_axes:
    raise ValueError("dropout masks are per example: axis 0 (batch) cannot be shared.")
  keys = example_keys(key, x.shape[0])
  mask_shape = tuple(1 if axis in shared_axes else n for axis, n in enumerate(x.shape))[1:]
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, mask_shape))(keys)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# ----------------------------------------------------------------------------- layers

BLOCKS = ("plain", "residual")
MLP_EXPANSION = 2  # The residual block's gated MLP: hidden -> 2 * hidden -> hidden.


def init_layers(key: jax.Array, cell: Cell, input_size: int, hidden_size: int,
                num_layers: int = 1, bidirectional: bool = False,
                block: str = "plain") -> list[LayerParams]:
  """Params of a stack: one {"fwd": params[, "bwd": params][, "block": ...]} dict per layer.

  `block`: "plain" (each layer's outputs are the next layer's inputs) or "residual" (the
  pre-norm residual block of the linear-recurrence papers, around any cell; see
  `residual_block`): its "block" entry holds the RMSNorm scales and the MLP, the first layer's
  also "w_in" [input, hidden] when input_size != hidden_size, the last layer's "out_norm".
  """
  if block not in BLOCKS:
    raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}.")
  layers = []
  size = input_size
  for index, layer_key in enumerate(jax.random.split(key, num_layers)):
    kf, kb = jax.random.split(layer_key)
    extra = {}
    if block == "residual":
      extra["block"] = _init_residual(jax.random.fold_in(layer_key, 2), size, hidden_size,
                                      bidirectional, last=index + 1 == num_layers)
      size = hidden_size
    layer = {"fwd": cell.init(kf, size, hidden_size)}
    if bidirectional:
      layer["bwd"] = cell.init(kb, size, hidden_size)
    layers.append({**layer, **extra})
    size = hidden_size * (2 if bidirectional and block == "plain" else 1)
  return layers


def _init_residual(key, input_size: int, hidden: int, bidirectional: bool, last: bool
                   ) -> Params:
  glorot = jax.nn.initializers.glorot_uniform()
  k_in, k_mix, k_gate, k_up, k_down = jax.random.split(key, 5)
  width = MLP_EXPANSION * hidden
  params = {"norm": jnp.ones((hidden,)), "mlp_norm": jnp.ones((hidden,)),
            "w_gate": glorot(k_gate, (hidden, width)), "w_up": glorot(k_up, (hidden, width)),
            "w_down": glorot(k_down, (width, hidden))}
  if input_size != hidden:
    params["w_in"] = glorot(k_in, (input_size, hidden))
  if bidirectional:
    params["w_mix"] = glorot(k_mix, (2 * hidden, hidden))
  if last:
    params["out_norm"] = jnp.ones((hidden,))
  return params


def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / rms(x) * scale over the last axis (Zhang and Sennrich 2019)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * scale


def residual_block(params: Params, xs: jax.Array, recurrence, *, dropout_keys=(None, None),
                   dropout_rate: float = 0.0, shared_axes: Sequence[int] = (),
                   compute_dtype: Any = None) -> jax.Array:
  """The residual block of Griffin and the LRU (De et al. 2024; Orvieto et al. 2023), around
  any recurrence, xs [batch, time, hidden] -> [batch, time, hidden]:

      x = x + Dropout(Mix(Recurrence(RMSNorm(x))))
      x = x + Dropout(W_down (GELU(W_gate n) * W_up n)),   n = RMSNorm(x)

  Mix is W_mix on the [forward, backward] outputs of a bidirectional layer, else nothing.
  `recurrence`: [batch, time, hidden] -> [batch, time, hidden or 2 * hidden].
  """
  w = cells_lib.cast_weights(params, compute_dtype)
  r = recurrence(rms_norm(xs, params["norm"]))
  if "w_mix" in w:
    r = cells_lib.matmul(r, w["w_mix"])
  xs = xs + dropout(dropout_keys[0], r, dropout_rate, shared_axes=shared_axes)
  n = rms_norm(xs, params["mlp_norm"])
  m = jax.nn.gelu(cells_lib.matmul(n, w["w_gate"])) * cells_lib.matmul(n, w["w_up"])
  m = cells_lib.matmul(m, w["w_down"])
  return xs + dropout(dropout_keys[1], m, dropout_rate, shared_axes=shared_axes)


def run_layers(cell: Cell, layers: Sequence[LayerParams], xs: jax.Array, *,
               lengths: jax.Array | None = None, initial_carries: Sequence[Any] | None = None,
               key: jax.Array | None = None, dropout_rate: float = 0.0,
               recurrent_dropout_rate: float = 0.0, variational: bool = False,
               truncation: int | None = None, unroll: int = 1, remat: bool = False,
               probes: Sequence[Any] | None = None,
               top_output_dropout: bool = True,
               compute_dtype: Any = None,
               scan_mode: str = "auto") -> tuple[list[Any], jax.Array]:
  """Runs a stack of (optionally bidirectional) layers, TF's `MultiRNNCell` generalised.

  Args:
    cell: the cell of every layer.
    layers: from `init_layers`.
    xs: [batch, time, features].
    lengths: [batch] for right-padded sequences (see `scan`).
    initial_carries: per layer, a carry (unidirectional) or {"fwd": carry, "bwd": carry};
      None for zeros.
    key: PRNG key for dropout, or [batch] per-example keys (`example_keys`); None means
      evaluation (no dropout at all).
    dropout_rate: dropout on each layer's output (so between layers and on the stack's output,
      like TF's `DropoutWrapper(output_keep_prob)` on every cell of a `MultiRNNCell`).
    recurrent_dropout_rate: variational dropout on h where it enters the recurrence; one mask per
      sequence and layer, reused at every step.
    variational: share the output dropout mask over time too.
    top_output_dropout: False leaves the top layer's output undropped, so that dropout acts
      only where a layer's output enters the next layer (Keras' per-cell input dropout).
    truncation, unroll, remat, compute_dtype, scan_mode: see `scan`.
    probes: per layer, a probe carry (or {"fwd":..., "bwd":...}) for `scan(probes=...)`.

  Layers with a "block" entry (`init_layers(block="residual")`) run as `residual_block`s:
  the first projects xs to hidden ("w_in"), dropout acts on each branch's output, the last
  normalises the stack's output, and outputs past each length are zero.

  Returns:
    (final_carries, ys): per layer the final carry (or {"fwd":..., "bwd":...}), and the top
    layer's outputs [batch, time, hidden * directions] ([batch, time, hidden] for residual
    blocks).
  """
  batch = xs.shape[0]
  finals = []
  shared_axes = (1,) if variational else ()
  keys = ([None] * len(layers) if key is None
          else split_keys(example_keys(key, batch), len(layers)))
  for index, (layer, layer_key) in enumerate(zip(layers, keys)):
    init = initial_carries[index] if initial_carries is not None else None
    probe = probes[index] if probes is not None else None
    directions = ("fwd", "bwd") if "bwd" in layer else ("fwd",)
    residual = "block" in layer
    num_keys = 4 if residual else 3
    dir_keys = split_keys(layer_key, num_keys) if layer_key is not None else [None] * num_keys
    layer_final = {}

    def recurrence(xs, layer=layer, init=init, probe=probe, directions=directions,
                   dir_keys=dir_keys, layer_final=layer_final):
      outputs = []
      for direction, dir_key in zip(directions, dir_keys[:2]):
        params = layer[direction]
        mask = None
        if dir_key is not None and recurrent_dropout_rate > 0.0:
          hidden = cell.hidden_size(params)
          mask = dropout(dir_key, jnp.ones((batch, hidden), xs.dtype), recurrent_dropout_rate)
        carry, ys = scan(cell, params, xs, _pick(init, direction, len(directions)),
                         lengths=lengths, reverse=direction == "bwd", truncation=truncation,
                         unroll=unroll, remat=remat, recurrent_mask=mask,
                         compute_dtype=compute_dtype, scan_mode=scan_mode,
                         probes=_pick(probe, direction, len(directions)))
        outputs.append(ys)
        layer_final[direction] = carry
      return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)

    if residual:
      block = layer["block"]
      if "w_in" in block:
        xs = cells_lib.matmul(xs, cells_lib.cast_weights(block, compute_dtype)["w_in"])
      xs = residual_block(block, xs, recurrence, dropout_keys=dir_keys[2:],
                          dropout_rate=dropout_rate, shared_axes=shared_axes,
                          compute_dtype=compute_dtype)
      if "out_norm" in block:
        xs = rms_norm(xs, block["out_norm"])
      if lengths is not None:  # Zero past each length, as a plain layer's outputs are.
        valid = jnp.arange(xs.shape[1])[None, :, None] < jnp.asarray(lengths)[:, None, None]
        xs = jnp.where(valid, xs, jnp.zeros_like(xs))
    else:
      xs = recurrence(xs)
      if top_output_dropout or index + 1 < len(layers):
        xs = dropout(dir_keys[2], xs, dropout_rate, shared_axes=shared_axes)
    finals.append(layer_final["fwd"] if len(directions) == 1 else layer_final)
  return finals, xs


def _pick(value, direction: str, num_directions: int):
  if value is None:
    return None
  return value if num_directions == 1 else value[direction]
