"""IMDB reviews, GRU: vocabulary 10,000, reviews cut to 80 tokens, embedding 100, 64 units.

  python launch.py --config=configs/imdb_gru.py --workdir=runs/imdb_gru

Measured on the 2-core CPU shared with other jobs (seed 0): test accuracy 81.97% (best
validation 83.14%), 123 s wall time.
"""

from configs import imdb_lstm


def get_config():
  config = imdb_lstm.get_config()
  config.cell = "gru"
  return config
