"""Input pipelines: `load(config, workdir)` turns a config into a `Task` that yields batches.

    task = data.load(config, workdir)
    for batch in task.train_batches(epoch, start_step=0): ...   # inputs, labels[, lengths]
    for batch in task.eval_batches('test'): ...                 # ... and mask

Batches are dicts of NumPy arrays, batch-major, one process's share of the global batch (see
common.py for the order, resume and sharding rules). A new task (e.g. a synthetic one) is a
function `loader(config, workdir, *, process_index, process_count) -> Task` in its own
module, added with one `register` call below (or at run time).
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
ConfigCheck = Callable[[Mapping[str, Any]], None]
Dims = Callable[[Mapping[str, Any]], tuple[str, int, int]]

LOADERS: dict[str, Loader] = {}     # config.dataset -> loader
CONFIG_CHECKS: dict[str, ConfigCheck] = {}  # -> its checks of the fields it reads (optional)
DIMS: dict[str, Dims] = {}          # -> (input kind, input size, classes) without data (optional)


def register(name: str, loader: Loader, *, check_config: ConfigCheck | None = None,
             dims: Dims | None = None) -> None:
  """Makes `config.dataset = name` load with `loader`: the one place a dataset is added.

  loader(config, workdir, *, process_index, process_count) -> Task, as images.load.
  check_config(config): raises ValueError for a value of a field only this dataset reads,
    without reading data, so that `validate` (and so every run) refuses it before anything
    is loaded or written.
  dims(config) -> (input_kind, input_size, num_classes), without reading data, for counting
    a model's parameters (sweeps' `match_params`); without it the task is loaded to count.
  """
  if name in LOADERS and LOADERS[name] is not loader:
    raise ValueError(f'A loader for dataset {name!r} is already registered.')
  LOADERS[name] = loader
  for registry, value in ((CONFIG_CHECKS, check_config), (DIMS, dims)):
    if value is not None:
      registry[name] = value


register('mnist', images.load, check_config=images.check_config, dims=images.dims)
register('fashion_mnist', images.load, check_config=images.check_config, dims=images.dims)
register('imdb_reviews', imdb.load, check_config=imdb.check_config, dims=imdb.dims)
register('adding', synthetic.load, dims=synthetic.dims)


def validate(config: Mapping[str, Any]) -> None:
  """The dataset is registered, and its own fields are valid (its `check_config`)."""
  name = config.get('dataset')
  if name not in LOADERS:
    raise ValueError(f'config.dataset={name!r} is not a known dataset; known: '
                     f'{", ".join(sorted(LOADERS))}. Fix: set --config.dataset to one of them.')
  if name in CONFIG_CHECKS:
    CONFIG_CHECKS[name](config)


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
  validate(config)
  process_index, process_count = common.process_info(process_index, process_count)
  return LOADERS[config.get('dataset')](config, workdir, process_index=process_index, process_count=process_count)


__all__ = ['CONFIG_CHECKS', 'DEFAULTS', 'DIMS', 'DatasetCorruptError', 'DatasetNotPreparedError',
           'LOADERS', 'Task', 'load', 'register', 'validate']
