"""IMDB reviews, vanilla tanh RNN: vocabulary 10,000, 80 tokens, embedding 100, 64 units.

  python launch.py --config=configs/imdb_rnn.py --workdir=runs/imdb_rnn

Measured on the 2-core CPU shared with other jobs (seed 0): test accuracy 79.39% (best
validation 82.00%), 132 s wall time.
"""

from configs import imdb_lstm


def get_config():
  config = imdb_lstm.get_config()
  config.cell = "rnn"
  config.grad_clip_norm = 1.0
  return config
