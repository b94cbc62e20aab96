"""Input pipelines: `load(config, workdir)` turns a config into a `Task` that yields batches.

    task = data.load(config, workdir)
    for batch in task.train_batches(epoch, start_step=0): ...   # inputs, labels[, lengths]
    for batch in task.eval_batches('test'): ...                 # ... and mask

Batches are dicts of NumPy arrays, batch-major, one process's share of the global batch (see
common.py for the order, resume and sharding rules). A new task (e.g. a synthetic one) is a
function `loader(config, workdir, *, process_index, process_count) -> Task` in its own
module, named in `LOADERS` below (or added at run time with `register`).
Importing this package does not import TensorFlow or JAX; loading does, when it needs them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from rnn_jax.data import common
from rnn_jax.data import images
from rnn_jax.data import imdb
from rnn_jax.data import synthetic
from rnn_jax.data.common import DEFAULTS, DatasetCorruptError, DatasetNotPreparedError, Task

Loader = Callable[..., Task]

LOADERS: dict[str, Loader] = {
    'mnist': images.load,
    'fashion_mnist': images.load,
    'imdb_reviews': imdb.load,
    'adding': synthetic.load,
}


def register(name: str, loader: Loader) -> None:
  """Makes `config.dataset = name` load with `loader`.

  `loader(config, workdir, *, process_index, process_count) -> Task`, as images.load.
  """
  if name in LOADERS and LOADERS[name] is not loader:
    raise ValueError(f'A loader for dataset {name!r} is already registered.')
  LOADERS[name] = loader


def load(config: Mapping[str, Any], workdir=None, *, process_index: int | None = None,
         process_count: int | None = None) -> Task:
  """The task named by `config.dataset`, ready to batch.

  Args:
    config: flat ConfigDict (or dict) with the data fields of configs/base.py.
    workdir: the run's directory; files the data depends on (pixel permutation, vocabulary,
      encoded-text cache) go to workdir/data/ and are reused from there on resume.
    process_index, process_count: default to jax.process_index() / jax.process_count();
      given explicitly, e.g. to check multi-host sharding in a single process.
  """
  name = config.get('dataset')
  if name not in LOADERS:
    raise ValueError(f'config.dataset={name!r} is not a known dataset; known: '
                     f'{", ".join(sorted(LOADERS))}. Fix: set --config.dataset to one of them.')
  process_index, process_count = common.process_info(process_index, process_count)
  return LOADERS[name](config, workdir, process_index=process_index, process_count=process_count)


__all__ = ['DEFAULTS', 'DatasetCorruptError', 'DatasetNotPreparedError', 'LOADERS', 'Task', 'load',
           'register']
