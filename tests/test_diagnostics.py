"""Diagnostics: the one-pass probe gradients against float64 finite differences of an
independently written, Python-loop model; gate equations against the cells; the horizon."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, diagnostics, models


def _reference_loss(model, params, inputs, labels, deltas):
  """The model as a plain Python loop over layers and steps, h_t of layer l perturbed by
  deltas[l][t]; loss = mean squared error (one output, readout 'last')."""
  cell = model.recurrent_cell
  xs = [inputs[:, t] for t in range(inputs.shape[1])]
  for layer, delta in zip(params["rnn"], deltas):
    p = layer["fwd"]
    carry = cell.zero_carry(inputs.shape[0], cells.hidden_size_of(p), inputs.dtype)
    outputs = []
    for t, x in enumerate(xs):
      carry, _ = cell.step(p, carry, x)
      carry = cells.with_hidden(carry, cells.hidden_of(carry) + delta[t])
      outputs.append(cells.hidden_of(carry))
    xs = outputs
  pred = xs[-1] @ params["head"]["w"] + params["head"]["b"]
  return jnp.mean(jnp.square(pred[:, 0] - labels))


@pytest.mark.parametrize("cell,num_layers", [("rnn", 1), ("irnn", 1), ("lstm", 2), ("gru", 1)])
def test_gradient_norm_matches_finite_differences(cell, num_layers):
  time, batch, hidden = 6, 2, 3
  with jax.enable_x64(True):
    model = models.SequenceModel(cell=cell, input_size=2, hidden_size=hidden,
                                 num_layers=num_layers, num_outputs=1)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.PRNGKey(1)))
    if cell == "irnn":  # Identity start is symmetric; perturb so every path matters.
      params = jax.tree.map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape)),
                            params)
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.uniform(size=(batch, time, 2)))
    labels = jnp.asarray(rng.uniform(size=(batch,)))
    got = np.asarray(jax.jit(lambda p, b: diagnostics.gradient_norm_through_time(
        model, p, b, per_layer=True))(params, {"inputs": inputs, "labels": labels}))
    assert got.shape == (num_layers, time)

    # Central differences along every coordinate of every h_t, all at once with vmap.
    size = num_layers * time * batch * hidden
    eps = 1e-6

    def loss_at(flat):
      deltas = flat.reshape(num_layers, time, batch, hidden)
      return _reference_loss(model, params, inputs, labels, list(deltas))

    basis = jnp.eye(size) * eps
    losses = jax.jit(jax.vmap(loss_at))(jnp.concatenate([basis, -basis]))
    fd = (losses[:size] - losses[size:]) / (2 * eps)
    fd = np.asarray(fd).reshape(num_layers, time, batch, hidden)
    want = np.linalg.norm(fd, axis=-1).mean(axis=-1)  # per-example norm, mean over batch
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)
  assert np.all(want > 0)


def test_lstm_carry_norm_matches_finite_differences_in_h_and_c():
  # state="carry": the gradient reaching (h_t, c_t), against central differences of a plain
  # loop whose h_t and c_t are both perturbed.
  time, batch, hidden = 5, 2, 3
  with jax.enable_x64(True):
    model = models.SequenceModel(cell="lstm", input_size=2, hidden_size=hidden, num_outputs=1)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.PRNGKey(2)))
    cell, p = model.recurrent_cell, params["rnn"][0]["fwd"]
    rng = np.random.default_rng(1)
    inputs = jnp.asarray(rng.uniform(size=(batch, time, 2)))
    labels = jnp.asarray(rng.uniform(size=(batch,)))

    def loss_at(flat):
      dh, dc = flat.reshape(2, time, batch, hidden)
      h = c = jnp.zeros((batch, hidden), jnp.float64)
      for t in range(time):
        (h, c), _ = cell.step(p, (h, c), inputs[:, t])
        h, c = h + dh[t], c + dc[t]
      pred = h @ params["head"]["w"] + params["head"]["b"]
      return jnp.mean(jnp.square(pred[:, 0] - labels))

    size, eps = 2 * time * batch * hidden, 1e-6
    basis = jnp.eye(size) * eps
    losses = jax.jit(jax.vmap(loss_at))(jnp.concatenate([basis, -basis]))
    fd = np.asarray((losses[:size] - losses[size:]) / (2 * eps)).reshape(2, time, batch, hidden)
    batch_dict = {"inputs": inputs, "labels": labels}
    got = {state: np.asarray(diagnostics.gradient_norm_through_time(model, params, batch_dict,
                                                                    state=state))
           for state in ("h", "carry")}
  want_h = np.linalg.norm(fd[0], axis=-1).mean(axis=-1)
  want_carry = np.sqrt(np.sum(np.square(fd), axis=(0, -1))).mean(axis=-1)
  np.testing.assert_allclose(got["h"], want_h, rtol=1e-6, atol=1e-10)
  np.testing.assert_allclose(got["carry"], want_carry, rtol=1e-6, atol=1e-10)
  assert np.all(got["carry"][:-1] > got["h"][:-1])  # c_t carries gradient of its own...
  assert got["carry"][-1] == pytest.approx(got["h"][-1])  # ...except after the last step.
  with pytest.raises(ValueError, match="state="):
    diagnostics.gradient_norm_through_time(model, params, batch_dict, state="c")


def test_probe_gradients_respect_truncation():
  model = models.SequenceModel(cell="rnn", input_size=2, hidden_size=4, num_outputs=1,
                               truncation=3)
  params = model.init(jax.random.PRNGKey(0))
  batch = {"inputs": jnp.ones((2, 8, 2)), "labels": jnp.ones((2,))}
  norms = np.asarray(jax.jit(functools.partial(diagnostics.gradient_norm_through_time, model))(
      params, batch))
  # The last step's loss reaches back exactly 3 steps: h_4 (and earlier) get nothing.
  assert np.all(norms[5:] > 0) and np.all(norms[:5] == 0)


def test_bidirectional_and_tokens_and_lengths_run():
  model = models.SequenceModel(cell="gru", input_kind="tokens", input_size=20, embed_size=4,
                               hidden_size=5, bidirectional=True, num_layers=2, num_outputs=2)
  params = model.init(jax.random.PRNGKey(0))
  batch = {"inputs": jnp.array([[3, 4, 5, 0], [6, 7, 8, 9]]), "lengths": jnp.array([3, 4]),
           "labels": jnp.array([0, 1])}
  fwd, bwd = jax.jit(lambda p, b: [diagnostics.gradient_norm_through_time(
      model, p, b, direction=d) for d in ("fwd", "bwd")])(params, batch)
  assert fwd.shape == bwd.shape == (4,)
  assert np.all(np.isfinite(fwd)) and np.all(np.isfinite(bwd))
  stats = jax.jit(functools.partial(diagnostics.gate_statistics, model))(params, batch)
  assert set(stats) == {f"layer{l}/{g}_{s}" for l in (0, 1) for g in ("update", "reset")
                        for s in ("mean", "saturated")}


@pytest.mark.parametrize("cell,options", [
    ("lstm", {}), ("lstm", {"peephole": True}), ("lstm", {"cifg": True, "peephole": True}),
    ("gru", {}), ("gru", {"reset_after": False})])
def test_gate_equations_reproduce_the_cell_step(cell, options):
  model = models.SequenceModel(cell=cell, cell_options=tuple(sorted(options.items())),
                               input_size=3, hidden_size=4, num_outputs=1)
  params = model.init(jax.random.PRNGKey(2))["rnn"][0]["fwd"]
  if "b_hn" in params:
    params["b_hn"] = params["b_hn"] + 0.3
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) * 0.5
  gates = diagnostics.gate_function(model)
  if cell == "lstm":
    c = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    g = gates(params, (h, c), x)
    c_new = g["forget"] * c + g["input"] * g["candidate"]
    want = (g["output"] * jnp.tanh(c_new), c_new)
    got, _ = model.recurrent_cell.step(params, (h, c), x)
  else:
    g = gates(params, h, x)
    want = (1 - g["update"]) * g["candidate"] + g["update"] * h
    got, _ = model.recurrent_cell.step(params, h, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_gate_statistics_values_and_plain_cells():
  model = models.SequenceModel(cell="lstm", cell_options=(("forget_bias", 10.0),),
                               input_size=2, hidden_size=3, num_outputs=1)
  params = model.init(jax.random.PRNGKey(0))
  batch = {"inputs": jnp.zeros((2, 5, 2)), "labels": jnp.zeros((2,))}
  stats = jax.jit(functools.partial(diagnostics.gate_statistics, model))(params, batch)
  assert float(stats["layer0/forget_mean"]) > 0.99
  assert float(stats["layer0/forget_saturated"]) == 1.0
  assert abs(float(stats["layer0/input_mean"]) - 0.5) < 1e-6
  plain = models.SequenceModel(cell="rnn", input_size=2, hidden_size=3, num_outputs=1)
  assert diagnostics.gate_statistics(plain, plain.init(jax.random.PRNGKey(0)), batch) == {}


def test_memory_horizon():
  assert diagnostics.memory_horizon([1e-5, 1e-3, 0.5, 1.0], 0.01) == 1
  assert diagnostics.memory_horizon([1e-5, 0.02, 0.5, 1.0], 0.01) == 2
  assert diagnostics.memory_horizon([0.02, 0.02, 0.5, 1.0], 0.01) == 3
  assert diagnostics.memory_horizon([1.0, 0.001, 1.0], 0.01) == 0
  assert diagnostics.memory_horizon([1.0, 0.0], 0.01) == 0
  with pytest.raises(ValueError):
    diagnostics.memory_horizon([], 0.01)


def test_make_diagnostics_record():
  model = models.SequenceModel(cell="gru", input_size=2, hidden_size=4, num_outputs=1)
  params = model.init(jax.random.PRNGKey(0))
  batch = {"inputs": np.ones((3, 7, 2), np.float32), "labels": np.ones((3,), np.float32)}
  record = diagnostics.make_diagnostics(model, batch)(params)
  assert len(record["grad_norm_through_time"]) == 7
  assert 0 <= record["memory_horizon"] <= 6
  assert "layer0/update_mean" in record


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chrono_init_lets_the_gradient_reach_back_at_init(cell):
  # Why chrono_init exists: at init a GRU with zero biases keeps ~half its state per step and
  # an LSTM with forget bias 1 ~73%, so the gradient from the loss dies within a few dozen
  # steps (the GRU's underflows to exactly 0 here); with keep-gate biases ~ log(U(1, T - 1))
  # most units keep their state for ~T steps and the gradient reaches step 0.
  time = 150
  rng = np.random.default_rng(0)
  batch = {"inputs": jnp.asarray(rng.uniform(size=(16, time, 2)), jnp.float32),
           "labels": jnp.asarray(rng.uniform(size=(16,)), jnp.float32)}
  ratios, horizons = {}, {}
  for chrono in (0, time):
    model = models.SequenceModel(cell=cell, cell_options=(("chrono_init", chrono),),
                                 input_size=2, hidden_size=32, num_outputs=1)
    norms = np.asarray(diagnostics.gradient_norm_through_time(
        model, model.init(jax.random.PRNGKey(0)), batch, state="carry"))
    ratios[chrono] = norms[0] / norms[-1]
    horizons[chrono] = diagnostics.memory_horizon(norms)
  assert ratios[0] < 1e-3 and ratios[time] > 0.05, ratios
  assert horizons[0] < 60 and horizons[time] == time - 1, horizons


@pytest.mark.parametrize("cell,bidirectional,direction", [
    ("gru", False, "fwd"), ("lstm", False, "fwd"), ("lstm", True, "bwd"), ("rnn", True, "fwd")])
def test_padded_batch_gives_what_its_sequences_give_unpadded(cell, bidirectional, direction):
  """Each sequence run alone at its own length, its norms aligned by its last step and
  averaged over the sequences that reach back that far: that is the padded batch's curve."""
  model = models.SequenceModel(cell=cell, input_kind="tokens", input_size=30, embed_size=4,
                               hidden_size=5, num_outputs=2, bidirectional=bidirectional)
  params = model.init(jax.random.PRNGKey(1))
  lengths = [4, 9, 2, 12, 7]
  width = 12
  rng = np.random.default_rng(0)
  ids = np.zeros((len(lengths), width), np.int32)
  for b, n in enumerate(lengths):
    ids[b, :n] = rng.integers(2, 30, n)
  labels = np.array([0, 1, 1, 0, 1])
  batch = {"inputs": ids, "lengths": np.array(lengths), "labels": labels}
  got = np.asarray(diagnostics.gradient_norm_through_time(model, params, batch, state="carry",
                                                          direction=direction))
  per_sequence = []
  for b, n in enumerate(lengths):
    def loss(logits, one):  # This example's share of the batch-mean loss.
      return models.per_example_loss(model, logits, one["labels"])[0].sum() / len(lengths)
    alone = {"inputs": ids[b:b + 1, :n], "labels": labels[b:b + 1]}
    per_sequence.append(np.asarray(diagnostics.gradient_norm_through_time(
        model, params, alone, state="carry", direction=direction, loss_fn=loss)))
  want = np.zeros(width)
  for j in range(width):  # j steps before each sequence's end.
    reached = [norms[n - 1 - j] for norms, n in zip(per_sequence, lengths) if j < n]
    want[width - 1 - j] = np.mean(reached) if reached else 0.0
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_memory_horizon_does_not_depend_on_the_padding_width():
  model = models.SequenceModel(cell="gru", input_kind="tokens", input_size=30, embed_size=4,
                               hidden_size=5, num_outputs=2)
  params = model.init(jax.random.PRNGKey(2))
  horizons = []
  for width in (4, 12):
    ids = np.zeros((1, width), np.int32)
    ids[0, :4] = [5, 6, 7, 8]
    batch = {"inputs": ids, "lengths": np.array([4]), "labels": np.array([1])}
    norms = diagnostics.gradient_norm_through_time(model, params, batch, state="carry")
    horizons.append(diagnostics.memory_horizon(norms, 1e-6))
    assert np.all(np.asarray(norms)[:width - 4] == 0)  # No step of the sequence there.
  assert horizons == [3, 3]
