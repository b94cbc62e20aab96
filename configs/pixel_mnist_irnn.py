"""Sequential (pixel) MNIST, IRNN (Le et al. 2015): ReLU RNN with identity recurrent init.

  python launch.py --config=configs/pixel_mnist_irnn.py --workdir=runs/pixel_irnn

The identity start keeps the gradient alive through 784 steps (see the adding problem plot),
at a quarter of the LSTM's matmul cost. A ReLU recurrence needs a small learning rate and
clipping. Measured on the 2-core CPU (seed 0): test accuracy 76.92% after 3 epochs
(validation 62.38 / 66.84 / 76.90%, still rising), 142 s; resumed with
--config.num_epochs=12, 88.42% (another 333 s). Le et al. report ~97% after hundreds of
epochs.
"""

from configs import pixel_mnist_lstm


def get_config():
  config = pixel_mnist_lstm.get_config()
  config.cell = "irnn"
  config.learning_rate = 1e-4
  config.lr_schedule = "constant"
  config.num_epochs = 3            # A quarter of the LSTM's cost per step.
  return config
