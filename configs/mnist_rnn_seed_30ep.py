"""Seed reproduction: vanilla RNN on row MNIST, 30 epochs, as in the original notebook.

Original setup: a TF1 `BasicRNNCell` of 128 units over 28 rows, a dense layer to 10 logits on
the last output, Adam 1e-3, batch 128, 30 epochs, trained on all 60,000 training images (no
55k/5k split), evaluated on the 10,000 test images. Original result: 97.66% test accuracy.

  python launch.py --config=configs/mnist_rnn_seed_30ep.py --workdir=runs/mnist_rnn_seed_30ep

Measured here (seed 0, 2-core CPU shared with other jobs): 97.57% test accuracy, 334 s.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "mnist"
  config.cell = "rnn"
  config.cell_options = {"recurrent_init": "joint_glorot"}  # TF1 BasicRNNCell's initialiser.
  config.hidden_size = 128
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.num_epochs = 30
  config.validation_size = 0  # The original trained on all 60,000 images.
  return config
