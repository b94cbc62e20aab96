"""Defaults shared by every config: see rnn_jax/config.py for each field and its meaning.

Task configs start from `get_config()` here and change only what differs. Each takes
`runlocal` (big_vision's switch): the same run made tiny, seconds on a CPU, for a smoke test
and for the unit tests, e.g.

  python launch.py --config=configs/mnist_lstm.py:runlocal --workdir=/tmp/smoke
"""

from rnn_jax import config as config_lib


def get_config(runlocal=False):
  config = config_lib.defaults()
  return shrink(config) if runlocal else config


def shrink(config):
  """`config` made tiny in place (model, batches, data sizes, epochs, intervals); returns it."""
  config.update(
      hidden_size=8, embed_size=8, batch_size=16, eval_batch_size=40, validation_size=32,
      num_epochs=2, log_every_steps=2, checkpoint_every_steps=3, progress_bar=False,
      plots=False, parallel="jit",
      sequence_length=10, num_train_examples=64,  # The adding problem.
      max_len=20, vocab_size=50, length_buckets=())  # IMDB.
  return config
