"""Training: one real step, a short run, parallel equality, exact resume, NaN guard, config errors."""

import functools
import json
import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base, mnist_lstm
from rnn_jax import checkpoints, data, engine, models, train

import fault_injection as faults
from conftest import real_data_dir


def tiny_config(**overrides):
  """The row-MNIST LSTM made tiny (`runlocal`), reading mock data, with `overrides`."""
  config = mnist_lstm.get_config(runlocal=True)
  defaults = base.get_config()
  config.update(lr_schedule=defaults.lr_schedule, learning_rate=defaults.learning_rate,
                download=True)  # Under tfds.testing.mock_data nothing is downloaded.
  config.update(overrides)
  return config


def run(config, workdir, num_examples=128):
  with tfds.testing.mock_data(num_examples=num_examples):
    return train.train_and_evaluate(config, str(workdir))


def latest_params(workdir, config):
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config, str(workdir))
  model = train.build_model(config, task)
  tx, _ = train.build_optimizer(config, task.steps_per_epoch * config.num_epochs)
  target = train.create_train_state(model, tx, config.seed)
  ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  state, step = ckpt.restore_latest(target)
  return state, step


def test_one_real_train_step_under_mock_data(tmp_path):
  config = tiny_config()
  with tfds.testing.mock_data(num_examples=64):
    task = data.load(config, str(tmp_path))
  model = train.build_model(config, task)
  tx, schedule = train.build_optimizer(config, 10)
  state = train.create_train_state(model, tx, seed=0)
  batch = next(task.train_batches(0))
  assert batch["inputs"].shape == (16, 28, 28)
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule))
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 1
  assert float(metrics["grad_norm"]) > 0
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert all(jax.tree.leaves(changed)), "every parameter should move after one Adam step"


@pytest.mark.parametrize("dataset,cell", [("mnist", "gru"), ("imdb_reviews", "rnn")])
def test_short_train_and_evaluate_writes_everything(tmp_path, dataset, cell):
  config = tiny_config(dataset=dataset, cell=cell, plots=True, max_len=20, vocab_size=50,
                       embed_size=8)
  summary = run(config, tmp_path)
  for key in ("test_accuracy", "best_validation_accuracy", "num_params", "wall_time_s",
              "train_examples_per_s", "compile_time_s"):
    assert summary[key] is not None, key
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["test_accuracy"] == summary["test_accuracy"]
  kinds = [json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert kinds.count("epoch") == 2 and "train" in kinds and "eval" in kinds
  assert (tmp_path / "config.json").exists()
  assert list((tmp_path / "plots").glob("*.png"))
  assert os.listdir(tmp_path / "checkpoints")


def _steps(mode, batches, config, task):
  model = train.build_model(config, task)
  tx, schedule = train.build_optimizer(config, 10)
  runner = train.Runner(mode, model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, seed=0))
  for batch in batches:
    state, _ = runner.train(state, batch)
  return runner.get_state(state)


@pytest.mark.parametrize("dataset", ["mnist", pytest.param("imdb_reviews", marks=pytest.mark.slow)])
def test_jit_sharded_and_pmap_give_the_same_parameters(dataset):
  assert jax.device_count() == 4, "conftest should give 4 fake CPU devices"
  config = tiny_config(dataset=dataset, batch_size=32, max_len=20, vocab_size=50, embed_size=8)
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config)
  batches = [b for _, b in zip(range(3), task.train_batches(0))]
  results = {mode: _steps(mode, batches, config, task) for mode in ("jit", "sharded", "pmap")}
  for mode in ("sharded", "pmap"):
    for a, b in zip(jax.tree.leaves(results["jit"].params), jax.tree.leaves(results[mode].params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("mode", ["jit", "sharded", "pmap"])
def test_runner_hands_out_the_step_it_compiled(mode):
  """`Runner.compiled`: the program `compile` built for these shapes (the global batch under
  "sharded"), a clear error for shapes never compiled, and none under pmap, which keeps none."""
  model = models.SequenceModel(cell="mingru", input_size=3, hidden_size=4, num_outputs=2)
  tx, schedule = train.build_optimizer(tiny_config(), 10)
  runner = train.Runner(mode, model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, seed=0))
  batch = {"inputs": np.ones((8, 5, 3), np.float32), "labels": np.zeros((8,), np.int32)}
  runner.compile(state, batch)
  if mode == "pmap":
    with pytest.raises(ValueError, match="pmap"):
      runner.compiled(batch)
    return
  assert ",5,3]" in runner.compiled(batch).as_text()  # [8 or 8 / devices, time 5, 3 inputs].
  with pytest.raises(KeyError, match="compile"):
    runner.compiled({"inputs": np.ones((8, 6, 3), np.float32), "labels": batch["labels"]})


def test_resume_after_interruption_is_bit_exact(tmp_path, monkeypatch):
  config = tiny_config(dropout_rate=0.1, lr_schedule="cosine")
  run(config, tmp_path / "straight")

  calls = {"n": 0}
  original = train.Runner.train

  def crash_after_five(self, state, batch):
    calls["n"] += 1
    if calls["n"] > 5:
      raise KeyboardInterrupt("simulated kill")
    return original(self, state, batch)

  monkeypatch.setattr(train.Runner, "train", crash_after_five)
  with pytest.raises(KeyboardInterrupt):
    run(config, tmp_path / "resumed")
  monkeypatch.setattr(train.Runner, "train", original)
  _, step = latest_params(tmp_path / "resumed", config)
  assert step == 3  # checkpoint_every_steps=3: steps 4 and 5 are redone.
  summary = run(config, tmp_path / "resumed")
  assert summary["resumed_from_step"] == 3

  straight, s1 = latest_params(tmp_path / "straight", config)
  resumed, s2 = latest_params(tmp_path / "resumed", config)
  assert s1 == s2
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def _poison_one_batch(monkeypatch, at_step):
  monkeypatch.setattr(data.Task, "train_batches", faults.poisoned_train_batches(at_step))


def test_nan_loss_stops_with_the_step_and_last_good_checkpoint(tmp_path, monkeypatch):
  _poison_one_batch(monkeypatch, at_step=5)
  with pytest.raises(engine.NonFiniteLossError, match=r"step 4\b.*last good checkpoint is step 3"):
    run(tiny_config(), tmp_path)
  state, step = latest_params(tmp_path, tiny_config())
  assert step == 3
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_nan_loss_skipped_when_configured(tmp_path, monkeypatch):
  _poison_one_batch(monkeypatch, at_step=5)
  summary = run(tiny_config(nonfinite="skip"), tmp_path)
  assert summary["nonfinite_steps_skipped"] == 1
  assert np.isfinite(summary["test_loss"])


@pytest.mark.parametrize("overrides,message", [
    ({"cell": "lstn"}, "Unknown cell 'lstn'. Known cells: .*lstm"),
    ({"hidden_size": -4}, "hidden_size must be >= 1, got -4"),
    ({"dataset": "mnits"}, "dataset='mnits' is not a known dataset"),
    ({"batch_size": 30}, "batch_size=30 does not divide over 4 devices"),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"dropout_rate": 1.5}, r"dropout_rate must be in \[0, 1\)"),
    ({"cell_options": {"forget_bais": 1.0}}, "no option.*forget_bais"),
])
def test_config_errors_are_clear(tmp_path, overrides, message):
  # A plain dict, as a hand-written config file would give: ConfigDict's own type locking
  # would otherwise catch some of these before validation does.
  config = ml_collections.ConfigDict({**tiny_config().to_dict(), **overrides})
  with pytest.raises(ValueError, match=message):
    run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # Nothing ran.


def test_unknown_field_gets_a_suggestion(tmp_path):
  config = tiny_config()
  config.hiden_size = 4
  with pytest.raises(ValueError, match="unknown field 'hiden_size'. Did you mean 'hidden_size'"):
    run(config, tmp_path)


def test_incompatible_resume_is_refused(tmp_path):
  run(tiny_config(num_epochs=1), tmp_path)
  with pytest.raises(ValueError, match="hidden_size: 8 -> 16"):
    run(tiny_config(num_epochs=1, hidden_size=16), tmp_path)


@pytest.mark.real_data
@pytest.mark.slow
def test_short_run_on_real_mnist_beats_90_percent(tmp_path):
  data_dir = real_data_dir("mnist")
  config = tiny_config(data_dir=data_dir, download=False, hidden_size=64, batch_size=128,
                       eval_batch_size=1000, validation_size=5000, num_epochs=1,
                       log_every_steps=100, checkpoint_every_steps=1000)
  summary = train.train_and_evaluate(config, str(tmp_path))
  print("real MNIST, 1 epoch LSTM-64: test accuracy", summary["test_accuracy"])
  assert summary["test_accuracy"] > 0.90
