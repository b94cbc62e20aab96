"""Input pipeline speed next to the train step's, per task: the pipeline must never be the
bottleneck (target: pipeline >= 5x the train step's examples/s).

    python -m benchmarks.input_pipeline [--data_dir DIR] [--num_batches 500] [--train_steps 50]

Prints a Markdown table. Uses the real data when the TFDS data dir (--data_dir, else
$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the repo, as tests/conftest.py
does) holds it, else tfds mock data (random examples, marked 'mock'). The pipeline figure is
its own cost (building NumPy batches, no training step); the train-step figure runs the
shipped config's model (configs/mnist_lstm.py, configs/imdb_lstm.py) on those batches with
`train.Runner`, compile excluded.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import ml_collections

from configs import imdb_lstm, mnist_lstm
from rnn_jax import cli, data, train

CASES = (  # (label, task config, config overrides)
    ('mnist rows', mnist_lstm, dict(sequence='rows')),
    ('mnist pixels', mnist_lstm, dict(sequence='pixels')),
    ('mnist permuted_pixels', mnist_lstm, dict(sequence='permuted_pixels')),
    ('imdb max_len=80', imdb_lstm, dict()),
    ('imdb max_len=80, buckets (20, 40)', imdb_lstm, dict(length_buckets=(20, 40))),
)
MOCK_EXAMPLES = 2000
_SHARED_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'shared', 'tensorflow_datasets')


def make_config(task_config, **overrides) -> ml_collections.ConfigDict:
  config = task_config.get_config()
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


def measure_train_step(config, task: data.Task, num_steps: int) -> float:
  """Examples per second of the config's train step on the task's batches (compile excluded)."""
  model = train.build_model(config, task)
  tx, schedule = train.build_optimizer(config, num_steps)
  runner = train.Runner('jit', model, tx, schedule)
  state = runner.put_state(train.create_train_state(model, tx, config.seed))
  batches = [b for _, b in zip(range(num_steps), task.train_batches(0))]
  for shapes in {train._shapes(b): b for b in batches}.values():  # Compile every width.
    runner.compile(state, shapes)
  state, _ = runner.train(state, batches[0])
  jax.block_until_ready(state)
  start = time.perf_counter()
  for batch in batches:
    state, _ = runner.train(state, batch)
  jax.block_until_ready(state)
  return sum(len(b['labels']) for b in batches) / (time.perf_counter() - start)


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
  cli.setup_process()
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  default_dir = os.environ.get('TFDS_DATA_DIR') or (
      _SHARED_DATA_DIR if os.path.isdir(_SHARED_DATA_DIR) else None)
  parser.add_argument('--data_dir', default=default_dir, help='TFDS data dir')
  parser.add_argument('--num_batches', type=int, default=500)
  parser.add_argument('--train_steps', type=int, default=50)
  args = parser.parse_args()
  print('| task | data | batch | load s | pipeline examples/s | train step examples/s | ratio |')
  print('|---|---|---:|---:|---:|---:|---:|')
  for label, task_config, overrides in CASES:
    config = make_config(task_config, data_dir=args.data_dir, **overrides)
    task, source, load_s = _load(config)
    rate = measure_pipeline(config, args.num_batches, task=task)
    step_rate = measure_train_step(config, task, args.train_steps)
    print(f'| {label} | {source} | {config.batch_size} | {load_s:.1f} | {rate:,.0f} | '
          f'{step_rate:,.0f} | {rate / step_rate:,.0f}x |', flush=True)


if __name__ == '__main__':
  main()
