"""`recurrent.scan` where its options meet, each sequence checked against itself run alone.

lengths x reverse x truncation x remat x unroll x probes x recurrent_mask, for every cell and
variant, on a strength-2 orthogonal array (every pair of options, every {lengths, reverse,
truncation} triple). Two references, both written from the equations and not from scan's code,
run each sequence of the batch alone on its real steps only, at its own length L:

- values: a float64 NumPy step per cell, from the cells' docstring equations;
- gradients: the same per-sequence loop in JAX (`cell.step`, which the value check pins to the
  NumPy equations), with truncated BPTT's stop_gradient placed by hand: before processing step
  s when 0 < s < L and (L - s) % k == 0 (k-step windows aligned to the end of the sequence in
  processing order, cuts only inside its real steps), and the probes added at real steps only.

The padding of `xs` holds large garbage: nothing may depend on it, and its gradient, the
outputs at padded positions and the gradient of the probes at padded steps are exactly 0.
Also: k >= every length is full BPTT; a given initial carry with everything else on; and a
GRU case where cuts placed in the padding left a padded row's final carry without gradient.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, recurrent

BATCH, TIME, INPUT, HIDDEN = 4, 8, 3, 4
LENGTHS = (8, 5, 3, 1)
# None: full BPTT; 2: k < L for 8, 5 and 3; 4: k < L for 8 and 5, L <= k < T for 3 and 1;
# 8: k >= T, no cut anywhere.
TRUNCATIONS = (None, 2, 4, 8)
GARBAGE = 1e3

# id -> (registry name, options): every registered cell and variant.
CELLS = {
    "rnn": ("rnn", {}),
    "irnn": ("irnn", {}),
    "lstm": ("lstm", {}),
    "lstm-peephole": ("lstm", {"peephole": True}),
    "lstm-cifg": ("lstm", {"cifg": True}),
    "lstm-peephole-cifg": ("lstm", {"peephole": True, "cifg": True}),
    "gru": ("gru", {}),
    "gru-reset-before": ("gru", {"reset_after": False}),
    "mgu": ("mgu", {}),
    "rnn-miswired-pair": ("rnn_miswired_pair", {}),
    # Linear recurrences (`Cell.linear`), run in each of their whole-sequence scan modes.
    "mingru": ("mingru", {}),
    "mingru-plain": ("mingru", {"positive": False}),
    "minlstm": ("minlstm", {}),
    "minlstm-unnormalized": ("minlstm", {"normalize": False}),
    "rglru": ("rglru", {}),
    "lru": ("lru", {}),
}
LINEAR = ("mingru", "minlstm", "rglru", "lru")
LINEAR_MODES = ("sequential", "chunked", "parallel")


def _is_linear(cell_id):
  return CELLS[cell_id][0] in LINEAR


def _modes(cell_id):
  """The scan modes a cell runs in: "step" for the classic cells; the whole-sequence modes for
  the linear ones, and "log" for those with positive coefficients."""
  if not _is_linear(cell_id):
    return ("step",)
  name, options = CELLS[cell_id]
  positive = cells.get(name, **options).linear.log_coefficients is not None
  return LINEAR_MODES + ("log",) * positive


def _grid():
  """(cell id, scan mode, row) params: every row for every cell, the linear cells in each of
  their modes. The linear cells' default options in "sequential" (the CPU default) run every
  row by default; their other modes and option variants every fourth row by default and the
  rest with the slow tests."""
  cases = []
  for cell_id in CELLS:
    for mode in _modes(cell_id):
      for r in range(16):
        variant = _is_linear(cell_id) and CELLS[cell_id][1]
        slow = (mode in ("chunked", "parallel", "log") or variant) and r % 4 != 0
        cases.append(pytest.param(cell_id, mode, r, id=f"{cell_id}-{mode}-{_row_id(r)}",
                                  marks=[pytest.mark.slow] if slow else []))
  return cases


# ----------------------------------------------------------------------------- the design

def _parity(v):
  return bin(v).count("1") % 2


def _row(r):
  """Row r (0..15) of the orthogonal array: each option a linear function of the bits of r.

  With u = r as a vector of GF(2)^4, every binary option is a . u for its own nonzero a:
  lengths 1000, reverse 0100, remat 1100, unroll 1010, probes 0110, mask 1001; truncation is
  the 4-level pair (0010 . u, 0001 . u). Why this covers:
  - any two binary options: their a, b are distinct and nonzero, hence linearly independent over
    GF(2), so (a . u, b . u) takes each of its 4 values on exactly 4 of the 16 rows;
  - truncation with a binary option a: a is not in span{0010, 0001} = {0010, 0001, 0011} (none
    of the six is), so (a . u, 0010 . u, 0001 . u) takes each of its 8 values on 2 rows;
  - {lengths, reverse, truncation}: 1000, 0100, 0010, 0001 are the four coordinates of u, so
    each of the 2 x 2 x 4 = 16 combinations is exactly one row.
  `test_design_covers_every_pair_and_the_triple` checks this by enumeration.
  """
  return dict(
      lengths=bool(_parity(r & 0b1000)),
      reverse=bool(_parity(r & 0b0100)),
      truncation=TRUNCATIONS[2 * _parity(r & 0b0010) + _parity(r & 0b0001)],
      remat=bool(_parity(r & 0b1100)),
      unroll=3 if _parity(r & 0b1010) else 1,
      probes=bool(_parity(r & 0b0110)),
      mask=bool(_parity(r & 0b1001)),
  )


ROWS = [_row(r) for r in range(16)]


def _row_id(r):
  row = ROWS[r]
  parts = [f"r{r:02d}"]
  parts += ["len"] if row["lengths"] else []
  parts += ["rev"] if row["reverse"] else []
  parts += [f"k{row['truncation']}"] if row["truncation"] is not None else ["full"]
  parts += ["remat"] if row["remat"] else []
  parts += ["u3"] if row["unroll"] == 3 else []
  parts += ["probes"] if row["probes"] else []
  parts += ["mask"] if row["mask"] else []
  return "-".join(parts)


def test_design_covers_every_pair_and_the_triple():
  levels = {"lengths": [False, True], "reverse": [False, True], "truncation": list(TRUNCATIONS),
            "remat": [False, True], "unroll": [1, 3], "probes": [False, True],
            "mask": [False, True]}
  names = list(levels)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      seen = {(row[a], row[b]) for row in ROWS}
      assert len(seen) == len(levels[a]) * len(levels[b]), (a, b)
  triples = {(row["lengths"], row["reverse"], row["truncation"]) for row in ROWS}
  assert len(triples) == 16


# ----------------------------------------------------------------------------- setup

Setup = collections.namedtuple("Setup", "cell params xs mask w_ys w_carry carry0")


@functools.cache
def _setup(cell_id, seed=0):
  """The cell, its params (+0.1 and small noise: no zero bias), clean xs (no garbage yet), a
  recurrent mask, the loss weights and a non-zero initial carry."""
  name, options = CELLS[cell_id]
  cell = cells.get(name, **options)
  kp, kn, kx, ky, kc, k0 = jax.random.split(jax.random.key(seed), 6)
  params = cell.init(kp, INPUT, HIDDEN)
  leaves, tree = jax.tree.flatten(params)
  noise = [0.1 * jax.random.normal(k, l.shape)
           for k, l in zip(jax.random.split(kn, len(leaves)), leaves)]
  params = jax.tree.unflatten(tree, [l + 0.1 + n for l, n in zip(leaves, noise)])
  xs = jax.random.normal(kx, (BATCH, TIME, INPUT))
  # Inverted dropout 0.5, fixed: every row has both a dropped and a kept unit.
  mask = jnp.array([[2., 0., 2., 0.], [0., 2., 2., 0.], [2., 2., 0., 0.], [0., 0., 2., 2.]])
  w_ys = jax.random.normal(ky, (BATCH, TIME, HIDDEN))
  zero = cell.zero_carry(BATCH, HIDDEN)
  w_carry, carry0 = (jax.tree.unflatten(
      jax.tree.structure(zero),
      [0.5 * jax.random.normal(k, (BATCH, HIDDEN))
       for k in jax.random.split(key, len(jax.tree.leaves(zero)))]) for key in (kc, k0))
  return Setup(cell, params, xs, mask, w_ys, w_carry, carry0)


def _lengths_of(lengths):
  return list(lengths) if lengths is not None else [TIME] * BATCH


def _with_garbage(xs, lengths):
  if lengths is None:
    return xs
  real = jnp.arange(xs.shape[1])[None, :, None] < jnp.asarray(lengths)[:, None, None]
  return jnp.where(real, xs, GARBAGE)


def _zero_probes(cell):
  return jax.tree.map(lambda c: jnp.zeros((TIME,) + c.shape), cell.zero_carry(BATCH, HIDDEN))


def _has_cut(truncation, lengths):
  return truncation is not None and any(truncation < n for n in _lengths_of(lengths))


# ----------------------------------------------------------------------------- value reference

def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def _np_step(cell_id, p, carry, x, m):
  """One step, float64, from the docstring equations; m multiplies h where it enters W_h."""
  name, options = CELLS[cell_id]
  if name in ("rnn", "irnn"):
    act = np.tanh if name == "rnn" else (lambda v: np.maximum(v, 0.0))
    h = act(x @ p["w_x"] + (carry * m) @ p["w_h"] + p["b"])
    return h, h
  if name == "lstm":
    h, c = carry
    peephole, cifg = options.get("peephole", False), options.get("cifg", False)
    gates = ("f", "g", "o") if cifg else ("i", "f", "g", "o")
    z = dict(zip(gates, np.split(x @ p["w_x"] + (h * m) @ p["w_h"] + p["b"], len(gates), -1)))
    f = _sigmoid(z["f"] + (p["w_cf"] * c if peephole else 0.0))
    i = 1.0 - f if cifg else _sigmoid(z["i"] + (p["w_ci"] * c if peephole else 0.0))
    c_new = f * c + i * np.tanh(z["g"])
    o = _sigmoid(z["o"] + (p["w_co"] * c_new if peephole else 0.0))
    h = o * np.tanh(c_new)
    return (h, c_new), h
  if name == "rnn_miswired_pair":  # s' = tanh(x W0 + s U0 + b0); y' = tanh(x W1 + s' U1 + b1)
    _, state = carry
    w_x0, w_x1 = np.split(p["w_x"], 2, axis=1)
    w_h0, w_h1 = np.split(p["w_h"], 2, axis=1)
    b0, b1 = np.split(p["b"], 2)
    state = np.tanh(x @ w_x0 + (state * m) @ w_h0 + b0)
    y = np.tanh(x @ w_x1 + (state * m) @ w_h1 + b1)
    return (y, state), y
  hm = carry * m
  if name == "gru":
    w_xr, w_xz, w_xn = np.split(p["w_x"], 3, axis=1)
    w_hr, w_hz, w_hn = np.split(p["w_h"], 3, axis=1)
    b_r, b_z, b_n = np.split(p["b"], 3)
    r = _sigmoid(x @ w_xr + hm @ w_hr + b_r)
    z = _sigmoid(x @ w_xz + hm @ w_hz + b_z)
    if options.get("reset_after", True):
      n = np.tanh(x @ w_xn + b_n + r * (hm @ w_hn + p["b_hn"]))
    else:
      n = np.tanh(x @ w_xn + (r * hm) @ w_hn + b_n)
    h = (1.0 - z) * n + z * carry
    return h, h
  if name in LINEAR:
    return _np_linear_step(name, options, p, carry, x)
  assert name == "mgu"
  w_xf, w_xn = np.split(p["w_x"], 2, axis=1)
  w_hf, w_hn = np.split(p["w_h"], 2, axis=1)
  b_f, b_n = np.split(p["b"], 2)
  f = _sigmoid(x @ w_xf + hm @ w_hf + b_f)
  n = np.tanh(x @ w_xn + (f * hm) @ w_hn + b_n)
  h = (1.0 - f) * carry + f * n
  return h, h


def _softplus(v):
  return np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0.0)


def _np_linear_step(name, options, p, carry, x):
  """The linear recurrences, float64, from the papers' equations as the docstrings give them
  (Feng et al. 2024; De et al. 2024; Orvieto et al. 2023)."""
  g = ((lambda v: np.where(v >= 0, v + 0.5, _sigmoid(v))) if options.get("positive", True)
       else (lambda v: v))
  if name == "mingru":  # h' = (1 - z) h + z g(x W_h + b_h)
    k_z, k_h = np.split(x @ p["w_x"] + p["b"], 2, axis=-1)
    z = _sigmoid(k_z)
    h = (1.0 - z) * carry + z * g(k_h)
    return h, h
  if name == "minlstm":  # h' = f' h + i' g(x W_h + b_h), f', i' = f, i / (f + i)
    k_f, k_i, k_h = np.split(x @ p["w_x"] + p["b"], 3, axis=-1)
    f, i = _sigmoid(k_f), _sigmoid(k_i)
    if options.get("normalize", True):
      f, i = f / (f + i), i / (f + i)
    h = f * carry + i * g(k_h)
    return h, h
  if name == "rglru":  # a = sigmoid(Lambda)^(8 r); h' = a h + sqrt(1 - a^2) (i * u)
    k_r, k_i, u = np.split(x @ p["w_x"] + p["b"], 3, axis=-1)
    a = _sigmoid(p["lambda"]) ** (8.0 * _sigmoid(k_r))
    h = a * carry + np.sqrt(1.0 - a * a) * (_sigmoid(k_i) * u)
    return h, h
  assert name == "lru"  # s' = lambda s + gamma (x B); y = Re(s C) + x D
  _, s_re, s_im = carry
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  b_re, b_im = np.split(p["w_x"], 2, axis=1)
  s = lam * (s_re + 1j * s_im) + np.exp(p["gamma_log"]) * (x @ b_re + 1j * (x @ b_im))
  y = (s @ (p["w_c_re"] + 1j * p["w_c_im"])).real + x @ p["w_d"]
  return (y, s.real, s.imag), y


def _np_run(cell_id, params, xs, lengths, reverse, mask, carry0=None):
  """Each sequence alone on its real steps: (final carry leaves [batch, hidden], ys)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(xs, np.float64)
  m = np.ones((BATCH, HIDDEN)) if mask is None else np.asarray(mask, np.float64)
  parts = len(jax.tree.leaves(cells.get(CELLS[cell_id][0], **CELLS[cell_id][1]).zero_carry(1, HIDDEN)))
  lstm = parts > 1  # Carries of several parts (LSTM, the miswired pair, LRU).
  ys, finals = np.zeros((BATCH, TIME, HIDDEN)), []
  for b, n in enumerate(_lengths_of(lengths)):
    if carry0 is None:
      carry = (np.zeros((1, HIDDEN)),) * parts if lstm else np.zeros((1, HIDDEN))
    else:
      carry = jax.tree.map(lambda c: np.asarray(c[b:b + 1], np.float64), carry0)
    for s in range(n):
      t = n - 1 - s if reverse else s
      carry, y = _np_step(cell_id, p, carry, x[b:b + 1, t], m[b:b + 1])
      ys[b, t] = y[0]
    finals.append(carry if lstm else (carry,))
  return [np.concatenate(parts) for parts in zip(*finals)], ys


# ----------------------------------------------------------------------------- gradient reference

@functools.cache
def _ref_sequence(cell_id, seed, b, n, reverse, truncation, with_mask, with_carry0=False,
                  final_term=True):
  """Sequence b alone on its n real steps, in JAX: the gradients of its part of the loss,
  sum(w_ys[b] * ys[b]) + sum(w_carry[b] * final carry[b]) (without that second term if not
  `final_term`: only to diagnose a failure), w.r.t. the params, its inputs xs[b, :n], its (zero)
  probes [n, 1, hidden] in processing order and its initial carry (the zero carry, or row b of
  setup.carry0). TBPTT by hand."""
  setup = _setup(cell_id, seed)
  cell = setup.cell
  mask = setup.mask[b:b + 1] if with_mask else None

  def loss(params, x, probes, carry):
    if cell.prepare is not None:  # The form step reads fastest (LSTM: per-gate blocks).
      params = cell.prepare(params)
    total = 0.0
    for s in range(n):  # Processing order; t is the input's (and the output's) position.
      if truncation is not None and 0 < s and (n - s) % truncation == 0:
        carry = jax.tree.map(jax.lax.stop_gradient, carry)
      t = n - 1 - s if reverse else s
      if mask is None:
        carry, y = cell.step(params, carry, x[t][None])
      else:
        carry, y = cell.step(params, carry, x[t][None], h_mask=mask)
      probe = jax.tree.map(lambda q: q[s], probes)
      carry = jax.tree.map(jnp.add, carry, probe)
      y = y + cells.hidden_of(probe)
      total = total + jnp.sum(setup.w_ys[b, t] * y[0])
    for w, c in zip(jax.tree.leaves(setup.w_carry), jax.tree.leaves(carry)):
      total = total + (jnp.sum(w[b] * c[0]) if final_term else 0.0)
    return total

  probes = jax.tree.map(lambda c: jnp.zeros((n,) + c.shape), cell.zero_carry(1, HIDDEN))
  carry0 = (jax.tree.map(lambda c: c[b:b + 1], setup.carry0) if with_carry0
            else cell.zero_carry(1, HIDDEN))
  return jax.grad(loss, argnums=(0, 1, 2, 3))(setup.params, setup.xs[b, :n], probes, carry0)


def _effective(truncation, n):
  return truncation if truncation is not None and truncation < n else None  # k >= n: no cut.


def _ref_grads(cell_id, lengths, reverse, truncation, with_mask, with_probes, seed=0,
               with_carry0=False):
  """The reference's gradients w.r.t. (params, xs[, probes][, initial carry]) for the whole
  batch: the sum over sequences, each one's xs and probe gradients placed at its real
  positions, 0 elsewhere."""
  setup = _setup(cell_id, seed)
  g_params = jax.tree.map(jnp.zeros_like, setup.params)
  g_xs = np.zeros((BATCH, TIME, INPUT), np.float32)
  g_probes = [np.zeros((TIME, BATCH, HIDDEN), np.float32)
              for _ in jax.tree.leaves(setup.cell.zero_carry(1, HIDDEN))]
  g_carry0 = [np.zeros((BATCH, HIDDEN), np.float32) for _ in g_probes]
  for b, n in enumerate(_lengths_of(lengths)):
    p, x, q, c = _ref_sequence(cell_id, seed, b, n, reverse, _effective(truncation, n),
                               with_mask, with_carry0)
    g_params = jax.tree.map(jnp.add, g_params, p)
    g_xs[b, :n] = x
    for whole, part in zip(g_probes, jax.tree.leaves(q)):
      whole[:n, b] = part[:, 0]
    for whole, part in zip(g_carry0, jax.tree.leaves(c)):
      whole[b] = part[0]
  tree = jax.tree.structure(setup.cell.zero_carry(1, HIDDEN))
  return ((g_params, g_xs) + ((jax.tree.unflatten(tree, g_probes),) if with_probes else ())
          + ((jax.tree.unflatten(tree, g_carry0),) if with_carry0 else ()))


def _without_final(cell_id, seed, lengths, reverse, truncation, with_mask, with_carry0, b):
  n = _lengths_of(lengths)[b]
  return _ref_sequence(cell_id, seed, b, n, reverse, _effective(truncation, n), with_mask,
                       with_carry0, final_term=False)[1]


# ----------------------------------------------------------------------------- scan, compiled

# The file's time is almost all XLA compiling scan's programs (one per case: the options are
# static). These options compile them 3-4x faster on CPU (-O0, the older fusion emitter, no
# expensive LLVM passes); what scan computes does not depend on them.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                     "xla_llvm_disable_expensive_passes": True}


def _scan(setup, xs, probes, lengths, mask, carry0=None, **options):
  """scan's (final carry, ys) and the gradients of the reference's loss, sum(w_ys * ys) +
  sum(w_carry * final carry), w.r.t. (params, xs[, probes][, initial carry])."""
  cell = setup.cell

  def loss(params, xs, probes, carry0, lengths, mask):
    carry, ys = recurrent.scan(cell, params, xs, carry0, lengths=lengths, recurrent_mask=mask,
                               probes=probes, **options)
    total = jnp.sum(setup.w_ys * ys)
    for w, c in zip(jax.tree.leaves(setup.w_carry), jax.tree.leaves(carry)):
      total = total + jnp.sum(w * c)
    return total, (carry, ys)

  argnums = (0, 1) + ((2,) if probes is not None else ()) + ((3,) if carry0 is not None else ())
  grad = jax.value_and_grad(loss, argnums, has_aux=True)
  (_, (carry, ys)), grads = jax.jit(grad, compiler_options=_COMPILER_OPTIONS)(
      setup.params, xs, probes, carry0, None if lengths is None else jnp.asarray(lengths), mask)
  return carry, ys, grads


# ----------------------------------------------------------------------------- checks

def _assert_close(got, want, what, rtol=1e-5, atol=1e-6):
  """|got - want| <= atol * max(1, max |want|) + rtol * |want|: float32 sums of terms of up to
  max |want| make errors of its order times eps, also in their small entries."""
  got, want = np.asarray(got), np.asarray(want)
  scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
  try:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)
  except AssertionError as error:  # The summary first: pytest's --tb=line shows one line.
    raise AssertionError(f"{what}: max |got - want| = {np.abs(got - want).max():.3g}, max |got| "
                         f"= {np.abs(got).max():.3g}, max |want| = {np.abs(want).max():.3g}"
                         f"\n{error}") from None


def _assert_grads_match(got, want, lengths, reverse, with_carry0=False, without_final=None):
  """got, want: gradients w.r.t. (params, xs[, probes][, initial carry]). Per row first, xs,
  probes and initial carry (the messages name the row), then the params.

  without_final(b), if given: the reference's xs gradient of row b without the final-carry
  term of the loss, to name that failure when scan's gradient is that one."""
  lens = _lengths_of(lengths)
  got_x, want_x = np.asarray(got[1]), np.asarray(want[1])
  for b, n in enumerate(lens):
    assert np.all(got_x[b, n:] == 0.0), (
        f"xs gradient in the padding of row {b} (L={n}) is not exactly 0: "
        f"max |g| = {np.abs(got_x[b, n:]).max():.3g}")
    try:
      _assert_close(got_x[b, :n], want_x[b, :n],
                    f"xs gradient of row {b} (L={n}, reverse={reverse})")
    except AssertionError as error:
      if without_final is not None and np.allclose(got_x[b, :n], without_final(b), rtol=1e-5,
                                                   atol=1e-5):
        raise AssertionError(
            f"the final carry of row {b} (L={n}) gets no gradient: scan's xs gradient of the row "
            f"is the reference's without the final-carry term of the loss\n{error}") from None
      raise
  if len(got) - with_carry0 == 3:
    flat, _ = jax.tree_util.tree_flatten_with_path(got[2])
    for (path, g), w in zip(flat, jax.tree.leaves(want[2]), strict=True):
      name, g, w = "probe" + jax.tree_util.keystr(path), np.asarray(g), np.asarray(w)
      for b, n in enumerate(lens):
        assert np.all(g[n:, b] == 0.0), (
            f"{name} gradient at the padded steps of row {b} (L={n}) is not exactly 0: "
            f"max |g| = {np.abs(g[n:, b]).max():.3g}")
        _assert_close(g[:n, b], w[:n, b], f"{name} gradient of row {b} (L={n})")
  if with_carry0:
    flat, _ = jax.tree_util.tree_flatten_with_path(got[-1])
    for (path, g), w in zip(flat, jax.tree.leaves(want[-1]), strict=True):
      for b, n in enumerate(lens):
        _assert_close(g[b], w[b],
                      f"initial carry{jax.tree_util.keystr(path)} gradient of row {b} (L={n})")
  flat, _ = jax.tree_util.tree_flatten_with_path(got[0])
  for (path, g), w in zip(flat, jax.tree.leaves(want[0]), strict=True):
    _assert_close(g, w, "params gradient " + jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- the grid

@pytest.mark.parametrize("cell_id,scan_mode,r", _grid())
def test_scan_matches_each_sequence_alone(cell_id, scan_mode, r):
  row, setup = ROWS[r], _setup(cell_id)
  lengths = LENGTHS if row["lengths"] else None
  xs = _with_garbage(setup.xs, lengths)
  probes = _zero_probes(setup.cell) if row["probes"] else None
  mask = setup.mask if row["mask"] else None
  options = dict(reverse=row["reverse"], truncation=row["truncation"], remat=row["remat"],
                 unroll=row["unroll"], scan_mode=scan_mode)
  if mask is not None and _is_linear(cell_id):  # h enters no matmul: nothing to mask.
    with pytest.raises(ValueError, match="recurrent dropout"):
      _scan(setup, xs, probes, lengths, mask, **options)
    mask, row = None, {**row, "mask": False}
  carry, ys, grads = _scan(setup, xs, probes, lengths, mask, **options)

  # Values: float64 NumPy from the equations, each sequence alone.
  want_carry, want_ys = _np_run(cell_id, setup.params, setup.xs, lengths, row["reverse"], mask)
  for b, n in enumerate(_lengths_of(lengths)):
    assert np.all(np.asarray(ys[b, n:]) == 0.0), f"outputs in the padding of row {b} (L={n})"
  _assert_close(ys, want_ys, "ys", atol=1e-5)
  for i, (got, want) in enumerate(zip(jax.tree.leaves(carry), want_carry, strict=True)):
    _assert_close(got, want, f"final carry part {i}", atol=1e-5)

  # Gradients: each sequence alone in JAX, stop_gradient by hand.
  want = _ref_grads(cell_id, lengths, row["reverse"], row["truncation"], row["mask"],
                    row["probes"])
  _assert_grads_match(grads, want, lengths, row["reverse"], without_final=functools.partial(
      _without_final, cell_id, 0, lengths, row["reverse"], row["truncation"], row["mask"],
      False))

  if _has_cut(row["truncation"], lengths):  # Not vacuous: the cuts change the gradient.
    full = _ref_grads(cell_id, lengths, row["reverse"], None, row["mask"], row["probes"])
    assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
                   for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full))), (
        "truncation changed nothing")


# ----------------------------------------------------------------------------- k >= every length

@pytest.mark.parametrize("lengths,k,reverse", [
    (None, TIME, False), (None, TIME + 3, True), (LENGTHS, TIME, True),
    ((4, 3, 2, 1), 4, False), ((4, 3, 2, 1), 6, True)],
    ids=["T-k8", "T-k11-rev", "len-k8-rev", "len4-k4", "len4-k6-rev"])
@pytest.mark.parametrize("cell_id", ["lstm-peephole", "gru-reset-before"])
def test_truncation_at_least_every_length_is_full_bptt(cell_id, lengths, k, reverse):
  """k >= T, or L <= k for every sequence (also with k < T): no cut, so the gradients are the
  independent reference's full BPTT (no stop_gradient at all)."""
  setup = _setup(cell_id, seed=1)
  xs = _with_garbage(setup.xs, lengths)
  _, _, grads = _scan(setup, xs, None, lengths, None, reverse=reverse, truncation=k)
  want = _ref_grads(cell_id, lengths, reverse, None, False, False, seed=1)
  _assert_grads_match(grads, want, lengths, reverse, without_final=functools.partial(
      _without_final, cell_id, 1, lengths, reverse, None, False, False))


# ----------------------------------------------------------------------------- initial carry

@pytest.mark.parametrize("cell_id,scan_mode", [
    ("lstm-peephole-cifg", "step"), ("gru", "step"), ("mgu", "step"),
    ("mingru", "chunked"), ("rglru", "parallel"), ("lru", "sequential"), ("minlstm", "log")])
def test_initial_carry_meets_padding_reverse_truncation_and_probes(cell_id, scan_mode):
  """A given initial carry (the language model's carried state), with everything else on:
  its gradient reaches each row only through that row's first window (k = 2; the length-1
  row, which has no cut, also through its final carry)."""
  setup = _setup(cell_id)
  mask = None if _is_linear(cell_id) else setup.mask  # Linear cells: nothing to mask.
  xs, probes = _with_garbage(setup.xs, LENGTHS), _zero_probes(setup.cell)
  carry, ys, grads = _scan(setup, xs, probes, LENGTHS, mask, setup.carry0, reverse=True,
                           truncation=2, remat=True, unroll=3, scan_mode=scan_mode)
  want_carry, want_ys = _np_run(cell_id, setup.params, setup.xs, LENGTHS, True, mask,
                                setup.carry0)
  _assert_close(ys, want_ys, "ys", atol=1e-5)
  for i, (got, want) in enumerate(zip(jax.tree.leaves(carry), want_carry, strict=True)):
    _assert_close(got, want, f"final carry part {i}", atol=1e-5)
  want = _ref_grads(cell_id, LENGTHS, True, 2, mask is not None, True, with_carry0=True)
  _assert_grads_match(grads, want, LENGTHS, True, with_carry0=True, without_final=(
      functools.partial(_without_final, cell_id, 0, LENGTHS, True, 2, mask is not None,
                        True)))


# ----------------------------------------------------------------------------- a known bug

@pytest.mark.parametrize("k", [3, 8])
def test_gru_final_carry_of_a_padded_row_gets_its_gradient(k):
  """lengths [10, 6], T = 10, loss on the final carry only. The cuts were placed inside the
  padding as well (at t = L, L + k, ...), which stopped the whole gradient of the frozen final
  carry of the length-6 row: its w_x gradient came out 0."""
  time, lengths = 10, (10, 6)
  cell = cells.get("gru")
  kp, kx, kw = jax.random.split(jax.random.key(2), 3)
  params = jax.tree.map(lambda p: p + 0.1, cell.init(kp, INPUT, HIDDEN))
  real = jnp.arange(time)[None, :, None] < jnp.array(lengths)[:, None, None]
  xs = jnp.where(real, jax.random.normal(kx, (2, time, INPUT)), GARBAGE)
  w = jnp.zeros((2, HIDDEN)).at[1].set(jax.random.normal(kw, (HIDDEN,)))  # Row 1 only.

  def loss(w_x):
    carry, _ = recurrent.scan(cell, {**params, "w_x": w_x}, xs, lengths=jnp.array(lengths),
                              truncation=k)
    return jnp.sum(w * carry)

  def ref_loss(w_x):  # Row 1 alone, its 6 real steps, cuts before s when (6 - s) % k == 0.
    h = jnp.zeros((1, HIDDEN))
    for s in range(lengths[1]):
      if 0 < s and (lengths[1] - s) % k == 0:
        h = jax.lax.stop_gradient(h)
      h, _ = cell.step({**params, "w_x": w_x}, h, xs[1:2, s])
    return jnp.sum(w[1] * h[0])

  got = np.asarray(jax.jit(jax.grad(loss), compiler_options=_COMPILER_OPTIONS)(params["w_x"]))
  want = np.asarray(jax.grad(ref_loss)(params["w_x"]))
  assert np.abs(want).max() > 0
  assert np.abs(got).max() > 0, (
      f"w_x gradient from the length-6 row is 0 vs max |g| = {np.abs(want).max():.3g}")
  _assert_close(got, want, "w_x gradient from the length-6 row")
