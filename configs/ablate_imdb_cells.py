"""IMDB sentiment (80 tokens, 10,000-word vocabulary): cells rnn / lstm / gru, 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_imdb_cells.py --workdir=runs/ablate_imdb

Shows how the cells compare on real text with padding and lengths (the masked scan), mean ± std
over seeds. Without length buckets every batch has the same width, so the seeds stack under
jax.vmap; each seed run tokenises the reviews once into its workdir cache. Not run here.
"""

from configs import imdb_lstm
from rnn_jax import ablate


def get_config():
  config = ablate.defaults()
  base = imdb_lstm.get_config()
  base.length_buckets = ()
  base.progress_bar = False
  config.base = base
  config.sweep = {"cell": ["rnn", "lstm", "gru"]}
  config.seeds = [0, 1, 2]
  return config
