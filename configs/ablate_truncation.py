"""Truncated BPTT on a long-memory task: the adding problem at T = 50, GRU, truncation k in
(None, 40, 20, 10, 5), 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_truncation.py --workdir=runs/ablate_truncation

Shows what truncation costs when the dependency is long: the first marker lies 26 to 50 steps
before the loss, so with k < 26 the gradient can never connect it to the target and the cell
cannot learn to keep it (test MSE stays far above full BPTT's), while the
gradient-norm-through-time plot shows the gradient cut to exactly k steps. The GRU is the cell
that solves T = 50 fastest here (see configs/ablate_adding.py), so the comparison isolates k.
For T = 200: `config.base.sequence_length = 200` and k in (None, 150, 100, 50, 20).
"""

from configs import ablate_adding


def get_config():
  config = ablate_adding.get_config()
  config.base.sequence_length = 50
  config.base.cell = "gru"
  config.base.num_train_examples = 10000
  config.base.num_epochs = 8
  config.sweep = {"truncation": [None, 40, 20, 10, 5]}
  return config
