"""Row MNIST, bidirectional LSTM: the rows read top-down and bottom-up, 128 units each way.

  python -m rnn_jax.ablate --config=configs/seeds.py:mnist_lstm_best --workdir=runs/mnist_lstm_best

Measured on the 2-core CPU (seeds 0, 1, 2 vmapped together, 1,085 s for all three): test
accuracy 98.87 ± 0.05% (98.80, 98.90, 98.90), validation 99.01%: short of 99%, which the
bidirectional GRU reaches (configs/mnist_gru_best.py).
"""

from configs import mnist_lstm


def get_config():
  config = mnist_lstm.get_config()
  # One direction plateaus just under 99% (98.96% best validation, seed 0, 20 epochs); the
  # backward pass sees the top rows last instead of 28 steps ago.
  config.bidirectional = True
  config.num_epochs = 10
  # Tried: dropout_rate=0.2 against the overfitting (train loss 0.005, validation loss 0.040)
  # lowered validation accuracy from 99.01% to 98.88% (mean of 3 seeds), so it is off.
  return config
