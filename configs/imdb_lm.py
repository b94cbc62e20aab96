"""IMDB word-level language model, stateful truncated BPTT with window k = 10, GRU 256
(rnn_jax/lm.py): the k = 10 point of configs/ablate_imdb_lm_tbptt.py, trained on its own.

  python launch.py --config=configs/imdb_lm.py --workdir=runs/imdb_lm

Vocabulary 10k, embedding 128, batch 32, Adam 2e-3 with global-norm clipping 1, one seed.
The first 1M training tokens (3,125 updates of 32 x 10 tokens, a sixth of an epoch); test
perplexity over the first 500k test tokens, read in 100-step windows. The whole epoch and test
set: `--config.max_tokens=0 --config.eval_tokens=0`. Result and runtime: docs/results.md (the
language-model table).
"""

from rnn_jax import lm


def get_config():
  config = lm.defaults()
  config.cell = "gru"
  config.hidden_size = 256
  config.embed_size = 128
  config.batch_size = 32
  config.learning_rate = 2e-3
  config.num_epochs = 1
  config.window = 10
  config.max_tokens = 1_000_000  # The same training tokens for every k of the sweep.
  config.eval_tokens = 500_000
  config.log_every_steps = 100
  return config
