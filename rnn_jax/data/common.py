"""What every input pipeline shares: the `Task` batching contract, config checks, tfds reading.

A task holds its splits as in-memory NumPy arrays (MNIST is 47 MB, encoded IMDB 16 MB), so
batching is plain indexing: exact, deterministic and far faster than training. TensorFlow is
used only inside `read_splits`, as tfds's reading engine, with its GPUs hidden.

Ordering and sharding rules (the contract `train.py` relies on):
- Train order of epoch `e` is `np.random.default_rng([seed, e]).permutation(num_train)`; step `s`
  takes rows `[s * batch_size, (s + 1) * batch_size)` of it and the last partial batch is
  dropped. So `train_batches(e, start_step=s)` equals `list(train_batches(e))[s:]`, which is
  what makes a resumed run see exactly the batches it would have seen.
- Eval goes through a split in file order; the last global batch is filled up by repeating
  the split's last example, with `mask` 0 on those rows, so every example counts exactly once.
- With several processes, each global batch is cut into `process_count` contiguous blocks and
  process `i` gets block `i`. Concatenating the processes' batches in process order gives the
  global batch. Decisions about shape (length buckets) look at the whole global batch, so
  every process builds the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Mapping

from etils import epath
import numpy as np

from rnn_jax import config as config_lib

Arrays = dict[str, np.ndarray]
# make_batch(split_arrays, indices [b], global_indices [B]) -> batch dict, leading dim b.
# `global_indices` is the whole global batch that `indices` is this process's block of.
BatchFn = Callable[[Arrays, np.ndarray, np.ndarray], Arrays]

EVAL_SPLITS = ('validation', 'test')

# Defaults for the data fields a hand-made ConfigDict (a test, a notebook) may leave out, taken
# from the one config schema so the two cannot drift apart.
_DEFAULTED_FIELDS = ('sequence', 'normalize', 'validation_size', 'vocab_size', 'max_len',
                     'padding', 'truncating', 'length_buckets', 'data_dir', 'download', 'seed')
DEFAULTS: dict[str, Any] = {name: config_lib.defaults()[name] for name in _DEFAULTED_FIELDS}


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset is not in the data dir and downloading was not asked for."""


class DatasetCorruptError(ValueError):
  """A prepared dataset's files cannot be read (truncated or altered)."""


def _corrupt(tfds_name: str, where: str, error: Exception) -> DatasetCorruptError:
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  return DatasetCorruptError(
      f'The prepared dataset {tfds_name!r} in {where} cannot be read: {type(error).__name__}: '
      f'{first_line}. Nothing was trained. Fix: prepare it again: move {where} aside and run '
      f"tfds.builder({tfds_name!r}).download_and_prepare() on a machine with internet access "
      '(or copy that folder again from an intact TFDS data dir).')


def field(config: Mapping[str, Any], name: str) -> Any:
  """`config.<name>`, or its entry in `DEFAULTS` when the config does not have it."""
  if name in DEFAULTS:
    return config.get(name, DEFAULTS[name])
  if name not in config:
    raise ValueError(f'config.{name} is missing. Fix: add `{name}` to the config '
                     '(see rnn_jax/config.py).')
  return config[name]


def check_choice(config: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
  value = field(config, name)
  if value not in allowed:
    raise ValueError(
        f'config.{name}={value!r} is not supported; allowed values: '
        f'{", ".join(map(repr, allowed))}. Fix: set --config.{name} to one of them.')
  return value


def check_int(config: Mapping[str, Any], name: str, minimum: int) -> int:
  value = field(config, name)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(
        f'config.{name}={value!r} is not valid; it must be an integer >= {minimum}. '
        f'Fix: set --config.{name} to such an integer.')
  return int(value)


def check_batching(config: Mapping[str, Any], process_count: int) -> tuple[int, int, int]:
  """Returns (batch_size, eval_batch_size, seed); both batch sizes are global."""
  batch_size = check_int(config, 'batch_size', 1)
  eval_batch_size = (check_int(config, 'eval_batch_size', 1)
                     if config.get('eval_batch_size') is not None else batch_size)
  for name, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
    if value % process_count:
      raise ValueError(
          f'config.{name}={value} is not divisible by the {process_count} processes: each '
          f'process reads {name} / process_count examples. Fix: use a multiple of {process_count}.')
  return batch_size, eval_batch_size, check_int(config, 'seed', 0)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The train order of one epoch: a permutation [num_examples] fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def process_block(global_rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous block of a global batch [B] -> [B / process_count]."""
  per_process = len(global_rows) // process_count
  return global_rows[process_index * per_process:(process_index + 1) * per_process]


def take_rows(arrays: Arrays, indices: np.ndarray, global_indices: np.ndarray) -> Arrays:
  """The simplest `BatchFn`: every array of the split, indexed by `indices`."""
  del global_indices
  return {key: value[indices] for key, value in arrays.items()}


@dataclasses.dataclass(eq=False)
class Task:
  """A dataset ready for training: splits as NumPy arrays plus the rule that makes batches.

  Attributes:
    name: dataset name, e.g. 'mnist'.
    input_kind: 'features' (inputs float32 [batch, time, input_size]) or 'tokens' (int32
      [batch, time] ids, 0 = padding).
    seq_len: time steps (the maximum, where batches are length-bucketed).
    input_size: features per step, or for tokens the vocabulary size including reserved ids.
    num_classes: classes of the label (0 for regression targets).
    splits: 'train', 'validation', 'test' -> arrays with a common leading dim (validation may
      be empty). Internal columns may exist that `make_batch` does not emit.
    make_batch: turns rows of a split into a batch dict (see `BatchFn`).
    batch_size, eval_batch_size: global batch sizes.
    seed: fixes the train order of every epoch.
    metadata: small JSON-able dict to save with the run.
    process_index, process_count: which block of each global batch this process reads.
  """
  name: str
  input_kind: str
  seq_len: int
  input_size: int
  num_classes: int
  splits: dict[str, Arrays]
  make_batch: BatchFn
  batch_size: int
  eval_batch_size: int
  seed: int
  metadata: dict[str, Any]
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.steps_per_epoch < 1:
      raise ValueError(
          f'config.batch_size={self.batch_size} is larger than the {self.num_train_examples} '
          f'training examples of {self.name!r}, so an epoch has no full batch. Fix: lower '
          '--config.batch_size or --config.validation_size.')

  @property
  def num_train_examples(self) -> int:
    return _num_rows(self.splits['train'])

  @property
  def steps_per_epoch(self) -> int:
    return self.num_train_examples // self.batch_size

  def num_eval_examples(self, split: str) -> int:
    _check_eval_split(split)
    return _num_rows(self.splits[split])

  def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Arrays]:
    """This process's train batches of `epoch`, from batch index `start_step` on."""
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(f'start_step={start_step} is outside [0, {self.steps_per_epoch}] '
                       f'(steps_per_epoch). Fix: pass step % steps_per_epoch.')
    order = epoch_order(self.num_train_examples, self.seed, epoch)
    arrays = self.splits['train']
    for step in range(start_step, self.steps_per_epoch):
      rows = order[step * self.batch_size:(step + 1) * self.batch_size]
      yield self.make_batch(arrays, self._block(rows), rows)

  def eval_batches(self, split: str) -> Iterator[Arrays]:
    """This process's batches covering `split` once; padding rows have 'mask' 0."""
    n = self.num_eval_examples(split)
    arrays = self.splits[split]
    for start in range(0, n, self.eval_batch_size):
      positions = np.arange(start, start + self.eval_batch_size)
      rows = np.minimum(positions, n - 1)  # fill the last batch with the last example
      batch = self.make_batch(arrays, self._block(rows), rows)
      batch['mask'] = (self._block(positions) < n).astype(np.float32)
      yield batch

  def _block(self, rows: np.ndarray) -> np.ndarray:
    return process_block(rows, self.process_index, self.process_count)


def _num_rows(arrays: Arrays) -> int:
  return len(next(iter(arrays.values())))


def _check_eval_split(split: str) -> None:
  if split not in EVAL_SPLITS:
    raise ValueError(f'split={split!r} is not an eval split; allowed: {EVAL_SPLITS}. '
                     "Fix: use train_batches() for 'train'.")


def carve_validation(arrays: Arrays, validation_size: int, dataset: str) -> tuple[Arrays, Arrays]:
  """Splits the tfds train split into (train, validation = its first `validation_size` rows)."""
  n = _num_rows(arrays)
  if validation_size >= n:
    raise ValueError(
        f'config.validation_size={validation_size} leaves no training data: {dataset} has {n} '
        f'training examples. Fix: use 0 <= validation_size < {n}.')
  return ({k: v[validation_size:] for k, v in arrays.items()},
          {k: v[:validation_size] for k, v in arrays.items()})


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), from JAX unless both are given (tests pass them)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # only when running for real
    return jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is outside [0, {process_count}).')
  return process_index, process_count


def resolve_data_dir(config: Mapping[str, Any]) -> str | None:
  """config.data_dir, else $TFDS_DATA_DIR, else None (tfds's default, ~/tensorflow_datasets)."""
  return field(config, 'data_dir') or os.environ.get('TFDS_DATA_DIR') or None


@functools.cache
def _tfds():
  """Imports tfds with TensorFlow's GPUs hidden, so tf.data never takes accelerator memory."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF's C++ start-up chatter
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # devices already initialised by other code: too late to hide them
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def read_splits(tfds_name: str, splits: tuple[str, ...], *, data_dir: str | None,
                download: bool) -> tuple[dict[str, Arrays], dict[str, Any]]:
  """Reads whole tfds splits into NumPy, in file order.

  Returns ({split: {feature: array}}, info) where info = {'tfds_name', 'version', 'data_dir'}.
  Raises DatasetNotPreparedError (and downloads nothing) unless the dataset is prepared in the
  data dir or `download` is True.
  """
  tfds = _tfds()
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except MemoryError:
    raise
  except Exception as e:  # A damaged dataset_info.json / features.json fails to parse here.
    raise _corrupt(tfds_name, f'the TFDS data dir {data_dir or "(tfds default)"}', e) from e
  if not builder.is_prepared():
    if not download:
      raise DatasetNotPreparedError(
          f'Dataset {tfds_name!r} (version {builder.version}) is not prepared in the TFDS data '
          f'dir {str(builder.data_dir_root)!r}: no {builder.data_dir}/dataset_info.json. Nothing '
          'was downloaded. Fix: set --config.data_dir (or the TFDS_DATA_DIR environment '
          f'variable) to a prepared TFDS data dir that holds {tfds_name}, or, on a machine with '
          'internet access, set --config.download=True to run '
          f"tfds.builder({tfds_name!r}).download_and_prepare().")
    builder.download_and_prepare()
  arrays = {}
  for split in splits:
    try:
      ds = builder.as_dataset(split=split, shuffle_files=False).batch(8192)
      parts = list(tfds.as_numpy(ds))
    except MemoryError:
      raise
    except Exception as e:  # A truncated or altered tfrecord: DataLossError and kin.
      raise _corrupt(tfds_name, str(builder.data_dir), e) from e
    arrays[split] = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
  info = {'tfds_name': tfds_name, 'version': str(builder.version),
          'data_dir': str(builder.data_dir_root)}
  return arrays, info


def workdir_file(workdir: str | os.PathLike[str] | None, name: str) -> epath.Path | None:
  """workdir/data/<name>, where a run keeps what its data depends on; None without a workdir."""
  return None if workdir is None else epath.Path(workdir) / 'data' / name


def write_atomic(path: epath.Path, data: bytes) -> None:
  """Writes via a temporary file and a rename, so a reader never sees half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp{os.getpid()}'
  tmp.write_bytes(data)
  tmp.replace(path)
