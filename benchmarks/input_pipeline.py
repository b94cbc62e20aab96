"""Input pipeline speed: train examples per second that `Task.train_batches` delivers, per task.

    python -m benchmarks.input_pipeline [--data_dir DIR] [--num_batches 500]

Prints a Markdown table. Uses the real data when the TFDS data dir (--data_dir, else
$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the repo, as tests/conftest.py
does) holds it, else tfds mock data (random examples, marked 'mock'), so the figures
are the pipeline's own cost: the time to build NumPy batches, with no training step.
`measure_pipeline` is the reusable part (e.g. to put the train-step rate next to it).
"""

from __future__ import annotations

import argparse
import os
import time

import ml_collections

from rnn_jax import data

CASES = (  # (label, config overrides)
    ('mnist rows', dict(dataset='mnist', sequence='rows')),
    ('mnist pixels', dict(dataset='mnist', sequence='pixels')),
    ('mnist permuted_pixels', dict(dataset='mnist', sequence='permuted_pixels')),
    ('imdb max_len=80', dict(dataset='imdb_reviews')),
    ('imdb max_len=80, buckets (20, 40)', dict(dataset='imdb_reviews', length_buckets=(20, 40))),
)
MOCK_EXAMPLES = 2000
_SHARED_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'shared', 'tensorflow_datasets')


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
      {**data.DEFAULTS, 'batch_size': 128, 'eval_batch_size': 1000, 'seed': 0})
  config.update(overrides)
  return config


def measure_pipeline(config, num_batches: int, *, task: data.Task | None = None) -> float:
  """Examples per second of this process's train batches over `num_batches` batches.

  Loading (reading, tokenising) is not timed; epochs follow one another as in training.
  Pass `task` to reuse one already loaded from `config`.
  """
  task = task or data.load(config)
  next(task.train_batches(0))  # first-touch costs (page faults, lazy imports) are not timed
  examples, batches, epoch = 0, 0, 0
  start = time.perf_counter()
  while batches < num_batches:
    for batch in task.train_batches(epoch):
      examples += len(batch['labels'])
      batches += 1
      if batches == num_batches:
        break
    epoch += 1
  return examples / (time.perf_counter() - start)


def _load(config) -> tuple[data.Task, str, float]:
  """(task, 'real' or 'mock', load seconds)."""
  start = time.perf_counter()
  try:
    task, source = data.load(config), 'real'
  except data.DatasetNotPreparedError:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict({**config.to_dict(), 'download': True,
                                        'validation_size': 200})
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):  # download is a no-op here
      task, source = data.load(config), 'mock'
  return task, source, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  default_dir = os.environ.get('TFDS_DATA_DIR') or (
      _SHARED_DATA_DIR if os.path.isdir(_SHARED_DATA_DIR) else None)
  parser.add_argument('--data_dir', default=default_dir, help='TFDS data dir')
  parser.add_argument('--num_batches', type=int, default=500)
  parser.add_argument('--batch_size', type=int, default=128)
  args = parser.parse_args()
  print('| task | data | batch | load s | examples/s |')
  print('|---|---|---:|---:|---:|')
  for label, overrides in CASES:
    config = make_config(data_dir=args.data_dir, batch_size=args.batch_size, **overrides)
    task, source, load_s = _load(config)
    rate = measure_pipeline(config, args.num_batches, task=task)
    print(f'| {label} | {source} | {config.batch_size} | {load_s:.1f} | {rate:,.0f} |', flush=True)


if __name__ == '__main__':
  main()
