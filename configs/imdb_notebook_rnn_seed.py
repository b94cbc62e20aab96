"""Seed reproduction: what the IMDB two-cell notebook computes (not a stack).

The notebook's loop is

    for word in tf.unstack(x, axis=1):
        out0, state0 = self.rnn_cell0(word, state0, training)
        out1, state1 = self.rnn_cell1(word, state0, training)

so its second cell reads the word embedding, not the first cell's output, and the first
cell's new state as its own state; state1 is never fed back. `cell='rnn_miswired_pair'`
computes exactly that (rnn_jax/cells.py): s' = tanh(x W0 + s U0 + b0), y' = tanh(x W1 +
s' U1 + b1), the classifier on the last y. Everything else as configs/imdb_stacked_rnn_seed.py
(the proper stack): 10k words, 80 tokens pre-padded, embedding 100, 64 units, Keras input
dropout 0.2 per sequence (here one mask on the word shared by both cells, where Keras draws
one per cell), one sigmoid output, Adam 1e-3, batch 128, 4 epochs. Original result: 80% test.

  python -m rnn_jax.ablate --config=configs/seeds.py:imdb_notebook_rnn_seed \
      --workdir=runs/imdb_notebook_rnn_seed

Results (3 seeds) are in docs/seed_reproductions.md.
"""

from configs import imdb_stacked_rnn_seed


def get_config():
  config = imdb_stacked_rnn_seed.get_config()
  config.cell = "rnn_miswired_pair"
  config.num_layers = 1  # The pair is one "layer": both cells read the words.
  return config
