"""Row MNIST, LSTM: 28 steps of 28 pixels, 128 units, Adam 1e-3, batch 128.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "mnist"
  config.cell = "lstm"
  config.hidden_size = 128
  config.batch_size = 128
  config.num_epochs = 10
  config.lr_schedule = "cosine"  # Decaying to 0 adds a few tenths of a point at the end.
  return config
