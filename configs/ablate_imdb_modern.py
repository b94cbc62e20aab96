"""IMDB from scratch in the `imdb_best` setup with the recurrence changed: the GRU beside
minGRU, minLSTM, RG-LRU and LRU; bidirectional, 400 tokens, mean of the outputs, 3 seeds.

  python -m rnn_jax.ablate --config=configs/ablate_imdb_modern.py:mingru,rglru --workdir=runs/imdb_modern

Everything but the cell is `imdb_best` (one plain bidirectional layer of 64 units, output
dropout 0.5, 2 epochs), so each row differs from its GRU row only in the recurrence. The part
after ':' (a comma-separated list) picks the cells; without it all five run.

Measured on the 2-core CPU (3 seeds vmapped per cell, test accuracy): minGRU 89.01 ± 0.11%
(568 s), minLSTM 88.97 ± 0.09% (503 s), RG-LRU 88.22 ± 0.22% (462 s), LRU 88.13 ± 0.16%
(615 s); the GRU (`imdb_best`) 87.96 ± 0.06%. The table is in docs/results.md.
"""

from configs import imdb_best
from rnn_jax import ablate

CELLS = ("gru", "mingru", "minlstm", "rglru", "lru")


def get_config(cells: str = ",".join(CELLS)):
  config = ablate.defaults()
  base = imdb_best.get_config()
  base.progress_bar = False
  config.base = base
  config.sweep = {"cell": cells.split(",")}
  config.seeds = [0, 1, 2]
  return config
