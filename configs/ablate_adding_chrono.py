"""Adding problem, LSTM and GRU with chrono initialisation (T_max = 500), T = 50, 200, 500,
3 seeds: the same budget as `ablate_adding`, only the keep-gate biases start differently.

  python -m rnn_jax.ablate --config=configs/ablate_adding_chrono.py \
      --workdir=runs/ablate_adding_chrono

Why a separate sweep: `chrono_init` is an LSTM/GRU option (the tanh RNN and IRNN have no
gate), and it is the experiment that says whether the default-init cells' failure at long T
in `ablate_adding` is the vanishing gradient at init (the LSTM's forget gate starts at
sigmoid(1), a time scale of ~4 steps) rather than a limit of the cell. Compare its
results.md and grad_norm_through_time.png with those of `ablate_adding`.
"""

from configs import ablate_adding


def get_config():
  config = ablate_adding.get_config()
  del config["sweep"]  # Its dict type would refuse the tuple of pairs below.
  # Tuple of pairs: a dotted field name cannot be a ConfigDict key.
  config.sweep = (("cell", ["lstm", "gru"]), ("cell_options.chrono_init", [500]),
                  ("sequence_length", [50, 200, 500]))
  return config
