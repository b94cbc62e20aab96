"""Seed reproduction: two stacked vanilla RNN cells on IMDB reviews, as a proper stack.

Original setup (a TF2/Keras notebook): vocabulary of the 10,000 most frequent words, reviews
cut/padded to 80 tokens (Keras' pre-padding and pre-truncation), embedding 100, two
`SimpleRNNCell(64, dropout=0.2)`, one sigmoid output on the last state, binary cross-entropy,
Adam 1e-3, batch 128, 4 epochs. Original result: 80% test accuracy.

This config is the stack the notebook meant: the second cell reads the first cell's output
and keeps its own state. The notebook's code wires it otherwise (its second cell reads the
word and the first cell's state; see configs/imdb_notebook_rnn_seed.py, which reproduces
that). Keras' `dropout=0.2` of a cell drops that cell's inputs with one mask per sequence:
`dropout_mode='cell_inputs'` does the same (the embedded words into layer 1, layer 1's
output into layer 2; nothing on the read-out).

  python -m rnn_jax.ablate --config=configs/seeds.py:imdb_stacked_rnn_seed \
      --workdir=runs/imdb_stacked_rnn_seed

Results (3 seeds) are in docs/seed_reproductions.md.
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
  config.dropout_mode = "cell_inputs"  # Keras' SimpleRNNCell(dropout=0.2): each cell's input.
  config.padding = "pre"  # Keras pad_sequences' defaults, as the original used.
  config.truncating = "pre"
  config.binary_output = True  # One sigmoid output, binary cross-entropy.
  config.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 4
  config.log_every_steps = 20
  return config
