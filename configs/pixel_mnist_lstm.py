"""Sequential (pixel) MNIST, LSTM: 784 steps of one pixel each, 128 units.

  python launch.py --config=configs/pixel_mnist_lstm.py --workdir=runs/pixel_lstm

The long-memory version of MNIST: the class depends on pixels hundreds of steps back.
Measured on the 2-core CPU (seed 0): test accuracy 39.07% after 1 epoch (validation 39.80%),
183 s; with --config.num_epochs=3 (the cosine over 3 epochs) 32.60% in 479 s. Published LSTMs
reach ~98% after far more epochs (docs/results.md).
"""

from configs import mnist_lstm


def get_config():
  config = mnist_lstm.get_config()
  config.sequence = "pixels"
  config.normalize = "standardize"  # Zero-mean single-pixel inputs; most pixels are 0.
  config.num_epochs = 1
  config.learning_rate = 1e-3
  config.grad_clip_norm = 1.0       # 784-step backward passes spike early in training.
  config.log_every_steps = 20
  config.checkpoint_every_steps = 100
  return config
