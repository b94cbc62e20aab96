"""Adding problem ablation: cells rnn / irnn / lstm / gru at T = 50, 200, 500, 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_adding.py --workdir=runs/ablate_adding

Shows which cells carry a value across T steps: the MSE baseline of predicting 1.0 is 1/6 ~=
0.167; a cell that solves the task goes far below it (and its "accuracy", |error| < 0.04,
toward 1), one that does not stays at ~0.167. The gradient-norm-through-time plot shows how
far back each cell's gradient reaches (memory_horizon column).

Measured here (2 CPU cores shared with other jobs): only the T=50 slice, with
num_train_examples=20000 (400 steps of 50 per epoch): 3 epochs took 3 min 52 s for the 4 cells
x 3 seeds, 8 epochs 14 min 39 s (under heavy load; 4 min 9 s of CPU). After 8 epochs, test MSE
(mean ± std over 3 seeds): rnn 0.025 ± 0.008, irnn 0.0048 ± 0.003, lstm 0.0048 ± 0.004,
gru 0.00055 ± 0.0004 (baseline 0.167). The slice: set `config.sweep = {"cell": [...],
"sequence_length": [50]}` (dict sweeps are not overridable from the command line). The full
sweep (T up to 500, 10 epochs of 50,000 examples) is meant for an accelerator.
"""

from configs import base as base_lib
from rnn_jax import ablate


def get_config():
  config = ablate.defaults()
  base = base_lib.get_config()
  base.dataset = "adding"
  base.sequence_length = 50
  base.num_train_examples = 50000
  base.validation_size = 1000
  base.hidden_size = 64
  base.batch_size = 50
  base.num_epochs = 10
  base.learning_rate = 1e-3
  base.grad_clip_norm = 1.0  # The ReLU IRNN needs it (Le et al. clip too).
  base.log_every_steps = 100
  base.checkpoint_every_steps = 2000
  base.progress_bar = False
  config.base = base
  config.sweep = {"cell": ["rnn", "irnn", "lstm", "gru"], "sequence_length": [50, 200, 500]}
  config.seeds = [0, 1, 2]
  config.metrics = ("test_loss", "test_accuracy")
  config.curve_metric = "validation_loss"
  return config
