"""MNIST and Fashion-MNIST as sequences: 28 rows of 28 pixels, or 784 pixels one at a time.

- sequence='rows': inputs [batch, 28, 28]; 'pixels': [batch, 784, 1] in row-major order;
  'permuted_pixels': [batch, 784, 1] with one fixed pixel permutation drawn by
  `np.random.default_rng(seed).permutation(784)`. With a workdir it is saved to
  workdir/data/permutation.npy and that file wins on later loads, so a resumed run keeps
  its permutation whatever the config says.
- normalize='unit': pixel / 255, in [0, 1]. 'standardize': (pixel / 255 - mean) / std with
  the scalar mean and std of all pixels of the train split as carved (validation excluded);
  both are in `metadata` either way.
- validation = the first `validation_size` images of the tfds train split; train = the rest.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np

from rnn_jax.data import common

SEQUENCES = ('rows', 'pixels', 'permuted_pixels')
NORMALIZATIONS = ('unit', 'standardize')
SIDE = 28
NUM_PIXELS = SIDE * SIDE


def check_config(config: Mapping[str, Any]) -> None:
  """The fields only the image tasks read (ValueError naming the fix); reads no data."""
  common.check_choice(config, 'sequence', SEQUENCES)
  common.check_choice(config, 'normalize', NORMALIZATIONS)


def dims(config: Mapping[str, Any]) -> tuple[str, int, int]:
  """(input kind, input size, classes) of the task `config` describes, without its data."""
  return 'features', SIDE if common.field(config, 'sequence') == 'rows' else 1, 10


def load(config: Mapping[str, Any], workdir=None, *, process_index: int,
         process_count: int) -> common.Task:
  """The image task named by config.dataset ('mnist' or 'fashion_mnist')."""
  name = config['dataset']
  check_config(config)
  sequence, normalize = common.field(config, 'sequence'), common.field(config, 'normalize')
  validation_size = common.check_int(config, 'validation_size', 0)
  batch_size, eval_batch_size, seed = common.check_batching(config, process_count)

  raw, info = common.read_splits(name, ('train', 'test'), data_dir=common.resolve_data_dir(config),
                                 download=bool(common.field(config, 'download')))
  for split, arrays in raw.items():
    check_images(name, split, arrays)
  flat = {split: {'image': arrays['image'].reshape(-1, NUM_PIXELS),
                  'label': arrays['label'].astype(np.int32)} for split, arrays in raw.items()}
  train, validation = common.carve_validation(flat['train'], validation_size, name)
  splits = {'train': train, 'validation': validation, 'test': flat['test']}

  mean, std = pixel_stats(train['image'])
  metadata = {'dataset': name, 'dataset_version': info['version'], 'data_dir': info['data_dir'],
              'sequence': sequence, 'normalize': normalize, 'pixel_mean': mean,
              'pixel_std': std, 'validation_size': validation_size}
  if sequence == 'permuted_pixels':
    permutation, file = pixel_permutation(seed, workdir, write=process_index == 0)
    # np.take keeps rows C-contiguous (a[:, perm] would not), so batches gather fast.
    splits = {s: {**a, 'image': np.take(a['image'], permutation, axis=1)}
              for s, a in splits.items()}
    # The seed only describes the permutation when the permutation came from it.
    drawn_from_seed = np.array_equal(permutation, draw_permutation(seed))
    metadata.update(permutation_seed=seed if drawn_from_seed else None,
                    permutation_file=None if file is None else str(file))

  steps, features = (SIDE, SIDE) if sequence == 'rows' else (NUM_PIXELS, 1)
  scale, offset = np.float32(1 / (255 * std)), np.float32(-mean / std)

  def make_batch(arrays, indices, global_indices):
    del global_indices  # every batch has the same shape
    # In place on the float32 copy: several times faster than a 256-entry lookup table.
    inputs = arrays['image'][indices].astype(np.float32)
    if normalize == 'unit':
      inputs /= np.float32(255)  # exactly float32(pixel / 255)
    else:
      inputs *= scale
      inputs += offset
    return {'inputs': inputs.reshape(len(indices), steps, features),
            'labels': arrays['label'][indices]}

  return common.Task(
      name=name, input_kind='features', seq_len=steps, input_size=features, num_classes=10,
      splits=splits, make_batch=make_batch, batch_size=batch_size,
      eval_batch_size=eval_batch_size, seed=seed, metadata=metadata,
      process_index=process_index, process_count=process_count)


def check_images(name: str, split: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Images must be uint8 [N, 28, 28(, 1)] with labels [N]: a reshape alone would turn, say,
  32x32 images into a different number of wrong 784-pixel rows without a word."""
  image, label = np.asarray(arrays['image']), np.asarray(arrays['label'])
  if image.ndim not in (3, 4) or image.shape[1:3] != (SIDE, SIDE) or image.shape[3:] not in (
      (), (1,)):
    raise ValueError(
        f'Dataset {name!r} ({split} split) has images of shape {list(image.shape[1:])}; '
        f'expected [{SIDE}, {SIDE}, 1] (or [{SIDE}, {SIDE}]) grey-scale images. Fix: point '
        '--config.data_dir at the real tfds dataset, or resize the images to 28x28.')
  if image.dtype != np.uint8:
    raise ValueError(
        f'Dataset {name!r} ({split} split) has images of dtype {image.dtype}; expected uint8 '
        'pixels in [0, 255]. Fix: store the images as uint8.')
  if label.shape != image.shape[:1]:
    raise ValueError(
        f'Dataset {name!r} ({split} split) has {image.shape[0]} images but labels of shape '
        f'{list(label.shape)}; expected [{image.shape[0]}]. Fix the dataset.')


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
  """Exact scalar (mean, std) of uint8 `images` [N, ...] scaled to [0, 1]."""
  counts = np.zeros(256, np.int64)
  for start in range(0, len(images), 4096):  # chunks keep the int64 temporaries small
    counts += np.bincount(images[start:start + 4096].ravel(), minlength=256)
  values = np.arange(256) / 255.0
  mean = float(values @ counts / counts.sum())
  std = float(np.sqrt(((values - mean) ** 2) @ counts / counts.sum()))
  if std == 0.0:
    raise ValueError('The training pixels are all equal, so they cannot be standardised. '
                     "Fix: use --config.normalize='unit'.")
  return mean, std


def draw_permutation(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).permutation(NUM_PIXELS)


def pixel_permutation(seed: int, workdir, *, write: bool):
  """(permutation [784], its file or None): workdir/data/permutation.npy if there, else drawn."""
  file = common.workdir_file(workdir, 'permutation.npy')
  if file is not None and file.exists():
    permutation = np.load(io.BytesIO(file.read_bytes()))
    if not np.array_equal(np.sort(permutation), np.arange(NUM_PIXELS)):
      raise ValueError(f'{file} does not hold a permutation of {NUM_PIXELS} pixels. Fix: delete '
                       'it to draw a new one from config.seed (only for a fresh run).')
    return permutation, file
  permutation = draw_permutation(seed)
  if file is not None and write:
    buffer = io.BytesIO()
    np.save(buffer, permutation)
    common.write_atomic(file, buffer.getvalue())
  return permutation, file
