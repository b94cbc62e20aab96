"""Seed reproduction: two stacked vanilla RNN cells on IMDB reviews.

Original setup: vocabulary of the 10,000 most frequent words, reviews cut/padded to 80 tokens,
embedding 100, two stacked vanilla RNN cells of 64 units with dropout 0.2, one sigmoid output
on the last state, binary cross-entropy, Adam 1e-3, batch 128, 4 epochs. Original result: 80%
test accuracy.

  python launch.py --config=configs/imdb_stacked_rnn_seed.py --workdir=runs/imdb_stacked_rnn_seed

Measured here (seed 0, 121 s on the shared 2-core CPU): 79.54% test accuracy (best validation
81.62%, epoch 2).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "imdb_reviews"
  config.vocab_size = 10000
  config.max_len = 80
  config.embed_size = 100
  config.cell = "rnn"
  config.hidden_size = 64
  config.num_layers = 2
  config.dropout_rate = 0.2
  config.padding = "pre"  # Keras pad_sequences' defaults, as the original used.
  config.truncating = "pre"
  config.binary_output = True  # One sigmoid output, binary cross-entropy.
  config.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 4
  config.log_every_steps = 20
  return config
