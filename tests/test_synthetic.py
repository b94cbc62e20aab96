"""The adding problem: shapes, markers, labels, determinism, splits, and one short training run."""

import numpy as np
import pytest

from configs import base
from rnn_jax import data
from rnn_jax.data import synthetic


def _config(**overrides):
  config = base.get_config(runlocal=True)
  config.update(dataset="adding", validation_size=16, eval_batch_size=32)
  config.update(overrides)
  return config


def test_examples_follow_the_definition():
  inputs, labels = synthetic.adding_problem(500, 11, np.random.default_rng(0))
  assert inputs.shape == (500, 11, 2) and inputs.dtype == np.float32
  assert labels.shape == (500,) and labels.dtype == np.float32
  values, markers = inputs[..., 0], inputs[..., 1]
  assert values.min() >= 0 and values.max() < 1
  assert np.all(markers.sum(1) == 2)
  assert np.all(markers[:, :5].sum(1) == 1) and np.all(markers[:, 5:].sum(1) == 1)
  np.testing.assert_allclose(labels, (values * markers).sum(1), rtol=1e-6)
  with pytest.raises(ValueError, match="sequence_length"):
    synthetic.adding_problem(1, 1, np.random.default_rng(0))


def test_task_splits_are_deterministic_and_test_set_is_shared():
  task = data.load(_config(), process_index=0, process_count=1)
  assert (task.num_classes, task.input_size, task.seq_len) == (0, 2, 10)
  assert task.num_train_examples == 64 and task.num_eval_examples("validation") == 16
  assert task.num_eval_examples("test") == synthetic.TEST_SIZE
  again = data.load(_config(), process_index=0, process_count=1)
  other_seed = data.load(_config(seed=1), process_index=0, process_count=1)
  for split in ("train", "validation", "test"):
    np.testing.assert_array_equal(task.splits[split]["inputs"], again.splits[split]["inputs"])
  assert not np.array_equal(task.splits["train"]["inputs"], other_seed.splits["train"]["inputs"])
  np.testing.assert_array_equal(task.splits["test"]["inputs"], other_seed.splits["test"]["inputs"])
  batch = next(task.train_batches(0))
  assert batch["inputs"].shape == (16, 10, 2) and batch["labels"].dtype == np.float32
  assert "lengths" not in batch
  first_eval = next(task.eval_batches("validation"))
  assert first_eval["mask"].sum() == 16  # 32-row batch, 16 real examples


def test_trains_as_regression(tmp_path):
  from rnn_jax import train
  config = _config(cell="gru", hidden_size=8, num_epochs=2, parallel="jit", progress_bar=False,
                   plots=False, log_every_steps=2, diagnostics_every_steps=4)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["steps"] == 8 and np.isfinite(summary["test_loss"])
  from rnn_jax import reporting
  records = reporting.read_metrics(str(tmp_path), kind="diagnostics")
  assert [r["step"] for r in records] == [4, 8]
  assert len(records[0]["grad_norm_through_time"]) == 10
  assert "layer0/update_mean" in records[0]
