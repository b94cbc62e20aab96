"""Row MNIST, bidirectional GRU, 128 units each way, 10 epochs (mnist_gru otherwise).

  python -m rnn_jax.ablate --config=configs/seeds.py:mnist_gru_best --workdir=runs/gru_best

Measured: see the README results table.
"""

from configs import mnist_gru


def get_config():
  config = mnist_gru.get_config()
  config.bidirectional = True
  config.num_epochs = 10
  return config
