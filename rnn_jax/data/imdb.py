"""IMDB movie reviews (tfds imdb_reviews/plain_text) as token-id sequences for sentiment.

Tokenizer (`tokenize`): decode UTF-8 (bad bytes become U+FFFD), lower-case, replace the HTML
line breaks `<br />` (also `<br/>`, `<br>`) with a space, then take the matches of `TOKEN_RE`:
runs of [a-z0-9] with at most one apostrophe suffix ("don't", "it's", "director's" stay one
word), or any single other non-space character (punctuation, and also non-ASCII letters, which
become one-character tokens: "café" -> "caf", "é").

Vocabulary (`build_vocab`): built from the train split AS CARVED (the first `validation_size`
reviews are held out), so neither validation nor test influences it. Ids: 0 = padding,
1 = out-of-vocabulary, then words by descending count, ties broken alphabetically.
`vocab_size` counts the two reserved ids: 10000 -> 9998 words, and input_size = vocab_size.
Saved as workdir/data/vocab.txt (line i = id i) and reused from there when present.

Sequences (`pad_and_truncate`, like Keras pad_sequences): reviews longer than `max_len` lose
their end (truncating='post', the default) or their start ('pre', Keras's default, which keeps
the ending where reviewers often give their verdict). An empty review becomes one OOV token,
so every length >= 1.
padding='post' (default) right-pads and 'lengths' is the number of kept tokens: the model
masks steps >= length and reads the output at step length - 1. padding='pre' left-pads, as
Keras does, and exists to reproduce Keras models: 'lengths' is then the full batch width, so
right-padding masks change nothing and the last step holds the last token (the pad steps in
front are processed, as in an unmasked Keras RNN).

length_buckets (e.g. (20, 40)): a batch is only as wide as the smallest bucket >= its longest
review (else max_len), so at most len(buckets) + 1 shapes get compiled. The bucket is chosen
on the global batch, so all processes agree. Applies to train and eval batches.

With a workdir, the encoded splits are cached in workdir/data/imdb_encoded.npz (keyed by the
vocabulary and the settings), so resuming skips reading and tokenising 50,000 reviews.
"""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import json
import logging
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rnn_jax.data import common

TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
BREAK_RE = re.compile(r'<br\s*/?>')
PAD_ID, OOV_ID = 0, 1
RESERVED = ('<pad>', '<oov>')
MODES = ('pre', 'post')
TFDS_NAME = 'imdb_reviews/plain_text'


def tokenize(text: str | bytes) -> list[str]:
  """A review -> its list of word and punctuation tokens (see the module docstring)."""
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  return TOKEN_RE.findall(BREAK_RE.sub(' ', text.lower()))


def build_vocab(token_lists: Iterable[Sequence[str]], vocab_size: int) -> list[str]:
  """The vocabulary, id order: RESERVED, then the vocab_size - 2 most frequent tokens."""
  counts = collections.Counter(itertools.chain.from_iterable(token_lists))
  words = sorted(counts, key=lambda word: (-counts[word], word))
  return list(RESERVED) + words[:vocab_size - len(RESERVED)]


def pad_and_truncate(id_lists: Sequence[Sequence[int]], max_len: int, padding: str,
                     truncating: str) -> tuple[np.ndarray, np.ndarray]:
  """Ids per review -> (ids int32 [N, max_len], lengths int32 [N] = kept tokens, >= 1)."""
  ids = np.full((len(id_lists), max_len), PAD_ID, np.int32)
  lengths = np.empty(len(id_lists), np.int32)
  for row, seq in enumerate(id_lists):
    seq = list(seq) or [OOV_ID]
    kept = seq[-max_len:] if truncating == 'pre' else seq[:max_len]
    lengths[row] = len(kept)
    if padding == 'post':
      ids[row, :len(kept)] = kept
    else:
      ids[row, max_len - len(kept):] = kept
  return ids, lengths


def bucket_width(longest: int, buckets: Sequence[int], max_len: int) -> int:
  """The smallest bucket >= longest, or max_len when none is."""
  return next((b for b in buckets if b >= longest), max_len)


def check_config(config: Mapping[str, Any]) -> None:
  """The fields only IMDB reads (ValueError naming the fix); reads no data."""
  common.check_choice(config, 'padding', MODES)
  common.check_choice(config, 'truncating', MODES)


def dims(config: Mapping[str, Any]) -> tuple[str, int, int]:
  """(input kind, input size, classes) of the task `config` describes, without its data."""
  return 'tokens', common.field(config, 'vocab_size'), 2


def load(config: Mapping[str, Any], workdir=None, *, process_index: int,
         process_count: int) -> common.Task:
  """The IMDB sentiment task (2 classes, 0 = negative, 1 = positive)."""
  check_config(config)
  settings = {
      'vocab_size': common.check_int(config, 'vocab_size', len(RESERVED) + 1),
      'max_len': common.check_int(config, 'max_len', 1),
      'padding': common.check_choice(config, 'padding', MODES),
      'truncating': common.check_choice(config, 'truncating', MODES),
      'validation_size': common.check_int(config, 'validation_size', 0),
  }
  max_len, padding = settings['max_len'], settings['padding']
  buckets = check_buckets(common.field(config, 'length_buckets'), max_len)
  batch_size, eval_batch_size, seed = common.check_batching(config, process_count)
  writer = process_index == 0

  vocab_file = common.workdir_file(workdir, 'vocab.txt')
  vocab = read_vocab(vocab_file, settings['vocab_size'])
  splits, info = _read_cache(workdir, vocab, settings)
  if splits is None:
    splits, info, vocab = _encode_from_tfds(config, settings, vocab)
    if vocab_file is not None and writer:
      if not vocab_file.exists():
        common.write_atomic(vocab_file, ('\n'.join(vocab) + '\n').encode())
      _write_cache(workdir, vocab, settings, splits, info)

  def make_batch(arrays, indices, global_indices):
    width = bucket_width(int(arrays['lengths'][global_indices].max()), buckets, max_len)
    ids = arrays['ids'][indices]
    if padding == 'post':
      inputs, lengths = ids[:, :width], arrays['lengths'][indices]
    else:
      inputs, lengths = ids[:, max_len - width:], np.full(len(indices), width, np.int32)
    return {'inputs': np.ascontiguousarray(inputs), 'lengths': lengths,
            'labels': arrays['label'][indices]}

  metadata = {
      'dataset': 'imdb_reviews', 'dataset_version': info['version'], 'data_dir': info['data_dir'],
      **settings, 'length_buckets': list(buckets), 'vocab_words': len(vocab) - len(RESERVED),
      'vocab_file': None if vocab_file is None else str(vocab_file),
      'vocab_from': 'train split without its first validation_size reviews',
      'token_pattern': TOKEN_RE.pattern,
      'fraction_truncated_train': float(np.mean(splits['train']['num_tokens'] > max_len)),
  }
  return common.Task(
      name='imdb_reviews', input_kind='tokens', seq_len=max_len,
      input_size=settings['vocab_size'], num_classes=2, splits=splits, make_batch=make_batch,
      batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, metadata=metadata,
      process_index=process_index, process_count=process_count)


def check_buckets(buckets, max_len: int) -> tuple[int, ...]:
  buckets = tuple(buckets or ())
  if (not all(isinstance(b, (int, np.integer)) and 1 <= b <= max_len for b in buckets)
      or list(buckets) != sorted(set(buckets))):
    raise ValueError(
        f'config.length_buckets={buckets!r} is not valid: it must be strictly increasing '
        f'integers in [1, max_len={max_len}], or () for no bucketing. Fix: e.g. '
        f'--config.length_buckets="({max(1, max_len // 4)}, {max(1, max_len // 2)})".')
  return tuple(int(b) for b in buckets)


def read_vocab(file, vocab_size: int) -> list[str] | None:
  """The saved vocabulary (one token per line, id = line number), or None if there is none."""
  if file is None or not file.exists():
    return None
  vocab = file.read_text(encoding='utf-8').rstrip('\n').split('\n')
  if tuple(vocab[:len(RESERVED)]) != RESERVED or len(vocab) > vocab_size:
    raise ValueError(
        f'{file} holds {len(vocab)} tokens starting {vocab[:2]}, which does not fit '
        f'config.vocab_size={vocab_size} and the reserved ids {RESERVED}. Fix: set '
        '--config.vocab_size to the one the run was started with, or use a fresh workdir.')
  return vocab


def _encode_from_tfds(config, settings, vocab):
  raw, info = common.read_splits(
      TFDS_NAME, ('train', 'test'), data_dir=common.resolve_data_dir(config),
      download=bool(common.field(config, 'download')))
  train, validation = common.carve_validation(raw['train'], settings['validation_size'], 'imdb')
  texts = {'train': train, 'validation': validation, 'test': raw['test']}
  tokens = {split: [tokenize(text) for text in arrays['text']] for split, arrays in texts.items()}
  if vocab is None:
    vocab = build_vocab(tokens['train'], settings['vocab_size'])
  index = {word: i for i, word in enumerate(vocab)}  # no token can spell a reserved name
  max_len, truncating = settings['max_len'], settings['truncating']
  splits = {}
  for split, token_lists in tokens.items():
    # Only kept tokens need an id; num_tokens keeps the length before truncation.
    kept = [t[-max_len:] if truncating == 'pre' else t[:max_len] for t in token_lists]
    ids, lengths = pad_and_truncate([[index.get(w, OOV_ID) for w in t] for t in kept],
                                    max_len, settings['padding'], truncating)
    splits[split] = {'ids': ids, 'lengths': lengths,
                     'num_tokens': np.array([len(t) for t in token_lists], np.int32),
                     'label': texts[split]['label'].astype(np.int32)}
  return splits, info, vocab


def _cache_key(vocab, settings) -> str:
  digest = hashlib.sha256('\n'.join(vocab).encode()).hexdigest()
  return json.dumps({'vocab_sha256': digest, **settings}, sort_keys=True)


def _read_cache(workdir, vocab, settings):
  file = common.workdir_file(workdir, 'imdb_encoded.npz')
  if vocab is None or file is None or not file.exists():
    return None, None
  try:
    with np.load(io.BytesIO(file.read_bytes())) as cache:
      if str(cache['key']) != _cache_key(vocab, settings):
        return None, None  # settings changed: re-encode from tfds
      info = json.loads(str(cache['info']))
      splits = collections.defaultdict(dict)
      for name in cache.files:
        if '/' in name:
          split, column = name.split('/')
          splits[split][column] = cache[name]
  except Exception as e:  # A truncated or altered cache (zip CRC, pickle, JSON errors).
    # Derived data only: rebuilt from the dataset and the saved vocabulary, then rewritten.
    logging.warning('%s is unreadable (%s: %s); rebuilding it from the dataset.', file,
                    type(e).__name__, str(e)[:200])
    return None, None
  return dict(splits), info


def _write_cache(workdir, vocab, settings, splits, info):
  columns = {f'{split}/{column}': value
             for split, arrays in splits.items() for column, value in arrays.items()}
  buffer = io.BytesIO()
  np.savez(buffer, key=_cache_key(vocab, settings), info=json.dumps(info), **columns)
  common.write_atomic(common.workdir_file(workdir, 'imdb_encoded.npz'), buffer.getvalue())
