"""Synthetic long-memory tasks: the adding problem (config.dataset = 'adding').

Adding problem (Hochreiter and Schmidhuber 1997, in the form of Le, Jaitly and Hinton 2015):
each example is T = config.sequence_length steps of (value, marker) pairs, inputs float32
[T, 2]. Values are drawn U(0, 1); exactly two markers are 1 (all others 0), one at a uniform
step of the first half [0, T // 2) and one at a uniform step of the second half [T // 2, T).
The label is the float32 sum of the two marked values, in [0, 2]; predicting the mean, 1.0,
gives an MSE of 1/6 ~= 0.167, the baseline a model has to beat. It is a regression task
(`num_classes = 0`): the trainer uses one output and the mean squared error, and counts a
prediction "correct" when it is within 0.04 of the target.

Splits, all deterministic:
- train: `config.num_train_examples` examples from `np.random.default_rng([seed, T, 0])`;
- validation: `config.validation_size` examples from `np.random.default_rng([seed, T, 1])`;
- test: `TEST_SIZE` = 10,000 examples from `np.random.default_rng([TEST_SEED, T])`. The test
  set does not depend on config.seed, so runs with different seeds are scored on the same
  examples.
Train order per epoch follows the common rule (`common.epoch_order(n, seed, epoch)`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from rnn_jax.data import common

TEST_SIZE = 10_000
TEST_SEED = 20_150_403  # Fixed: the same test set for every config.seed.


def adding_problem(num_examples: int, sequence_length: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """`num_examples` adding-problem examples of `sequence_length` steps.

  Returns (inputs float32 [num_examples, sequence_length, 2], labels float32 [num_examples]).
  Channel 0 holds the values, channel 1 the two markers (one in each half of the sequence).
  """
  if sequence_length < 2:
    raise ValueError(f'sequence_length={sequence_length} is too short for the adding problem: '
                     'it needs one marker in each half. Fix: use sequence_length >= 2.')
  half = sequence_length // 2
  values = rng.uniform(0.0, 1.0, (num_examples, sequence_length))
  first = rng.integers(0, half, num_examples)
  second = rng.integers(half, sequence_length, num_examples)
  rows = np.arange(num_examples)
  markers = np.zeros((num_examples, sequence_length))
  markers[rows, first] = 1.0
  markers[rows, second] = 1.0
  inputs = np.stack([values, markers], axis=-1).astype(np.float32)
  labels = (values[rows, first] + values[rows, second]).astype(np.float32)
  return inputs, labels


def dims(config: Mapping[str, Any]) -> tuple[str, int, int]:
  """(input kind, input size, classes: 0 = regression) of the adding problem."""
  del config
  return 'features', 2, 0


def load(config: Mapping[str, Any], workdir=None, *, process_index: int,
         process_count: int) -> common.Task:
  """The adding problem at T = config.sequence_length (see the module docstring)."""
  del workdir  # Everything is regenerated from the seed; nothing to keep.
  length = common.check_int(config, 'sequence_length', 2)
  num_train = common.check_int(config, 'num_train_examples', 1)
  validation_size = common.check_int(config, 'validation_size', 0)
  batch_size, eval_batch_size, seed = common.check_batching(config, process_count)

  def split(n, rng):
    inputs, labels = adding_problem(n, length, rng)
    return {'inputs': inputs, 'label': labels}

  splits = {
      'train': split(num_train, np.random.default_rng([seed, length, 0])),
      'validation': split(validation_size, np.random.default_rng([seed, length, 1])),
      'test': split(TEST_SIZE, np.random.default_rng([TEST_SEED, length])),
  }

  def make_batch(arrays, indices, global_indices):
    del global_indices  # Every batch has the same shape.
    return {'inputs': arrays['inputs'][indices], 'labels': arrays['label'][indices]}

  metadata = {'dataset': 'adding', 'sequence_length': length, 'num_train_examples': num_train,
              'validation_size': validation_size, 'test_size': TEST_SIZE,
              'test_seed': TEST_SEED, 'baseline_mse': 1.0 / 6.0}
  return common.Task(
      name='adding', input_kind='features', seq_len=length, input_size=2, num_classes=0,
      splits=splits, make_batch=make_batch, batch_size=batch_size,
      eval_batch_size=eval_batch_size, seed=seed, metadata=metadata,
      process_index=process_index, process_count=process_count)
