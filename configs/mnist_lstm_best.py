"""Row MNIST, bidirectional LSTM: the rows read top-down and bottom-up, 128 units each way.

  python -m rnn_jax.ablate --config=configs/seeds.py:mnist_lstm_best --workdir=runs/lstm_best

Measured: see the README results table.
"""

from configs import mnist_lstm


def get_config():
  config = mnist_lstm.get_config()
  # One direction plateaus just under 99% (98.96% best validation, seed 0, 20 epochs); the
  # backward pass sees the top rows last instead of 28 steps ago.
  config.bidirectional = True
  config.num_epochs = 10
  # Without dropout the train loss reaches 0.005 while validation loss stalls at 0.040
  # (validation 99.01% mean over 3 seeds, test 98.87 ± 0.05%).
  config.dropout_rate = 0.2
  return config
