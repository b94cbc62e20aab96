"""Sequential (pixel) MNIST, LRU in two residual blocks: 784 steps of one pixel each.

  python launch.py --config=configs/pixel_mnist_lru.py --workdir=runs/pixel_lru

The LRU's eigenvalues start on the ring 0.9 <= |lambda| <= 0.999 (memories of 10 to 1,000
steps) and its recurrence is one input matmul and a scan, so it both reaches back through 784
steps and trains several times faster per step than the LSTM here (`configs/pixel_mnist_lstm.py`).
Read-out: the mean of the top block's outputs, as in the LRU paper. The measured result, its
runtime and the LSTM's and IRNN's in the same time are in docs/results.md.
"""

from configs import pixel_mnist_lstm


def get_config():
  config = pixel_mnist_lstm.get_config()
  config.cell = "lru"
  config.block = "residual"
  config.num_layers = 2
  config.readout = "mean"
  config.learning_rate = 2e-3
  config.lr_schedule = "warmup_cosine"
  config.warmup_steps = 200
  config.num_epochs = 3
  return config
