"""Adding problem ablation: cells rnn / irnn / lstm / gru at T = 50, 200, 500, 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_adding.py --workdir=runs/ablate_adding

Shows which cells carry a value across T steps: the MSE baseline of predicting 1.0 is 1/6 ~=
0.167; a cell that solves the task goes far below it (and its "accuracy", |error| < 0.04,
toward 1), one that does not stays at ~0.167. The gradient-norm-through-time plot shows how
far back each cell's gradient reaches (memory_horizon column).

Measured here (2 CPU cores shared with other jobs), two budgets:
- T = 50 only, num_train_examples=20000, 8 epochs (3,200 updates): test MSE (mean ± std over
  3 seeds) rnn 0.025 ± 0.008, irnn 0.0048 ± 0.003, lstm 0.0048 ± 0.004, gru 0.00055 ± 0.0004
  (baseline 0.167); 14 min 39 s.
- The full sweep with `--config.base.num_train_examples=10000 --config.base.num_epochs=5`
  (1,000 updates; about 65 min): only the GRU solves T = 50 (MSE 0.0058 ± 0.0014; irnn
  0.117 ± 0.05, lstm 0.152, rnn 0.144); at T = 200 and 500 every cell is still at the baseline
  (0.165-0.170). The gradient norm through time already shows why: the tanh RNN's, LSTM's and
  GRU's gradients decay exponentially with distance (to ~1e-14 at 200 steps back and to exact
  zero in float32 beyond ~300 at T = 500), while the IRNN's identity start keeps it within
  ~1e-5 of its last value over all 500 steps (memory horizon 199 at T = 200 vs 17-56 for the
  others). The full sweep (10 epochs of 50,000 examples) is meant for an accelerator.
"""

from configs import base as base_lib
from rnn_jax import ablate


def get_config():
  config = ablate.defaults()
  base = base_lib.get_config()
  base.dataset = "adding"
  base.sequence_length = 50
  base.num_train_examples = 10000  # x 10 epochs / batch 50 = 2,000 updates (CPU budget).
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
