"""Truncated BPTT on a long-memory task: the adding problem at T = 50, GRU, truncation k in
(None, 40, 20, 10, 5), 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_truncation.py --workdir=runs/ablate_truncation

Shows what truncation costs when the dependency is long: the first marker lies 26 to 50 steps
before the loss, so with k < 26 no gradient connects it to the target, and the
gradient-norm-through-time plot shows the gradient cut to exactly k steps (memory horizon
k - 1). Measured here (8 epochs of 10,000 examples, 3 seeds vmapped, 2 shared CPU cores,
about 9 minutes in all), test MSE (baseline 0.167) and memory horizon:

  k      None             40               20              10              5
  MSE    0.0033 ± 0.0007  0.0049 ± 0.0015  0.022 ± 0.009   0.0095 ± 0.002  0.0125 ± 0.004
  horizon 49              39               19              9               4

Full BPTT is best, but short windows still learn far below the baseline: the weights are
shared over time, so the "store a marked value and hold it" dynamics learned from the second
marker (inside the window) also hold the first one. k = 20, whose windows split the sequence
at step 10 and 30, does worst.
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
