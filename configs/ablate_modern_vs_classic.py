"""Modern linear recurrences against the classic cells on the adding problem at T = 1000.

  python -m rnn_jax.ablate --config=configs/ablate_modern_vs_classic.py --workdir=runs/modern

Cells mingru, minlstm, lru, rglru (gates from the input only, eigenvalues started near 1)
beside lstm, gru and irnn, each from its usual init, 3 seeds vmapped per cell, 2,000 updates
of batch 50, hidden 64 (the budget of ablate_adding.py). The MSE baseline of predicting 1.0 is
1/6 ~= 0.167; `configs/ablate_adding.py` shows every classic cell stuck there from T = 500.
`:mingru,minlstm` (a comma-separated list) runs those cells alone, in the same directories.
The measured table, its command and runtime are in docs/results.md; records hold wall-clock
seconds, so the learning curves can be read against time as well as updates.
"""

from configs import ablate_adding

CELLS = ("lstm", "gru", "irnn", "mingru", "minlstm", "lru", "rglru")


def get_config(cells: str = ",".join(CELLS), sequence_length: int = 1000):
  config = ablate_adding.get_config()
  config.sweep = {"cell": cells.split(","), "sequence_length": [int(sequence_length)]}
  return config
