"""Adding problem, LSTM and GRU with chrono initialisation (T_max = 500), T = 50, 200, 500,
3 seeds: the same budget as `ablate_adding`, only the keep-gate biases start differently.

  python -m rnn_jax.ablate --config=configs/ablate_adding_chrono.py \
      --workdir=runs/ablate_adding_chrono

Why a separate sweep: `chrono_init` is an LSTM/GRU option (the tanh RNN and IRNN have no
gate), and it is the experiment that says whether the default-init cells' failure at long T
in `ablate_adding` is the vanishing gradient at init (the LSTM's forget gate starts at
sigmoid(1), a time scale of ~4 steps) rather than a limit of the cell. Compare its
results.md and grad_norm_through_time.png with those of `ablate_adding`. T_max = 500 for
every T (a product sweep cannot tie it to sequence_length): for T = 50 and 200 it only
means memories longer than needed.

Measured here (2 CPU cores, 2,000 updates, 3 seeds vmapped per setting; 32 min in all), test
MSE mean ± std (baseline 0.167), memory horizon in brackets:

  cell              T = 50                   T = 200                  T = 500
  LSTM, chrono     0.0099 ± 0.0018 [49]     0.019 ± 0.0012 [199]     0.042 ± 0.0074 [499]
  GRU, chrono      0.0053 ± 0.0003 [49]     0.0076 ± 0.0021 [199]    0.019 ± 0.0074 [499]

Both learn at every T (the validation MSE leaves the baseline after 1,400-1,800 updates at
T = 500 and is still falling at the end), where the default-init LSTM stays at the baseline
from T = 200 and the GRU at T = 500. At T = 50 and 200 the default GRU is as good or better
(0.0035, 0.0021): chrono init buys reach, not precision.

Extending the T = 500 runs to 4,000 updates (`:500` runs those settings alone, in the same
directories; a larger num_epochs on a finished workdir resumes every run):

  python -m rnn_jax.ablate --config=configs/ablate_adding_chrono.py:500 --workdir=DIR
  python -m rnn_jax.ablate --config=configs/ablate_adding_chrono.py:500 --workdir=DIR \
      --config.base.num_epochs=20

Re-measured so (86 min in all on the 2-core CPU, shared with other jobs): LSTM 0.059 ± 0.025
at 2,000 updates, 0.0095 ± 0.0052 at 4,000; GRU 0.0136 ± 0.0034 and 0.0017 ± 0.0010. The
first measurement above (0.042, 0.019) came from an earlier build; the two agree within the
spread over seeds, not to the digit.
"""

from configs import ablate_adding


def get_config(lengths: str = "50,200,500"):
  """`lengths`: the sequence lengths T to sweep, e.g. `--config=...chrono.py:500` for T = 500
  alone (its runs are the same directories as in the full sweep)."""
  config = ablate_adding.get_config()
  del config["sweep"]  # Its dict type would refuse the tuple of pairs below.
  # Tuple of pairs: a dotted field name cannot be a ConfigDict key.
  config.sweep = (("cell", ["lstm", "gru"]), ("cell_options.chrono_init", [500]),
                  ("sequence_length", [int(t) for t in lengths.split(",")]))
  return config
