"""Training where features meet: dropout x devices, skipped steps x schedules, logging x epochs,
resume x the config schema, the finite guard x every training path, registered datasets.

Each test compares with something computed another way: the same rows without the split over
devices, an optimizer that never saw the skipped batch, every step logged, a run trained
straight through.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from rnn_jax import ablate, config as config_lib, data, engine, lm, models, recurrent, reporting, train

from test_train import latest_params, run, tiny_config


# ----------------------------------------------------------------------------- dropout x devices

def params_after_training_in_modes(config, model, batches, modes=("jit", "sharded", "pmap")):
  """{mode: params} after training `model` from seed 0 on `batches` in each device mode."""
  tx, schedule = train.build_optimizer(config, 10)
  results = {}
  for mode in modes:
    runner = train.Runner(mode, model, tx, schedule)
    state = runner.put_state(train.create_train_state(model, tx, seed=0))
    for batch in batches:
      state, _ = runner.train(state, batch)
    results[mode] = runner.get_state(state).params
  return results


@pytest.mark.parametrize("dataset", ["mnist", pytest.param("imdb_reviews", marks=pytest.mark.slow)])
def test_jit_sharded_and_pmap_agree_with_dropout_on(dataset):
  """Dropout masks depend on the example (its index in the global batch), not on which device
  holds it, so the three ways to use 4 devices train the same parameters."""
  assert jax.device_count() == 4
  config = tiny_config(dataset=dataset, batch_size=32, max_len=20, vocab_size=50, embed_size=8,
                       dropout_rate=0.3, recurrent_dropout_rate=0.3, num_layers=2)
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config)
  batches = [b for _, b in zip(range(3), task.train_batches(0))]
  model = train.build_model(config, task)
  results = params_after_training_in_modes(config, model, batches)
  plain_model = dataclasses.replace(model, dropout_rate=0.0, recurrent_dropout_rate=0.0)
  plain = params_after_training_in_modes(config, plain_model, batches, ("jit",))["jit"]
  # Dropout is on (the runs differ from a run without it) ...
  assert not np.allclose(results["jit"]["head"]["w"], plain["head"]["w"], atol=1e-4)
  # ... and the same in every mode.
  for mode in ("sharded", "pmap"):
    for a, b in zip(jax.tree.leaves(results["jit"]), jax.tree.leaves(results[mode])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("dropout_mode", ["outputs",
                                          pytest.param("cell_inputs", marks=pytest.mark.slow)])
def test_a_row_draws_the_same_masks_whatever_the_rest_of_the_batch(dropout_mode):
  """Each row's masks come from fold_in(key, its global index): computing rows 4..7 alone
  (with their offset) gives exactly those rows of the whole batch, with padding, both
  directions, two layers and either dropout mode."""
  model = models.SequenceModel(cell="gru", input_size=3, hidden_size=5, num_layers=2,
                               num_outputs=2, dropout_rate=0.4, recurrent_dropout_rate=0.4,
                               bidirectional=True, dropout_mode=dropout_mode)
  params = model.init(jax.random.key(0))
  xs = jax.random.normal(jax.random.key(1), (8, 6, 3))
  lengths = jnp.array([6, 5, 4, 3, 6, 2, 1, 6])
  key = jax.random.key(7)
  apply = jax.jit(lambda xs, lengths, key: model.apply(params, xs, lengths, key=key))
  whole = apply(xs, lengths, key)
  half = apply(xs[4:], lengths[4:], recurrent.example_keys(key, 4, offset=4))
  np.testing.assert_allclose(half, whole[4:], rtol=1e-6, atol=1e-6)
  first = apply(xs[:4], lengths[:4], key)
  np.testing.assert_allclose(first, whole[:4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(whole, model.apply(params, xs, lengths), atol=1e-4)  # Dropout acts.


@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_multi_device_steps_hand_back_metrics_on_one_device_and_finish_on_cpu(mode,
                                                                              monkeypatch):
  """On CPU, `Runner.train` returns with its step finished and the metrics on one device, so
  no queue of multi-device programs can build up behind a step (see `Runner`); the metrics
  equal the jit run's."""
  model = models.SequenceModel(cell="gru", input_size=3, hidden_size=8, num_outputs=2)
  tx = optax.sgd(0.1)
  batch = {"inputs": np.random.default_rng(0).normal(size=(8, 5, 3)).astype(np.float32),
           "lengths": np.array([5, 4, 3, 5, 2, 1, 5, 5], np.int32),
           "labels": np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32)}
  metrics, waited = {}, []
  block_until_ready = jax.block_until_ready
  monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(x) or block_until_ready(x))
  for m in ("jit", mode):
    runner = train.Runner(m, model, tx)
    state, metrics[m] = runner.train(runner.put_state(train.create_train_state(model, tx, 0)),
                                     batch)
    # The step was waited for inside `train` (not for jit: nothing queues behind one device).
    assert [x is state for x in waited] == ([] if m == "jit" else [True]), m
    waited.clear()
  assert all(len(x.devices()) == 1 for x in jax.tree.leaves(metrics[mode]))
  for k in metrics["jit"]:
    np.testing.assert_allclose(metrics[mode][k], metrics["jit"][k], rtol=1e-5, err_msg=k)


_MANY_STEPS_ON_ONE_CPU = textwrap.dedent("""
    import os, sys
    os.sched_setaffinity(0, {int(sys.argv[2])})  # Before JAX starts its threads.
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                               "--xla_cpu_collective_call_terminate_timeout_seconds=20")
    import numpy as np, optax
    from rnn_jax import engine, models, train
    model = models.SequenceModel(cell="lstm", input_size=4, hidden_size=32, num_layers=3,
                                 num_outputs=3, block="residual")
    tx = optax.adam(1e-3)
    runner = train.Runner(sys.argv[1], model, tx)
    state = runner.put_state(train.create_train_state(model, tx, seed=0))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.normal(size=(16, 100, 4)).astype(np.float32),
             "lengths": np.full((16,), 100, np.int32),
             "labels": rng.integers(0, 3, 16).astype(np.int32)}
    totals = None
    for _ in range(150):  # As `engine.fit` steps between two logs: no wait on the device.
      state, metrics = runner.train(state, batch)
      totals = engine.add_step_metrics(totals, metrics)
    runner.get_state(state)
    print("finished")
""")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_multi_device_training_survives_a_contended_cpu(mode):
  """150 steps of a 4-device run squeezed onto one busy core, stepped as `engine.fit` does.
  Before steps were kept one in flight, the pmap run aborted inside XLA in about half of such
  runs (a step's all-reduce waited for a replica whose thread was held by queued launches);
  the test above checks the mechanism itself on every run."""
  cpu = str(min(os.sched_getaffinity(0)))
  hog = subprocess.Popen([sys.executable, "-c", "import os, sys\n"
                          "os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass", cpu])
  try:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _MANY_STEPS_ON_ONE_CPU, mode, cpu], env=env,
                          capture_output=True, text=True, timeout=600)
  finally:
    hog.kill()
    hog.wait()
  assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-3000:]


# ----------------------------------------------------------------------------- skipped steps

def test_logged_learning_rate_is_the_one_the_update_used_after_a_skipped_step():
  """A NaN batch is skipped: Adam's count and the schedule stand still. The update after it
  must be the one an optimizer that never saw the NaN batch makes, and the logged rate the
  one it used."""
  config = tiny_config(lr_schedule="cosine", learning_rate=0.05)
  with tfds.testing.mock_data(num_examples=128):
    task = data.load(config)
  model = train.build_model(config, task)
  tx, schedule = train.build_optimizer(config, 6)
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule))
  b1, b2, b3 = [b for _, b in zip(range(3), task.train_batches(0))]
  nan = dict(b2, inputs=np.full_like(b2["inputs"], np.nan))
  state = train.create_train_state(model, tx, seed=0)
  rates = []
  for batch in (b1, nan, b3):
    state, metrics = step(state, batch)
    rates.append(float(metrics["learning_rate"]))
  assert int(state.nonfinite_steps) == 1

  # Independent: optax alone on the two good batches (no dropout in this config).
  fresh = train.create_train_state(model, tx, seed=0)
  params, opt_state = fresh.params, tx.init(fresh.params)
  for batch in (b1, b3):
    def loss(p, batch=batch):
      logits = model.apply(p, batch["inputs"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rates, [schedule(0), schedule(1), schedule(1)], rtol=1e-6)
  assert rates[2] != pytest.approx(float(schedule(2)))


# ----------------------------------------------------------------------------- epoch metrics

def test_epoch_train_loss_is_the_mean_over_every_step(tmp_path):
  """log_every_steps is how often, not what: the epoch's train_loss of a run logging every
  3rd step equals the mean of all per-step losses of the same run logged at every step."""
  run(tiny_config(log_every_steps=1), tmp_path / "every")
  run(tiny_config(log_every_steps=3), tmp_path / "sparse")
  steps = reporting.read_metrics(str(tmp_path / "every"), "train")
  epochs = reporting.read_metrics(str(tmp_path / "sparse"), "epoch")
  per_epoch = len(steps) // len(epochs)
  assert per_epoch == 6 and len(epochs) == 2
  for e, record in enumerate(epochs):
    losses = [r["loss"] for r in steps[e * per_epoch:(e + 1) * per_epoch]]
    accuracies = [r["accuracy"] for r in steps[e * per_epoch:(e + 1) * per_epoch]]
    np.testing.assert_allclose(record["train_loss"], np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(record["train_accuracy"], np.mean(accuracies), rtol=1e-5)
    assert record["train_steps"] == per_epoch


# ----------------------------------------------------------------------------- resume x schema

@pytest.mark.parametrize("field,value", [("normalize", "standardize"),
                                         ("num_train_examples", 30000),
                                         ("length_buckets", (10,)),
                                         ("learning_rate", 0.01),
                                         ("cell_options", {"forget_bias": 0.0}),
                                         ("dropout_rate", 0.1)])
def test_every_field_that_defines_the_run_is_checked_on_resume(tmp_path, field, value):
  run(tiny_config(num_epochs=1), tmp_path)
  with pytest.raises(ValueError, match=f"{field}: .* -> .*defines the run"):
    run(tiny_config(num_epochs=1, **{field: value}), tmp_path)


def test_how_a_run_is_run_may_change_on_resume_and_the_record_says_so(tmp_path):
  run(tiny_config(num_epochs=1), tmp_path)
  run(tiny_config(num_epochs=2, log_every_steps=5, checkpoint_every_steps=7, eval_batch_size=8,
                  parallel="sharded"), tmp_path)
  resume, = reporting.read_metrics(str(tmp_path), "resume")
  assert resume["step"] == 6 and resume["changed"] == {
      "log_every_steps": [2, 5], "checkpoint_every_steps": [3, 7], "eval_batch_size": [40, 8],
      "parallel": ["jit", "sharded"], "num_epochs": [1, 2]}


def test_a_finished_run_extended_equals_a_run_trained_straight(tmp_path):
  """num_epochs may grow under a constant learning rate: 1 epoch then extended to 2 gives
  bit for bit the parameters of 2 epochs in one go (same data order, same dropout keys)."""
  config = tiny_config(dropout_rate=0.2)
  run(config, tmp_path / "straight")
  run(tiny_config(dropout_rate=0.2, num_epochs=1), tmp_path / "extended")
  summary = run(config, tmp_path / "extended")
  assert summary["resumed_from_step"] == 6 and summary["steps"] == 12
  straight, _ = latest_params(tmp_path / "straight", config)
  extended, _ = latest_params(tmp_path / "extended", config)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(extended)):
    np.testing.assert_array_equal(a, b)


def test_budget_cannot_grow_under_a_decaying_schedule_or_shrink(tmp_path):
  run(tiny_config(num_epochs=1, lr_schedule="cosine"), tmp_path / "cosine")
  with pytest.raises(ValueError, match="num_epochs: 1 -> 2 .*'cosine' schedule"):
    run(tiny_config(num_epochs=2, lr_schedule="cosine"), tmp_path / "cosine")
  run(tiny_config(num_epochs=2), tmp_path / "constant")
  with pytest.raises(ValueError, match="num_epochs: 2 -> 1 .*may only grow"):
    run(tiny_config(num_epochs=1), tmp_path / "constant")


# ----------------------------------------------------------------------------- config checks

def test_readout_all_is_refused_with_the_reason(tmp_path):
  with pytest.raises(ValueError, match="readout='all' .*one label per sequence"):
    run(tiny_config(readout="all"), tmp_path)
  assert not (tmp_path / "config.json").exists()


def test_a_registered_dataset_passes_validation_and_trains(tmp_path):
  def loader(config, workdir=None, **kwargs):
    return data.LOADERS["adding"](config, workdir, **kwargs)
  data.register("my_adding", loader)
  try:
    config = tiny_config(dataset="my_adding", sequence_length=6, num_train_examples=64,
                         num_epochs=1)
    train.validate(config)
    summary = train.train_and_evaluate(config, str(tmp_path / "registered"))
    builtin = train.train_and_evaluate(tiny_config(**{**config.to_dict(), "dataset": "adding"}),
                                       str(tmp_path / "builtin"))
    assert summary["steps"] == builtin["steps"] > 0
    assert summary["test_loss"] == builtin["test_loss"]
  finally:
    data.LOADERS.pop("my_adding")


# ----------------------------------------------------------------------------- finite guard

def test_vmapped_seeds_never_checkpoint_past_a_nan(tmp_path, monkeypatch):
  from test_train import _poison_one_batch
  _poison_one_batch(monkeypatch, at_step=5)
  sweep = ablate.defaults()
  base = sweep.base
  base.update(dataset="adding", sequence_length=6, num_train_examples=128, validation_size=0,
              batch_size=16, eval_batch_size=32, hidden_size=4, num_epochs=1,
              log_every_steps=100, checkpoint_every_steps=3, parallel="jit", progress_bar=False,
              plots=False)
  sweep.sweep = {"cell": ["gru"]}
  sweep.seeds = [0, 1]
  with pytest.raises(engine.NonFiniteLossError, match=r"at step 4\b") as error:
    ablate.run_sweep(sweep, str(tmp_path))
  for seed in (0, 1):
    ckpts = os.listdir(os.path.join(ablate.run_dir(str(tmp_path), "cell=gru", seed),
                                    "checkpoints", "latest"))
    assert sorted(c for c in ckpts if c.isdigit()) == ["3"]
  error.match("last good checkpoint is step 3")


def _lm_setup(**overrides):
  streams = {k: np.arange(n, dtype=np.int32) % 14 + 2
             for k, n in (("train", 2400), ("validation", 300), ("test", 300))}
  config = lm.defaults()
  config.update({**dict(vocab_size=16, embed_size=4, hidden_size=4, batch_size=8, window=5,
                       eval_window=10, num_epochs=1, log_every_steps=5, cell="gru"),
                 **overrides})
  return config, streams


def test_lm_skips_a_nonfinite_window_with_the_shared_guard():
  config, streams = _lm_setup()
  model = lm.build_model(config)
  tx, _ = train.build_optimizer(config, 10)
  state = train.create_train_state(model, tx, 0)
  step = lm.jit_step(model, tx)
  rows = lm.batchify(streams["train"], 8)
  carries = lm.zero_carries(model, 8)
  state, carries, _ = step(state, carries, rows[:, :5], rows[:, 1:6])
  before = jax.device_get(state.params)
  poisoned = state.replace(params={**state.params, "head": {
      "w": state.params["head"]["w"] * np.nan, "b": state.params["head"]["b"]}})
  after, carries2, metrics = step(poisoned, carries, rows[:, 5:10], rows[:, 6:11])
  assert not np.isfinite(float(metrics["loss"]))
  assert int(after.nonfinite_steps) == 1 and int(after.first_nonfinite_step) == 1
  # Nothing was applied (the params are the poisoned ones, untouched) and the carries restart.
  np.testing.assert_array_equal(after.params["rnn"][0]["fwd"]["w_x"],
                                before["rnn"][0]["fwd"]["w_x"])
  assert all(np.all(np.asarray(c) == 0) for c in jax.tree.leaves(carries2))


def test_lm_refuses_a_changed_config_and_keeps_its_record(tmp_path):
  config, streams = _lm_setup()
  lm.train_lm(config, str(tmp_path), streams=streams)
  recorded = (tmp_path / "config.json").read_text()
  changed, _ = _lm_setup(hidden_size=8)
  with pytest.raises(ValueError, match="hidden_size: 4 -> 8"):
    lm.train_lm(changed, str(tmp_path), streams=streams)
  assert (tmp_path / "config.json").read_text() == recorded
  window, _ = _lm_setup(window=7)
  with pytest.raises(ValueError, match="window: 5 -> 7"):
    lm.train_lm(window, str(tmp_path), streams=streams)


def test_lm_epoch_train_loss_is_the_mean_over_every_step(tmp_path):
  config, streams = _lm_setup(log_every_steps=1)
  lm.train_lm(config, str(tmp_path / "every"), streams=streams)
  sparse, _ = _lm_setup(log_every_steps=7)
  lm.train_lm(sparse, str(tmp_path / "sparse"), streams=streams)
  losses = [r["loss"] for r in reporting.read_metrics(str(tmp_path / "every"), "train")]
  epoch = reporting.read_metrics(str(tmp_path / "sparse"), "epoch")[0]
  assert len(losses) == (2400 // 8 - 1) // 5
  np.testing.assert_allclose(epoch["train_loss"], np.mean(losses), rtol=1e-5)
  assert epoch["train_steps"] == len(losses)


def test_config_fields_split_into_run_and_running():
  fields = set(config_lib.defaults().keys())
  assert config_lib.RUNNING_FIELDS < fields
  assert {"log_every_steps", "checkpoint_every_steps", "parallel"} <= config_lib.RUNNING_FIELDS
  assert not {"normalize", "num_train_examples", "length_buckets", "seed",
              "learning_rate"} & config_lib.RUNNING_FIELDS
  old = json.loads(config_lib.defaults().to_json_best_effort())
  assert config_lib.resume_conflicts(old, {**old, "plots": False}) == []
  del old["length_buckets"]  # Written before the field existed: counts as its default.
  assert config_lib.resume_conflicts(old, json.loads(
      config_lib.defaults().to_json_best_effort())) == []
