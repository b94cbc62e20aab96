"""IMDB reviews, GRU: vocabulary 10,000, reviews cut to 80 tokens, embedding 100, 64 units.

  python launch.py --config=configs/imdb_gru.py --workdir=runs/imdb_gru
"""

from configs import imdb_lstm


def get_config():
  config = imdb_lstm.get_config()
  config.cell = "gru"
  return config
