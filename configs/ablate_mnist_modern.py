"""Row MNIST with the residual block held fixed and only the recurrence changed: GRU and
LSTM beside minGRU, minLSTM, LRU and RG-LRU; two residual layers of width 128, 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_mnist_modern.py --workdir=runs/mnist_modern

`:mingru,lru` (a comma-separated list) runs those cells alone, in the same directories. The
measured table, its command and runtime are in docs/results.md.
"""

from configs import mnist_lstm
from rnn_jax import ablate

CELLS = ("gru", "lstm", "mingru", "minlstm", "lru", "rglru")


def get_config(cells: str = ",".join(CELLS)):
  config = ablate.defaults()
  base = mnist_lstm.get_config()
  base.block = "residual"
  base.num_layers = 2
  base.num_epochs = 3
  base.progress_bar = False
  config.base = base
  config.sweep = {"cell": cells.split(",")}
  config.seeds = [0, 1, 2]
  return config
