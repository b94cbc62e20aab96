"""Model shapes, parameter counts, padding invariance and gradient coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import models

IMAGE = dict(input_kind="features", input_size=28, hidden_size=16, num_outputs=10)
TOKENS = dict(input_kind="tokens", input_size=50, embed_size=8, hidden_size=16, num_outputs=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("readout,expected", [("last", (4, 10)), ("mean", (4, 10)),
                                              ("all", (4, 28, 10))])
def test_image_rows_model_shapes(cell, readout, expected):
  model = models.SequenceModel(cell=cell, readout=readout, num_layers=2, **IMAGE)
  params = model.init(jax.random.key(0))
  logits = jax.jit(model.apply)(params, jnp.ones((4, 28, 28)))
  assert logits.shape == expected


def test_num_params_matches_the_formula():
  model = models.SequenceModel(cell="lstm", num_layers=2, bidirectional=True, **IMAGE)
  params = model.init(jax.random.key(0))
  h = 16
  layer1 = 2 * (28 * 4 * h + h * 4 * h + 4 * h)
  layer2 = 2 * (2 * h * 4 * h + h * 4 * h + 4 * h)
  head = 2 * h * 10 + 10
  assert models.num_params(params) == layer1 + layer2 + head


@pytest.mark.parametrize("readout", ["last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_token_model_ignores_padding(readout, bidirectional):
  model = models.SequenceModel(cell="gru", readout=readout, bidirectional=bidirectional,
                               **TOKENS)
  params = model.init(jax.random.key(1))
  ids = jax.random.randint(jax.random.key(2), (3, 12), 2, 50)
  lengths = jnp.array([12, 7, 3])
  padded = jnp.where(jnp.arange(12)[None] < lengths[:, None], ids, 0)
  garbage = jnp.where(jnp.arange(12)[None] < lengths[:, None], ids, 17)
  a = model.apply(params, padded, lengths)
  np.testing.assert_allclose(a, model.apply(params, garbage, lengths), atol=1e-6)
  for b, n in enumerate(lengths.tolist()):  # Same as each review alone, unpadded.
    alone = model.apply(params, ids[b:b + 1, :n], jnp.array([n]))
    np.testing.assert_allclose(a[b:b + 1], alone, atol=1e-5)


@pytest.mark.parametrize("cell,options", [("rnn", {}), ("irnn", {}), ("lstm", {}),
                                          ("lstm", {"peephole": True, "cifg": True}),
                                          ("gru", {}), ("gru", {"reset_after": False})])
def test_every_parameter_receives_a_gradient(cell, options):
  model = models.SequenceModel(cell=cell, cell_options=tuple(sorted(options.items())),
                               num_layers=2, bidirectional=True, **TOKENS)
  params = model.init(jax.random.key(0))
  ids = jax.random.randint(jax.random.key(1), (4, 9), 1, 50)

  def loss(params):
    return jnp.sum(jax.nn.softplus(model.apply(params, ids, jnp.array([9, 5, 9, 2]))))

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    if name == "['embed']":  # Only rows of ids that occur get a gradient.
      g = g[np.unique(np.asarray(ids))]
    assert np.all(np.isfinite(g)), name
    assert np.any(np.asarray(g) != 0), f"{name} received no gradient"


def test_dropout_only_with_a_key():
  model = models.SequenceModel(cell="lstm", dropout_rate=0.5, recurrent_dropout_rate=0.5,
                               **IMAGE)
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 28, 28))
  eval_a, eval_b = model.apply(params, x), model.apply(params, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply(params, x, key=jax.random.key(2))
  assert not np.allclose(train, eval_a)
  np.testing.assert_array_equal(train, model.apply(params, x, key=jax.random.key(2)))


def test_bad_model_settings_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown cell 'lstn'.*Known cells"):
    models.SequenceModel(cell="lstn", **IMAGE)
  with pytest.raises(ValueError, match="readout"):
    models.SequenceModel(readout="first", **IMAGE)
  with pytest.raises(ValueError, match="hidden_size must be >= 1"):
    models.SequenceModel(**{**IMAGE, "hidden_size": -3})


def test_cell_inputs_dropout_leaves_the_top_output_and_the_read_out_alone():
  """dropout_mode='cell_inputs' (Keras' cell dropout=): what enters each layer is dropped,
  the top layer's output and the read-out state are not, unlike 'outputs'."""
  from rnn_jax import recurrent  # pylint: disable=g-import-not-at-top
  ids = jax.random.randint(jax.random.key(3), (6, 9), 2, 30)
  key = jax.random.key(4)
  for mode, top_dropped in (("cell_inputs", False), ("outputs", True)):
    model = models.SequenceModel(cell="rnn", input_kind="tokens", input_size=30, embed_size=8,
                                 hidden_size=16, num_layers=2, num_outputs=2,
                                 dropout_rate=0.5, dropout_mode=mode)
    params = model.init(jax.random.key(0))
    k_features, _ = recurrent.split_keys(recurrent.example_keys(key, 6), 2)
    finals, ys = model.features(params, ids, key=k_features)
    assert bool(jnp.any(ys == 0)) == top_dropped
    undropped = finals[-1] @ params["head"]["w"] + params["head"]["b"]
    logits = model.apply(params, ids, key=key)
    assert np.allclose(logits, undropped, atol=1e-6) != top_dropped
    assert not np.allclose(logits, model.apply(params, ids), atol=1e-4)  # Dropout acts.
