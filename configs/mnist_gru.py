"""Row MNIST, GRU: 28 steps of 28 pixels, 128 units, Adam 1e-3, batch 128.

  python launch.py --config=configs/mnist_gru.py --workdir=runs/mnist_gru
"""

from configs import mnist_lstm


def get_config():
  config = mnist_lstm.get_config()
  config.cell = "gru"
  return config
