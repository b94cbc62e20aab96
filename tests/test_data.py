"""Tests of the input pipelines: batching contract, images, IMDB text, errors, real data.

Unit tests run on tfds.testing.mock_data (random examples; download_and_prepare is a no-op
there, hence download=True in the configs) or on in-memory toy splits. Tests marked
`real_data` read the prepared TFDS data dir ($TFDS_DATA_DIR, else
../shared/tensorflow_datasets beside the repo) and skip when it does not hold the dataset.
"""

import glob
import os

import ml_collections
import numpy as np
import pytest

from rnn_jax import data
from rnn_jax.data import common
from rnn_jax.data import imdb

from conftest import REAL_DATA_DIR

tfds = common._tfds()  # pylint: disable=protected-access  # imports tfds with TF's GPUs hidden

NUM_MOCK = 160  # mock examples per split
VAL = 32  # validation_size in the mock configs
BATCH, EVAL_BATCH = 16, 48


def make_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='mnist', sequence='rows', normalize='unit', validation_size=VAL, vocab_size=30,
      max_len=12, padding='post', truncating='pre', length_buckets=(), data_dir=None,
      download=True, batch_size=BATCH, eval_batch_size=EVAL_BATCH, seed=0))
  config.update(overrides)
  return config


def load_mock(config, workdir=None, process_index=0, process_count=1):
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    return data.load(config, workdir, process_index=process_index, process_count=process_count)


def raw_mock(tfds_name):
  """The train split exactly as tfds hands it over under the same mock."""
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    return common.read_splits(tfds_name, ('train',), data_dir=None, download=True)[0]['train']


def concat(batches, key):
  return np.concatenate([b[key] for b in batches])


# ---------------------------------------------------------------- batching contract (toy splits)

def toy_task(n=103, batch_size=8, eval_batch_size=10, seed=0, process_index=0, process_count=1):
  ids = np.arange(n)
  return common.Task(
      name='toy', input_kind='features', seq_len=1, input_size=1, num_classes=0,
      splits={'train': {'id': ids}, 'validation': {'id': ids[:0]}, 'test': {'id': 1000 + ids}},
      make_batch=common.take_rows, batch_size=batch_size, eval_batch_size=eval_batch_size,
      seed=seed, metadata={}, process_index=process_index, process_count=process_count)


def test_epoch_is_a_permutation_with_remainder_dropped():
  task = toy_task()
  assert task.steps_per_epoch == 12
  batches = list(task.train_batches(0))
  assert len(batches) == 12 and all(b['id'].shape == (8,) for b in batches)
  ids = concat(batches, 'id')
  assert len(np.unique(ids)) == 96 and ids.min() >= 0 and ids.max() < 103
  assert not np.array_equal(ids, np.arange(96))  # shuffled


def test_order_fixed_by_seed_and_epoch():
  first = concat(toy_task().train_batches(3), 'id')
  np.testing.assert_array_equal(first, concat(toy_task().train_batches(3), 'id'))
  assert not np.array_equal(first, concat(toy_task().train_batches(4), 'id'))
  assert not np.array_equal(first, concat(toy_task(seed=1).train_batches(3), 'id'))


@pytest.mark.parametrize('start_step', [0, 1, 5, 12])
def test_start_step_resumes_the_same_batches(start_step):
  task = toy_task()
  full = [b['id'] for b in task.train_batches(2)]
  resumed = [b['id'] for b in task.train_batches(2, start_step=start_step)]
  assert len(resumed) == len(full) - start_step
  for a, b in zip(resumed, full[start_step:]):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='start_step=13'):
    next(task.train_batches(2, start_step=13))


def test_eval_covers_every_example_once_and_masks_padding():
  task = toy_task()
  batches = list(task.eval_batches('test'))
  assert len(batches) == 11 and all(b['id'].shape == (10,) for b in batches)
  mask = concat(batches, 'mask')
  assert mask.dtype == np.float32 and mask.sum() == 103 and set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(concat(batches, 'id')[mask == 1], 1000 + np.arange(103))
  assert task.num_eval_examples('validation') == 0 and not list(task.eval_batches('validation'))
  with pytest.raises(ValueError, match="'train'"):
    task.num_eval_examples('train')


def test_process_shards_make_up_the_global_batch():
  whole = toy_task()
  shards = [toy_task(process_index=i, process_count=2) for i in range(2)]
  for glob_b, *parts in zip(whole.train_batches(1), *(s.train_batches(1) for s in shards)):
    assert all(p['id'].shape == (4,) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p['id'] for p in parts]), glob_b['id'])
  for glob_b, *parts in zip(whole.eval_batches('test'), *(s.eval_batches('test') for s in shards)):
    for key in ('id', 'mask'):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), glob_b[key])


# ------------------------------------------------------------------------------ images (mock)

@pytest.mark.parametrize('sequence, shape', [
    ('rows', (28, 28)), ('pixels', (784, 1)), ('permuted_pixels', (784, 1))])
def test_image_batches_shapes_dtypes_and_ranges(sequence, shape):
  task = load_mock(make_config(sequence=sequence))
  assert (task.name, task.input_kind, task.num_classes) == ('mnist', 'features', 10)
  assert (task.seq_len, task.input_size) == shape
  assert task.num_train_examples == NUM_MOCK - VAL
  assert task.steps_per_epoch == (NUM_MOCK - VAL) // BATCH
  assert task.num_eval_examples('validation') == VAL
  assert task.num_eval_examples('test') == NUM_MOCK
  batch = next(task.train_batches(0))
  assert set(batch) == {'inputs', 'labels'}
  assert batch['inputs'].shape == (BATCH, *shape) and batch['inputs'].dtype == np.float32
  assert 0.0 <= batch['inputs'].min() and batch['inputs'].max() <= 1.0
  assert batch['inputs'].max() > 0.5  # scaled from uint8, not left at 0..255 nor all zero
  assert batch['labels'].dtype == np.int32 and set(batch['labels']) <= set(range(10))
  assert next(task.eval_batches('test'))['inputs'].shape == (EVAL_BATCH, *shape)


def test_validation_is_the_first_training_images():
  raw = raw_mock('mnist')
  task = load_mock(make_config(sequence='pixels'))
  val = list(task.eval_batches('validation'))
  assert len(val) == 1 and concat(val, 'mask').sum() == VAL
  np.testing.assert_array_equal(  # exactly the float32 nearest pixel / 255
      val[0]['inputs'][:VAL, :, 0],
      (raw['image'][:VAL].reshape(VAL, 784) / 255.0).astype(np.float32))
  np.testing.assert_array_equal(val[0]['labels'][:VAL], raw['label'][:VAL])
  train_rows = {r.tobytes() for r in raw['image'][VAL:].reshape(-1, 784)}
  epoch = (concat(task.train_batches(0), 'inputs')[:, :, 0] * 255).round().astype(np.uint8)
  assert all(r.tobytes() in train_rows for r in epoch)


def test_same_config_same_batches_across_loads():
  a, b = (load_mock(make_config(sequence='rows')) for _ in range(2))
  for x, y in zip(a.train_batches(1), b.train_batches(1)):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
    np.testing.assert_array_equal(x['labels'], y['labels'])


def test_permutation_is_fixed_saved_and_reused(tmp_path):
  pixels = next(load_mock(make_config(sequence='pixels')).eval_batches('test'))['inputs']
  config = make_config(sequence='permuted_pixels', seed=7)
  task = load_mock(config, tmp_path)
  permutation = np.random.default_rng(7).permutation(784)
  permuted = next(task.eval_batches('test'))['inputs']
  np.testing.assert_array_equal(permuted, pixels[:, permutation])
  np.testing.assert_array_equal(np.load(tmp_path / 'data' / 'permutation.npy'), permutation)
  assert task.metadata['permutation_seed'] == 7
  again = next(load_mock(make_config(sequence='permuted_pixels', seed=7)).eval_batches('test'))
  np.testing.assert_array_equal(again['inputs'], permuted)
  other = next(load_mock(make_config(sequence='permuted_pixels', seed=8)).eval_batches('test'))
  assert not np.array_equal(other['inputs'], permuted)
  # On resume the file wins over the seed.
  np.save(tmp_path / 'data' / 'permutation.npy', np.arange(784)[::-1])
  resumed = load_mock(config, tmp_path)
  np.testing.assert_array_equal(next(resumed.eval_batches('test'))['inputs'], pixels[:, ::-1])
  assert resumed.metadata['permutation_seed'] is None


def test_standardize_uses_train_pixel_stats():
  raw = raw_mock('mnist')['image'].astype(np.float64) / 255.0
  task = load_mock(make_config(sequence='pixels', normalize='standardize'))
  mean, std = raw[VAL:].mean(), raw[VAL:].std()
  assert task.metadata['pixel_mean'] == pytest.approx(mean, rel=1e-9)
  assert task.metadata['pixel_std'] == pytest.approx(std, rel=1e-9)
  val = next(task.eval_batches('validation'))['inputs'][:VAL, :, 0]
  np.testing.assert_allclose(val, (raw[:VAL].reshape(VAL, 784) - mean) / std, rtol=1e-5, atol=1e-5)
  epoch = concat(task.train_batches(0), 'inputs')
  assert abs(epoch.mean()) < 0.05 and abs(epoch.std() - 1) < 0.05


# --------------------------------------------------------------------------------- IMDB text

def test_tokenizer_rules():
  assert imdb.tokenize("Great movie!<br /><br />I LOVED it. Don't miss... 10/10") == [
      'great', 'movie', '!', 'i', 'loved', 'it', '.', "don't", 'miss', '.', '.', '.',
      '10', '/', '10']
  assert imdb.tokenize("'Quoted' words,and<BR/>the director's cut<br>") == [
      "'", 'quoted', "'", 'words', ',', 'and', 'the', "director's", 'cut']
  assert imdb.tokenize(b'caf\xe9 ok') == ['caf', '\ufffd', 'ok']  # bad UTF-8 is replaced
  assert imdb.tokenize('Café') == ['caf', 'é']
  assert imdb.tokenize('  <br />  ') == []


def test_vocab_reserved_ids_order_and_size():
  docs = [['b', 'a', 'c', 'a'], ['b', 'd', 'e', 'e', 'e']]
  assert imdb.build_vocab(docs, 100) == ['<pad>', '<oov>', 'e', 'a', 'b', 'c', 'd']
  assert imdb.build_vocab(docs, 4) == ['<pad>', '<oov>', 'e', 'a']
  assert (imdb.PAD_ID, imdb.OOV_ID) == (0, 1)


@pytest.mark.parametrize('padding, truncating, ids', [
    ('pre', 'pre', [[7, 8, 9], [0, 0, 3], [0, 0, 1]]),
    ('post', 'pre', [[7, 8, 9], [3, 0, 0], [1, 0, 0]]),
    ('post', 'post', [[5, 6, 7], [3, 0, 0], [1, 0, 0]]),
    ('pre', 'post', [[5, 6, 7], [0, 0, 3], [0, 0, 1]]),
])
def test_pad_and_truncate_like_keras(padding, truncating, ids):
  got, lengths = imdb.pad_and_truncate([[5, 6, 7, 8, 9], [3], []], 3, padding, truncating)
  np.testing.assert_array_equal(got, ids)
  np.testing.assert_array_equal(lengths, [3, 1, 1])  # the empty review is one OOV token
  assert got.dtype == lengths.dtype == np.int32


def test_bucket_width():
  assert [imdb.bucket_width(n, (4, 8), 12) for n in (1, 4, 5, 8, 9, 12)] == [4, 4, 8, 8, 12, 12]


def test_imdb_batches_vocab_and_padding(tmp_path):
  task = load_mock(make_config(dataset='imdb_reviews', max_len=6), tmp_path)
  assert (task.name, task.input_kind, task.num_classes) == ('imdb_reviews', 'tokens', 2)
  assert (task.seq_len, task.input_size) == (6, 30)
  assert task.num_train_examples == NUM_MOCK - VAL
  batch = next(task.train_batches(0))
  assert set(batch) == {'inputs', 'labels', 'lengths'}
  ids, lengths = batch['inputs'], batch['lengths']
  assert ids.shape == (BATCH, 6) and ids.dtype == lengths.dtype == np.int32
  assert lengths.min() >= 1 and lengths.max() <= 6 and ids.max() < 30
  steps = np.arange(6)
  assert np.all((ids == 0) == (steps[None] >= lengths[:, None]))  # right padding, real ids > 0
  assert set(batch['labels']) <= {0, 1}
  # Vocabulary: from the carved train split only, saved in the workdir.
  raw = raw_mock(imdb.TFDS_NAME)
  expected = imdb.build_vocab([imdb.tokenize(t) for t in raw['text'][VAL:]], 30)
  saved = (tmp_path / 'data' / 'vocab.txt').read_text().rstrip('\n').split('\n')
  assert saved == expected and len(saved) == 30
  # First validation review, encoded by hand.
  tokens = imdb.tokenize(raw['text'][0])[-6:] or ['<oov>']
  hand = [expected.index(w) if w in expected else 1 for w in tokens]
  val = next(task.eval_batches('validation'))
  np.testing.assert_array_equal(val['inputs'][0, :len(hand)], hand)
  assert val['lengths'][0] == len(hand)


def test_imdb_pre_padding_reports_full_width():
  task = load_mock(make_config(dataset='imdb_reviews', max_len=6, padding='pre'))
  batch = next(task.train_batches(0))
  assert np.all(batch['lengths'] == 6)
  assert np.all(batch['inputs'][:, -1] > 0)  # last step holds the last token


def test_imdb_length_buckets_bound_batch_width():
  buckets = (2, 4)
  task = load_mock(make_config(dataset='imdb_reviews', max_len=12, length_buckets=buckets))
  widths = set()
  for batch in task.train_batches(0):
    width = batch['inputs'].shape[1]
    assert width == imdb.bucket_width(batch['lengths'].max(), buckets, 12)
    widths.add(width)
  assert widths <= {2, 4, 12}
  assert next(task.eval_batches('test'))['inputs'].shape[1] in {2, 4, 12}


def test_imdb_workdir_vocab_wins_and_cache_matches(tmp_path):
  config = make_config(dataset='imdb_reviews', max_len=6)
  first = load_mock(config, tmp_path)
  assert (tmp_path / 'data' / 'imdb_encoded.npz').exists()
  cached = load_mock(config, tmp_path)
  for a, b in zip(first.eval_batches('test'), cached.eval_batches('test')):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Swap ids 2 and 3 in the saved vocabulary: a new load must follow the file.
  vocab_file = tmp_path / 'data' / 'vocab.txt'
  vocab = vocab_file.read_text().rstrip('\n').split('\n')
  vocab[2], vocab[3] = vocab[3], vocab[2]
  vocab_file.write_text('\n'.join(vocab) + '\n')
  swapped = load_mock(config, tmp_path)
  a = concat(first.eval_batches('test'), 'inputs')
  b = concat(swapped.eval_batches('test'), 'inputs')
  swap = np.arange(30)
  swap[[2, 3]] = [3, 2]
  np.testing.assert_array_equal(swap[a], b)
  assert np.isin(a, [2, 3]).any()  # the swap is visible in the data


def test_imdb_process_shards_agree_on_bucket_width():
  config = make_config(dataset='imdb_reviews', max_len=12, length_buckets=(2, 4))
  whole = load_mock(config)
  shards = [load_mock(config, process_index=i, process_count=2) for i in range(2)]
  for glob_b, *parts in zip(whole.train_batches(0), *(s.train_batches(0) for s in shards)):
    for key in glob_b:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), glob_b[key])


# ------------------------------------------------------------------------------------ errors

def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError, match=r"'cifar10'.*fashion_mnist.*imdb_reviews.*mnist"):
    data.load(make_config(dataset='cifar10'), process_index=0, process_count=1)


@pytest.mark.parametrize('dataset', ['mnist', 'imdb_reviews'])
def test_dataset_not_prepared_fails_fast_without_download(tmp_path, dataset):
  config = make_config(dataset=dataset, data_dir=str(tmp_path), download=False)
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.load(config, process_index=0, process_count=1)
  message = str(error.value)
  assert dataset in message and str(tmp_path) in message and 'data_dir' in message
  assert 'download' in message and not list(tmp_path.iterdir())


@pytest.mark.parametrize('dataset, field, value', [
    ('mnist', 'sequence', 'columns'),
    ('mnist', 'normalize', 'zscore'),
    ('mnist', 'validation_size', -1),
    ('mnist', 'batch_size', 0),
    ('mnist', 'seed', -3),
    ('imdb_reviews', 'padding', 'left'),
    ('imdb_reviews', 'truncating', 'middle'),
    ('imdb_reviews', 'max_len', 0),
    ('imdb_reviews', 'vocab_size', 2),
    ('imdb_reviews', 'length_buckets', (8, 4)),
    ('imdb_reviews', 'length_buckets', (4, 100)),
])
def test_bad_field_values_are_named_before_reading(tmp_path, dataset, field, value):
  # The data dir is empty: reaching the reader would raise DatasetNotPreparedError instead.
  config = make_config(dataset=dataset, data_dir=str(tmp_path), download=False)
  config[field] = value
  with pytest.raises(ValueError, match=f'config.{field}=') as error:
    data.load(config, process_index=0, process_count=1)
  assert 'Fix' in str(error.value)


def test_batch_size_must_divide_among_processes(tmp_path):
  config = make_config(batch_size=33, data_dir=str(tmp_path), download=False)
  with pytest.raises(ValueError, match='batch_size=33.*2 processes'):
    data.load(config, process_index=0, process_count=2)


def test_sizes_that_leave_no_training_data():
  with pytest.raises(ValueError, match=f'validation_size={NUM_MOCK}'):
    load_mock(make_config(validation_size=NUM_MOCK))
  with pytest.raises(ValueError, match='batch_size=512'):
    load_mock(make_config(batch_size=512))


# ------------------------------------------------------------------------------ real data

def real_config_or_skip(dataset, **overrides):
  pattern = os.path.join(REAL_DATA_DIR, dataset, '**', 'dataset_info.json')
  if not glob.glob(pattern, recursive=True):
    pytest.skip(f'{dataset} is not prepared under {REAL_DATA_DIR} (no {pattern}); set '
                'TFDS_DATA_DIR to a prepared TFDS data dir to run this test.')
  return make_config(dataset=dataset, data_dir=REAL_DATA_DIR, download=False,
                     validation_size=5000, batch_size=128, eval_batch_size=1000, **overrides)


def labels_of(task, split):
  return task.splits[split]['label']


@pytest.mark.real_data
def test_real_mnist_counts():
  task = data.load(real_config_or_skip('mnist'), process_index=0, process_count=1)
  assert task.num_train_examples == 55_000 and task.steps_per_epoch == 55_000 // 128
  assert (task.num_eval_examples('validation'), task.num_eval_examples('test')) == (5000, 10_000)
  train = np.concatenate([labels_of(task, 'validation'), labels_of(task, 'train')])
  assert np.bincount(train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert np.bincount(labels_of(task, 'test')).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  assert next(task.train_batches(0))['inputs'].shape == (128, 28, 28)


@pytest.mark.real_data
def test_real_fashion_mnist_counts():
  task = data.load(real_config_or_skip('fashion_mnist', sequence='pixels'),
                   process_index=0, process_count=1)
  train = np.concatenate([labels_of(task, 'validation'), labels_of(task, 'train')])
  assert np.bincount(train).tolist() == [6000] * 10
  assert np.bincount(labels_of(task, 'test')).tolist() == [1000] * 10
  assert next(task.eval_batches('test'))['inputs'].shape == (1000, 784, 1)


@pytest.mark.real_data
def test_real_imdb_counts_vocab_and_lengths():
  task = data.load(real_config_or_skip('imdb_reviews', vocab_size=10_000, max_len=80),
                   process_index=0, process_count=1)
  assert (task.num_train_examples, task.num_eval_examples('validation')) == (20_000, 5000)
  train = np.concatenate([labels_of(task, 'validation'), labels_of(task, 'train')])
  assert np.bincount(train).tolist() == [12_500, 12_500]
  assert np.bincount(labels_of(task, 'test')).tolist() == [12_500, 12_500]
  assert task.input_size == 10_000 and task.metadata['vocab_words'] == 9998
  truncated = task.metadata['fraction_truncated_train']
  print(f'IMDB train reviews longer than max_len=80 tokens: {truncated:.2%}')
  assert 0.85 < truncated < 0.99
  batch = next(task.train_batches(0))
  assert batch['inputs'].shape == (128, 80) and batch['inputs'].max() < 10_000


@pytest.mark.real_data
@pytest.mark.parametrize('damage', ['truncate_test_tfrecord', 'garbage_dataset_info'])
def test_a_damaged_prepared_dataset_names_the_folder_and_how_to_prepare_it(tmp_path, damage):
  """A copy of the real prepared MNIST, damaged: one clear error naming where and the fix."""
  real_config_or_skip('mnist')
  import shutil  # pylint: disable=g-import-not-at-top
  source = os.path.join(REAL_DATA_DIR, 'mnist')
  shutil.copytree(source, tmp_path / 'mnist')
  version_dir = next((tmp_path / 'mnist').iterdir())
  for f in version_dir.iterdir():
    f.chmod(0o644)
  if damage == 'truncate_test_tfrecord':
    test_file = next(version_dir.glob('mnist-test.tfrecord*'))
    with open(test_file, 'r+b') as f:
      f.truncate(test_file.stat().st_size // 2)
  else:
    (version_dir / 'dataset_info.json').write_text('{"name": "mnist", "version": ')
  config = make_config(dataset='mnist', data_dir=str(tmp_path), download=False,
                       validation_size=5000, batch_size=128, eval_batch_size=1000)
  with pytest.raises(data.DatasetCorruptError, match=r"mnist.* cannot be read.*Fix: prepare it"):
    data.load(config, process_index=0, process_count=1)


@pytest.mark.parametrize('damage', ['truncate', 'flip_byte'])
def test_a_damaged_encoded_text_cache_is_rebuilt(tmp_path, damage, caplog):
  config = make_config(dataset='imdb_reviews', max_len=6)
  first = load_mock(config, tmp_path)
  cache = tmp_path / 'data' / 'imdb_encoded.npz'
  raw = bytearray(cache.read_bytes())
  if damage == 'truncate':
    raw = raw[:len(raw) // 2]
  else:
    raw[len(raw) // 3] ^= 0x20
  cache.write_bytes(bytes(raw))
  with caplog.at_level('WARNING'):
    again = load_mock(config, tmp_path)
  assert 'imdb_encoded.npz is unreadable' in caplog.text and 'rebuilding' in caplog.text
  for a, b in zip(first.eval_batches('test'), again.eval_batches('test')):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  with np.load(cache) as rewritten:  # Rewritten whole.
    assert 'test/ids' in rewritten.files
