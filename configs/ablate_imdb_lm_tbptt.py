"""IMDB word-level language model, stateful truncated BPTT: window k in (5, 10, 35, 100),
GRU 256 units, 1 seed (rnn_jax/lm.py).

  python -m rnn_jax.ablate --config=configs/ablate_imdb_lm_tbptt.py --workdir=runs/ablate_lm

Shows how much of a long carried state the model can learn to use when the gradient reaches
back only k steps (k1 = k2 = k, one update per window; the carry always passes on): test
perplexity on the 25,000 test reviews, read in 100-step windows whatever k, so the numbers
are comparable. Every k trains on the same 1M tokens (`max_tokens`, about a sixth of an
epoch of the ~6M training tokens), so smaller k means k-fold more updates on the same data;
test perplexity is over the first 500k test tokens (`eval_tokens`; the 1,000 validation
reviews are shorter than that). The first run tokenises the 50,000 reviews once per run
directory (cached in <run>/data/). The whole epoch and test set:
`--config.base.max_tokens=0 --config.base.eval_tokens=0` (training ~6x, testing ~12x longer).

Measured here (2 CPU cores, 1M training tokens per k, seed 0; 41 min in all, window=10 ran
beside another job):

  k      updates   validation ppl   test ppl   wall
  5      6,250     138.5            136.8      692 s
  10     3,125     143.0            141.4      882 s
  35       892     214.5            211.8      451 s
  100      312     354.7            393.3      439 s

On the same data, the short windows win by far: they make k-fold more updates, and at this
stage (a sixth of an epoch, perplexity ~140) the model gains more from updates than from
gradients reaching beyond 5-10 words. Longer windows pay off only with training long enough
for long-range structure to matter; equal updates (k = 100 for 6,250 updates is 20M tokens,
3+ epochs) is the other comparison, out of this CPU's reach.
"""

from configs import imdb_lm
from rnn_jax import ablate


def get_config():
  config = ablate.defaults()
  config.base = imdb_lm.get_config()  # GRU 256, 1M training tokens, 500k test tokens.
  config.sweep = {"window": [5, 10, 35, 100]}
  config.seeds = [0]
  config.vmap_seeds = False
  config.metrics = ("test_perplexity", "test_loss")
  config.curve_metric = "validation_perplexity"
  return config
