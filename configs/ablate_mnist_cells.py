"""Row MNIST (28 steps of 28 pixels): cells rnn / lstm / gru, 128 units, 3 seeds, 5 epochs.

  python -m rnn_jax.ablate --config=configs/ablate_mnist_cells.py --workdir=runs/ablate_mnist

Shows the gap between the plain tanh RNN and the gated cells on a short (28-step) task, mean
± std over seeds, and each cell's gradient norm through time. Set
`--config.match_params=50000` to compare at equal parameter counts instead of equal width.
The seeds of a cell train together under jax.vmap. Measured here (2-core CPU, partly shared
with other jobs, 23 min in all), test accuracy mean ± std over seeds 0, 1, 2: rnn 97.52 ±
0.11%, lstm 98.33 ± 0.03%, gru 98.50 ± 0.08%.
"""

from configs import mnist_lstm
from rnn_jax import ablate


def get_config():
  config = ablate.defaults()
  base = mnist_lstm.get_config()
  base.num_epochs = 5
  base.progress_bar = False
  config.base = base
  config.sweep = {"cell": ["rnn", "lstm", "gru"]}
  config.seeds = [0, 1, 2]
  return config
