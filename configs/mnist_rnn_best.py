"""Row MNIST, bidirectional vanilla tanh RNN, 128 units each way, 10 epochs (mnist_rnn otherwise).

  python -m rnn_jax.ablate --config=configs/seeds.py:mnist_rnn_best --workdir=runs/rnn_best

Measured: see the README results table.
"""

from configs import mnist_rnn


def get_config():
  config = mnist_rnn.get_config()
  config.bidirectional = True
  config.num_epochs = 10
  return config
