"""Trains and evaluates one config; see rnn_jax/cli.py for the flags.

  python launch.py --config=configs/mnist_lstm.py --workdir=runs/mnist_lstm
"""

from rnn_jax import cli

if __name__ == "__main__":
  cli.run()
