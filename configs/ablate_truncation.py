"""Truncated BPTT on a long-memory task: the adding problem at T = 200, LSTM, k in
(None, 100, 50, 20, 5), 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_truncation.py --workdir=runs/ablate_truncation

Shows what truncation costs when the dependency is long: the first marker lies 100-200 steps
before the loss, so windows k < 100 cannot learn to keep it (test MSE stays near the 0.167
baseline), while the gradient-norm-through-time plot shows the gradient cut to exactly k steps
(memory_horizon <= k). Not run here (about 2 h of CPU); meant for an accelerator.
"""

from configs import ablate_adding


def get_config():
  config = ablate_adding.get_config()
  config.base.sequence_length = 200
  config.base.cell = "lstm"
  config.sweep = {"truncation": [None, 100, 50, 20, 5]}
  return config
